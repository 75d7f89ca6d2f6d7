"""Report of a benchmark folder: one row per run, medians per input size, a table and plots.

`aipm-fast bench` writes one folder per run::

    OUT/meta.json
    OUT/input_<size>/run_<k>/run.json          one run: latency, throughput, energy
    OUT/input_<size>/run_<k>/inferences.csv    one row per inference (CLOCK_MONOTONIC ns)
    OUT/input_<size>/run_<k>/samples.parquet   raw power samples (optional)

:func:`load_runs` reads and checks every run.json, :func:`summarize` reduces the runs of each
input size to medians and a run-to-run spread, :func:`write_summary` writes OUT/summary.csv,
:func:`format_table` renders the summary for a terminal, :func:`plot_report` draws PNGs into
OUT/plots/, and :func:`build_report` does all of that.

A file that is missing, unreadable or malformed raises :class:`ReportError` naming the file and
what is wrong with it. Data that was simply not measured (no GPU, no RAPL, no samples) is not an
error: the values are NaN and the plots that need them are skipped, with the reason.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import re

import numpy as np
import pandas as pd

from aipm_fast.sources.base import COUNTER, ENERGY_READINGS
from aipm_fast.storage import legacy_reading, sample_readings

__all__ = [
    "ENERGY_KEYS",
    "ENERGY_PARTS",
    "MEASURED_COLUMNS",
    "ReportError",
    "build_report",
    "format_table",
    "load_runs",
    "plot_report",
    "power_traces",
    "read_inferences",
    "read_samples",
    "summarize",
    "write_summary",
]

logger = logging.getLogger(__name__)

ENERGY_PARTS = ("gpu", "cpu", "total")
ENERGY_KEYS = ("energy_j", "dynamic_energy_j", "joules_per_inference", "dynamic_joules_per_inference")
ENERGY_COLUMNS = tuple(f"{part}_{key}" for part in ENERGY_PARTS for key in ENERGY_KEYS)

#: Columns of :func:`load_runs` that :func:`summarize` reduces to a median per size.
MEASURED_COLUMNS = ("n_inferences", "duration_s", "latency_median_s", "throughput_per_s",
                    "gpu_utilization_pct", "gpu_memory_gb") + ENERGY_COLUMNS

#: Columns whose run-to-run spread the summary reports (IQR %, min, max).
SPREAD_COLUMNS = ("total_joules_per_inference", "gpu_joules_per_inference", "latency_median_s")

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
FIGSIZE_IN = (6.0, 4.0)
DPI = 100
MAX_BOUNDARIES = 200          # inference boundaries drawn on the power trace
MAX_POINTS_PER_TRACE = 4000   # points per channel drawn on the power trace

INFERENCE_COLUMNS = ("index", "start_ns", "end_ns", "latency_s", "gpu_j", "cpu_j", "total_j")
SAMPLE_COLUMNS = ("t_ns", "channel", "value", "flags")
FLAG_REPEAT = 1

_NUMBER = "number"
_INT = "integer"
# key -> (expected type, null allowed)
_RUN_FIELDS = {
    "model": (str, False),
    "size": (_NUMBER, False),
    "run": (_INT, False),
    "batch_size": (_INT, False),
    "device": (str, False),
    "n_inferences": (_INT, False),
    "duration_s": (_NUMBER, False),
    "latency_median_s": (_NUMBER, False),
    "throughput_per_s": (_NUMBER, False),
    "gpu_utilization_pct": (_NUMBER, True),
    "gpu_memory_gb": (_NUMBER, True),
    "energy": (dict, False),
    "energy_missing_reason": (str, True),
}
_MINIMUM = {"batch_size": 1, "n_inferences": 1, "run": 0, "duration_s": 0.0,
            "latency_median_s": 0.0, "throughput_per_s": 0.0}

_INPUT_DIR = re.compile(r"^input_(.+)$")
_RUN_DIR = re.compile(r"^run_(.*)$")


class ReportError(Exception):
    """A benchmark file is missing or malformed; the message names the file and the fault."""

    def __init__(self, path, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# -- reading ----------------------------------------------------------------------------


def _read_json(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ReportError(path, "missing") from None
    except IsADirectoryError:
        raise ReportError(path, "is a folder, not a file") from None
    except OSError as exc:
        raise ReportError(path, f"cannot be read ({exc.strerror or exc})") from None
    if not raw.strip():
        raise ReportError(path, "empty file, expected a JSON object")
    try:
        data = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise ReportError(path, f"not JSON: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ReportError(path, f"not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    if not isinstance(data, dict):
        raise ReportError(path, f"expected a JSON object, found {_json_type(data)}")
    return data


def _json_type(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _check_value(path: str, where: str, value, kind, nullable: bool):
    """The value converted (numbers to float or int, null to NaN/None), or ReportError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if nullable:
            return float("nan") if kind in (_NUMBER, _INT) else None
        raise ReportError(path, f"{where} is {'NaN' if value is not None else 'null'}, expected "
                                f"{_kind_name(kind)}")
    if kind == _NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportError(path, f"{where} has the wrong type: expected a number, found "
                                    f"{_json_type(value)} ({value!r})")
        if not math.isfinite(value):
            raise ReportError(path, f"{where} is {value!r}, expected a finite number")
        return value
    if kind == _INT:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReportError(path, f"{where} has the wrong type: expected an integer, found "
                                    f"{_json_type(value)} ({value!r})")
        return value
    if not isinstance(value, kind):
        raise ReportError(path, f"{where} has the wrong type: expected {_kind_name(kind)}, found "
                                f"{_json_type(value)}")
    return value


def _kind_name(kind) -> str:
    return {_NUMBER: "a number", _INT: "an integer", str: "a string", dict: "an object"}[kind]


def _parse_run(path: str, data: dict) -> dict:
    """One row of load_runs from a run.json's content, checking every field."""
    row = {}
    for key, (kind, nullable) in _RUN_FIELDS.items():
        if key not in data:
            raise ReportError(path, f"missing key {key!r}")
        value = _check_value(path, f"key {key!r}", data[key], kind, nullable)
        low = _MINIMUM.get(key)
        if low is not None and value < low:
            raise ReportError(path, f"key {key!r} is {value!r}, must be >= {low}")
        row[key] = value
    energy = row.pop("energy")
    for part in ENERGY_PARTS:
        if part not in energy:
            raise ReportError(path, f"missing key 'energy.{part}' (null when not measured)")
        values = _check_value(path, f"key 'energy.{part}'", energy[part], dict, True)
        for key in ENERGY_KEYS:
            if values is None:
                row[f"{part}_{key}"] = float("nan")
                continue
            if key not in values:
                raise ReportError(path, f"missing key 'energy.{part}.{key}'")
            row[f"{part}_{key}"] = float(_check_value(path, f"key 'energy.{part}.{key}'", values[key],
                                                      _NUMBER, True))
    return row


def _size_from_folder(name: str):
    m = _INPUT_DIR.match(name)
    try:
        return float(m.group(1))
    except ValueError:
        return None


def _run_dirs(out_dir: str) -> list[str]:
    if not os.path.isdir(out_dir):
        raise ReportError(out_dir, "missing (no such folder)" if not os.path.exists(out_dir)
                          else "not a folder")
    found = []
    for name in sorted(os.listdir(out_dir)):
        input_dir = os.path.join(out_dir, name)
        if not _INPUT_DIR.match(name) or not os.path.isdir(input_dir):
            continue
        runs = [r for r in sorted(os.listdir(input_dir))
                if _RUN_DIR.match(r) and os.path.isdir(os.path.join(input_dir, r))]
        if not runs:
            logger.warning("%s holds no run_<k> folder: ignored", input_dir)
        found += [os.path.join(input_dir, r) for r in runs]
    if not found:
        raise ReportError(out_dir, "no benchmark runs: expected folders input_<size>/run_<k>/ "
                                   "holding run.json")
    return found


def load_runs(out_dir) -> pd.DataFrame:
    """One row per run of a benchmark folder, sorted by size and run.

    Columns: size, run, batch_size, n_inferences, duration_s, latency_median_s,
    throughput_per_s, gpu_utilization_pct, gpu_memory_gb, the flattened energies
    ``<part>_<key>`` (part gpu/cpu/total, key energy_j/dynamic_energy_j/joules_per_inference/
    dynamic_joules_per_inference; NaN where not measured), and model, device,
    energy_missing_reason and path (the run folder).

    Raises ReportError naming the file when a run folder lacks its run.json, when a run.json is
    not JSON, misses a key, holds a value of the wrong type, or disagrees with its folder name
    (input_<size>/run_<k>) or with the other runs (model; batch_size within one size), and
    naming out_dir when it holds no run folder at all.
    """
    out_dir = os.fspath(out_dir)
    rows = []
    for run_dir in _run_dirs(out_dir):
        path = os.path.join(run_dir, "run.json")
        row = _parse_run(path, _read_json(path))
        input_name = os.path.basename(os.path.dirname(run_dir))
        folder_size = _size_from_folder(input_name)
        if folder_size is None or folder_size != row["size"]:
            raise ReportError(path, f"key 'size' is {row['size']!r} but the folder is {input_name} "
                                    f"(expected input_{row['size']!r})")
        run_name = os.path.basename(run_dir)
        if run_name != f"run_{row['run']}":
            raise ReportError(path, f"key 'run' is {row['run']!r} but the folder is {run_name} "
                                    f"(expected run_{row['run']})")
        row["path"] = run_dir
        rows.append(row)
    _check_consistent(rows)
    runs = pd.DataFrame(rows)
    if all(float(s).is_integer() for s in runs["size"]):
        runs["size"] = runs["size"].astype(np.int64)
    else:
        runs["size"] = runs["size"].astype(np.float64)
    for col in MEASURED_COLUMNS:
        if col not in ("n_inferences",):
            runs[col] = runs[col].astype(np.float64)
    front = ["size", "run", "batch_size"] + list(MEASURED_COLUMNS)
    rest = ["model", "device", "energy_missing_reason", "path"]
    runs = runs[front + rest].sort_values(["size", "run"], kind="stable").reset_index(drop=True)
    return runs


def _check_consistent(rows: list[dict]) -> None:
    first = rows[0]
    by_size: dict = {}
    for row in rows:
        path = os.path.join(row["path"], "run.json")
        if row["model"] != first["model"]:
            raise ReportError(path, f"key 'model' is {row['model']!r} but "
                                    f"{os.path.join(first['path'], 'run.json')} has {first['model']!r}: "
                                    "one benchmark folder holds one model")
        other = by_size.setdefault(row["size"], row)
        if row["batch_size"] != other["batch_size"]:
            raise ReportError(path, f"key 'batch_size' is {row['batch_size']!r} but "
                                    f"{os.path.join(other['path'], 'run.json')} (same size) has "
                                    f"{other['batch_size']!r}")


def read_inferences(path) -> pd.DataFrame:
    """inferences.csv of one run, checked: the columns exist, times are integers, end >= start."""
    path = os.fspath(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise ReportError(path, "missing") from None
    except pd.errors.EmptyDataError:
        raise ReportError(path, "empty CSV (not even a header)") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise ReportError(path, f"not a readable CSV ({exc})") from None
    missing = [c for c in INFERENCE_COLUMNS if c not in frame.columns]
    if missing:
        raise ReportError(path, f"missing column(s) {', '.join(missing)} (columns: "
                                f"{', '.join(map(str, frame.columns))})")
    if frame.empty:
        raise ReportError(path, "empty CSV: a header but no inference rows")
    for col in ("start_ns", "end_ns"):
        if not pd.api.types.is_integer_dtype(frame[col]):
            raise ReportError(path, f"column {col} must hold integer nanoseconds, found "
                                    f"{frame[col].dtype} values")
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
        raise ReportError(path, f"row {i} ends before it starts (start_ns {frame['start_ns'].iloc[i]}, "
                                f"end_ns {frame['end_ns'].iloc[i]})")
    return frame


def read_samples(path) -> pd.DataFrame:
    """samples.parquet of one run: t_ns (int64), channel (str), value (float64), flags (uint32)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.fspath(path)
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise ReportError(path, "missing") from None
    except (pa.ArrowException, OSError) as exc:
        raise ReportError(path, f"not a readable Parquet file ({exc})") from None
    missing = [c for c in SAMPLE_COLUMNS if c not in schema.names]
    if missing:
        raise ReportError(path, f"missing column(s) {', '.join(missing)} (columns: {', '.join(schema.names)})")
    try:
        table = pq.read_table(path, columns=list(SAMPLE_COLUMNS))
    except (pa.ArrowException, OSError) as exc:
        raise ReportError(path, f"not a readable Parquet file ({exc})") from None
    kinds = {"t_ns": pa.types.is_integer, "value": pa.types.is_floating, "flags": pa.types.is_integer}
    for col, ok in kinds.items():
        if not ok(table.schema.field(col).type):
            raise ReportError(path, f"column {col} has type {table.schema.field(col).type}, expected "
                                    f"{'an integer' if col != 'value' else 'a float'} type")
    channel_type = table.schema.field("channel").type
    if pa.types.is_dictionary(channel_type):
        channel_type = channel_type.value_type
    if not (pa.types.is_string(channel_type) or pa.types.is_large_string(channel_type)):
        raise ReportError(path, f"column channel has type {table.schema.field('channel').type}, "
                                "expected strings (or a dictionary of strings)")
    frame = pd.DataFrame({
        "t_ns": table.column("t_ns").to_numpy().astype(np.int64),
        "channel": table.column("channel").to_pandas(),   # categorical for a dictionary column
        "value": table.column("value").to_numpy(zero_copy_only=False).astype(np.float64),
        "flags": table.column("flags").to_numpy().astype(np.uint32),
    })
    return frame


# -- summary ----------------------------------------------------------------------------


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per input size, sorted by size.

    Columns: size, batch_size, runs (how many), the median over runs of every measured column
    (same names as in load_runs; NaN where no run measured it), and for each of
    total_joules_per_inference, gpu_joules_per_inference and latency_median_s its run-to-run
    spread: ``<col>_iqr_pct`` (interquartile range / median x 100, linear quantiles),
    ``<col>_min`` and ``<col>_max``.
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
        row = {"size": size, "batch_size": int(batches[0]), "runs": int(len(group))}
        for col in MEASURED_COLUMNS:
            row[col] = float(group[col].astype(np.float64).median())  # NaN when all are NaN
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
        rows.append(row)
    return pd.DataFrame(rows)


def write_summary(out_dir) -> str:
    """load_runs + summarize, written to OUT/summary.csv; returns its path."""
    out_dir = os.fspath(out_dir)
    summary = summarize(load_runs(out_dir))
    return _write_summary_csv(out_dir, summary)


def _write_summary_csv(out_dir: str, summary: pd.DataFrame) -> str:
    path = os.path.join(out_dir, "summary.csv")
    tmp = path + ".tmp"
    summary.to_csv(tmp, index=False, float_format="%.6g")
    os.replace(tmp, path)
    return path


# -- terminal table ---------------------------------------------------------------------


def _fmt(value, significant: int = 3) -> str:
    """A number with about `significant` significant digits, thousands separated; '-' for NaN."""
    if value is None or not np.isfinite(value):
        return "-"
    value = float(value)
    if value == 0:
        return "0"
    decimals = max(0, significant - 1 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{decimals}f}"


def _fmt_exact(value) -> str:
    """A size or a count as written: 224, 0.5; '-' for NaN."""
    if value is None or not np.isfinite(value):
        return "-"
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def format_table(summary: pd.DataFrame, title: str | None = None):
    """A compact rich Table of a summary: energy per inference, latency, throughput, GPU load.

    Columns whose values are all NaN (not measured) are left out.
    """
    from rich.table import Table

    def col(name):
        return summary[name].to_numpy(dtype=np.float64) if name in summary else np.full(len(summary), np.nan)

    energy_spread = col("total_joules_per_inference_iqr_pct")
    energy_spread = np.where(np.isfinite(energy_spread), energy_spread, col("gpu_joules_per_inference_iqr_pct"))
    columns = [
        ("size", col("size"), _fmt_exact),
        ("batch", col("batch_size"), _fmt_exact),
        ("runs", col("runs"), _fmt_exact),
        ("GPU J/inf", col("gpu_joules_per_inference"), _fmt),
        ("CPU J/inf", col("cpu_joules_per_inference"), _fmt),
        ("total J/inf", col("total_joules_per_inference"), _fmt),
        ("dyn. total J/inf", col("total_dynamic_joules_per_inference"), _fmt),
        ("latency ms", col("latency_median_s") * 1e3, _fmt),
        ("throughput/s", col("throughput_per_s"), _fmt),
        ("GPU util %", col("gpu_utilization_pct"), lambda v: _fmt(v, 2)),
        ("GPU mem GB", col("gpu_memory_gb"), _fmt),
        ("J spread %", energy_spread, lambda v: _fmt(v, 2)),
    ]
    if not np.isfinite(energy_spread).any():
        columns.append(("latency spread %", col("latency_median_s_iqr_pct"), lambda v: _fmt(v, 2)))
    columns = [c for c in columns if np.isfinite(c[1]).any()]
    table = Table(title=title, caption="medians over runs; spread: interquartile range over runs, "
                                       "% of the median", caption_justify="left")
    for name, _, _ in columns:
        table.add_column(name, justify="right")
    for i in range(len(summary)):
        table.add_row(*[fmt(values[i]) for _, values, fmt in columns])
    return table


# -- power traces -----------------------------------------------------------------------


def _counter_power(t_ns: np.ndarray, value_j: np.ndarray, max_points: int):
    """Power (W) from an energy counter: the derivative between its updates.

    Readings that repeat the previous value are dropped (the counter did not update); the time
    of an update is the first reading that shows it. A decrease is a wrap (or a reset) of
    unknown range: the interval across it is left out (NaN) rather than guessed. Returns
    (t_ns of each interval's start, W over the interval, t_ns of the last interval's end),
    at most max_points intervals, each the exact mean power over the updates it spans.
    """
    changed = np.concatenate(([True], np.diff(value_j) != 0))
    t, v = t_ns[changed], value_j[changed]
    if not changed[1:].all() and t.size > 2:
        t, v = t[1:], v[1:]   # when the first value appeared is unknown
    if t.size < 2:
        return np.empty(0, np.int64), np.empty(0), None
    dt = np.diff(t).astype(np.float64) * 1e-9
    de = np.diff(v)
    good = de >= 0
    # merge intervals into at most max_points bins; a bin's power is its energy over its time
    n = dt.size
    bins = max(1, int(math.ceil(n / max_points)))
    edges = np.arange(0, n, bins)
    energy = np.add.reduceat(np.where(good, de, 0.0), edges)
    seconds = np.add.reduceat(np.where(good, dt, 0.0), edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        watts = np.where(seconds > 0, energy / seconds, np.nan)
    return t[:-1][edges], watts, int(t[-1])


def _bin_mean(t_ns: np.ndarray, watts: np.ndarray, max_points: int):
    n = watts.size
    bins = max(1, int(math.ceil(n / max_points)))
    if bins == 1:
        return t_ns, watts
    edges = np.arange(0, n, bins)
    counts = np.diff(np.append(edges, n))
    return t_ns[edges], np.add.reduceat(watts, edges) / counts


def power_traces(samples: pd.DataFrame, max_points: int = MAX_POINTS_PER_TRACE, readings: dict | None = None) -> dict:
    """Power against time for every power and energy-counter channel of a samples frame.

    Returns {channel name: (t_ns int64 array, watts float64 array, kind)}, kind "power" for a
    power channel (the readings, averaged in bins down to max_points) or "counter" for an energy
    counter (its derivative, see _counter_power; t_ns are interval starts, and one more point at
    the last update closes the step). Channels with fewer than two usable points are left out.
    `readings` maps channel names to what they measure (storage.sample_readings of the file);
    without it, the names of files written before recordings carried their meaning are read.
    """
    traces = {}
    for name, group in samples.groupby("channel", sort=True, observed=True):
        name = str(name)
        reading = readings.get(name) if readings is not None else legacy_reading(name)
        if reading not in ENERGY_READINGS:
            continue
        kind = "counter" if reading == COUNTER else "power"
        group = group.sort_values("t_ns", kind="stable")
        t = group["t_ns"].to_numpy(np.int64)
        v = group["value"].to_numpy(np.float64)
        finite = np.isfinite(v)
        t, v = t[finite], v[finite]
        if kind == "power":
            t, w = _bin_mean(t, v, max_points)
        else:
            t, w, end = _counter_power(t, v, max_points)
            if end is not None and w.size:
                t, w = np.append(t, end), np.append(w, w[-1])
        if t.size >= 2 and np.isfinite(w).any():
            traces[name] = (t, w, kind)
    return traces


# -- plots ------------------------------------------------------------------------------


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
        ax.set_xticklabels([_fmt_exact(s) for s in sizes], fontsize=8)
        ax.minorticks_off()
    ax.set_xlabel("input size")


def _model(runs: pd.DataFrame) -> str:
    return str(runs["model"].iloc[0]) if "model" in runs and len(runs) else "model"


def _inference_label(runs: pd.DataFrame) -> str:
    batches = runs["batch_size"].unique() if "batch_size" in runs else []
    if len(batches) == 1 and batches[0] > 1:
        return f"J per inference (batch of {int(batches[0])})"
    return "J per inference"


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
    return (median.index.to_numpy(np.float64), median.to_numpy(np.float64),
            g.min().to_numpy(np.float64), g.max().to_numpy(np.float64))


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
        ax.errorbar(sizes, med, yerr=yerr, marker=markers[part], capsize=3, linewidth=1.2,
                    markersize=4, label=part.upper() if part != "total" else "total")
    _size_axis(ax, runs["size"])
    ax.set_ylabel(_inference_label(runs))
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{_model(runs)}: energy per inference (median, min-max over runs)", fontsize=9)
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
    part = next((p for p in ("total", "gpu", "cpu")
                 if np.isfinite(summary[f"{p}_joules_per_inference"].to_numpy(np.float64)).any()), None)
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
    ax.set_title(f"{_model(runs)}: latency and {part} energy per inference\n"
                 f"{_pearson(latency_ms, energy)}", fontsize=9)
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
            ax.text(j, i, "n/a" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center",
                    fontsize=7, color="white" if np.isfinite(v) and abs(v) > 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(f"{_model(runs)}: Spearman correlation over {len(runs)} runs", fontsize=9)
    return _save(fig, path)


def _trace_run(out_dir: str, runs: pd.DataFrame):
    """The first run of the largest size that has samples.parquet: (row, run folder) or None."""
    for size in sorted(runs["size"].unique(), reverse=True):
        for _, row in runs[runs["size"] == size].sort_values("run").iterrows():
            run_dir = row["path"] if "path" in row and isinstance(row["path"], str) else \
                os.path.join(out_dir, f"input_{_fmt_exact(size)}", f"run_{int(row['run'])}")
            if os.path.isfile(os.path.join(run_dir, "samples.parquet")):
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
    shown = "" if inferences is None or len(inferences) <= MAX_BOUNDARIES else \
        f", {MAX_BOUNDARIES} of {len(inferences)} inference starts shown"
    ax.set_title(f"{_model(runs)}, size {_fmt_exact(row['size'])}, run {int(row['run'])}: power{shown}",
                 fontsize=9)
    return _save(fig, path)


def _plot_all(out_dir: str, runs: pd.DataFrame, summary: pd.DataFrame):
    plots_dir = os.path.join(out_dir, "plots")
    written: list[str] = []
    skipped: dict[str, str] = {}
    if importlib.util.find_spec("matplotlib") is None:
        reason = "matplotlib is not installed (pip install 'aipm-fast[plot]')"
        return written, {name: reason for name in PLOT_NAMES}
    os.makedirs(plots_dir, exist_ok=True)
    plots = {
        "energy_vs_size.png": _plot_energy_vs_size,
        "latency_energy_vs_size.png": _plot_latency_energy,
        "spearman.png": _plot_spearman,
        "power_trace.png": lambda p, r, s: _plot_power_trace(p, r, s, out_dir),
    }
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
        for stale in (path, path + ".tmp"):   # no plot left over from an earlier report
            if os.path.exists(stale):
                os.remove(stale)
    return written, skipped


def plot_report(out_dir, runs: pd.DataFrame | None = None, summary: pd.DataFrame | None = None,
                skipped: dict | None = None) -> list[str]:
    """Draw the report's PNGs into OUT/plots/; returns the paths written.

    energy_vs_size.png, latency_energy_vs_size.png, spearman.png and power_trace.png. A plot
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


def build_report(out_dir) -> dict:
    """summary.csv and the plots: {"summary": path, "plots": [paths], "skipped": {plot: reason}}."""
    out_dir = os.fspath(out_dir)
    runs = load_runs(out_dir)
    summary = summarize(runs)
    summary_path = _write_summary_csv(out_dir, summary)
    skipped: dict[str, str] = {}
    plots = plot_report(out_dir, runs, summary, skipped=skipped)
    return {"summary": summary_path, "plots": plots, "skipped": skipped}
