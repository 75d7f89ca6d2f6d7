"""Per-channel energy history, bounded in memory, with an absolute running total.

The coordinator keeps only the last few seconds of readings of each energy-bearing channel. A
track knows the cumulative energy (J since the meter started) at its first kept reading, so
trimming old readings never changes the energy of any interval that is still to be integrated.
"""

from __future__ import annotations

import numpy as np

from aipm_fast import energy, policy
from aipm_fast.sensor.response import SensorResponse
from aipm_fast.sources.base import Channel


class ChannelTrack:
    def __init__(self, channel: Channel, response: SensorResponse | None = None):
        self.channel = channel
        self.response = response  # the channel's measured sensor response, if any
        self.channel_id = channel.id
        self.domain = channel.domain
        self.label = channel.label
        self.t = np.empty(0, np.int64)
        self.v = np.empty(0, np.float64)
        self.base_j = 0.0  # cumulative energy at t[0]
        self.trimmed = False  # after a trim, t[0] is known to be a counter update
        self.problem = ""  # why no curve can be built (e.g. a stuck counter)
        self.events: dict[int, str] = {}  # t_ns -> reset, glitch or gap seen in the counter
        self._curve: energy.EnergyCurve | None = None
        self._failed_size = -1  # readings count at the last failed build: not retried

    def append(self, t: np.ndarray, v: np.ndarray) -> None:
        if t.size:
            self.t = np.concatenate([self.t, t])
            self.v = np.concatenate([self.v, v])
            if np.any(np.diff(self.t[-t.size - 1 :]) < 0):  # NVML samples may interleave: keep time order
                order = np.argsort(self.t, kind="stable")
                self.t, self.v = self.t[order], self.v[order]
            self._curve = None

    @property
    def placement_ns(self) -> int:
        """How much earlier than its stamp the curve places each reading (policy.build_curve)."""
        return policy.placement_ns(self.response)

    @property
    def last_ns(self) -> int | None:
        """The latest time the curve knows (a calibrated trace's latest sample, placed)."""
        return int(self.t[-1]) - self.placement_ns if self.t.size else None

    def curve(self) -> energy.EnergyCurve | None:
        if self._curve is None and self.t.size >= 2 and self.t.size != self._failed_size:
            try:
                self._curve = policy.build_curve(
                    self.channel, self.t, self.v, first_is_new=True if self.trimmed else None, response=self.response
                )
                self.problem = ""
                self.events.update(self._curve.events)  # by time: a rebuild does not count twice
            except ValueError as exc:
                # a counter that has not advanced (yet, or ever): its energies are unknown (NaN),
                # never 0 J, and the reason travels with the results
                self.problem = str(exc)
                self._failed_size = self.t.size
        return self._curve

    def cumulative(self, t_ns: np.ndarray) -> np.ndarray:
        """Energy since the meter started, at each time (NaN where unknown)."""
        c = self.curve()
        if c is None:
            return np.full(np.shape(t_ns), np.nan)
        return self.base_j + c.at(np.asarray(t_ns, dtype=np.int64))

    def trim(self, keep_from_ns: int) -> None:
        """Forget readings before keep_from_ns, keeping one at or before it for interpolation."""
        if self.t.size < 3:
            return
        c = self.curve()
        if c is None:
            return
        # Cut only at a knot of the curve: a counter's knots are the first sight of each value
        # (cutting inside a run of repeats would move a knot and the total with it), and a
        # reading the curve left out (a power sample that is no number, a counter's glitch)
        # must not become the first one kept.
        knots = c.t_ns[c.t_ns <= min(keep_from_ns, int(self.t[-2]))]
        if knots.size == 0:
            return
        k = int(np.searchsorted(self.t, knots[-1]))
        if k <= 0:
            return
        # the curve places a calibrated trace's samples earlier than their stamps (build_curve):
        # the first sample kept starts the next curve at its placed time
        self.base_j += float(c.at(np.array([self.t[k] - self.placement_ns]))[0])
        self.t, self.v = self.t[k:], self.v[k:]
        self.trimmed = True
        self._curve = None


def edge_uncertainty(track: ChannelTrack, t_ns: int) -> float:
    """Uncertainty (J, 1 sigma) that one edge at t_ns contributes to any interval ending there."""
    curve = track.curve()
    return float("nan") if curve is None else float(curve.edge_uncertainty(np.int64(t_ns)))


def latest(track: ChannelTrack, window_ns: int) -> tuple[float, float]:
    """(energy since start at the last reading, mean power over the window before it), unscaled."""
    t_last = track.last_ns
    if t_last is None or track.curve() is None:
        return float("nan"), float("nan")
    t0 = max(int(track.t[0]), t_last - window_ns)
    e0, e1 = track.cumulative(np.array([t0, t_last]))
    return float(e1), float((e1 - e0) / (t_last - t0) * 1e9) if t_last > t0 else float("nan")


def answering_track(ranked: list[Channel], tracks: dict[int, ChannelTrack], health: dict[int, str]):
    """The track that answers for a domain now: the policy's best usable channel with a curve
    (else its best usable one), by the channels' current health; None if none is usable."""
    chosen = policy.choose(ranked, health, lambda c: tracks[c.id].curve() is not None)
    if chosen is None:
        chosen = policy.choose(ranked, health, lambda c: True)
    return None if chosen is None else tracks[chosen.id]
