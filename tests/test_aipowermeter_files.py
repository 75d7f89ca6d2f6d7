"""Run folders that AIPowerMeter's own readers can read and integrate to the run's joules.

AIPowerMeter's code has no licence to vendor and is not on PyPI, so its parsing rules are
re-implemented here, function by function, from GreenAI-Uppa/AIPowerMeter at fc099d1:
JsonParser.load_cpu_metrics/load_gpu_metrics (parsers.py), experiment.integrate/total
(experiment.py), and concat_power_measure.py's integrate, get_value and calc_median. Its real
readers were run by hand on a bench folder too (bench/RESULTS.md)."""

from __future__ import annotations

import datetime
import json
import os
import statistics

import numpy as np
import pandas as pd
import pytest

from aipm_fast.bench.aipowermeter import PERIOD_S, power_lines

SEGMENT_END = "END OF RECORDING SEGMENT"


# ---- AIPowerMeter's rules -------------------------------------------------------------------
def parser_lines(path):
    """JsonParser: `for line in open(file): json.loads(line)`; the segment end is a str line."""
    with open(path) as f:
        return [json.loads(line) for line in f]


def parser_load(path, group):
    """load_cpu_metrics / load_gpu_metrics: {key: {"dates", "values"}}, dict values summed (cpu);
    the gpu loader reads nvidia_memory, nvidia_power, nvidia_use_rate and their per_gpu_ maps,
    and fails (KeyError) on a line without them."""
    metrics: dict = {}
    for result in parser_lines(path):
        if not isinstance(result, dict) or group not in result["metrics"]:
            continue
        date = datetime.datetime.fromisoformat(result["date"])
        if group == "cpu":
            for k, v in result["metrics"]["cpu"].items():
                if isinstance(v, dict):
                    v = sum(v.values())
                metrics.setdefault(k, {"dates": [], "values": []})
                metrics[k]["dates"].append(date)
                metrics[k]["values"].append(v)
        else:
            for mtr in ("nvidia_memory", "nvidia_power", "nvidia_use_rate"):
                v = result["metrics"]["gpu"][mtr]
                metrics.setdefault(mtr, {"dates": [], "values": []})
                metrics[mtr]["dates"].append(date)
                metrics[mtr]["values"].append(v)
                per_gpu = result["metrics"]["gpu"]["per_gpu_" + mtr]
                for gpu, value in per_gpu.items():
                    metrics.setdefault("per_gpu_" + mtr, {}).setdefault(gpu, {"dates": [], "values": []})
                    metrics["per_gpu_" + mtr][gpu]["dates"].append(date)
                    metrics["per_gpu_" + mtr][gpu]["values"].append(value)
    return metrics


def experiment_total(series):
    """experiment.integrate over one segment, dates as timestamps: the trapezoids' sum."""
    t = [d.timestamp() for d in series["dates"]]
    v = series["values"]
    return sum((t[i + 1] - t[i]) * (v[i + 1] + v[i]) / 2 for i in range(len(t) - 1))


def concat_integrate(date, watt):
    """concat_power_measure.integrate: the median trapezoid times their count."""
    v = []
    for i in range(len(watt) - 1):
        x1 = datetime.datetime.fromisoformat(date[i]).timestamp()
        x2 = datetime.datetime.fromisoformat(date[i + 1]).timestamp()
        v.append((x2 - x1) * (watt[i + 1] + watt[i]) / 2)
    return statistics.median(v) * len(v)


def concat_get_value(record, path):
    """concat_power_measure.get_value: 'pid' sums a dict's values, 'sm' sums a list's sm."""
    for key in path:
        if key == "pid":
            record = sum(list(record.values()))
        elif key == "sm":
            record = sum(s.get("sm") for s in record)
        else:
            record = record.get(key)
    return record


def concat_run(run_dir, n):
    """The concat script's figures of one run folder (before its median over runs)."""
    metrics = parser_lines(os.path.join(run_dir, "power_metrics.json"))
    latency = np.loadtxt(os.path.join(run_dir, "latency.csv")).tolist()
    date = [concat_get_value(m, ["date"]) for m in metrics]

    def energy(part, key):
        return concat_integrate(date, [concat_get_value(m, ["metrics", part, key]) for m in metrics]) / n

    def calc_median(path):
        values = [concat_get_value(m, path) for m in metrics]
        return len(values) * statistics.median(values)

    return {
        "intel_power": energy("cpu", "intel_power"),
        "total_cpu_power": energy("cpu", "total_cpu_power"),
        "nvidia_draw_absolute": energy("gpu", "nvidia_draw_absolute"),
        "nvidia_estimated_attributable_power_draw": energy("gpu", "nvidia_estimated_attributable_power_draw"),
        "mem_use_abs": calc_median(["metrics", "cpu", "per_process_mem_use_abs", "pid"]) / n,
        "per_gpu_attributable_mem_use": calc_median(["metrics", "gpu", "per_gpu_attributable_mem_use", "0", "pid"]) / n,
        "sm": calc_median(["metrics", "gpu", "per_gpu_average_estimated_utilization_absolute", "sm"]) / n,
        "latency": statistics.median(latency),
    }


# ---- the lines ------------------------------------------------------------------------------
def passes_frame(starts, ends, joules):
    return pd.DataFrame({"start_ns": starts, "end_ns": ends, "energy_j": joules})


def trapezoid(dates_ns, watts):
    t = np.asarray(dates_ns) / 1e9
    return float(np.sum(np.diff(t) * (watts[1:] + watts[:-1]) / 2))


@pytest.mark.parametrize("duration_s", [0.03, 0.26, 1.0, 7.3])
def test_lines_are_evenly_spaced_and_integrate_to_the_runs_joules(duration_s):
    rng = np.random.default_rng(1)
    start = 10**12
    end = start + int(duration_s * 1e9)
    edges = np.sort(rng.uniform(start, end, 40).astype(np.int64))
    starts, ends = edges[0::2], edges[1::2]  # passes with gaps between them
    joules = rng.uniform(0.1, 3.0, starts.size)
    total = float(joules.sum()) * 1.2  # the gaps hold a fifth more
    dates, watts = power_lines(start, end, passes_frame(starts, ends, joules), total)
    steps = np.diff(dates)
    assert dates[0] == start and dates[-1] == end
    assert steps.max() - steps.min() <= 1  # ns rounding only
    assert len(dates) == max(1, round(duration_s / PERIOD_S)) + 1
    assert trapezoid(dates, watts) == pytest.approx(total, rel=1e-9)
    assert (watts >= 0).all()


def test_passes_holding_more_than_the_window_are_scaled_down_never_negative():
    start, end = 0, 10**9
    passes = passes_frame([0, 5 * 10**8], [4 * 10**8, 9 * 10**8], [30.0, 30.0])
    dates, watts = power_lines(start, end, passes, 50.0)
    assert trapezoid(dates, watts) == pytest.approx(50.0)
    assert (watts >= 0).all()


def test_a_steady_power_gives_the_concat_scripts_integral_too():
    start, end = 0, int(2.05e9)
    edges = np.linspace(start, end, 206).astype(np.int64)
    passes = passes_frame(edges[:-1], edges[1:], 100.0 * np.diff(edges) / 1e9)
    dates, watts = power_lines(start, end, passes, 205.0)
    text = [str(datetime.datetime.fromtimestamp(1.8e9 + d / 1e9)) for d in dates]
    assert concat_integrate(text, list(watts)) == pytest.approx(205.0, rel=1e-3)
    assert watts == pytest.approx(100.0)


def test_an_unmeasured_energy_is_nan_throughout():
    _, watts = power_lines(0, 10**9, passes_frame([0], [10**9], [float("nan")]), 5.0)
    assert np.isnan(watts).all()
    _, watts = power_lines(0, 10**9, passes_frame([0], [10**9], [1.0]), float("nan"))
    assert np.isnan(watts).all()


# ---- a bench folder on the fakes, read as AIPowerMeter reads it -----------------------------
@pytest.fixture(scope="module")
def bench_folder(tmp_path_factory, fake_nvml_lib):
    pytest.importorskip("torchvision")
    from aipm_fast.bench.protocol import Benchmark, BenchOptions

    out = tmp_path_factory.mktemp("aipm") / "bench"
    mp = pytest.MonkeyPatch()
    mp.setenv("FAKE_NVML_PROCESSES", f"{os.getpid()}:900:87,4242:100:29")
    mp.setenv("FAKE_NVML_GPM", "61,32,44,57")
    try:
        opts = BenchOptions(
            model="resnet18",
            sizes=[32],
            batch_size=2,
            runs=2,
            iters=4,
            warmup_s=0.1,
            baseline_s=0.3,
            device="cpu",
            out=str(out),
            engine={"nvml_lib": str(fake_nvml_lib), "powercap_root": "/x", "msr_root": "/x", "perf_root": "/x"},
        )
        Benchmark(opts, log=lambda m: None).run()
    finally:
        mp.undo()
    return out


def runs_of(folder):
    return [folder / "input_32" / f"run_{k}" for k in (0, 1)]


def test_every_line_parses_and_holds_the_keys_both_readers_need(bench_folder):
    for run_dir in runs_of(bench_folder):
        lines = parser_lines(run_dir / "power_metrics.json")
        assert len(lines) >= 2
        for line in lines:
            datetime.datetime.fromisoformat(line["date"])
            gpu, cpu = line["metrics"]["gpu"], line["metrics"]["cpu"]
            for key in ("nvidia_draw_absolute", "nvidia_estimated_attributable_power_draw", "nvidia_power"):
                assert isinstance(gpu[key], float)
            assert cpu["intel_power"] != cpu["intel_power"]  # no CPU source here: NaN, not 0
        assert json.loads((run_dir / "metadata.json").read_text())["description"]
        parser_load(run_dir / "power_metrics.json", "gpu")  # no KeyError
        parser_load(run_dir / "power_metrics.json", "cpu")


def test_expresults_totals_recover_the_runs_joules(bench_folder):
    for run_dir in runs_of(bench_folder):
        run = json.loads((run_dir / "run.json").read_text())
        gpu = parser_load(run_dir / "power_metrics.json", "gpu")
        assert experiment_total(gpu["nvidia_power"]) == pytest.approx(run["energy"]["gpu"]["energy_j"], rel=0.01)
        assert experiment_total(gpu["per_gpu_nvidia_power"]["0"]) == pytest.approx(
            run["energy"]["gpu"]["energy_j"], rel=0.01
        )


def test_latency_csv_is_savetxt_one_latency_per_forward_pass(bench_folder):
    for run_dir in runs_of(bench_folder):
        run = json.loads((run_dir / "run.json").read_text())
        latency = np.loadtxt(run_dir / "latency.csv")
        assert latency.size == run["n_inferences"] // run["batch_size"] == 4
        assert float(np.median(latency)) == pytest.approx(run["latency_median_s"])


def test_concat_script_gives_joules_per_forward_pass_and_the_process_figures(bench_folder):
    for run_dir in runs_of(bench_folder):
        run = json.loads((run_dir / "run.json").read_text())
        passes = run["n_inferences"] // run["batch_size"]
        got = concat_run(run_dir, passes)
        per_pass = run["energy"]["gpu"]["energy_j"] / passes
        assert got["nvidia_draw_absolute"] == pytest.approx(per_pass, rel=0.01)
        # attributable: board power times this process's share of the SM time (87 of 87 + 29)
        assert got["nvidia_estimated_attributable_power_draw"] == pytest.approx(per_pass * 87 / 116, rel=0.01)
        lines = len(parser_lines(run_dir / "power_metrics.json"))
        assert got["per_gpu_attributable_mem_use"] == pytest.approx(lines * 900 * 2**20 / passes)
        assert got["sm"] == pytest.approx(lines * 87 / passes)


def test_run_json_has_the_process_and_gpm_figures(bench_folder):
    run = json.loads((runs_of(bench_folder)[0] / "run.json").read_text())
    assert run["process_sm_pct"] == 87
    assert run["process_gpu_memory_gb"] == pytest.approx(900 * 2**20 / 1e9)
    assert run["process_missing_reason"] is None
    gpm = {k: run[k] for k in ("gpm_sm_active_pct", "gpm_sm_occupancy_pct", "gpm_tensor_active_pct")}
    assert gpm == {"gpm_sm_active_pct": 61, "gpm_sm_occupancy_pct": 32, "gpm_tensor_active_pct": 44}
    assert run["gpm_dram_bw_pct"] == 57 and run["gpm_missing_reason"] is None
