"""Offline analysis of the H200 sensor recordings (bench/gpu_sensor_checks.py, `aipm-fast
calibrate --capture`): old placement (samples at their stamps) against the calibrated one, on
the same recordings. No GPU needed.

    python bench/sensor_analysis.py bench/results/h200/sensor [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from aipm_fast import attribution, energy
from aipm_fast.sensor import capture as cap
from aipm_fast.sensor.fit import fit_response
from aipm_fast.sensor.response import SensorResponse

FAR_S = 0.100  # an op this far from the nearest change of load has a truth
SAMPLE_PERIOD_S = 0.020


def counter_power(c: np.ndarray, a: float, b: float) -> float:
    """Mean power from the counter between its first and last change inside [a, b]."""
    t, e = c[:, 0], c[:, 1]
    changed = np.flatnonzero(np.diff(e) != 0) + 1
    inside = changed[(t[changed] >= a) & (t[changed] <= b)]
    i, j = inside[0], inside[-1]
    return (e[j] - e[i]) / (t[j] - t[i])


def counter_between(c: np.ndarray, a: float, b: float) -> tuple[float, float, float]:
    """(J, first change time, last change time) of the counter within [a, b]."""
    t, e = c[:, 0], c[:, 1]
    changed = np.flatnonzero(np.diff(e) != 0) + 1
    inside = changed[(t[changed] >= a) & (t[changed] <= b)]
    i, j = inside[0], inside[-1]
    return e[j] - e[i], t[i], t[j]


#: when the counter's value changed is known to within the polling interval (25 ms) plus a call
#: (about 4 ms): uniform, so 1 sigma is that over sqrt(12) at each end of a span
COUNTER_TIME_SIGMA_S = 0.029 / np.sqrt(12)


def run_power(c, st, en, kind, settle_s=0.1, min_span_s=0.4):
    """Per op: the counter's mean power over the interior of its run of one kind (from settle_s
    after the run starts to its end) and its relative 1-sigma from the counter's timing; NaN where
    the counter spans less than min_span_s there."""
    out = np.full(st.size, np.nan)
    rel = np.full(st.size, np.nan)
    i = 0
    while i < st.size:
        j = i
        while j + 1 < st.size and kind[j + 1] == kind[i]:
            j += 1
        try:
            e, ta, tb = counter_between(c, st[i] + settle_s, en[j])
            if tb - ta >= min_span_s:
                out[i : j + 1] = e / (tb - ta)
                rel[i : j + 1] = np.sqrt(2) * COUNTER_TIME_SIGMA_S / (tb - ta)
        except IndexError:
            pass
        i = j + 1
    return out, rel


def trapezoid(stamps, watts, a, b):
    cs = np.concatenate(([0.0], np.cumsum(0.5 * (watts[1:] + watts[:-1]) * np.diff(stamps))))
    return np.interp(b, stamps, cs) - np.interp(a, stamps, cs)


def predict_heldout(resp: SensorResponse, c: cap.Capture) -> dict:
    """RMS of a response's prediction of another capture's square-wave runs, levels refitted."""
    out = {}
    t, v = c.samples[:, 0], c.samples[:, 1]
    for name, a, b in c.runs:
        if not name.startswith("square"):
            continue
        m = (t >= a) & (t < b)
        blocks = [x for x in c.blocks if x.start_s < b and x.end_s > a]
        kinds = sorted({x.kind for x in blocks})
        cols = [np.ones(m.sum())]
        for k in kinds:
            bk = [x for x in blocks if x.kind == k]
            cols.append(resp.overlap(t[m], np.array([x.start_s for x in bk]), np.array([x.end_s for x in bk])).sum(1))
        X = np.column_stack(cols)
        coef, *_ = np.linalg.lstsq(X, v[m], rcond=None)
        out[name] = float(np.sqrt(np.mean((v[m] - X @ coef) ** 2)))
    return out


def run_of(c: cap.Capture, name: str):
    return next((a, b) for n, a, b in c.runs if n == name)


def steady_block(c: cap.Capture, kind: str):
    """The block of a 'steady KIND' run (its span has idle margins around the block)."""
    a, b = run_of(c, f"steady {kind}")
    return next(x for x in c.blocks if x.kind == kind and x.start_s >= a and x.end_s <= b)


def analyse(folder: Path) -> dict:
    cal1, cal2 = cap.load(str(folder / "cal1_capture.json")), cap.load(str(folder / "cal2_capture.json"))
    mixed = cap.load(str(folder / "mixed.json"))
    res: dict = {}
    fits = {}
    for name, c in (("cal1", cal1), ("cal2", cal2)):
        f = fit_response(c.samples[:, 0], c.samples[:, 1], c.blocks, heldout=c.heldout())
        fits[name] = f
        res[f"{name}_fit"] = f.report()
    resp = fits["cal1"].chosen
    res["cal1_predicts_cal2_square_rms_w"] = predict_heldout(resp, cal2)
    res["cal2_predicts_cal1_square_rms_w"] = predict_heldout(fits["cal2"].chosen, cal1)

    t, v = mixed.samples[:, 0], mixed.samples[:, 1]
    c = mixed.counter
    # the counter sets the scale (as the meter does): counter over trace, whole recording
    ce, ca, cb = counter_between(c, t[0], t[-1])
    scale = ce / trapezoid(t, v, ca, cb)
    res["counter_over_trace"] = scale
    steady = {}
    for k in ("hot", "copy", "cool"):
        blk = steady_block(mixed, k)
        steady[k] = counter_power(c, blk.start_s + 0.3, blk.end_s - 0.05)
    steady["idle"] = counter_power(c, *run_of(mixed, "steady idle"))
    res["steady_power_w"] = steady

    # the excess energy of load changes, from the counter over many repeated cycles
    excess = {}
    for run, low in (("edges idle-hot", "idle"), ("edges cool-hot", "cool")):
        a, b = run_of(mixed, run)
        blocks = [x for x in mixed.blocks if x.start_s >= a and x.end_s <= b]
        e, ta, tb = counter_between(c, blocks[0].start_s, blocks[-1].end_s)
        hot = sum(max(0.0, min(x.end_s, tb) - max(x.start_s, ta)) for x in blocks if x.kind == "hot")
        steady_j = steady["hot"] * hot + steady[low] * ((tb - ta) - hot)
        cycles = sum(1 for x in blocks if x.kind == "hot" and ta <= x.start_s <= tb)
        excess[run] = {"per_cycle_j": (e - steady_j) / cycles, "cycles": cycles, "share": (e - steady_j) / e}
    res["edge_excess"] = excess

    new = attribution.attribute(resp, t, v, *op_spans(mixed), SAMPLE_PERIOD_S)
    res.update(mixed_tables(mixed, t, v, c, scale, steady, new[0] * scale, new[1] * scale))
    res["short_windows"] = short_windows(mixed, t, v, scale, steady, resp)
    return res


def op_spans(mixed: cap.Capture):
    a, b = run_of(mixed, "mixed")
    ops = [x for x in mixed.blocks if x.start_s >= a and x.end_s <= b]
    return np.array([x.start_s for x in ops]), np.array([x.end_s for x in ops])


def mixed_tables(mixed, t, v, c, scale, steady, new_e, new_u) -> dict:
    """Per class of op (kind, duration, far from or near a load change): the old placement (the
    samples at their stamps, scaled) and the new energies given, against the truths."""
    res: dict = {}
    # mixed ops
    a, b = run_of(mixed, "mixed")
    ops = [x for x in mixed.blocks if x.start_s >= a and x.end_s <= b]
    st = np.array([x.start_s for x in ops])
    en = np.array([x.end_s for x in ops])
    kind = np.array([x.kind for x in ops])
    dur = en - st
    nominal = np.array([min((0.015, 0.04, 0.1), key=lambda d: abs(d - x)) for x in dur])
    change = [st[0]] + [st[i] for i in range(1, len(ops)) if kind[i] != kind[i - 1]] + [en[-1]]
    change = np.array(change)
    dist = np.minimum(
        np.abs(st[:, None] - change[None, :]).min(axis=1), np.abs(en[:, None] - change[None, :]).min(axis=1)
    )
    # an op's distance to the nearest change: from its start and end to any change point
    far = dist >= FAR_S
    truth = np.array([steady[k] for k in kind]) * dur
    # far ops: their own run's steady power from the counter (the GPU's power at one load
    # drifts by about 1% with temperature over a session, so a separate steady run is a worse truth)
    local, local_rel = run_power(c, st, en, kind)
    truth_far = np.where(np.isfinite(local), local, np.array([steady[k] for k in kind])) * dur
    res["far_truth_from_own_run"] = int(np.sum(far & np.isfinite(local)))
    old = trapezoid(t, v, st, en) * scale
    rows = []
    for k in ("hot", "copy", "cool"):
        for d in (0.015, 0.04, 0.1):
            for where, m in (("far", far), ("near", ~far)):
                sel = (kind == k) & (nominal == d) & m
                if sel.sum() == 0:
                    continue
                row = {
                    "kind": k,
                    "op_ms": d * 1e3,
                    "where": where,
                    "n": int(sel.sum()),
                    "truth_steady_j": float(truth[sel].mean()),
                    "old_j": float(old[sel].mean()),
                    "new_j": float(new_e[sel].mean()),
                    "old_err": float(old[sel].mean() / truth[sel].mean() - 1),
                    "new_err": float(new_e[sel].mean() / truth[sel].mean() - 1),
                    "new_u_rel_median": float(np.median(new_u[sel] / new_e[sel])),
                    "new_estimate_share": float(np.mean(energy.unsure(new_e[sel], new_u[sel]))),
                }
                if where == "far":
                    row["truth_own_run_j"] = float(truth_far[sel].mean())
                    row["old_err"] = float(old[sel].mean() / truth_far[sel].mean() - 1)
                    row["new_err"] = float(new_e[sel].mean() / truth_far[sel].mean() - 1)
                    z = np.abs(new_e[sel] - truth_far[sel]) / new_u[sel]
                    row["coverage95"] = float(np.mean(z <= 1.96))
                    u_truth = np.where(np.isfinite(local_rel[sel]), local_rel[sel], 0.0) * truth_far[sel]
                    z2 = np.abs(new_e[sel] - truth_far[sel]) / np.hypot(new_u[sel], u_truth)
                    row["truth_u_rel_median"] = float(np.median(u_truth / truth_far[sel]))
                    row["coverage95_with_truth_u"] = float(np.mean(z2 <= 1.96))
                    row["old_p90_abs_err"] = float(np.percentile(np.abs(old[sel] / truth_far[sel] - 1), 90))
                    row["new_p90_abs_err"] = float(np.percentile(np.abs(new_e[sel] / truth_far[sel] - 1), 90))
                rows.append(row)
    res["mixed_ops"] = rows
    # excess in the mixed sequence: counter minus steady sum, against what the new placement puts on the ops
    e_seq, ta, tb = counter_between(c, st[0], en[-1])
    inside = (st >= ta) & (en <= tb)
    res["mixed_excess"] = {
        "counter_j": float(e_seq),
        "steady_sum_j": float(truth[inside].sum()),
        "counter_over_steady": float(e_seq / truth[inside].sum()),
        "new_near_excess_j": float((new_e - truth)[inside & ~far].sum()),
        "new_near_u_j": float(np.sqrt(np.sum(new_u[inside & ~far] ** 2))),
        "new_far_excess_j": float((new_e - truth)[inside & far].sum()),
        "old_near_excess_j": float((old - truth)[inside & ~far].sum()),
        "counter_excess_j": float(e_seq - truth[inside].sum()),
        "n_changes": int(len(change) - 2),
    }
    return res


def analyse_meter(capture_path: str, inferences_path: str) -> dict:
    """The Meter's own per-op energies (bench/gpu_meter_mixed.py) against the same truths."""
    import pandas as pd

    mixed = cap.load(capture_path)
    inf = pd.read_csv(inferences_path)
    t, v, c = mixed.samples[:, 0], mixed.samples[:, 1], mixed.counter
    ce, ca, cb = counter_between(c, t[0], t[-1])
    scale = ce / trapezoid(t, v, ca, cb)
    steady = {}
    for k in ("hot", "copy", "cool"):
        blk = steady_block(mixed, k)
        steady[k] = counter_power(c, blk.start_s + 0.3, blk.end_s - 0.05)
    steady["idle"] = counter_power(c, *run_of(mixed, "steady idle"))
    n_steady = 3  # the steady runs are the first three marks
    e = inf["energy_j"].to_numpy()[n_steady:]
    u = inf["uncertainty_j"].to_numpy()[n_steady:]
    res = {"steady_power_w": steady, "counter_over_trace": scale, "marks": int(len(inf))}
    res["meter_estimate_flags"] = float(inf["estimate"].astype(bool).to_numpy()[n_steady:].mean())
    res.update(mixed_tables(mixed, t, v, c, scale, steady, e, u))
    return res


def short_windows(mixed, t, v, scale, steady, resp, per_len=40, seed=3):
    """Windows of 50 ms to 2 s inside the steady runs: p90 abs error against the counter's steady
    power, samples at their stamps vs placed by the response's centroid."""
    rng = np.random.default_rng(seed)
    out = {}
    for k in ("hot", "copy"):
        blk = steady_block(mixed, k)
        for length in (0.05, 0.1, 0.25, 1.0, 2.0):
            lo, hi = blk.start_s + 0.3, blk.end_s - 0.05 - length
            if hi <= lo:
                continue
            s0 = rng.uniform(lo, hi, per_len)
            truth = steady[k] * length
            old = trapezoid(t, v, s0, s0 + length) * scale / truth - 1
            new = trapezoid(t - resp.centroid_s, v, s0, s0 + length) * scale / truth - 1
            out[f"{k} {length * 1e3:g} ms"] = {
                "old_p90": float(np.percentile(np.abs(old), 90)),
                "new_p90": float(np.percentile(np.abs(new), 90)),
            }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("folder")
    ap.add_argument("--json")
    ap.add_argument("--meter", help="PREFIX of bench/gpu_meter_mixed.py's outputs: analyse the Meter's own figures")
    args = ap.parse_args(argv)
    if args.meter:
        res = analyse_meter(f"{args.meter}.capture.json", f"{args.meter}.inferences.csv")
    else:
        res = analyse(Path(args.folder))
    text = json.dumps(res, indent=1, default=str)
    if args.json:
        Path(args.json).write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
