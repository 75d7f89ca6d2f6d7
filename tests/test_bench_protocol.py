"""`aipm-fast bench` end to end on CPU with fake hardware, tiny model and sizes."""

import json
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from aipm_fast.bench.protocol import Benchmark, median_precision, model_gpu
from aipm_fast.config import EngineConfig

from bench_fixtures import bench_options as options

pytest.importorskip("torchvision")


def test_layout_and_energy_per_inference_match_the_fake_power(tmp_path, fake_engine):
    engine, writer = fake_engine
    opts = options(tmp_path, sizes=[32, 48], engine=engine)
    summary = Benchmark(opts, log=lambda m: None).run()
    out = tmp_path / "out"
    assert (out / "meta.json").exists() and (out / "summary.csv").exists()
    assert json.loads((out / "meta.json").read_text())["metered_gpus"] is None  # on CPU: as given
    for size in (32, 48):
        for k in (0, 1):
            run_dir = out / f"input_{size}" / f"run_{k}"
            for name in ("run.json", "inferences.csv", "latency.csv", "power_metrics.json"):
                assert (run_dir / name).exists(), run_dir / name
        assert (out / f"input_{size}" / "run_0" / "samples.parquet").exists()
    run = json.loads((out / "input_32" / "run_0" / "run.json").read_text())
    # CPU part: package + dram of the fake (20 W + 4 W); GPU part: the fake GPU's 100 W
    cpu_w = writer.power_w("intel-rapl:0") + writer.power_w("intel-rapl:0:1")
    assert run["energy"]["cpu"]["joules_per_inference"] == pytest.approx(cpu_w / run["throughput_per_s"], rel=0.03)
    assert run["energy"]["gpu"]["joules_per_inference"] == pytest.approx(100.0 / run["throughput_per_s"], rel=0.03)
    assert run["energy"]["total"]["energy_j"] == pytest.approx(
        run["energy"]["gpu"]["energy_j"] + run["energy"]["cpu"]["energy_j"]
    )
    # constant fake power: nothing above the idle baseline
    assert abs(run["energy"]["cpu"]["dynamic_energy_j"]) < 0.05 * run["energy"]["cpu"]["energy_j"]
    inf = pd.read_csv(out / "input_32" / "run_0" / "inferences.csv")
    assert len(inf) * 2 == run["n_inferences"]  # one row per forward pass of batch 2
    assert inf["total_j"].sum() == pytest.approx(run["energy"]["total"]["energy_j"], rel=0.1)
    # the summary is the median over runs
    runs = [json.loads((out / "input_48" / f"run_{k}" / "run.json").read_text()) for k in (0, 1)]
    expected = sorted(r["energy"]["total"]["joules_per_inference"] for r in runs)
    row = summary.set_index("size").loc[48]
    assert row["total_joules_per_inference"] == pytest.approx(sum(expected) / 2)
    assert list(summary["size"]) == [32, 48]


def test_the_protocol_rebuilds_a_model_per_size_only_when_its_spec_says_so(tmp_path, fake_engine, monkeypatch):
    from torch import nn

    from aipm_fast.bench import models
    from aipm_fast.bench.models.vision import image_inputs

    engine, _ = fake_engine
    built = {}

    def builder(spec, size):
        built.setdefault(spec.name, []).append(size)
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2))

    for name, per_size in (("tiny_fixed", False), ("tiny_per_size", True)):
        spec = models.ModelSpec(
            name=name,
            input_kind="image",
            native_size=8,
            default_batch_size=1,
            description="",
            builder=builder,
            inputs=image_inputs,
            rebuild_per_size=per_size,
        )
        monkeypatch.setitem(models.MODELS, name, spec)
        Benchmark(
            options(
                tmp_path / name,
                model=name,
                sizes=[8, 16],
                runs=1,
                duration_s=0.2,
                warmup_s=0.0,
                baseline_s=0.0,
                engine=engine,
            ),
            log=lambda m: None,
        ).run()
    assert built == {"tiny_fixed": [8], "tiny_per_size": [8, 16]}


def test_adaptive_mode_stops_once_the_median_is_known():
    assert median_precision([1.0, 1.0]) == float("inf")
    assert median_precision([1.0, 1.01, 0.99, 1.0]) < 0.02
    assert median_precision([1.0, 2.0, 0.5, 1.5]) > 0.2


def test_adaptive_run_count(tmp_path, fake_engine):
    engine, _ = fake_engine
    opts = options(tmp_path, runs=6, precision=0.05, duration_s=0.4, engine=engine)
    Benchmark(opts, log=lambda m: None).run()
    done = sorted(os.listdir(tmp_path / "out" / "input_32"))
    assert 3 <= len(done) <= 6  # at least min_runs, at most --runs


def test_bench_cli_without_power_source_reports_latency_and_says_why(tmp_path):
    env = {
        **os.environ,
        "AIPM_POWERCAP_ROOT": "/nonexistent",
        "AIPM_MSR_ROOT": "/nonexistent",
        "AIPM_PERF_ROOT": "/nonexistent",
        "AIPM_NVML_LIB": "/nonexistent/libnvidia-ml.so.1",
    }
    out = tmp_path / "bare"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aipm_fast.cli",
            "bench",
            "--model",
            "resnet18",
            "--device",
            "cpu",
            "--runs",
            "2",
            "--duration",
            "1",
            "--sizes",
            "32",
            "--baseline",
            "0.2",
            "--warmup",
            "0.2",
            "--out",
            str(out),
            "--no-plots",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "energy not measured" in result.stderr and "libnvidia-ml.so.1" in result.stderr
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "throughput_per_s"] > 0 and summary.loc[0, "latency_median_s"] > 0
    run = json.loads((out / "input_32" / "run_0" / "run.json").read_text())
    assert run["energy"]["total"] is None and "powercap" in run["energy_missing_reason"]


def test_report_rebuilds_a_finished_folder_and_names_a_broken_file(tmp_path, fake_engine):
    engine, _ = fake_engine
    Benchmark(options(tmp_path, engine=engine), log=lambda m: None).run()
    out = tmp_path / "out"
    os.remove(out / "summary.csv")
    ok = subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "report", str(out)], capture_output=True, text=True, timeout=300
    )
    assert ok.returncode == 0, ok.stderr
    assert (out / "summary.csv").exists() and (out / "plots" / "energy_vs_size.png").exists()
    broken = out / "input_32" / "run_1" / "run.json"
    broken.write_text('{"model": "resnet18", "size": ')
    bad = subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "report", str(out)], capture_output=True, text=True, timeout=300
    )
    assert bad.returncode != 0 and str(broken) in bad.stderr


def test_unknown_model_and_bad_sizes_are_clear_errors(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "bench", "--model", "nope"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2 and "unknown model 'nope'" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "bench", "--model", "vit_b_16", "--sizes", "30"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "30" in result.stderr


def test_list_models():
    result = subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "bench", "--list-models"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    for name in ("alexnet", "resnet50", "vit_b_16", "yolov5s", "bert"):
        assert name in result.stdout


@pytest.mark.parametrize(
    "device, env, current, expected",
    [
        ("cuda", {}, 0, 0),
        ("cuda:1", {}, None, 1),
        ("cuda", {}, 2, 2),  # "cuda" alone is the current device
        ("cuda:1", {"CUDA_VISIBLE_DEVICES": "2,3"}, None, 3),  # CUDA counts visible GPUs, NVML all
        ("cuda:0", {"CUDA_VISIBLE_DEVICES": "5"}, None, 5),
    ],
)
def test_bench_meters_the_gpu_the_model_runs_on(device, env, current, expected):
    assert model_gpu(device, env, current) == (expected, "")


@pytest.mark.parametrize(
    "device, env, why",
    [
        ("cuda:2", {"CUDA_VISIBLE_DEVICES": "0,1"}, "not among CUDA_VISIBLE_DEVICES"),
        ("cuda:0", {"CUDA_VISIBLE_DEVICES": "GPU-8f3c"}, "by UUID"),
        ("cuda:x", {}, "no GPU index"),
    ],
)
def test_bench_meters_every_gpu_when_the_models_gpu_is_unknown(device, env, why):
    gpu, reason = model_gpu(device, env, 0)
    assert gpu is None and why in reason


def test_bench_engine_options_choose_the_models_gpu_unless_gpus_are_given(tmp_path, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    logs = []
    bench = Benchmark(options(tmp_path, device="cuda:1", engine={"config": EngineConfig()}), log=logs.append)
    assert bench._engine_options()["config"].gpus == [1]
    assert "GPU 1" in logs[0]
    chosen = Benchmark(options(tmp_path, device="cuda:1", engine={"config": EngineConfig(gpus=[0, 1])}))
    assert chosen._engine_options()["config"].gpus == [0, 1]
    assert Benchmark(options(tmp_path, device="cuda:1"))._engine_options() == {"gpus": [1]}
    assert Benchmark(options(tmp_path, device="cuda:1", engine={"gpus": [0]}))._engine_options() == {"gpus": [0]}
    assert Benchmark(options(tmp_path, device="cpu"))._engine_options() == {}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f3c")
    logs.clear()
    unknown = Benchmark(options(tmp_path, device="cuda:0", engine={"config": EngineConfig()}), log=logs.append)
    assert unknown._engine_options()["config"].gpus is None
    assert "metering every GPU" in logs[0] and "by UUID" in logs[0] and "--gpus" in logs[0]


def test_runs_follow_each_other_without_waiting_for_their_readings(tmp_path, fake_engine, monkeypatch):
    """A run's window is left to resolve while the next one measures: nothing waits for readings
    between runs (Meter.flush), only once at the end, and every run's files are still written."""
    from aipm_fast.meter import Meter

    engine, _ = fake_engine
    opts = options(tmp_path, runs=4, duration_s=0.2, baseline_s=0.2, engine=engine)
    bench = Benchmark(opts, log=lambda m: None)
    waits: list[str] = []
    flush = Meter.flush

    def counted_flush(self, window=None, timeout_s=10.0):
        waits.append("run" if window is None and bench._unresolved else "other")
        return flush(self, window, timeout_s)

    monkeypatch.setattr(Meter, "flush", counted_flush)
    bench.run()
    assert waits.count("run") == 1  # the last runs' energies, once, at the end
    for k in range(4):
        run = json.loads((tmp_path / "out" / "input_32" / f"run_{k}" / "run.json").read_text())
        assert run["energy"]["gpu"]["energy_j"] > 0 and run["n_inferences"] > 0


def test_a_window_is_done_once_its_end_and_its_marks_are_integrated(fake_engine):
    from aipm_fast.meter import Meter

    engine, _ = fake_engine
    with Meter(**engine, cuda=False) as m:
        with m.window("w") as w:
            for _ in range(5):
                with m.inference():
                    pass
        assert not m.coordinator.window_done(w)  # no reading has passed its end yet
        m.flush(w)
        assert w.end_resolved
        deadline = time.monotonic() + 5
        while not m.coordinator.window_done(w) and time.monotonic() < deadline:
            m.coordinator.process()
        assert m.coordinator.window_done(w)
        assert len(m.results.inferences("w")) == 5 * len(m.domains)


def test_the_process_memory_is_read_beside_the_next_run_and_lands_in_its_run_files(tmp_path, fake_engine, monkeypatch):
    """smaps_rollup takes tens of ms to read with torch loaded: a helper thread reads it at each
    run's end, and the run's power_metrics.json still holds that run's figure."""
    import threading

    from aipm_fast.bench import protocol

    engine, _ = fake_engine
    readers: list[str] = []

    def memory():
        readers.append(threading.current_thread().name)
        return {"pss": 1000 + len(readers), "uss": 10}

    monkeypatch.setattr(protocol, "process_memory", memory)
    Benchmark(options(tmp_path, runs=2, duration_s=0.2, baseline_s=0.2, engine=engine), log=lambda m: None).run()
    assert len(readers) == 2 and threading.main_thread().name not in readers
    for k in (0, 1):
        lines = (tmp_path / "out" / "input_32" / f"run_{k}" / "power_metrics.json").read_text().splitlines()
        cpu = json.loads(lines[0])["metrics"]["cpu"]
        assert cpu["per_process_mem_use_abs"] == {str(os.getpid()): 1001 + k}
        assert cpu["per_process_mem_use_uss"] == {str(os.getpid()): 10}
