"""The cost of metering, on a GPU (or, with --cpu, on the fakes, to test this script).

    python3 bench/gpu_cost_checks.py --out DIR [--only sampler loops bench peers] [--resnet-rounds N]
        [--peer-rounds N] [--bench-sweeps N] [--diagnose [MODE ...]]

sampler  the sampler's CPU at default periods on this machine's real sources
loops    per-inference marks on launch-bound loops of ~1 ms inferences (a CUDA graph replayed,
         ResNet-18 at batch 1): after a warm-up, rounds of short blocks with and without marks
         (and without, again: the loop's own variability) alternating, the Meter running in all;
         slowdown = median of the rounds' pair ratios, with a 95% interval of that median (its
         resolution) and a verdict against the target (<= 1%)
bench    `aipm-fast bench` back to back: each run resolved while the next one runs (now) against
         a wait after every run at the former periods (before); per-run overhead = the run loop's
         wall time beyond its measuring time (target < 0.05 s), and J/inference of both. With
         --cpu the same 8 runs of 0.5 s, each pass 0.45 ms of host work standing in for AlexNet
peers    one inference loop under no meter, aipm-fast (a mark per inference in one window; one
         window), Zeus (a window per inference; one window) and CodeCarbon, interleaved; each
         tool's GPU energy against NVML's counter read independently around the same block
         (peers are optional installs of this benchmark only: `pip install zeus codecarbon`)

Each part writes DIR/<part>.json as soon as it is done, so a run cut short keeps what it had.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import dataclasses
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from aipm_fast import Meter  # noqa: E402
from aipm_fast.bench.protocol import Benchmark, BenchOptions  # noqa: E402
from aipm_fast.config import EngineConfig  # noqa: E402
from aipm_fast.recorder import Recorder  # noqa: E402

#: the periods before the cost issue: what the "before" runs of the bench part use
FORMER_PERIODS_S = {"rapl": 0.001, "nvml.power_samples": 0.25, "nvml.energy": 1.0, "nvml.memory_used": 0.1}


class Counter:
    """NVML's mJ energy counter of one GPU through ctypes, outside aipm-fast: the reference."""

    def __init__(self, library: str, gpu: int = 0):
        self.lib = ctypes.CDLL(library)
        if self.lib.nvmlInit_v2() != 0:
            raise RuntimeError(f"nvmlInit_v2 failed in {library}")
        self.dev = ctypes.c_void_p()
        if self.lib.nvmlDeviceGetHandleByIndex_v2(gpu, ctypes.byref(self.dev)) != 0:
            raise RuntimeError(f"no GPU {gpu} in {library}")

    def joules(self) -> float:
        mj = ctypes.c_ulonglong()
        if self.lib.nvmlDeviceGetTotalEnergyConsumption(self.dev, ctypes.byref(mj)) != 0:
            return float("nan")
        return mj.value / 1000.0


@dataclasses.dataclass
class Env:
    """Where the checks run: the device, how to wait for it, the NVML library, scale of the runs."""

    device: str
    nvml_lib: str
    quick: bool  # --cpu: short runs that test the script, not figures
    resnet_rounds: int | None = None  # --resnet-rounds: more rounds where the pairs scatter most
    peer_rounds: int = 6  # --peer-rounds: rounds of the peers' 1 s blocks
    bench_sweeps: int = 1  # --bench-sweeps: before/now sweep pairs, the order alternating
    #: --diagnose: the ResNet loop's marks split into their parts (these modes; empty: all)
    diagnose: tuple[str, ...] | None = None

    def sync(self) -> None:
        if self.device == "cuda":
            import torch

            torch.cuda.synchronize()

    def meter(self, **kw) -> Meter:
        return Meter(gpus=[0], nvml_lib=self.nvml_lib, cuda=self.device == "cuda", **kw)


# -- sampler ---------------------------------------------------------------------------------


def sampler(env: Env) -> dict:
    seconds = 3.0 if env.quick else 10.0
    rec = Recorder(gpus=[0], nvml_lib=env.nvml_lib, keep_history=False)
    rec.start()
    time.sleep(1.0)  # past the first pass: the steady state
    before = rec.engine.sampler_stats()
    reads0 = {cid: rec.engine.channel_stats(cid)["read_ns_total"] for cid in rec.channels}
    t0 = time.monotonic()
    time.sleep(seconds)
    after = rec.engine.sampler_stats()
    elapsed = time.monotonic() - t0
    reads = {rec.channels[cid].name: rec.engine.channel_stats(cid)["read_ns_total"] - r for cid, r in reads0.items()}
    periods = {c.name: c.period_s for c in rec.channels.values()}
    health = {rec.channels[cid].name: s for cid, s in rec.health().items()}
    rec.stop()
    rec.close()
    return {
        "seconds": elapsed,
        "cpu_percent_of_core": 100 * (after["cpu_ns"] - before["cpu_ns"]) / (elapsed * 1e9),
        "library_thread_cpu_percent": 100 * (after["library_cpu_ns"] - before["library_cpu_ns"]) / (elapsed * 1e9),
        "read_cpu_percent": {k: 100 * v / (elapsed * 1e9) for k, v in reads.items()},
        "periods_s": periods,
        "health": health,
        "fast_lateness_max_us": after["lateness_max_ns"] / 1e3,
        "missed_deadlines": after["missed_deadlines"] - before["missed_deadlines"],
    }


# -- launch-bound loops ----------------------------------------------------------------------


def one_ms_steps(env: Env) -> dict:
    """name -> a step of about 1 ms: a CUDA graph replayed, and ResNet-18 at batch 1."""
    import torch
    import torchvision

    steps = {}
    if env.device == "cuda":
        a = torch.randn(2048, 2048, device="cuda")
        b = torch.randn(2048, 2048, device="cuda")
        side = torch.cuda.Stream()  # cuBLAS makes its handle on a first product, never in a capture
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                a @ b
        torch.cuda.current_stream().wait_stream(side)
        torch.cuda.synchronize()
        n = 1
        while True:  # as many products as fill about 1 ms
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g):
                for _ in range(n):
                    a @ b
            g.replay()
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(20):
                g.replay()
            torch.cuda.synchronize()
            ms = (time.perf_counter() - t) / 20 * 1e3
            if ms >= 0.9 or n >= 512:
                break
            n = max(n + 1, int(n * 1.0 / max(ms, 1e-3)))
        steps[f"cuda_graph_{n}_products"] = g.replay
    else:  # a millisecond of host work stands in for the graph
        steps["busy_1ms"] = lambda: _busy(0.001)
    model = torchvision.models.resnet18(weights=None).eval().to(env.device)
    x = torch.randn(1, 3, 224 if env.device == "cuda" else 32, 224 if env.device == "cuda" else 32, device=env.device)

    def resnet18():
        with torch.inference_mode():
            model(x)

    steps["resnet18_batch1"] = resnet18
    return steps


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def interleaved(env: Env, modes: dict, pairs: int, block_s: float) -> dict:
    """Blocks of each mode in rotating order, `pairs` rounds; per mode the median over rounds of
    its time per step over the plain block's ('none'). A mode runs a block and returns (steps,
    seconds of its loop, the device's queue drained at the end)."""
    times: dict[str, list[float]] = {k: [] for k in modes}
    names = list(modes)
    for r in range(pairs):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order.reverse()
        for name in order:
            steps, seconds = modes[name](block_s)
            times[name].append(seconds / steps)
    ratios = {k: [v / n for v, n in zip(times[k], times["none"])] for k in names if k != "none"}
    return {
        "pairs": pairs,
        "step_ms": {k: 1e3 * float(np.median(v)) for k, v in times.items()},
        "slowdown_pct_median_of_pairs": {k: 100 * (float(np.median(v)) - 1) for k, v in ratios.items()},
        "slowdown_pct_pairs": {k: [round(100 * (x - 1), 3) for x in v] for k, v in ratios.items()},
    }


def median_ci95(values) -> tuple[float, float]:
    """A distribution-free 95% interval of the median (order statistics: the k-th smallest and
    largest of n values, k the largest with P(Binomial(n, 1/2) < k) <= 2.5%); (nan, nan) for
    fewer than 6 values, where no such k exists."""
    x = np.sort(np.asarray(values, dtype=float))
    n = x.size
    k, below = 0, 0.0
    while below + math.comb(n, k) / 2**n <= 0.025:
        below += math.comb(n, k) / 2**n
        k += 1
    if k == 0:
        return math.nan, math.nan
    return float(x[k - 1]), float(x[n - k])


#: per-inference marks may cost at most this much of a loop's time (issue: cost near zero)
LOOP_TARGET_PCT = 1.0


def paired_rounds(modes: dict, rounds: int, sub_blocks: int, steps: int) -> dict:
    """Each round runs `sub_blocks` short blocks of `steps` steps of every mode, alternating
    (the order rotates and reverses from one block to the next), so that what drifts over
    seconds (clocks, the machine's other work) falls on every mode alike; a round's figure per
    mode is its time per step over the round. Pair ratios are a mode's over 'none' in the same
    round; 'none_again' is 'none' once more, so its ratios are the loop's own variability (an
    A/A comparison). A mode runs one block of `steps` and returns its seconds (the device's
    queue drained at its end)."""
    names = list(modes)
    per_step: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        seconds = dict.fromkeys(names, 0.0)
        for j in range(sub_blocks):
            shift = (r * sub_blocks + j) % len(names)
            order = names[shift:] + names[:shift]
            if j % 2:
                order.reverse()
            for name in order:
                seconds[name] += modes[name](steps)
        for name in names:
            per_step[name].append(seconds[name] / (sub_blocks * steps))
    ratios = {k: [v / n for v, n in zip(per_step[k], per_step["none"])] for k in names if k != "none"}
    pct = {k: [100 * (x - 1) for x in v] for k, v in ratios.items()}
    ci = {k: median_ci95(v) for k, v in pct.items()}
    out = {
        "rounds": rounds,
        "sub_blocks_per_round": sub_blocks,
        "steps_per_sub_block": steps,
        "step_ms": {k: 1e3 * float(np.median(v)) for k, v in per_step.items()},
        "slowdown_pct_median_of_pairs": {k: float(np.median(v)) for k, v in pct.items()},
        "slowdown_pct_median_ci95": {k: list(v) for k, v in ci.items()},
        "slowdown_pct_pairs_iqr": {k: float(np.subtract(*np.percentile(v, [75, 25]))) for k, v in pct.items()},
        "slowdown_pct_pairs": {k: [round(x, 3) for x in v] for k, v in pct.items()},
    }
    lo, hi = ci["marks"]
    out["resolution_pct"] = (hi - lo) / 2  # half-width of the marks' interval of the median
    out["verdict"] = (
        f"met: <= {LOOP_TARGET_PCT}% with 95% confidence"
        if hi <= LOOP_TARGET_PCT
        else f"missed: > {LOOP_TARGET_PCT}% with 95% confidence"
        if lo > LOOP_TARGET_PCT
        else f"not resolved: the interval {lo:.2f}..{hi:.2f}% holds {LOOP_TARGET_PCT}%"
    )
    return out


#: per loop: (rounds, short blocks a round, steps a block); a block of the graph's 1 ms steps or
#: of ResNet-18's 2 ms ones lasts about 20 ms, a round 0.2 s of each mode
LOOP_PLAN = {"graph": (15, 10, 20), "resnet18_batch1": (50, 10, 10)}
LOOP_PLAN_CPU = {"graph": (6, 4, 5), "resnet18_batch1": (6, 4, 5)}  # --cpu: tests the script
WARMUP_S = 2.0  # of both modes, discarded: clocks, caches and the allocator settle


def raw_record_modes(step, in_place: dict) -> dict:
    """Diagnostics of what in an event record costs a launch-bound loop: one call a step after
    the step's launches (as marks that share their boundaries record once a step), its wall time
    taken around it in the loop (into `in_place`): the runtime's record through the C extension
    (cffi, which lets the GIL go for the call), the same record and the driver API's
    cuEventRecord through ctypes.PyDLL (which keeps the GIL), a record of an event made without
    timing (cudaEventDisableTiming, which marks cannot use), and a C call that does nothing but
    read the clock through cffi (what letting the GIL go costs by itself)."""
    import torch

    from aipm_fast._native import CudaRuntime, lib
    from aipm_fast.timing import loaded_cudart

    path = loaded_cudart()
    if path is None:
        return {}
    rt = ctypes.PyDLL(path)
    driver = ctypes.PyDLL("libcuda.so.1")
    ext = CudaRuntime(path)
    raw_stream = torch.cuda.current_stream().cuda_stream

    def made(flags: int) -> int:
        ev = ctypes.c_void_p()
        if rc := rt.cudaEventCreateWithFlags(ctypes.byref(ev), flags):
            raise RuntimeError(f"cudaEventCreateWithFlags({flags}): CUDA runtime error {rc}")
        return int(ev.value or 0)

    timed, untimed = made(0), made(2)  # cudaEventDefault, cudaEventDisableTiming
    stream_p, timed_p, untimed_p = ctypes.c_void_p(raw_stream), ctypes.c_void_p(timed), ctypes.c_void_p(untimed)
    calls = {
        "cffi_record": lambda: ext.record(timed, raw_stream),
        "pydll_record": lambda: rt.cudaEventRecord(timed_p, stream_p),
        "pydll_driver_record": lambda: driver.cuEventRecord(timed_p, stream_p),
        "pydll_record_untimed": lambda: rt.cudaEventRecord(untimed_p, stream_p),
        "cffi_clock_only": lambda: lib.aipm_now_ns() and 0,
    }

    def one_call_a_step(name, call):
        times = in_place.setdefault(f"{name}_us", [])

        def mode(steps):
            clock = time.perf_counter_ns
            torch.cuda.synchronize()
            t = time.perf_counter()
            for _ in range(steps):
                step()
                c0 = clock()
                if rc := call():
                    raise RuntimeError(f"{name}: error {rc}")
                times.append((clock() - c0) / 1e3)
            torch.cuda.synchronize()
            return time.perf_counter() - t

        return mode

    return {name: one_call_a_step(name, call) for name, call in calls.items()}


def loops(env: Env) -> dict:
    out = {}
    plan = LOOP_PLAN_CPU if env.quick else LOOP_PLAN
    with env.meter() as m:
        out["timer"] = getattr(m.timer, "kind", type(m.timer).__name__)
        for name, step in one_ms_steps(env).items():

            def plain(steps, step=step):
                env.sync()
                t = time.perf_counter()
                for _ in range(steps):
                    step()
                env.sync()
                return time.perf_counter() - t

            sharing = {"marks": 0, "shared_starts": 0}

            def marked(steps, step=step, sharing=sharing):
                shared0 = getattr(m.timer, "shared_starts", 0)
                env.sync()
                t = time.perf_counter()
                for _ in range(steps):
                    with m.inference():
                        step()
                env.sync()
                dt = time.perf_counter() - t
                sharing["marks"] += steps
                sharing["shared_starts"] += getattr(m.timer, "shared_starts", 0) - shared0
                return dt

            def hot_path_only(steps, step=step):
                """Marks the coordinator never sees: their events are read back and returned after
                the block, outside its time (the marks are dropped), so that the difference to
                `marks` is what the coordinator's work on them costs the loop."""
                coordinator, own = m.coordinator, collections.deque()
                real, coordinator.marks = coordinator.marks, own
                try:
                    return marked(steps)
                finally:
                    coordinator.marks = real
                    m.timer.resolve_all(list(own))

            def events_only(steps, step=step):
                """The timer's two boundary calls around each step, without the Meter's Python."""
                timer = m.timer
                tokens = []
                env.sync()
                t = time.perf_counter()
                for _ in range(steps):
                    start = timer.begin()
                    step()
                    tokens.append((0, "", timer.anchor, start, timer.end(start)))
                env.sync()
                dt = time.perf_counter() - t
                timer.resolve_all(tokens)
                return dt

            in_place: dict[str, list] = {"boundary_calls_us": [], "gpu_step_ms": []}

            def events_timed_in_place(steps, step=step, in_place=in_place):
                """events_only with the wall time of the timer's two calls taken around them in
                the loop, and each step's GPU time from its events: whether the events cost the
                loop host time where they are called, or GPU time between its kernels."""
                timer, clock = m.timer, time.perf_counter_ns
                tokens, calls = [], []
                env.sync()
                t = time.perf_counter()
                for _ in range(steps):
                    c0 = clock()
                    start = timer.begin()
                    c1 = clock()
                    step()
                    c2 = clock()
                    end = timer.end(start)
                    calls.append(c1 - c0 + clock() - c2)
                    tokens.append((0, "", timer.anchor, start, end))
                env.sync()
                dt = time.perf_counter() - t
                a, b = timer.resolve_all(tokens)
                in_place["boundary_calls_us"] += [c / 1e3 for c in calls]
                in_place["gpu_step_ms"] += [(y - x) / 1e6 for x, y in zip(a, b)]
                return dt

            modes = {"none": plain, "none_again": plain, "marks": marked}
            if env.diagnose is not None and name == "resnet18_batch1":
                parts = dict(
                    hot_path_only=hot_path_only, events_only=events_only, events_timed_in_place=events_timed_in_place
                )
                if env.device == "cuda":
                    parts.update(raw_record_modes(step, in_place))
                unknown = set(env.diagnose) - set(parts)
                if unknown:
                    raise ValueError(f"--diagnose: no mode {sorted(unknown)} here; the modes: {sorted(parts)}")
                modes.update({k: v for k, v in parts.items() if not env.diagnose or k in env.diagnose})
            with m.window("marked"):  # the marks' window; its edges (a device sync) outside every block
                t = time.perf_counter()
                n = 0
                while time.perf_counter() - t < (0.2 if env.quick else WARMUP_S):
                    plain(10)
                    marked(10)
                    n += 20
                out[f"{name}_ms_per_step"] = (time.perf_counter() - t) / n * 1e3
                rounds, sub_blocks, steps = plan["resnet18_batch1" if name == "resnet18_batch1" else "graph"]
                if name == "resnet18_batch1" and env.resnet_rounds:
                    rounds = env.resnet_rounds
                out[name] = paired_rounds(modes, rounds, sub_blocks, steps)
                # of the marks made in the blocks (the first of each block follows a sync, so at
                # most (steps - 1) / steps): how many began at the previous mark's end event
                # (host-timed marks record no events: nothing to share, NaN)
                out[name]["shared_starts_fraction"] = (
                    sharing["shared_starts"] / max(1, sharing["marks"])
                    if hasattr(m.timer, "shared_starts")
                    else float("nan")
                )
                out[name]["shared_starts_fraction_at_most"] = (steps - 1) / steps
                if in_place["gpu_step_ms"]:
                    out[name]["in_place"] = {
                        k: {q: float(np.percentile(v, q)) for q in (10, 50, 90, 99)} for k, v in in_place.items() if v
                    }
    return out


# -- bench back to back ----------------------------------------------------------------------


class WaitingBenchmark(Benchmark):
    """The protocol as it was: every run waits for its energy before the next one starts."""

    def _one_run(self, model, inputs, size, k):
        super()._one_run(model, inputs, size, k)
        self._finish_runs(wait=True)


#: on the CPU a forward pass is this much host work, standing in for AlexNet at batch 1 on an
#: H200 (0.40-0.48 ms a pass, about 1,000 passes a run): the run files are then as large as there
STAND_IN_PASS_S = 0.00045


def _stand_in_pass(model, inputs) -> None:
    _busy(STAND_IN_PASS_S)


def bench(env: Env) -> dict:
    """Same runs on the GPU and on the CPU (with fakes and the stand-in pass): the per-run
    overhead is the run loop's own, so the CPU measures it too."""
    if env.device == "cuda":
        return _bench(env)
    from unittest import mock

    from aipm_fast.bench import models

    with mock.patch.object(models, "forward", _stand_in_pass):
        out = _bench(env)
    out["stand_in_pass_s"] = STAND_IN_PASS_S
    return out


def _bench(env: Env) -> dict:
    runs, duration = 8, 0.5
    kinds = {
        "before": (WaitingBenchmark, FORMER_PERIODS_S, None),
        "now": (Benchmark, {}, EngineConfig().backoff_quiet_s),
    }
    sweeps = []
    for i in range(env.bench_sweeps):
        order = ["before", "now"] if i % 2 == 0 else ["now", "before"]
        sweeps.append(
            {"order": order, **{label: _bench_sweep(env, label, *kinds[label], runs, duration) for label in order}}
        )
    out: dict = dict(sweeps[0])  # the first sweep's figures where one sweep was asked for, as before
    if len(sweeps) > 1:
        out["sweeps"] = sweeps
        for label in kinds:
            out[f"{label}_median_of_sweeps"] = {
                "overhead_per_run_s": float(np.median([s[label]["overhead_per_run_s"] for s in sweeps])),
                "gpu_joules_per_inference": float(
                    np.median([s[label]["summary"].get("gpu_joules_per_inference", np.nan) for s in sweeps])
                ),
                "latency_median_s": float(np.median([s[label]["summary"]["latency_median_s"] for s in sweeps])),
            }
    return out


def _bench_sweep(env: Env, label: str, cls, periods, backoff, runs: int, duration: float) -> dict:
    """One sweep of `runs` runs of AlexNet at 224 px, batch 1, in the given way (before: a wait
    after every run at the former periods; now: each run resolved while the next one runs)."""
    import pandas as pd

    config = dataclasses.replace(
        EngineConfig.from_env(gpus=[0], nvml_lib=env.nvml_lib, periods_s=periods), backoff_quiet_s=backoff
    )
    folder = tempfile.mkdtemp(prefix=f"bench-{label}-")
    opts = BenchOptions(
        model="alexnet",
        sizes=[224],
        batch_size=1,
        runs=runs,
        duration_s=duration,
        warmup_s=0.5,
        baseline_s=1.0,
        device=env.device,
        out=folder,
        engine={"config": config},
    )
    b = cls(opts, log=lambda *a: None)
    spans: list[float] = []
    writes: list[float] = []  # seconds of each run's files, written between runs or at the end
    in_loop: list[int] = []
    original, write = b._runs_of_size, b._write_run

    def timed_runs(model, inputs, size, original=original, b=b, spans=spans, in_loop=in_loop, writes=writes):
        t = time.perf_counter()
        original(model, inputs, size)
        spans.append(time.perf_counter() - t)
        in_loop.append(len(writes))
        b._finish_runs(wait=True)  # the last runs' energies: once per sweep, timed apart
        spans.append(time.perf_counter() - t - spans[0])

    def timed_write(*args, write=write, writes=writes):
        t = time.perf_counter()
        written = write(*args)
        writes.append(time.perf_counter() - t)
        return written

    b._runs_of_size = timed_runs  # type: ignore[method-assign]
    b._write_run = timed_write  # type: ignore[method-assign]
    b.run()
    summary = pd.read_csv(os.path.join(folder, "summary.csv"))
    row = summary.iloc[0].to_dict()
    return {
        "runs": runs,
        "run_s": duration,
        "runs_wall_s": spans[0],
        "overhead_per_run_s": (spans[0] - runs * duration) / runs,
        "final_wait_s": spans[1],
        "run_files_s_median": float(np.median(writes)),
        "run_files_s": [round(x, 4) for x in writes],
        "run_files_written_in_the_run_loop": in_loop[0],
        "summary": {k: (float(v) if isinstance(v, (int, float, np.floating)) else str(v)) for k, v in row.items()},
    }


# -- peers -----------------------------------------------------------------------------------


def peers(env: Env) -> dict:
    import torch
    import torchvision

    out: dict = {"installed": {}}
    model = torchvision.models.resnet18(weights=None).eval().to(env.device)
    size = 224 if env.device == "cuda" else 32
    x = torch.randn(8, 3, size, size, device=env.device)

    def step():
        with torch.inference_mode():
            model(x)

    for _ in range(20):
        step()
    env.sync()
    counter = Counter(env.nvml_lib)
    energies: dict[str, list[tuple[float, float]]] = {}  # mode -> (tool J, counter J) per block
    block_s = 0.3 if env.quick else 1.0

    timing: list[tuple[int, float]] = []  # (steps, seconds) of the last loop

    def loop(block_s, each=None):
        env.sync()
        t = time.perf_counter()
        end = t + block_s
        steps = 0
        while time.perf_counter() < end:
            if each is None:
                step()
            else:
                with each():
                    step()
            steps += 1
        env.sync()
        timing[:] = [(steps, time.perf_counter() - t)]

    def against_counter(name, run):
        """Runs a block between two reads of the independent counter; run returns the tool's J.
        The slowdown is of the loop itself (its steps per second); the tool's start and stop
        around it are in its energy span, not in the loop's time."""

        def mode(block_s):
            env.sync()
            c0 = counter.joules()
            got = run(block_s)
            env.sync()
            energies.setdefault(name, []).append((got, counter.joules() - c0))
            return timing[0]

        return mode

    def plain(block_s):
        loop(block_s)
        return timing[0]

    modes = {"none": plain}
    meter = env.meter()
    meter.start()
    windows: dict[str, list] = {"aipm_marks": [], "aipm_window": []}

    def aipm(marks: bool):
        key = "aipm_marks" if marks else "aipm_window"

        def run(block_s):
            with meter.window(key) as w:
                loop(block_s, meter.inference if marks else None)
            windows[key].append(w)
            return float("nan")  # read once resolved, below

        return against_counter(key, run)

    modes["aipm_marks"] = aipm(True)
    modes["aipm_window"] = aipm(False)
    try:
        from zeus.monitor import ZeusMonitor

        zeus = ZeusMonitor(gpu_indices=[0])
        out["installed"]["zeus"] = __import__("zeus").__version__

        def zeus_each():
            @contextlib.contextmanager
            def window():
                zeus.begin_window("inference")
                yield
                per.append(zeus.end_window("inference").gpu_energy[0])

            return window()

        per: list[float] = []

        def zeus_per_inference(block_s):
            per.clear()
            loop(block_s, zeus_each)
            return float(sum(per))

        def zeus_window(block_s):
            zeus.begin_window("block")
            loop(block_s)
            return float(zeus.end_window("block").gpu_energy[0])

        modes["zeus_per_inference"] = against_counter("zeus_per_inference", zeus_per_inference)
        modes["zeus_window"] = against_counter("zeus_window", zeus_window)
    except Exception as exc:  # not installed, or no GPU for it
        out["installed"]["zeus"] = f"not used: {exc!r}"
    try:
        from codecarbon import OfflineEmissionsTracker

        out["installed"]["codecarbon"] = __import__("codecarbon").__version__

        def codecarbon(block_s):
            tracker = OfflineEmissionsTracker(
                country_iso_code="USA", gpu_ids=[0], measure_power_secs=1, save_to_file=False, log_level="error"
            )
            tracker.start()
            loop(block_s)
            tracker.stop()
            return float(tracker.final_emissions_data.gpu_energy) * 3.6e6  # kWh -> J

        modes["codecarbon"] = against_counter("codecarbon", codecarbon)
    except Exception as exc:
        out["installed"]["codecarbon"] = f"not used: {exc!r}"
    out["slowdown"] = interleaved(env, modes, 4 if env.quick else env.peer_rounds, block_s)
    out["slowdown"]["slowdown_pct_median_ci95"] = {
        k: list(median_ci95(v)) for k, v in out["slowdown"]["slowdown_pct_pairs"].items()
    }
    meter.stop()
    for key, ws in windows.items():  # aipm-fast's energies, now resolved
        table = meter.windows()
        gpu = table[table["domain"] == "nvml:0"].set_index("window_id")["energy_j"]
        energies[key] = [(float(gpu.get(w.id, np.nan)), c) for w, (_, c) in zip(ws, energies.get(key, []))]
    out["energy_vs_counter_pct"] = {
        k: [round(100 * (t / c - 1), 3) if c > 0 else None for t, c in v] for k, v in energies.items()
    }
    out["energy_vs_counter_pct_median"] = {
        k: float(np.nanmedian([100 * (t / c - 1) for t, c in v if c > 0])) if v else None for k, v in energies.items()
    }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--only", nargs="+", choices=["sampler", "loops", "bench", "peers"])
    ap.add_argument("--cpu", action="store_true", help="test this script on the CPU with the fakes (AIPM_NVML_LIB)")
    ap.add_argument(
        "--resnet-rounds",
        type=int,
        help=f"rounds of the ResNet-18 loop (default {LOOP_PLAN['resnet18_batch1'][0]}; each about 0.45 s on an H200)",
    )
    ap.add_argument(
        "--peer-rounds",
        type=int,
        default=6,
        help="rounds of the peers' interleaved 1 s blocks (default 6; each round one block of every tool)",
    )
    ap.add_argument(
        "--bench-sweeps",
        type=int,
        default=1,
        help="before/now sweeps of the bench check (default 1), the order alternating: what drifts "
        "over the call (the GPU's temperature, the machine's other work) falls on both",
    )
    ap.add_argument(
        "--diagnose",
        nargs="*",
        metavar="MODE",
        help="ResNet-18 loop also with marks the coordinator never sees, with bare timer calls and with "
        "single raw event records in place (these modes, or all of them where none is named: "
        "hot_path_only events_only events_timed_in_place cffi_record pydll_record pydll_driver_record "
        "pydll_record_untimed cffi_clock_only)",
    )
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    env = Env(
        device="cpu" if args.cpu else "cuda",
        nvml_lib=os.environ.get("AIPM_NVML_LIB", "libnvidia-ml.so.1"),
        quick=args.cpu,
        resnet_rounds=args.resnet_rounds,
        peer_rounds=args.peer_rounds,
        bench_sweeps=args.bench_sweeps,
        diagnose=None if args.diagnose is None else tuple(args.diagnose),
    )
    for name, fn in (("sampler", sampler), ("loops", loops), ("bench", bench), ("peers", peers)):
        if args.only and name not in args.only:
            continue
        t = time.perf_counter()
        try:
            result = fn(env)
        except Exception as exc:  # one part failing must not cost the others their figures
            import traceback

            result = {"error": repr(exc), "traceback": traceback.format_exc()}
        result["part_wall_s"] = time.perf_counter() - t
        print(name, json.dumps(result, indent=1, default=str), flush=True)
        with open(os.path.join(args.out, f"{name}.json"), "w") as f:
            json.dump(result, f, indent=2, default=str)


if __name__ == "__main__":
    main()
