"""A benchmark folder as `aipm-fast bench` lays it out, read back and checked.

    OUT/meta.json
    OUT/input_<size>/run_<k>/run.json          one run: latency, throughput, energy (runfile.py)
    OUT/input_<size>/run_<k>/inferences.csv    one row per forward pass (CLOCK_MONOTONIC ns)
    OUT/input_<size>/run_<k>/samples.parquet   raw power samples (optional; samples/ holds its
                                               parts when the run was killed before the end)
    OUT/input_<size>/run_<k>/loss.csv          a training run's loss per step (`aipm-fast train`)

:func:`load_runs` gives one row per run; :func:`read_inferences` and :func:`read_samples` read a
run's per-pass table and raw samples. A file that is missing or malformed raises ReportError
naming it.
"""

from __future__ import annotations

import logging
import os
import re

import numpy as np
import pandas as pd

from aipm_fast.bench.runfile import (
    MEASURED_COLUMNS,
    MODEL_COLUMNS,
    MODEL_TEXT_COLUMNS,
    REASON_COLUMNS,
    TRAINING_TEXT_COLUMNS,
    ReportError,
    RunFile,
)

__all__ = [
    "INFERENCE_COLUMNS",
    "LOSS_COLUMNS",
    "SAMPLE_COLUMNS",
    "load_runs",
    "read_inferences",
    "read_loss_curve",
    "read_samples",
    "run_folder",
]

logger = logging.getLogger(__name__)

#: Columns of inferences.csv, as the protocol writes them.
INFERENCE_COLUMNS = ("index", "start_ns", "end_ns", "latency_s", "gpu_j", "cpu_j", "total_j")
SAMPLE_COLUMNS = ("t_ns", "channel", "value", "flags")
#: Columns of a training run's loss.csv: the step (from 0), its epoch, the samples of its batch
#: and its training loss (NaN where it diverged).
LOSS_COLUMNS = ("step", "epoch", "samples", "loss")

_INPUT_DIR = re.compile(r"^input_(.+)$")
_RUN_DIR = re.compile(r"^run_(.*)$")


def run_folder(out_dir, size, run: int) -> str:
    """The folder of run `run` of input size `size`: OUT/input_<size>/run_<k>."""
    return os.path.join(os.fspath(out_dir), f"input_{size}", f"run_{run}")


def _size_from_folder(name: str):
    m = _INPUT_DIR.match(name)
    if m is None:
        return None
    try:
        return float(m.group(1))
    except ValueError:
        return None


def _run_dirs(out_dir: str) -> list[str]:
    if not os.path.isdir(out_dir):
        raise ReportError(out_dir, "missing (no such folder)" if not os.path.exists(out_dir) else "not a folder")
    found = []
    for name in sorted(os.listdir(out_dir)):
        input_dir = os.path.join(out_dir, name)
        if not _INPUT_DIR.match(name) or not os.path.isdir(input_dir):
            continue
        runs = [
            r for r in sorted(os.listdir(input_dir)) if _RUN_DIR.match(r) and os.path.isdir(os.path.join(input_dir, r))
        ]
        if not runs:
            logger.warning("%s holds no run_<k> folder: ignored", input_dir)
        found += [os.path.join(input_dir, r) for r in runs]
    if not found:
        raise ReportError(out_dir, "no benchmark runs: expected folders input_<size>/run_<k>/ holding run.json")
    return found


def load_runs(out_dir) -> pd.DataFrame:
    """One row per run of a benchmark folder, sorted by size and run.

    Columns: size, run, batch_size, n_inferences, duration_s, latency_median_s,
    throughput_per_s, gpu_utilization_pct, gpu_memory_gb, process_sm_pct, process_gpu_memory_gb,
    the gpm_* activities, a training run's n_steps, final_loss and accuracy, the
    flattened energies
    ``<part>_<key>`` (part gpu/cpu/total, key energy_j/dynamic_energy_j/joules_per_inference/
    dynamic_joules_per_inference, joules_per_step, joules_per_step_iqr_pct; NaN where not
    measured), and model, device, mode and accuracy_on (TEXT_COLUMNS), the reasons of what is
    missing (REASON_COLUMNS) and path (the run folder).

    A run folder without run.json (a run interrupted before its end) is left out: its path is
    listed in ``runs.attrs["missing"]`` and logged, and the complete runs are reported.

    Raises ReportError naming the file when a run.json is not JSON, misses a key, holds a value
    of the wrong type, or disagrees with its folder name (input_<size>/run_<k>) or with the
    other runs (model; batch_size within one size), and naming out_dir when it holds no run
    folder at all, or none with its run.json.
    """
    out_dir = os.fspath(out_dir)
    rows = []
    missing = []
    for run_dir in _run_dirs(out_dir):
        path = os.path.join(run_dir, "run.json")
        if not os.path.lexists(path):
            logger.warning("%s has no run.json (interrupted?): left out of the report", run_dir)
            missing.append(run_dir)
            continue
        row = RunFile.read(path).row()
        input_name = os.path.basename(os.path.dirname(run_dir))
        folder_size = _size_from_folder(input_name)
        if folder_size is None or folder_size != row["size"]:
            raise ReportError(
                path, f"key 'size' is {row['size']!r} but the folder is {input_name} (expected input_{row['size']!r})"
            )
        run_name = os.path.basename(run_dir)
        if run_name != f"run_{row['run']}":
            raise ReportError(
                path, f"key 'run' is {row['run']!r} but the folder is {run_name} (expected run_{row['run']})"
            )
        row["path"] = run_dir
        rows.append(row)
    if not rows:
        raise ReportError(
            out_dir, f"no complete benchmark run: {len(missing)} run folder(s) without run.json (interrupted?)"
        )
    _check_consistent(rows)
    runs = pd.DataFrame(rows)
    if all(float(s).is_integer() for s in runs["size"]):
        runs["size"] = runs["size"].astype(np.int64)
    else:
        runs["size"] = runs["size"].astype(np.float64)
    for col in MEASURED_COLUMNS:
        if col not in ("n_inferences",):
            runs[col] = runs[col].astype(np.float64)
    for col in MODEL_COLUMNS:
        runs[col] = runs[col].astype(np.float64)
    front = ["size", "run", "batch_size"] + list(MEASURED_COLUMNS) + list(MODEL_COLUMNS)
    rest = ["model", "device", *MODEL_TEXT_COLUMNS, *TRAINING_TEXT_COLUMNS, *REASON_COLUMNS, "path"]
    runs = runs[front + rest].sort_values(["size", "run"], kind="stable").reset_index(drop=True)
    runs.attrs["missing"] = missing
    return runs


def _check_consistent(rows: list[dict]) -> None:
    first = rows[0]
    by_size: dict = {}
    for row in rows:
        path = os.path.join(row["path"], "run.json")
        if row["model"] != first["model"]:
            raise ReportError(
                path,
                f"key 'model' is {row['model']!r} but "
                f"{os.path.join(first['path'], 'run.json')} has {first['model']!r}: "
                "one benchmark folder holds one model",
            )
        other = by_size.setdefault(row["size"], row)
        if row["batch_size"] != other["batch_size"]:
            raise ReportError(
                path,
                f"key 'batch_size' is {row['batch_size']!r} but "
                f"{os.path.join(other['path'], 'run.json')} (same size) has "
                f"{other['batch_size']!r}",
            )


def read_inferences(path) -> pd.DataFrame:
    """inferences.csv of one run, checked: the columns exist, times are integers, end >= start."""
    path = os.fspath(path)
    frame = _read_csv(path, INFERENCE_COLUMNS)
    if frame.empty:
        raise ReportError(path, "empty CSV: a header but no inference rows")
    for col in ("start_ns", "end_ns"):
        if not pd.api.types.is_integer_dtype(frame[col]):
            raise ReportError(path, f"column {col} must hold integer nanoseconds, found {frame[col].dtype} values")
    for col in ("latency_s", "gpu_j", "cpu_j", "total_j"):
        values = pd.to_numeric(frame[col], errors="coerce")
        bad = values.isna() & frame[col].notna()
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise ReportError(path, f"column {col} row {i} is {frame[col].iloc[i]!r}, not a number")
        frame[col] = values.astype(np.float64)
    backwards = frame["end_ns"] < frame["start_ns"]
    if backwards.any():
        i = int(np.flatnonzero(backwards.to_numpy())[0])
        raise ReportError(
            path,
            f"row {i} ends before it starts (start_ns {frame['start_ns'].iloc[i]}, end_ns {frame['end_ns'].iloc[i]})",
        )
    return frame


def read_loss_curve(path) -> pd.DataFrame:
    """loss.csv of one training run, checked: the columns exist, steps and epochs are integers,
    losses are numbers (NaN allowed: a diverged step)."""
    path = os.fspath(path)
    frame = _read_csv(path, LOSS_COLUMNS)
    for col in ("step", "epoch", "samples"):
        if not pd.api.types.is_integer_dtype(frame[col]):
            raise ReportError(path, f"column {col} must hold integers, found {frame[col].dtype} values")
    loss = pd.to_numeric(frame["loss"], errors="coerce")
    bad = loss.isna() & frame["loss"].notna()
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise ReportError(path, f"column loss row {i} is {frame['loss'].iloc[i]!r}, not a number")
    frame["loss"] = loss.astype(np.float64)
    return frame


def read_samples(path) -> pd.DataFrame:
    """samples.parquet of one run (or the folder of parts a killed run left beside it): t_ns
    (int64), channel (str), value (float64), flags (uint32)."""
    import pyarrow as pa

    from aipm_fast.storage import read_sample_schema, read_sample_table, samples_source

    path = samples_source(os.fspath(path))
    try:
        schema = read_sample_schema(path)
    except FileNotFoundError:
        raise ReportError(path, "missing") from None
    except (pa.ArrowException, OSError) as exc:
        raise ReportError(path, f"not a readable Parquet file ({exc})") from None
    _require_columns(path, SAMPLE_COLUMNS, schema.names)
    try:
        table = read_sample_table(path, columns=list(SAMPLE_COLUMNS))
    except (pa.ArrowException, OSError) as exc:
        raise ReportError(path, f"not a readable Parquet file ({exc})") from None
    kinds = {"t_ns": pa.types.is_integer, "value": pa.types.is_floating, "flags": pa.types.is_integer}
    for col, ok in kinds.items():
        if not ok(table.schema.field(col).type):
            raise ReportError(
                path,
                f"column {col} has type {table.schema.field(col).type}, expected "
                f"{'an integer' if col != 'value' else 'a float'} type",
            )
    channel_type = table.schema.field("channel").type
    if pa.types.is_dictionary(channel_type):
        channel_type = channel_type.value_type
    if not (pa.types.is_string(channel_type) or pa.types.is_large_string(channel_type)):
        raise ReportError(
            path,
            f"column channel has type {table.schema.field('channel').type}, "
            "expected strings (or a dictionary of strings)",
        )
    frame = pd.DataFrame(
        {
            "t_ns": table.column("t_ns").to_numpy().astype(np.int64),
            "channel": table.column("channel").to_pandas(),  # categorical for a dictionary column
            "value": table.column("value").to_numpy(zero_copy_only=False).astype(np.float64),
            "flags": table.column("flags").to_numpy().astype(np.uint32),
        }
    )
    return frame


def _read_csv(path: str, columns) -> pd.DataFrame:
    """A run's CSV holding at least `columns`, or ReportError naming it and the fault."""
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise ReportError(path, "missing") from None
    except pd.errors.EmptyDataError:
        raise ReportError(path, "empty CSV (not even a header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise ReportError(path, f"not a readable CSV ({exc})") from None
    _require_columns(path, columns, frame.columns)
    return frame


def _require_columns(path: str, wanted, found) -> None:
    missing = [c for c in wanted if c not in found]
    if missing:
        raise ReportError(path, f"missing column(s) {', '.join(missing)} (columns: {', '.join(map(str, found))})")
