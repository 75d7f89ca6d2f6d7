"""On a GPU: `aipm-fast profile` validated against energies it did not compute (issue 14, item 3).

1. A synthetic inference of known structure, three phases as named ranges: bf16 matmuls
   ("hot", 10 ms), HBM copies ("copy", 8 ms), a spin kernel ("cool", 10 ms), the Loads of
   `aipm-fast calibrate` (sensor/drive.py). Profiled with random idle gaps; then per phase a
   difference run: the same inference with that phase doubled, N inferences with the same gap
   sequence as N of the undoubled one, the energy counter read at its own update edges around
   each run (base runs before and after, averaged): (E_doubled - E_base) / N is the phase's
   energy, compared with the profile's. The resolution achieved at the phase edges is the 10-90%
   width of the reconstructed curve's step there. The inference back to back (no gaps), by the
   counter, says what the idle gaps change in the energy of one inference.
2. ResNet-50 (batch 64) and ViT-B/16 (batch 32), fp32: profiled with modules as parts (depth 1
   and 3), two modules each checked the same way (the module run twice per inference, its first
   output discarded).

The sensor response is the stored H200 calibration (bench/results/h200/sensor/calibrations.json,
or --calibration-file), used whatever the driver key says. Sums of parts equal to the total hold
by construction and are not checked here.

    source bench/gpu_env.sh /tmp/build.log && python3 bench/gpu_profile_checks.py OUT_DIR

writes OUT_DIR/checks.json (every figure), OUT_DIR/<synthetic|resnet50|vit_b_16>/ (the
profile's curve.csv, parts.csv, profile.json, profile.png) and prints one line per check. About
150 s of GPU time with the defaults.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

#: the synthetic inference: (range name, load kind of sensor/drive.Loads, seconds)
PHASES = (("matmul", "hot", 0.010), ("hbm copy", "copy", 0.008), ("spin", "cool", 0.010))
#: the models and the two modules of each checked by doubling
MODELS = (
    ("resnet50", 64, 1, ("layer2", "layer3")),
    ("vit_b_16", 32, 3, ("encoder.layers.encoder_layer_1", "encoder.layers.encoder_layer_8")),
)
#: a part's energy against its difference run must agree within this share
TOLERANCE = 0.05


# -- what is judged (CPU-side, tested in tests/test_profile.py) -----------------------------------
def edge_width_s(phase_s, power_w, edge_s: float, before_s: float, after_s: float) -> float:
    """The 10-90% width (s) of the curve's step at edge_s, between its mean over `before_s` before
    the edge (from 1 ms before it) and over `after_s` after (from 1 ms after): NaN where the step
    is under 20 W or the crossings are not found within the windows."""
    t, p = np.asarray(phase_s, dtype=float), np.asarray(power_w, dtype=float)
    lo = p[(t >= edge_s - 0.001 - before_s) & (t < edge_s - 0.001)]
    hi = p[(t > edge_s + 0.001) & (t <= edge_s + 0.001 + after_s)]
    if lo.size == 0 or hi.size == 0:
        return float("nan")
    a, b = float(np.mean(lo)), float(np.mean(hi))
    if abs(b - a) < 20.0:
        return float("nan")
    sel = (t >= edge_s - 0.001 - before_s) & (t <= edge_s + 0.001 + after_s)
    tt, x = t[sel], (p[sel] - a) / (b - a)  # 0 before, 1 after
    crossings = []
    for level in (0.1, 0.9):
        above = np.nonzero(x >= level)[0]
        if above.size == 0 or above[0] == 0:
            return float("nan")
        i = int(above[0])
        crossings.append(tt[i - 1] + (level - x[i - 1]) / (x[i] - x[i - 1]) * (tt[i] - tt[i - 1]))
    return float(crossings[1] - crossings[0])


def agreement(profiled_j: float, sigma_j: float, difference_j: float) -> dict:
    """A part's profiled energy against its difference run's."""
    rel = (profiled_j - difference_j) / difference_j if difference_j else float("nan")
    return {
        "profile_j": profiled_j,
        "profile_sigma_j": sigma_j,
        "difference_j": difference_j,
        "relative": rel,
        "within_5pct": bool(abs(rel) <= TOLERANCE),
    }


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
class CounterRuns:
    """Energy per inference by the NVML energy counter, read at its own update edges."""

    def __init__(self, torch, gpu: int = 0):
        import pynvml

        pynvml.nvmlInit()
        self.nvml, self.h, self.torch = pynvml, pynvml.nvmlDeviceGetHandleByIndex(gpu), torch

    def _edge(self) -> float:
        """Wait for the counter's next change; its value (J)."""
        read = self.nvml.nvmlDeviceGetTotalEnergyConsumption
        v0 = read(self.h)
        give_up = time.monotonic() + 2.0
        while (v := read(self.h)) == v0:
            if time.monotonic() > give_up:
                raise RuntimeError("the NVML energy counter did not change in 2 s: no difference runs possible")
            time.sleep(0.0005)
        return v / 1000.0

    def per_inference(self, fn, n: int, seed: int, gaps: bool = True) -> float:
        from aipm_fast.profile.run import GAP_MIN_S, SAMPLE_PERIOD_S

        rng = np.random.default_rng(seed)
        self.torch.cuda.synchronize()
        e0 = self._edge()
        for _ in range(n):
            fn()
            if gaps:
                self.torch.cuda.synchronize()
                time.sleep(GAP_MIN_S + rng.uniform(0.0, SAMPLE_PERIOD_S))
        self.torch.cuda.synchronize()
        return (self._edge() - e0) / n


def doubled(module):
    """Make a module run twice per call (the first output discarded); returns the undo."""
    forward = module.forward

    def twice(*args, **kwargs):
        forward(*args, **kwargs)
        return forward(*args, **kwargs)

    module.forward = twice
    return lambda: setattr(module, "forward", forward)


def reps_for(fn, torch, seconds: float) -> int:
    """How many inferences with gaps last about `seconds`."""
    from aipm_fast.profile.run import GAP_MIN_S, SAMPLE_PERIOD_S

    torch.cuda.synchronize()
    t = time.monotonic()
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    one = (time.monotonic() - t) / 5 + GAP_MIN_S + SAMPLE_PERIOD_S / 2
    return max(20, int(seconds / one))


def check_parts(name, fn_for, parts, counter, torch, diff_s, seed) -> dict:
    """Per part: (doubled - base) / N by the counter, base measured before and after."""
    base_fn = fn_for(None)
    n = reps_for(base_fn, torch, diff_s)
    before = counter.per_inference(base_fn, n, seed)
    out = {"inferences_per_run": n, "base_before_j": before}
    diffs = {}
    for part in parts:
        diffs[part] = counter.per_inference(fn_for(part), n, seed)
    after = counter.per_inference(base_fn, n, seed)
    base = 0.5 * (before + after)
    out.update(base_after_j=after, base_j=base, doubled_j=diffs)
    out["difference_j"] = {part: e - base for part, e in diffs.items()}
    print(f"{name}: base {before:.4f} / {after:.4f} J per inference (with gaps), {n} per run", flush=True)
    return out


def profile_and_check(name, fn_for, parts_obj, model, depth, checked, args, response, torch, out_dir, counter):
    from aipm_fast.profile import output
    from aipm_fast.profile import profile as run_profile

    prof = run_profile(
        fn_for(None),
        model=model,
        depth=depth,
        parts=parts_obj,
        response=response,
        precision=args.precision,
        max_s=args.synthetic_s if model is None else args.model_s,
        seed=args.seed,
        progress=lambda share, text: None,
    )
    prof.info["title"] = name
    output.write(prof, os.path.join(out_dir, name))
    f = prof.folded
    print(
        f"{name}: {f.energy_j:.4f} +- {f.energy_sigma_j:.4f} J per inference over {f.duration_s * 1e3:.2f} ms, "
        f"resolution {f.resolution_s * 1e3:.2f} ms, band {f.relative_band:.1%}, {f.n_reps} inferences, "
        f"{prof.wall_s:.1f} s ({prof.stopped})",
        flush=True,
    )
    diff = check_parts(name, fn_for, checked, counter, torch, args.diff_s, args.seed)
    checks = {}
    for part in checked:
        e, u = part_energy(prof.table, part)
        checks[part] = agreement(e, u, diff["difference_j"][part])
        c = checks[part]
        print(
            f"  {part}: profile {e:.4f} +- {u:.4f} J, difference run {c['difference_j']:.4f} J "
            f"({c['relative']:+.1%}, within 5%: {c['within_5pct']})",
            flush=True,
        )
    return prof, {
        **output.summary(prof),
        "table": prof.table,
        "difference_runs": diff,
        "checks": checks,
    }


def synthetic(args, response, torch, out_dir, counter) -> dict:
    from aipm_fast.profile import Parts
    from aipm_fast.sensor.drive import Loads

    loads = Loads(torch, 0, unit_s=0.002)
    loads.add_copy(unit_s=0.002)
    parts = Parts(torch)

    def fn_for(double):
        def fn():
            for name, kind, seconds in PHASES:
                with parts.range(name):
                    loads.block(kind, seconds * (2 if name == double else 1))

        return fn

    with torch.cuda.stream(loads.stream):  # every event and load on one stream
        prof, res = profile_and_check(
            "synthetic", fn_for, parts, None, 1, [p[0] for p in PHASES], args, response, torch, out_dir, counter
        )
        n = res["difference_runs"]["inferences_per_run"]
        res["back_to_back_j"] = counter.per_inference(fn_for(None), n, args.seed, gaps=False)
    f = prof.folded
    spans = {s.name: s for s in prof.spans}
    edges = {}
    names = [p[0] for p in PHASES]
    for i, nm in enumerate(names):
        s = spans[nm]
        if i > 0:
            prev = spans[names[i - 1]]
            edges[f"{names[i - 1]} -> {nm}"] = edge_width_s(
                f.phase_s, f.power_w, s.start_s, s.start_s - prev.start_s - 0.002, s.end_s - s.start_s - 0.002
            )
    res["edge_10_90_ms"] = {k: v * 1e3 for k, v in edges.items()}
    res["spans_ms"] = {s.name: [s.start_s * 1e3, s.end_s * 1e3] for s in prof.spans}
    res["loads"] = {k: g[1] for k, g in loads.graphs.items()}
    gap_effect = (res["energy_per_inference_j"] - res["back_to_back_j"]) / res["back_to_back_j"]
    res["gap_effect"] = gap_effect
    print(
        f"synthetic: edges 10-90% {', '.join(f'{k} {v:.2f} ms' for k, v in res['edge_10_90_ms'].items())}; "
        f"back to back {res['back_to_back_j']:.4f} J per inference by the counter "
        f"(profile with gaps {gap_effect:+.1%})",
        flush=True,
    )
    return res


def model_check(name, batch, depth, checked, args, response, torch, out_dir, counter) -> dict:
    from aipm_fast.bench import models
    from aipm_fast.profile import Parts

    net = models.build_model(name, device="cuda", dtype=torch.float32)
    x = models.make_inputs(name, models.get_spec(name).native_size, batch, device="cuda", dtype=torch.float32)
    by_name = dict(net.named_modules())

    def fn_for(double):
        if double is None:
            return lambda: models.forward(net, x)

        def fn():
            undo = doubled(by_name[double])
            try:
                models.forward(net, x)
            finally:
                undo()

        return fn

    _, res = profile_and_check(name, fn_for, Parts(torch), net, depth, checked, args, response, torch, out_dir, counter)
    res["batch_size"] = batch
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument(
        "--calibration-file", default=str(ROOT / "bench" / "results" / "h200" / "sensor" / "calibrations.json")
    )
    ap.add_argument("--precision", type=float, default=0.03)
    ap.add_argument("--synthetic-s", type=float, default=24.0, help="the synthetic profile's time limit")
    ap.add_argument("--model-s", type=float, default=16.0, help="each model profile's time limit")
    ap.add_argument("--diff-s", type=float, default=3.0, help="seconds per difference run")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--only", choices=["synthetic", "models"], help="run one half")
    args = ap.parse_args()
    from aipm_fast.sensor.drive import require_cuda

    torch = require_cuda(0, "gpu_profile_checks")
    os.makedirs(args.out_dir, exist_ok=True)
    gpu_name = torch.cuda.get_device_name(0)
    response, entry = load_response(args.calibration_file, gpu_name)
    counter = CounterRuns(torch)
    began = time.monotonic()
    result: dict = {
        "gpu": gpu_name,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "response": {"describe": response.describe(), "measured": entry.get("measured"), "driver": entry.get("driver")},
        "args": vars(args),
    }
    path = os.path.join(args.out_dir, "checks.json")

    def save():
        result["wall_s"] = time.monotonic() - began
        Path(path).write_text(json.dumps(result, indent=2, default=float) + "\n")

    if args.only in (None, "synthetic"):
        result["synthetic"] = synthetic(args, response, torch, args.out_dir, counter)
        save()
    if args.only in (None, "models"):
        for name, batch, depth, checked in MODELS:
            result[name] = model_check(name, batch, depth, checked, args, response, torch, args.out_dir, counter)
            save()
    save()
    print(f"wrote {path} ({result['wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
