"""`aipm-fast bench --model a,b`: each model at its native size, one combined table (the seed's
rows), on stdout and as CSV, Markdown and --json; `report` rebuilds it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from click.testing import CliRunner

from aipm_fast import cli

pytest.importorskip("torchvision")


@pytest.fixture
def tiny_models(monkeypatch):
    from torch import nn

    from aipm_fast.bench import models
    from aipm_fast.bench.models.vision import image_inputs

    for name, native, batch in (("tiny_a", 8, 2), ("tiny_b", 16, 3)):
        spec = models.ModelSpec(
            name=name,
            input_kind="image",
            native_size=native,
            default_batch_size=batch,
            description="",
            builder=lambda spec, size: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2)),
            inputs=image_inputs,
        )
        monkeypatch.setitem(models.MODELS, name, spec)


def bench(tmp_path, fake_nvml_lib, monkeypatch, *extra):
    monkeypatch.setenv("FAKE_NVML_PROCESSES", "self:900:87")
    args = ["bench", "--model", "tiny_a,tiny_b", "--device", "cpu", "--runs", "2", "--iters", "3"]
    args += ["--warmup", "0", "--baseline", "0.2", "--no-plots", "--out", str(tmp_path / "seed")]
    args += ["--nvml-lib", str(fake_nvml_lib), "--powercap-root", "/x", "--msr-root", "/x", "--perf-root", "/x"]
    return CliRunner().invoke(cli.main, args + list(extra), catch_exceptions=False)


def test_several_models_give_one_table_with_the_seeds_rows(tmp_path, fake_nvml_lib, monkeypatch, tiny_models):
    result = bench(tmp_path, fake_nvml_lib, monkeypatch)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "seed" / "seed_table.csv")
    assert list(table["model"]) == ["tiny_a", "tiny_b"]
    assert list(table["size"]) == [8, 16] and list(table["batch size"]) == [2, 3]  # native size, published batch
    assert table["GPU J/inference"].notna().all()
    assert (table["%GPU SM used (process)"] == 87).all()
    assert table["GPU MEM USED (GB, process)"].tolist() == pytest.approx([900 * 2**20 / 1e9] * 2)
    assert table["SM active %"].isna().all() and table["not measured"].str.contains("GPM is not supported").all()
    for model in ("tiny_a", "tiny_b"):
        assert (tmp_path / "seed" / model / "summary.csv").exists()
    markdown = (tmp_path / "seed" / "seed_table.md").read_text()
    assert markdown.startswith("| model |") and "| tiny_b |" in markdown and "…" not in markdown
    # the table on stdout, messages on stderr
    assert "%GPU SM used (process)" in result.stdout and "tiny_b" in result.stdout
    assert "combined table" in result.stderr and "combined table" not in result.stdout


def test_json_gives_the_combined_table_alone_on_stdout(tmp_path, fake_nvml_lib, monkeypatch, tiny_models):
    result = bench(tmp_path, fake_nvml_lib, monkeypatch, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [r["model"] for r in rows] == ["tiny_a", "tiny_b"]
    assert rows[0]["SM active %"] is None  # not measured: null, never a number
    again = CliRunner().invoke(cli.main, ["report", str(tmp_path / "seed"), "--json"], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == rows


def test_several_models_refuse_sizes(tmp_path, tiny_models):
    result = CliRunner().invoke(cli.main, ["bench", "--model", "tiny_a,tiny_b", "--sizes", "8"])
    assert result.exit_code == 2 and "--sizes" in result.output and "native sizes" in result.output


def test_list_models_json():
    result = CliRunner().invoke(cli.main, ["bench", "--list-models", "--json"])
    assert result.exit_code == 0
    assert "resnet18" in {m["name"] for m in json.loads(result.stdout)}
