"""The offline path: energies of intervals from a whole recording's readings, by the energy policy.

`record` (through Recorder.energy) and anything that replays a samples.parquet use this; the
Meter's online path (the coordinator) applies the same policy to readings as they arrive, and a
test replays one recording through both and gets the same energies.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aipm_fast import energy, policy
from aipm_fast.sources.base import Channel


@dataclass
class DomainEnergy:
    """A domain's energy over an interval: the figure (None where unknown), its 1-sigma
    uncertainty, how it was obtained, and what every usable channel alone gave."""

    energy_j: float | None
    mean_power_w: float | None
    method: str
    uncertainty_j: float | None = None
    alternatives: dict[str, float] = field(default_factory=dict)


class ChannelCurves:
    """Every energy-bearing channel's curve over a whole recording, built once, with the scale
    of each power trace by its domain's counter."""

    def __init__(self, channels, series, responses=None):
        """`channels`: Channel objects; `series(channel_id)` -> (t_ns, values) in time order;
        `responses`: {channel id: SensorResponse} measured for power traces (sensor/)."""
        responses = responses or {}
        self.ranked = policy.ranked_channels(channels)
        self.curves: dict[int, energy.EnergyCurve] = {}
        self.errors: dict[int, str] = {}
        self._series: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for chs in self.ranked.values():
            for ch in chs:
                t, v = series(ch.id)
                self._series[ch.id] = (t, v)
                if t.size < 2:
                    self.errors[ch.id] = f"{t.size} reading(s)"
                    continue
                try:
                    self.curves[ch.id] = policy.build_curve(ch, t, v, response=responses.get(ch.id))
                except ValueError as exc:  # e.g. a counter that never advanced
                    self.errors[ch.id] = str(exc)
        self.scales = {
            ch.id: self._scale(ch, chs) for chs in self.ranked.values() for ch in chs if ch.id in self.curves
        }

    def _scale(self, ch: Channel, ranked: list[Channel]) -> policy.Scale:
        anchor = policy.anchor_for(ch, ranked)
        if anchor is None:
            return policy.Scale.none("")
        if anchor.id not in self.curves:
            return policy.Scale.none(
                f"energy counter unusable ({self.errors.get(anchor.id, 'no readings')}): trace unscaled"
            )
        trace = self.curves[ch.id]
        counter_t, counter_v = self._series[anchor.id]
        times = policy.anchor_times(counter_t, counter_v, trace.start_ns, trace.end_ns)
        if times is None:
            return policy.Scale.none("energy counter not read within the trace yet: trace unscaled")
        t0, t1 = times
        return policy.counter_scale(
            float(trace.energy(t0, t1)), float(self.curves[anchor.id].energy(t0, t1)), (t1 - t0) / 1e9
        )

    def interval(self, ch: Channel, a: int, b: int) -> tuple[float, float]:
        """(energy J, 1-sigma uncertainty J) of [a, b] from one channel, scaled; NaN where unknown."""
        c = self.curves[ch.id]
        k = self.scales[ch.id].factor
        return float(c.energy(a, b)) * k, float(c.uncertainty(a, b)) * k

    def method(self, ch: Channel) -> str:
        how = self.scales[ch.id].how
        return f"{ch.label}: {self.curves[ch.id].method}" + (f"; {how}" if how else "")


def domain_energies(curves: ChannelCurves, health: dict[int, str], a: int, b: int) -> dict[str, DomainEnergy]:
    """Every domain's energy over [a, b] (ns)."""
    return {domain: domain_energy(curves, ranked, health, a, b) for domain, ranked in curves.ranked.items()}


def domain_energy(curves: ChannelCurves, ranked: list[Channel], health: dict[int, str], a: int, b: int) -> DomainEnergy:
    """The best estimate of one domain's energy over [a, b], with how it was made.

    The policy's best usable channel that covers the span answers; readings that stop inside
    the span (a GPU lost, a file gone) give the energy of what they cover, marked partial,
    rather than nothing."""
    span_s = (b - a) / 1e9
    have = [c for c in ranked if c.id in curves.curves and policy.usable(health.get(c.id))]
    values = {c.id: curves.interval(c, a, b) for c in have}
    alternatives = {c.label: values[c.id][0] for c in have if np.isfinite(values[c.id][0])}
    chosen = policy.choose(have, health, lambda c: np.isfinite(values[c.id][0]))
    if chosen is not None:
        e, u = values[chosen.id]
        method = curves.method(chosen) + policy.fallback_note(chosen, ranked, health)
        return DomainEnergy(e, e / span_s if span_s > 0 else None, method, u, alternatives)
    if not have:
        reasons = [
            f"{c.name}: {health.get(c.id) or 'no status'}"
            + (f" ({curves.errors[c.id]})" if c.id in curves.errors else "")
            for c in ranked
        ]
        return DomainEnergy(None, None, "no usable reading: " + "; ".join(reasons), None, alternatives)
    best = sorted(have, key=lambda c: policy.health_rank(health.get(c.id)))[0]
    curve = curves.curves[best.id]
    lo, hi = max(a, curve.start_ns), min(b, curve.end_ns)
    method = curves.method(best)
    if hi <= lo:
        return DomainEnergy(None, None, f"{method}: no readings inside the span", None, alternatives)
    e, u = curves.interval(best, lo, hi)
    covered = (hi - lo) / 1e9
    return DomainEnergy(
        e, e / covered, f"{method}; partial: readings cover {covered:.3f} s of {span_s:.3f} s", u, alternatives
    )
