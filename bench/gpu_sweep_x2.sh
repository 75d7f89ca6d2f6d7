#!/usr/bin/env bash
# Issue 15's run on a machine of two (or more) GPUs: the same sweeps under torchrun one GPU at a
# time and with every GPU at once, the wall time of each, and per size the GPU J/inference of the
# two modes side by side with their spread (bench/sweep_compare.py) in OUTDIR/sweep_table.md.
#   AlexNet 112 to 2240 in steps of 112, 10 runs; ResNet-50 at batch 128 at 112, 224, 336, 10 runs.
# Fits about 500 s on two H200 by shortening the runs, never the sizes or their count: RUN_S
# seconds a run (default 0.8; the protocol's default is 5, the seed's 40) and WARMUP_S (0.3) of
# warm-up, which one GPU at a time repeats before every run (the GPU idled during the other's).
# Runs shorter than 5 s keep NVML's power trace unscaled by its energy counter (the counter is
# read every 5 s): the figures are the trace's, as each run's method says.
# Usage: source bench/gpu_env.sh /tmp/build.log && bash bench/gpu_sweep_x2.sh OUTDIR
#   NPROC (default: every GPU nvidia-smi lists), RUNS (10), RUN_S, WARMUP_S, MODELS (alexnet resnet50);
#   ARGS_<model> replaces a model's options (a quick try: ARGS_alexnet="--model alexnet --sizes 112,224")
set -u
out=$(realpath -m "${1:-gpu-sweep}"); mkdir -p "$out"
nproc=${NPROC:-$(nvidia-smi --list-gpus | wc -l)}
runs=${RUNS:-10}; run_s=${RUN_S:-0.8}; warmup_s=${WARMUP_S:-0.3}
models=${MODELS:-alexnet resnet50}
nvidia-smi --query-gpu=index,name,uuid,power.limit,driver_version --format=csv > "$out/gpus.csv" 2>&1
A="import sys; from aipm_fast.cli import main; sys.exit(main())"
echo "model,mode,nproc,wall_s,rc" > "$out/wall_times.csv"
args_alexnet=${ARGS_alexnet:-"--model alexnet --sizes 112:2240:112"}
args_resnet50=${ARGS_resnet50:-"--model resnet50 --batch-size 128 --sizes 112,224,336"}
for model in $models; do
  margs_var="args_$model"; margs=${!margs_var}
  for mode in one all; do
    dir="$out/$model-$mode"
    echo "== $model, --gpus-at-once $mode on $nproc GPUs $(date -u +%T)"
    t0=$(date +%s.%N)
    timeout 400 python3 -m torch.distributed.run --standalone --nproc_per_node "$nproc" -m aipm_fast.cli bench \
      $margs --runs "$runs" --duration "$run_s" --warmup "$warmup_s" --baseline 1 --no-plots \
      --gpus-at-once "$mode" --out "$dir" > "$out/$model-$mode.log" 2>&1
    rc=$?
    t1=$(date +%s.%N)
    wall=$(python3 -c "print(f'{$t1 - $t0:.1f}')")
    echo "$model,$mode,$nproc,$wall,$rc" >> "$out/wall_times.csv"
    echo "   wall ${wall} s, rc $rc"; tail -n 3 "$out/$model-$mode.log"
  done
  python3 bench/sweep_compare.py "$out/$model-one" "$out/$model-all" \
    --title "$model: GPU J/inference, one GPU at a time vs $nproc at once (runs of ${run_s} s)" \
    >> "$out/sweep_table.md" 2>> "$out/compare.log" || echo "compare failed for $model: see compare.log"
done
cat "$out/wall_times.csv"; cat "$out/sweep_table.md"
# the raw results, small enough to commit: the summaries, the sweep files, the logs
tar czf "$out/all.tgz" -C "$out" --exclude='*.parquet' --exclude='power_metrics.json' --exclude='latency.csv' \
  --exclude='all.tgz' . 2>/dev/null
