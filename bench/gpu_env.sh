# Sourced by the GPU scripts: installs the wheels carried in .whl/ (cffi and pycparser, which the
# GPU machine's python lacks), puts them and the checkout on
# PYTHONPATH, and builds the extension in place. Usage: source bench/gpu_env.sh BUILD_LOG
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
python3 csrc/build_native.py > "$1" 2>&1 || { cat "$1"; exit 1; }
