#!/usr/bin/env bash
# The input-size sweeps: AlexNet 112..2240 px (step 112, batch 1) and BERT 50..500 tokens (step 50,
# batch 128), 10 runs per size. Usage: bash bench/gpu_bench_sweeps.sh OUTDIR
set -u
out=$(realpath -m "${1:-gpu-sweeps}"); mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
[ -f aipm_fast/_aipm_native*.so ] 2>/dev/null || python3 csrc/build_native.py > /tmp/build.log 2>&1
python3 -m aipm_fast.cli bench --model alexnet --sizes 112:2240:112 --runs 10 --duration 0.5 --warmup 1 --baseline 3 --no-plots --out "$out/alexnet" 2>&1 | tail -25
python3 -m aipm_fast.cli bench --model bert --sizes 50:500:50 --runs 10 --duration 1 --warmup 1 --baseline 3 --no-plots --out "$out/bert" 2>&1 | tail -15
