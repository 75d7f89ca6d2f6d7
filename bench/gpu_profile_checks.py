"""On a GPU: `aipm-fast profile` validated against energies it did not compute (issue 14, item 3).

1. Synthetic inferences of known structure, phases as named ranges, the Loads of `aipm-fast
   calibrate` (sensor/drive.py): "synthetic" is bf16 matmuls ("hot", 10 ms), HBM copies ("copy",
   8 ms), a spin kernel ("cool", 10 ms) back to back; "separated" puts each heavy phase between
   light ones (matmul, spin, copy, spin), so that each starts from the same light state and its
   own slow fall lands in a light phase. Profiled with random idle gaps. The resolution achieved
   at the phase edges is the 10-90% width of the reconstructed curve's step there; the inference
   back to back (no gaps), by the counter, says what the idle gaps change.
2. ResNet-50 (batch 64) and ViT-B/16 (batch 32), fp32: profiled with modules as parts (depth 1
   and 3), two modules each checked.

Each checked part's truth is two difference runs by the energy counter, which bound it from two
sides (truth_from): the inference with the part doubled (a module run twice, its first output
discarded) and with it removed (a module returns what it returned on the same input, running
nothing). Every run keeps the same cycle (a slot that fits the longest variant, then the
profile's gap sequence; CounterRuns.per_inference), its energy per cycle the slope of the
counter's changes over the run times the cycle; base runs are interleaved (before and after each
part's pair); the idle a part displaces at the slot's end is added back (displaced_idle).

The sensor response is the stored H200 calibration (bench/results/h200/sensor/calibrations.json,
or --calibration-file), used whatever the driver key says; --other-calibration files join the
band with their spread. Sums of parts equal to the total hold by construction and are not checked.

    source bench/gpu_env.sh /tmp/build.log && python3 bench/gpu_profile_checks.py OUT_DIR

writes OUT_DIR/checks.json (every figure, every counter run), OUT_DIR/<profile>/ (the profile's
curve.csv, parts.csv, profile.json, profile.png, and raw.npz: the samples, repetitions and parts
it folded, for bench/profile_refold.py) and prints one line per check. About 130 s of GPU time
with --synthetic-s 16 --separated-s 12 --model-s 10 --diff-s 1.5.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: the synthetic inference: (range name, load kind of sensor/drive.Loads, seconds)
PHASES = (("matmul", "hot", 0.010), ("hbm copy", "copy", 0.008), ("spin", "cool", 0.010))
#: the same loads, each heavy phase between light ones: each starts from the same light state and
#: its own slow fall lands in a light phase, not in the next heavy one
SEPARATED = (
    ("matmul", "hot", 0.010),
    ("rest 1", "cool", 0.010),
    ("hbm copy", "copy", 0.008),
    ("rest 2", "cool", 0.010),
)
#: the models and the two modules of each checked by doubling
MODELS = (
    ("resnet50", 64, 1, ("layer2", "layer3")),
    ("vit_b_16", 32, 3, ("encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_8")),
)
#: the synthetic profiles: name, phases, the phases checked
SYNTHETIC = (
    ("synthetic", PHASES, [p[0] for p in PHASES]),
    ("separated", SEPARATED, ["matmul", "hbm copy", "rest 2"]),
)
#: a part's energy against its difference run must agree within this share
TOLERANCE = 0.05


# -- what is judged (CPU-side, tested in tests/test_profile.py) -----------------------------------
def edge_width_s(phase_s, power_w, edge_s: float, before_s: float, after_s: float) -> float:
    """The 10-90% width (s) of the curve's step at edge_s: the levels are the curve's medians over
    `before_s` before the edge and `after_s` after it (each from 1 ms off the edge); the 90%
    crossing is the first bin at 90% of the way on from the edge's start window, the 10% crossing
    the last bin below 10% before it (each interpolated between bins). A curve that rings inside
    a phase crosses 10% there too: only the crossings around the step count. NaN where the step
    is under 20 W or no crossing lies within the windows."""
    t, p = np.asarray(phase_s, dtype=float), np.asarray(power_w, dtype=float)
    lo = p[(t >= edge_s - 0.001 - before_s) & (t < edge_s - 0.001)]
    hi = p[(t > edge_s + 0.001) & (t <= edge_s + 0.001 + after_s)]
    if lo.size == 0 or hi.size == 0:
        return float("nan")
    a, b = float(np.median(lo)), float(np.median(hi))
    if abs(b - a) < 20.0:
        return float("nan")
    sel = (t >= edge_s - 0.001 - before_s) & (t <= edge_s + 0.001 + after_s)
    tt, x = t[sel], (p[sel] - a) / (b - a)  # 0 before, 1 after
    near = int(np.argmin(np.abs(tt - edge_s)))
    # the 90% crossing: the first bin at or above 0.9 from a bin before the edge below it
    start = near
    while start > 0 and x[start] >= 0.1:
        start -= 1
    above = np.nonzero(x[start:] >= 0.9)[0]
    if above.size == 0 or x[start] >= 0.1:
        return float("nan")
    i90 = start + int(above[0])
    below = np.nonzero(x[:i90] < 0.1)[0]
    i10 = int(below[-1]) + 1  # the first bin at or above 0.1 after the last one below it
    t10 = tt[i10 - 1] + (0.1 - x[i10 - 1]) / (x[i10] - x[i10 - 1]) * (tt[i10] - tt[i10 - 1])
    t90 = tt[i90 - 1] + (0.9 - x[i90 - 1]) / (x[i90] - x[i90 - 1]) * (tt[i90] - tt[i90 - 1])
    return float(t90 - t10)


def slope_power_w(stamps_s, joules, lo_s: float, hi_s: float) -> tuple[float, float, int]:
    """(W, 1 sigma W, changes used): the mean power over [lo_s, hi_s] as the least-squares slope of
    the energy counter's changes within it. The counter changes every ~100 ms: a slope over all
    its changes does not depend on how far the first or last change lies from the run's ends (what
    two edge readings do: up to one update of idle in each run), and its residuals say how well
    the run's power is known."""
    t, e = np.asarray(stamps_s, dtype=float), np.asarray(joules, dtype=float)
    keep = (t >= lo_s) & (t <= hi_s)
    if np.count_nonzero(keep) < 4:
        return float("nan"), float("nan"), int(np.count_nonzero(keep))
    t, e = t[keep], e[keep]
    # the counter holds its value between changes: keep the first reading of each value
    first = np.concatenate(([True], np.diff(e) != 0))
    t, e = t[first], e[first]
    if t.size < 4:
        return float("nan"), float("nan"), int(t.size)
    x = t - t.mean()
    slope = float(x @ (e - e.mean()) / (x @ x))
    resid = e - e.mean() - slope * x
    sigma = float(np.sqrt(resid @ resid / (t.size - 2) / (x @ x)))
    return slope, sigma, int(t.size)


def truth_from(
    doubled_j: float, removed_j: float, sigma_j: float, displaced_j: float = 0.0, displaced_sigma_j: float = 0.0
) -> dict:
    """A part's energy by two difference runs that bound it from two sides: doubled (the part run
    a second time, after itself: its energy without the change of state it meets inside the
    inference) and removed (the inference without it: its energy with what it changes in its
    neighbours, e.g. the GPU's slower fall after it). Both runs keep the cycle's length (a fixed
    slot, CounterRuns.per_inference), so each difference is the part's energy less the idle it
    displaces at the slot's end: displaced_j (+- displaced_sigma_j) is added back. Their mean is
    the truth compared with; half their difference is the truth's own limit (how far the part's
    energy inside the inference is defined by these runs), stated with it."""
    d, r = doubled_j + displaced_j, removed_j + displaced_j
    both = [x for x in (d, r) if np.isfinite(x)]
    mid = float(np.mean(both)) if both else float("nan")
    half = 0.5 * abs(d - r) if len(both) == 2 else float("nan")
    return {
        "doubled_j": d,
        "removed_j": r,
        "truth_j": mid,
        "truth_limit_j": half,
        "run_sigma_j": float(np.hypot(sigma_j, displaced_sigma_j)),
        "displaced_idle_j": displaced_j,
    }


#: 1 sigma (W) of the power of the idle a part displaces at a slot's end, about the GPU's steady
#: idle: on the H200 the synthetic inference's slot runs, taken as additive (the cycle less every
#: phase's removal difference, over the cycle), put the idle of a whole cycle at 132 W against the
#: counter's 121 W of steady idle; the profile's own late gap power (160-200 W) would make the
#: twelve equal layers of ViT-B/16 cost more than the inference's cycle, so it is not used
DISPLACED_IDLE_SIGMA_W = 11.0


def displaced_idle(duration_s: float, idle_w: float) -> tuple[float, float]:
    """(J, 1 sigma J) of the idle a part of `duration_s` displaces at the end of a fixed slot: the
    GPU's steady idle power (the counter over a second of nothing) over that time."""
    return idle_w * duration_s, DISPLACED_IDLE_SIGMA_W * duration_s


def agreement(profiled_j: float, sigma_j: float, truth: dict) -> dict:
    """A part's profiled energy against its difference runs (truth_from): the error against their
    mean and against each, whether it is within TOLERANCE of the mean, and whether the profile's
    band covers the error at 95% (1.96 times the profile's sigma, the runs' noise and the truth's
    own limit, in quadrature)."""
    t = truth["truth_j"]
    rel = (profiled_j - t) / t if t else float("nan")
    err = profiled_j - t
    band95 = 1.96 * float(
        np.sqrt(sigma_j**2 + truth.get("run_sigma_j", 0.0) ** 2 + _finite(truth["truth_limit_j"]) ** 2)
    )
    return {
        "profile_j": profiled_j,
        "profile_sigma_j": sigma_j,
        **truth,
        "relative": rel,
        "relative_doubled": (profiled_j - truth["doubled_j"]) / truth["doubled_j"],
        "relative_removed": (profiled_j - truth["removed_j"]) / truth["removed_j"]
        if np.isfinite(truth["removed_j"])
        else float("nan"),
        "within_5pct": bool(abs(rel) <= TOLERANCE),
        "band_covers": bool(abs(err) <= band95),
    }


def _finite(x: float) -> float:
    return float(x) if np.isfinite(x) else 0.0


def part_energy(table: list[dict], name: str) -> tuple[float, float]:
    """(J, 1 sigma) of a part in a profile's table; a module called k times: the sum of its calls."""
    rows = [r for r in table if r["name"] == name or r["name"].startswith(f"{name} (")]
    if not rows:
        raise KeyError(f"no part {name!r} in the profile (parts: {', '.join(r['name'] for r in table)})")
    return sum(r["energy_j"] for r in rows), float(np.sqrt(sum(r["sigma_j"] ** 2 for r in rows)))


def load_response(path: str, gpu_name: str):
    """The response stored for this GPU model in a calibration file (any driver), else the only one."""
    from aipm_fast.sensor.response import SensorResponse

    entries = json.loads(Path(path).read_text())["responses"]
    same = [e for e in entries.values() if e.get("gpu") == gpu_name] or list(entries.values())
    return SensorResponse.from_dict(same[0]["response"]), same[0]


# -- on the GPU ----------------------------------------------------------------------------------
#: the energy counter's changes are used from this long after a run starts (the previous run's
#: power still in it)
SETTLE_S = 0.2


class CounterRuns:
    """Energy per inference (with its gap) by the NVML energy counter: the project's sampler reads
    it every 2 ms on its own thread (no GIL in the way of its stamps), and a run's mean power is
    the slope of the counter's changes within it (slope_power_w), times the run's mean cycle."""

    def __init__(self, torch, gpu: int = 0):
        import dataclasses

        from aipm_fast.config import EngineConfig
        from aipm_fast.recorder import Recorder

        config = EngineConfig.from_env()
        periods = {"nvml.energy": 0.002, "nvml.power_samples": 0.25}
        config = dataclasses.replace(config, gpus=[gpu], periods_s={**config.periods_s, **periods})
        self.torch, self.gpu, self.config, self.Recorder = torch, gpu, config, Recorder
        self.rec = None
        self.runs: list[dict] = []  # every run: label, host span, the counter slope

    def __enter__(self):
        self.rec = self.Recorder(self.config, keep_history=True).__enter__()
        chans = {c.label: c for c in self.rec.channels.values() if c.domain == f"nvml:{self.gpu}"}
        if "energy" not in chans:
            raise RuntimeError("no NVML energy counter: no difference runs possible")
        self.chan = chans["energy"].id
        return self

    def __exit__(self, *exc):
        self.rec.__exit__(*exc)

    def idle_w(self, seconds: float = 1.2) -> float:
        """The GPU's steady idle power (W): the counter's slope over `seconds` of nothing."""
        self.torch.cuda.synchronize()
        time.sleep(0.5)  # what ran before falls off
        t0 = time.monotonic_ns()
        time.sleep(seconds)
        t1 = time.monotonic_ns()
        self.rec.drain()
        ct, cv = self.rec.series(self.chan)
        watts, sigma, used = slope_power_w(ct / 1e9, cv, t0 / 1e9, t1 / 1e9)
        self.runs.append(
            {"label": "idle", "n": 0, "seconds": seconds, "watts": watts, "sigma_w": sigma, "changes": used}
        )
        return watts

    def per_inference(self, fn, n: int, seed: int, slot_s: float | None = None, label: str = "") -> tuple[float, float]:
        """(J, 1 sigma J) per cycle over n inferences. With slot_s, inference k starts at the host
        deadline T0 + k * slot_s + (the gaps so far, GAP_MIN_S plus a uniform draw over one sample
        period from `seed`'s sequence): every variant of the inference (base, doubled, removed)
        then runs in cycles of the same length, whatever the host's sleeps overshoot, so that
        their difference is the GPU's alone. Without slot_s: back to back."""
        from aipm_fast.profile.run import GAP_MIN_S, SAMPLE_PERIOD_S

        rng = np.random.default_rng(seed)
        self.torch.cuda.synchronize()
        t0 = time.monotonic_ns()
        deadline = t0 / 1e9
        late = 0
        for _ in range(n):
            if slot_s is not None:
                wait = deadline - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                else:
                    late += 1
                deadline += slot_s + GAP_MIN_S + rng.uniform(0.0, SAMPLE_PERIOD_S)
            fn()
            if slot_s is not None:
                self.torch.cuda.synchronize()
        self.torch.cuda.synchronize()
        if slot_s is not None:
            time.sleep(max(deadline - time.monotonic(), 0.0))
        t1 = time.monotonic_ns()
        time.sleep(0.01)
        self.rec.drain()
        ct, cv = self.rec.series(self.chan)
        watts, sigma, used = slope_power_w(ct / 1e9, cv, t0 / 1e9 + SETTLE_S, t1 / 1e9)
        cycle_s = (t1 - t0) / 1e9 / n
        if not np.isfinite(watts):
            raise RuntimeError(f"{label}: the NVML energy counter changed {used} times within the run: too few")
        self.runs.append(
            {
                "label": label,
                "n": n,
                "seconds": (t1 - t0) / 1e9,
                "watts": watts,
                "sigma_w": sigma,
                "changes": used,
                "late": late,
            }
        )
        return watts * cycle_s, sigma * cycle_s


def part_truths(diff: dict, spans) -> dict:
    """Each checked part's truth (truth_from) from its slot runs, the idle it displaces added back
    (displaced_idle, over the part's median duration: all its calls)."""
    out = {}
    for part, x in diff["difference"].items():
        seconds = sum(s.end_s - s.start_s for s in spans if s.name == part or s.name.startswith(f"{part} ("))
        j, u = displaced_idle(seconds, diff["idle_w"])
        out[part] = truth_from(x["doubled_slot_j"], x["removed_slot_j"], x["sigma_j"], j, u)
    return out


def doubled(module):
    """Make a module run twice per call (the first output discarded); returns the undo."""
    forward = module.forward

    def twice(*args, **kwargs):
        forward(*args, **kwargs)
        return forward(*args, **kwargs)

    module.forward = twice
    return lambda: setattr(module, "forward", forward)


def removed(module, output):
    """Make a module run no kernel: each call returns `output` (what it returned on the same input,
    computed beforehand), so that the modules after it run as in the inference; returns the undo."""
    forward = module.forward
    module.forward = lambda *args, **kwargs: output
    return lambda: setattr(module, "forward", forward)


def seconds_per_call(fn, torch, reps: int = 5) -> float:
    """The host's time for one call of fn, device work included (after one warm-up call)."""
    fn()
    torch.cuda.synchronize()
    t = time.monotonic()
    for _ in range(reps):
        fn()
        torch.cuda.synchronize()
    return (time.monotonic() - t) / reps


def check_parts(name, fn_for, parts, counter, torch, diff_s, seed) -> dict:
    """Per part, the doubled and the removed inference by the counter, each against the mean of
    the base runs just before and just after it (bases interleaved: the GPU warms over a run);
    every run in the same cycles (a slot that fits the longest variant, then the gap)."""
    from aipm_fast.profile.run import GAP_MIN_S, SAMPLE_PERIOD_S

    base_fn = fn_for(None)
    variants = {(how, part): fn_for((how, part)) for part in parts for how in ("double", "remove")}
    longest = max(seconds_per_call(f, torch) for f in [base_fn, *variants.values()])
    slot = 1.2 * longest + 0.001
    n = max(20, int(diff_s / (slot + GAP_MIN_S + SAMPLE_PERIOD_S / 2)))
    out: dict = {"inferences_per_run": n, "slot_s": slot, "base_j": [], "doubled_j": {}, "removed_j": {}}
    out["difference"] = {}
    out["idle_w"] = counter.idle_w()
    base = counter.per_inference(base_fn, n, seed, slot, label=f"{name} base")
    out["base_j"].append(base[0])
    for part in parts:
        d = counter.per_inference(variants[("double", part)], n, seed, slot, label=f"{name} {part} doubled")
        r = counter.per_inference(variants[("remove", part)], n, seed, slot, label=f"{name} {part} removed")
        after = counter.per_inference(base_fn, n, seed, slot, label=f"{name} base")
        out["base_j"].append(after[0])
        b = 0.5 * (base[0] + after[0])
        # the runs' noise: each run's slope sigma, and half the drift of the base across them
        drift = 0.5 * abs(after[0] - base[0])
        sig = float(np.sqrt(d[1] ** 2 + r[1] ** 2 + base[1] ** 2 + drift**2))
        out["doubled_j"][part], out["removed_j"][part] = d[0], r[0]
        out["difference"][part] = {"doubled_slot_j": d[0] - b, "removed_slot_j": b - r[0], "sigma_j": sig}
        base = after
    bases = ", ".join(f"{x:.4f}" for x in out["base_j"])
    print(f"{name}: base {bases} J per cycle of {slot * 1e3:.1f} ms + gap, {n} per run", flush=True)
    return out


def save_raw(prof, path: str) -> None:
    """The profile's own record (Profile.raw) as one .npz: samples, repetitions, parts, counter."""
    raw = dict(prof.raw)
    parts = raw.pop("parts", {})
    names = list(parts)
    arrays = {f"part_{i}": v for i, v in enumerate(parts.values())}
    np.savez_compressed(path, part_names=np.array(names), **raw, **arrays)


def profile_and_check(name, fn_for, parts_obj, model, depth, checked, args, response, torch, out_dir, counter, max_s):
    from aipm_fast.profile import output
    from aipm_fast.profile import profile as run_profile

    prof = run_profile(
        fn_for(None),
        model=model,
        depth=depth,
        parts=parts_obj,
        response=response,
        alternatives=args.others,
        precision=args.precision,
        max_s=max_s,
        seed=args.seed,
        progress=lambda share, text: None,
    )
    prof.info["title"] = name
    output.write(prof, os.path.join(out_dir, name))
    save_raw(prof, os.path.join(out_dir, name, "raw.npz"))
    f = prof.folded
    print(
        f"{name}: {f.energy_j:.4f} +- {f.energy_sigma_j:.4f} J per inference over {f.duration_s * 1e3:.2f} ms, "
        f"resolution {f.resolution_s * 1e3:.2f} ms, band {f.relative_band:.1%}, {f.n_reps} inferences, "
        f"{prof.wall_s:.1f} s ({prof.stopped})",
        flush=True,
    )
    with counter:
        diff = check_parts(name, fn_for, checked, counter, torch, args.diff_s, args.seed)
        if model is None:
            diff["back_to_back_j"] = counter.per_inference(
                fn_for(None), diff["inferences_per_run"], args.seed, label=f"{name} back to back"
            )[0]
    checks = {}
    truths = part_truths(diff, prof.spans)
    for part in checked:
        e, u = part_energy(prof.table, part)
        checks[part] = agreement(e, u, truths[part])
        c = checks[part]
        print(
            f"  {part}: profile {e:.4f} +- {u:.4f} J; doubled {c['doubled_j']:.4f}, removed {c['removed_j']:.4f} J "
            f"(truth {c['truth_j']:.4f} +- {c['truth_limit_j']:.4f} J, runs' 1 sigma {c['run_sigma_j']:.4f}): "
            f"{c['relative']:+.1%}, within 5%: {c['within_5pct']}, band covers: {c['band_covers']}",
            flush=True,
        )
    return prof, {
        **output.summary(prof),
        "table": prof.table,
        "difference_runs": diff,
        "checks": checks,
    }


def phase_edges(prof, names) -> dict:
    """The 10-90% width of the curve's step at each boundary between consecutive named phases."""
    f = prof.folded
    spans = {s.name: s for s in prof.spans}
    edges = {}
    for prev_name, nm in zip(names[:-1], names[1:]):
        s, prev = spans[nm], spans[prev_name]
        before, after = s.start_s - prev.start_s - 0.002, s.end_s - s.start_s - 0.002
        edges[f"{prev_name} -> {nm}"] = 1e3 * edge_width_s(f.phase_s, f.power_w, s.start_s, before, after)
    return edges


def synthetic(args, response, torch, out_dir, counter, name, phases, checked, max_s) -> dict:
    from aipm_fast.profile import Parts
    from aipm_fast.sensor.drive import Loads

    loads = Loads(torch, 0, unit_s=0.002)
    loads.add_copy(unit_s=0.002)
    parts = Parts(torch)

    def fn_for(change):
        how, which = change if change else ("", None)

        def fn():
            for part, kind, seconds in phases:
                if part == which and how == "remove":
                    continue
                with parts.range(part):
                    loads.block(kind, seconds * (2 if part == which and how == "double" else 1))

        return fn

    with torch.cuda.stream(loads.stream):  # every event and load on one stream
        prof, res = profile_and_check(
            name, fn_for, parts, None, 1, checked, args, response, torch, out_dir, counter, max_s
        )
    res["edge_10_90_ms"] = phase_edges(prof, [p[0] for p in phases])
    res["spans_ms"] = {s.name: [s.start_s * 1e3, s.end_s * 1e3] for s in prof.spans}
    res["loads"] = {k: g[1] for k, g in loads.graphs.items()}
    b2b = res["difference_runs"]["back_to_back_j"]
    with_gaps = float(np.mean(res["difference_runs"]["base_j"]))
    res["back_to_back_j"] = b2b
    # the inference with gaps costs its gap too: compare the inference alone, gap energy taken out
    gap_j = with_gaps - res["energy_per_inference_j"]
    res["gap_j"] = gap_j
    res["gap_effect"] = (res["energy_per_inference_j"] - b2b) / b2b
    print(
        f"{name}: edges 10-90% {', '.join(f'{k} {v:.2f} ms' for k, v in res['edge_10_90_ms'].items())}; "
        f"back to back {b2b:.4f} J per inference by the counter (the profile's inference with gaps "
        f"{res['gap_effect']:+.1%}; with its gap {with_gaps:.4f} J)",
        flush=True,
    )
    return res


def model_check(name, batch, depth, checked, args, response, torch, out_dir, counter) -> dict:
    from aipm_fast.bench import models
    from aipm_fast.profile import Parts

    net = models.build_model(name, device="cuda", dtype=torch.float32)
    x = models.make_inputs(name, models.get_spec(name).native_size, batch, device="cuda", dtype=torch.float32)
    by_name = dict(net.named_modules())
    # what each checked module returns on this input: a removed module returns it, running nothing
    outputs = {}
    hooks = [by_name[m].register_forward_hook(lambda mod, a, out, m=m: outputs.__setitem__(m, out)) for m in checked]
    with torch.no_grad():
        models.forward(net, x)
    for h in hooks:
        h.remove()

    def fn_for(change):
        if change is None:
            return lambda: models.forward(net, x)
        how, which = change

        def fn():
            undo = doubled(by_name[which]) if how == "double" else removed(by_name[which], outputs[which])
            try:
                models.forward(net, x)
            finally:
                undo()

        return fn

    _, res = profile_and_check(
        name, fn_for, Parts(torch), net, depth, checked, args, response, torch, out_dir, counter, args.model_s
    )
    res["batch_size"] = batch
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument(
        "--calibration-file", default=str(ROOT / "bench" / "results" / "h200" / "sensor" / "calibrations.json")
    )
    ap.add_argument(
        "--other-calibration",
        action="append",
        default=[],
        help="another calibration file of this GPU: its response's spread joins the band (repeatable)",
    )
    ap.add_argument("--precision", type=float, default=0.03)
    ap.add_argument("--synthetic-s", type=float, default=20.0, help="the synthetic profiles' time limit")
    ap.add_argument("--separated-s", type=float, default=16.0, help="the separated synthetic profile's limit")
    ap.add_argument("--model-s", type=float, default=14.0, help="each model profile's time limit")
    ap.add_argument("--diff-s", type=float, default=2.0, help="seconds per difference run")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--only", choices=["synthetic", "models"], help="run one half")
    args = ap.parse_args()
    from aipm_fast.sensor.drive import require_cuda

    torch = require_cuda(0, "gpu_profile_checks")
    os.makedirs(args.out_dir, exist_ok=True)
    gpu_name = torch.cuda.get_device_name(0)
    response, entry = load_response(args.calibration_file, gpu_name)
    args.others = [load_response(p, gpu_name)[0] for p in args.other_calibration]
    counter = CounterRuns(torch)
    began = time.monotonic()
    result: dict = {
        "gpu": gpu_name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "response": {"describe": response.describe(), "measured": entry.get("measured"), "driver": entry.get("driver")},
        "args": {k: v for k, v in vars(args).items() if k != "others"},
    }
    path = os.path.join(args.out_dir, "checks.json")

    def save():
        result["wall_s"] = time.monotonic() - began
        result["counter_runs"] = counter.runs
        Path(path).write_text(json.dumps(result, indent=2, default=float) + "\n")

    def section(name, run):
        """One profile and its checks; a failure is recorded and the others still run (one GPU call)."""
        try:
            result[name] = run()
        except Exception as exc:  # noqa: BLE001 (reported, and the script goes on)
            traceback.print_exc()
            result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        save()

    if args.only in (None, "synthetic"):
        for name, phases, checked in SYNTHETIC:
            max_s = args.synthetic_s if name == "synthetic" else args.separated_s
            section(
                name,
                lambda n=name, p=phases, c=checked, m=max_s: synthetic(
                    args, response, torch, args.out_dir, counter, n, p, c, m
                ),
            )
    if args.only in (None, "models"):
        for name, batch, depth, checked in MODELS:
            section(
                name,
                lambda n=name, b=batch, d=depth, c=checked: model_check(
                    n, b, d, c, args, response, torch, args.out_dir, counter
                ),
            )
    save()
    print(f"wrote {path} ({result['wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
