#!/usr/bin/env bash
# The record check and the Meter checks on a GPU machine, results into $OUT (the device runner's
# output folder) or the folder given. Usage: bash bench/gpu_rerun_checks.sh [OUTDIR]
set -u
out=$(realpath -m "${1:-${OUT:-gpu-checks}}"); mkdir -p "$out"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
python3 csrc/build_native.py > /tmp/build.log 2>&1 || { cat /tmp/build.log; exit 1; }
cd bench
python3 gpu_record_check.py --out "$out/record_check.json"
python3 gpu_meter_checks.py --out "$out/meter_checks.json"
