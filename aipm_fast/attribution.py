"""Where in time a calibrated power trace's energy belongs: the energy of marked spans
(inferences, steps) reconstructed through the sensor's fitted response.

A 50 Hz sample is a weighted mean of the power over the previous tens of milliseconds
(sensor/response.py). Integrating samples as if each held the power at its stamp credits the
work after a load change with energy of the work before it. Here the power is reconstructed
instead: the marks' boundaries (CUDA-event times) cut time into pieces of at most one sample
period, each with an unknown mean power; every sample is the response-weighted sum of the pieces
it sees; the pieces are solved for by least squares, tied to their neighbours within one mark
(power is assumed to change slowly inside a span of work) and only weakly across a mark's
boundary (where load changes are expected). A mark's energy is the sum of its pieces'.

Convention, and what it assumes: the energy a mark gets is the energy drawn within its span as
the fitted model reconstructs it. The model is linear and time-invariant: what the GPU itself draws
after a load change (the H200's overshoot after a rise to its limit, a dip after a fall) is power
like any other, attributed where the samples, seen through the response, put it; the response is
the sensor's alone where the calibration modelled that transient (sensor/fit.py's "transient"
model), and has it folded in where it did not ("levels").

Uncertainty (1 sigma, as everywhere, policy.UNCERTAINTY): the covariance of the mark's energy
(a linear function of the samples) with the local residual scatter of the reconstruction as the
samples' noise, which is large where few samples see a span on its own (a short op between
different neighbours); plus, at each of the mark's edges, the power step there times the
response's timing sigma and times what the model misplaces per W of step at a load change
(SensorResponse.edge_error_j_per_w: what the calibration's model of the power left unexplained
at its edges); plus what the samples cannot resolve: the seconds of power the estimate
borrows from neighbouring pieces times half the spread of the samples around the mark.
"""

from __future__ import annotations

import numpy as np

from aipm_fast.sensor.response import SensorResponse

#: weight of a neighbour difference inside one mark, and across a mark boundary (in samples)
TIE_INSIDE = 100.0
TIE_ACROSS = 1e-4
#: samples on each side over which the residual scatter is taken as a sample's noise
LOCAL_SAMPLES = 5
#: a tiny pull of every piece toward the mean power, so that no piece is left undetermined
RIDGE = 1e-6
#: marks shorter than this share of a sample period do not cut the pieces: the samples cannot
#: tell their power from their neighbours', and a 1 ms inference loop would otherwise make
#: thousands of pieces a second; they get the reconstructed power over their span
MIN_CUT_SHARE = 0.25
#: marks are solved in groups spanning at most this long (s), each with its context around it:
#: the work grows with the cube of a group's pieces, and half a second holds the coordinator's
#: lock for a few milliseconds at most
GROUP_S = 0.5


def pieces(starts_s, ends_s, lo_s: float, hi_s: float, step_s: float):
    """Cut [lo, hi] at the boundaries of marks of at least MIN_CUT_SHARE of step_s, then into
    pieces of at most step_s. Returns piece starts, ends, the (marks x pieces) seconds of each
    mark in each piece, and per piece the mark it lies in (-1: none, or a short one)."""
    a, b = np.asarray(starts_s, dtype=float), np.asarray(ends_s, dtype=float)
    cutting = (b - a) >= MIN_CUT_SHARE * step_s
    cuts = np.unique(np.concatenate([[lo_s, hi_s], np.clip(a[cutting], lo_s, hi_s), np.clip(b[cutting], lo_s, hi_s)]))
    pa: list[float] = []
    pb: list[float] = []
    for x, y in zip(cuts[:-1], cuts[1:]):
        n = max(1, int(np.ceil((y - x) / step_s - 1e-9)))
        edges = np.linspace(x, y, n + 1)
        pa.extend(edges[:-1])
        pb.extend(edges[1:])
    pa_a, pb_a = np.array(pa), np.array(pb)
    seconds = np.clip(np.minimum(b[:, None], pb_a[None, :]) - np.maximum(a[:, None], pa_a[None, :]), 0.0, None)
    mid = 0.5 * (pa_a + pb_a)
    inside = cutting[:, None] & (mid[None, :] >= a[:, None]) & (mid[None, :] < b[:, None])
    owner = np.where(inside.any(axis=0), inside.argmax(axis=0), -1)
    return pa_a, pb_a, seconds, owner


def attribute(
    response: SensorResponse,
    stamps_s,
    watts,
    starts_s,
    ends_s,
    sample_period_s: float,
    timing_sigma_s: float | None = None,
    context: tuple | None = None,
):
    """(energy J, 1-sigma uncertainty J) of each mark [start, end) (s, on the samples' clock),
    reconstructed from the samples through the response. NaN for a mark the samples do not
    cover (no sample sees power past its end). Marks are solved in time groups of GROUP_S.

    context: (starts, ends) of other marks known around these (resolved before, or waiting):
    their boundaries cut the pieces too, as they would were they solved together, but their
    energies are not returned. Without it, marks just outside the batch are seen as unmarked
    time, and the batch's first and last marks suffer for it."""
    a = np.asarray(starts_s, dtype=float)
    b = np.asarray(ends_s, dtype=float)
    e = np.full(a.size, np.nan)
    u = np.full(a.size, np.nan)
    if a.size == 0:
        return e, u
    t = np.asarray(stamps_s, dtype=float)
    s = np.asarray(watts, dtype=float)
    ok = np.isfinite(t) & np.isfinite(s)
    t, s = t[ok], s[ok]
    timing = response.timing_sigma_s if timing_sigma_s is None else timing_sigma_s
    ctx_a, ctx_b = (np.empty(0), np.empty(0)) if context is None else (np.asarray(x, dtype=float) for x in context)
    # each group sees the other groups' marks as context too
    ctx = (np.concatenate([ctx_a, a]), np.concatenate([ctx_b, b]))
    order = np.argsort(a, kind="stable")
    group_start = a[order[0]]
    members: list[int] = []
    for i in order:
        if members and (a[i] - group_start > GROUP_S):
            _solve(response, t, s, a, b, np.array(members), ctx, sample_period_s, timing, e, u)
            members, group_start = [], a[i]
        members.append(int(i))
    _solve(response, t, s, a, b, np.array(members), ctx, sample_period_s, timing, e, u)
    return e, u


def _solve(response, t, s, a_all, b_all, idx, ctx, period, timing, e_out, u_out) -> None:
    a, b = a_all[idx], b_all[idx]
    lag_lo, lag_hi = float(response.lags_s[0]), float(response.lags_s[-1])
    pad = (lag_hi - lag_lo) + 2 * period
    lo, hi = float(a.min()) - pad, float(b.max()) + pad
    use = (t - lag_hi >= lo) & (t - lag_lo <= hi)  # samples whose whole response lies on the pieces
    if use.sum() < 3:
        return
    t, s = t[use], s[use]
    near = (ctx[1] > lo) & (ctx[0] < hi)
    pa, pb, seconds, owner = pieces(
        np.concatenate([a, ctx[0][near]]), np.concatenate([b, ctx[1][near]]), lo, hi, period
    )
    seconds = seconds[: a.size]
    m = response.overlap(t, pa, pb)
    k = pa.size
    # ties between neighbouring pieces: strong inside a mark, weak across its boundary
    w = np.where((owner[1:] == owner[:-1]) & (owner[1:] >= 0), TIE_INSIDE, TIE_ACROSS)
    d = np.zeros((k - 1, k))
    j = np.arange(k - 1)
    d[j, j], d[j, j + 1] = -1.0, 1.0
    mtm = m.T @ m
    inv = np.linalg.inv(mtm + d.T @ (w[:, None] * d) + RIDGE * np.eye(k))
    p = inv @ (m.T @ s + RIDGE * float(np.mean(s)))
    resid = s - m @ p
    # the samples' noise, locally: the residual scatter of the fit around each sample (power at
    # a GPU's limit scatters far more than idle), per degree of freedom the fit leaves
    dof_share = max(t.size - float(np.sum(inv * mtm)), 1.0) / t.size
    noise2 = _local_mean(resid**2, LOCAL_SAMPLES) / dof_share
    e = seconds @ p
    # sandwich: a mark's energy is a linear function g . s of the samples
    g = seconds @ inv @ m.T
    var = (g**2) @ noise2
    # at each of the mark's edges, energy moves by the power step there times the response's
    # timing sigma, plus what the model misplaces at a load change of that size
    step = np.concatenate(([0.0], np.abs(np.diff(p))))
    at_a = step[np.searchsorted(pa, a, side="right") - 1]
    at_b = step[np.searchsorted(pa, b, side="right") - 1]
    edge = np.hypot(timing, response.edge_error_j_per_w) * np.hypot(at_a, at_b)
    # what the samples cannot resolve: the share of a mark's estimate borrowed from other
    # pieces (model resolution, inv @ M'M, against the mark's own seconds) times the spread of
    # the power the samples around it show; near 0 for a steady span, near all of it for ops
    # that alternate faster than the samples come
    borrowed = np.abs(seconds @ (inv @ mtm) - seconds).sum(axis=1)
    lo_i = np.searchsorted(t, a + lag_lo - period)
    hi_i = np.searchsorted(t, b + lag_hi + period, side="right")
    spread = np.array([np.ptp(s[i:j]) if j > i else 0.0 for i, j in zip(lo_i, hi_i)])
    blur = 0.5 * borrowed * spread
    uu = np.sqrt(np.maximum(var, 0.0) + edge**2 + blur**2)
    covered = b <= float(t.max() - lag_lo)
    e_out[idx] = np.where(covered, e, np.nan)
    u_out[idx] = np.where(covered, uu, np.nan)


def _local_mean(x: np.ndarray, half: int) -> np.ndarray:
    """Mean of x over the 2 * half + 1 values around each one (fewer at the ends)."""
    c = np.concatenate(([0.0], np.cumsum(x)))
    i = np.arange(x.size)
    lo, hi = np.maximum(i - half, 0), np.minimum(i + half + 1, x.size)
    return (c[hi] - c[lo]) / (hi - lo)
