#!/usr/bin/env bash
# The seed's summary table on a GPU machine (yolov5s, resnet50, vit_b_16, bert at their native
# sizes and batch sizes), with the process's %SM and GPU memory and GPM, AIPowerMeter-compatible
# run folders; and the cost of the on-demand NVML queries. Usage: bash bench/gpu_seed_table.sh OUT
# MODELS (comma list, those not installed are left out), RUNS and ITERS override the defaults;
# SKIP_ENV=1 runs with the python on PATH (a CPU check against the fakes).
set -u
out=$(realpath -m "${1:-gpu-seed}"); mkdir -p "$out"
[ -n "${SKIP_ENV:-}" ] || source bench/gpu_env.sh /tmp/build.log
(cd bench && python3 bench_nvml_queries.py --repeats 200 --out "$out/nvml_queries.json" > /dev/null) \
  || echo "nvml query cost: failed"
models=$(MODELS="${MODELS:-yolov5s,resnet50,vit_b_16,bert}" python3 -c '
import os
from aipm_fast.bench.models import list_models
asked = os.environ["MODELS"].split(",")
ok = {r.name for r in list_models() if r.available}
print(",".join(m for m in asked if m in ok))
')
echo "models: $models"
python3 -m aipm_fast.cli bench --model "$models" --runs "${RUNS:-3}" --iters "${ITERS:-30}" --warmup 1 --baseline 1 \
  --no-plots --out "$out/seed" > "$out/seed_table.txt" 2> "$out/bench.log"
echo "bench exit $?"
cat "$out/seed_table.txt"; tail -5 "$out/bench.log"
python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1])), indent=1)[:3000])' "$out/nvml_queries.json"
