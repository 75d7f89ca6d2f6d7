"""A run folder's files in AIPowerMeter's own format, so that its readers work on them.

AIPowerMeter (GreenAI-Uppa/AIPowerMeter) reads a run folder with
``experiment.ExpResults(parsers.JsonParser(folder))`` and a benchmark folder with
``deep_learning_benchmark/concat_power_measure.py``. Both read, per run folder:

- ``power_metrics.json``: JSON lines, one per period, ``{"date": str(datetime.now()), "metrics":
  {"cpu": {...}, "gpu": {...}}}``, values in watts (the mean over the period), energies never
  stored: readers integrate W over the dates with trapezoids;
- ``latency.csv``: ``np.savetxt`` of one latency (s) per forward pass, no header;
- ``metadata.json``: ``{"description", "date"}``.

How the lines are made (one place: :func:`power_lines`). The run's span is cut into N periods of
about PERIOD_S; line k is dated at the k-th boundary (N + 1 lines, evenly spaced) and holds the
mean power over the period centred on it, clipped to the run (half periods at both ends). A
trapezoid integral over the dates then gives exactly the run's joules, and the concat script's
median trapezoid times their count gives them too on a steady load. The power comes from the
run's per-pass energies (the Meter's own marks, same channels and scale as run.json), the gaps
between passes holding what the run's window energy has beyond them.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time

import numpy as np
import pandas as pd

from aipm_fast._native import now_ns
from aipm_fast.bench.gpu_use import GpuUse
from aipm_fast.storage import write_atomic, write_json

__all__ = ["PERIOD_S", "KEYS", "power_lines", "process_memory", "write_run_files"]

#: the resolution of power_metrics.json: about this long a period (a run of at least one period
#: gets round(duration / PERIOD_S) periods; a shorter one gets one)
PERIOD_S = 0.1

#: What each key holds, for README and metadata.json. Powers in W, memory in bytes, SM in %.
KEYS = {
    "cpu.intel_power": "W, host part (RAPL packages) over the period",
    "cpu.total_cpu_power": "NaN: AIPowerMeter's cores-only (PP0) power is not separated here",
    "cpu.per_process_mem_use_abs": "{pid: bytes}, this process's PSS at the run's end",
    "cpu.per_process_mem_use_uss": "{pid: bytes}, this process's USS at the run's end",
    "gpu.nvidia_draw_absolute": "W, the metered GPUs' board power over the period",
    "gpu.nvidia_estimated_attributable_power_draw": (
        "W, board power times this process's share of all processes' SM time on the GPUs over the run "
        "(AIPowerMeter's attribution); NaN where the share is not measured"
    ),
    "gpu.nvidia_power": "W, the same board power (AIPowerMeter's current key)",
    "gpu.per_gpu_nvidia_power": "{NVML index: W}",
    "gpu.nvidia_memory": "bytes used on the metered GPUs (device), mean over the run",
    "gpu.per_gpu_nvidia_memory": "{NVML index: bytes}",
    "gpu.nvidia_use_rate": "%, the device's utilisation (nvmlDeviceGetUtilizationRates), mean over the run",
    "gpu.per_gpu_nvidia_use_rate": "{NVML index: %}",
    "gpu.per_gpu_attributable_mem_use": "{NVML index: {pid: bytes}}, what this process holds (run's end)",
    "gpu.per_gpu_average_estimated_utilization_absolute": (
        "[{gpu, pid, sm}], this process's SM utilisation in % over the run (nvmlDeviceGetProcessUtilization, "
        "the quantity of nvidia-smi pmon's sm column)"
    ),
}


def power_lines(start_ns: int, end_ns: int, passes: pd.DataFrame, total_j: float, period_s: float = PERIOD_S):
    """(dates_ns, watts): N + 1 evenly spaced times from start to end and the mean power over the
    period centred on each (clipped to the run), such that the trapezoid integral is total_j.

    `passes`: start_ns, end_ns and energy_j of each forward pass of the run (one domain or one
    part). Where the passes hold less than total_j, the rest is spread over the gaps between
    them by duration; where they hold more (their own sampling error), they are scaled down to
    total_j. A NaN energy (not measured) gives NaN watts throughout."""
    duration_ns = end_ns - start_ns
    if duration_ns <= 0:
        raise ValueError(f"run span {start_ns}..{end_ns} ns is empty")
    n = max(1, round(duration_ns / 1e9 / period_s))
    dates = start_ns + np.round(np.arange(n + 1) * (duration_ns / n)).astype(np.int64)
    if not math.isfinite(total_j) or (len(passes) and not np.isfinite(passes["energy_j"]).all()):
        return dates, np.full(n + 1, np.nan)
    knots_t, knots_e = _cumulative(start_ns, end_ns, passes, total_j)
    half = duration_ns / n / 2
    lo = np.maximum(dates - half, start_ns)
    hi = np.minimum(dates + half, end_ns)
    energy = np.interp(hi, knots_t, knots_e) - np.interp(lo, knots_t, knots_e)
    return dates, energy / ((hi - lo) / 1e9)


def _cumulative(start_ns: int, end_ns: int, passes: pd.DataFrame, total_j: float):
    """Knots (t, cumulative J) of the run: linear within each pass and each gap."""
    order = passes.sort_values("start_ns")
    s = np.clip(order["start_ns"].to_numpy(np.int64), start_ns, end_ns)
    e = np.clip(order["end_ns"].to_numpy(np.int64), start_ns, end_ns)
    s = np.maximum(s, np.concatenate([[start_ns], e[:-1]]))  # overlapping stamps: no time counted twice
    e = np.maximum(e, s)
    pass_j = order["energy_j"].to_numpy(np.float64)
    gaps = np.concatenate([s, [end_ns]]) - np.concatenate([[start_ns], e])  # before each pass, then after
    in_passes = float(pass_j.sum())
    rest = total_j - in_passes
    if rest > 0 and gaps.sum() > 0:
        gap_j = rest * gaps / gaps.sum()
    else:
        gap_j = np.zeros(gaps.size)
        pass_j = pass_j * (total_j / in_passes) if in_passes > 0 else pass_j
        if in_passes <= 0 and total_j > 0:  # no pass holds anything: the run's mean power throughout
            return np.array([start_ns, end_ns]), np.array([0.0, total_j])
    t = [start_ns]
    c = [0.0]
    for i in range(s.size):
        t += [int(s[i]), int(e[i])]
        c += [c[-1] + gap_j[i], c[-1] + gap_j[i] + pass_j[i]]
    t.append(end_ns)
    c.append(c[-1] + gap_j[-1])
    return np.array(t, dtype=np.float64), np.array(c)


def _date(t_ns: int, offset_ns: int) -> str:
    """AIPowerMeter's date: str() of a naive local datetime."""
    return str(datetime.datetime.fromtimestamp((t_ns + offset_ns) / 1e9))


def process_memory() -> dict[str, int]:
    """This process's PSS and USS in bytes (what AIPowerMeter's psutil memory_full_info() gives
    as pss and uss), from /proc/self/smaps_rollup; empty where it cannot be read. The kernel
    walks the process's page tables to make that file: tens of ms with torch loaded, spent in
    the read, which lets go of the GIL (the benchmark reads it on a helper thread)."""
    fields: dict[str, int] = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Pss", "Private_Clean", "Private_Dirty"):
                    fields[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return {}
    if "Pss" not in fields:
        return {}
    return {"pss": fields["Pss"], "uss": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def write_run_files(
    run_dir: str,
    *,
    start_ns: int,
    end_ns: int,
    latencies_s,
    parts: dict[str, dict[str, tuple[pd.DataFrame, float]]],
    gpu_index: dict[str, int | str],
    device_means: dict[str, dict[int | str, float]],
    gpu_use: GpuUse,
    host_memory: dict[str, int],
    description: str,
) -> None:
    """power_metrics.json, latency.csv and metadata.json of one run.

    parts: {"gpu"|"cpu": {domain: (its passes, its window energy J)}}; gpu_index: GPU domain ->
    its NVML index (the per-GPU keys); device_means: {"memory"|"utilization": {NVML index:
    mean over the run}}; host_memory: process_memory() at the run's end."""
    offset = time.time_ns() - now_ns()  # CLOCK_MONOTONIC -> the wall clock, now
    by_domain = {}
    dates = None
    for domains in parts.values():
        for domain, (passes, total) in domains.items():
            dates, watts = power_lines(start_ns, end_ns, passes, total)
            by_domain[domain] = watts
    if dates is None:  # nothing measured: the dates alone, every power NaN
        dates, _ = power_lines(start_ns, end_ns, pd.DataFrame(columns=["start_ns", "end_ns", "energy_j"]), math.nan)
    n = len(dates)

    def part_watts(part):
        domains = parts.get(part, {})
        if not domains:
            return np.full(n, np.nan)
        return np.sum([by_domain[d] for d in domains], axis=0)

    gpu_w, cpu_w = part_watts("gpu"), part_watts("cpu")
    share = gpu_use.attributable_share
    pid = os.getpid()
    memory = device_means.get("memory", {})
    util = device_means.get("utilization", {})
    lines = []
    for k in range(n):
        per_gpu = {str(gpu_index[d]): _num(by_domain[d][k]) for d in parts.get("gpu", {})}
        gpu = {
            "nvidia_draw_absolute": _num(gpu_w[k]),
            "nvidia_estimated_attributable_power_draw": _num(gpu_w[k] * share) if share is not None else math.nan,
            "nvidia_power": _num(gpu_w[k]),
            "per_gpu_nvidia_power": per_gpu,
            "nvidia_memory": _num(sum(memory.values())) if memory else math.nan,
            "per_gpu_nvidia_memory": {str(g): _num(v) for g, v in memory.items()},
            "nvidia_use_rate": _num(np.mean(list(util.values()))) if util else math.nan,
            "per_gpu_nvidia_use_rate": {str(g): _num(v) for g, v in util.items()},
            "per_gpu_attributable_mem_use": {
                str(g): {str(p): b for p, b in held.items()} for g, held in gpu_use.memory_by_gpu.items()
            },
            "per_gpu_average_estimated_utilization_absolute": gpu_use.sm_by_gpu,
        }
        cpu = {
            "intel_power": _num(cpu_w[k]),
            "total_cpu_power": math.nan,
            "per_process_mem_use_abs": {str(pid): host_memory["pss"]} if host_memory else {},
            "per_process_mem_use_uss": {str(pid): host_memory["uss"]} if host_memory else {},
        }
        lines.append(json.dumps({"date": _date(int(dates[k]), offset), "metrics": {"cpu": cpu, "gpu": gpu}}))
    write_atomic(os.path.join(run_dir, "power_metrics.json"), ("\n".join(lines) + "\n").encode())
    buf = _savetxt(latencies_s)
    write_atomic(os.path.join(run_dir, "latency.csv"), buf)
    write_json(
        os.path.join(run_dir, "metadata.json"),
        {
            "description": description,
            "date": str(datetime.datetime.now()),
            "period_s": (end_ns - start_ns) / 1e9 / max(1, n - 1),
            "keys": KEYS,
        },
    )


def _savetxt(values) -> bytes:
    import io

    buf = io.BytesIO()
    np.savetxt(buf, np.asarray(values, dtype=np.float64))
    return buf.getvalue()


def _num(value) -> float:
    return float(value)  # a numpy number as JSON's; NaN stays NaN (not measured)
