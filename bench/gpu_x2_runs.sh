#!/usr/bin/env bash
# Everything left for a machine with two GPUs, in one go: the data-parallel check on both GPUs,
# then, side by side, the Meter checks on GPU 0 and the input-size sweeps on GPU 1 (the meter
# of each reads only its own GPU). Results gather in a work folder that is packed into
# OUTDIR/results.tgz every 20 s, so a run cut short still returns what it measured.
# Usage: bash bench/gpu_x2_runs.sh OUTDIR [PART...]
#   PART: ddp, checks, alexnet, bert (default: all). CHECKS picks the Meter checks
#   (default: windows windows_fp32 windows_below_cap scaling); DDP_ARGS adds options to
#   gpu_ddp_check.py.
set -u
out=$(realpath -m "${1:-${OUT:-gpu-x2}}"); mkdir -p "$out"; shift || true
parts=" ${*:-ddp checks alexnet bert} "
checks_list=${CHECKS:-windows windows_fp32 windows_below_cap scaling}
want() { [[ "$parts" == *" $1 "* ]]; }
sweep_device=${SWEEP_DEVICE:-cuda:1}     # SWEEP_DEVICE=cuda on a machine of one GPU (run the parts one by one)
work=$(mktemp -d /tmp/aipm-x2.XXXXXX)
failed=""
source bench/gpu_env.sh "$work/build.log"
nvidia-smi --query-gpu=index,name,power.limit,driver_version --format=csv > "$work/gpus.csv" 2>&1

# each pack writes its own temporary file and renames it: the periodic and the final pack may overlap
pack() { local tmp="$out/.results.$BASHPID.tgz"; tar czf "$tmp" -C "$work" . 2>/dev/null; mv -f "$tmp" "$out/results.tgz"; }
( while sleep 20; do pack; done ) & packer=$!

if want ddp; then
  echo "== data-parallel check (2 GPUs) $(date -u +%T)"
  timeout 900 torchrun --nproc_per_node 2 bench/gpu_ddp_check.py ${DDP_ARGS:-} --out "$work/ddp.json" \
    > "$work/ddp.log" 2>&1 || failed="$failed ddp"
  tail -n 12 "$work/ddp.log"
  pack
fi

echo "== Meter checks on GPU 0, sweeps on GPU 1 $(date -u +%T)"
if want checks; then
  (cd bench && timeout 900 python3 gpu_meter_checks.py --only $checks_list --out "$work/meter_checks.json" \
     > "$work/meter_checks.log" 2>&1) &
  checks_pid=$!
fi
(status=0
 if want alexnet; then
   timeout 1800 python3 -m aipm_fast.cli bench --model alexnet --device "$sweep_device" --sizes 112:2240:112 --runs 10 \
     --duration 0.5 --warmup 1 --baseline 3 --no-plots --out "$work/alexnet" > "$work/alexnet.log" 2>&1 || status=1
 fi
 if want bert; then
   timeout 1800 python3 -m aipm_fast.cli bench --model bert --device "$sweep_device" --sizes 50:500:50 --runs 10 \
     --duration 1 --warmup 1 --baseline 3 --no-plots --out "$work/bert" > "$work/bert.log" 2>&1 || status=1
 fi
 exit $status) &
sweeps_pid=$!
if [ -n "${checks_pid:-}" ]; then wait "$checks_pid" || failed="$failed checks"; fi
wait "$sweeps_pid" || failed="$failed sweeps"
echo "done $(date -u +%T)"
tail -n 8 "$work"/*.log
kill $packer; wait $packer 2>/dev/null; pack
if [ -n "$failed" ]; then echo "failed:$failed (logs in results.tgz)"; exit 1; fi
