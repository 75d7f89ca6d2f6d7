#!/usr/bin/env bash
# The record check and the Meter checks on a GPU machine, results into $OUT (the device runner's
# output folder) or the folder given. Usage: bash bench/gpu_rerun_checks.sh [OUTDIR]
set -u
out=$(realpath -m "${1:-${OUT:-gpu-checks}}"); mkdir -p "$out"
source bench/gpu_env.sh /tmp/build.log
cd bench
python3 gpu_record_check.py --out "$out/record_check.json"
python3 gpu_meter_checks.py --out "$out/meter_checks.json"
