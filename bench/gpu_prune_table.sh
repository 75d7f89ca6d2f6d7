#!/usr/bin/env bash
# Where pruning saves joules on the GPU (bench/gpu_prune_table.py): ViT-B/16 and BERT at 2:4,
# ResNet-50 and ViT-B/16 at 90% masked and structured, each against its dense model, float16.
# Usage: source bench/gpu_env.sh /tmp/build.log && bash bench/gpu_prune_table.sh OUT
# RUNS and DURATION (seconds per run) override the defaults (3 runs of 2.5 s per variant, nine
# variants: about 150 s in all on an H200).
set -u
out=$(realpath -m "${1:-gpu-prune}"); mkdir -p "$out"
python3 bench/gpu_prune_table.py "$out" --runs "${RUNS:-3}" --duration "${DURATION:-2.5}" 2> "$out/prune.log"
status=$?
tail -20 "$out/prune.log"
echo "prune table exit $status"
exit $status
