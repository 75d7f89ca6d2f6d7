"""The runs of a benchmark folder reduced to one row per input size: medians and spread."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd

from aipm_fast.bench.folder import load_runs
from aipm_fast.bench.runfile import (
    MEASURED_COLUMNS,
    MODEL_COLUMNS,
    MODEL_TEXT_COLUMNS,
    REASON_COLUMNS,
    TRAINING_TEXT_COLUMNS,
)

__all__ = ["COUNT_COLUMNS", "SPREAD_COLUMNS", "counts_written_whole", "summarize", "write_summary"]

#: Columns of counts, written whole: the CSV's 6 significant digits would make a VGG-D's
#: 15,255,626 parameters read 15,255,600.
COUNT_COLUMNS = ("n_inferences", "n_steps", "params_dense", "params_total", "params_nonzero", "prunable_params_dense")

#: Columns whose run-to-run spread the summary reports (IQR %, min, max).
SPREAD_COLUMNS = (
    "total_joules_per_inference",
    "gpu_joules_per_inference",
    "latency_median_s",
    "total_joules_per_step",
    "gpu_joules_per_step",
)


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per input size, sorted by size.

    Columns: size, batch_size, runs (how many), the median over runs of every measured column
    (same names as in load_runs; NaN where no run measured it), and for each of
    SPREAD_COLUMNS its run-to-run spread: ``<col>_iqr_pct`` (interquartile range / median x
    100, linear quantiles), ``<col>_min`` and ``<col>_max``; the model as it ran
    (runfile.MODEL_COLUMNS and MODEL_TEXT_COLUMNS: its pruning, parameters and FLOPs per
    inference); and, where runs hold them, what a training run measured (TRAINING_TEXT_COLUMNS)
    and why a figure is missing (REASON_COLUMNS): the first run's.
    """
    missing = [c for c in ("size", "batch_size", *MEASURED_COLUMNS) if c not in runs.columns]
    if missing:
        raise ValueError(f"runs lacks column(s) {', '.join(missing)}: pass the frame of load_runs()")
    if runs.empty:
        raise ValueError("no runs to summarize")
    rows = []
    for size, group in runs.groupby("size", sort=True):
        batches = group["batch_size"].unique()
        if batches.size != 1:
            raise ValueError(f"size {size}: runs with different batch sizes {sorted(batches.tolist())}")
        row: dict = {"size": size, "batch_size": int(batches[0]), "runs": int(len(group))}
        for col in MEASURED_COLUMNS:
            row[col] = float(group[col].astype(np.float64).median())  # NaN when all are NaN
        for col in MODEL_COLUMNS:  # the model as it ran: one value per size (NaN where not counted)
            row[col] = float(group[col].astype(np.float64).median()) if col in group else float("nan")
        for col in MODEL_TEXT_COLUMNS:
            values = group[col].dropna() if col in group else pd.Series(dtype=object)
            row[col] = str(values.iloc[0]) if len(values) else None
        for col in SPREAD_COLUMNS:
            values = group[col].astype(np.float64).dropna()
            if values.empty:
                row[f"{col}_iqr_pct"] = row[f"{col}_min"] = row[f"{col}_max"] = float("nan")
                continue
            median = float(values.median())
            iqr = float(values.quantile(0.75) - values.quantile(0.25))
            row[f"{col}_iqr_pct"] = iqr / abs(median) * 100.0 if median != 0 else float("nan")
            row[f"{col}_min"] = float(values.min())
            row[f"{col}_max"] = float(values.max())
        for col in (*TRAINING_TEXT_COLUMNS, *REASON_COLUMNS):
            if col in group:
                reasons = group[col].dropna()
                row[col] = str(reasons.iloc[0]) if len(reasons) else None
        rows.append(row)
    return pd.DataFrame(rows)


def write_summary(out_dir, summary: pd.DataFrame | None = None) -> str:
    """OUT/summary.csv of the summary given (by default summarize(load_runs(out_dir))); returns its path."""
    out_dir = os.fspath(out_dir)
    if summary is None:
        summary = summarize(load_runs(out_dir))
    path = os.path.join(out_dir, "summary.csv")
    tmp = path + ".tmp"
    counts_written_whole(summary, COUNT_COLUMNS).to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)
    return path


def counts_written_whole(frame: pd.DataFrame, columns) -> pd.DataFrame:
    """A copy of frame whose count columns are text, every digit kept (a median of two counts
    may end in .5; NaN is left empty), for a CSV whose other figures are rounded."""
    out = frame.copy()
    for col in columns:
        if col in out:
            out[col] = [
                "" if not np.isfinite(v) else (str(int(v)) if float(v).is_integer() else repr(float(v)))
                for v in out[col].astype(np.float64)
            ]
    return out
