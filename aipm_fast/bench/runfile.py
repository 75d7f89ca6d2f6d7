"""run.json, the figures of one benchmark run, defined once.

The protocol builds a :class:`RunFile` and writes it; the report reads every run.json back
through the same class, which checks each field against its declaration here (type, whether
null is allowed, lower bound). A file that does not fit raises :class:`ReportError` naming the
file and the field. The JSON layout is the dataclass's, field for field, in order::

    {"model": ..., "size": ..., ..., "energy": {"gpu": {...} | null, "cpu": ..., "total": ...},
     "energy_missing_reason": ...}
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields, replace

from aipm_fast.prune.report import NUMERIC_COLUMNS, TEXT_COLUMNS
from aipm_fast.storage import write_json

__all__ = [
    "ENERGY_COLUMNS",
    "ENERGY_KEYS",
    "ENERGY_PARTS",
    "MEASURED_COLUMNS",
    "MODEL_COLUMNS",
    "MODEL_TEXT_COLUMNS",
    "REASON_COLUMNS",
    "TRAINING_TEXT_COLUMNS",
    "PartEnergy",
    "ReportError",
    "RunFile",
]

NUMBER = "number"
INTEGER = "integer"


class ReportError(Exception):
    """A benchmark file is missing or malformed; the message names the file and the fault."""

    def __init__(self, path, problem: str):
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def _declare(kind, *, nullable: bool = False, minimum=None):
    """A field of a run file: its JSON kind, whether null is allowed, its lower bound."""
    return field(metadata={"kind": kind, "nullable": nullable, "minimum": minimum, "optional": False})


def _added(kind):
    """A field added after the first run files: null when a file lacks it (not measured then)."""
    return field(default=None, metadata={"kind": kind, "nullable": True, "minimum": None, "optional": True})


def _training(kind):
    """A field of training runs only: left out of an inference run's JSON (which carries none of
    them), null when a file lacks it."""
    return field(
        default=None,
        metadata={"kind": kind, "nullable": True, "minimum": None, "optional": True, "omit_null": True},
    )


def _without_omitted_nulls(cls, data: dict) -> dict:
    """data (asdict of a cls) less the training-only fields that are null: an inference run's."""
    return {f.name: data[f.name] for f in fields(cls) if not (f.metadata.get("omit_null") and data[f.name] is None)}


@dataclass(frozen=True)
class PartEnergy:
    """Energy of one part (gpu, cpu or total) over a run; None where a figure is unknown."""

    energy_j: float | None = _declare(NUMBER, nullable=True)
    dynamic_energy_j: float | None = _declare(NUMBER, nullable=True)
    joules_per_inference: float | None = _declare(NUMBER, nullable=True)  # of a training run: per sample
    dynamic_joules_per_inference: float | None = _declare(NUMBER, nullable=True)
    # training runs: the median over the run's marked steps, and their spread (IQR, % of it)
    joules_per_step: float | None = _training(NUMBER)
    joules_per_step_iqr_pct: float | None = _training(NUMBER)

    @classmethod
    def of(cls, energy_j: float, dynamic_energy_j: float | None, n_inferences: int) -> PartEnergy:
        """The energies of a run of n_inferences inputs and their share per inference."""
        dynamic = dynamic_energy_j if dynamic_energy_j is not None and math.isfinite(dynamic_energy_j) else None
        return cls(energy_j, dynamic, energy_j / n_inferences, None if dynamic is None else dynamic / n_inferences)

    def with_steps(self, step_joules) -> PartEnergy:
        """This part with the median and the spread of its steps' energies (None where no step
        of the run has a finite energy)."""
        import numpy as np

        values = np.asarray(step_joules, dtype=np.float64)
        values = values[np.isfinite(values)]
        if values.size == 0:
            return replace(self, joules_per_step=None, joules_per_step_iqr_pct=None)
        median = float(np.median(values))
        q1, q3 = np.percentile(values, [25, 75])
        spread = float((q3 - q1) / abs(median) * 100.0) if median != 0 else None
        return replace(self, joules_per_step=median, joules_per_step_iqr_pct=spread)

    @classmethod
    def sum(cls, parts: list[PartEnergy]) -> PartEnergy:
        """Figure by figure sum of parts; unknown where any part's figure is unknown."""

        def total(key):
            values = [getattr(p, key) for p in parts]
            return None if any(v is None for v in values) else sum(values)

        return cls(**{key: total(key) for key in ENERGY_KEYS})


ENERGY_PARTS = ("gpu", "cpu", "total")
ENERGY_KEYS = tuple(f.name for f in fields(PartEnergy))
ENERGY_COLUMNS = tuple(f"{part}_{key}" for part in ENERGY_PARTS for key in ENERGY_KEYS)


@dataclass(frozen=True)
class RunFile:
    """One run: what it ran, how fast, and the energy of each part (None: not measured)."""

    model: str = _declare(str)
    size: float = _declare(NUMBER)
    run: int = _declare(INTEGER, minimum=0)
    batch_size: int = _declare(INTEGER, minimum=1)
    device: str = _declare(str)
    n_inferences: int = _declare(INTEGER, minimum=1)
    duration_s: float = _declare(NUMBER, minimum=0.0)
    latency_median_s: float = _declare(NUMBER, minimum=0.0)
    throughput_per_s: float = _declare(NUMBER, minimum=0.0)
    gpu_utilization_pct: float | None = _declare(NUMBER, nullable=True)
    gpu_memory_gb: float | None = _declare(NUMBER, nullable=True)  # torch's peak allocated tensors
    energy: dict = _declare(dict)  # part (ENERGY_PARTS) -> PartEnergy, or None when not measured
    energy_missing_reason: str | None = _declare(str, nullable=True)
    # the GPU use of this process as AIPowerMeter measured it (per process, through NVML), and GPM
    process_sm_pct: float | None = _added(NUMBER)  # nvmlDeviceGetProcessUtilization, mean over the run
    process_gpu_memory_gb: float | None = _added(NUMBER)  # what the process holds (framework cache too)
    process_missing_reason: str | None = _added(str)
    gpm_sm_active_pct: float | None = _added(NUMBER)
    gpm_sm_occupancy_pct: float | None = _added(NUMBER)
    gpm_tensor_active_pct: float | None = _added(NUMBER)
    gpm_dram_bw_pct: float | None = _added(NUMBER)
    gpm_missing_reason: str | None = _added(str)
    # the model as it ran: its pruning (aipm_fast.prune.PruneReport) or its dense counts
    prune_method: str | None = _added(str)  # none: not pruned
    sparsity_format: str | None = _added(str)  # dense, masked, 2:4, structured
    sparsity: float | None = _added(NUMBER)  # as requested
    prune_score: str | None = _added(str)
    prune_loss: str | None = _added(str)
    prune_left_dense: str | None = _added(str)
    params_dense: float | None = _added(NUMBER)
    params_total: float | None = _added(NUMBER)
    params_nonzero: float | None = _added(NUMBER)
    effective_sparsity: float | None = _added(NUMBER)
    prunable_params_dense: float | None = _added(NUMBER)
    prunable_sparsity: float | None = _added(NUMBER)
    flops_dense: float | None = _added(NUMBER)  # per inference (one input sample)
    flops_effective: float | None = _added(NUMBER)
    flops_executed: float | None = _added(NUMBER)
    semi_structured_flops_share: float | None = _added(NUMBER)
    layers_pruned: float | None = _added(NUMBER)
    channels_removed: float | None = _added(NUMBER)
    model_count_missing_reason: str | None = _added(str)
    # training runs (`aipm-fast train`; absent from an inference run's file): a marked step is one batch's
    # forward, backward and optimizer step, and n_inferences counts the samples trained on
    mode: str | None = _training(str)  # "train"; null: an inference run
    n_steps: int | None = _training(INTEGER)
    final_loss: float | None = _training(NUMBER)  # mean training loss of the run's last steps
    loss_missing_reason: str | None = _training(str)
    accuracy: float | None = _training(NUMBER)  # 0..1, on the data named by accuracy_on
    accuracy_on: str | None = _training(str)
    accuracy_missing_reason: str | None = _training(str)

    def to_json(self) -> dict:
        data = asdict(self)
        if self.mode is not None:
            return data
        data = _without_omitted_nulls(RunFile, data)  # an inference run: no training field
        data["energy"] = {
            part: None if value is None else _without_omitted_nulls(PartEnergy, value)
            for part, value in data["energy"].items()
        }
        return data

    def write(self, run_dir) -> str:
        """Write run_dir/run.json, checked as the report will read it; returns its path."""
        path = os.path.join(os.fspath(run_dir), "run.json")
        data = self.to_json()
        RunFile.from_json(path, data)  # never write what the report would refuse
        write_json(path, data)
        return path

    @classmethod
    def read(cls, path) -> RunFile:
        path = os.fspath(path)
        return cls.from_json(path, _read_json(path))

    @classmethod
    def from_json(cls, path: str, data: dict) -> RunFile:
        """The run file of a run.json's content, or ReportError naming path and the field."""
        values = _check_fields(path, cls, data, "")
        energy = values["energy"]
        parts = {}
        for part in ENERGY_PARTS:
            if part not in energy:
                raise ReportError(path, f"missing key 'energy.{part}' (null when not measured)")
            found = _check_value(path, f"key 'energy.{part}'", energy[part], dict, True)
            parts[part] = (
                None if found is None else PartEnergy(**_check_fields(path, PartEnergy, found, f"energy.{part}."))
            )
        values["energy"] = parts
        return cls(**values)

    def row(self) -> dict:
        """The run flattened: every field, energies as <part>_<key>, unknown numbers NaN."""
        row = {}
        for f in fields(self):
            if f.name != "energy":
                value = getattr(self, f.name)
                row[f.name] = _nan_if_none(value) if f.metadata["kind"] in (NUMBER, INTEGER) else value
        for part in ENERGY_PARTS:
            energy = self.energy.get(part)
            for key in ENERGY_KEYS:
                row[f"{part}_{key}"] = float("nan") if energy is None else float(_nan_if_none(getattr(energy, key)))
        return row


#: Columns of a run's row that the summary reduces to a median per size.
MEASURED_COLUMNS = (
    "n_inferences",
    "duration_s",
    "latency_median_s",
    "throughput_per_s",
    "gpu_utilization_pct",
    "gpu_memory_gb",
    "process_sm_pct",
    "process_gpu_memory_gb",
    "gpm_sm_active_pct",
    "gpm_sm_occupancy_pct",
    "gpm_tensor_active_pct",
    "gpm_dram_bw_pct",
    "n_steps",
    "final_loss",
    "accuracy",
) + ENERGY_COLUMNS

#: Text columns of a run's row: why a figure is missing.
REASON_COLUMNS = (
    "energy_missing_reason",
    "process_missing_reason",
    "gpm_missing_reason",
    "model_count_missing_reason",
    "loss_missing_reason",
    "accuracy_missing_reason",
)

#: Columns of the model as it ran (its pruning and counts: aipm_fast.prune's report), the same in
#: every run of a size.
MODEL_COLUMNS = NUMERIC_COLUMNS
MODEL_TEXT_COLUMNS = TEXT_COLUMNS
#: Text columns of a training run's row that say what it measured (absent from an inference run).
TRAINING_TEXT_COLUMNS = ("mode", "accuracy_on")


def _nan_if_none(value):
    return float("nan") if value is None else value


def _check_fields(path: str, cls, data: dict, prefix: str) -> dict:
    """Every declared field of cls in data, checked, in declaration order."""
    values: dict = {}
    for f in fields(cls):
        where = f"key '{prefix}{f.name}'" if prefix else f"key {f.name!r}"
        meta = f.metadata
        if f.name not in data:
            if meta["optional"]:
                values[f.name] = None
                continue
            raise ReportError(path, f"missing {where}")
        value = _check_value(path, where, data[f.name], meta["kind"], meta["nullable"])
        low = meta["minimum"]
        if low is not None and value < low:
            raise ReportError(path, f"{where} is {value!r}, must be >= {low}")
        values[f.name] = value
    return values


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
    """The value as read (null and NaN as None), or ReportError."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        if nullable:
            return None
        raise ReportError(path, f"{where} is {'NaN' if value is not None else 'null'}, expected {_kind_name(kind)}")
    if kind == NUMBER:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportError(
                path, f"{where} has the wrong type: expected a number, found {_json_type(value)} ({value!r})"
            )
        if not math.isfinite(value):
            raise ReportError(path, f"{where} is {value!r}, expected a finite number")
        return value
    if kind == INTEGER:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReportError(
                path, f"{where} has the wrong type: expected an integer, found {_json_type(value)} ({value!r})"
            )
        return value
    if not isinstance(value, kind):
        raise ReportError(path, f"{where} has the wrong type: expected {_kind_name(kind)}, found {_json_type(value)}")
    return value


def _kind_name(kind) -> str:
    return {NUMBER: "a number", INTEGER: "an integer", str: "a string", dict: "an object"}[kind]
