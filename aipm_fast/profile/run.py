"""Run an inference many times on the GPU for a profile, and fold what the sensor saw (folding.py).

Each repetition is bracketed by CUDA events on the current stream, and so are its parts: the
modules of a model to a chosen depth (forward pre- and post-hooks) and ranges the callable names
itself (`Parts.range`). Phases against the driver's sample grid are spread either by short idle
gaps (`gaps="random"`: after each repetition the host waits for its end, then sleeps a time drawn
uniformly over one sample period above GAP_MIN_S, so repetitions start at every phase of the
grid) or by the grid's own drift (`gaps="drift"`: back to back, the host waiting only every
DRIFT_SYNC_S; phases spread only where the inference's duration is not a simple fraction of the
sample period). What idle gaps change in the GPU's state (clocks, the power it falls to) is in
the curve of the gap after the inference, and measured against back-to-back runs by
bench/gpu_profile_checks.py.

Every CHECK_S (or three times the last fold's duration, so that the GPU idles at most a quarter
of the time while samples are folded) the events are mapped to the sampler's clock (an anchor event per batch, as
sensor/drive.py does), the samples so far are folded, and the run stops once the curve's band is
within the precision asked for (Folded.relative_band) or the time limit is reached. The rule
judges the band more repetitions narrow (the fit's scatter, the smoothing's bias); the final fold
adds the response's own uncertainty (folding.response_timing, and `alternatives`), which no
number of repetitions narrows. The trace's
gain is the energy counter's, as everywhere (policy.counter_scale over the whole run).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aipm_fast.profile.folding import BIN_S, Folded, Span, fold, median_spans, response_timing
from aipm_fast.sensor.response import SensorResponse

#: the shortest idle gap after a repetition (s), and the spread added over one sample period
GAP_MIN_S = 0.002
SAMPLE_PERIOD_S = 0.020
#: in drift mode, the host waits for the device this often (s) to keep the queue short
DRIFT_SYNC_S = 0.2
#: how often the samples are folded to judge the precision (s; longer where folding is slow)
CHECK_S = 4.0
#: the fewest repetitions a profile stops at
MIN_REPS = 200
GAP_MODES = ("random", "drift")


class NoCalibration(RuntimeError):
    """The GPU's sensor response has not been measured (aipm-fast calibrate)."""


def modules_at_depth(model, depth: int) -> list[tuple[str, Any]]:
    """The named submodules `depth` levels below the model (1: its children); a branch that ends
    sooner contributes its leaf."""
    if depth < 1:
        raise ValueError(f"profile: module depth must be 1 or more, got {depth}")
    found = []

    def walk(prefix: str, module, level: int) -> None:
        children = list(module.named_children())
        if level == depth or not children:
            if prefix:
                found.append((prefix, module))
            return
        for name, child in children:
            walk(f"{prefix}.{name}" if prefix else name, child, level + 1)

    walk("", model, 0)
    return found


class Parts:
    """CUDA events around the parts of one repetition: modules (hooks) and named ranges."""

    def __init__(self, torch):
        self.torch = torch
        self.current: list[tuple[str, object, object]] = []
        self._open: dict[int, list] = {}
        self._handles: list = []

    def _event(self):
        e = self.torch.cuda.Event(enable_timing=True)
        e.record()
        return e

    @contextmanager
    def range(self, name: str):
        """Mark a named part of the inference: `with parts.range("attention"): ...`."""
        e0 = self._event()
        try:
            yield
        finally:
            self.current.append((name, e0, self._event()))

    def hook(self, model, depth: int) -> list[str]:
        """Forward hooks on the model's modules at `depth`; returns their names."""
        names = []
        for name, module in modules_at_depth(model, depth):
            names.append(name)
            self._handles.append(module.register_forward_pre_hook(self._pre(id(module))))
            self._handles.append(module.register_forward_hook(self._post(id(module), name)))
        return names

    def _pre(self, key: int):
        def pre(module, args):
            self._open.setdefault(key, []).append(self._event())

        return pre

    def _post(self, key: int, name: str):
        def post(module, args, output):
            self.current.append((name, self._open[key].pop(), self._event()))

        return post

    def take(self) -> list[tuple[str, object, object]]:
        got, self.current = self.current, []
        return got

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@dataclass
class Profile:
    """A finished profile: the curve, the parts' spans, and how it was obtained."""

    folded: Folded
    spans: list[Span]
    table: list[dict]
    wall_s: float
    stopped: str  # why it stopped
    gaps: str
    method: str
    info: dict = field(default_factory=dict)
    #: what the curve was folded from, s after the run's clock origin: "stamps_s", "watts" (the
    #: power samples), "starts_s", "ends_s" (each repetition), "counter_s", "counter_j" (the
    #: energy counter), "parts" ({name: (n_reps x 2) start, end s after each repetition's start})
    raw: dict = field(default_factory=dict, repr=False)


@dataclass
class _Collected:
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    parts: list[list[tuple[str, float, float]]] = field(default_factory=list)


def _gpu_channels(rec, device: int):
    domain = f"nvml:{device}"
    chans = {c.label: c for c in rec.channels.values() if c.domain == domain}
    if "power_samples" not in chans:
        from aipm_fast.sensor.drive import NoGpu

        raise NoGpu(f"no NVML power samples for GPU {device} (nvmlDeviceGetSamples): a driver too old to profile")
    return chans


def find_response(rec, chans) -> SensorResponse:
    """The stored response of the GPU's sampled power, or NoCalibration saying what to run."""
    cal = rec.sensor_calibrations.get(chans["power_samples"].id)
    if cal is None:
        dev = rec.discovery.domains[chans["power_samples"].domain].device
        raise NoCalibration(
            f"no sensor calibration for {dev} with this driver: run `aipm-fast calibrate` first "
            "(about a minute of load), or pass --calibration-file"
        )
    return cal[0]


def profile(
    fn: Callable[[], object],
    *,
    model=None,
    depth: int = 1,
    parts: Parts | None = None,
    response: SensorResponse | None = None,
    gpu: int = 0,
    config=None,
    precision: float = 0.03,
    max_s: float = 120.0,
    min_reps: int = MIN_REPS,
    gaps: str = "random",
    bin_s: float = BIN_S,
    warmup: int = 5,
    seed: int | None = None,
    progress: Callable[[float, str], None] | None = None,
    alternatives: Sequence[SensorResponse] = (),
) -> Profile:
    """Profile `fn` (one inference, enqueued on the current CUDA stream) on GPU `gpu`.

    model/depth: forward hooks on the model's modules at that depth; parts: a Parts the callable
    marks named ranges with (made here when None). response: the sensor response (by default the
    one `aipm-fast calibrate` stored for this GPU and driver). Stops when Folded.relative_band <=
    precision (after min_reps) or after max_s of running; progress(share, text) after each check.
    alternatives: other calibrations of this GPU's sensor, whose spread joins the band (the
    response's timing uncertainty always does, where the calibration measured it)."""
    from aipm_fast.config import EngineConfig
    from aipm_fast.recorder import Recorder
    from aipm_fast.sensor.drive import anchor_timeline, require_cuda

    if gaps not in GAP_MODES:
        raise ValueError(f"profile: gaps must be one of {', '.join(GAP_MODES)}, got {gaps!r}")
    if not precision > 0:
        raise ValueError(f"profile: precision must be positive, got {precision!r}")
    torch = require_cuda(gpu, "profile")
    torch.cuda.set_device(gpu)
    config = config or EngineConfig.from_env()
    periods = {"nvml.energy": 0.025, "nvml.power_samples": 0.25}
    config = dataclasses.replace(config, gpus=[gpu], periods_s={**config.periods_s, **periods})
    parts = parts or Parts(torch)
    if model is not None:
        parts.hook(model, depth)
    rng = np.random.default_rng(seed)
    stream = torch.cuda.current_stream()
    try:
        for _ in range(warmup):
            fn()
        parts.take()
        torch.cuda.synchronize()
        with Recorder(config, keep_history=True) as rec:
            chans = _gpu_channels(rec, gpu)
            response = response or find_response(rec, chans)
            t0 = time.monotonic_ns()
            begun = time.monotonic()
            got = _Collected()
            folded, stopped, batch_s = None, "", CHECK_S
            while True:
                _batch(torch, stream, fn, parts, rng, gaps, t0, got, anchor_timeline, batch_s)
                rec.drain()
                elapsed = time.monotonic() - begun
                folding_began = time.monotonic()
                folded = _fold_so_far(rec, chans, response, got, t0, bin_s)
                # the GPU idles while the samples are folded: fold at most a quarter of the time
                batch_s = max(CHECK_S, 3.0 * (time.monotonic() - folding_began))
                band = folded.relative_band if folded else float("inf")
                if progress:
                    share = max(elapsed / max_s, min(1.0, precision / band))
                    progress(min(share, 1.0), f"{len(got.starts)} inferences, band {band:.1%} of mean power")
                stopped = stop_reason(band, len(got.starts), elapsed, precision, min_reps, max_s)
                if stopped:
                    break
            # the samples that see the last inference: past its response, and read from the driver
            time.sleep(config.period("nvml.power_samples") + max(float(response.lags_s[-1]), 0.0) + 0.1)
            rec.drain()
            wall = time.monotonic() - begun
            scale = _counter_scale(rec, chans, response, got, t0)
            t, w = _samples(rec, chans, t0)
            spans = median_spans(got.parts)
            shifted, timing_how = response_timing(response)
            groups = [g for g in (shifted, list(alternatives)) if g]
            folded = fold(response, t, w, got.starts, got.ends, bin_s=bin_s, scale=scale.factor, alternatives=groups)
            raw = _raw(rec, chans, t0, t, w, got)
    finally:
        parts.remove()
    method = (
        f"{folded.n_reps} inferences folded ({gaps} gaps), {folded.n_samples} samples deconvolved through the "
        f"{response.kind} response ({response.describe()}), smoothing {folded.smoothing:.2g} by GCV; {scale.how}; "
        f"band: the fit's scatter, the smoothing's bias, {timing_how}"
        + (f", {len(alternatives)} other calibration(s) of the sensor" if alternatives else "")
    )
    return Profile(
        folded=folded,
        spans=spans,
        table=folded.span_table(spans),
        wall_s=wall,
        stopped=stopped,
        gaps=gaps,
        method=method,
        info={"gpu": rec.discovery.domains[f"nvml:{gpu}"].device, "scale": scale.factor, "scale_how": scale.how},
        raw=raw,
    )


def stop_reason(band: float, reps: int, elapsed_s: float, precision: float, min_reps: int, max_s: float) -> str:
    """Why the profile stops now ('' to go on): the curve's band (Folded.relative_band) within the
    precision after at least min_reps repetitions, or the time limit."""
    if band <= precision and reps >= min_reps:
        return f"curve known to {band:.1%} of its mean power (asked {precision:.1%})"
    if elapsed_s >= max_s:
        return f"time limit {max_s:g} s reached with the band at {band:.1%} (asked {precision:.1%})"
    return ""


def _batch(torch, stream, fn, parts, rng, gaps, t0, got, anchor_timeline, seconds: float) -> None:
    """`seconds` of repetitions, their events mapped to s after t0 once the device has run them."""
    timeline = anchor_timeline(torch, stream, t0)
    events = []
    end_at = time.monotonic() + seconds
    last_sync = time.monotonic()
    while time.monotonic() < end_at:
        e0 = torch.cuda.Event(enable_timing=True)
        e1 = torch.cuda.Event(enable_timing=True)
        e0.record()
        fn()
        e1.record()
        events.append((e0, e1, parts.take()))
        if gaps == "random":
            e1.synchronize()
            time.sleep(GAP_MIN_S + rng.uniform(0.0, SAMPLE_PERIOD_S))
        elif time.monotonic() - last_sync > DRIFT_SYNC_S:
            e1.synchronize()
            last_sync = time.monotonic()
    torch.cuda.synchronize()
    at = timeline.seconds
    for e0, e1, ps in events:
        a = at(e0)
        got.starts.append(a)
        got.ends.append(at(e1))
        got.parts.append([(name, at(p0) - a, at(p1) - a) for name, p0, p1 in ps])


def _raw(rec, chans, t0, t, w, got: _Collected) -> dict:
    """The run's own record (Profile.raw), so that a fold can be redone and judged offline."""
    ct, cv = rec.series(chans["energy"].id) if "energy" in chans else (np.zeros(0), np.zeros(0))
    per_part: dict[str, list[tuple[float, float]]] = {}
    for rep in got.parts:
        seen: dict[str, int] = {}
        for name, a, b in rep:
            seen[name] = seen.get(name, 0) + 1
            key = name if seen[name] == 1 else f"{name} ({seen[name]})"
            per_part.setdefault(key, []).append((a, b))
    return {
        "stamps_s": np.asarray(t, dtype=float),
        "watts": np.asarray(w, dtype=float),
        "starts_s": np.asarray(got.starts, dtype=float),
        "ends_s": np.asarray(got.ends, dtype=float),
        "counter_s": (np.asarray(ct, dtype=float) - t0) / 1e9,
        "counter_j": np.asarray(cv, dtype=float),
        "parts": {k: np.asarray(v, dtype=float) for k, v in per_part.items()},
    }


def _samples(rec, chans, t0) -> tuple[np.ndarray, np.ndarray]:
    t, w = rec.series(chans["power_samples"].id)
    return (t - t0) / 1e9, w


def _fold_so_far(rec, chans, response, got, t0, bin_s) -> Folded | None:
    t, w = _samples(rec, chans, t0)
    try:
        return fold(response, t, w, got.starts, got.ends, bin_s=bin_s)
    except ValueError:
        return None  # too few samples yet


def _counter_scale(rec, chans, response, got, t0):
    """The energy counter over the trace (samples placed at stamp - centroid) between the
    counter's anchor times within the run (policy.counter_scale)."""
    from aipm_fast import policy

    if "energy" not in chans:
        return policy.Scale.none("no energy counter: trace unscaled")
    ct, cv = rec.series(chans["energy"].id)
    lo = t0 + int(got.starts[0] * 1e9)
    hi = t0 + int(got.ends[-1] * 1e9)
    anchors = policy.anchor_times(ct, cv, lo, hi)
    if anchors is None:
        return policy.Scale.none("energy counter did not move within the run: trace unscaled")
    a, b = anchors
    counter_j = float(np.interp(b, ct, cv) - np.interp(a, ct, cv))
    t, w = _samples(rec, chans, t0)
    placed = t - response.centroid_s
    grid = np.linspace((a - t0) / 1e9, (b - t0) / 1e9, 20001)
    trace_j = float(np.trapezoid(np.interp(grid, placed, w), grid))
    return policy.counter_scale(trace_j, counter_j, (b - a) / 1e9, "NVML energy counter")
