"""Measure a sensor's response from samples taken against a known load schedule.

The input known is the schedule (when each block of load ran, from CUDA events), not the power.
Three models of the true power (`models.MODELS`; `models.DEFAULT_MODEL` the one used unless asked):
- "levels": a base level plus one level per kind of load while it runs. What the GPU itself
  does at a load change is then folded into the response: on the H200, whose power overshoots
  its limit by about 30% of the step for about 100 ms after a rise to it, falls alone give a
  response centred about 16 ms back, the levels' fit 9-11 ms (bench/RESULTS.md): a linear
  response fitted this way places the energy of short bursts at the limit early;
- "transient": the levels plus, after each start of a run of a kind, free power on
  `TRANSIENT_EDGES_S` bins of time since that start, for as long as the run lasts (a run that
  ends first has no more of it: no load, no overshoot), scaled by 1 - exp(-off / recovery), off
  the time since that kind last ran and the recovery chosen among `RECOVERY_S` on held-out runs.
  Only kinds well above the base get one (`TRANSIENT_MIN_STEP`).
- "rise-fall": the transient model plus, after each end of a run of a kind that has a start
  transient, free power on `FALL_EDGES_S` bins of time since that end, until the kind next starts
  (whatever else runs then): the H200 dips below idle after a fall from its limit (to ~101 W
  at ~69 ms against 121 W idle), which the transient model leaves in the response.
  The transients are power the GPU draws (the counter sees it), so the response fitted with them is
  the sensor's alone; levels, transients and response are fitted in turn (`ALTERNATIONS`).
The levels and the transient are the fit's, not the meter's: downstream, a span gets the energy
that the samples, read through the response, place within it.

Candidates (response.py): an averaging window after a delay, a single pole after a delay, and a
free impulse response on 1 ms bins. Each is fitted on the runs marked for fitting and judged by
its residuals on the others; the free response is kept only where it beats the best parametric
one on held-out runs by more than `FREE_SHAPE_MARGIN`, since it has many more parameters.
Intervals are delete-one-chunk jackknife estimates over the fitted data.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from aipm_fast.sensor.models import DEFAULT_MODEL, FALL_MODELS, MODELS, TRANSIENT_MODELS
from aipm_fast.sensor.response import GRID_S, SensorResponse

#: the free response must beat the best parametric one on held-out runs by this share of RMS
FREE_SHAPE_MARGIN = 0.02
#: candidate grids (s)
DELAYS_S = np.arange(-0.010, 0.030 + 1e-9, 0.0005)
WIDTHS_S = np.arange(0.001, 0.040 + 1e-9, 0.001)
TAUS_S = np.array([0.5, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 25, 30]) * 1e-3
FIR_BIN_S = 0.001
FIR_LAGS_S = (-0.010, 0.080)
FIR_SMOOTHING = (0.1, 1.0, 10.0)
JACKKNIFE_CHUNKS = 8
#: bins of time since a run of a kind started on which its transient is free (s): finer at first,
#: where the H200's overshoot rises, out past the ~100 ms it lasts there
TRANSIENT_EDGES_S: tuple[float, ...] = (
    0.0,
    0.005,
    0.010,
    0.015,
    0.020,
    0.030,
    0.040,
    0.050,
    0.060,
    0.070,
    0.080,
    0.090,
    0.100,
    0.120,
    0.150,
    0.200,
)
#: bins of time since a run's end on which the "rise-fall" model's transient after it is free (s):
#: from 20 ms on, past the response's own rise: power free on both edges within the response's
#: width trades with where the response lies (on recorded and synthetic captures alike it moved
#: the response 1 ms early), so the falls keep anchoring it; out past the H200's dip (~69 ms)
FALL_EDGES_S: tuple[float, ...] = TRANSIENT_EDGES_S[4:]
#: candidate recovery times of a transient after its kind stopped (s; 0: every start gets it whole)
RECOVERY_S = (0.0, 0.005, 0.010, 0.020, 0.050, 0.100, 0.200)
#: a kind has a transient where a levels-only fit puts it at least this share of the largest step
#: above the base: a kind near the base (the H200's spin kernel, 125 W against 122 W idle) has no
#: rise to overshoot, and a transient of its own, free, only trades with its level
TRANSIENT_MIN_STEP = 0.25
#: blocks of one kind closer than this are one run (s)
RUN_MERGE_S = 0.001
#: rounds of (levels and transients given the free response, the free response given them)
ALTERNATIONS = 3


@dataclass(frozen=True)
class Block:
    kind: str
    start_s: float
    end_s: float


@dataclass
class Candidate:
    response: SensorResponse
    levels_w: dict[str, float]
    fit_rms_w: float
    heldout_rms_w: float
    transients_w: dict[str, list[float]] = field(default_factory=dict)
    fall_transients_w: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class Calibration:
    """The outcome of a fit: every candidate, the one kept, and what the samples' timing says."""

    chosen: SensorResponse
    candidates: list[Candidate]
    levels_w: dict[str, float]
    n_samples: int
    n_edges: int
    stamp_gaps_ms: dict[str, float] = field(default_factory=dict)
    why: str = ""
    model: str = "levels"
    #: with model "transient" or "rise-fall": per kind, the chosen candidate's power above the
    #: kind's level on each TRANSIENT_EDGES_S bin after a start (W), and the recovery time chosen (s)
    transients_w: dict[str, list[float]] = field(default_factory=dict)
    recovery_s: float = float("nan")
    #: with model "rise-fall": per kind, the power on each FALL_EDGES_S bin after an end (W)
    fall_transients_w: dict[str, list[float]] = field(default_factory=dict)

    def report(self) -> str:
        lines = [f"{'model':<8} {'fit RMS W':>10} {'held-out RMS W':>15}  response"]
        for c in self.candidates:
            mark = "*" if c.response is self.chosen else " "
            lines.append(
                f"{mark}{c.response.kind:<7} {c.fit_rms_w:>10.1f} {c.heldout_rms_w:>15.1f}  {c.response.describe()}"
            )
        lines.append(f"kept: {self.chosen.kind} ({self.why})")
        if self.model in TRANSIENT_MODELS:
            lines.append("levels: " + ", ".join(f"{k} {v:.1f} W" for k, v in self.levels_w.items()))
            for what, tr, e in (
                ("start", self.transients_w, TRANSIENT_EDGES_S),
                ("end", self.fall_transients_w, FALL_EDGES_S),
            ):
                edges = np.asarray(e) * 1e3
                for k, w in tr.items():
                    peak = int(np.argmax(np.abs(w)))
                    energy = float(np.dot(w, np.diff(edges))) * 1e-3
                    lines.append(
                        f"transient after a {k} {what}: {w[peak]:+.0f} W at {edges[peak]:.0f}-{edges[peak + 1]:.0f} ms,"
                        f" {energy:+.2f} J over {edges[-1]:.0f} ms"
                    )
            lines.append(f"recovery of a transient after its kind stopped: {self.recovery_s * 1e3:.0f} ms")
        else:
            lines.append(
                "levels as the fit sees them (the GPU's transients folded in): "
                + ", ".join(f"{k} {v:.1f} W" for k, v in self.levels_w.items())
            )
        g = self.stamp_gaps_ms
        if g:
            lines.append(
                f"sample stamps: gap median {g['median']:.1f} ms, 5-95% {g['p5']:.1f}-{g['p95']:.1f} ms, "
                f"max {g['max']:.1f} ms ({self.n_samples} samples, {self.n_edges} load edges)"
            )
        return "\n".join(lines)


class _Inputs:
    """The schedule on a fine grid: per kind, the share of each GRID_S cell under that load."""

    def __init__(self, blocks: list[Block], t0: float, t1: float):
        self.kinds = sorted({b.kind for b in blocks})
        self.t0 = t0
        n = int(np.ceil((t1 - t0) / GRID_S)) + 1
        self.n = n
        self.cells = {}
        edges = t0 + np.arange(n + 1) * GRID_S
        for k in self.kinds:
            cum = np.zeros(n + 1)
            for b in blocks:
                if b.kind == k:
                    cum += np.clip(edges - b.start_s, 0, b.end_s - b.start_s)
            self.cells[k] = np.diff(cum) / GRID_S
        self.runs = {k: _runs(blocks, k) for k in self.kinds}
        self.transient_kinds: list[str] = []
        #: whether each transient kind also has a transient after its runs' ends
        self.falls = False

    def transients(self, recovery_s: float) -> list[np.ndarray]:
        """The transient bins of every kind in transient_kinds, in that order, then (with falls)
        the bins after the ends, in the same order."""
        out = [x for k in self.transient_kinds for x in self.transient_cells(k, recovery_s)]
        if self.falls:
            out += [x for k in self.transient_kinds for x in self.fall_cells(k)]
        return out

    def transient_cells(self, kind: str, recovery_s: float) -> list[np.ndarray]:
        """Per TRANSIENT_EDGES_S bin, the share of each cell that lies that long after a start of a
        run of `kind` and within the run, weighted by the start's recovery."""
        runs = self.runs[kind]
        a, b = runs[:, 0], runs[:, 1]
        off = np.concatenate(([np.inf], a[1:] - b[:-1]))
        w = np.ones(a.size) if not recovery_s > 0 else -np.expm1(-off / recovery_s)
        e = np.asarray(TRANSIENT_EDGES_S)
        return [_occupancy(self.n, self.t0, a + lo, np.minimum(a + hi, b), w) for lo, hi in zip(e[:-1], e[1:])]

    def fall_cells(self, kind: str) -> list[np.ndarray]:
        """Per FALL_EDGES_S bin, the share of each cell that lies that long after an end of a
        run of `kind` and before that kind next starts."""
        runs = self.runs[kind]
        b = runs[:, 1]
        nxt = np.concatenate((runs[1:, 0], [np.inf]))
        e = np.asarray(FALL_EDGES_S)
        w = np.ones(b.size)
        return [_occupancy(self.n, self.t0, b + lo, np.minimum(b + hi, nxt), w) for lo, hi in zip(e[:-1], e[1:])]

    def filtered(self, signal: np.ndarray, kernel: np.ndarray) -> np.ndarray:
        """y[n] = sum_i k_i signal[n - i]: the response at the end of cell n to lags i cells back."""
        if kernel.size <= 64:
            return np.convolve(signal, kernel)[: self.n]
        size = self.n + kernel.size - 1
        nfft = 1 << (size - 1).bit_length()
        return np.fft.irfft(np.fft.rfft(signal, nfft) * np.fft.rfft(kernel, nfft), nfft)[: self.n]

    def at(self, y: np.ndarray, lag0_s: float, stamps_s: np.ndarray) -> np.ndarray:
        """A filtered signal read at the stamps, the whole response `lag0_s` later."""
        x = (stamps_s - lag0_s - self.t0) / GRID_S - 1.0
        return np.interp(x, np.arange(self.n), y, left=0.0, right=y[-1])

    def seen(self, signal: np.ndarray, kernel: np.ndarray, lag0_s: float, stamps_s: np.ndarray) -> np.ndarray:
        """What a sensor with this response reads at the stamps for a fine-grid signal."""
        return self.at(self.filtered(signal, kernel), lag0_s, stamps_s)


def _runs(blocks: list[Block], kind: str) -> np.ndarray:
    """(runs x 2) start, end of the runs of one kind: its blocks, those closer than RUN_MERGE_S joined."""
    out: list[list[float]] = []
    for blk in sorted((b for b in blocks if b.kind == kind), key=lambda b: b.start_s):
        if out and blk.start_s - out[-1][1] < RUN_MERGE_S:
            out[-1][1] = max(out[-1][1], blk.end_s)
        else:
            out.append([blk.start_s, blk.end_s])
    return np.array(out, dtype=float).reshape(-1, 2)


def _occupancy(n: int, t0: float, a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    """sum over intervals [a, b) (those with b > a) of w times each GRID_S cell's share within it."""
    keep = b > a
    x0 = np.clip((a[keep] - t0) / GRID_S, 0, n)
    x1 = np.clip((b[keep] - t0) / GRID_S, 0, n)
    w = w[keep]
    i0, i1 = np.floor(x0).astype(int), np.floor(x1).astype(int)
    out = np.zeros(n + 2)
    full = np.zeros(n + 2)
    same = i0 == i1
    np.add.at(out, i0[same], w[same] * (x1 - x0)[same])
    d = ~same
    np.add.at(out, i0[d], w[d] * (i0 + 1 - x0)[d])
    np.add.at(out, i1[d], w[d] * (x1 - i1)[d])
    np.add.at(full, i0[d] + 1, w[d])
    np.add.at(full, i1[d], -w[d])
    return (out + np.cumsum(full))[:n]


def _lstsq(features: list[np.ndarray], v: np.ndarray, mask: np.ndarray):
    X = np.column_stack([np.ones(v.size), *features])
    coef, *_ = np.linalg.lstsq(X[mask], v[mask], rcond=None)
    return coef, v - X @ coef


def _rms(r: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean(r[mask] ** 2))) if mask.any() else float("nan")


def _shape_kernel(kind: str, p: float) -> np.ndarray:
    if kind == "window":
        return np.ones(max(1, int(round(p / GRID_S))))
    lag = (np.arange(max(1, int(np.ceil(10 * p / GRID_S)))) + 0.5) * GRID_S
    return np.exp(-lag / p)


def _parametric(kind, shapes, inp, t, v, fit, test, signals, only=None, jackknife=True):
    """Grid search over (shape parameter, delay), best by fit RMS, for the true power modelled
    as a linear combination of `signals` (fine-grid inputs). Returns the best (fit RMS, held-out
    RMS, parameter, delay, coefficients) and a jackknife estimate of the 95% half-widths of
    (parameter, delay), searched in the best one's neighbourhood. `only`: the shape indices to
    try (default all)."""
    best = None
    filtered = {}
    for i, p in enumerate(shapes):
        if only is not None and i not in only:
            continue
        k = _shape_kernel(kind, p)
        filtered[i] = ys = [inp.filtered(x, k / k.sum()) for x in signals]
        for j, d in enumerate(DELAYS_S):
            coef, r = _lstsq([inp.at(y, d, t) for y in ys], v, fit)
            cand = (_rms(r, fit), _rms(r, test), float(p), float(d), coef, i, j)
            if best is None or cand[0] < best[0]:
                best = cand
    assert best is not None
    if not jackknife:
        return best, None
    bi, bj = best[5], best[6]
    near = [
        (i, j, [inp.at(y, DELAYS_S[j], t) for y in filtered[i]])
        for i in range(max(0, bi - 4), min(len(shapes), bi + 5))
        if i in filtered
        for j in range(max(0, bj - 10), min(len(DELAYS_S), bj + 11))
    ]

    def estimate(mask):
        i, j, _ = min(near, key=lambda n: _rms(_lstsq(n[2], v, mask)[1], mask))
        return np.array([shapes[i], DELAYS_S[j]])

    # the search cannot resolve less than one step of its grid around the best point
    grid_step = np.array([np.diff(shapes)[min(bi, len(shapes) - 2)], DELAYS_S[1] - DELAYS_S[0]])
    return best[:5], np.maximum(_jackknife(estimate, fit), grid_step)


def _jackknife(estimate: Callable[[np.ndarray], np.ndarray], fit: np.ndarray) -> np.ndarray:
    """95% half-widths of estimate(mask) by deleting one of JACKKNIFE_CHUNKS time chunks of the
    fitted samples at a time."""
    chunks = np.array_split(np.flatnonzero(fit), JACKKNIFE_CHUNKS)
    loo = []
    for ch in chunks:
        m = fit.copy()
        m[ch] = False
        loo.append(estimate(m))
    loo_a = np.array(loo)
    n = len(chunks)
    return 1.96 * np.sqrt((n - 1) / n * np.sum((loo_a - loo_a.mean(axis=0)) ** 2, axis=0))


def fit_response(
    stamps_s,
    watts,
    blocks: list[Block],
    heldout: np.ndarray | None = None,
    progress: Callable[[str], None] | None = None,
    model: str = DEFAULT_MODEL,
) -> Calibration:
    """Fit every candidate to samples (stamps on the blocks' clock, s; watts) and keep one.

    heldout: bool per sample, True for samples of runs not used for the fit (default: every
    other 5 s chunk of the schedule). model: the true power's model, one of MODELS."""
    if model not in MODELS:
        raise ValueError(f"unknown sensor fit model {model!r} (want one of {', '.join(MODELS)})")
    say = progress or (lambda _msg: None)
    t = np.asarray(stamps_s, dtype=float)
    v = np.asarray(watts, dtype=float)
    ok = np.isfinite(t) & np.isfinite(v)
    t, v = t[ok], v[ok]
    if not blocks:
        raise ValueError("a sensor fit needs a schedule with at least one block of load")
    first, last = min(b.start_s for b in blocks), max(b.end_s for b in blocks)
    inside = (t > first - 0.2) & (t < last + 0.2)
    if heldout is None:
        test = inside & (np.floor((t - first) / 5.0).astype(int) % 2 == 1)
    else:
        test = inside & np.asarray(heldout, dtype=bool)[ok]
    fit = inside & ~test
    if fit.sum() < 50 or test.sum() < 20:
        raise ValueError(
            f"too few samples to fit a sensor response ({int(fit.sum())} to fit, {int(test.sum())} held out;"
            " want at least 50 and 20): run the schedule longer"
        )
    inp = _Inputs(blocks, min(first, t.min()) - 0.1, max(last, t.max()) + 0.1)
    signals = [inp.cells[k] for k in inp.kinds]
    recovery = float("nan")
    if model in TRANSIENT_MODELS:
        say("choosing which kinds rise and how a transient recovers")
        inp.transient_kinds = _rising_kinds(inp, t, v, fit, test)
        inp.falls = model in FALL_MODELS
        recovery = _recovery(inp, t, v, fit, test)
        signals += inp.transients(recovery)
    say("fitting an averaging window after a delay")
    (wf, wt, ww, wd, wcoef, *_), wci = _parametric("window", WIDTHS_S, inp, t, v, fit, test, signals)
    say("fitting a single pole after a delay")
    (pf, pt, pp, pd, pcoef, *_), pci = _parametric("pole", TAUS_S, inp, t, v, fit, test, signals)
    say("estimating a free impulse response")
    fir, fir_f, fir_t, fir_coef = _free_response(inp, t, v, fit, test, wcoef if wt <= pt else pcoef, signals)
    if model in TRANSIENT_MODELS:
        for _ in range(ALTERNATIONS):  # the transients under the free response, then it under them
            coef = _coefficients(inp, t, v, fit, signals, fir)
            fir, fir_f, fir_t, fir_coef = _free_response(inp, t, v, fit, test, coef, signals)
    window = SensorResponse.window(
        ww, wd, ci95={"delay_s": (wd - wci[1], wd + wci[1]), "width_s": (ww - wci[0], ww + wci[0])}, noise_w=wt
    )
    pole = SensorResponse.pole(
        pp, pd, ci95={"delay_s": (pd - pci[1], pd + pci[1]), "tau_s": (pp - pci[0], pp + pci[0])}, noise_w=pt
    )
    fir = dataclasses.replace(fir, noise_w=fir_t)
    cands = [
        Candidate(window, _levels(inp, wcoef), wf, wt, *_transients(inp, wcoef)),
        Candidate(pole, _levels(inp, pcoef), pf, pt, *_transients(inp, pcoef)),
        Candidate(fir, _levels(inp, fir_coef), fir_f, fir_t, *_transients(inp, fir_coef)),
    ]
    # where the response lies in time is known to the parametric fits' delay intervals
    timing = float(np.mean([wci[1], pci[1]]) / 1.96)
    for c in cands:
        lv = [x for k, x in c.levels_w.items() if k != "base"]
        step = max(abs(x - c.levels_w["base"]) for x in lv) if lv else float("nan")
        edge = c.heldout_rms_w * c.response.width_s / step if step > 0 else 0.0
        c.response = dataclasses.replace(c.response, timing_sigma_s=timing, edge_error_j_per_w=float(edge))
    param = min(cands[:2], key=lambda c: c.heldout_rms_w)
    if fir_t < param.heldout_rms_w * (1 - FREE_SHAPE_MARGIN):
        chosen, why = (
            cands[2],
            f"the free response beats the {param.response.kind} on held-out runs by more than {FREE_SHAPE_MARGIN:.0%}",
        )
    else:
        chosen, why = (
            param,
            "lowest held-out RMS of the parametric shapes; the free response does not beat it"
            f" by {FREE_SHAPE_MARGIN:.0%}",
        )
    gaps = np.diff(np.sort(t[inside])) * 1e3
    n_edges = 2 * len(blocks)
    return Calibration(
        chosen=chosen.response,
        candidates=cands,
        levels_w=chosen.levels_w,
        n_samples=int(inside.sum()),
        n_edges=n_edges,
        stamp_gaps_ms={
            "median": float(np.median(gaps)),
            "p5": float(np.percentile(gaps, 5)),
            "p95": float(np.percentile(gaps, 95)),
            "max": float(gaps.max()),
        },
        why=why,
        model=model,
        transients_w=chosen.transients_w,
        recovery_s=recovery,
        fall_transients_w=chosen.fall_transients_w,
    )


def _rising_kinds(inp: _Inputs, t, v, fit, test) -> list[str]:
    """The kinds a levels-only single pole puts at least TRANSIENT_MIN_STEP of the largest step
    above the base."""
    (*_, coef, _i, _j), _ = _parametric(
        "pole", TAUS_S, inp, t, v, fit, test, [inp.cells[k] for k in inp.kinds], jackknife=False
    )
    steps = np.asarray(coef[1:], dtype=float)
    top = float(steps.max()) if steps.size else 0.0
    return [k for k, x in zip(inp.kinds, steps) if top > 0 and x >= TRANSIENT_MIN_STEP * top]


def _recovery(inp: _Inputs, t, v, fit, test) -> float:
    """The RECOVERY_S candidate with the lowest held-out RMS, each judged through the single pole
    that fits best with whole transients at every start (one search, not one per candidate)."""
    whole = [inp.cells[k] for k in inp.kinds] + inp.transients(0.0)
    (_, _, tau, delay, *_), _ = _parametric("pole", TAUS_S, inp, t, v, fit, test, whole, jackknife=False)
    kernel = _shape_kernel("pole", tau)
    kernel = kernel / kernel.sum()
    best = None
    for rec in RECOVERY_S:
        signals = [inp.cells[k] for k in inp.kinds] + inp.transients(rec)
        _, r = _lstsq([inp.seen(x, kernel, delay, t) for x in signals], v, fit)
        cand = (_rms(r, test), float(rec))
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    return best[1]


def _coefficients(inp: _Inputs, t, v, fit, signals, response: SensorResponse) -> np.ndarray:
    """Base, levels and transients by least squares, the samples read through `response`."""
    coef, _ = _lstsq([inp.seen(x, response.kernel, response.lag0_s, t) for x in signals], v, fit)
    return coef


def _transients(inp: _Inputs, coef: np.ndarray) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Per kind with one, the fitted transient on each TRANSIENT_EDGES_S bin (W): after a start,
    and after an end (empty without falls)."""
    k, j, jf = len(inp.kinds), len(TRANSIENT_EDGES_S) - 1, len(FALL_EDGES_S) - 1
    n = len(inp.transient_kinds)
    tr = np.asarray(coef[1 + k : 1 + k + n * j], dtype=float).reshape(-1, j)
    fa = np.asarray(coef[1 + k + n * j :], dtype=float).reshape(-1, jf)
    starts = {kind: [float(x) for x in tr[i]] for i, kind in enumerate(inp.transient_kinds)}
    ends = {kind: [float(x) for x in fa[i]] for i, kind in enumerate(inp.transient_kinds)} if inp.falls else {}
    return starts, ends


def _levels(inp: _Inputs, coef: np.ndarray) -> dict[str, float]:
    """Base and per-kind power (W) as the fit sees them."""
    out = {"base": float(coef[0])}
    for i, k in enumerate(inp.kinds):
        out[k] = float(coef[0] + coef[1 + i])
    return out


def _free_response(inp, t, v, fit, test, coef, signals):
    """Impulse response on FIR_BIN_S bins from many edges: the fine-grid signals (the kinds' cells,
    then any transients') weighted by the coefficients of a fit through another response are
    the input, the bins' weights the unknowns, with a penalty on their second difference
    (strength chosen on held-out runs)."""
    signal = sum(c * x for c, x in zip(coef[1:], signals))
    per_bin = int(round(FIR_BIN_S / GRID_S))
    lo, hi = FIR_LAGS_S
    n_bins = int(round((hi - lo) / FIR_BIN_S))
    box = np.ones(per_bin) / per_bin
    boxed = inp.filtered(signal, box)
    feats = [inp.at(boxed, lo + j * FIR_BIN_S, t) for j in range(n_bins)]
    X = np.column_stack([np.ones(t.size), *feats])
    D = np.zeros((n_bins - 2, n_bins + 1))
    for j in range(n_bins - 2):
        D[j, 1 + j : 4 + j] = (1.0, -2.0, 1.0)
    scale = float(np.mean(X[fit] ** 2))

    def solve(mask, lam):
        A = X[mask].T @ X[mask] + lam * scale * mask.sum() * 1e-3 * (D.T @ D)
        return np.linalg.solve(A, X[mask].T @ v[mask])

    best = None
    for lam in FIR_SMOOTHING:
        c = solve(fit, lam)
        r = v - X @ c
        cand = (_rms(r, test), _rms(r, fit), c, lam)
        if best is None or cand[0] < best[0]:
            best = cand
    assert best is not None
    heldout, fitted, c, lam = best
    kernel = np.repeat(c[1:], per_bin) / per_bin
    gain = kernel.sum() * per_bin / per_bin
    levels = np.concatenate(([c[0]], coef[1:] * gain))
    resp = SensorResponse.from_kernel("fir", kernel, lo)

    def centroid(mask):
        k = np.repeat(solve(mask, lam)[1:], per_bin)
        return np.array([SensorResponse.from_kernel("fir", k, lo).centroid_s])

    half = float(_jackknife(centroid, fit)[0])
    c0 = resp.centroid_s
    resp = dataclasses.replace(resp, params={"centroid_s": c0}, ci95={"centroid_s": (c0 - half, c0 + half)})
    return resp, fitted, heldout, levels
