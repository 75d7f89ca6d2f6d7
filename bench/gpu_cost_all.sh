#!/usr/bin/env bash
# The cost checks of bench/RESULTS.md ("Cost near zero") in one go on a GPU machine:
#
#   bash bench/gpu_cost_all.sh OUTDIR [PEER_WHEELS_DIR]
#
# the mark's host CPU (bench_marks), the launch-bound loops with marks and the bench back to back,
# the peers (only where a folder of Zeus's and CodeCarbon's wheels is given: they are optional
# installs of that benchmark, never of the package), and the ResNet-18 loop split into its parts
# (--diagnose). Every step's output goes to its own file, and all of it is packed into
# OUTDIR/all.tgz after each step, so that a run cut short keeps what it had.
set -uo pipefail
out=$(realpath -m "${1:?usage: gpu_cost_all.sh OUTDIR [PEER_WHEELS_DIR]}"); peers=${2:-}
raw=$(mktemp -d); mkdir -p "$out"
source bench/gpu_env.sh "$raw/build.log" || exit 1
nvidia-smi --query-gpu=name,driver_version,power.limit --format=csv > "$raw/gpu.csv" 2>&1
step() {
  local name=$1; shift
  echo "== $name ($(date -u +%H:%M:%S) UTC): $*"
  "$@" > "$raw/$name.txt" 2>&1; echo "rc $?"
  tail -n 12 "$raw/$name.txt"
  tar czf "$out/all.tgz" -C "$raw" .
}
step marks python3 bench/bench_marks.py --cuda --seconds 3 --out "$raw/marks.json"
step loops python3 bench/gpu_cost_checks.py --out "$raw/loops" --only loops bench --resnet-rounds 200
if [ -n "$peers" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/peers "$peers"/*.whl
  PYTHONPATH=$PYTHONPATH:/tmp/peers step peers python3 bench/gpu_cost_checks.py --out "$raw/peers" --only peers \
    --peer-rounds 12
fi
step diagnose python3 bench/gpu_cost_checks.py --out "$raw/diagnose" --only loops --resnet-rounds 40 --diagnose
echo "== done ($(date -u +%H:%M:%S) UTC)"
