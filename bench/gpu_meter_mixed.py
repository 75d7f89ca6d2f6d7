"""On a GPU: the Meter itself on a mixed workload, with a calibration in use, every op marked
with `m.inference()`. The same loads and schedule as bench/gpu_sensor_checks.py (steady runs,
then random runs of 15, 40 and 100 ms ops of three kinds), metered online; a second recorder
keeps the raw samples and the energy counter, for the truth and for the old placement offline
(bench/sensor_analysis.py --meter).

    python bench/gpu_meter_mixed.py CALIBRATION_FILE OUT_PREFIX [--seed 8]

writes OUT_PREFIX.capture.json (the recording) and OUT_PREFIX.inferences.csv (the Meter's).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from aipm_fast import Meter
from aipm_fast.config import EngineConfig
from aipm_fast.recorder import Recorder
from aipm_fast.sensor.capture import save
from aipm_fast.sensor.drive import CAPTURE_PERIODS_S, Loads, capture_config, recorded_capture, require_cuda
from bench.gpu_sensor_checks import KINDS, mixed_ops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("calibration_file")
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--mixed-s", type=float, default=30.0)
    args = ap.parse_args()
    torch = require_cuda(0)
    loads = Loads(torch, 0)
    loads.add_copy()
    rng = np.random.default_rng(args.seed)
    # no fast instant-field polling beside the Meter: only the samples and the counter matter here
    periods = {k: v for k, v in CAPTURE_PERIODS_S.items() if k != "nvml.power_instant"}
    config = capture_config(EngineConfig.from_env(), 0, periods)
    runs, events = [], []
    with Recorder(config, keep_history=True) as rec:
        t0 = time.monotonic_ns()
        with Meter(gpus=[0], cpu=False, calibration_file=args.calibration_file, cuda=True) as m:
            used = {m.recorder.channels[c].name: r.describe() for c, (r, _) in m.recorder.sensor_calibrations.items()}
            print("calibration in use:", used or "none", flush=True)
            with torch.cuda.stream(loads.stream):
                timeline = loads.timeline(t0)
                time.sleep(3.0)  # idle, for the steady idle power
                runs.append(("steady idle", timeline.anchor_s + 0.1, timeline.anchor_s + 2.9))
                plan = [(k, 3.0) for k in KINDS] + mixed_ops(rng, args.mixed_s)
                for i, (kind, dur) in enumerate(plan):
                    with m.inference():
                        events.append((kind, *loads.block(kind, dur)))
                    if i < len(KINDS):  # steady runs apart from each other and from the sequence
                        events[-1][2].synchronize()
                        time.sleep(0.5)
                    if i % 50 == 0:
                        rec.drain()
                blocks = timeline.blocks(events)
        time.sleep(0.6)
        rec.drain()
        for k, b in zip(KINDS, blocks):
            runs.append((f"steady {k}", b.start_s - 0.2, b.end_s + 0.3))
        runs.append(("mixed", blocks[len(KINDS)].start_s - 0.2, blocks[-1].end_s + 0.3))
        note = "hot: bf16 8192x8192 matmuls; copy: 1 GiB fp32 copies; cool: torch.cuda._sleep; every op a Meter mark"
        cap = recorded_capture(rec, 0, t0, blocks, runs, note)
    save(cap, f"{args.out}.capture.json")
    inf = m.inferences()
    inf = inf[inf["domain"] == "nvml:0"].sort_values("index")
    inf.to_csv(f"{args.out}.inferences.csv", index=False)
    print(f"{len(blocks)} ops, {len(inf)} marks; methods: {sorted(set(m.windows().get('method', [])))}")
    print(m.summary())


if __name__ == "__main__":
    main()
