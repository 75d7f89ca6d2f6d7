"""`aipm-fast bench --prune`: the pruned model's columns in run files, summary.csv and the table,
and the clear refusals of bad pruning options (CPU, fake hardware)."""

import json
import re

import pandas as pd
import pytest
from click.testing import CliRunner

from aipm_fast.bench.protocol import BenchError, Benchmark
from aipm_fast.bench.table import format_table
from aipm_fast.cli import main

from bench_fixtures import bench_options

pytest.importorskip("torchvision")


def options(tmp_path, **kw):
    """A short benchmark: two runs of two passes, no warm-up or baseline."""
    return bench_options(tmp_path, **{"iters": 2, "duration_s": None, "warmup_s": 0.0, "baseline_s": 0.0, **kw})


def table_text(summary) -> str:
    from rich.console import Console

    console = Console(width=400, record=True)
    console.print(format_table(summary))
    return console.export_text()


@pytest.mark.parametrize("fmt", ["masked", "structured"])
def test_pruned_runs_carry_the_models_counts_into_run_files_summary_and_table(tmp_path, fake_engine, fmt):
    summary = Benchmark(
        options(tmp_path, prune="magnitude", sparsity=0.9, sparsity_format=fmt, engine=fake_engine[0]),
        log=lambda m: None,
    ).run()
    run = json.loads((tmp_path / "out" / "input_32" / "run_0" / "run.json").read_text())
    assert run["prune_method"] == "magnitude" and run["sparsity_format"] == fmt and run["sparsity"] == 0.9
    assert run["params_dense"] > run["params_nonzero"] > 0
    assert 0.5 < run["effective_sparsity"] < 1
    assert run["flops_effective"] < run["flops_dense"]
    if fmt == "masked":
        assert run["flops_executed"] == run["flops_dense"] and run["params_total"] == run["params_dense"]
    else:
        assert run["flops_executed"] < run["flops_dense"] and run["params_total"] < run["params_dense"]
    assert run["energy"]["gpu"] is not None  # measured as any run
    on_disk = pd.read_csv(tmp_path / "out" / "summary.csv")
    for col in ("params_total", "params_nonzero", "effective_sparsity", "flops_dense", "flops_executed"):
        assert on_disk.loc[0, col] == pytest.approx(run[col], rel=1e-5)
    assert summary.loc[0, "sparsity_format"] == fmt
    text = table_text(summary)
    assert "params M" in text and "eff. sparsity %" in text and "GFLOP/inf run" in text
    assert f"pruned: magnitude, {fmt}, sparsity 0.9" in text


def test_a_dense_run_carries_its_counts_too(tmp_path, fake_engine):
    summary = Benchmark(options(tmp_path, runs=1, engine=fake_engine[0]), log=lambda m: None).run()
    row = summary.iloc[0]
    assert row["prune_method"] == "none" and row["sparsity_format"] == "dense"
    assert row["params_total"] == row["params_dense"] == pytest.approx(11_689_512)  # torchvision's resnet18
    assert row["effective_sparsity"] == 0 and row["flops_executed"] == row["flops_dense"] > 0


def test_two_four_on_cpu_is_refused_before_any_run(tmp_path, fake_engine):
    with pytest.raises(BenchError, match=r"2:4.*compute capability 8\.0 or newer.*cpu"):
        Benchmark(
            options(tmp_path, prune="magnitude", sparsity_format="2:4", engine=fake_engine[0]), log=lambda m: None
        ).run()
    assert not (tmp_path / "out" / "input_32").exists()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--prune", "snip", "--sparsity", "1"], r"sparsity 1\.0: must be a number in \[0, 1\)"),
        (["--prune", "snip", "--sparsity", "-0.5"], r"sparsity -0\.5"),
        (["--prune", "snip", "--sparsity", "0.9", "--sparsity-format", "2:4"], r"0\.5 by definition"),
        (["--prune", "snip"], r"--prune snip needs --sparsity"),
        (["--sparsity", "0.5"], r"--sparsity given without --prune"),
        (["--sparsity-format", "structured"], r"--sparsity-format given without --prune"),
        (["--prune", "random", "--sparsity", "0.5"], r"'random' is not one of 'magnitude', 'snip', 'force'"),
        (["--prune", "snip", "--sparsity", "0.5", "--sparsity-format", "csr"], r"'csr' is not one of"),
    ],
)
def test_bad_pruning_options_are_clear_usage_errors(tmp_path, args, message):
    result = CliRunner().invoke(
        main, ["bench", "--model", "resnet18", "--device", "cpu", "--out", str(tmp_path / "o"), *args]
    )
    assert result.exit_code == 2, result.output
    assert re.search(message, result.output.replace("\n", " ")), result.output
    assert not (tmp_path / "o").exists()


def test_the_gpu_prune_table_script_runs_its_masked_and_structured_variants_on_cpu(
    tmp_path, fake_powercap, fake_nvml_lib, monkeypatch
):
    import importlib.util
    import pathlib

    root, _ = fake_powercap()
    for var, value in (
        ("AIPM_POWERCAP_ROOT", str(root)),
        ("AIPM_NVML_LIB", str(fake_nvml_lib)),
        ("AIPM_MSR_ROOT", "/x"),
        ("AIPM_PERF_ROOT", "/x"),
    ):
        monkeypatch.setenv(var, value)
    path = pathlib.Path(__file__).parent.parent / "bench" / "gpu_prune_table.py"
    spec = importlib.util.spec_from_file_location("gpu_prune_table", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "table"
    args = ["--device", "cpu", "--dtype", "float32", "--runs", "1", "--iters", "2", "--warmup", "0"]
    args += ["--baseline", "0", "--batch-size", "1", "--sizes", "resnet50=32", "--models", "resnet50"]
    assert script.main([str(out), *args, "--formats", "dense,masked,structured"]) == 0
    table = pd.read_csv(out / "prune_table.csv").set_index("format")
    assert list(table.index) == ["dense", "masked", "structured"]
    assert table.loc["dense", "latency_vs_dense"] == 1 and table.loc["dense", "gpu_j_vs_dense"] == 1
    assert table.loc["masked", "params_total"] == table.loc["dense", "params_total"]
    assert table.loc["masked", "flops_executed"] == table.loc["dense", "flops_executed"]
    assert table.loc["structured", "params_total"] < table.loc["dense", "params_total"]
    assert table.loc["structured", "flops_executed"] < table.loc["dense", "flops_executed"]
    assert (table["gpu_j_vs_dense"] > 0).all()
    md = (out / "prune_table.md").read_text()
    assert md.count("\n") == 5 and "| resnet50 | structured | 0.9 |" in md
    assert (out / "resnet50_structured_0.9" / "summary.csv").exists()
