"""Synthetic benchmark folders, laid out as `aipm-fast bench` writes them, with known numbers.

    write_bench(tmp_path, sizes=(32, 64, 128), runs=3)

writes OUT/meta.json and, for every size and run, OUT/input_<size>/run_<k>/ with run.json,
inferences.csv, samples.parquet (optional) and the AIPowerMeter-compatible copies. The numbers
come from :func:`default_values` unless `values(size, run)` overrides some of them, so a test
knows every figure a report should compute.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from aipm_fast.storage import SAMPLE_SCHEMA

T0_NS = 5_000_000_000_000  # CLOCK_MONOTONIC of the first run's first inference
IDLE_GPU_W = 60.0
IDLE_CPU_W = 20.0
RAPL_WRAP_J = 1000.0  # the synthetic RAPL counter wraps at this many joules
NO_ENERGY_REASON = "no GPU (CUDA unavailable); RAPL not readable: permission denied"
NO_GPU_REASON = "no NVML GPU metered"

FLAG_REPEAT = 1
FLAG_FINAL = 2


def bench_options(tmp_path, **kw):
    """BenchOptions of a short CPU benchmark of resnet18 at 32 px into tmp_path/out; kw overrides."""
    from aipm_fast.bench.protocol import BenchOptions

    base = dict(
        model="resnet18",
        sizes=[32],
        batch_size=2,
        runs=2,
        duration_s=0.6,
        warmup_s=0.2,
        baseline_s=0.5,
        device="cpu",
        out=str(tmp_path / "out"),
    )
    base.update(kw)
    return BenchOptions(**base)


def default_values(size, run) -> dict:
    """Known figures of one run: latency (s), J per inference of GPU and CPU, GPU load."""
    scale = size / 32
    return {
        "latency_s": 0.001 * scale + 0.0001 * run,
        "gpu_jpi": 0.01 * scale + 0.001 * run,
        "cpu_jpi": 0.002 * scale + 0.0002 * run,
        "gpu_util": 50.0 + size / 10 + run,
        "gpu_mem": 0.5 + size / 1000,
        "process_sm": 40.0 + size / 10 + run,
        "process_mem": 1.5 + size / 1000,
        "gpm_sm": 30.0 + run,
        "gpm_tensor": 10.0 + run,
        "gpm_dram": 20.0 + run,
    }


def run_json(size, run, v: dict, *, n_inferences=20, batch_size=1, model="tinynet", device="cuda", energy=True) -> dict:
    """The run.json content for the figures v (see default_values)."""
    latency = v["latency_s"]
    duration = n_inferences * latency * 1.05

    def part(jpi):
        if jpi is None or not energy:
            return None
        return {
            "energy_j": jpi * n_inferences,
            "dynamic_energy_j": 0.7 * jpi * n_inferences,
            "joules_per_inference": jpi,
            "dynamic_joules_per_inference": 0.7 * jpi,
        }

    gpu = part(v["gpu_jpi"])
    cpu = part(v["cpu_jpi"])
    total = None
    if gpu is not None and cpu is not None:
        total = {k: gpu[k] + cpu[k] for k in gpu}
    return {
        "model": model,
        "size": size,
        "run": run,
        "batch_size": batch_size,
        "device": device,
        "n_inferences": n_inferences,
        "duration_s": duration,
        "latency_median_s": latency,
        "throughput_per_s": batch_size / latency,
        "gpu_utilization_pct": v["gpu_util"] if energy else None,
        "gpu_memory_gb": v["gpu_mem"] if energy else None,
        "energy": {"gpu": gpu, "cpu": cpu, "total": total},
        "energy_missing_reason": None if energy else NO_ENERGY_REASON,
        "process_sm_pct": v["process_sm"] if energy else None,
        "process_gpu_memory_gb": v["process_mem"] if energy else None,
        "process_missing_reason": None if energy else NO_GPU_REASON,
        "gpm_sm_active_pct": v["gpm_sm"] if energy else None,
        "gpm_sm_occupancy_pct": v["gpm_sm"] / 2 if energy else None,
        "gpm_tensor_active_pct": v["gpm_tensor"] if energy else None,
        "gpm_dram_bw_pct": v["gpm_dram"] if energy else None,
        "gpm_missing_reason": None if energy else NO_GPU_REASON,
        # a dense model's counts (bench/model_counts.py)
        "prune_method": "none",
        "sparsity_format": "dense",
        "sparsity": 0.0,
        "prune_score": "-",
        "prune_loss": None,
        "prune_left_dense": "everything (not pruned)",
        "params_dense": 1000,
        "params_total": 1000,
        "params_nonzero": 990,
        "effective_sparsity": 0.0,
        "prunable_params_dense": 900,
        "prunable_sparsity": 0.0,
        "flops_dense": 2000.0 * size,
        "flops_effective": 2000.0 * size,
        "flops_executed": 2000.0 * size,
        "semi_structured_flops_share": None,
        "layers_pruned": 0,
        "channels_removed": 0,
        "model_count_missing_reason": None,
    }


def inference_times(t0_ns: int, n: int, latency_s: float):
    """start_ns, end_ns of n inferences of latency_s, each 5 % of a latency after the last."""
    period_ns = int(round(latency_s * 1.05e9))
    start = t0_ns + np.arange(n, dtype=np.int64) * period_ns
    return start, start + int(round(latency_s * 1e9))


def write_inferences(path, start, end, v: dict, energy=True) -> None:
    n = start.size
    gpu = np.full(n, v["gpu_jpi"] if energy else np.nan)
    cpu = np.full(n, v["cpu_jpi"] if energy else np.nan)
    with open(path, "w") as f:
        f.write("index,start_ns,end_ns,latency_s,gpu_j,cpu_j,total_j\n")
        for i in range(n):

            def num(x):
                return "" if np.isnan(x) else repr(float(x))

            f.write(
                f"{i},{start[i]},{end[i]},{float(end[i] - start[i]) * 1e-9!r},"
                f"{num(gpu[i])},{num(cpu[i])},{num(gpu[i] + cpu[i])}\n"
            )


def _counter(t_ns, watts, start_j, read_every, update_every, wrap=None):
    """Readings of an energy counter integrating `watts` (constant), updated every
    `update_every`-th reading and read at t_ns[::read_every]; repeats flagged."""
    t = t_ns[::read_every]
    elapsed = (t - t[0]) * 1e-9
    k = np.arange(t.size) // update_every * update_every
    value = start_j + watts * elapsed[k]
    if wrap is not None:
        value = np.mod(value, wrap)
    flags = np.where(np.arange(t.size) % update_every == 0, 0, FLAG_REPEAT).astype(np.uint32)
    return t, value, flags


def samples_records(start, end, v: dict, *, wrap_rapl=True) -> dict:
    """channel -> (t_ns, value, flags) around the inferences [start[0], end[-1]]."""
    lo = int(start[0]) - 100_000_000
    hi = int(end[-1]) + 100_000_000
    grid = np.arange(lo, hi, 1_000_000, dtype=np.int64)  # 1 ms
    busy = (grid >= start[0]) & (grid <= end[-1])
    gpu_w = np.where(busy, IDLE_GPU_W + 100.0 * v["gpu_jpi"] / v["latency_s"] / 10, IDLE_GPU_W)
    out = {
        "nvml:0.power_samples": (grid[::20], gpu_w[::20], np.zeros(grid[::20].size, np.uint32)),
        "nvml:0.power_instant": (grid[::50], gpu_w[::50], np.zeros(grid[::50].size, np.uint32)),
        "nvml:0.utilization": (
            grid[::100],
            np.where(busy[::100], v["gpu_util"], 0.0),
            np.zeros(grid[::100].size, np.uint32),
        ),
        "nvml:0.energy": _counter(grid, IDLE_GPU_W, 12345.0, 10, 5),
        "rapl:package-0.energy": _counter(
            grid, IDLE_CPU_W, RAPL_WRAP_J - 1.0, 2, 1, wrap=RAPL_WRAP_J if wrap_rapl else None
        ),
    }
    for _t, _value, flags in out.values():
        flags[-1] |= FLAG_FINAL
    return out


def write_samples(path, records: dict) -> None:
    names = list(records)
    t = np.concatenate([r[0] for r in records.values()])
    ids = np.concatenate([np.full(r[0].size, i, np.int32) for i, r in enumerate(records.values())])
    value = np.concatenate([r[1] for r in records.values()]).astype(np.float64)
    flags = np.concatenate([r[2] for r in records.values()]).astype(np.uint32)
    order = np.argsort(t, kind="stable")
    channel = pa.DictionaryArray.from_arrays(pa.array(ids[order]), pa.array(names, pa.string()))
    table = pa.Table.from_arrays(
        [pa.array(t[order]), channel, pa.array(value[order]), pa.array(flags[order])], schema=SAMPLE_SCHEMA
    )
    pq.write_table(table, path)


def write_bench(
    out_dir,
    sizes=(32, 64, 128),
    runs=3,
    *,
    values=None,
    energy=True,
    samples=True,
    n_inferences=20,
    batch_size=1,
    model="tinynet",
    device="cuda",
) -> list[dict]:
    """Write a benchmark folder; returns the run.json contents written, in (size, run) order.

    values(size, run) -> dict overrides default_values (keys latency_s, gpu_jpi, cpu_jpi,
    gpu_util, gpu_mem; gpu_jpi/cpu_jpi None for a part not measured). energy=False writes a
    CPU-only machine's runs: every energy part null, with a reason. samples: True, False, or
    samples(size, run) -> bool, for which runs get a samples.parquet.
    """
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(
            {
                "model": model,
                "options": {"sizes": list(sizes), "runs": runs, "batch_size": batch_size},
                "versions": {"aipm_fast": "0.1.0"},
                "devices": {"nvml:0": "Synthetic GPU"},
            },
            f,
        )
    written = []
    t0 = T0_NS
    for size in sizes:
        for run in range(runs):
            v = default_values(size, run)
            if values is not None:
                v.update(values(size, run) or {})
            run_dir = os.path.join(out_dir, f"input_{size}", f"run_{run}")
            os.makedirs(run_dir, exist_ok=True)
            data = run_json(
                size,
                run,
                v,
                n_inferences=n_inferences,
                batch_size=batch_size,
                model=model,
                device=device,
                energy=energy,
            )
            with open(os.path.join(run_dir, "run.json"), "w") as f:
                json.dump(data, f, indent=2)
            start, end = inference_times(t0, n_inferences, v["latency_s"])
            t0 = int(end[-1]) + 1_000_000_000
            write_inferences(
                os.path.join(run_dir, "inferences.csv"),
                start,
                end,
                v,
                energy=energy and v["gpu_jpi"] is not None and v["cpu_jpi"] is not None,
            )
            want_samples = samples(size, run) if callable(samples) else samples
            if want_samples:
                write_samples(os.path.join(run_dir, "samples.parquet"), samples_records(start, end, v))
            # AIPowerMeter-compatible copies, which the report ignores
            with open(os.path.join(run_dir, "power_metrics.json"), "w") as f:
                json.dump({"nvidia_draw_absolute": 1.0}, f)
            with open(os.path.join(run_dir, "latency.csv"), "w") as f:
                f.write("0\n" + "\n".join(repr(float(e - s) * 1e-9) for s, e in zip(start, end)) + "\n")
            written.append(data)
    return written
