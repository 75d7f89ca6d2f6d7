"""On a GPU: the recordings behind the sensor-model checks of bench/RESULTS.md.

1. steady runs of each load alone (hot bf16 matmuls, copy HBM copies, cool spin kernel) and idle,
   3 s each: each kind's steady power from the energy counter;
2. edge runs: 40 cycles of idle 300 ms -> hot 300 ms, and 40 of cool -> hot: the counter's excess
   energy per cycle over the steady powers (what load changes cost beyond steady running);
3. mixed sequences: random runs of ops of the three kinds with durations of 15, 40 and 100 ms,
   back to back, each op's start and end from CUDA events.
Everything is recorded with the project's sampler (samples, instant field, counter) and written as
one sensor capture (aipm_fast/sensor/capture.py) with one run per part; the analysis runs offline
(bench/sensor_analysis.py), so old and new placement are compared on the same recording.

    python bench/gpu_sensor_checks.py OUT.json [--seed 7]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from aipm_fast.config import EngineConfig
from aipm_fast.recorder import Recorder
from aipm_fast.sensor.capture import save
from aipm_fast.sensor.drive import Loads, capture_config, recorded_capture, require_cuda
from aipm_fast.sensor.fit import Block

DURATIONS_S = (0.015, 0.040, 0.100)
KINDS = ("hot", "copy", "cool")
RUN_LENGTHS = (1, 1, 2, 6, 12)


def mixed_ops(rng, seconds: float):
    ops, total = [], 0.0
    while total < seconds:
        kind = KINDS[rng.integers(len(KINDS))]
        dur = DURATIONS_S[rng.integers(len(DURATIONS_S))]
        n = RUN_LENGTHS[rng.integers(len(RUN_LENGTHS))]
        ops += [(kind, dur)] * n
        total += n * dur
    return ops


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--mixed-s", type=float, default=40.0)
    args = ap.parse_args()
    torch = require_cuda(0)
    loads = Loads(torch, 0)
    loads.add_copy()
    rng = np.random.default_rng(args.seed)
    config = capture_config(EngineConfig.from_env(), 0)
    blocks: list[Block] = []
    runs = []
    with Recorder(config, keep_history=True) as rec:
        t0 = time.monotonic_ns()

        def part(name, plan):
            timeline = loads.timeline(t0)
            evs = []
            for kind, dur in plan:
                if kind == "idle":
                    if evs:
                        evs[-1][2].synchronize()
                    time.sleep(dur)
                    continue
                evs.append((kind, *loads.block(kind, dur)))
                if len(evs) % 50 == 0:
                    rec.drain()
            got = timeline.blocks(evs)
            blocks.extend(got)
            runs.append((name, got[0].start_s - 0.2, got[-1].end_s + 0.3))
            rec.drain()
            print(f"{name}: {len(got)} blocks, {got[-1].end_s - got[0].start_s:.1f} s", flush=True)

        # an idle span to measure idle power: a run without blocks, marked by its times
        time.sleep(0.5)
        i0 = (time.monotonic_ns() - t0) / 1e9
        time.sleep(3.0)
        runs.append(("steady idle", i0, (time.monotonic_ns() - t0) / 1e9))
        for kind in KINDS:
            part(f"steady {kind}", [(kind, 3.0)])
        part("edges idle-hot", [("hot", 0.3), ("idle", 0.3)] * 40)
        part("edges cool-hot", [("cool", 0.3), ("hot", 0.3)] * 40)
        part("mixed", mixed_ops(rng, args.mixed_s))
        time.sleep(0.6)
        rec.drain()
        note = "hot: bf16 8192x8192 matmuls; copy: 1 GiB fp32 copies; cool: torch.cuda._sleep"
        cap = recorded_capture(rec, 0, t0, blocks, runs, note)
    save(cap, args.out)
    print(f"wrote {args.out}: {len(blocks)} blocks, {cap.samples.shape[0]} samples")


if __name__ == "__main__":
    main()
