"""The power inside one inference, from many: equivalent-time sampling through the sensor's response.

A driver sample comes every 20 ms and is a weighted mean of the power over the tens of ms before
it (sensor/response.py); one inference may last 13 ms. But an inference repeated many times,
each repetition starting at another phase of the sample grid, is seen by samples at every phase.
Each repetition's time is folded onto one inference's timeline (time since its CUDA-event start)
and cut into bins of `bin_s` of phase; time between repetitions is binned by the time since the
last one ended (the GPU's power falls off after work for a while), the last gap bin taking all
that is later. The unknowns are the power in each bin, the same for every repetition. Every
sample is the response-weighted sum of the bins its response sees:

    s_j = sum_c M[j, c] p_c,    M[j, c] = the share of sample j's response on time folded into c,

solved by least squares with a second-difference smoothness penalty within the inference's bins
and within the gap's (none across the inference's start or end, where the power jumps). The
penalty's weight is chosen by generalised cross-validation over SMOOTHING (scaled to M'M), so
the data, not a constant, trades resolution against noise.

Uncertainty (1 sigma, policy.UNCERTAINTY): a sandwich estimator, the samples' noise taken from
the fit's own residuals (each sample's squared residual, per degree of freedom the fit leaves),
so that the band is wide where the samples scatter (power at the GPU's limit) or few samples see
a bin; plus, in quadrature, the smoothing's bias as the curve itself estimates it: the resolution
matrix R (how each bin's estimate averages the true bins) applied to the curve, R p - p, large
at the inference's edges, near zero where the power is steady; plus the response's own
uncertainty: the same samples folded through other responses the sensor's could as well be (the
response moved by its timing's 1 sigma either way, `response_timing`; other calibrations of the
same GPU, where the caller has them), each group's mean squared change of the curve. On the H200
the statistical part alone is what a delete-one-block jackknife over the run gives too (0.03-0.1
J per part), while three calibrations of one GPU move a 10 ms phase's energy by up to 30%: a
band without the response's term covered none of the measured errors (bench/RESULTS.md). The
resolution reported is the median effective width of the bins' averaging kernels (rows of R),
in seconds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from aipm_fast.sensor.response import GRID_S, SensorResponse

#: the default phase bin (s)
BIN_S = 0.001
#: each response grid cell is split into this many sub-cells when folded, so that a cell
#: straddling two phase bins is shared between them
SUB_CELLS = 4
#: the gap after an inference is binned (at bin_s) this far; all later gap time is one bin
GAP_DETAIL_S = 0.030
#: candidate weights of the smoothness penalty, relative to the mean diagonal of M'M
SMOOTHING = tuple(float(x) for x in np.logspace(-4, 1, 16))
#: a tiny pull of every bin toward the samples' mean, so that no bin is left undetermined
RIDGE = 1e-7
#: a bin is part of the inference's curve where at least this share of repetitions reach it
MIN_COVERAGE = 0.5
#: the phase bins cover the durations up to this quantile
LONG_QUANTILE = 0.99


@dataclass(frozen=True)
class Span:
    """A named part of the inference: [start_s, end_s) after the inference's start (medians over
    repetitions)."""

    name: str
    start_s: float
    end_s: float


@dataclass
class Folded:
    """The reconstructed power within one inference, and what it rests on."""

    bin_s: float
    power_w: np.ndarray  # per phase bin
    sigma_w: np.ndarray  # 1 sigma per phase bin
    coverage: np.ndarray  # share of repetitions whose inference reaches each phase bin
    gap_power_w: np.ndarray  # per gap bin (time since an inference's end)
    gap_sigma_w: np.ndarray
    energy_j: float  # mean energy of one inference
    energy_sigma_j: float
    duration_s: float  # mean inference duration
    resolution_s: float  # median effective width of the phase bins' averaging kernels
    smoothing: float  # the penalty weight GCV chose (relative)
    residual_rms_w: float
    n_samples: int
    n_reps: int
    scale: float = 1.0  # counter-over-trace factor applied to every power
    _cov: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), repr=False)
    _bias: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    #: per group of alternative responses, (responses x phase bins) change of the curve
    _alt: list = field(default_factory=list, repr=False)

    @property
    def phase_s(self) -> np.ndarray:
        """Bin centres, s after the inference's start."""
        return (np.arange(self.power_w.size) + 0.5) * self.bin_s

    @property
    def in_inference(self) -> np.ndarray:
        return self.coverage >= MIN_COVERAGE

    @property
    def mean_power_w(self) -> float:
        return self.energy_j / self.duration_s if self.duration_s > 0 else float("nan")

    @property
    def relative_band(self) -> float:
        """The RMS of the 1-sigma band over the inference's bins, over its mean power: how well the
        curve is known, the figure the stopping rule compares with the precision asked for."""
        inside = self.in_inference
        if not inside.any() or not self.mean_power_w > 0:
            return float("inf")
        return float(np.sqrt(np.mean(self.sigma_w[inside] ** 2)) / self.mean_power_w)

    def weights(self, start_s: float, end_s: float) -> np.ndarray:
        """Seconds of each phase bin within [start_s, end_s) of the inference, each bin counted for
        the share of repetitions it is part of (so [0, duration) gives the mean inference)."""
        lo = np.arange(self.power_w.size) * self.bin_s
        sec = np.clip(np.minimum(end_s, lo + self.bin_s) - np.maximum(start_s, lo), 0.0, None)
        return sec * self.coverage

    def energy(self, start_s: float, end_s: float) -> tuple[float, float]:
        """(J, 1-sigma J) drawn within [start_s, end_s) of one inference."""
        w = self.weights(start_s, end_s)
        return float(w @ self.power_w), self._sigma(w)

    def _sigma(self, w: np.ndarray) -> float:
        """1 sigma of w . p: the statistical part, the smoothing's bias and the response's own
        uncertainty (each group of alternatives: the mean square of its changes), in quadrature."""
        return float(np.sqrt(max(float(w @ self._cov @ w), 0.0) + float(w @ self._bias) ** 2 + self._alt_var(w)))

    def _alt_var(self, w: np.ndarray) -> float:
        return float(sum(np.mean((d @ w) ** 2) for d in self._alt))

    def response_sigma_j(self, start_s: float = 0.0, end_s: float = np.inf) -> float:
        """The part of a span's 1 sigma that is the response's own uncertainty (J)."""
        return float(np.sqrt(self._alt_var(self.weights(start_s, end_s))))

    def span_table(self, spans: list[Span]) -> list[dict]:
        """Energy of each span, then "other" (the rest of the inference), which together sum to
        the energy of one inference by construction. Spans are expected not to overlap (modules
        of one depth, ranges side by side); where they do, the overlap is counted in each."""
        rows = []
        total_w = self.weights(0.0, np.inf)
        rest = total_w.copy()
        for s in spans:
            w = self.weights(s.start_s, s.end_s)
            rest -= w
            rows.append(self._row(s.name, s.start_s, s.end_s, w))
        rows.append(self._row("other", float("nan"), float("nan"), rest))
        return rows

    def _row(self, name: str, a: float, b: float, w: np.ndarray) -> dict:
        e = float(w @ self.power_w)
        u = self._sigma(w)
        share = e / self.energy_j if self.energy_j else float("nan")
        ru = float(np.sqrt(self._alt_var(w)))
        return {
            "name": name,
            "start_ms": a * 1e3,
            "end_ms": b * 1e3,
            "energy_j": e,
            "sigma_j": u,
            "share": share,
            "response_sigma_j": ru,
        }


def phase_bins(starts_s, ends_s, bin_s: float) -> tuple[int, int]:
    """(phase bins, gap bins) for repetitions [start, end). The phase bins reach the
    LONG_QUANTILE of the durations: the rest of a rarer, longer repetition (a stall of the host
    or the device) is folded into the last bin rather than making bins few samples can see."""
    longest = float(np.quantile(np.asarray(ends_s) - np.asarray(starts_s), LONG_QUANTILE))
    n_phase = max(1, int(np.ceil(longest / bin_s - 1e-9)))
    gaps = np.asarray(starts_s)[1:] - np.asarray(ends_s)[:-1]
    longest_gap = float(gaps.max()) if gaps.size else 0.0
    n_gap = 1 + int(np.ceil(min(longest_gap, GAP_DETAIL_S) / bin_s - 1e-9))
    return n_phase, n_gap


def design(response: SensorResponse, stamps_s, starts_s, ends_s, bin_s: float, n_phase: int, n_gap: int):
    """(M, samples used): M[j, c] is the share of sample j's response on time folded into column
    c (phase bins, then gap bins). Only samples whose whole response lies between the first
    repetition's start and the last one's end are used."""
    t = np.asarray(stamps_s, dtype=float)
    a = np.asarray(starts_s, dtype=float)
    b = np.asarray(ends_s, dtype=float)
    lags = response.lags_s
    half = 0.5 * GRID_S
    keep = (t - lags[-1] - half >= a[0]) & (t - lags[0] + half <= b[-1])
    t = t[keep]
    sub = (np.arange(lags.size * SUB_CELLS) + 0.5) * (GRID_S / SUB_CELLS) + response.lag0_s
    sub_w = np.repeat(response.kernel, SUB_CELLS) / SUB_CELLS
    x = t[:, None] - sub[None, :]  # when the power each sub-cell weighs was drawn
    rep = np.clip(np.searchsorted(a, x, side="right") - 1, 0, a.size - 1)
    since = x - a[rep]
    inside = since < (b - a)[rep]
    phase_col = np.minimum((since / bin_s).astype(int), n_phase - 1)
    gap_col = n_phase + np.minimum(((x - b[rep]) / bin_s).astype(int), n_gap - 1)
    col = np.where(inside, phase_col, np.clip(gap_col, n_phase, n_phase + n_gap - 1))
    n_col = n_phase + n_gap
    flat = (np.arange(t.size)[:, None] * n_col + col).ravel()
    m = np.bincount(flat, weights=np.broadcast_to(sub_w, x.shape).ravel(), minlength=t.size * n_col)
    return m.reshape(t.size, n_col), keep


def _second_differences(n: int) -> np.ndarray:
    if n < 3:
        return np.zeros((0, n))
    d = np.zeros((n - 2, n))
    j = np.arange(n - 2)
    d[j, j], d[j, j + 1], d[j, j + 2] = 1.0, -2.0, 1.0
    return d


def penalty(n_phase: int, n_gap: int) -> np.ndarray:
    """D'D for second differences within the phase bins and within the gap bins, never across."""
    dp, dg = _second_differences(n_phase), _second_differences(n_gap)
    d = np.zeros((dp.shape[0] + dg.shape[0], n_phase + n_gap))
    d[: dp.shape[0], :n_phase] = dp
    d[dp.shape[0] :, n_phase:] = dg
    return d.T @ d


def fold(
    response: SensorResponse,
    stamps_s,
    watts,
    starts_s,
    ends_s,
    bin_s: float = BIN_S,
    smoothing: float | None = None,
    scale: float = 1.0,
    alternatives: Sequence[Sequence[SensorResponse]] = (),
) -> Folded:
    """Reconstruct the power within one inference from samples (stamps on the same clock as the
    repetitions' [start, end), s) through the response. `smoothing`: a fixed relative penalty
    weight instead of GCV's choice; `scale`: the counter-over-trace factor (policy.counter_scale);
    `alternatives`: groups of other responses the sensor's could as well be (response_timing's
    shifts; other calibrations of the same GPU), each group adding its mean squared change of
    the curve to the band (Folded.response_sigma_j says how much)."""
    if not bin_s > 0:
        raise ValueError(f"profile: the phase bin must be positive, got {bin_s!r} s")
    a = np.asarray(starts_s, dtype=float)
    b = np.asarray(ends_s, dtype=float)
    if a.size < 2 or a.size != b.size or not np.all(b > a) or np.any(np.diff(a) <= 0) or np.any(a[1:] < b[:-1]):
        raise ValueError(
            "profile: need two or more repetitions, in order, each ending after it starts, none overlapping"
        )
    t = np.asarray(stamps_s, dtype=float)
    s = np.asarray(watts, dtype=float)
    ok = np.isfinite(t) & np.isfinite(s)
    t, s = t[ok], s[ok]
    n_phase, n_gap = phase_bins(a, b, bin_s)
    fit = _solve(response, t, s, a, b, bin_s, n_phase, n_gap, SMOOTHING if smoothing is None else (float(smoothing),))
    lam, inv, p, resid, dof, m, n_used = fit
    noise2 = resid**2 * (n_used / max(n_used - dof, 1.0))
    g = inv @ m.T
    cov = (g * noise2[None, :]) @ g.T
    mtm = m.T @ m
    resolution = inv @ mtm  # row c: how the estimate of bin c averages the true bins
    cover = coverage(a, b, bin_s, n_phase)
    rows = resolution[:n_phase, :n_phase][cover >= MIN_COVERAGE]
    widths = bin_s * rows.sum(axis=1) ** 2 / np.maximum((rows**2).sum(axis=1), 1e-30)
    bias = (resolution @ p - p) * scale
    # the response's own uncertainty: the same samples folded through each alternative, at the
    # same smoothing; a group's mean squared change of the curve is one term of the variance
    groups = []
    for group in alternatives:
        alt = [_solve(r, t, s, a, b, bin_s, n_phase, n_gap, (lam,))[2] for r in group]
        if alt:
            groups.append((np.array(alt) - p[None, :]) * scale)
    p_phase = p[:n_phase] * scale
    cov_phase = cov[:n_phase, :n_phase] * scale**2
    bias_phase = bias[:n_phase]
    alt_phase = [d[:, :n_phase] for d in groups]
    alt_var = sum((np.mean(d**2, axis=0) for d in groups), np.zeros(n_phase + n_gap))
    w = bin_s * cover
    folded = Folded(
        bin_s=bin_s,
        power_w=p_phase,
        sigma_w=np.sqrt(np.maximum(np.diag(cov_phase), 0.0) + bias_phase**2 + alt_var[:n_phase]),
        coverage=cover,
        gap_power_w=p[n_phase:] * scale,
        gap_sigma_w=np.sqrt(
            np.maximum(np.diag(cov)[n_phase:] * scale**2, 0.0) + bias[n_phase:] ** 2 + alt_var[n_phase:]
        ),
        energy_j=float(w @ p_phase),
        energy_sigma_j=0.0,
        duration_s=float(np.mean(b - a)),  # the energy is the mean inference's: so is its duration
        resolution_s=float(np.median(widths)) if widths.size else float("nan"),
        smoothing=lam,
        residual_rms_w=float(np.sqrt(np.mean(resid**2))),
        n_samples=int(n_used),
        n_reps=int(a.size),
        scale=scale,
        _cov=cov_phase,
        _bias=bias_phase,
        _alt=alt_phase,
    )
    folded.energy_sigma_j = folded._sigma(w)
    return folded


def _solve(response, t, s, a, b, bin_s, n_phase, n_gap, lams):
    """The penalised least-squares fit through one response, the penalty weight chosen by GCV
    among `lams`: (weight, (M'M + penalty)^-1, bins' power, residuals, hat trace, M, samples)."""
    m, keep = design(response, t, a, b, bin_s, n_phase, n_gap)
    s = s[keep]
    n_col = n_phase + n_gap
    if s.size < n_col + 3:
        raise ValueError(
            f"profile: {s.size} samples see the repetitions whole, too few for {n_col} bins: "
            "run longer or widen the bins"
        )
    mtm = m.T @ m
    mts = m.T @ s
    pen = penalty(n_phase, n_gap)
    level = float(np.trace(mtm)) / n_col
    mean_s = float(np.mean(s))
    best = None
    for lam in lams:
        inv = np.linalg.inv(mtm + lam * level * pen + RIDGE * level * np.eye(n_col))
        p = inv @ (mts + RIDGE * level * mean_s)
        resid = s - m @ p
        dof = float(np.sum(inv * mtm))  # trace of the hat matrix
        gcv = s.size * float(resid @ resid) / max(s.size - dof, 1.0) ** 2
        if best is None or gcv < best[0]:
            best = (gcv, lam, inv, p, resid, dof)
    assert best is not None
    _, lam, inv, p, resid, dof = best
    return lam, inv, p, resid, dof, m, int(s.size)


def response_timing(response: SensorResponse) -> tuple[list[SensorResponse], str]:
    """The response moved earlier and later by its timing's 1 sigma (SensorResponse.timing_sigma_s,
    else its centroid's 95% interval / 1.96), as fold's alternatives, and a line saying so; none,
    said so, where the calibration did not measure it."""
    sigma = response.timing_sigma_s
    if not sigma > 0 and "centroid_s" in response.ci95:
        lo, hi = response.ci95["centroid_s"]
        sigma = (hi - lo) / 2 / 1.96
    if not sigma > 0:
        return [], "the response's timing uncertainty was not measured (recalibrate): not in the band"
    shifted = [dataclasses.replace(response, lag0_s=response.lag0_s + d) for d in (-sigma, sigma)]
    return shifted, f"the response's timing (1 sigma {sigma * 1e3:.2f} ms)"


def coverage(starts_s, ends_s, bin_s: float, n_phase: int) -> np.ndarray:
    """Per phase bin, the mean share of it that lies within a repetition's own duration; the
    last bin also counts what repetitions longer than all the bins fold into it (design), so
    that bin_s * coverage sums to the mean duration."""
    dur = np.asarray(ends_s) - np.asarray(starts_s)
    lo = np.arange(n_phase) * bin_s
    cover = np.clip((dur[:, None] - lo[None, :]) / bin_s, 0.0, 1.0).mean(axis=0)
    cover[-1] += float(np.mean(np.clip(dur - n_phase * bin_s, 0.0, None))) / bin_s
    return cover


def median_spans(per_rep: list[list[tuple[str, float, float]]]) -> list[Span]:
    """Spans of the named parts, s after each repetition's start, as medians over repetitions.
    A part that runs k times per inference is named "name", "name (2)", ... by call order."""
    acc: dict[str, list[tuple[float, float]]] = {}
    order: list[str] = []
    for rep in per_rep:
        seen: dict[str, int] = {}
        for name, a, b in rep:
            seen[name] = seen.get(name, 0) + 1
            key = name if seen[name] == 1 else f"{name} ({seen[name]})"
            if key not in acc:
                acc[key] = []
                order.append(key)
            acc[key].append((a, b))
    spans = []
    for key in order:
        v = np.array(acc[key])
        spans.append(Span(key, float(np.median(v[:, 0])), float(np.median(v[:, 1]))))
    return sorted(spans, key=lambda s: s.start_s)
