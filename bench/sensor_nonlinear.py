"""Offline, on any machine: what the H200's power sensor does that a linear response fitted to the
load's levels cannot say, measured from the recorded captures (no GPU needed).

    python bench/sensor_nonlinear.py bench/results/cpu/sensor_nonlinear

- the gain against level: the energy counter over the samples' trapezoid, on steady levels and
  on trains of bursts (a sensor whose gain moved with the level would read short bursts off);
- the edges: each load change with settled levels on both sides, the samples around it put on
  one axis (time since the CUDA-event edge), as the share of the step they show: per kind of
  edge the centroid of the response that step implies (where its energy lies), its 10-90% width
  and the overshoot above the settled level;
- a response fitted on falls alone (no transient of the GPU's after them), written as a
  calibration file that `bench/profile_refold.py --calibration-file` reads;
- the calibration fit with each of its models (sensor/fit.py: "levels", "transient",
  "rise-fall") on every calibration capture: held-out RMS, the centroid kept, and a calibration
  file per capture and model.

    python bench/sensor_nonlinear.py bench/results/cpu/sensor_nonlinear --models-only rise-fall

fits only the named models (report_models.txt, sensor_nonlinear_models.json).

Writes OUTDIR/report.txt (what it prints), OUTDIR/sensor_nonlinear.json (every figure),
OUTDIR/falls_only.json, OUTDIR/<capture>_<model>.json (calibration files).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from aipm_fast.sensor import capture as cap  # noqa: E402
from aipm_fast.sensor import store  # noqa: E402
from aipm_fast.sensor.fit import FIR_LAGS_S, FIR_SMOOTHING, JACKKNIFE_CHUNKS, fit_response  # noqa: E402
from aipm_fast.sensor.models import MODELS, TRANSIENT_MODELS  # noqa: E402
from aipm_fast.sensor.response import GRID_S, SensorResponse  # noqa: E402
from bench.sensor_analysis import counter_between, trapezoid  # noqa: E402

H200 = ROOT / "bench" / "results" / "h200"
#: the project's own captures (CLOCK_MONOTONIC, one driver, 2026-12-01/02), by a short name
CAPTURES = {
    "cal1": H200 / "sensor" / "cal1_capture.json",
    "cal2": H200 / "sensor" / "cal2_capture.json",
    "cal3": H200 / "sensor" / "meter" / "cal3_capture.json",
    "short": H200 / "short_calibration" / "cal_short_capture.json",
    "mixed": H200 / "sensor" / "mixed.json",
    "meter_mixed": H200 / "sensor" / "meter" / "meter_mixed.capture.json",
}
#: the pynvml capture (CLOCK_REALTIME on both sides): its edges are reported, not pooled, since
#: its stamps' offset from the events may differ from the project's captures'
SHARED = ROOT.parent / "shared" / "data" / "h200-sensor-capture.json"
#: calibration captures (with held-out runs) the fit's models are compared on
CALIBRATIONS = ("cal1", "cal2", "cal3", "short")

#: an edge is used where the state before it lasted PRE_S and the one after POST_S
PRE_S, POST_S = 0.15, 0.20
#: the settled level after an edge: samples from SETTLED_S after it (past the H200's ~110 ms
#: overshoot) to at most LEVEL_SPAN_S; before it, the last LEVEL_BEFORE_S up to 5 ms before the
#: edge, none within SETTLED_S of the state's start (the level at the limit drifts down after
#: its overshoot: a longer span puts the fall's start early)
SETTLED_S, LEVEL_SPAN_S, LEVEL_BEFORE_S = 0.13, 0.40, 0.10
#: the step response's axis (s after the edge) and bin
AXIS_S, STEP_BIN_S = (-0.050, 0.150), 0.002
#: a fall used to fit the falls-only response: the load before it ran this long (the rise's
#: transient long gone)
FALL_PRE_S = 0.25
#: the samples of a fall that the falls-only fit uses (s after the edge)
FALL_WINDOW_S = (-0.020, 0.090)
#: a step smaller than this is not an edge (W): the spin kernel against idle
MIN_STEP_W = 100.0


# -- the schedule as states --------------------------------------------------------------------
def states(c: cap.Capture) -> list[tuple[str, float, float]]:
    """The schedule as consecutive states (kind, start, end), idle between blocks, one kind's
    back-to-back blocks joined."""
    t = c.samples[:, 0]
    out: list[list] = []
    cur = float(t.min())
    for b in sorted(c.blocks, key=lambda b: b.start_s):
        if b.start_s > cur + 1e-4:
            out.append(["idle", cur, b.start_s])
        if out and out[-1][0] == b.kind and b.start_s - out[-1][2] < 1e-3:
            out[-1][2] = b.end_s
        else:
            out.append([b.kind, b.start_s, b.end_s])
        cur = b.end_s
    out.append(["idle", cur, float(t.max())])
    return [(k, a, b) for k, a, b in out]


def edges(c: cap.Capture, pre_s: float = PRE_S, post_s: float = POST_S) -> list[dict]:
    """Every change of state with settled levels on both sides: its kinds, time, levels (W) and
    the samples around it (s after the edge, W)."""
    t, v = c.samples[:, 0], c.samples[:, 1]
    out = []
    seq = states(c)
    for before, after in zip(seq[:-1], seq[1:]):
        e = after[1]
        if before[2] - before[1] < pre_s or after[2] - after[1] < post_s:
            continue
        m0 = (t > max(before[1] + SETTLED_S, e - LEVEL_BEFORE_S)) & (t < e - 0.005)
        m1 = (t > e + SETTLED_S) & (t < min(after[2], e + LEVEL_SPAN_S))
        if m0.sum() < 2 or m1.sum() < 2:
            continue
        lo, hi = float(np.median(v[m0])), float(np.median(v[m1]))
        if abs(hi - lo) < MIN_STEP_W:
            continue
        w = (t > e + AXIS_S[0]) & (t < e + min(AXIS_S[1], after[2] - after[1]))
        out.append(
            {
                "from": before[0],
                "to": after[0],
                "at_s": e,
                "level_before_w": lo,
                "level_after_w": hi,
                "pre_s": before[2] - before[1],
                "tau_s": t[w] - e,
                "watts": v[w],
            }
        )
    return out


def step_response(group: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """(bin centres, mean share of the step) over the edges, equivalent-time."""
    tau = np.concatenate([g["tau_s"] for g in group])
    y = np.concatenate([(g["watts"] - g["level_before_w"]) / (g["level_after_w"] - g["level_before_w"]) for g in group])
    bins = np.arange(AXIS_S[0], AXIS_S[1] + 1e-9, STEP_BIN_S)
    idx = np.digitize(tau, bins) - 1
    s = np.array([y[idx == i].mean() if (idx == i).sum() >= 2 else np.nan for i in range(bins.size - 1)])
    mid = bins[:-1] + STEP_BIN_S / 2
    ok = np.isfinite(s)
    return mid, np.interp(mid, mid[ok], s[ok]) if ok.sum() > 2 else s


def edge_figures(group: list[dict]) -> dict:
    """Centroid of the response the step implies (the step read as a linear response's: S = its
    cumulative weight, so the centroid is the axis' start plus the area above S; and with S
    capped at 1), its 10-90% width, the largest excursion beyond the settled level (share of
    the step, the W it reaches, when)."""
    mid, s = step_response(group)
    centroid = AXIS_S[0] + float(np.sum(1.0 - s) * STEP_BIN_S)
    # the same with the share capped at the settled level: an excursion beyond it (the overshoot
    # after a rise to the limit, the dip below idle after a fall from it) taken as the GPU's power
    capped = AXIS_S[0] + float(np.sum(1.0 - np.minimum(s, 1.0)) * STEP_BIN_S)
    t10, t90 = _crossing(mid, s, 0.1), _crossing(mid, s, 0.9)
    peak = int(np.argmax(s))
    lo = float(np.median([g["level_before_w"] for g in group]))
    hi = float(np.median([g["level_after_w"] for g in group]))
    return {
        "edges": len(group),
        "centroid_ms": 1e3 * centroid,
        "capped_centroid_ms": 1e3 * capped,
        "t10_ms": 1e3 * t10,
        "t90_ms": 1e3 * t90,
        "width_10_90_ms": 1e3 * (t90 - t10),
        "overshoot": float(s[peak] - 1.0),
        "overshoot_at_ms": 1e3 * float(mid[peak]),
        "peak_w": lo + float(s[peak]) * (hi - lo),
        "level_before_w": lo,
        "level_after_w": hi,
        "share_of_step": [round(float(x), 4) for x in s],
    }


def _crossing(mid: np.ndarray, s: np.ndarray, level: float) -> float:
    i = int(np.argmax(s >= level))
    if i == 0:
        return float(mid[0])
    return float(mid[i - 1] + (level - s[i - 1]) / (s[i] - s[i - 1]) * (mid[i] - mid[i - 1]))


def jackknife(group: list[dict], key: str, chunks: int = JACKKNIFE_CHUNKS) -> float:
    """1 sigma of one edge figure by deleting one of `chunks` interleaved groups of edges at a time."""
    if len(group) < chunks:
        return float("nan")
    est = [edge_figures([g for i, g in enumerate(group) if i % chunks != k])[key] for k in range(chunks)]
    return float(np.sqrt((chunks - 1) / chunks * np.sum((np.array(est) - np.mean(est)) ** 2)))


def edge_class(e: dict) -> str:
    rise = e["level_after_w"] > e["level_before_w"]
    if "hot" in (e["from"], e["to"]):
        return "rise to the limit (matmuls)" if rise else "fall from the limit (matmuls)"
    if "copy" in (e["from"], e["to"]):
        return "rise to an HBM copy" if rise else "fall from an HBM copy"
    return "other rise" if rise else "other fall"


# -- the gain against level ---------------------------------------------------------------------
def gains(name: str, c: cap.Capture) -> list[dict]:
    """Counter over samples' trapezoid, per constant-level span (a block or idle gap of 0.6 s or
    more, 0.2 s in from each end) and per run of bursts (a square-wave or mixed run)."""
    out = []
    t, v = c.samples[:, 0], c.samples[:, 1]
    spans = [(k, a + 0.2, b - 0.05) for k, a, b in states(c) if b - a >= 0.6]
    spans += [(n, a, b) for n, a, b in c.runs if not n.startswith("steady") and n != "steps"]
    for label, a, b in spans:
        try:
            e, ta, tb = counter_between(c.counter, a, b)
        except IndexError:
            continue
        if tb - ta < 0.3:
            continue
        sample_j = trapezoid(t, v, ta, tb)
        steady = label in ("idle", "hot", "cool", "copy")
        out.append(
            {
                "capture": name,
                "span": label,
                "constant": steady,
                "seconds": tb - ta,
                "mean_w": e / (tb - ta),
                "counter_over_samples": e / sample_j,
            }
        )
    return out


# -- a response fitted on falls alone ------------------------------------------------------------
def falls_only(falls: list[dict]) -> tuple[SensorResponse, dict]:
    """Impulse response on 1 ms bins from falls alone: the share of the step a sample shows at
    tau after the edge is the response's cumulative weight at lag tau (power after the edge is
    the low level), linear in the bins' weights; a second-difference penalty (strength chosen on
    every other edge held out), the weights summing to one. Centroid interval: a delete-one-group
    jackknife over the edges."""
    lo, hi = FIR_LAGS_S
    n = int(round((hi - lo) / 0.001))
    starts = lo + np.arange(n) * 0.001
    rows, ys, which = [], [], []
    for i, f in enumerate(falls):
        keep = (f["tau_s"] >= FALL_WINDOW_S[0]) & (f["tau_s"] < FALL_WINDOW_S[1])
        tau = f["tau_s"][keep]
        rows.append(np.clip((tau[:, None] - starts[None, :]) / 0.001, 0.0, 1.0))
        ys.append((f["level_before_w"] - f["watts"][keep]) / (f["level_before_w"] - f["level_after_w"]))
        which.append(np.full(tau.size, i))
    X, y, edge = np.vstack(rows), np.concatenate(ys), np.concatenate(which)
    d = np.diff(np.eye(n), 2, axis=0)
    scale = float(np.mean(X**2)) * X.shape[0]

    def solve(mask, lam):
        # least squares with the penalty and the unit-area row (weighted heavily)
        a = np.vstack([X[mask], np.sqrt(lam * scale * 1e-3) * d, 1e3 * np.ones((1, n))])
        b = np.concatenate([y[mask], np.zeros(d.shape[0]), [1e3]])
        return np.linalg.lstsq(a, b, rcond=None)[0]

    held = edge % 2 == 1
    best = None
    for lam in FIR_SMOOTHING:
        h = solve(~held, lam)
        rms = float(np.sqrt(np.mean((y[held] - X[held] @ h) ** 2)))
        if best is None or rms < best[0]:
            best = (rms, lam)
    assert best is not None
    heldout_share, lam = best
    h = solve(np.ones(y.size, bool), lam)

    def centroid(w):
        return float(np.dot(w, starts + 0.0005) / w.sum())

    loo = [centroid(solve(edge % JACKKNIFE_CHUNKS != k, lam)) for k in range(JACKKNIFE_CHUNKS)]
    sigma = float(np.sqrt((JACKKNIFE_CHUNKS - 1) / JACKKNIFE_CHUNKS * np.sum((np.array(loo) - np.mean(loo)) ** 2)))
    step_w = float(np.median([f["level_before_w"] - f["level_after_w"] for f in falls]))
    kernel = np.repeat(h, int(round(0.001 / GRID_S)))
    c0 = centroid(h)
    resp = SensorResponse.from_kernel(
        "fir",
        kernel,
        lo,
        params={"centroid_s": c0},
        ci95={"centroid_s": (c0 - 1.96 * sigma, c0 + 1.96 * sigma)},
        noise_w=heldout_share * step_w,
        timing_sigma_s=sigma,
    )
    info = {
        "fit": "falls only (bench/sensor_nonlinear.py)",
        "falls": len(falls),
        "smoothing": lam,
        "heldout_rms_share_of_step": heldout_share,
        "median_step_w": step_w,
    }
    return resp, info


# -- the calibration fit's models --------------------------------------------------------------
def compare_models(out: Path, loaded: dict, models=MODELS, captures=CALIBRATIONS) -> dict:
    res: dict = {}
    for name in captures:
        c = loaded[name]
        res[name] = {}
        for model in models:
            f = fit_response(c.samples[:, 0], c.samples[:, 1], c.blocks, heldout=c.heldout(), model=model)
            path = out / f"{name}_{model}.json"
            info = {
                "measured": c.info.get("date", ""),
                "model": model,
                "candidates": {
                    x.response.kind: {"fit_rms_w": x.fit_rms_w, "heldout_rms_w": x.heldout_rms_w} for x in f.candidates
                },
                "levels_w": f.levels_w,
                "transients_w": f.transients_w,
                **({"fall_transients_w": f.fall_transients_w} if f.fall_transients_w else {}),
            }
            if path.exists():
                path.unlink()
            store.save(c.info.get("gpu", "NVIDIA H200"), c.info.get("driver", ""), f.chosen, info, str(path))
            chosen = next(x for x in f.candidates if x.response is f.chosen)
            print(f"  {name} {model}: {f.chosen.describe()}; held-out {chosen.heldout_rms_w:.1f} W", flush=True)
            res[name][model] = {
                "report": f.report(),
                "kept": f.chosen.kind,
                "centroid_ms": 1e3 * f.chosen.centroid_s,
                "heldout_rms_w": chosen.heldout_rms_w,
                "fit_rms_w": chosen.fit_rms_w,
                "fir_centroid_ms": 1e3 * f.candidates[2].response.centroid_s,
                "fir_heldout_rms_w": f.candidates[2].heldout_rms_w,
                "levels_w": f.levels_w,
                "transients_w": f.transients_w,
                "recovery_ms": 1e3 * f.recovery_s,
                "fall_transients_w": f.fall_transients_w,
                "calibration_file": str(path),
            }
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="output folder")
    ap.add_argument("--skip-models", action="store_true", help="leave out the fit's models (minutes)")
    ap.add_argument(
        "--models-only",
        nargs="*",
        choices=MODELS,
        metavar="MODEL",
        help="only the fit's models (these, all if none named), written as report_models.txt and"
        " sensor_nonlinear_models.json beside the rest",
    )
    ap.add_argument(
        "--captures", nargs="+", choices=CALIBRATIONS, default=list(CALIBRATIONS), help="calibration captures to fit"
    )
    args = ap.parse_args()
    if args.models_only is not None:
        return models_only(args.out, args.models_only or list(MODELS), args.captures)
    args.out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    loaded = {name: cap.load(str(p)) for name, p in CAPTURES.items()}
    result: dict = {"captures": {k: str(p.relative_to(ROOT)) for k, p in CAPTURES.items()}}

    g = [x for name, c in loaded.items() for x in gains(name, c)]
    result["gain"] = g
    say("## Gain against level: energy counter / samples' trapezoid")
    for label, sel in (
        ("constant levels", [x for x in g if x["constant"]]),
        ("burst trains", [x for x in g if not x["constant"]]),
    ):
        r = np.array([x["counter_over_samples"] for x in sel])
        say(f"{label}: {len(sel)} spans, {r.mean():.4f} ± {r.std(ddof=1):.4f} (min {r.min():.4f}, max {r.max():.4f})")
    by_kind = defaultdict(list)
    for x in g:
        if x["constant"]:
            by_kind[x["span"]].append(x)
    for k, xs in sorted(by_kind.items()):
        r = np.array([x["counter_over_samples"] for x in xs])
        spread = r.std(ddof=1) if r.size > 1 else 0.0
        mean_w = np.mean([x["mean_w"] for x in xs])
        say(f"  {k}: {mean_w:.0f} W, {len(xs)} spans, {r.mean():.4f} ± {spread:.4f}")
    for x in g:
        if not x["constant"]:
            say(f"  {x['capture']} {x['span']}: {x['mean_w']:.0f} W, {x['counter_over_samples']:.4f}")

    say()
    say("## Edges: the step response per kind of edge (samples pooled over the project's captures)")
    all_edges = {name: edges(c) for name, c in loaded.items()}
    pooled = defaultdict(list)
    for es in all_edges.values():
        for e in es:
            pooled[edge_class(e)].append(e)
    result["edges"] = {}
    say(
        "| edge | edges | levels W | centroid ms ± 1σ | the same, share capped at 1 | 10% / 90% ms | 10-90% ms "
        "| beyond the settled level (W reached, at ms) |"
    )
    say("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for cls in sorted(pooled):
        group = pooled[cls]
        fig = edge_figures(group)
        fig["centroid_sigma_ms"] = jackknife(group, "centroid_ms")
        fig["capped_centroid_sigma_ms"] = jackknife(group, "capped_centroid_ms")
        fig["width_sigma_ms"] = jackknife(group, "width_10_90_ms")
        result["edges"][cls] = fig
        say(
            f"| {cls} | {fig['edges']} | {fig['level_before_w']:.0f} -> {fig['level_after_w']:.0f} "
            f"| {fig['centroid_ms']:.1f} ± {fig['centroid_sigma_ms']:.1f} "
            f"| {fig['capped_centroid_ms']:.1f} ± {fig['capped_centroid_sigma_ms']:.1f} "
            f"| {fig['t10_ms']:.1f} / {fig['t90_ms']:.1f} | {fig['width_10_90_ms']:.1f} "
            f"| {fig['overshoot']:+.0%} ({fig['peak_w']:.0f} W, {fig['overshoot_at_ms']:.0f}) |"
        )
    result["edges_per_capture"] = {}
    shared = [("shared", cap.load(str(SHARED)))] if SHARED.exists() else []
    say("per capture (centroid ms, overshoot):")
    for name, c in [*loaded.items(), *shared]:
        es = all_edges.get(name) or edges(c)
        per = defaultdict(list)
        for e in es:
            per[edge_class(e)].append(e)
        result["edges_per_capture"][name] = {}
        parts = []
        for cls in sorted(per):
            if len(per[cls]) < 3:
                continue
            fig = edge_figures(per[cls])
            result["edges_per_capture"][name][cls] = {k: fig[k] for k in fig if k != "share_of_step"}
            parts.append(f"{cls} {fig['centroid_ms']:.1f} ({fig['overshoot']:+.0%}, n={fig['edges']})")
        say(f"  {name}: " + "; ".join(parts))

    say()
    say("## A response fitted on falls alone")
    falls = [e for es in all_edges.values() for e in edges_for_falls(es) if e["level_after_w"] < e["level_before_w"]]
    resp, info = falls_only(falls)
    path = args.out / "falls_only.json"
    if path.exists():
        path.unlink()
    gpu, driver = loaded["cal2"].info.get("gpu", "NVIDIA H200"), loaded["cal2"].info.get("driver", "")
    store.save(gpu, driver, resp, info, str(path))
    say(f"{info['falls']} falls: {resp.describe()}; held-out RMS {info['heldout_rms_share_of_step']:.3f} of the step")
    say(f"written: {path}")
    result["falls_only"] = {**info, "centroid_ms": 1e3 * resp.centroid_s, "sigma_ms": 1e3 * resp.timing_sigma_s}

    if not args.skip_models:
        say()
        result["models"] = models_section(args.out, loaded, MODELS, args.captures, say)

    (args.out / "sensor_nonlinear.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (args.out / "report.txt").write_text("\n".join(lines) + "\n")
    return 0


def models_section(out: Path, loaded: dict, models, captures, say) -> dict:
    say("## The calibration fit's models, on each calibration capture (held-out: every other run)")
    res = compare_models(out, loaded, models, captures)
    head = "| capture | model | kept | centroid ms | held-out RMS W | free response: centroid ms, held-out RMS W"
    say(head + " | levels W |")
    say("| --- | --- | --- | --- | --- | --- | --- |")
    for name, ms in res.items():
        for model, m in ms.items():
            lv = ", ".join(f"{k} {x:.0f}" for k, x in m["levels_w"].items())
            say(
                f"| {name} | {model} | {m['kept']} | {m['centroid_ms']:.1f} | {m['heldout_rms_w']:.1f} "
                f"| {m['fir_centroid_ms']:.1f}, {m['fir_heldout_rms_w']:.1f} | {lv} |"
            )
    for name, ms in res.items():
        for model in (x for x in ms if x in TRANSIENT_MODELS):
            say(f"{name}, {model} model:")
            say("  " + ms[model]["report"].replace("\n", "\n  "))
    return res


def models_only(out: Path, models, captures) -> int:
    """The fit's models alone, on the named captures (what --models-only writes)."""
    out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def say(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    loaded = {name: cap.load(str(CAPTURES[name])) for name in captures}
    res = {"models": models_section(out, loaded, models, captures, say)}
    (out / "sensor_nonlinear_models.json").write_text(json.dumps(res, indent=1, default=float) + "\n")
    (out / "report_models.txt").write_text("\n".join(lines) + "\n")
    return 0


def edges_for_falls(es: list[dict]) -> list[dict]:
    """The falls of these edges after a load that ran FALL_PRE_S or more."""
    return [e for e in es if e["pre_s"] >= FALL_PRE_S]


if __name__ == "__main__":
    sys.exit(main())
