"""Energy from power and energy readings: cumulative curves, interval energies, uncertainty.

Pure numpy, no I/O. Units: times are CLOCK_MONOTONIC nanoseconds (int64) wherever a name
ends in ``_ns``; durations and periods ending in ``_s`` are seconds; energies are joules (J),
powers watts (W).

Every source becomes an :class:`EnergyCurve`, the cumulative energy E(t) of one domain (a
GPU, a CPU package) held as knots. The energy of an interval [a, b] is E(b) - E(a), so the
energies of adjacent intervals add up to the energy of their union (per-inference energies
sum to their window's energy) up to floating-point rounding.

Between knots a curve follows its source's model:

- a counter curve (:func:`counter_curve`) assumes constant power between two counter
  updates, so E is linear between knots;
- a power curve (:func:`power_curve`) assumes power varies linearly between two samples
  (the trapezoid rule). At an edge that falls between samples the power is interpolated and
  the partial segment integrated as a trapezoid, so E is quadratic within a segment and a
  piecewise-linear power integrates exactly at any edge, not only at the samples.

Where a device has both, :func:`scaled_curve` lets the fine power trace give the shape and
the counter the absolute scale.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from aipm_fast import counters

__all__ = [
    "EnergyCurve",
    "HIDDEN_VARIATION",
    "ESTIMATE_FRACTION",
    "unsure",
    "SCALE_RANGE",
    "SCALE_WARN",
    "counter_curve",
    "power_curve",
    "scaled_curve",
]

_NS_PER_S = 1e9

#: Relative power variation assumed to hide inside one sample period even where the samples
#: look perfectly steady (the uncertainty model's floor; see EnergyCurve.uncertainty).
HIDDEN_VARIATION = 0.1

#: an energy is flagged `estimate` where its 1-sigma uncertainty exceeds this share of it
ESTIMATE_FRACTION = 0.05


def unsure(energy_j, uncertainty_j) -> np.ndarray:
    """The estimate flag: uncertainty above ESTIMATE_FRACTION of the energy, or no energy."""
    e = np.asarray(energy_j, dtype=float)
    u = np.asarray(uncertainty_j, dtype=float)
    with np.errstate(invalid="ignore"):
        return ~(u <= ESTIMATE_FRACTION * np.abs(e))


#: Scale factors (anchor energy / shape energy) that scaled_curve accepts. The range is wide
#: on purpose: a load whose period locks onto the trace's sample period (a loop of exactly
#: 20 ms against NVML's 50 Hz samples) biases the trace by tens of percent (+45% and -9% were
#: measured on an H200, bench/RESULTS.md), and the counter, integrated by the device itself,
#: is then the one to trust. Outside this range a source is broken, and scaling would hide it.
SCALE_RANGE = (0.5, 2.0)

#: Beyond this relative disagreement between trace and counter a scaled curve's method says
#: so: energies over spans follow the counter, but the shape within a span is doubtful.
SCALE_WARN = 0.05


@dataclass(frozen=True, eq=False)
class EnergyCurve:
    """Cumulative energy of one domain, as knots.

    Fields:
        t_ns: knot times, int64 CLOCK_MONOTONIC ns, strictly increasing, at least two.
        joules: cumulative energy at the knots, J, float64, starting at 0.
        sample_period_s: median spacing of the source's real samples (power samples, or
            counter updates as seen), s. Sets the uncertainty and the extrapolation limit.
        method: how the curve was made ("counter", "power-trapezoid", "power-trapezoid
            scaled to counter (...)", ...).
        power_w: power at the knots, W, for curves made from a power trace; None for
            counters. When present, E between knots is the trapezoid of the linearly
            interpolated power; when absent, E is linear between knots.
        max_extrapolation_s: how far outside [first knot, last knot] :meth:`at` extrapolates
            (with the power at the nearest edge) before answering NaN, s. Defaults to one
            sample period.
        scale: factor applied by :func:`scaled_curve`, 1.0 if none.
        hidden_variation: relative power variation assumed within one sample period where
            the samples look steady (see :meth:`uncertainty`).
        placement_s: how far in time a reading's energy may lie from where the curve puts
            it, not known better (s): a power trace whose sensor response is not calibrated
            (sensor/) may hold power from up to a sample period before its stamp. 0 for
            counters and calibrated traces.

    Arrays are copied and made read-only. Instances compare by identity.
    """

    t_ns: np.ndarray
    joules: np.ndarray
    sample_period_s: float
    method: str
    power_w: np.ndarray | None = None
    max_extrapolation_s: float | None = None
    scale: float = 1.0
    hidden_variation: float = HIDDEN_VARIATION
    placement_s: float = 0.0  # how far from its stamp a reading's energy may belong, unknown (s)
    events: tuple = ()  # counters: (t_ns, kind) of each reset, glitch or gap (aipm_fast.counters)

    # Derived in __post_init__, all per knot or per segment (segment j = [knot j, knot j+1]).
    _origin_ns: int = field(init=False, repr=False)
    _x: np.ndarray = field(init=False, repr=False)  # knot times, ns since the first knot, float64
    _seg_len_s: np.ndarray = field(init=False, repr=False)
    _seg_power_w: np.ndarray = field(init=False, repr=False)  # mean power of each segment
    _seg_variation_w: np.ndarray = field(init=False, repr=False)  # power change near each segment
    _p_j_per_ns: np.ndarray | None = field(init=False, repr=False)  # power at knots, J/ns
    _dp_j_per_ns2: np.ndarray | None = field(init=False, repr=False)  # power slope per segment
    _edge_power_w: tuple = field(init=False, repr=False)  # (left, right) power for extrapolation

    def __post_init__(self):
        t = np.array(self.t_ns, copy=True)
        if t.dtype.kind not in "iu":
            raise TypeError(f"t_ns must be integer nanoseconds, got dtype {t.dtype}")
        t = t.astype(np.int64)
        if t.ndim != 1 or t.size < 2:
            raise ValueError(f"an EnergyCurve needs at least two knots, got {t.size}")
        steps = np.diff(t)
        if np.any(steps <= 0):
            i = int(np.flatnonzero(steps <= 0)[0]) + 1
            raise ValueError(f"knot times must be strictly increasing (index {i})")
        e = np.array(self.joules, dtype=np.float64, copy=True)
        if e.shape != t.shape:
            raise ValueError(f"joules has shape {e.shape}, t_ns has {t.shape}")
        _require_finite(e, "joules")
        if e[0] != 0.0:
            raise ValueError(f"cumulative energy must start at 0 J, starts at {e[0]!r}")
        p = None
        if self.power_w is not None:
            p = np.array(self.power_w, dtype=np.float64, copy=True)
            if p.shape != t.shape:
                raise ValueError(f"power_w has shape {p.shape}, t_ns has {t.shape}")
            _require_finite(p, "power_w")
        period = float(self.sample_period_s)
        if not (np.isfinite(period) and period > 0):
            raise ValueError(f"sample_period_s must be positive, got {period!r}")
        max_ext = period if self.max_extrapolation_s is None else float(self.max_extrapolation_s)
        if not (max_ext >= 0):
            raise ValueError(f"max_extrapolation_s must be >= 0, got {max_ext!r}")
        for a in (t, e, p):
            if a is not None:
                a.flags.writeable = False

        x = (t - t[0]).astype(np.float64)
        seg_len_ns = np.diff(x)
        seg_power = np.diff(e) / (seg_len_ns / _NS_PER_S)
        if p is None:
            # A counter's power changes only at knots: a segment's variation is the larger
            # jump of segment power at its two knots.
            jump = np.concatenate(([0.0], np.abs(np.diff(seg_power)), [0.0]))
            variation = np.maximum(jump[:-1], jump[1:])
            edge_power = (float(seg_power[0]), float(seg_power[-1]))
            p_ns = dp_ns2 = None
        else:
            # A trace's samples show the variation directly: the largest change between
            # neighbouring samples over the segment and the segments on either side.
            d = np.concatenate(([0.0], np.abs(np.diff(p)), [0.0]))
            variation = np.maximum(np.maximum(d[:-2], d[1:-1]), d[2:])
            edge_power = (float(p[0]), float(p[-1]))
            p_ns = p / _NS_PER_S
            dp_ns2 = np.diff(p_ns) / seg_len_ns
        set_ = object.__setattr__
        set_(self, "t_ns", t)
        set_(self, "joules", e)
        set_(self, "power_w", p)
        set_(self, "sample_period_s", period)
        set_(self, "max_extrapolation_s", max_ext)
        set_(self, "scale", float(self.scale))
        set_(self, "_origin_ns", int(t[0]))
        set_(self, "_x", x)
        set_(self, "_seg_len_s", seg_len_ns / _NS_PER_S)
        set_(self, "_seg_power_w", seg_power)
        set_(self, "_seg_variation_w", variation)
        set_(self, "_p_j_per_ns", p_ns)
        set_(self, "_dp_j_per_ns2", dp_ns2)
        set_(self, "_edge_power_w", edge_power)

    # -- span -------------------------------------------------------------------------

    @property
    def start_ns(self) -> int:
        """Time of the first knot, ns."""
        return int(self.t_ns[0])

    @property
    def end_ns(self) -> int:
        """Time of the last knot, ns."""
        return int(self.t_ns[-1])

    @property
    def total_j(self) -> float:
        """Energy between the first and the last knot, J."""
        return float(self.joules[-1])

    # -- evaluation -------------------------------------------------------------------

    def _rel_ns(self, t_ns) -> np.ndarray:
        """Times as float64 ns since the first knot (small numbers keep interpolation exact)."""
        t = np.asarray(t_ns)
        if t.dtype.kind in "iu":
            return np.subtract(t, self._origin_ns, dtype=np.float64)
        if t.dtype.kind == "f":
            return np.subtract(t, float(self._origin_ns), dtype=np.float64)
        raise TypeError(f"times must be numbers of nanoseconds, got dtype {t.dtype}")

    def _at_rel(self, x: np.ndarray) -> np.ndarray:
        """Cumulative energy (J) at 1-D float times x (ns since the first knot)."""
        if self._p_j_per_ns is None or self._dp_j_per_ns2 is None:
            e = np.interp(x, self._x, self.joules)
        else:
            j = np.searchsorted(self._x, x, side="right")
            j -= 1
            np.clip(j, 0, self._x.size - 2, out=j)
            tau = x - self._x[j]
            # E_j + integral over [t_j, t] of the linearly interpolated power.
            e = self._dp_j_per_ns2[j]
            e *= 0.5 * tau
            e += self._p_j_per_ns[j]
            e *= tau
            e += self.joules[j]
        limit_ns = float(self.max_extrapolation_s or 0.0) * _NS_PER_S  # set in __post_init__
        left = x < 0.0
        if left.any():
            xl = x[left]
            e[left] = np.where(xl >= -limit_ns, xl * (self._edge_power_w[0] / _NS_PER_S), np.nan)
        end = self._x[-1]
        right = x > end
        if right.any():
            d = x[right] - end
            e[right] = np.where(d <= limit_ns, self.joules[-1] + d * (self._edge_power_w[1] / _NS_PER_S), np.nan)
        return e

    def at(self, t_ns):
        """Cumulative energy (J, relative to the first knot) at times t_ns (ns), vectorised.

        Between knots: linear for counters (constant power between updates), trapezoid of
        the interpolated power for power traces. Outside [first knot, last knot]: the power
        at the nearest edge (the edge sample for a trace, the edge segment's mean power for a
        counter) for at most ``max_extrapolation_s``, NaN beyond: unknown is never 0.
        Returns a float for a scalar time, else an array of the input's shape.
        """
        x = self._rel_ns(t_ns)
        e = self._at_rel(np.atleast_1d(x).ravel())
        if x.ndim == 0:
            return float(e[0])
        return e.reshape(x.shape)

    def energy(self, a_ns, b_ns):
        """Energy (J) of each interval [a_ns, b_ns] (ns, broadcast together): at(b) - at(a).

        Adjacent intervals add up to their union up to rounding. NaN where an edge lies
        beyond the extrapolation limit. Raises ValueError if some b_ns < a_ns.
        """
        a, b = _intervals(a_ns, b_ns)
        return self.at(b) - self.at(a)

    def mean_power(self, a_ns, b_ns):
        """Mean power (W) over each interval [a_ns, b_ns] (ns); NaN for empty intervals."""
        a, b = _intervals(a_ns, b_ns)
        length_s = np.subtract(b, a, dtype=np.float64) / _NS_PER_S
        e = self.at(b) - self.at(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            power = np.where(length_s > 0, e / length_s, np.nan)
        return float(power) if power.ndim == 0 else power

    def is_estimate(self, a_ns, b_ns):
        """True where an interval's energy is an estimate rather than a measurement (bool array).

        That is where its uncertainty (:meth:`uncertainty`) exceeds ESTIMATE_FRACTION of the
        energy, or where an edge lies outside the knots and the energy is extrapolated
        (including where it is NaN): a rule on how sure the figure is, not on its duration.
        """
        a, b = _intervals(a_ns, b_ns)
        xa, xb = self._rel_ns(a), self._rel_ns(b)
        end = self._x[-1]
        outside = (xa < 0) | (xa > end) | (xb < 0) | (xb > end)
        return unsure(self.energy(a, b), self.uncertainty(a, b)) | outside

    def uncertainty(self, a_ns, b_ns):
        """Absolute uncertainty (J) of each interval's energy, vectorised.

        The model is an error scale for what the source cannot see, not a confidence
        interval; it leaves out the source's own calibration error. Each edge e of the
        interval lies in a segment between two knots, of length h_e (s, at least
        ``sample_period_s``: a gap in the samples widens it). Within a segment the curve
        assumes a shape (constant or linear power) that the true power may not follow, so
        energy can be misplaced by about half a segment's worth of the power's variation:

            delta_e = sqrt(V_e**2 + (hidden_variation * P_e)**2)      W
            u_e     = (h_e / 2 + d_e) * delta_e                       J

        where P_e is the segment's mean power, V_e the local power variation (the largest
        change between neighbouring samples around the edge for a trace, the largest jump
        in segment power at the segment's knots for a counter), hidden_variation (default
        0.1) the variation assumed to hide inside a sample period even where the samples
        look steady, and d_e how far (s) the edge lies outside the knots (extrapolated).
        The two edges count as independent:

            u = min(sqrt(u_a**2 + u_b**2), L * max(P_a + V_a, P_b + V_b))

        The cap says that an interval of length L (s) cannot be wrong by more than all the
        energy it could hold: for intervals far below a sample period the relative
        uncertainty saturates near 100% (the source knows nothing about them). Above that,
        u stays about hidden_variation * P * h / sqrt(2) while the energy is P * L, so the
        relative uncertainty grows like h / L as the interval shrinks: about 0.1% at 1 s,
        3% at 50 ms and 28% at 5 ms for a steady 20 ms trace. NaN where the energy is NaN.
        """
        a, b = _intervals(a_ns, b_ns)
        xa = np.atleast_1d(self._rel_ns(a)).ravel()
        xb = np.atleast_1d(self._rel_ns(b)).ravel()
        ua, pa = self._edge_uncertainty(xa)
        ub, pb = self._edge_uncertainty(xb)
        length_s = (xb - xa) / _NS_PER_S
        u = np.minimum(np.hypot(ua, ub), length_s * np.maximum(pa, pb))
        unknown = np.isnan(self._at_rel(xa)) | np.isnan(self._at_rel(xb))
        u[unknown] = np.nan
        if np.ndim(a) == 0:
            return float(u[0])
        return u.reshape(np.shape(a))

    def edge_uncertainty(self, t_ns):
        """Uncertainty (J) of the cumulative energy at each time t_ns (ns): the term u_e of
        :meth:`uncertainty` for one edge. For a window whose two edges are recorded apart,
        hypot(u_start, u_end) is its uncertainty (without the short-interval cap).
        NaN where :meth:`at` is NaN. A float for a scalar time, else an array of its shape.
        """
        x = self._rel_ns(t_ns)
        flat = np.atleast_1d(x).ravel()
        u, _ = self._edge_uncertainty(flat)
        u[np.isnan(self._at_rel(flat))] = np.nan
        if x.ndim == 0:
            return float(u[0])
        return u.reshape(x.shape)

    def _edge_uncertainty(self, x: np.ndarray):
        """Per edge: (u_e in J, highest plausible local power P_e + V_e in W)."""
        j = np.searchsorted(self._x, x, side="right")
        j -= 1
        np.clip(j, 0, self._x.size - 2, out=j)
        h_s = np.maximum(self._seg_len_s[j], self.sample_period_s)
        outside_s = np.maximum(np.maximum(-x, x - self._x[-1]), 0.0) / _NS_PER_S
        power = np.abs(self._seg_power_w[j])
        variation = self._seg_variation_w[j]
        delta = np.hypot(variation, self.hidden_variation * power)
        u = np.hypot((0.5 * h_s + outside_s) * delta, self.placement_s * variation)
        return u, power + variation


# -- building curves --------------------------------------------------------------------


def counter_curve(
    t_ns,
    value_j,
    wrap_j=None,
    *,
    first_is_new: bool | None = None,
    max_power_w: float | None = None,
    update_s: float = 0.001,
) -> EnergyCurve:
    """Curve from an energy counter's readings: t_ns (int64 ns), value_j (float64, J).

    A decrease is a wrap when ``wrap_j`` (the counter's range, J) is given: wrap_j is added
    from there on, whatever the size of the decrease (at most one wrap between two readings).
    Without wrap_j any decrease raises ValueError naming the index and the values, so that a
    counter reset never turns into negative energy.

    Knots sit where the counter's value changed: at the first reading of each new value,
    which is the first time the new value was seen, the closest known time to the update.
    Readings that repeat the previous value (the counter is read faster than it updates)
    are not knots: keeping the last reading of a run would claim that no energy flowed until
    the update, a staircase, when the counter says only that energy flowed at some rate
    between two updates.

    The first reading is a knot only if it is the first sight of its value, which the
    readings alone cannot always tell. ``first_is_new`` says it: True when the series was
    cut just where the counter changed (a trimmed history); False when it starts at an
    arbitrary time, in which case, if the counter is read faster than it updates, the first
    run of readings is dropped (its value appeared at an unknown time up to one update
    period earlier, and a knot at the first reading would squeeze that update's energy into
    a short first segment) and the curve starts at the first change. None (the default)
    infers it: the first reading counts as new if every reading is new, or if its run lasts
    a full update period (at least the median spacing of changes less two median read
    spacings), as a run that began with an update does.

    After the last change, :meth:`EnergyCurve.at` extrapolates for one update period, so
    the trailing unchanged readings of a live counter are covered and those of a stuck one
    are not (the recorder reports such a channel as stuck).

    With ``max_power_w`` (a plausibility bound on the device's power, W), every step that does
    not fit is classified instead (aipm_fast.counters): a decrease is a wrap only where one range
    is a plausible energy for the step's duration; otherwise the reading is a glitch (dropped)
    or a reset (bridged at the neighbouring power), and a long gap in the readings is unwrapped
    from the neighbouring power. The curve's ``events`` and ``method`` say what was found.
    ``update_s`` is the counter's own update interval (the slack of the bound).

    Duplicate timestamps keep their first reading. Raises ValueError for fewer than two
    knots (a counter that never changed, or only once).
    """
    t, v, index = _clean_readings(t_ns, value_j, "value_j")
    events: list = []
    if max_power_w is not None:
        t, v, events = counters.classify(t, v, None if wrap_j is None else float(wrap_j), max_power_w, update_s)
    step = np.diff(v)
    down = np.flatnonzero(step < 0)
    if down.size:
        i = int(down[0])
        where = f"at index {index[i + 1]}: {float(v[i])!r} J -> {float(v[i + 1])!r} J (t = {t[i]} ns -> {t[i + 1]} ns)"
        if wrap_j is None:
            raise ValueError(
                f"energy counter decreased {where}; a wrapping counter needs wrap_j, "
                "otherwise the counter was reset and this span cannot be integrated"
            )
        wrap_j = float(wrap_j)
        if not (wrap_j > 0):
            raise ValueError(f"wrap_j must be positive, got {wrap_j!r}")
        # Every decrease is a wrap. A "small" decrease can be a genuine wrap when the reader
        # stalls for a good part of the counter's range (a 3 J range at 20 W wraps every
        # 150 ms), so its size tells nothing; a reset would need a reboot, which no
        # CLOCK_MONOTONIC span crosses.
        wraps = np.zeros(v.size)
        wraps[down + 1] = 1.0
        v = v + np.cumsum(wraps) * wrap_j
        step = np.diff(v)
    first_seen = np.flatnonzero(step != 0) + 1
    if first_seen.size == step.size:
        keep_first = True  # every reading is new: each one follows an update
    elif first_is_new is not None:
        keep_first = bool(first_is_new)
    elif first_seen.size >= 2:
        update_ns = np.median(np.diff(t[first_seen]))
        read_ns = np.median(np.diff(t))
        keep_first = bool(t[first_seen[0]] - t[0] >= update_ns - 2 * read_ns)
    else:
        keep_first = False
    knots = np.concatenate(([0], first_seen)) if keep_first else first_seen
    if knots.size < 2:
        raise ValueError(
            f"energy counter changed {first_seen.size} time(s) in {t.size} readings: "
            "at least two updates are needed to measure energy (is it stuck?)"
        )
    kt = t[knots]
    found = counters.summary(events)
    return EnergyCurve(
        t_ns=kt,
        joules=v[knots] - v[knots[0]],
        sample_period_s=float(np.median(np.diff(kt))) / _NS_PER_S,
        method=f"counter ({found})" if found else "counter",
        events=tuple(events),
    )


def power_curve(t_ns, watts) -> EnergyCurve:
    """Curve from a power trace: t_ns (int64 ns), watts (float64, W); cumulative trapezoid.

    Readings that are not finite numbers (a sensor's NaN) are dropped and counted in the
    method, so that one bad sample costs its own span, not the whole trace. Duplicate timestamps
    keep their first reading. Needs at least two distinct times.
    """
    watts = np.asarray(watts, dtype=np.float64)
    finite = np.isfinite(watts)
    dropped = int(finite.size - np.count_nonzero(finite))
    if dropped:
        t_ns, watts = np.asarray(t_ns)[finite], watts[finite]
    t, p, _ = _clean_readings(t_ns, watts, "watts")
    if t.size < 2:
        raise ValueError(f"a power curve needs at least two samples at distinct times, got {t.size}")
    dt_s = np.diff(t) / _NS_PER_S
    joules = np.concatenate(([0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * dt_s)))
    return EnergyCurve(
        t_ns=t,
        joules=joules,
        sample_period_s=float(np.median(dt_s)),
        method=f"power-trapezoid ({dropped} invalid sample{'s' * (dropped > 1)} dropped)"
        if dropped
        else "power-trapezoid",
        power_w=p,
    )


def scaled_curve(shape: EnergyCurve, anchor: EnergyCurve, min_span_s: float = 5.0) -> EnergyCurve:
    """The fine curve ``shape`` (a power trace) scaled to the energy of ``anchor`` (a counter).

    Over the span common to both, cut at the anchor's own knots (where a counter is exact),
    factor = anchor energy / shape energy, and the result is ``shape`` with joules and
    power_w multiplied by it, ``scale`` recording it. The shape is returned unscaled (same
    knots and values, its ``scale`` kept) when the common span is shorter than
    ``min_span_s`` (s), when the shape has no energy there, or when the factor lies outside
    SCALE_RANGE (0.5 to 2): a mismatch that large means a source is broken. Between, the
    factor is applied, and ``method`` warns where it exceeds SCALE_WARN (a trace aliased by a
    periodic load). ``method`` says in each case what was done and why.
    """
    start = max(shape.start_ns, anchor.start_ns)
    end = min(shape.end_ns, anchor.end_ns)
    inside = anchor.t_ns[(anchor.t_ns >= start) & (anchor.t_ns <= end)]
    span_s = (int(inside[-1]) - int(inside[0])) / _NS_PER_S if inside.size >= 2 else 0.0
    if span_s < min_span_s:
        why = f"common span with {anchor.method} {span_s:.3f} s < {min_span_s:g} s"
        return dataclasses.replace(shape, method=f"{shape.method}, not scaled: {why}")
    a, b = int(inside[0]), int(inside[-1])
    shape_j = float(shape.energy(a, b))
    anchor_j = float(anchor.energy(a, b))
    if not (shape_j > 0 and np.isfinite(anchor_j)):
        why = f"{shape_j!r} J in shape vs {anchor_j!r} J in {anchor.method} over {span_s:.3f} s"
        return dataclasses.replace(shape, method=f"{shape.method}, not scaled: {why}")
    factor = anchor_j / shape_j
    lo, hi = SCALE_RANGE
    if not (lo <= factor <= hi):
        why = (
            f"{anchor.method}/shape energy ratio {factor:.4f} over {span_s:.3f} s is outside "
            f"{scale_range_text()}: a source is broken"
        )
        return dataclasses.replace(shape, method=f"{shape.method}, not scaled: {why}")
    return dataclasses.replace(
        shape,
        joules=shape.joules * factor,
        power_w=None if shape.power_w is None else shape.power_w * factor,
        scale=shape.scale * factor,
        method=(
            f"{shape.method} scaled to {anchor.method} "
            f"(factor {factor:.5f} over {span_s:.3f} s){disagreement_note(factor)}"
        ),
    )


def disagreement_note(factor: float) -> str:
    """A warning to append to a scale's description when the trace, before scaling, reads
    more than SCALE_WARN above or below the counter (factor = counter / trace)."""
    trace_vs_counter = 1 / factor - 1
    if abs(trace_vs_counter) <= SCALE_WARN:
        return ""
    return (
        f"; the trace alone read {100 * trace_vs_counter:+.1f}% against the counter: the load may "
        f"alias with the trace's sample period, so short intervals are doubtful"
    )


def scale_range_text() -> str:
    lo, hi = SCALE_RANGE
    return f"[{lo:g}, {hi:g}]"


# -- helpers on curves and readings ----------------------------------------------------


def _clean_readings(t_ns, values, name: str):
    """Validated (t int64, values float64, original indices); duplicate times keep the first."""
    t = np.asarray(t_ns)
    if t.dtype.kind not in "iu":
        raise TypeError(f"t_ns must be integer nanoseconds, got dtype {t.dtype}")
    t = t.astype(np.int64, copy=False)
    v = np.asarray(values, dtype=np.float64)
    if t.ndim != 1 or v.shape != t.shape:
        raise ValueError(f"t_ns and {name} must be 1-D of the same length, got {t.shape} and {v.shape}")
    _require_finite(v, name)
    step = np.diff(t)
    if np.any(step < 0):
        i = int(np.flatnonzero(step < 0)[0]) + 1
        raise ValueError(f"t_ns must be sorted: t_ns[{i}] = {t[i]} < t_ns[{i - 1}] = {t[i - 1]}")
    index = np.flatnonzero(np.concatenate(([True], step != 0)))
    if index.size == t.size:
        return t, v, index
    return t[index], v[index], index


def _require_finite(a: np.ndarray, name: str):
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name}[{i}] is {float(a[i])!r}: readings must be finite")


def _intervals(a_ns, b_ns):
    """Interval edges broadcast together; ValueError if an interval ends before it starts."""
    a, b = np.broadcast_arrays(np.asarray(a_ns), np.asarray(b_ns))
    backwards = b < a
    if np.any(backwards):
        i = int(np.flatnonzero(np.ravel(backwards))[0])
        raise ValueError(f"interval {i} ends before it starts: [{np.ravel(a)[i]}, {np.ravel(b)[i]}] ns")
    return a, b
