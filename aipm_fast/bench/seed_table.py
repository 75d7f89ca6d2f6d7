"""The seed's summary table: several models at their native sizes and batch sizes, one row each.

AIPowerMeter's deep-learning benchmark summarised each model in one row: joules per inference,
batch size, "%GPU SM used" and "GPU MEM USED (GB)". `aipm-fast bench --model a,b,c` runs each
model into OUT/<model>/ and writes OUT/seed_table.csv and OUT/seed_table.md from their
summary.csv files (`aipm-fast report OUT` rebuilds them); `aipm-fast train --model a,b` does the
same for training folders, whose rows are the SNIP paper's table (TRAINING_COLUMNS). The columns say which quantity each
figure is: the process's SM utilisation and GPU memory as AIPowerMeter measured them (per
process, through NVML), the device's utilisation beside them, torch's peak allocated tensors,
and GPM's activities where the GPU gives them.
"""

from __future__ import annotations

import json
import math
import os

import pandas as pd

from aipm_fast.bench.runfile import ReportError
from aipm_fast.bench.summary import counts_written_whole
from aipm_fast.bench.table import JOULES_PER_WH, fmt, fmt_exact, is_training, missing_reasons
from aipm_fast.storage import write_atomic

__all__ = [
    "SEED_COLUMNS",
    "TRAINING_COLUMNS",
    "format_seed_table",
    "model_folders",
    "seed_table",
    "to_markdown",
    "write_seed_table",
]

#: summary.csv column -> the seed table's column (in this order)
SEED_COLUMNS = {
    "size": "size",
    "batch_size": "batch size",
    "runs": "runs",
    "total_joules_per_inference": "J/inference",
    "gpu_joules_per_inference": "GPU J/inference",
    "process_sm_pct": "%GPU SM used (process)",
    "gpu_utilization_pct": "GPU util % (device)",
    "process_gpu_memory_gb": "GPU MEM USED (GB, process)",
    "gpu_memory_gb": "torch peak allocated (GB)",
    "gpm_sm_active_pct": "SM active %",
    "gpm_tensor_active_pct": "tensor active %",
    "gpm_dram_bw_pct": "DRAM BW %",
    "latency_median_s": "latency (ms)",
    "throughput_per_s": "inferences/s",
}


#: a training folder's summary.csv column -> (the table's column, factor): the SNIP paper's table
#: (parameters, time and Wh per run, accuracy) with the energy per step and per sample
TRAINING_COLUMNS = {
    "size": ("size", 1.0),
    "batch_size": ("batch size", 1.0),
    "runs": ("runs", 1.0),
    "n_steps": ("steps", 1.0),
    "params_total": ("parameters", 1.0),
    "params_nonzero": ("nonzero parameters", 1.0),
    "effective_sparsity": ("effective sparsity %", 100.0),
    "duration_s": ("time per run (s)", 1.0),
    "total_energy_j": ("Wh per run", 1.0 / JOULES_PER_WH),
    "total_joules_per_step": ("J/step", 1.0),
    "gpu_joules_per_step": ("GPU J/step", 1.0),
    "total_joules_per_inference": ("J/sample", 1.0),
    "final_loss": ("final loss", 1.0),
    "accuracy": ("accuracy %", 100.0),
    "latency_median_s": ("step (ms)", 1e3),
    "throughput_per_s": ("samples/s", 1.0),
    "gpu_memory_gb": ("torch peak allocated (GB)", 1.0),
}
#: columns written as counts, not rounded figures
_EXACT = {"size", "batch size", "runs", "steps", "parameters", "nonzero parameters"}


def model_folders(root) -> dict[str, str]:
    """{model: its bench folder} for the subfolders of root that hold a summary.csv."""
    root = os.fspath(root)
    found = {}
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isfile(os.path.join(folder, "summary.csv")):
            found[name] = folder
    return found


def seed_table(folders: dict[str, str]) -> pd.DataFrame:
    """One row per model and size: model, precision, the SEED_COLUMNS (NaN where not measured,
    latency in ms), or for a training folder the TRAINING_COLUMNS, and `not measured` (what is
    missing and why)."""
    rows = []
    for model, folder in folders.items():
        path = os.path.join(folder, "summary.csv")
        try:
            summary = pd.read_csv(path)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
            raise ReportError(path, f"not a readable summary ({exc})") from None
        meta = _meta(folder)
        reasons = missing_reasons(summary)
        if "energy" not in reasons and _all_nan(summary, "cpu_joules_per_inference"):
            reasons["host (CPU) energy"] = "no host power source was readable: J/inference is the GPU's alone"
        missing = "; ".join(f"{what}: {why}" for what, why in reasons.items())
        if is_training(summary):
            columns = TRAINING_COLUMNS
        else:
            columns = {col: (name, 1e3 if col == "latency_median_s" else 1.0) for col, name in SEED_COLUMNS.items()}
        for _, s in summary.iterrows():
            row = {"model": model, "dtype": meta.get("options", {}).get("dtype", "")}
            for col, (name, factor) in columns.items():
                row[name] = float(s[col]) * factor if col in s and pd.notna(s[col]) else math.nan
            row["device"] = meta.get("devices", {}).get("cuda") or meta.get("options", {}).get("device", "")
            row["not measured"] = missing
            rows.append(row)
    return pd.DataFrame(rows)


def _all_nan(summary: pd.DataFrame, col: str) -> bool:
    return col not in summary or bool(summary[col].isna().all())


def _meta(folder: str) -> dict:
    try:
        with open(os.path.join(folder, "meta.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def to_markdown(table: pd.DataFrame) -> str:
    """A Markdown table of the seed table, every number whole (3 significant digits)."""
    header = list(table.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    exact = _EXACT
    for _, row in table.iterrows():
        cells = []
        for col in header:
            value = row[col]
            if isinstance(value, float):
                cells.append(fmt_exact(value) if col in exact else fmt(value))
            else:
                cells.append(str(value).replace("|", "\\|"))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_seed_table(root, table: pd.DataFrame) -> tuple[str, str]:
    """OUT/seed_table.csv and OUT/seed_table.md; returns their paths."""
    root = os.fspath(root)
    csv_path, md_path = os.path.join(root, "seed_table.csv"), os.path.join(root, "seed_table.md")
    whole = counts_written_whole(table, [c for c in table.columns if c in _EXACT])
    write_atomic(csv_path, whole.to_csv(index=False, float_format="%.6g").encode())
    write_atomic(md_path, to_markdown(table).encode())
    return csv_path, md_path


def format_seed_table(table: pd.DataFrame, title: str | None = None):
    """The seed table as a rich Table: columns no model measured are left out, and what is not
    measured is said under it."""
    from rich.table import Table

    exact = _EXACT
    text = {"model", "dtype", "device", "not measured"}
    shown = [c for c in table.columns if c in text - {"not measured"} or (c not in text and table[c].notna().any())]
    notes = sorted({m for m in table.get("not measured", pd.Series(dtype=str)) if isinstance(m, str) and m})
    out = Table(title=title, caption="\n".join(["medians over runs", *notes]), caption_justify="left")
    for col in shown:
        out.add_column(col, justify="left" if col in text else "right")
    for _, row in table.iterrows():
        out.add_row(
            *[str(row[c]) if c in text else (fmt_exact(row[c]) if c in exact else fmt(row[c], 3)) for c in shown]
        )
    return out
