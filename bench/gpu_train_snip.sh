#!/usr/bin/env bash
# The SNIP paper's table redone on a GPU (issue 17, item 4, its training half): LeNet5-Caffe and
# VGG-D trained a fixed number of steps, unpruned and, once the train command has --prune (the
# pruning side), pruned with SNIP at each sparsity of PRUNE (masked dense weights, the seed's
# case): parameters, time, Wh per run, J/step. Runs in about 150 s on an H200:
#   source bench/gpu_env.sh /tmp/build.log && bash bench/gpu_train_snip.sh OUT
# OUT/table/<model>[_snip<S>]/ are the train folders, OUT/table/seed_table.{csv,md} the combined
# table (also OUT/snip_table.txt), OUT/<folder>.txt and .log each command's table and messages.
# PRUNE: comma list of SNIP sparsities (default 0.95,0.98; empty: unpruned only); without
# --prune in this checkout the pruned rows are skipped, saying so. DATA: --data of the runs
# (default synthetic: the GPU machine has no scikit-learn for digits). DEVICE, RUNS, STEPS_LENET,
# STEPS_VGG, BATCH_VGG, WARMUP, BASELINE override the defaults (a check on CPU sets them small).
set -u
out=$(realpath -m "${1:-gpu-train-snip}"); mkdir -p "$out/table"
PRUNE=${PRUNE-0.95,0.98}
DEVICE=${DEVICE:-cuda} RUNS=${RUNS:-3} WARMUP=${WARMUP:-1} BASELINE=${BASELINE:-2}
A="import sys; from aipm_fast.cli import main; sys.exit(main())"
data=(); [ -n "${DATA:-}" ] && data=(--data "$DATA")

train() {  # train FOLDER ARGS...: one train command into OUT/table/FOLDER
  local folder=$1; shift
  python3 -c "$A" train "$@" "${data[@]}" --device "$DEVICE" --runs "$RUNS" --warmup "$WARMUP" \
    --baseline "$BASELINE" --no-plots --out "$out/table/$folder" > "$out/$folder.txt" 2> "$out/$folder.log"
  echo "$folder: exit $?"
}

can_prune=0
python3 -c "$A" train --help | grep -q -- "--prune" && can_prune=1
for model in lenet5_caffe vgg_d; do
  if [ "$model" = lenet5_caffe ]; then
    args=(--model lenet5_caffe --steps "${STEPS_LENET:-1000}")
  else
    args=(--model vgg_d --steps "${STEPS_VGG:-300}" --batch-size "${BATCH_VGG:-128}")
  fi
  train "$model" "${args[@]}"
  for sparsity in ${PRUNE//,/ }; do
    if [ "$can_prune" = 1 ]; then
      train "${model}_snip${sparsity}" "${args[@]}" --prune snip --sparsity "$sparsity" --sparsity-format masked
    else
      echo "${model}_snip${sparsity}: skipped: this train command has no --prune (the pruning side is not here)"
    fi
  done
done
python3 -c "$A" report "$out/table" > "$out/snip_table.txt" 2> "$out/report.log"
echo "report: exit $?"
cat "$out/snip_table.txt"
