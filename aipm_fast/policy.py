"""The energy policy: how a domain's readings become joules. One module, used by the Meter (online,
through the coordinator), `record` (offline, through the recorder), the reports, the integrations
and the exporter, so that every output of one session agrees.

It decides:
- which channels of a domain can give its energy, in order of preference
  (:func:`ranked_channels`): the finest time resolution first, a power trace before a counter of
  the same resolution (the trace is then scaled by the counter);
- which of them answers for an interval (:func:`usable`, :func:`choose`): the first that is
  healthy and covers the interval, falling back to the next when a channel is stuck, dead or
  failing, and saying so in the method;
- how a channel's readings become a cumulative curve (:func:`build_curve`): the one place where
  a sensor model of a power trace plugs in;
- how an energy counter scales a power trace (:func:`counter_scale`): the counter integrates in
  the device, so over long spans it sets the scale and the trace only the shape;
- what an uncertainty means (:data:`UNCERTAINTY`, :func:`interval95`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from aipm_fast import energy
from aipm_fast.sensor.response import SensorResponse
from aipm_fast.sources.base import COUNTER, INSTANT_POWER, POWER_READINGS, Channel

# -- what an uncertainty means -------------------------------------------------------------------
#: Every `uncertainty_j` the project reports is one standard deviation of the energy's error
#: (J), from the error model of EnergyCurve.uncertainty; it leaves out the sensor's own
#: calibration error. A 95% interval is energy ± Z95 * uncertainty.
UNCERTAINTY = "one standard deviation (1 sigma); 95% interval = energy ± 1.96 sigma"
Z95 = 1.96


def interval95(energy_j, uncertainty_j):
    """(low, high) of the 95% interval of energies with their 1-sigma uncertainties."""
    e, u = np.asarray(energy_j, dtype=float), np.asarray(uncertainty_j, dtype=float)
    return e - Z95 * u, e + Z95 * u


# -- which channels, in which order ---------------------------------------------------------------
#: health (recorder.classify) that rules a channel out, and health that puts it behind the others
UNUSABLE = ("stuck", "dead")
DEMOTED = ("failing", "stale")

#: shortest span of counter readings that may scale a trace
MIN_SCALE_SPAN_S = 5.0

#: The plausibility bound on a counter's power where its device gives none (W): above any one
#: CPU package, GPU or board, far below what a reset read as a wrap implies (a 262 kJ RAPL range
#: gained in 1 ms is 262 MW). A channel's own max_power_w replaces it.
DEFAULT_MAX_POWER_W = 10_000.0


def ranked_channels(channels) -> dict[str, list[Channel]]:
    """domain -> its energy-bearing channels, best first: finest resolution, then power before
    counter (a trace can be scaled by the counter; a counter cannot be shaped by anything)."""
    by_domain: dict[str, list[Channel]] = {}
    for ch in channels:
        if ch.carries_energy:
            by_domain.setdefault(ch.domain, []).append(ch)
    return {
        d: sorted(chs, key=lambda c: (c.resolution_s, c.reading == COUNTER, c.id))
        for d, chs in sorted(by_domain.items())
    }


def anchor_for(channel: Channel, ranked: list[Channel]) -> Channel | None:
    """The counter that scales a power channel (the finest counter of its domain), or None."""
    if channel.reading not in POWER_READINGS:
        return None
    return next((c for c in ranked if c.reading == COUNTER), None)


def usable(status: str | None) -> bool:
    return status not in UNUSABLE


def health_rank(status: str | None) -> int:
    """0 for a healthy channel, 1 for one behind the others (failing, stale)."""
    return 1 if status in DEMOTED else 0


def choose(ranked: list[Channel], health: dict[int, str], finite) -> Channel | None:
    """The channel that answers for an interval: the best-ranked usable one whose energy there is
    known (`finite(channel)`), healthy channels before demoted ones; None if there is none."""
    order = sorted((c for c in ranked if usable(health.get(c.id))), key=lambda c: health_rank(health.get(c.id)))
    return next((c for c in order if finite(c)), None)


def fallback_note(chosen: Channel, ranked: list[Channel], health: dict[int, str]) -> str:
    """Why a channel other than the domain's best one answered ('' when the best did)."""
    if chosen is ranked[0]:
        return ""
    skipped = [c for c in ranked if c is not chosen and ranked.index(c) < ranked.index(chosen)]
    why = ", ".join(f"{c.label} {health.get(c.id) or 'without readings there'}" for c in skipped)
    return f"; fell back from {why}" if why else ""


# -- readings to curves -----------------------------------------------------------------------
def build_curve(
    channel: Channel,
    t_ns: np.ndarray,
    values: np.ndarray,
    first_is_new: bool | None = None,
    response: SensorResponse | None = None,
) -> energy.EnergyCurve:
    """The cumulative energy curve of one channel's readings (ValueError if none can be built).

    Counters are differenced with their wrap. Power readings are integrated as a trapezoid: with
    the channel's measured sensor response (sensor/, `aipm-fast calibrate`), each sample is placed
    where its energy was drawn on average (its stamp less the response's centroid); without one,
    an instant-power sample stays at its stamp, the method says so, and the uncertainty allows
    its energy to belong up to one update interval earlier. Marks on a calibrated trace are
    reconstructed through the whole response (attribution.py)."""
    if channel.reading == COUNTER:
        return energy.counter_curve(
            t_ns,
            values,
            channel.wrap,
            first_is_new=first_is_new,
            max_power_w=channel.max_power_w or DEFAULT_MAX_POWER_W,
            update_s=channel.update_s or 0.001,
        )
    if response is not None:
        curve = energy.power_curve(np.asarray(t_ns, dtype=np.int64) - placement_ns(response), values)
        how = f"placed by the measured sensor response ({response.kind}, centroid {response.centroid_s * 1e3:.1f} ms)"
        return dataclasses.replace(curve, method=f"{curve.method}, {how}")
    curve = energy.power_curve(t_ns, values)
    if channel.reading == INSTANT_POWER:
        return dataclasses.replace(
            curve,
            method=f"{curve.method}, {UNCALIBRATED}",
            placement_s=channel.update_s or curve.sample_period_s,
        )
    return curve


def placement_ns(response: SensorResponse | None) -> int:
    """How much earlier than its stamp a trace's sample is placed (ns): the response's centroid."""
    return int(round(response.centroid_s * 1e9)) if response is not None else 0


#: the method's words for a power trace whose time response was not measured
UNCALIBRATED = "samples at their stamps (sensor response not measured: aipm-fast calibrate)"


# -- the counter scales the trace -------------------------------------------------------------
@dataclass(frozen=True)
class Scale:
    """Counter-over-trace factor for one power channel (1.0 where not applied) and why."""

    factor: float
    how: str

    @classmethod
    def none(cls, why: str) -> Scale:
        return cls(1.0, why)


def anchor_times(counter_t: np.ndarray, counter_v: np.ndarray, t_from: int, t_to: int) -> tuple[int, int] | None:
    """First and last time within [t_from, t_to] at which the counter's value changed: where a
    counter is exact. The first reading never counts (when its value appeared is unknown), so
    every path that sees the same readings picks the same times."""
    if counter_t.size < 2:
        return None
    changed = counter_t[1:][np.diff(counter_v) != 0]
    inside = changed[(changed >= t_from) & (changed <= t_to)]
    if inside.size < 2:
        return None
    return int(inside[0]), int(inside[-1])


def counter_scale(trace_j: float, counter_j: float, span_s: float, counter_label: str = "energy counter") -> Scale:
    """The factor counter_j / trace_j over a span of `span_s` s between two anchor times, applied
    only where the span is long enough and the factor plausible (energy.SCALE_RANGE)."""
    if not span_s >= MIN_SCALE_SPAN_S:
        return Scale.none(f"{counter_label} span {span_s:.2f} s < {MIN_SCALE_SPAN_S:g} s: trace unscaled")
    if not (trace_j > 0 and np.isfinite(counter_j)):
        return Scale.none(f"{trace_j!r} J in the trace vs {counter_j!r} J in the {counter_label}: trace unscaled")
    factor = counter_j / trace_j
    lo, hi = energy.SCALE_RANGE
    if not lo <= factor <= hi:
        return Scale.none(
            f"{counter_label}/trace = {factor:.3f} outside {energy.scale_range_text()}: not scaled (a source is broken)"
        )
    return Scale(
        factor, f"scaled by the {counter_label} over {span_s:.0f} s (x{factor:.4f}){energy.disagreement_note(factor)}"
    )
