"""Offline, on any machine: fold a GPU validation run's raw samples again (bench/gpu_profile_checks.py
writes each profile's raw.npz) and judge the parts against the run's difference runs.

The fold is the profile's own (profile.folding.fold), on the same samples and repetitions, so a
change of the method can be judged on recorded H200 data without a GPU; the truths are the GPU
run's counter measurements (checks.json), the idle a part displaces added back as the GPU script
does (gpu_profile_checks.part_truths).

    python bench/profile_refold.py bench/results/h200/profile \\
        --calibration-file bench/results/h200/sensor/calibrations.json \\
        --other-calibration bench/results/h200/profile/cal1_refit.json \\
        --other-calibration bench/results/h200/sensor/meter/calibrations.json --json refold.json

prints one markdown row per checked part; --json writes every figure.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.gpu_profile_checks import agreement, edge_width_s, load_response, part_energy, part_truths  # noqa: E402

#: the H200's steady idle by its energy counter over 3 s (bench/RESULTS.md, the sensor section),
#: for runs that did not measure it themselves
STEADY_IDLE_W = 121.1


def load_raw(path: Path) -> tuple[dict, dict]:
    """raw.npz -> (arrays, {part name: (reps x 2) start, end s after each repetition's start})."""
    z = np.load(path, allow_pickle=False)
    parts = {str(n): z[f"part_{i}"] for i, n in enumerate(z["part_names"])}
    return {k: z[k] for k in z.files if not k.startswith("part")}, parts


def recorded_profiles(results: Path, checks: dict):
    """(name, its checks, raw arrays, median spans) of each profile in a run that kept its raw.npz."""
    from aipm_fast.profile.folding import median_spans

    for name, res in checks.items():
        if not isinstance(res, dict) or not (results / name / "raw.npz").exists():
            continue
        raw, parts = load_raw(results / name / "raw.npz")
        reps = [[(k, float(v[i, 0]), float(v[i, 1])) for k, v in parts.items()] for i in range(raw["starts_s"].size)]
        yield name, res, raw, median_spans(reps)


def slot_differences(diff: dict) -> dict:
    """The difference runs in part_truths' form; a run written before the displaced idle was added
    back stored the slot differences as doubled_j/removed_j."""
    out = {}
    for part, x in diff["difference"].items():
        if "doubled_slot_j" in x:
            out[part] = x
        else:
            out[part] = {
                "doubled_slot_j": x["doubled_j"],
                "removed_slot_j": x["removed_j"],
                "sigma_j": x["run_sigma_j"],
            }
    return {**diff, "difference": out}


def refold(results: Path, response, others, idle_w: float | None) -> dict:
    from aipm_fast.profile.folding import fold, response_timing

    checks = json.loads((results / "checks.json").read_text())
    shifted, timing_how = response_timing(response)
    groups = [g for g in (shifted, list(others)) if g]
    out: dict = {"timing": timing_how, "others": len(others), "profiles": {}}
    for name, res, raw, spans in recorded_profiles(results, checks):
        f = fold(
            response,
            raw["stamps_s"],
            raw["watts"],
            raw["starts_s"],
            raw["ends_s"],
            scale=res["scale"],
            alternatives=groups,
        )
        table = f.span_table(spans)
        diff = slot_differences(res["difference_runs"])
        diff.setdefault("idle_w", idle_w if idle_w is not None else STEADY_IDLE_W)
        if idle_w is not None:
            diff["idle_w"] = idle_w
        truths = part_truths(diff, spans)
        parts_out = {}
        for part in res["checks"]:
            e, u = part_energy(table, part)
            ru = float(np.sqrt(sum(r["response_sigma_j"] ** 2 for r in table if r["name"] == part)))
            parts_out[part] = {**agreement(e, u, truths[part]), "response_sigma_j": ru}
        names = [s.name for s in spans]
        edges = {}
        if name in ("synthetic", "separated"):
            by = {s.name: s for s in spans}
            for a, b in zip(names[:-1], names[1:]):
                s, prev = by[b], by[a]
                w = edge_width_s(
                    f.phase_s, f.power_w, s.start_s, s.start_s - prev.start_s - 0.002, s.end_s - s.start_s - 0.002
                )
                edges[f"{a} -> {b}"] = 1e3 * w
        out["profiles"][name] = {
            "energy_j": f.energy_j,
            "energy_sigma_j": f.energy_sigma_j,
            "duration_ms": f.duration_s * 1e3,
            "resolution_ms": f.resolution_s * 1e3,
            "relative_band": f.relative_band,
            "late_gap_w": float(f.gap_power_w[-1]),
            "idle_w": diff["idle_w"],
            "residual_rms_w": f.residual_rms_w,
            "inferences": f.n_reps,
            "samples": f.n_samples,
            "wall_s": res.get("wall_s"),
            "edge_10_90_ms": edges,
            "parts": parts_out,
        }
    return out


def diagnose(results: Path, responses: dict, blocks: int = 8) -> dict:
    """What moves the checked parts, per profile: each calibration's response (the fold's residual
    RMS and the parts' energies), the first response moved by -2..+3 ms (the same), and the
    statistical part of the band against a delete-one-block jackknife over the run's time."""
    import dataclasses

    from aipm_fast.profile.folding import fold

    checks = json.loads((results / "checks.json").read_text())
    first = next(iter(responses.values()))
    out: dict = {}
    for name, res, raw, spans in recorded_profiles(results, checks):
        t, w, a, b = raw["stamps_s"], raw["watts"], raw["starts_s"], raw["ends_s"]

        checked = list(res["checks"])

        def one(r, **kw):
            f = fold(r, t, w, a, b, scale=res["scale"], **kw)  # noqa: B023 (called within this pass)
            return {"residual_rms_w": f.residual_rms_w, "energy_j": f.energy_j, "parts_j": _energies(f, spans, checked)}  # noqa: B023

        by_cal = {label: one(r) for label, r in responses.items()}
        shifts = {
            f"{d * 1e3:+.0f} ms": one(dataclasses.replace(first, lag0_s=first.lag0_s + d))
            for d in (-0.002, -0.001, 0.0, 0.001, 0.002, 0.003)
        }
        f0 = fold(first, t, w, a, b, scale=res["scale"])
        table = f0.span_table(spans)
        sandwich = {part: part_energy(table, part)[1] for part in res["checks"]}
        edges = np.linspace(a[0], b[-1], blocks + 1)
        est = []
        for k in range(blocks):
            keep = ~((t > edges[k]) & (t < edges[k + 1] + 0.1))  # the block's samples and those seeing it
            f = fold(first, t[keep], w[keep], a, b, scale=res["scale"], smoothing=f0.smoothing)
            est.append(_energies(f, spans, checked))
        jack = {
            part: float(
                np.sqrt(
                    (blocks - 1)
                    / blocks
                    * np.sum((np.array([e[part] for e in est]) - np.mean([e[part] for e in est])) ** 2)
                )
            )
            for part in res["checks"]
        }
        out[name] = {"calibrations": by_cal, "shifts": shifts, "sandwich_sigma_j": sandwich, "jackknife_sigma_j": jack}
        if {s.name for s in spans} == set(checked):
            out[name]["additive_idle_w"] = additive_idle_w(res["difference_runs"], checks["counter_runs"], name)
    return out


def additive_idle_w(diff: dict, runs: list[dict], name: str) -> float:
    """Where every phase of an inference was removed once: the power of a cycle of nothing but idle
    were the removals additive (the base cycle less every phase's removal difference, over the
    cycle) - a check of the idle a part displaces in its slot."""
    base = [r for r in runs if r["label"] == f"{name} base"]
    cycle_s = base[0]["seconds"] / base[0]["n"]
    removed = sum(slot_differences(diff)["difference"][p]["removed_slot_j"] for p in diff["difference"])
    return float((np.mean(diff["base_j"]) - removed) / cycle_s)


def _energies(f, spans, checked) -> dict:
    table = f.span_table(spans)
    return {part: part_energy(table, part)[0] for part in checked}


def markdown(out: dict) -> str:
    rows = [
        "| profile | J per inference | resolution | part | profile J ± 1σ (the response's part) | doubled J "
        "| removed J | truth J ± its limit | error | within 5% | band covers |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, p in out["profiles"].items():
        first = True
        for part, c in p["parts"].items():
            head = (
                f"| {name} | {p['energy_j']:.2f} ± {p['energy_sigma_j']:.2f} | {p['resolution_ms']:.1f} ms"
                if first
                else "| | |"
            )
            first = False
            rows.append(
                f"{head} | {part} | {c['profile_j']:.2f} ± {c['profile_sigma_j']:.2f} ({c['response_sigma_j']:.2f}) "
                f"| {c['doubled_j']:.2f} | {c['removed_j']:.2f} | {c['truth_j']:.2f} ± {c['truth_limit_j']:.2f} "
                f"| {c['relative']:+.1%} | {'yes' if c['within_5pct'] else '**no**'} "
                f"| {'yes' if c['band_covers'] else '**no**'} |"
            )
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="a gpu_profile_checks.py output folder")
    ap.add_argument("--calibration-file", required=True)
    ap.add_argument("--other-calibration", action="append", default=[])
    ap.add_argument("--idle-w", type=float, help=f"the GPU's steady idle (W; default: the run's, else {STEADY_IDLE_W})")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--diagnose", action="store_true", help="also: each calibration, shifted responses, a jackknife")
    args = ap.parse_args()
    checks = json.loads((args.results / "checks.json").read_text())
    response, _ = load_response(args.calibration_file, checks.get("gpu", ""))
    others = [load_response(p, checks.get("gpu", ""))[0] for p in args.other_calibration]
    out = refold(args.results, response, others, args.idle_w)
    out["calibration_file"] = args.calibration_file
    out["other_calibrations"] = args.other_calibration
    print(markdown(out))
    if args.diagnose:
        labels = [
            Path(args.calibration_file).name,
            *(Path(p).parent.name + "/" + Path(p).name for p in args.other_calibration),
        ]
        out["diagnosis"] = diagnose(args.results, dict(zip(labels, [response, *others])))
        for name, d in out["diagnosis"].items():
            print(f"{name}:")
            for label, x in {**d["calibrations"], **{f"shifted {k}": v for k, v in d["shifts"].items()}}.items():
                parts = ", ".join(f"{p} {e:.2f} J" for p, e in x["parts_j"].items())
                print(f"  {label}: residual {x['residual_rms_w']:.1f} W, inference {x['energy_j']:.2f} J; {parts}")
            both = ", ".join(
                f"{p} {d['sandwich_sigma_j'][p]:.3f} / {d['jackknife_sigma_j'][p]:.3f} J"
                for p in d["jackknife_sigma_j"]
            )
            print(f"  fit's 1 sigma / block jackknife: {both}")
            if "additive_idle_w" in d:
                print(f"  a cycle of idle were the removals additive: {d['additive_idle_w']:.1f} W")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
