"""Recorded GPU energy against NVML's energy counter read independently (needs an NVIDIA GPU).

    python bench/gpu_record_check.py --load-seconds 10 --out result.json

Idle 1.5 s, bf16 matrix products for --load-seconds, idle 1.5 s, all inside one recording; the
reference counter is read (through nvidia-ml-py) 1 s into each idle edge, where power is low
and steady, so the counter's own ~100 ms update period costs little at the edges.
"""

from __future__ import annotations

import argparse
import json
import time

from aipm_fast.recorder import Recorder

from gpu_common import IndependentCounter, matmul_load


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--load-seconds", type=float, default=10.0)
    p.add_argument("--out")
    args = p.parse_args()
    ref = IndependentCounter(0)
    rec = Recorder(gpus=[0])
    rec.start()
    time.sleep(1.0)
    ta, ea = ref.read()
    time.sleep(0.5)
    n = matmul_load(args.load_seconds)
    time.sleep(1.0)
    tb, eb = ref.read()
    time.sleep(0.5)
    rec.stop()
    d = rec.energy(ta, tb)["nvml:0"]
    truth = eb - ea
    result = {
        "span_s": (tb - ta) / 1e9,
        "matmuls": n,
        "reference_counter_j": truth,
        "recorded_j": d.energy_j,
        "method": d.method,
        "recorded_error_pct": 100 * (d.energy_j - truth) / truth,
        "alternatives_error_pct": {k: 100 * (v - truth) / truth for k, v in d.alternatives.items()},
        "mean_power_w": truth / ((tb - ta) / 1e9),
        "sampler": rec.engine.sampler_stats(),
        "sampler_cpu_percent_of_core": 100 * rec.engine.sampler_stats()["cpu_ns"] / (rec.stop_ns - rec.start_ns),
        "channels": [s.__dict__ for s in rec.status()],
    }
    print(json.dumps({k: v for k, v in result.items() if k != "channels"}, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
