#!/usr/bin/env bash
# The published table on a GPU machine: yolov5s (32), resnet50 (128), vit_b_16 (64), bert (128) at
# their native sizes, 10 runs each; then the Meter checks. Usage: bash bench/gpu_bench_table.sh OUTDIR
set -u
out=$(realpath -m "${1:-gpu-bench}"); mkdir -p "$out"
source bench/gpu_env.sh /tmp/build.log
for m in yolov5s resnet50 vit_b_16 bert; do
  python3 -m aipm_fast.cli bench --model $m --runs 10 --duration 2 --warmup 2 --baseline 3 --no-plots --out "$out/$m" 2>&1 | tail -12
done
(cd bench && python3 gpu_meter_checks.py --only windows --out "$out/windows.json" | tail -40)
(cd bench && python3 gpu_meter_checks.py --only alternating --out "$out/alternating.json" | tail -40)
