"""What a profile writes: the curve (curve.csv), the energy of the parts (parts.csv), a summary
(profile.json) and a plot (profile.png: power against time within the inference, the parts'
spans shaded). Every file goes through storage.write_atomic."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import math
import os

import numpy as np

from aipm_fast.profile.folding import Folded, Span
from aipm_fast.profile.run import Profile
from aipm_fast.storage import write_atomic

CURVE_COLUMNS = ("phase_ms", "power_w", "sigma_w", "coverage")
PARTS_COLUMNS = ("name", "start_ms", "end_ms", "energy_j", "sigma_j", "share")


def curve_csv(f: Folded) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CURVE_COLUMNS)
    for t, p, u, c in zip(f.phase_s, f.power_w, f.sigma_w, f.coverage):
        w.writerow([f"{t * 1e3:.4f}", f"{p:.3f}", f"{u:.3f}", f"{c:.4f}"])
    return buf.getvalue()


def parts_csv(table: list[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(PARTS_COLUMNS)
    for r in table:
        w.writerow([r["name"], *(_num(r[k]) for k in PARTS_COLUMNS[1:])])
    return buf.getvalue()


def _num(v: float) -> str:
    return "" if not math.isfinite(v) else f"{v:.6g}"


def summary(p: Profile) -> dict:
    f = p.folded
    return {
        "energy_per_inference_j": f.energy_j,
        "energy_sigma_j": f.energy_sigma_j,
        "duration_ms": f.duration_s * 1e3,
        "mean_power_w": f.mean_power_w,
        "resolution_ms": f.resolution_s * 1e3,
        "bin_ms": f.bin_s * 1e3,
        "relative_band": f.relative_band,
        "inferences": f.n_reps,
        "samples": f.n_samples,
        "residual_rms_w": f.residual_rms_w,
        "gap_power_w": [round(float(x), 3) for x in f.gap_power_w],
        "wall_s": p.wall_s,
        "stopped": p.stopped,
        "gaps": p.gaps,
        "method": p.method,
        "uncertainty": "1 sigma: the fit's residual scatter (sandwich), the smoothing's bias and the sensor "
        "response's own uncertainty (the curve through the response moved by its timing's 1 sigma, and "
        "through other calibrations where given), in quadrature",
        "response_sigma_j": f.response_sigma_j(),
        **p.info,
    }


def write(p: Profile, out_dir: str, plot: bool = True) -> list[str]:
    """Write the profile's files into out_dir; returns what was written (the plot is left out,
    and said so by the caller, where matplotlib is missing)."""
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, text in (
        ("curve.csv", curve_csv(p.folded)),
        ("parts.csv", parts_csv(p.table)),
        ("profile.json", json.dumps(_finite(summary(p)), indent=2, allow_nan=False) + "\n"),
    ):
        path = os.path.join(out_dir, name)
        write_atomic(path, text.encode())
        written.append(path)
    if plot and can_plot():
        path = os.path.join(out_dir, "profile.png")
        write_atomic(path, png(p.folded, p.spans, title=p.info.get("title", "")))
        written.append(path)
    return written


def _finite(v):
    """NaN and infinities as null: JSON has no number for them."""
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_finite(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def can_plot() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def png(f: Folded, spans: list[Span], title: str = "") -> bytes:
    """Power against time within the inference with its 1-sigma band, the parts' spans shaded
    (alternating, labelled where there is room)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    inside = f.in_inference  # from the start: coverage falls with the phase
    p, u = f.power_w[inside], f.sigma_w[inside]
    edges_ms = np.arange(p.size + 1) * f.bin_s * 1e3
    top = float((p + u).max()) if p.size else 1.0
    for i, s in enumerate(spans):
        ax.axvspan(s.start_s * 1e3, s.end_s * 1e3, color=("C1" if i % 2 else "C2"), alpha=0.15, lw=0)
        if (s.end_s - s.start_s) > 0.04 * f.duration_s:
            ax.text((s.start_s + s.end_s) * 500, top * 1.02, s.name, rotation=90, fontsize=7, ha="center", va="bottom")
    ax.stairs(p + u, edges_ms, baseline=p - u, fill=True, color="C0", alpha=0.3, lw=0, label="1 sigma")
    ax.stairs(p, edges_ms, baseline=None, color="C0", lw=1.2, label="power")
    ax.set_xlim(0, f.duration_s * 1e3)
    ax.set_ylim(0, top * 1.35)
    ax.set_xlabel("time within the inference (ms)")
    ax.set_ylabel("power (W)")
    ax.set_title(
        (f"{title}: " if title else "")
        + f"{f.energy_j:.4g} J per inference over {f.duration_s * 1e3:.1f} ms, "
        + f"resolution {f.resolution_s * 1e3:.1f} ms",
        fontsize=9,
    )
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
