"""The Meter on a real GPU (needs an NVIDIA GPU and torchvision).

    python bench/gpu_meter_checks.py --out meter_checks.json

1. windows: windows of 50 ms .. 2 s at random times during a long steady load, against the
   steady power from NVML's energy counter (read independently) times each window's length
   (windows_fp32: on an fp32 product; windows_below_cap: on an HBM copy, below the power limit);
2. scaling: a periodic load phase-locked to the 50 Hz samples, trace alone against the trace
   scaled to the energy counter;
3. alternating: heavy and light kernels alternating on a known schedule, each an inference;
   per-inference energies by kind, and the window against the independent counter;
4. overhead: ResNet-50 (batch 128, fp16) with per-inference marks against without,
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

from aipm_fast import Meter
from aipm_fast._native import FLAG_REPEAT

from gpu_common import IndependentCounter


# Steady loads for the window check: each builder returns one unit of GPU work. The bf16 and
# fp32 products both run the H200 at its 700 W power limit, where the driver's power capping
# moves the power itself on short time scales; the HBM copy is memory-bound and runs below it.
def _matmul(dtype):
    def build():
        torch.backends.cuda.matmul.allow_tf32 = False
        a = torch.randn(8192, 8192, device="cuda", dtype=dtype)
        return lambda: a @ a

    return build


def _hbm_copy():
    src = torch.empty(2**29, device="cuda", dtype=torch.bfloat16)  # 1 GiB each way
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


LOADS = {"bf16_matmul": _matmul(torch.bfloat16), "fp32_matmul": _matmul(torch.float32), "hbm_copy": _hbm_copy}
WINDOW_COUNTS = {0.05: 60, 0.1: 60, 0.25: 40, 1.0: 20, 2.0: 15}


def steady_windows(ref: IndependentCounter, load: str = "bf16_matmul", seconds: float = 40.0) -> dict:
    """Windows of each length in WINDOW_COUNTS at random (overlapping) times during `seconds` of
    a steady load, against the steady power (independent counter over the load) x duration."""
    unit = LOADS[load]()
    stop = threading.Event()

    def work():
        # a deep queue, synchronised rarely, so the GPU never idles between units
        while not stop.is_set():
            for _ in range(100):
                unit()
            torch.cuda.synchronize()

    rng = random.Random(1)
    plan = sorted((rng.uniform(0.0, seconds - length), length) for length, n in WINDOW_COUNTS.items() for _ in range(n))
    with Meter(gpus=[0], cuda=False) as m:  # host-timed windows: edges taken by this thread
        drained = []  # every record, for the load's own steadiness
        m.recorder.add_sink(drained.append)
        worker = threading.Thread(target=work)
        worker.start()
        time.sleep(3.0)  # past the ramp-up
        t0, e0 = ref.read()
        begin = time.monotonic() + 0.1
        edges = sorted(
            [(begin + start, "open", i) for i, (start, _) in enumerate(plan)]
            + [(begin + start + length, "close", i) for i, (start, length) in enumerate(plan)]
        )
        opened = {}
        for at, what, i in edges:
            time.sleep(max(0.0, at - time.monotonic()))
            if what == "open":
                opened[i] = m.start_window(f"{plan[i][1]}")
            else:
                m.end_window(opened.pop(i))
        time.sleep(max(0.0, begin + seconds + 0.1 - time.monotonic()))
        t1, e1 = ref.read()
        stop.set()
        worker.join()
        m.recorder.remove_sink(drained.append)
        names = [str(n) for n in m.recorder.channel_names()]
    recs = np.concatenate(drained)
    recs = recs[
        (recs["channel"] == names.index("nvml:0.power_samples"))
        & (recs["flags"] & FLAG_REPEAT == 0)
        & (recs["t_ns"] > t0)
        & (recs["t_ns"] < t1)
    ]
    samples_w = recs["value"]
    steady_w = (e1 - e0) / ((t1 - t0) / 1e9)
    w = m.windows()
    w = w[(w["domain"] == "nvml:0") & (w["start_ns"] > t0) & (w["end_ns"] < t1)]
    out = {
        "load": load,
        "steady_power_w": steady_w,
        "span_s": (t1 - t0) / 1e9,
        # how steady the load is, seen by the 20 ms samples themselves
        "sample_power_cv_pct": float(samples_w.std() / samples_w.mean() * 100) if samples_w.size else None,
        "sample_power_p90_dev_pct": float(np.percentile(np.abs(samples_w / samples_w.mean() - 1), 90) * 100)
        if samples_w.size
        else None,
        "by_length": {},
    }
    for name, g in w.groupby("window"):
        err = np.abs(g["energy_j"] / (steady_w * g["duration_s"]) - 1) * 100
        out["by_length"][name] = {
            "n": int(len(g)),
            "median_abs_error_pct": float(np.median(err)),
            "p90_abs_error_pct": float(np.percentile(err, 90)),
            "median_rel_uncertainty_pct": float(np.median(g["uncertainty_j"] / g["energy_j"] * 100)),
        }
    return out


class CounterSpan:
    """A window of the Meter bracketed by reads of the independent counter in idle time:
    `idle_s` of idle inside the window at each end, so each stale counter read (up to 100 ms
    old) misses only idle energy. `compare` adds the idle energy between the reads and the
    window's edges and returns the window's energy against the counter."""

    def __init__(self, m: Meter, ref: IndependentCounter, name: str, idle_s: float):
        self.m, self.ref, self.name, self.idle_s = m, ref, name, idle_s

    def __enter__(self):
        self.t0, self.e0 = self.ref.read()
        self.mark = self.m.window(self.name)
        self.w = self.mark.__enter__()
        time.sleep(self.idle_s)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize()
        time.sleep(self.idle_s)
        self.mark.__exit__(*exc)
        self.idle_w = float(self.m.coordinator.live(100_000_000)["nvml:0"][1])  # the last ~5 samples
        self.t1, self.e1 = self.ref.read()

    def compare(self, window_j: float) -> tuple[float, float]:
        """(window energy + idle energy outside it, counter difference), J."""
        outside_s = ((self.w.start_ns - self.t0) + (self.t1 - self.w.end_ns)) / 1e9
        return window_j + self.idle_w * outside_s, self.e1 - self.e0


def periodic(ref: IndependentCounter, period_s: float, seconds: float = 10.0, reps: int = 3) -> dict:
    """A burst of `reps` bf16 8192^2 products every `period_s`, on the host's clock, for
    `seconds`. With a period of exactly 20 ms the bursts keep one phase against the driver's
    50 Hz samples, which see only part of each period: the trace alone is biased by that phase,
    and scaling the trace to the energy counter (what the Meter does over spans of 5 s or more)
    removes the bias. Returns both against the independent counter."""
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    period_ns = int(period_s * 1e9)
    with Meter(gpus=[0]) as m:
        time.sleep(1.0)
        with CounterSpan(m, ref, "periodic", idle_s=0.3) as span:
            nxt = time.monotonic_ns() + period_ns
            end = nxt + int(seconds * 1e9)
            while nxt < end:
                time.sleep(max(0.0, (nxt - time.monotonic_ns()) / 1e9))
                with m.inference():
                    for _ in range(reps):
                        big @ big
                nxt += period_ns
    win = m.windows().set_index("domain").loc["nvml:0"]
    scale = m.report()["scales"]["nvml:0"]
    scaled, truth = span.compare(float(win["energy_j"]))
    trace_alone, _ = span.compare(float(win["energy_j"]) / scale["factor"])
    inf = m.inferences()
    gpu = inf[inf["domain"] == "nvml:0"]
    return {
        "period_ms": period_s * 1e3,
        "burst_ms_median": float(gpu["latency_s"].median() * 1e3),
        "reference_counter_j": truth,
        "window_s": float(win["duration_s"]),
        "mean_power_w": truth / ((span.t1 - span.t0) / 1e9),
        "trace_alone_vs_counter_pct": 100 * (trace_alone - truth) / truth,
        "scaled_vs_counter_pct": 100 * (scaled - truth) / truth,
        "scale": scale,
    }


def scaling(ref: IndependentCounter) -> dict:
    """Phase-locked runs (random phase each) and one whose phase drifts through the period."""
    runs = [periodic(ref, 0.020) for _ in range(4)] + [periodic(ref, 0.0213)]
    return {"runs": runs}


def alternating(ref: IndependentCounter, seconds: float = 15.0) -> dict:
    big = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    # light work: a spin kernel (torch.cuda._sleep, in GPU cycles at ~2 GHz) keeps one SM busy
    kinds = {
        "heavy_long": (big, 24),
        "light_long": (None, 60_000_000),
        "heavy_short": (big, 4),
        "light_short": (None, 8_000_000),
    }
    schedule = ["heavy_long", "light_long", "heavy_short", "light_short"]
    labels = []
    with Meter(gpus=[0]) as m:
        time.sleep(1.0)
        with CounterSpan(m, ref, "alternating", idle_s=0.5) as span:
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
                    torch.cuda.synchronize()  # keep the host near the GPU: the queue stays short
    inf = m.inferences()
    gpu = inf[inf["domain"] == "nvml:0"].sort_values("index").reset_index(drop=True)
    gpu["kind"] = [labels[i] for i in gpu["index"]]
    win = m.windows().set_index("domain").loc["nvml:0"]
    metered, truth = span.compare(float(win["energy_j"]))
    out = {
        "window_j": float(win["energy_j"]),
        "reference_counter_j": truth,
        "window_vs_counter_pct": 100 * (metered - truth) / truth,
        "window_s": float(win["duration_s"]),
        "sum_of_inferences_j": float(gpu["energy_j"].sum()),
        "kinds": {},
    }
    for kind, g in gpu.groupby("kind"):
        out["kinds"][kind] = {
            "n": int(len(g)),
            "latency_ms_median": float(g["latency_s"].median() * 1e3),
            "energy_j_mean": float(g["energy_j"].mean()),
            "energy_j_cv_pct": float(g["energy_j"].std() / g["energy_j"].mean() * 100),
            "mean_power_w": float((g["energy_j"] / g["latency_s"]).median()),
            "estimate_share": float(g["estimate"].mean()),
        }
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
                for mode in ("off", "on") if p % 2 == 0 else ("on", "off"):
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
            for _ in range(2000):  # host CPU cost of one mark, around no work
                t = time.perf_counter_ns()
                with m.inference():
                    pass
                mark_cost.append(time.perf_counter_ns() - t)
    off, on = np.median(times["off"]), np.median(times["on"])
    return {
        "iter_ms_off": off * 1e3,
        "iter_ms_on": on * 1e3,
        "slowdown_pct": 100 * (on / off - 1),
        "pairs": pairs,
        "iters_per_block": iters,
        "mark_cpu_us_median": float(np.median(mark_cost) / 1e3),
        "joules_per_batch_median": float(inf[inf["domain"] == "nvml:0"]["energy_j"].median()),
    }


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument(
        "--only",
        nargs="+",
        choices=["windows", "windows_fp32", "windows_below_cap", "scaling", "alternating", "overhead"],
    )
    args = p.parse_args()
    ref = IndependentCounter(0)
    result = {}
    for name, fn in (
        ("windows", lambda: steady_windows(ref)),
        ("windows_fp32", lambda: steady_windows(ref, "fp32_matmul")),
        ("windows_below_cap", lambda: steady_windows(ref, "hbm_copy")),
        ("scaling", lambda: scaling(ref)),
        ("alternating", lambda: alternating(ref)),
        ("overhead", overhead),
    ):
        if args.only is None or name in args.only:
            result[name] = fn()
            print(name, json.dumps(result[name], indent=2), flush=True)
            if args.out:  # after each check: a run cut short keeps what it measured
                with open(args.out, "w") as f:
                    json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
