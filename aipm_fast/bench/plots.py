"""The report's PNGs, drawn into OUT/plots/: energy and latency against input size, the
correlations between runs, the power trace of one run, and a training folder's loss curves.

A plot whose data was not measured (no GPU, no RAPL, no samples) is skipped with the reason.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np
import pandas as pd

from aipm_fast.bench.folder import load_runs, read_inferences, read_loss_curve, read_samples, run_folder
from aipm_fast.bench.runfile import ENERGY_PARTS, ReportError
from aipm_fast.bench.summary import summarize
from aipm_fast.bench.table import fmt_exact, is_training
from aipm_fast.bench.traces import power_traces
from aipm_fast.storage import parts_folder, sample_readings

__all__ = ["PLOT_NAMES", "plot_report"]

logger = logging.getLogger(__name__)

#: Quantities correlated in spearman.png, with their short labels.
CORRELATED = {
    "size": "size",
    "latency_median_s": "latency",
    "throughput_per_s": "throughput",
    "gpu_utilization_pct": "GPU util",
    "gpu_memory_gb": "GPU mem",
    "gpu_joules_per_inference": "GPU J/inf",
    "cpu_joules_per_inference": "CPU J/inf",
    "total_joules_per_inference": "total J/inf",
    "total_dynamic_joules_per_inference": "dyn. total J/inf",
}

PLOT_NAMES = ("energy_vs_size.png", "latency_energy_vs_size.png", "spearman.png", "power_trace.png")
TRAINING_PLOT_NAMES = ("loss_curve.png",)  # drawn for a training folder only
FIGSIZE_IN = (6.0, 4.0)
DPI = 100
MAX_BOUNDARIES = 200  # inference boundaries drawn on the power trace


class _Skip(Exception):
    """A plot cannot be drawn because its data was not measured; the message says why."""


def _figure(figsize=FIGSIZE_IN):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    fig.tight_layout()
    tmp = path + ".tmp"
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)
    return path


def _size_axis(ax, sizes) -> None:
    sizes = np.asarray(sorted(set(sizes)), dtype=np.float64)
    if sizes.size and sizes.min() > 0 and sizes.max() / sizes.min() >= 16:
        ax.set_xscale("log", base=2)
    if 0 < sizes.size <= 12:
        ax.set_xticks(sizes)
        ax.set_xticklabels([fmt_exact(s) for s in sizes], fontsize=8)
        ax.minorticks_off()
    ax.set_xlabel("input size")


def _model(runs: pd.DataFrame) -> str:
    return str(runs["model"].iloc[0]) if "model" in runs and len(runs) else "model"


def _unit(runs: pd.DataFrame) -> str:
    """What joules_per_inference is per: an inference, or a training run's sample."""
    return "training sample" if "mode" in runs and bool((runs["mode"] == "train").any()) else "inference"


def _inference_label(runs: pd.DataFrame) -> str:
    batches = list(runs["batch_size"].unique()) if "batch_size" in runs else []
    if len(batches) == 1 and batches[0] > 1:
        return f"J per {_unit(runs)} (batch of {int(batches[0])})"
    return f"J per {_unit(runs)}"


def _no_energy_reason(runs: pd.DataFrame) -> str:
    reasons = []
    if "energy_missing_reason" in runs:
        reasons = sorted({str(r) for r in runs["energy_missing_reason"] if isinstance(r, str) and r})
    return "no energy per inference was measured" + (f": {'; '.join(reasons)}" if reasons else "")


def _per_size(runs: pd.DataFrame, col: str):
    """sizes, median, min, max of a column over the runs of each size (finite values only)."""
    values = runs[["size", col]].dropna()
    if values.empty:
        return None
    g = values.groupby("size", sort=True)[col]
    median = g.median()
    return (
        median.index.to_numpy(np.float64),
        median.to_numpy(np.float64),
        g.min().to_numpy(np.float64),
        g.max().to_numpy(np.float64),
    )


def _plot_energy_vs_size(path: str, runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    parts = [(p, _per_size(runs, f"{p}_joules_per_inference")) for p in ENERGY_PARTS]
    parts = [(p, s) for p, s in parts if s is not None]
    if not parts:
        raise _Skip(_no_energy_reason(runs))
    fig = _figure()
    ax = fig.add_subplot()
    markers = {"gpu": "o", "cpu": "s", "total": "^"}
    for part, (sizes, med, lo, hi) in parts:
        yerr = np.vstack([np.maximum(med - lo, 0), np.maximum(hi - med, 0)])
        ax.errorbar(
            sizes,
            med,
            yerr=yerr,
            marker=markers[part],
            capsize=3,
            linewidth=1.2,
            markersize=4,
            label=part.upper() if part != "total" else "total",
        )
    _size_axis(ax, runs["size"])
    ax.set_ylabel(_inference_label(runs))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{_model(runs)}: energy per {_unit(runs)} (median, min-max over runs)", fontsize=9)
    return _save(fig, path)


def _pearson(x: np.ndarray, y: np.ndarray) -> str:
    if x.size < 3:
        return f"Pearson r n/a ({x.size} size{'s' if x.size != 1 else ''}, need 3)"
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return "Pearson r n/a (constant values)"
    try:
        from scipy.stats import pearsonr
    except ImportError:
        return f"Pearson r = {float(np.corrcoef(x, y)[0, 1]):.3f}"
    r, p = pearsonr(x, y)
    return f"Pearson r = {float(r):.3f} (p = {float(p):.2g})"


def _plot_latency_energy(path: str, runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    part = next(
        (
            p
            for p in ("total", "gpu", "cpu")
            if np.isfinite(summary[f"{p}_joules_per_inference"].to_numpy(np.float64)).any()
        ),
        None,
    )
    if part is None:
        raise _Skip(_no_energy_reason(runs))
    energy_col = f"{part}_joules_per_inference"
    both = summary[["size", "latency_median_s", energy_col]].dropna()
    if both.empty:
        raise _Skip(f"no input size has both a latency and {energy_col}")
    sizes = both["size"].to_numpy(np.float64)
    latency_ms = both["latency_median_s"].to_numpy(np.float64) * 1e3
    energy = both[energy_col].to_numpy(np.float64)
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(sizes, latency_ms, marker="o", color="tab:blue", label="latency")
    ax.set_ylabel("median latency (ms)", color="tab:blue")
    ax.tick_params(axis="y", labelcolor="tab:blue")
    _size_axis(ax, sizes)
    ax.grid(True, alpha=0.3)
    ax2 = ax.twinx()
    ax2.plot(sizes, energy, marker="s", color="tab:red", label=f"{part} J/inference")
    ax2.set_ylabel(f"{part} {_inference_label(runs)}", color="tab:red")
    ax2.tick_params(axis="y", labelcolor="tab:red")
    ax.set_title(f"{_model(runs)}: latency and {part} energy per inference\n{_pearson(latency_ms, energy)}", fontsize=9)
    return _save(fig, path)


def _plot_spearman(path: str, runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    cols = []
    for col in CORRELATED:
        if col not in runs:
            continue
        values = runs[col].astype(np.float64).dropna()
        if values.nunique() >= 2:
            cols.append(col)
    if len(runs) < 3:
        raise _Skip(f"{len(runs)} run(s): a correlation needs at least 3")
    if len(cols) < 2:
        raise _Skip("fewer than two quantities vary across runs")
    corr = runs[cols].astype(np.float64).corr(method="spearman", min_periods=3)
    fig = _figure((6.0, 5.0))
    ax = fig.add_subplot()
    matrix = corr.to_numpy()
    image = ax.imshow(np.ma.masked_invalid(matrix), cmap="coolwarm", vmin=-1, vmax=1)
    labels = [CORRELATED[c] for c in cols]
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(cols)))
    ax.set_yticklabels(labels, fontsize=8)
    for i in range(len(cols)):
        for j in range(len(cols)):
            v = matrix[i, j]
            ax.text(
                j,
                i,
                "n/a" if not np.isfinite(v) else f"{v:.2f}",
                ha="center",
                va="center",
                fontsize=7,
                color="white" if np.isfinite(v) and abs(v) > 0.6 else "black",
            )
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(f"{_model(runs)}: Spearman correlation over {len(runs)} runs", fontsize=9)
    return _save(fig, path)


def _trace_run(out_dir: str, runs: pd.DataFrame):
    """The first run of the largest size that has samples.parquet: (row, run folder) or None."""
    for size in sorted(runs["size"].unique(), reverse=True):
        for _, row in runs[runs["size"] == size].sort_values("run").iterrows():
            run_dir = (
                row["path"]
                if "path" in row and isinstance(row["path"], str)
                else run_folder(out_dir, fmt_exact(size), int(row["run"]))
            )
            samples = os.path.join(run_dir, "samples.parquet")
            if os.path.isfile(samples) or os.path.isdir(parts_folder(samples)):
                return row, run_dir
    return None


def _plot_power_trace(path: str, runs: pd.DataFrame, summary: pd.DataFrame, out_dir: str) -> str:
    found = _trace_run(out_dir, runs)
    if found is None:
        raise _Skip("no run has samples.parquet")
    row, run_dir = found
    samples_path = os.path.join(run_dir, "samples.parquet")
    samples = read_samples(samples_path)
    if samples.empty:
        raise _Skip(f"{samples_path} holds no samples")
    traces = power_traces(samples, readings=sample_readings(samples_path))
    if not traces:
        channels = ", ".join(sorted(samples["channel"].astype(str).unique()))
        raise _Skip(f"{samples_path} has no power or energy channel with two readings (channels: {channels})")
    inferences_path = os.path.join(run_dir, "inferences.csv")
    inferences = None
    if os.path.exists(inferences_path):
        inferences = read_inferences(inferences_path)
    else:
        logger.warning("%s is missing: the power trace is drawn without inference boundaries", inferences_path)
    if inferences is not None:
        t0 = int(inferences["start_ns"].iloc[0])
    else:
        t0 = min(int(t[0]) for t, _, _ in traces.values())

    fig = _figure()
    ax = fig.add_subplot()
    for name, (t, w, kind) in traces.items():
        x = (t - t0) * 1e-9
        if kind == "counter":
            ax.step(x, w, where="post", linewidth=1.0, label=f"{name} (d/dt)")
        else:
            ax.plot(x, w, linewidth=0.9, label=name)
    if inferences is not None:
        starts = inferences["start_ns"].to_numpy(np.int64)
        ends = inferences["end_ns"].to_numpy(np.int64)
        ax.axvspan(0.0, (int(ends.max()) - t0) * 1e-9, color="0.5", alpha=0.08, linewidth=0)
        pick = np.unique(np.linspace(0, starts.size - 1, min(starts.size, MAX_BOUNDARIES)).astype(np.int64))
        for s in starts[pick]:
            ax.axvline((int(s) - t0) * 1e-9, color="0.5", alpha=0.3, linewidth=0.4)
    ax.set_xlabel("time since the first inference (s)" if inferences is not None else "time (s)")
    ax.set_ylabel("power (W)")
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    shown = (
        ""
        if inferences is None or len(inferences) <= MAX_BOUNDARIES
        else f", {MAX_BOUNDARIES} of {len(inferences)} inference starts shown"
    )
    ax.set_title(f"{_model(runs)}, size {fmt_exact(row['size'])}, run {int(row['run'])}: power{shown}", fontsize=9)
    return _save(fig, path)


def _plot_loss_curve(path: str, runs: pd.DataFrame, summary: pd.DataFrame) -> str:
    """Training loss against step, one line per run (its loss.csv)."""
    curves = []
    for _, row in runs.iterrows():
        file = os.path.join(row["path"], "loss.csv")
        if os.path.exists(file):
            curves.append((row, read_loss_curve(file)))
    if not curves:
        raise _Skip("no run folder holds a loss.csv")
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    for row, curve in curves:
        ax.plot(curve["step"], curve["loss"], lw=0.8, label=f"size {fmt_exact(row['size'])} run {int(row['run'])}")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(True, alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=7, loc="best")
    ax.set_title(f"{_model(runs)}: training loss per step", fontsize=9)
    return _save(fig, path)


def _plot_all(out_dir: str, runs: pd.DataFrame, summary: pd.DataFrame):
    plots_dir = os.path.join(out_dir, "plots")
    written: list[str] = []
    skipped: dict[str, str] = {}
    training = is_training(summary)
    if importlib.util.find_spec("matplotlib") is None:
        reason = "matplotlib is not installed (pip install 'aipm-fast[plot]')"
        return written, {name: reason for name in PLOT_NAMES + (TRAINING_PLOT_NAMES if training else ())}
    os.makedirs(plots_dir, exist_ok=True)
    plots = {
        "energy_vs_size.png": _plot_energy_vs_size,
        "latency_energy_vs_size.png": _plot_latency_energy,
        "spearman.png": _plot_spearman,
        "power_trace.png": lambda p, r, s: _plot_power_trace(p, r, s, out_dir),
    }
    if training:
        plots["loss_curve.png"] = _plot_loss_curve
    for name, draw in plots.items():
        path = os.path.join(plots_dir, name)
        try:
            written.append(draw(path, runs, summary))
            continue
        except ReportError:
            raise
        except _Skip as exc:
            skipped[name] = str(exc)
            logger.info("%s skipped: %s", name, exc)
        except Exception as exc:  # one plot that fails does not cost the others
            skipped[name] = f"failed: {type(exc).__name__}: {exc}"
            logger.warning("%s could not be drawn", name, exc_info=True)
        for stale in (path, path + ".tmp"):  # no plot left over from an earlier report
            if os.path.exists(stale):
                os.remove(stale)
    return written, skipped


def plot_report(
    out_dir, runs: pd.DataFrame | None = None, summary: pd.DataFrame | None = None, skipped: dict | None = None
) -> list[str]:
    """Draw the report's PNGs into OUT/plots/; returns the paths written.

    energy_vs_size.png, latency_energy_vs_size.png, spearman.png and power_trace.png, and for a
    training folder loss_curve.png. A plot
    whose data was not measured is skipped: the reason is logged and, when `skipped` is a dict,
    stored there under the plot's file name. runs and summary are read from out_dir unless
    given. A corrupt run file raises ReportError.
    """
    out_dir = os.fspath(out_dir)
    if runs is None:
        runs = load_runs(out_dir)
    if summary is None:
        summary = summarize(runs)
    written, why = _plot_all(out_dir, runs, summary)
    if skipped is not None:
        skipped.update(why)
    return written
