"""The Meter on a real GPU (needs an NVIDIA GPU and torchvision).

    python bench/gpu_meter_checks.py --out meter_checks.json

1. windows: windows of 50 ms .. 2 s at random times during a long steady load, against the
   steady power from NVML's energy counter (read independently) times each window's length;
2. alternating: heavy and light kernels alternating on a known schedule, each an inference;
   per-inference energies by kind, and the window against the independent counter;
3. overhead: ResNet-50 (batch 128, fp16) with per-inference marks against without,
   interleaved in one process.
"""
from __future__ import annotations

import argparse
import json
import random
import threading
import time

import numpy as np
import torch
from gpu_common import IndependentCounter

from aipm_fast import Meter


def steady_windows(ref: IndependentCounter, seconds: float = 40.0) -> dict:
    lengths = [0.05, 0.1, 0.25, 1.0, 2.0]
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    stop = threading.Event()

    def load():
        # a deep queue, synchronised rarely, so the GPU never idles between products
        while not stop.is_set():
            for _ in range(200):
                a @ a
            torch.cuda.synchronize()

    with Meter(gpus=[0], cuda=False) as m:    # host-timed windows: edges taken by a side thread
        worker = threading.Thread(target=load)
        worker.start()
        time.sleep(3.0)                       # past the ramp-up
        t0, e0 = ref.read()
        rng = random.Random(1)
        end = time.monotonic() + seconds
        while time.monotonic() < end - 2.5:
            length = rng.choice(lengths)
            time.sleep(rng.uniform(0.0, 0.3))
            with m.window(f"{length}"):
                time.sleep(length)
        time.sleep(max(0.0, end - time.monotonic()))
        t1, e1 = ref.read()
        stop.set()
        worker.join()
    steady_w = (e1 - e0) / ((t1 - t0) / 1e9)
    w = m.windows()
    w = w[(w["domain"] == "nvml:0") & (w["start_ns"] > t0) & (w["end_ns"] < t1)]
    out = {"steady_power_w": steady_w, "span_s": (t1 - t0) / 1e9, "by_length": {}}
    for name, g in w.groupby("window"):
        err = np.abs(g["energy_j"] / (steady_w * g["duration_s"]) - 1) * 100
        out["by_length"][name] = {"n": int(len(g)), "median_abs_error_pct": float(np.median(err)),
                                  "p90_abs_error_pct": float(np.percentile(err, 90)),
                                  "median_rel_uncertainty_pct": float(np.median(g["uncertainty_j"] / g["energy_j"] * 100))}
    return out


def alternating(ref: IndependentCounter, seconds: float = 15.0) -> dict:
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    # light work: a spin kernel (torch.cuda._sleep, in GPU cycles at ~2 GHz) keeps one SM busy
    kinds = {"heavy_long": (big, 24), "light_long": (None, 60_000_000), "heavy_short": (big, 4),
             "light_short": (None, 8_000_000)}
    schedule = ["heavy_long", "light_long", "heavy_short", "light_short"]
    labels = []
    with Meter(gpus=[0]) as m:
        time.sleep(1.0)
        t0, e0 = ref.read()
        with m.window("alternating") as w:
            time.sleep(0.5)
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                kind = schedule[i % 4]
                x, reps = kinds[kind]
                with m.inference():
                    if x is None:
                        torch.cuda._sleep(reps)
                    else:
                        for _ in range(reps):
                            x @ x
                labels.append(kind)
                i += 1
                if i % 50 == 0:
                    torch.cuda.synchronize()     # keep the host near the GPU: the queue stays short
            torch.cuda.synchronize()
            time.sleep(0.5)
        t1, e1 = ref.read()
    inf = m.inferences()
    gpu = inf[inf["domain"] == "nvml:0"].sort_values("index").reset_index(drop=True)
    gpu["kind"] = [labels[i] for i in gpu["index"]]
    win = m.windows().set_index("domain").loc["nvml:0"]
    # the counter reads lie just outside the window, in idle time: add that idle energy
    idle_w = m.coordinator.tracks["nvml:0"].v[-5:].mean()
    outside_s = ((w.start_ns - t0) + (t1 - w.end_ns)) / 1e9
    out = {"window_j": float(win["energy_j"]), "reference_counter_j": e1 - e0,
           "window_vs_counter_pct": float(100 * ((win["energy_j"] + idle_w * outside_s) - (e1 - e0)) / (e1 - e0)),
           "window_s": float(win["duration_s"]), "sum_of_inferences_j": float(gpu["energy_j"].sum()),
           "kinds": {}}
    for kind, g in gpu.groupby("kind"):
        out["kinds"][kind] = {"n": int(len(g)), "latency_ms_median": float(g["latency_s"].median() * 1e3),
                              "energy_j_mean": float(g["energy_j"].mean()),
                              "energy_j_cv_pct": float(g["energy_j"].std() / g["energy_j"].mean() * 100),
                              "mean_power_w": float((g["energy_j"] / g["latency_s"]).median()),
                              "estimate_share": float(g["estimate"].mean())}
    return out


def overhead(pairs: int = 6, iters: int = 30) -> dict:
    import torchvision
    model = torchvision.models.resnet50(weights=None).cuda().half().to(memory_format=torch.channels_last).eval()
    x = torch.randn(128, 3, 224, 224, device="cuda", dtype=torch.half).to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for _ in range(10):
            model(x)
        torch.cuda.synchronize()
        times = {"off": [], "on": []}
        with Meter(gpus=[0]) as m:
            for p in range(pairs):
                for mode in (("off", "on") if p % 2 == 0 else ("on", "off")):
                    torch.cuda.synchronize()
                    t = time.perf_counter()
                    if mode == "on":
                        for _ in range(iters):
                            with m.inference():
                                model(x)
                    else:
                        for _ in range(iters):
                            model(x)
                    torch.cuda.synchronize()
                    times[mode].append((time.perf_counter() - t) / iters)
            inf = m.inferences()
            mark_cost = []
            for _ in range(2000):        # host CPU cost of one mark, around no work
                t = time.perf_counter_ns()
                with m.inference():
                    pass
                mark_cost.append(time.perf_counter_ns() - t)
    off, on = np.median(times["off"]), np.median(times["on"])
    return {"iter_ms_off": off * 1e3, "iter_ms_on": on * 1e3, "slowdown_pct": 100 * (on / off - 1),
            "pairs": pairs, "iters_per_block": iters, "mark_cpu_us_median": float(np.median(mark_cost) / 1e3),
            "joules_per_batch_median": float(inf[inf["domain"] == "nvml:0"]["energy_j"].median())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--only", choices=["windows", "alternating", "overhead"])
    args = p.parse_args()
    ref = IndependentCounter(0)
    result = {}
    for name, fn in (("windows", lambda: steady_windows(ref)), ("alternating", lambda: alternating(ref)),
                     ("overhead", overhead)):
        if args.only in (None, name):
            result[name] = fn()
            print(name, json.dumps(result[name], indent=2), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
