#!/usr/bin/env bash
# The engine on a GPU machine, in one go: build, devices, probe, record, then the record check and
# the Meter checks (bench/gpu_rerun_checks.sh).
# Usage: bash bench/gpu_all.sh OUTDIR   (wheels of cffi/pycparser in .whl/ when pip has no network)
set -u
out=$(realpath -m "${1:-gpu-results}")
mkdir -p "$out"
source bench/gpu_env.sh "$out/build.log"
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > "$out/gpu.csv"
python3 -m aipm_fast.cli devices | tee "$out/devices.txt"
python3 -m aipm_fast.cli devices --json > "$out/devices.json"
python3 -m aipm_fast.cli probe --seconds 5 | tee "$out/probe.txt"
python3 -m aipm_fast.cli probe --seconds 5 --json > "$out/probe.json"
python3 -m aipm_fast.cli record --out "$out/record" -- python3 -c "import sys; sys.path.insert(0,'bench'); from gpu_common import matmul_load; matmul_load(10)"
cp "$out/record/summary.json" "$out/record_summary.json"
bash bench/gpu_rerun_checks.sh "$out"     # the record check and the Meter checks
