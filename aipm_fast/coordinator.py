"""The coordinator: drains the sampler on a timer, times the marks, integrates energy.

It runs as an asyncio task: on a background thread for plain code, or in the caller's own
loop for async code. User code only appends marks to a deque (thread-safe, no lock), so the
hot path never waits on the coordinator.
"""
from __future__ import annotations

import asyncio
import collections
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from aipm_fast import energy
from aipm_fast.tracks import DomainTrack

POWER_PREFERENCE = ("power_samples", "power_instant", "power_average")
MAX_WAIT_NS = 5_000_000_000   # an edge that no reading passes within 5 s is integrated as unknown
SILENT_NS = 3_000_000_000     # a domain with no usable reading for this long is not waited for


@dataclass
class Mark:
    """One inference or step: two timing tokens (host ns or CUDA events) under an anchor."""
    index: int
    window: str
    anchor: object
    start: object
    end: object


@dataclass
class Window:
    id: int
    name: str
    start_ns: int
    end_ns: int | None = None
    start_j: dict = field(default_factory=dict)      # domain -> cumulative J at the start edge
    end_j: dict = field(default_factory=dict)
    start_u: dict = field(default_factory=dict)      # domain -> edge uncertainty (J)
    end_u: dict = field(default_factory=dict)
    n_marks: int = 0
    explicit: bool = False                           # opened by start_window: marks counted by span
    end_resolved: bool = False                       # end_j/end_u hold their final values


class Coordinator:
    def __init__(self, recorder, timer, out_dir: str | None = None, drain_period_s: float = 0.1,
                 keep_s: float = 2.0):
        self.rec = recorder
        self.timer = timer
        self.drain_period_s = drain_period_s
        self.keep_ns = int(keep_s * 1e9)
        self.tracks, self.anchors = choose_tracks(recorder)
        self.marks: collections.deque[Mark] = collections.deque()
        self._untimed: list[Mark] = []      # CUDA marks whose end event has not completed
        self._timed: list[tuple[Mark, int, int]] = []   # waiting for readings to pass their end
        self.windows: list[Window] = []
        self._open_edges: list[tuple[Window, str]] = []  # window edges waiting for readings
        self.rows: list[dict] = []          # per-inference results, one dict of arrays per batch
        self.anchor_points: dict[str, list] = {}   # domain -> [first, last] (t, trace J, counter J)
        self._lock = threading.RLock()
        self._stopping = False
        self.errors: list[str] = []
        self._writer = ResultWriter(out_dir, list(self.tracks)) if out_dir else None
        # side quantities (GPU utilisation, memory) kept for a few minutes: they are few readings
        # (10 Hz), and a benchmark run asks for their mean over its window after it ends
        self.side = {ch.id: SideSeries(ch.name, ch.domain, ch.quantity) for ch in recorder.channels.values()
                     if ch.quantity in ("utilization", "memory")}
        self.side_keep_ns = int(300e9)
        recorder.add_sink(self._ingest)   # every drain, wherever it happens, reaches the tracks

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.drain_period_s)
            try:
                self.process()
            except Exception as exc:   # never let the meter die silently in the background
                self.errors.append(repr(exc))
                if len(self.errors) == 1:
                    import warnings
                    warnings.warn(f"aipm-fast coordinator: {exc!r}; measuring goes on", RuntimeWarning)

    def stop(self) -> None:
        self._stopping = True

    def process(self, final: bool = False) -> None:
        with self._lock:
            self.rec.drain()
            self._time_marks()
            now = time.monotonic_ns()
            self._resolve_window_edges(now, final)
            self._integrate_marks(now, final)
            self._update_anchor_points()
            self._trim(now)

    # -- steps ---------------------------------------------------------------------------
    def _ingest(self, records: np.ndarray) -> None:
        with self._lock:
            for track in (*self.tracks.values(), *self.anchors.values()):
                sel = records[records["channel"] == track.channel_id]
                track.append(sel["t_ns"], sel["value"])
            for cid, series in self.side.items():
                sel = records[records["channel"] == cid]
                series.append(sel["t_ns"], sel["value"], keep_from=int(sel["t_ns"][-1]) - self.side_keep_ns
                              if sel.size else None)

    def _time_marks(self) -> None:
        while self.marks:
            self._untimed.append(self.marks.popleft())
        still = []
        for m in self._untimed:
            times = self.timer.resolve(m.anchor, m.start, m.end)
            if times is None:
                still.append(m)
            else:
                self._timed.append((m, times[0], times[1]))
        self._untimed = still

    def _covered(self, t_ns: int, now: int, final: bool) -> bool:
        """Have readings of every domain passed t (or given up on it)?"""
        if final or now - t_ns > MAX_WAIT_NS:
            return True
        return all(self._track_ready(tr, t_ns, now) for tr in self.tracks.values())

    def _track_ready(self, tr: DomainTrack, t_ns: int, now: int) -> bool:
        if tr.last_ns is not None and tr.last_ns >= t_ns and tr.curve() is not None:
            return True
        # A domain that cannot give energy must not hold every other one back: a stuck counter
        # (readings, but no curve after a while), a dead channel (no readings at all) or a
        # silent one (a GPU lost: live channels report at least once a second).
        started = self.rec.start_ns if self.rec.start_ns is not None else now
        if now - started < SILENT_NS:
            return False
        return tr.last_ns is None or tr.curve() is None or now - tr.last_ns > SILENT_NS

    def _resolve_window_edges(self, now: int, final: bool) -> None:
        still = []
        for w, which in self._open_edges:
            t = w.start_ns if which == "start" else w.end_ns
            if not self._covered(t, now, final):
                still.append((w, which))
                continue
            # built aside and assigned whole: another thread may be reading the window
            js = {d: float(tr.cumulative(np.array([t]))[0]) for d, tr in self.tracks.items()}
            us = {d: edge_uncertainty(tr, t) for d, tr in self.tracks.items()}
            if which == "start":
                w.start_u, w.start_j = us, js
            else:
                w.end_u, w.end_j = us, js
                w.end_resolved = True
            if which == "end" and self._writer:
                self._writer.window(w)
        self._open_edges = still

    def _integrate_marks(self, now: int, final: bool) -> None:
        covered = [self._covered(x[2], now, final) for x in self._timed]
        ready = [x for x, ok in zip(self._timed, covered) if ok]
        if not ready:
            return
        self._timed = [x for x, ok in zip(self._timed, covered) if not ok]
        a = np.array([x[1] for x in ready], dtype=np.int64)
        b = np.array([x[2] for x in ready], dtype=np.int64)
        batch = {
            "index": np.array([x[0].index for x in ready], dtype=np.int64),
            "window": np.array([x[0].window for x in ready], dtype=object),
            "start_ns": a,
            "end_ns": b,
        }
        for domain, track in self.tracks.items():
            curve = track.curve()
            if curve is None:
                nan = np.full(a.size, np.nan)
                batch[domain] = (nan, nan, np.ones(a.size, bool))
                continue
            batch[domain] = (track.cumulative(b) - track.cumulative(a), curve.uncertainty(a, b),
                             curve.is_estimate(a, b))
        self.rows.append(batch)
        if self._writer:
            self._writer.marks(batch)

    def _update_anchor_points(self) -> None:
        """Remember (time, trace J, counter J) at the first and latest counter reading that
        the trace covers, so a scale from the counter can be taken over the longest span."""
        for domain, counter in self.anchors.items():
            trace = self.tracks[domain]
            if counter.t.size == 0 or trace.last_ns is None:
                continue
            inside = counter.t[(counter.t <= trace.last_ns) & (counter.t >= trace.t[0])]
            if inside.size == 0:
                continue
            t = np.array([inside[-1]])
            point = (int(t[0]), float(trace.cumulative(t)[0]), float(counter.cumulative(t)[0]))
            if not all(np.isfinite(point[1:])):
                continue
            pts = self.anchor_points.setdefault(domain, [point, point])
            pts[1] = point

    def _trim(self, now: int) -> None:
        """Forget readings no pending edge can need: keep the last keep_s, and everything from
        one second before the oldest edge still waiting (a CUDA mark not timed yet may lie
        anywhere after its anchor)."""
        pending = [x[1] for x in self._timed]
        pending += [w.start_ns if k == "start" else w.end_ns for w, k in self._open_edges]
        pending += [m.anchor.host_ns for m in self._untimed if m.anchor is not None]
        keep_from = min([now - self.keep_ns, *pending]) - 1_000_000_000
        for track in (*self.tracks.values(), *self.anchors.values()):
            track.trim(keep_from)

    # -- marks from user code -------------------------------------------------------------
    def open_window(self, w: Window) -> None:
        with self._lock:
            self.windows.append(w)
            self._open_edges.append((w, "start"))

    def close_window(self, w: Window) -> None:
        with self._lock:
            self._open_edges.append((w, "end"))

    def scale(self, domain: str, min_span_s: float = 5.0) -> tuple[float, str]:
        """Counter-over-trace factor for a domain, or 1.0 with the reason it is not applied."""
        if domain not in self.anchors:
            return 1.0, "no energy counter to anchor the trace"
        pts = self.anchor_points.get(domain)
        if not pts:
            return 1.0, "energy counter not read yet"
        (t0, e0, c0), (t1, e1, c1) = pts
        if (t1 - t0) / 1e9 < min_span_s or e1 <= e0:
            return 1.0, f"counter span {(t1 - t0) / 1e9:.1f} s < {min_span_s:g} s: trace unscaled"
        factor = (c1 - c0) / (e1 - e0)
        lo, hi = energy.SCALE_RANGE
        if not lo <= factor <= hi:
            return 1.0, f"counter/trace = {factor:.3f} outside {energy.scale_range_text()}: not scaled (a source is broken)"
        return factor, (f"scaled by the energy counter over {(t1 - t0) / 1e9:.0f} s (x{factor:.4f})"
                        f"{energy.disagreement_note(factor)}")

    def close(self) -> None:
        if self._writer:
            self._writer.close()


class SideSeries:
    """Recent readings of a side quantity (utilisation %, memory bytes) of one domain."""

    def __init__(self, name: str, domain: str, quantity: str):
        self.name, self.domain, self.quantity = name, domain, quantity
        self.t = np.empty(0, np.int64)
        self.v = np.empty(0, np.float64)

    def append(self, t: np.ndarray, v: np.ndarray, keep_from: int | None) -> None:
        if t.size:
            self.t, self.v = np.concatenate([self.t, t]), np.concatenate([self.v, v])
            if keep_from is not None:
                k = int(np.searchsorted(self.t, keep_from))
                self.t, self.v = self.t[k:], self.v[k:]

    def mean(self, a_ns: int, b_ns: int) -> float:
        """Time-weighted mean over [a, b], each reading held until the next (NaN if none)."""
        if self.t.size == 0 or self.t[0] > b_ns:
            return float("nan")
        edges = np.clip(np.append(self.t, b_ns), a_ns, b_ns)
        weights = np.diff(edges)
        if weights.sum() <= 0:
            return float(self.v[np.searchsorted(self.t, a_ns, side="right") - 1])
        return float(np.dot(weights, self.v) / weights.sum())

    def max(self, a_ns: int, b_ns: int) -> float:
        sel = self.v[(self.t >= a_ns) & (self.t <= b_ns)]
        return float(sel.max()) if sel.size else float("nan")


def edge_uncertainty(track: DomainTrack, t_ns: int) -> float:
    """Uncertainty (J) that one edge at t_ns contributes to any interval that ends there."""
    curve = track.curve()
    return float("nan") if curve is None else float(curve.edge_uncertainty(np.int64(t_ns)))


def choose_tracks(recorder) -> tuple[dict[str, DomainTrack], dict[str, DomainTrack]]:
    """The reading that integrates each domain (the finest power trace, else the counter),
    and, where a trace is used and a counter exists too, the counter as its anchor."""
    by_domain: dict[str, dict[str, object]] = {}
    for ch in recorder.channels.values():
        if ch.quantity in ("energy", "power"):
            by_domain.setdefault(ch.domain, {})[ch.name.rsplit(".", 1)[1]] = ch
    tracks, anchors = {}, {}
    for domain, chans in sorted(by_domain.items()):
        label = next((k for k in POWER_PREFERENCE if k in chans), "energy" if "energy" in chans else None)
        if label is None:
            continue
        ch = chans[label]
        tracks[domain] = DomainTrack(domain, ch.id, ch.quantity, ch.wrap, label)
        if label != "energy" and "energy" in chans:
            c = chans["energy"]
            anchors[domain] = DomainTrack(domain, c.id, "energy", c.wrap, "energy")
    return tracks, anchors


class ResultWriter:
    """Append-only CSV files, flushed every drain, so that a killed process keeps its results."""

    def __init__(self, out_dir: str, domains: list[str]):
        os.makedirs(out_dir, exist_ok=True)
        self.domains = domains
        self._marks = open(os.path.join(out_dir, "inferences.csv"), "a", buffering=1 << 16)
        self._windows = open(os.path.join(out_dir, "windows.csv"), "a", buffering=1 << 16)
        if self._marks.tell() == 0:
            self._marks.write("index,window,domain,start_ns,end_ns,latency_s,energy_j,uncertainty_j,estimate\n")
        if self._windows.tell() == 0:
            self._windows.write("window_id,window,domain,start_ns,end_ns,duration_s,energy_j,uncertainty_j,n_inferences\n")

    def marks(self, batch: dict) -> None:
        lines = []
        lat = (batch["end_ns"] - batch["start_ns"]) / 1e9
        for domain in self.domains:
            e, u, est = batch[domain]
            for i in range(batch["index"].size):
                lines.append(f"{batch['index'][i]},{_csv(batch['window'][i])},{domain},{batch['start_ns'][i]},"
                             f"{batch['end_ns'][i]},{lat[i]:.9g},{e[i]:.9g},{u[i]:.6g},{int(est[i])}\n")
        self._marks.write("".join(lines))
        self._marks.flush()

    def window(self, w: Window) -> None:
        for domain in self.domains:
            e = w.end_j.get(domain, np.nan) - w.start_j.get(domain, np.nan)
            u = float(np.hypot(w.end_u.get(domain, np.nan), w.start_u.get(domain, np.nan)))
            self._windows.write(f"{w.id},{_csv(w.name)},{domain},{w.start_ns},{w.end_ns},"
                                f"{(w.end_ns - w.start_ns) / 1e9:.9g},{e:.9g},{u:.6g},{w.n_marks}\n")
        self._windows.flush()

    def close(self) -> None:
        self._marks.close()
        self._windows.close()


def _csv(text: str) -> str:
    return '"' + text.replace('"', '""') + '"' if ("," in text or '"' in text) else text
