"""The coordinator: drains the sampler on a timer, times the marks, integrates energy.

It runs as an asyncio task: on a background thread for plain code, or in the caller's own
loop for async code. User code only appends marks to a deque (thread-safe, no lock), so the
hot path never waits on the coordinator.
"""

from __future__ import annotations

import asyncio
import collections
import threading
import time
from typing import Any, NamedTuple

import numpy as np

from aipm_fast import attribution, counters, energy, policy
from aipm_fast.marks import MarkBatch, TimedMarks
from aipm_fast.results import SessionResults, Window
from aipm_fast.timing import Anchor
from aipm_fast.tracks import ChannelTrack, answering_track, edge_uncertainty, latest

MAX_WAIT_NS = 5_000_000_000  # an edge that no reading passes within 5 s is integrated as unknown
SILENT_NS = 3_000_000_000  # a domain with no usable reading for this long is not waited for
STALE_NS = 2_000_000_000  # live power older than this (or three of the channel's periods) is not live


class Mark(NamedTuple):
    """One inference or step: two timing tokens (host ns or CUDA events) under an anchor. The
    user's loop appends plain tuples in this order (cheaper to make); the coordinator reads them
    by position."""

    mark_index: int  # its index in inferences() (a NamedTuple cannot name a field "index")
    window: str
    anchor: Anchor | None
    start: Any
    end: Any


#: resolved marks kept as context for reconstructing the next batch on a calibrated trace
RECENT_SPANS = 512


class Coordinator:
    """Owns the per-channel tracks and the pending marks and edges; writes into `results`.

    Threads: user code appends to `marks` (a deque: no lock); everything else happens under
    `lock`, taken by the coordinator's loop, by Meter.flush/stop, and by readers that need a
    consistent view of the tracks (the exporter)."""

    def __init__(
        self,
        recorder,
        timer,
        out_dir: str | None = None,
        drain_period_s: float = 0.1,
        keep_s: float = 2.0,
        clock=time.monotonic_ns,
    ):
        self.rec = recorder
        self.clock = clock  # "now" for waiting and trimming: a replay brings its own
        self.timer = timer
        self.drain_period_s = drain_period_s
        self.keep_ns = int(keep_s * 1e9)
        self.ranked = policy.ranked_channels(recorder.channels.values())
        calibrations = getattr(recorder, "sensor_calibrations", {})
        self.responses = {cid: resp for cid, (resp, _entry) in calibrations.items()}
        self.tracks = {c.id: ChannelTrack(c, self.responses.get(c.id)) for chs in self.ranked.values() for c in chs}
        # a mark on a calibrated trace waits until samples have seen past its end through the
        # whole response (and two sample intervals more), so that it can be reconstructed
        self._mark_margin_ns = max(
            [
                int((r.lags_s[-1] + 2 * (self.tracks[cid].channel.update_s or 0.02)) * 1e9)
                for cid, r in self.responses.items()
            ],
            default=0,
        )
        # power channel id -> the counter id that scales it
        self.anchors = {
            c.id: a.id for chs in self.ranked.values() for c in chs if (a := policy.anchor_for(c, chs)) is not None
        }
        self.anchor_points: dict[int, list] = {}  # power channel -> [first, last] (t, trace J, counter J)
        self.health: dict[int, str] = {}
        self._horizon_ns = float("-inf")  # see _horizon: updated at each drain
        self.results = SessionResults(self.ranked, recorder.discovery.domains, out_dir)
        self.marks: collections.deque[tuple] = collections.deque()  # Mark tuples, from user threads
        self._untimed: list[tuple] = []  # CUDA marks whose end event has not completed
        self._timed = TimedMarks()  # timed, waiting for readings to pass their end
        self._open_edges: list[tuple[Window, str]] = []  # window edges waiting for readings
        # the latest resolved marks' spans: context for reconstructing the next ones (attribution)
        self._recent_spans: collections.deque[tuple[int, int]] = collections.deque(maxlen=RECENT_SPANS)
        self.lock = threading.RLock()
        self._stopping = False
        self.errors: list[str] = []
        # side quantities (GPU utilisation, memory) kept for a few minutes: they are few readings
        # (10 Hz), and a benchmark run asks for their mean over its window after it ends
        self.side = {
            ch.id: SideSeries(ch.name, ch.domain, ch.quantity)
            for ch in recorder.channels.values()
            if not ch.carries_energy
        }
        self.side_keep_ns = int(300e9)
        recorder.add_sink(self._ingest)  # every drain, wherever it happens, reaches the tracks

    # -- the loop ------------------------------------------------------------------------
    async def run(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.drain_period_s)
            try:
                self.process()
            except Exception as exc:  # never let the meter die silently in the background
                self.errors.append(repr(exc))
                if len(self.errors) == 1:
                    import warnings

                    warnings.warn(f"aipm-fast coordinator: {exc!r}; measuring goes on", RuntimeWarning, stacklevel=1)

    def stop(self) -> None:
        self._stopping = True

    def process(self, final: bool = False) -> None:
        with self.lock:
            self.rec.drain()
            self._time_marks()
            self.health = self.rec.health() if self.rec.channels else {}
            now = self.clock()
            self._horizon_ns = self._horizon(now)
            self._resolve_window_edges(now, final)
            self._integrate_marks(now, final)
            self._update_anchor_points()
            self.results.update(
                self.scales(),
                self.health,
                {cid: tr.problem for cid, tr in self.tracks.items() if tr.problem},
                self.counter_events(),
                int(self.rec.sampler_stats()["overflows"]),
            )
            self._trim(now)
            if final:
                self.results.finalize()

    def pending(self) -> bool:
        """Whether marks or window edges are still waiting to be integrated."""
        return bool(self.marks or self._untimed or self._timed or self._open_edges)

    def window_done(self, w: Window) -> bool:
        """Whether a closed window's end edge and every mark of its name are integrated (a caller
        can go on measuring meanwhile and ask again, rather than wait in flush)."""
        if not w.end_resolved:
            return False
        with self.lock:
            waiting = {m[1] for m in (*self.marks, *self._untimed)}
            waiting.update(self._timed.window)
        return w.name not in waiting

    # -- steps ---------------------------------------------------------------------------
    def _ingest(self, records: np.ndarray) -> None:
        with self.lock:
            for track in self.tracks.values():
                sel = records[records["channel"] == track.channel_id]
                track.append(sel["t_ns"], sel["value"])
            for cid, series in self.side.items():
                sel = records[records["channel"] == cid]
                series.append(
                    sel["t_ns"], sel["value"], keep_from=int(sel["t_ns"][-1]) - self.side_keep_ns if sel.size else None
                )

    def _time_marks(self) -> None:
        """Time CUDA marks in the order they were recorded, up to the first the GPU has not
        reached: a stream runs its events in order, so the later ones are not done either (marks
        of other streams wait one drain at most), and each drain costs what it resolves."""
        while self.marks:
            self._untimed.append(self.marks.popleft())
        starts, ends = self.timer.resolve_all(self._untimed)
        if not starts:
            return
        done = self._untimed[: len(starts)]
        self._timed.add([m[0] for m in done], [m[1] for m in done], starts, ends)
        del self._untimed[: len(starts)]

    def primary(self, domain: str) -> ChannelTrack | None:
        """The track that answers for a domain now (tracks.answering_track)."""
        return answering_track(self.ranked[domain], self.tracks, self.health)

    def _best(self, domain: str) -> ChannelTrack | None:
        """The domain's best usable channel, with a curve or not yet: the one edges wait for (a
        finer trace that has not delivered yet must not be overtaken by a coarser one)."""
        chosen = policy.choose(self.ranked[domain], self.health, lambda c: True)
        return None if chosen is None else self.tracks[chosen.id]

    def _covered(self, t_ns: int, now: int, final: bool) -> bool:
        """Have readings of every domain's answering channel passed t (or given up on it)?"""
        return final or now - t_ns > MAX_WAIT_NS or t_ns <= self._horizon_ns

    def _horizon(self, now: int) -> float:
        """The latest time that readings of every domain's answering channel have passed, once
        per drain (so that each pending mark costs a comparison): a domain that cannot give energy
        must not hold every other one back, be it a stuck counter (readings, but no curve after a
        while), a dead channel (no readings at all) or a silent one (a GPU lost: live channels
        report at least once a second)."""
        started = self.rec.start_ns if self.rec.start_ns is not None else now
        horizon = float("inf")
        for tr in map(self._best, self.ranked):
            if tr is None:
                continue
            has_curve = tr.curve() is not None
            if now - started >= SILENT_NS and (tr.last_ns is None or not has_curve or now - tr.last_ns > SILENT_NS):
                continue  # not waited for
            horizon = min(horizon, tr.last_ns if has_curve and tr.last_ns is not None else float("-inf"))
        return horizon

    def _resolve_window_edges(self, now: int, final: bool) -> None:
        still = []
        for w, which in self._open_edges:
            t = w.start_ns if which == "start" else w.end_ns
            assert t is not None  # an end edge is queued only once the window has closed
            if not self._covered(t, now, final):
                still.append((w, which))
                continue
            # built aside and assigned whole: another thread may be reading the window
            js = {cid: float(tr.cumulative(np.array([t]))[0]) for cid, tr in self.tracks.items()}
            us = {cid: edge_uncertainty(tr, t) for cid, tr in self.tracks.items()}
            if which == "start":
                w.start_u, w.start_j = us, js
            else:
                w.end_u, w.end_j = us, js
                w.end_resolved = True
                self.results.window_resolved(w)
        self._open_edges = still

    def _integrate_marks(self, now: int, final: bool) -> None:
        if not len(self._timed):
            return
        ends = self._timed.end_ns
        # _covered (of each end plus the sensor's margin) for every mark at once: one threshold
        threshold = max(self._horizon_ns, now - MAX_WAIT_NS - 1)
        covered = np.ones(ends.size, bool) if final else ends + self._mark_margin_ns <= threshold
        if not covered.any():
            return
        index, window, a, b = self._timed.take(covered)
        energies = {d: self._mark_energies(d, a, b) for d in self.ranked}
        if self.responses:  # the context of the next batch's reconstruction
            self._recent_spans.extend(zip(a.tolist(), b.tolist()))
        self.results.add_marks(MarkBatch(index=index, window=window, start_ns=a, end_ns=b, energy=energies))

    def _mark_energies(self, domain: str, a: np.ndarray, b: np.ndarray):
        """(energy, uncertainty, estimate, channel id) per mark, unscaled: each mark from the best
        usable channel that knows its energy (the policy's order), -1 and NaN where none does."""
        e = np.full(a.size, np.nan)
        u = np.full(a.size, np.nan)
        est = np.ones(a.size, bool)
        cid = np.full(a.size, -1, np.int32)
        order = sorted(
            (c for c in self.ranked[domain] if policy.usable(self.health.get(c.id))),
            key=lambda c: policy.health_rank(self.health.get(c.id)),
        )
        for c in order:
            todo = cid < 0
            if not todo.any():
                break
            track = self.tracks[c.id]
            curve = track.curve()
            if curve is None:
                continue
            ea, eb = a[todo], b[todo]
            if track.response is not None:
                got, unc = self._reconstructed(track, ea, eb)
                ok = np.isfinite(got)
                idx = np.flatnonzero(todo)[ok]
                e[idx], u[idx] = got[ok], unc[ok]
                est[idx] = energy.unsure(got[ok], unc[ok])
                cid[idx] = c.id
                continue
            got = track.cumulative(eb) - track.cumulative(ea)
            ok = np.isfinite(got)
            idx = np.flatnonzero(todo)[ok]
            e[idx] = got[ok]
            u[idx] = curve.uncertainty(ea[ok], eb[ok])
            est[idx] = curve.is_estimate(ea[ok], eb[ok])
            cid[idx] = c.id
        return e, u, est, cid

    def _reconstructed(self, track: ChannelTrack, a: np.ndarray, b: np.ndarray):
        """Marks' energy and uncertainty on a calibrated trace, reconstructed through its sensor
        response from the readings the track holds (attribution.py), unscaled like the rest."""
        assert track.response is not None
        origin = int(a.min()) if a.size else 0

        def seconds(t_ns) -> np.ndarray:  # relative to the batch: float64 keeps ns there
            return (np.asarray(t_ns, dtype=np.int64) - origin) / 1e9

        period = track.channel.update_s or 0.02
        # marks around the batch: those resolved before it and those still waiting
        recent = np.array(self._recent_spans, dtype=np.int64).reshape(-1, 2)
        ca = np.concatenate([recent[:, 0], self._timed.start_ns])
        cb = np.concatenate([recent[:, 1], self._timed.end_ns])
        return attribution.attribute(
            track.response,
            seconds(track.t),
            track.v,
            seconds(a),
            seconds(b),
            period,
            context=(seconds(ca), seconds(cb)),
        )

    def _update_anchor_points(self) -> None:
        """Remember (time, trace J, counter J) at the first and the latest counter change that the
        trace covers (policy.anchor_times), so the scale is taken over the longest span."""
        for trace_id, counter_id in self.anchors.items():
            trace, counter = self.tracks[trace_id], self.tracks[counter_id]
            if counter.t.size < 2 or trace.last_ns is None:
                continue
            times = policy.anchor_times(counter.t, counter.v, int(trace.t[0]), trace.last_ns)
            if times is None:
                continue
            pts = self.anchor_points.get(trace_id)
            for k, t in enumerate(times):
                if pts is not None and (k == 0 or t <= pts[1][0]):
                    continue  # the first point is kept; the last only moves forward
                at = np.array([t])
                point = (t, float(trace.cumulative(at)[0]), float(counter.cumulative(at)[0]))
                if not all(np.isfinite(point[1:])):
                    continue
                if pts is None:
                    pts = self.anchor_points[trace_id] = [point, point]
                else:
                    pts[1] = point

    def _trim(self, now: int) -> None:
        """Forget readings no pending edge can need: keep the last keep_s, and everything from
        one second before the oldest edge still waiting (a CUDA mark not timed yet may lie
        anywhere after its anchor)."""
        pending = [int(self._timed.start_ns.min())] if len(self._timed) else []
        pending += [w.start_ns if k == "start" or w.end_ns is None else w.end_ns for w, k in self._open_edges]
        if self._untimed and self._untimed[0][2] is not None:  # anchors only move forward
            pending.append(self._untimed[0][2].host_ns)
        keep_from = min([now - self.keep_ns, *pending]) - 1_000_000_000
        for track in self.tracks.values():
            track.trim(keep_from)

    # -- marks from user code -------------------------------------------------------------
    def open_window(self, w: Window) -> None:
        with self.lock:
            self.results.open_window(w)
            self._open_edges.append((w, "start"))

    def close_window(self, w: Window) -> None:
        with self.lock:
            self._open_edges.append((w, "end"))

    # -- what the policy makes of the tracks ------------------------------------------------------
    def scales(self) -> dict[int, policy.Scale]:
        """Counter-over-trace scale of every power channel that has a counter to anchor it."""
        out = {}
        for trace_id in self.anchors:
            pts = self.anchor_points.get(trace_id)
            if not pts:
                out[trace_id] = policy.Scale.none("energy counter not read within the trace yet: trace unscaled")
                continue
            (t0, e0, c0), (t1, e1, c1) = pts
            out[trace_id] = policy.counter_scale(e1 - e0, c1 - c0, (t1 - t0) / 1e9)
        return out

    def live(self, window_ns: int) -> dict[str, tuple[float, float]]:
        """{domain: (energy since start J, mean power W over the last window_ns)} from each
        domain's primary channel, scaled as the results are; NaN where unknown. Power is NaN
        once the Meter stops or a domain's readings stop coming (a GPU lost): the last power is
        never served as if live; the energy keeps its last value."""
        with self.lock:
            out = {}
            scales = self.scales()
            now = self.clock()
            for domain in self.ranked:
                tr = self.primary(domain)
                if tr is None:
                    out[domain] = (np.nan, np.nan)
                    continue
                k = scales.get(tr.channel_id, policy.Scale.none("")).factor
                total, power = latest(tr, window_ns)
                quiet_ns = now - tr.last_ns if tr.last_ns is not None else None
                if self._stopping or quiet_ns is None or quiet_ns > max(STALE_NS, 3e9 * tr.channel.resolution_s):
                    power = np.nan
                out[domain] = (total * k, power * k)
            return out

    def counter_events(self) -> dict[int, str]:
        """channel id -> what its counter showed so far ('1 reset bridged, ...'), where anything."""
        return {cid: text for cid, tr in self.tracks.items() if (text := counters.summary(list(tr.events.items())))}

    def side_mean(self, quantity: str, a_ns: int, b_ns: int) -> list[float]:
        """Time-weighted mean over [a, b] of every side channel measuring `quantity`."""
        with self.lock:
            return [s.mean(a_ns, b_ns) for s in self.side.values() if s.quantity == quantity]

    def side_means_by_domain(self, quantity: str, a_ns: int, b_ns: int) -> dict[str, float]:
        """side_mean per domain: {domain: time-weighted mean over [a, b]} (the last channel of a
        domain measuring `quantity` where it has several)."""
        with self.lock:
            return {s.domain: s.mean(a_ns, b_ns) for s in self.side.values() if s.quantity == quantity}

    def close(self) -> None:
        pass


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
