"""The console table of a benchmark summary (rich), and the number formats it shares with the plots."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

__all__ = ["JOULES_PER_WH", "fmt", "fmt_exact", "format_table", "is_training", "missing_reasons", "pruning_notes"]

#: what each reason column of a summary explains
_REASONS = {
    "energy_missing_reason": "energy",
    "process_missing_reason": "per-process SM and memory",
    "gpm_missing_reason": "GPM (SM active, tensor, DRAM BW)",
    "model_count_missing_reason": "parameters and FLOPs",
    "loss_missing_reason": "final loss",
    "accuracy_missing_reason": "accuracy",
}

JOULES_PER_WH = 3600.0


def is_training(summary: pd.DataFrame) -> bool:
    """Whether a summary is of training runs (`aipm-fast train`), not inference runs."""
    return "mode" in summary and bool((summary["mode"] == "train").any())


def missing_reasons(summary: pd.DataFrame) -> dict[str, str]:
    """{what: why} for every figure of a summary that some size lacks, with the reason given."""
    found = {}
    for col, what in _REASONS.items():
        if col in summary:
            reasons = summary[col].dropna()
            if len(reasons):
                found[what] = str(reasons.iloc[0])
    return found


def pruning_notes(summary: pd.DataFrame) -> list[str]:
    """What the model's pruning was and what its FLOP columns mean, for a table's caption."""
    if "prune_method" not in summary or not summary["prune_method"].notna().any():
        return []
    first = summary[summary["prune_method"].notna()].iloc[0]
    notes = ["GFLOP/inf run: what the kernels execute; nonzero: only multiply-adds by nonzero weights"]
    if first["prune_method"] != "none":
        notes.append(
            f"pruned: {first['prune_method']}, {first['sparsity_format']}, sparsity {fmt_exact(first['sparsity'])} "
            f"({first['prune_score']}); left dense: {first['prune_left_dense']}"
        )
    return notes


def fmt(value, significant: int = 3) -> str:
    """A number with about `significant` significant digits, thousands separated; '-' for NaN."""
    if value is None or not np.isfinite(value):
        return "-"
    value = float(value)
    if value == 0:
        return "0"
    if abs(value) < 1e-3:  # a figure at rounding level (a dynamic energy of a steady load): no row of zeros
        return f"{value:.{max(significant - 1, 0)}e}"
    decimals = max(0, significant - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{decimals}f}"


def fmt_exact(value) -> str:
    """A size or a count as written: 224, 0.5; '-' for NaN."""
    if value is None or not np.isfinite(value):
        return "-"
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def format_table(summary: pd.DataFrame, title: str | None = None):
    """A compact rich Table of a summary: energy per inference (per step and sample, and per
    run, for training), latency, throughput, GPU load, and a training run's loss and accuracy.

    Columns whose values are all NaN (not measured) are left out.
    """

    def col(name):
        return summary[name].to_numpy(dtype=np.float64) if name in summary else np.full(len(summary), np.nan)

    if is_training(summary):
        return _training_table(summary, title, col)

    energy_spread = col("total_joules_per_inference_iqr_pct")
    energy_spread = np.where(np.isfinite(energy_spread), energy_spread, col("gpu_joules_per_inference_iqr_pct"))
    columns = [
        ("size", col("size"), fmt_exact),
        ("batch", col("batch_size"), fmt_exact),
        ("runs", col("runs"), fmt_exact),
        ("GPU J/inf", col("gpu_joules_per_inference"), fmt),
        ("CPU J/inf", col("cpu_joules_per_inference"), fmt),
        ("total J/inf", col("total_joules_per_inference"), fmt),
        ("dyn. total J/inf", col("total_dynamic_joules_per_inference"), fmt),
        ("latency ms", col("latency_median_s") * 1e3, fmt),
        ("throughput/s", col("throughput_per_s"), fmt),
        ("GPU util %", col("gpu_utilization_pct"), lambda v: fmt(v, 2)),
        ("proc SM %", col("process_sm_pct"), lambda v: fmt(v, 2)),
        ("proc GPU mem GB", col("process_gpu_memory_gb"), fmt),
        ("torch peak GB", col("gpu_memory_gb"), fmt),
        ("SM active %", col("gpm_sm_active_pct"), lambda v: fmt(v, 2)),
        ("tensor %", col("gpm_tensor_active_pct"), lambda v: fmt(v, 2)),
        ("DRAM BW %", col("gpm_dram_bw_pct"), lambda v: fmt(v, 2)),
        ("params M", col("params_total") / 1e6, fmt),
        ("eff. sparsity %", col("effective_sparsity") * 100, lambda v: fmt(v, 3)),
        ("GFLOP/inf run", col("flops_executed") / 1e9, fmt),
        ("GFLOP/inf nonzero", col("flops_effective") / 1e9, fmt),
        ("2:4 FLOP share %", col("semi_structured_flops_share") * 100, lambda v: fmt(v, 3)),
        ("J spread %", energy_spread, lambda v: fmt(v, 2)),
    ]
    if not np.isfinite(energy_spread).any():
        columns.append(("latency spread %", col("latency_median_s_iqr_pct"), lambda v: fmt(v, 2)))
    return _table(summary, title, columns, [])


def _training_table(summary: pd.DataFrame, title: str | None, col):
    energy_spread = col("total_joules_per_step_iqr_pct")
    energy_spread = np.where(np.isfinite(energy_spread), energy_spread, col("gpu_joules_per_step_iqr_pct"))
    columns = [
        ("size", col("size"), fmt_exact),
        ("batch", col("batch_size"), fmt_exact),
        ("runs", col("runs"), fmt_exact),
        ("steps", col("n_steps"), fmt_exact),
        ("params", col("params_total"), fmt_exact),
        ("nonzero params", col("params_nonzero"), fmt_exact),
        ("eff. sparsity %", col("effective_sparsity") * 100, lambda v: fmt(v, 3)),
        ("GPU J/step", col("gpu_joules_per_step"), fmt),
        ("CPU J/step", col("cpu_joules_per_step"), fmt),
        ("total J/step", col("total_joules_per_step"), fmt),
        ("step J IQR %", col("total_joules_per_step_iqr_pct"), lambda v: fmt(v, 2)),
        ("total J/sample", col("total_joules_per_inference"), fmt),
        ("Wh/run", col("total_energy_j") / JOULES_PER_WH, fmt),
        ("run s", col("duration_s"), fmt),
        ("step ms", col("latency_median_s") * 1e3, fmt),
        ("samples/s", col("throughput_per_s"), fmt),
        ("final loss", col("final_loss"), fmt),
        ("accuracy %", col("accuracy") * 100.0, fmt),
        ("GPU util %", col("gpu_utilization_pct"), lambda v: fmt(v, 2)),
        ("torch peak GB", col("gpu_memory_gb"), fmt),
        ("J/step spread %", energy_spread, lambda v: fmt(v, 2)),
    ]
    if not np.isfinite(energy_spread).any():
        columns.append(("step time spread %", col("latency_median_s_iqr_pct"), lambda v: fmt(v, 2)))
    notes = [
        "J/step: median over a run's steps (step J IQR %: their spread within a run); J/sample and Wh/run: "
        "the whole run's window"
    ]
    accuracy_on = summary["accuracy_on"].dropna() if "accuracy_on" in summary else pd.Series(dtype=str)
    if len(accuracy_on):
        notes.append(f"accuracy on the {accuracy_on.iloc[0]}")
    return _table(summary, title, columns, notes)


def _table(summary: pd.DataFrame, title: str | None, columns: list, notes: list[str]):
    from rich.table import Table

    columns = [c for c in columns if np.isfinite(c[1]).any()]
    notes = ["medians over runs; spread: interquartile range over runs, % of the median", *notes]
    notes += pruning_notes(summary)
    notes += [f"{what} not measured: {why}" for what, why in missing_reasons(summary).items()]
    table = Table(title=title, caption="\n".join(notes), caption_justify="left")
    for name, _, _ in columns:
        table.add_column(name, justify="right")
    for i in range(len(summary)):
        table.add_row(*[fmt(values[i]) for _, values, fmt in columns])
    return table
