"""Benchmark report: reading run folders, medians and spread per size, summary.csv, plots."""

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from aipm_fast.bench import plots
from aipm_fast.bench.folder import load_runs, read_samples
from aipm_fast.bench.plots import plot_report
from aipm_fast.bench.report import build_report
from aipm_fast.bench.runfile import ENERGY_KEYS, ENERGY_PARTS, PartEnergy, ReportError, RunFile
from aipm_fast.bench.summary import summarize, write_summary
from aipm_fast.bench.table import format_table
from aipm_fast.bench.traces import power_traces

from bench_fixtures import (
    IDLE_CPU_W,
    IDLE_GPU_W,
    NO_ENERGY_REASON,
    default_values,
    run_json,
    write_bench,
    write_samples,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SIZES = (32, 64, 128)


def is_png(path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return os.path.getsize(path) > 1000 and head == PNG_SIGNATURE


@pytest.fixture
def bench(tmp_path):
    out = tmp_path / "out"
    write_bench(out, sizes=SIZES, runs=3)
    return out


def run_json_path(out, size, run):
    return out / f"input_{size}" / f"run_{run}" / "run.json"


# -- load_runs ---------------------------------------------------------------------------


def test_a_run_file_written_before_the_process_and_gpm_fields_reads_them_as_not_measured(tmp_path):
    data = run_json(32, 1, default_values(32, 1))
    added = [k for k in data if k.startswith(("process_", "gpm_"))]
    assert len(added) == 8
    for key in added:
        del data[key]
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    run = RunFile.read(path)
    assert all(getattr(run, key) is None for key in added)
    assert run.energy["gpu"] is not None


def test_load_runs_has_one_row_per_run_with_flattened_energies(bench):
    runs = load_runs(bench)
    assert len(runs) == len(SIZES) * 3
    assert list(runs[["size", "run"]].itertuples(index=False, name=None)) == [(s, r) for s in SIZES for r in range(3)]
    for col in (
        "size",
        "run",
        "batch_size",
        "n_inferences",
        "duration_s",
        "latency_median_s",
        "throughput_per_s",
        "gpu_utilization_pct",
        "gpu_memory_gb",
        "gpu_joules_per_inference",
        "total_dynamic_joules_per_inference",
        "cpu_energy_j",
    ):
        assert col in runs.columns, col
    for part in ENERGY_PARTS:
        for key in ENERGY_KEYS:
            assert f"{part}_{key}" in runs.columns
    row = runs[(runs["size"] == 64) & (runs["run"] == 2)].iloc[0]
    v = default_values(64, 2)
    assert row["gpu_joules_per_inference"] == pytest.approx(v["gpu_jpi"])
    assert row["cpu_energy_j"] == pytest.approx(v["cpu_jpi"] * 20)
    assert row["total_joules_per_inference"] == pytest.approx(v["gpu_jpi"] + v["cpu_jpi"])
    assert row["latency_median_s"] == pytest.approx(v["latency_s"])
    assert row["path"] == str(bench / "input_64" / "run_2")


def test_a_part_not_measured_is_nan(tmp_path):
    write_bench(tmp_path, sizes=(32,), runs=2, values=lambda s, r: {"cpu_jpi": None})
    runs = load_runs(tmp_path)
    assert runs["cpu_joules_per_inference"].isna().all()
    assert runs["total_energy_j"].isna().all()
    assert runs["gpu_joules_per_inference"].notna().all()


# -- the run file -----------------------------------------------------------------------


@pytest.mark.parametrize("energy", [True, False])
def test_run_file_reads_and_writes_the_same_json(tmp_path, energy):
    data = run_json(32, 1, default_values(32, 1), energy=energy)
    path = tmp_path / "run.json"
    path.write_text(json.dumps(data))
    run = RunFile.read(path)
    assert run.to_json() == data
    assert list(run.to_json()) == list(data)  # the keys in the order of the file
    assert (run.energy["gpu"] is None) == (not energy)
    again = tmp_path / "again"
    again.mkdir()
    assert RunFile.read(run.write(again)) == run


def test_run_file_refuses_to_write_what_the_report_would_refuse(tmp_path):
    run = RunFile.read(_written(tmp_path, run_json(32, 0, default_values(32, 0))))
    with pytest.raises(ReportError, match="key 'n_inferences' is 0, must be >= 1") as err:
        dataclasses.replace(run, n_inferences=0).write(tmp_path / "input_32")
    assert str(tmp_path / "input_32" / "run.json") in str(err.value)
    assert not (tmp_path / "input_32" / "run.json").exists()


def test_part_energies_sum_and_stay_unknown_where_a_part_is():
    gpu = PartEnergy.of(10.0, 4.0, 5)
    cpu = PartEnergy.of(2.0, float("nan"), 5)
    assert (gpu.joules_per_inference, gpu.dynamic_joules_per_inference) == (2.0, 0.8)
    assert cpu.dynamic_energy_j is None and cpu.dynamic_joules_per_inference is None
    total = PartEnergy.sum([gpu, cpu])
    assert (total.energy_j, total.joules_per_inference) == (12.0, 2.4)
    assert total.dynamic_energy_j is None


def _written(folder, data):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "run.json"
    path.write_text(json.dumps(data))
    return path


# -- ReportError -------------------------------------------------------------------------


def test_invalid_json_names_the_file(bench):
    path = run_json_path(bench, 64, 1)
    path.write_text('{"model": "tinynet", "size": 64,')
    with pytest.raises(ReportError, match="not JSON") as err:
        load_runs(bench)
    assert str(path) in str(err.value)
    assert err.value.path == str(path)


def test_missing_energy_key_names_the_file_and_the_key(bench):
    path = run_json_path(bench, 128, 0)
    data = json.loads(path.read_text())
    del data["energy"]
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError, match="missing key 'energy'") as err:
        load_runs(bench)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(latency_median_s="fast"), "'latency_median_s' has the wrong type"),
        (lambda d: d.update(n_inferences=2.5), "'n_inferences' has the wrong type"),
        (lambda d: d.update(throughput_per_s=None), "'throughput_per_s' is null"),
        (lambda d: d["energy"].pop("cpu"), "missing key 'energy.cpu'"),
        (lambda d: d["energy"]["gpu"].pop("joules_per_inference"), "missing key 'energy.gpu.joules_per_inference'"),
        (lambda d: d["energy"].update(gpu=[1, 2]), "'energy.gpu' has the wrong type"),
        (lambda d: d.update(size=65), "key 'size' is 65 but the folder is input_64"),
        (lambda d: d.update(run=3), "key 'run' is 3 but the folder is run_1"),
        (lambda d: d.update(batch_size=4), "'batch_size' is 4"),
    ],
)
def test_malformed_run_json_names_the_file_and_the_fault(bench, change, message):
    path = run_json_path(bench, 64, 1)
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    with pytest.raises(ReportError) as err:
        load_runs(bench)
    assert str(path) in str(err.value)
    assert message in str(err.value)


def test_missing_and_empty_run_json_name_the_file(bench):
    path = run_json_path(bench, 32, 2)
    path.write_text("")
    with pytest.raises(ReportError, match="empty file") as err:
        load_runs(bench)
    assert str(path) in str(err.value)
    path.unlink()  # an interrupted run: left out, named, the complete runs reported
    runs = load_runs(bench)
    assert runs.attrs["missing"] == [str(path.parent)]
    assert ((runs["size"] == 32) & (runs["run"] == 2)).sum() == 0 and len(runs) > 0
    assert build_report(bench)["missing"] == [str(path.parent)]
    for other in bench.glob("input_*/run_*/run.json"):
        other.unlink()
    with pytest.raises(ReportError, match="no complete benchmark run"):
        load_runs(bench)


def test_report_command_on_an_interrupted_bench_names_the_missing_run(bench):
    path = run_json_path(bench, 32, 2)
    path.unlink()
    (path.parent / "samples").mkdir()  # what a killed run leaves
    result = subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "report", str(bench)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "incomplete run left out" in result.stderr and "run_2" in result.stderr


def test_a_folder_without_runs_names_the_folder(tmp_path):
    with pytest.raises(ReportError, match="no benchmark runs") as err:
        load_runs(tmp_path)
    assert str(tmp_path) in str(err.value)
    (tmp_path / "input_32").mkdir()
    with pytest.raises(ReportError, match="no benchmark runs"):
        load_runs(tmp_path)
    with pytest.raises(ReportError, match="missing") as err:
        load_runs(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(err.value)


# -- summarize ---------------------------------------------------------------------------


def test_summarize_gives_exact_medians_and_spread(tmp_path):
    total = {32: [1.0, 2.0, 3.0, 4.0, 10.0], 64: [5.0, 5.0, 6.0, 7.0, 9.0]}
    latency = {32: [0.010, 0.012, 0.011, 0.013, 0.020], 64: [0.030, 0.031, 0.029, 0.032, 0.040]}

    def values(size, run):  # GPU is 80 % of the total, CPU 20 %
        return {"gpu_jpi": 0.8 * total[size][run], "cpu_jpi": 0.2 * total[size][run], "latency_s": latency[size][run]}

    # sizes written out of order: the summary is sorted by size
    write_bench(tmp_path, sizes=(64, 32), runs=5, values=values, n_inferences=10, batch_size=2)
    summary = summarize(load_runs(tmp_path))
    assert list(summary["size"]) == [32, 64]
    assert list(summary["runs"]) == [5, 5]
    assert list(summary["batch_size"]) == [2, 2]
    s32 = summary.iloc[0]
    assert s32["total_joules_per_inference"] == pytest.approx(3.0)
    assert s32["gpu_joules_per_inference"] == pytest.approx(2.4)
    assert s32["cpu_joules_per_inference"] == pytest.approx(0.6)
    assert s32["total_energy_j"] == pytest.approx(30.0)
    assert s32["total_dynamic_joules_per_inference"] == pytest.approx(2.1)
    assert s32["n_inferences"] == 10
    # quartiles of 1, 2, 3, 4, 10 are 2 and 4: IQR 2 over a median of 3
    assert s32["total_joules_per_inference_iqr_pct"] == pytest.approx(200 / 3)
    assert s32["total_joules_per_inference_min"] == pytest.approx(1.0)
    assert s32["total_joules_per_inference_max"] == pytest.approx(10.0)
    assert s32["gpu_joules_per_inference_iqr_pct"] == pytest.approx(200 / 3)
    assert s32["gpu_joules_per_inference_max"] == pytest.approx(8.0)
    assert s32["latency_median_s"] == pytest.approx(0.012)
    assert s32["latency_median_s_iqr_pct"] == pytest.approx((0.013 - 0.011) / 0.012 * 100)
    assert s32["latency_median_s_min"] == pytest.approx(0.010)
    assert s32["latency_median_s_max"] == pytest.approx(0.020)
    assert s32["throughput_per_s"] == pytest.approx(np.median([2 / x for x in latency[32]]))
    s64 = summary.iloc[1]
    assert s64["total_joules_per_inference"] == pytest.approx(6.0)
    assert s64["total_joules_per_inference_iqr_pct"] == pytest.approx((7 - 5) / 6 * 100)
    assert s64["latency_median_s"] == pytest.approx(0.031)


def test_write_summary_writes_a_readable_csv(bench):
    path = write_summary(bench)
    assert path == str(bench / "summary.csv")
    back = pd.read_csv(path)
    expected = summarize(load_runs(bench))
    assert list(back.columns) == list(expected.columns)
    assert list(back["size"]) == list(SIZES)
    np.testing.assert_allclose(back["gpu_joules_per_inference"], expected["gpu_joules_per_inference"], rtol=1e-5)
    with open(path) as f:
        text = f.read()
    assert "0.0200000000" not in text  # floats are written with a few significant digits


def test_runs_without_energy_still_summarize(tmp_path):
    write_bench(tmp_path, sizes=SIZES, runs=3, energy=False, samples=False)
    runs = load_runs(tmp_path)
    assert (runs["energy_missing_reason"] == NO_ENERGY_REASON).all()
    summary = summarize(runs)
    assert len(summary) == 3
    assert summary["latency_median_s"].tolist() == pytest.approx([default_values(s, 1)["latency_s"] for s in SIZES])
    assert summary["throughput_per_s"].notna().all()
    for col in (
        "gpu_joules_per_inference",
        "total_joules_per_inference_iqr_pct",
        "gpu_utilization_pct",
        "gpu_memory_gb",
        "cpu_energy_j",
    ):
        assert summary[col].isna().all(), col
    back = pd.read_csv(write_summary(tmp_path))
    assert back["total_joules_per_inference"].isna().all()
    assert back["latency_median_s"].notna().all()

    result = build_report(tmp_path)
    assert NO_ENERGY_REASON in result["skipped"]["energy_vs_size.png"]
    assert "latency_energy_vs_size.png" in result["skipped"]
    assert "samples.parquet" in result["skipped"]["power_trace.png"]
    assert [os.path.basename(p) for p in result["plots"]] == ["spearman.png"]
    assert not (tmp_path / "plots" / "energy_vs_size.png").exists()


# -- table -------------------------------------------------------------------------------


def header_of(table):
    return [str(c.header) for c in table.columns]


def test_format_table_drops_columns_not_measured(bench, tmp_path):
    from rich.console import Console

    table = format_table(summarize(load_runs(bench)), title="tinynet")
    headers = header_of(table)
    for h in (
        "size",
        "batch",
        "GPU J/inf",
        "CPU J/inf",
        "total J/inf",
        "latency ms",
        "throughput/s",
        "GPU util %",
        "proc SM %",
        "proc GPU mem GB",
        "torch peak GB",  # torch's peak allocated tensors, not what the process holds
        "SM active %",
        "tensor %",
        "DRAM BW %",
        "J spread %",
    ):
        assert h in headers
    assert table.row_count == 3
    console = Console(record=True, width=200)
    console.print(table)
    text = console.export_text()
    assert "128" in text and "tinynet" in text

    cpu_only = tmp_path / "cpu_only"
    write_bench(cpu_only, sizes=SIZES, runs=3, energy=False, samples=False)
    headers = header_of(format_table(summarize(load_runs(cpu_only))))
    assert "latency ms" in headers and "throughput/s" in headers and "latency spread %" in headers
    assert not any("J/inf" in h or "GPU" in h or "J spread" in h for h in headers)


# -- plots -------------------------------------------------------------------------------


def test_build_report_writes_every_plot_as_png(bench):
    result = build_report(bench)
    assert result["skipped"] == {}
    assert result["summary"] == str(bench / "summary.csv")
    names = [os.path.basename(p) for p in result["plots"]]
    assert names == ["energy_vs_size.png", "latency_energy_vs_size.png", "spearman.png", "power_trace.png"]
    for path in result["plots"]:
        assert os.path.dirname(path) == str(bench / "plots")
        assert is_png(path), path
    assert not [f for f in os.listdir(bench / "plots") if f.endswith(".tmp")]


def test_plot_report_reports_why_a_plot_is_skipped(tmp_path):
    write_bench(tmp_path, sizes=(32, 64), runs=2, samples=False)
    skipped = {}
    plots = plot_report(tmp_path, skipped=skipped)
    names = [os.path.basename(p) for p in plots]
    assert names == ["energy_vs_size.png", "latency_energy_vs_size.png", "spearman.png"]
    assert skipped == {"power_trace.png": "no run has samples.parquet"}


def test_power_trace_uses_the_first_run_of_the_largest_size_with_samples(tmp_path):
    write_bench(tmp_path, sizes=SIZES, runs=3, samples=lambda size, run: size == 64 and run >= 1)
    runs = load_runs(tmp_path)
    row, run_dir = plots._trace_run(str(tmp_path), runs)
    assert (row["size"], row["run"]) == (64, 1)
    assert run_dir == str(tmp_path / "input_64" / "run_1")


def test_corrupt_samples_or_inferences_raise_with_the_path(bench):
    samples = bench / "input_128" / "run_0" / "samples.parquet"
    samples.write_bytes(b"not parquet at all")
    with pytest.raises(ReportError, match="not a readable Parquet file") as err:
        plot_report(bench)
    assert str(samples) in str(err.value)

    samples.unlink()  # the trace falls back to run_1 of the same size
    inferences = bench / "input_128" / "run_1" / "inferences.csv"
    inferences.write_text("")
    with pytest.raises(ReportError, match="empty CSV") as err:
        plot_report(bench)
    assert str(inferences) in str(err.value)
    inferences.write_text("index,start_ns\n0,1\n")
    with pytest.raises(ReportError, match="missing column") as err:
        plot_report(bench)
    assert str(inferences) in str(err.value)


def test_samples_without_power_channels_skip_the_trace(tmp_path):
    write_bench(tmp_path, sizes=(32,), runs=3, samples=False)
    t = np.arange(0, 10**9, 10**8, dtype=np.int64)
    write_samples(
        tmp_path / "input_32" / "run_0" / "samples.parquet",
        {"nvml:0.utilization": (t, np.full(t.size, 50.0), np.zeros(t.size, np.uint32))},
    )
    skipped = {}
    plot_report(tmp_path, skipped=skipped)
    assert "no power or energy channel" in skipped["power_trace.png"]


def test_power_traces_differentiate_counters_across_a_wrap(bench):
    samples = read_samples(bench / "input_32" / "run_0" / "samples.parquet")
    traces = power_traces(samples)
    assert set(traces) == {"nvml:0.power_samples", "nvml:0.power_instant", "nvml:0.energy", "rapl:package-0.energy"}
    t, w, kind = traces["rapl:package-0.energy"]
    assert kind == "counter"
    finite = w[np.isfinite(w)]
    assert finite.size >= 0.9 * w.size and np.isnan(w).sum() >= 1  # the wrap interval is left out
    np.testing.assert_allclose(finite, IDLE_CPU_W, rtol=1e-6)
    t, w, kind = traces["nvml:0.energy"]
    np.testing.assert_allclose(w, IDLE_GPU_W, rtol=1e-6)  # repeats between updates are not 0 W
    assert traces["nvml:0.power_samples"][2] == "power"


def test_power_traces_are_thinned_to_max_points():
    t = np.arange(0, 10**10, 10**6, dtype=np.int64)  # 10 s at 1 kHz
    samples = pd.DataFrame(
        {
            "t_ns": np.concatenate([t, t]),
            "channel": ["gpu.power"] * t.size + ["cpu.energy"] * t.size,
            "value": np.concatenate([np.full(t.size, 100.0), 30.0 * t * 1e-9]),
            "flags": np.zeros(2 * t.size, np.uint32),
        }
    )
    traces = power_traces(samples, max_points=500)
    assert traces["gpu.power"][0].size <= 500
    np.testing.assert_allclose(traces["gpu.power"][1], 100.0)
    assert traces["cpu.energy"][0].size <= 501
    np.testing.assert_allclose(traces["cpu.energy"][1], 30.0, rtol=1e-9)


def test_a_failing_plot_does_not_cost_the_others(bench, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(plots, "_plot_spearman", broken)
    result = build_report(bench)
    assert result["skipped"] == {"spearman.png": "failed: RuntimeError: boom"}
    assert len(result["plots"]) == 3


def test_read_samples_falls_back_to_the_parts_of_a_killed_run(tmp_path):
    from aipm_fast._native import RECORD_DTYPE
    from aipm_fast.storage import ParquetSampleWriter

    w = ParquetSampleWriter(str(tmp_path / "samples.parquet"), ["rapl:package-0.energy"], part_every_s=0.0)
    records = np.zeros(5, RECORD_DTYPE)
    records["t_ns"] = np.arange(5)
    w(records)
    w(records)  # never closed: as a SIGKILL leaves it
    samples = read_samples(tmp_path / "samples.parquet")
    assert len(samples) == 10 and set(samples["channel"].astype(str)) == {"rapl:package-0.energy"}


def report_cli(folder, *args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "report", str(folder), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_the_console_table_is_whole_in_a_log(bench):
    # piped, as in CI or `| tee`: no column may be cut to fit 80 characters
    result = report_cli(bench, env={k: v for k, v in os.environ.items() if k != "COLUMNS"})
    assert result.returncode == 0, result.stderr
    table = result.stdout[result.stdout.index("┏") : result.stdout.index("┘") + 1]  # tables: stdout
    assert "…" not in table and max(len(line) for line in table.splitlines()) > 80
    assert "total J/inf" in table and "0.0132" in table  # the headline column and its figure, whole


def test_a_table_narrower_than_its_figures_folds_them_never_cuts(bench):
    result = report_cli(bench, env={**os.environ, "COLUMNS": "60"})  # a narrow terminal, or a CI's COLUMNS
    assert result.returncode == 0, result.stderr
    assert "┏" in result.stdout and "…" not in result.stdout


def test_report_json_is_the_summary_alone_on_stdout(bench):
    result = report_cli(bench, "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["size"] for r in rows] == list(SIZES)
    assert rows[0]["total_joules_per_inference"] == pytest.approx(
        summarize(load_runs(bench)).loc[0, "total_joules_per_inference"]
    )
