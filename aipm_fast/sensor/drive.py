"""Drive a GPU through a known load schedule and record its power sensors: the measurement
behind `aipm-fast calibrate`.

Loads are CUDA graphs, so that their start and end on the GPU are where their CUDA events say:
"hot" is bf16 matmuls (near the power limit), "cool" a single-thread spin kernel (barely above
idle). Between blocks the GPU is either idle (the host waits for the block's end event, then
sleeps) or runs the other load back to back. The schedule: steps (long idle, long hot), then
square waves of several periods against idle and against cool, each with off halves jittered by
+-20% so that edges fall at every phase of the 20 ms sample grid. Each part is one run; every
other run is held out of the fit to judge the models (fit.py).

Event times are mapped to the sampler's clock (CLOCK_MONOTONIC) through an anchor event recorded
on an idle device, re-taken at every run, as timing.EventTimer does for marks.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from aipm_fast.sensor.capture import Capture
from aipm_fast.sensor.fit import Block

#: square-wave periods (s) and how long each runs (s); `calibrate --square-periods` plays others (for
#: instance bursts as short as the phases of an inference a profile resolves)
PERIODS_S = (0.4, 0.2, 0.12, 0.08, 0.04)
#: the shortest period a square wave may have: half of it is one block of the hot load's graph
#: (about 4 ms), and the host's sleep between blocks is not much finer
MIN_PERIOD_S = 0.008
RUN_S = 4.0
STEP_HOLD_S = 0.8
STEPS = 4
JITTER = 0.2


def parse_periods(text: str) -> tuple[float, ...]:
    """`calibrate --square-periods`: square-wave periods in ms, comma separated, to seconds (ValueError
    naming the bad item)."""
    periods = []
    for item in text.split(","):
        try:
            ms = float(item)
        except ValueError:
            raise ValueError(f"{item.strip()!r} is not a number of milliseconds") from None
        if not ms >= MIN_PERIOD_S * 1e3 or ms > 10_000:
            raise ValueError(f"{item.strip()!r}: a period is {MIN_PERIOD_S * 1e3:g} to 10000 ms")
        periods.append(ms / 1e3)
    return tuple(periods)


class NoGpu(RuntimeError):
    """Calibration needs torch with a CUDA device."""


def require_cuda(device: int, what: str = "calibrate"):
    """torch, where it sees CUDA GPU `device`; NoGpu saying what `what` needs otherwise."""
    try:
        import torch
    except ImportError as exc:
        raise NoGpu(
            f"{what} drives the GPU with torch: install it (pip install torch) on a machine with a GPU"
        ) from exc
    if not torch.cuda.is_available():
        raise NoGpu(f"{what} needs a CUDA GPU, and torch sees none here (torch.cuda.is_available() is False)")
    if device >= torch.cuda.device_count():
        raise NoGpu(f"--gpu {device}: torch sees {torch.cuda.device_count()} GPU(s)")
    return torch


class Timeline:
    """CUDA events on the sampler's clock: an anchor event recorded on an idle device, and the
    host time (s after t0) around it, as timing.EventTimer maps marks."""

    def __init__(self, torch, anchor, anchor_s: float):
        self.torch, self.anchor, self.anchor_s = torch, anchor, anchor_s

    def blocks(self, events) -> list[Block]:
        """[(kind, start event, end event)] -> Blocks, once the device has run them."""
        self.torch.cuda.synchronize()
        at = self.anchor.elapsed_time
        return [Block(k, self.anchor_s + at(e0) / 1e3, self.anchor_s + at(e1) / 1e3) for k, e0, e1 in events]

    def seconds(self, event) -> float:
        """An event's time (s after t0), once the device has run it."""
        return self.anchor_s + self.anchor.elapsed_time(event) / 1e3


def anchor_timeline(torch, stream, t0_ns: int, settle_s: float = 0.0) -> Timeline:
    """Wait for the device to be idle (then `settle_s` more), record an anchor event on `stream`
    and take the host time around it: CUDA events recorded later map to s after t0_ns."""
    torch.cuda.synchronize()
    if settle_s > 0:
        time.sleep(settle_s)
    with torch.cuda.stream(stream):
        anchor = torch.cuda.Event(enable_timing=True)
        h0 = time.monotonic_ns()
        anchor.record()
        anchor.synchronize()
        h1 = time.monotonic_ns()
    return Timeline(torch, anchor, ((h0 + h1) / 2 - t0_ns) / 1e9)


class Loads:
    """The two loads as CUDA graphs of about `unit_s` each, replayed to make a block's length."""

    def __init__(self, torch, device: int, unit_s: float = 0.004):
        self.torch = torch
        self.dev = torch.device("cuda", device)
        torch.cuda.set_device(self.dev)
        self.stream = torch.cuda.Stream(self.dev)
        n = 8192
        self.a = torch.randn(n, n, device=self.dev, dtype=torch.bfloat16)
        self.b = torch.randn(n, n, device=self.dev, dtype=torch.bfloat16)
        self.c = torch.empty(n, n, device=self.dev, dtype=torch.bfloat16)
        self.hot = self._graph(lambda: torch.matmul(self.a, self.b, out=self.c))
        per_matmul = self._time(self.hot, 20)
        self.hot_reps = max(1, round(unit_s / per_matmul))
        self.hot = self._graph(lambda: [torch.matmul(self.a, self.b, out=self.c) for _ in range(self.hot_reps)])
        self.hot_s = self._time(self.hot, 20)
        cycles = 1_000_000
        spin = self._graph(lambda: torch.cuda._sleep(cycles))
        per_cycle = self._time(spin, 10) / cycles
        self.cool = self._graph(lambda: torch.cuda._sleep(int(unit_s / per_cycle)))
        self.cool_s = self._time(self.cool, 10)
        self.graphs = {"hot": (self.hot, self.hot_s), "cool": (self.cool, self.cool_s)}

    def add_copy(self, unit_s: float = 0.004) -> None:
        """A third load between the two: HBM-bound copies of a large buffer ("copy")."""
        torch = self.torch
        src = torch.empty(256 * 1024 * 1024, device=self.dev, dtype=torch.float32)
        dst = torch.empty_like(src)
        one = self._graph(lambda: dst.copy_(src))
        reps = max(1, round(unit_s / self._time(one, 10)))
        g = self._graph(lambda: [dst.copy_(src) for _ in range(reps)])
        self._copy_buffers = (src, dst)
        self.graphs["copy"] = (g, self._time(g, 10))

    def _graph(self, fn):
        torch = self.torch
        with torch.cuda.stream(self.stream):
            fn()  # warm up outside capture
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g, stream=self.stream):
            fn()
        torch.cuda.synchronize()
        return g

    def _time(self, graph, reps: int) -> float:
        torch = self.torch
        with torch.cuda.stream(self.stream):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(reps):
                graph.replay()
            e1.record()
        e1.synchronize()
        return e0.elapsed_time(e1) / 1e3 / reps

    def timeline(self, t0_ns: int) -> Timeline:
        """Wait for the device to be idle (0.5 s: the sensor settles, earlier work ends), then
        anchor CUDA events to the sampler's clock."""
        return anchor_timeline(self.torch, self.stream, t0_ns, settle_s=0.5)

    def block(self, kind: str, seconds: float):
        """Enqueue `seconds` of a load; returns its (start, end) events."""
        torch = self.torch
        graph, unit = self.graphs[kind]
        with torch.cuda.stream(self.stream):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(max(1, round(seconds / unit))):
                graph.replay()
            e1.record()
        return e0, e1


def schedule(
    rng: np.random.Generator, periods_s: tuple[float, ...] = PERIODS_S
) -> list[tuple[str, list[tuple[str, float, float]]]]:
    """Runs of (kind, on seconds, gap seconds after): the gap is idle, or 'cool' load for runs
    against cool (gap kind is then 'cool')."""
    runs = [("steps", [("hot", STEP_HOLD_S, STEP_HOLD_S) for _ in range(STEPS)])]
    for against in ("idle", "cool"):
        for p in periods_s:
            n = max(2, int(RUN_S / p))
            blocks = [("hot", p / 2, p / 2 * (1 + rng.uniform(-JITTER, JITTER))) for _ in range(n)]
            runs.append((f"square {p * 1e3:g} ms against {against}", blocks))
    return runs


def run_schedule(
    recorder,
    loads: Loads,
    rng: np.random.Generator,
    progress: Callable[[str, float], None],
    periods_s: tuple[float, ...] = PERIODS_S,
) -> tuple[list[Block], list[tuple[str, float, float]], int]:
    """Play the schedule while the recorder samples; returns blocks and runs in s after t0_ns,
    and t0_ns (CLOCK_MONOTONIC)."""
    runs = schedule(rng, periods_s)
    total = sum(on + gap for _, bl in runs for _, on, gap in bl) + len(runs)
    done = 0.0
    t0 = time.monotonic_ns()
    blocks: list[Block] = []
    run_spans: list[tuple[str, float, float]] = []
    for name, spec in runs:
        against_cool = name.endswith("against cool")
        timeline = loads.timeline(t0)
        events = []
        for kind, on, gap in spec:
            events.append((kind, *loads.block(kind, on)))
            if against_cool:
                events.append(("cool", *loads.block("cool", gap)))
            else:
                events[-1][2].synchronize()
                time.sleep(gap)
            recorder.drain()
            done += on + gap
            progress(name, done / total)
        blocks.extend(timeline.blocks(events))
        first = min(b.start_s for b in blocks[-len(events) :])
        last = max(b.end_s for b in blocks[-len(events) :])
        run_spans.append((name, first - 0.25, last + 0.25))
        done += 1
    time.sleep(0.6)  # let the last samples arrive
    recorder.drain()
    return blocks, run_spans, t0


#: periods while capturing: the counter and the instant field often enough to time their updates
CAPTURE_PERIODS_S = {"nvml.energy": 0.025, "nvml.power_instant": 0.002, "nvml.power_samples": 0.25}


def capture_config(config, device: int, periods: dict[str, float] | None = None):
    """`config` reading only GPU `device`, at CAPTURE_PERIODS_S (or `periods`)."""
    import dataclasses

    periods = CAPTURE_PERIODS_S if periods is None else periods
    return dataclasses.replace(config, gpus=[device], periods_s={**config.periods_s, **periods})


def capture_gpu(
    device: int,
    progress: Callable[[str, float], None],
    config,
    seed: int | None = None,
    periods_s: tuple[float, ...] = PERIODS_S,
) -> Capture:
    """Record the schedule on one GPU with the project's sampler (`config`: the hardware
    options; only this GPU is read, its counter and instant field often enough to time their
    updates), its square waves at `periods_s`."""

    from aipm_fast.recorder import Recorder

    torch = require_cuda(device)
    progress("preparing loads", 0.0)
    loads = Loads(torch, device)
    config = capture_config(config, device)
    rng = np.random.default_rng(seed)
    with Recorder(config, keep_history=True) as rec:
        domain = f"nvml:{device}"
        chans = {c.label: c for c in rec.channels.values() if c.domain == domain}
        if "power_samples" not in chans:
            raise NoGpu(f"no NVML power samples for GPU {device} (nvmlDeviceGetSamples): a driver too old to calibrate")
        blocks, runs, t0 = run_schedule(rec, loads, rng, progress, periods_s)

        return recorded_capture(rec, device, t0, blocks, runs, "hot: bf16 8192x8192 matmuls; cool: torch.cuda._sleep")


def recorded_capture(rec, device: int, t0_ns: int, blocks, runs, loads_note: str) -> Capture:
    """A capture of one GPU's NVML channels from a recorder's history, times in s after t0_ns."""
    from aipm_fast.sensor.store import driver_version

    domain = f"nvml:{device}"
    chans = {c.label: c for c in rec.channels.values() if c.domain == domain}

    def series(label):
        if label not in chans:
            return np.empty((0, 2))
        t, v = rec.series(chans[label].id)
        return np.column_stack([(t - t0_ns) / 1e9, v])

    return Capture(
        blocks=blocks,
        samples=series("power_samples"),
        counter=series("energy"),
        instant=series("power_instant"),
        runs=runs,
        info={
            "gpu": rec.discovery.domains[domain].device,
            "driver": driver_version(),
            "t0_ns": t0_ns,
            "clock": "CLOCK_MONOTONIC",
            "loads": loads_note,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
