set -u
python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
python3 csrc/build_native.py > /tmp/build.log 2>&1 || { cat /tmp/build.log; exit 1; }
cd bench
python3 gpu_record_check.py --out $OUT/record_check.json
python3 gpu_meter_checks.py --out $OUT/meter_checks.json
