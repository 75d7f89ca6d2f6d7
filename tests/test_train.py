"""`aipm-fast train` on CPU with fake hardware and tiny runs: the SNIP models, the data sources and
their errors, the options, the marked steps, and the folder and tables the training writes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from aipm_fast.bench import models
from aipm_fast.bench.protocol import BenchError
from aipm_fast.bench.train import DEFAULT_LR, Training, TrainOptions, optimizer_for
from aipm_fast.bench.train_data import HOLDOUT, SYNTHETIC_BATCHES, DataError, load_data

pytest.importorskip("torchvision")

FAKE_GPU_W = 100.0  # the fake NVML GPU's constant power


@pytest.fixture
def fake_engine(fake_powercap, fake_nvml_lib):
    root, writer = fake_powercap()
    return {"powercap_root": str(root), "nvml_lib": str(fake_nvml_lib), "msr_root": "/x", "perf_root": "/x"}


def options(tmp_path, **kw) -> TrainOptions:
    base: dict = dict(
        model="lenet5_caffe",
        sizes=[28],
        batch_size=10,
        runs=2,
        duration_s=None,
        warmup_s=0.0,
        baseline_s=0.3,
        device="cpu",
        out=str(tmp_path / "out"),
        steps=6,
    )
    base.update(kw)
    return TrainOptions(**base)


# -- the SNIP models -------------------------------------------------------------------------


def test_lenet5_caffe_is_the_snip_papers():
    model = models.build_model("lenet5_caffe")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 20, (5, 5)), (20, 50, (5, 5))]
    assert [(f.in_features, f.out_features) for f in linears] == [(800, 500), (500, 10)]
    assert sum(p.numel() for p in model.parameters()) == 431_080
    assert models.forward(model, models.make_inputs("lenet5_caffe", 28, 2)).shape == (2, 10)
    with pytest.raises(ValueError, match="between 28 and 28"):
        models.validate_size("lenet5_caffe", 32)


def test_vgg_d_is_vgg16_with_batch_norm_as_in_the_snip_code():
    model = models.build_model("vgg_d")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) == 13 and all(c.kernel_size == (3, 3) for c in convs)
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert [(f.in_features, f.out_features) for f in linears] == [(512, 512), (512, 512), (512, 10)]
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 13
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules()) == 2
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())
    assert models.forward(model, models.make_inputs("vgg_d", 32, 2)).shape == (2, 10)


def test_snip_initialisation_is_variance_scaling_with_zero_biases():
    torch.manual_seed(0)
    model = models.build_model("vgg_d")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels == 512)
    fan_in = 512 * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(1 / fan_in), rel=0.05)
    assert conv.bias is not None and not conv.bias.any()


def test_training_refuses_yolo_and_says_why(tmp_path):
    with pytest.raises(BenchError, match="detector"):
        Training(options(tmp_path, model="yolov5s", sizes=[64]))


# -- data ------------------------------------------------------------------------------------


def test_synthetic_data_is_varied_with_labels_below_the_head_and_no_accuracy():
    spec = models.get_spec("lenet5_caffe")
    data = load_data(spec, 28, None, batch_size=4)
    assert data.x.shape == (SYNTHETIC_BATCHES * 4, 1, 28, 28)
    assert not torch.equal(data.x[0], data.x[1])
    assert int(data.y.min()) >= 0 and int(data.y.max()) < spec.classes
    assert data.eval_x is None and "random" in (data.no_accuracy_reason or "")
    bert = models.get_spec("bert")
    tokens = load_data(bert, 16, None, batch_size=2)
    assert tokens.x.shape == (SYNTHETIC_BATCHES * 2, 16) and tokens.x.dtype == torch.int64
    assert int(tokens.y.max()) < bert.classes


def test_digits_are_upsampled_to_the_models_input_with_a_held_out_split():
    pytest.importorskip("sklearn")
    lenet = load_data(models.get_spec("lenet5_caffe"), 28, "digits", batch_size=100)
    assert lenet.x.shape[1:] == (1, 28, 28) and lenet.classes == 10
    held = round(HOLDOUT * 1797)
    assert lenet.eval_y is not None and lenet.eval_y.shape == (held,)
    assert lenet.samples == 1797 - held
    assert abs(float(lenet.x.mean())) < 1e-3  # standardised on the training part
    vgg = load_data(models.get_spec("vgg_d"), 32, "digits", batch_size=100)
    assert vgg.x.shape[1:] == (3, 32, 32)
    assert torch.equal(vgg.x[:, 0], vgg.x[:, 2])  # grey levels on every channel


def test_digits_without_scikit_learn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DataError, match=r"scikit-learn.*aipm-fast\[digits\]"):
        load_data(models.get_spec("lenet5_caffe"), 28, "digits", batch_size=10)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("layout", ["nhw", "nchw", "nhwc"])
def test_an_npz_is_read_in_each_layout(tmp_path, layout):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(50, 14, 14), dtype=np.uint8)
    x = {"nhw": images, "nchw": images[:, None], "nhwc": images[..., None]}[layout]
    path = _npz(tmp_path / "d.npz", x=x, y=np.arange(50) % 4)
    data = load_data(models.get_spec("lenet5_caffe"), 28, path, batch_size=8)
    assert data.x.shape == (40, 1, 28, 28) and data.classes == 4
    assert data.eval_y is not None and data.eval_y.shape == (10,)
    rgb = load_data(models.get_spec("resnet18"), 32, path, batch_size=8)
    assert rgb.x.shape == (40, 3, 32, 32)


@pytest.mark.parametrize(
    "arrays,why",
    [
        (dict(x=np.zeros((10, 8, 8))), r"missing array\(s\) y"),
        (dict(x=np.zeros((10, 8, 8)), y=np.zeros(9, dtype=int)), r"y has shape \(9,\)"),
        (dict(x=np.zeros((10, 8, 8)), y=np.full(10, 0.5)), "not integer labels"),
        (dict(x=np.zeros((10, 8, 8)), y=np.full(10, -1)), "negative label -1"),
        (dict(x=np.zeros((10, 8, 8)), y=np.arange(10) + 10), "labels go up to 19.*10 outputs"),
        (dict(x=np.zeros((10, 5, 8, 8)), y=np.zeros(10, dtype=int)), r"x has shape \(10, 5, 8, 8\)"),
        (dict(x=np.full((10, 8, 8), np.nan), y=np.zeros(10, dtype=int)), "NaN"),
        (dict(x=np.zeros((2, 8, 8)), y=np.zeros(2, dtype=int)), "too few"),
    ],
)
def test_a_bad_npz_names_the_file_and_the_fault(tmp_path, arrays, why):
    path = _npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=why) as err:
        load_data(models.get_spec("lenet5_caffe"), 28, path, batch_size=1)
    assert path in str(err.value)


def test_a_source_that_is_neither_names_what_it_expected(tmp_path):
    spec = models.get_spec("lenet5_caffe")
    with pytest.raises(DataError, match="no such file or folder"):
        load_data(spec, 28, str(tmp_path / "nothing.npz"), batch_size=1)
    text = tmp_path / "notes.txt"
    text.write_text("x")
    with pytest.raises(DataError, match="not a folder .* nor an .npz"):
        load_data(spec, 28, str(text), batch_size=1)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_data(spec, 28, str(corrupt), batch_size=1)
    with pytest.raises(DataError, match="only image data sets"):
        load_data(models.get_spec("bert"), 16, str(corrupt), batch_size=1)
    with pytest.raises(DataError, match="--batch-size 500 is more than"):
        load_data(spec, 28, _npz(tmp_path / "small.npz", x=np.zeros((20, 8, 8)), y=np.zeros(20, int)), batch_size=500)


def _image_folder(root, classes=("cat", "dog"), per_class=5, size=(20, 12)):
    from PIL import Image

    for c, name in enumerate(classes):
        os.makedirs(root / name)
        for i in range(per_class):
            pixels = np.full((size[1], size[0], 3), 40 * c + i, dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return str(root)


def test_an_image_folder_is_resized_to_the_model_with_one_label_per_class(tmp_path):
    path = _image_folder(tmp_path / "images")
    data = load_data(models.get_spec("lenet5_caffe"), 28, path, batch_size=2)
    assert data.x.shape == (8, 1, 28, 28) and data.classes == 2
    rgb = load_data(models.get_spec("resnet18"), 32, path, batch_size=2)
    assert rgb.x.shape == (8, 3, 32, 32)


def test_a_bad_image_folder_names_the_folder_or_the_file(tmp_path):
    spec = models.get_spec("lenet5_caffe")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="not a usable ImageFolder") as err:
        load_data(spec, 28, str(empty), batch_size=1)
    assert str(empty) in str(err.value)
    path = _image_folder(tmp_path / "images")
    (tmp_path / "images" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken\.png is not a readable image"):
        load_data(spec, 28, path, batch_size=1)


# -- options ---------------------------------------------------------------------------------


def test_optimizer_options():
    params = [torch.nn.Parameter(torch.zeros(2))]
    sgd = optimizer_for(TrainOptions("m", [1], 1, optimizer="sgd", momentum=0.5), params)
    assert isinstance(sgd, torch.optim.SGD)
    assert sgd.defaults["lr"] == DEFAULT_LR["sgd"] and sgd.defaults["momentum"] == 0.5
    adam = optimizer_for(TrainOptions("m", [1], 1, optimizer="adam", lr=0.02), params)
    assert isinstance(adam, torch.optim.Adam) and adam.defaults["lr"] == 0.02


@pytest.mark.parametrize(
    "kw,why",
    [
        (dict(steps=None), "give --steps or --epochs"),
        (dict(steps=3, epochs=1), "give --steps or --epochs"),
        (dict(optimizer="rmsprop"), "--optimizer 'rmsprop'"),
        (dict(lr=-1.0), "--lr -1.0"),
    ],
)
def test_bad_training_options_are_refused_before_anything_runs(tmp_path, kw, why):
    with pytest.raises(BenchError, match=why):
        Training(options(tmp_path, **kw))
    assert not (tmp_path / "out").exists()


# -- runs, folder and tables -----------------------------------------------------------------


def test_training_runs_write_the_bench_folder_with_energy_per_step(tmp_path, fake_engine):
    opts = options(tmp_path, engine=fake_engine, steps=6, runs=2)
    summary = Training(opts, log=lambda m: None).run()
    out = tmp_path / "out"
    meta = json.loads((out / "meta.json").read_text())
    assert meta["mode"] == "train" and meta["data"]["name"] == "synthetic"
    assert meta["options"]["optimizer"] == "sgd" and meta["options"]["steps"] == 6
    for k in (0, 1):
        run_dir = out / "input_28" / f"run_{k}"
        for name in ("run.json", "inferences.csv", "loss.csv", "latency.csv", "power_metrics.json"):
            assert (run_dir / name).exists(), run_dir / name
        run = json.loads((run_dir / "run.json").read_text())
        assert run["mode"] == "train" and run["n_steps"] == 6 and run["n_inferences"] == 60
        assert run["params_total"] == 431_080 and run["sparsity_format"] == "dense"
        steps = pd.read_csv(run_dir / "inferences.csv")
        assert len(steps) == 6  # one marked step each
        # the fake GPU draws a constant 100 W: a step's energy is 100 W times its duration
        gpu = run["energy"]["gpu"]
        assert gpu["joules_per_step"] == pytest.approx(float(np.median(FAKE_GPU_W * steps["latency_s"])), rel=0.05)
        assert gpu["joules_per_inference"] == pytest.approx(gpu["energy_j"] / 60)
        assert run["energy"]["total"]["joules_per_step"] == pytest.approx(float(np.median(steps["total_j"])))
        loss = pd.read_csv(run_dir / "loss.csv")
        assert list(loss.columns) == ["step", "epoch", "samples", "loss"] and len(loss) == 6
        assert run["final_loss"] == pytest.approx(loss["loss"].mean())
        assert run["accuracy"] is None and "random" in run["accuracy_missing_reason"]
    row = summary.iloc[0]
    assert row["mode"] == "train" and row["n_steps"] == 6
    runs = [json.loads((out / "input_28" / f"run_{k}" / "run.json").read_text()) for k in (0, 1)]
    assert row["total_joules_per_step"] == pytest.approx(
        np.median([r["energy"]["total"]["joules_per_step"] for r in runs])
    )
    assert math.isfinite(row["total_joules_per_step_iqr_pct"])
    written = pd.read_csv(out / "summary.csv")
    assert list(written["n_steps"]) == [6] and list(written["params_total"]) == [431_080]


def test_epochs_cover_the_data_once_each_with_a_short_last_batch(tmp_path, fake_engine):
    path = _npz(tmp_path / "d.npz", x=np.zeros((30, 8, 8)), y=np.arange(30) % 3)  # 24 train samples
    opts = options(tmp_path, engine=fake_engine, steps=None, epochs=2, batch_size=10, runs=1, data=path)
    Training(opts, log=lambda m: None).run()
    run_dir = tmp_path / "out" / "input_28" / "run_0"
    loss = pd.read_csv(run_dir / "loss.csv")
    assert list(loss["epoch"]) == [0, 0, 0, 1, 1, 1] and list(loss["samples"]) == [10, 10, 4] * 2
    run = json.loads((run_dir / "run.json").read_text())
    assert run["n_steps"] == 6 and run["n_inferences"] == 48
    assert 0.0 <= run["accuracy"] <= 1.0 and "held-out split" in run["accuracy_on"]


def test_fixed_steps_run_on_into_the_next_epoch(tmp_path, fake_engine):
    opts = options(tmp_path, engine=fake_engine, steps=SYNTHETIC_BATCHES + 2, batch_size=4, runs=1)
    Training(opts, log=lambda m: None).run()
    loss = pd.read_csv(tmp_path / "out" / "input_28" / "run_0" / "loss.csv")
    assert list(loss["epoch"]) == [0] * SYNTHETIC_BATCHES + [1, 1]


def test_every_run_repeats_the_same_training(tmp_path, fake_engine):
    opts = options(tmp_path, engine=fake_engine, steps=4, runs=2, optimizer="adam")
    Training(opts, log=lambda m: None).run()
    curves = [pd.read_csv(tmp_path / "out" / "input_28" / f"run_{k}" / "loss.csv")["loss"] for k in (0, 1)]
    assert curves[0].to_numpy() == pytest.approx(curves[1].to_numpy())


def test_a_diverged_loss_is_no_final_loss_and_says_why(tmp_path, fake_engine):
    opts = options(tmp_path, engine=fake_engine, steps=8, runs=1, lr=1e12, momentum=0.0)
    Training(opts, log=lambda m: None).run()
    run = json.loads((tmp_path / "out" / "input_28" / "run_0" / "run.json").read_text())
    assert run["final_loss"] is None and "diverged" in run["loss_missing_reason"]


def test_the_report_rebuilds_a_training_folder_with_its_table_and_loss_curve(tmp_path, fake_engine):
    pytest.importorskip("matplotlib")
    from aipm_fast.bench import report

    Training(options(tmp_path, engine=fake_engine, steps=3, runs=1), log=lambda m: None).run()
    out = tmp_path / "out"
    result = report.build_report(out)
    assert str(out / "plots" / "loss_curve.png") in result["plots"]
    table = report.format_table(report.summarize(report.load_runs(out)))
    headers = [c.header for c in table.columns]
    assert {"steps", "total J/step", "total J/sample", "Wh/run", "samples/s", "final loss"} <= set(headers)
    assert "latency ms" not in headers


def test_the_combined_table_of_training_folders_is_the_snip_table(tmp_path):
    from aipm_fast.bench import seed_table

    folders = {}
    for name, energy in (("lenet5_caffe", 3600.0), ("vgg_d", 7200.0)):
        folder = tmp_path / name
        folder.mkdir()
        pd.DataFrame(
            [
                {
                    "size": 28,
                    "batch_size": 100,
                    "runs": 3,
                    "mode": "train",
                    "n_steps": 50,
                    "params_total": 431080,
                    "duration_s": 2.0,
                    "total_energy_j": energy,
                    "total_joules_per_step": energy / 50,
                    "accuracy": 0.5,
                    "latency_median_s": 0.004,
                }
            ]
        ).to_csv(folder / "summary.csv", index=False)
        folders[name] = str(folder)
    table = seed_table.seed_table(folders).set_index("model")
    assert table.loc["vgg_d", "Wh per run"] == pytest.approx(2.0)
    assert table.loc["lenet5_caffe", "accuracy %"] == pytest.approx(50.0)
    assert table.loc["lenet5_caffe", "step (ms)"] == pytest.approx(4.0)
    assert "J/inference" not in table.columns
    assert "| 431080 |" in seed_table.to_markdown(table.reset_index())


def test_train_command_end_to_end(tmp_path, fake_powercap, fake_nvml_lib):
    root, _ = fake_powercap()
    env = {**os.environ, "AIPM_POWERCAP_ROOT": str(root), "AIPM_NVML_LIB": str(fake_nvml_lib)}
    env.update(AIPM_MSR_ROOT="/nonexistent", AIPM_PERF_ROOT="/nonexistent")
    out = tmp_path / "cli"
    args = ["--model", "lenet5_caffe", "--steps", "3", "--runs", "1", "--batch-size", "8", "--warmup", "0"]
    args += ["--baseline", "0.2", "--device", "cpu", "--no-plots", "--out", str(out), "--json"]
    result = subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "train", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert rows[0]["n_steps"] == 3 and rows[0]["gpu_joules_per_step"] > 0
    refused = subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "train", "--model", "yolov5s", "--steps", "1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert refused.returncode == 2 and "detector" in refused.stderr
    neither = subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "train", "--model", "lenet5_caffe"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert neither.returncode == 2 and "--steps or --epochs" in neither.stderr


def test_the_gpu_snip_script_runs_its_table_on_cpu_and_skips_pruning_it_cannot_do(
    tmp_path, fake_powercap, fake_nvml_lib
):
    root, _ = fake_powercap()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "AIPM_POWERCAP_ROOT": str(root),
        "AIPM_NVML_LIB": str(fake_nvml_lib),
        "AIPM_MSR_ROOT": "/nonexistent",
        "AIPM_PERF_ROOT": "/nonexistent",
        "DEVICE": "cpu",
        "RUNS": "1",
        "STEPS_LENET": "3",
        "STEPS_VGG": "2",
        "BATCH_VGG": "4",
        "WARMUP": "0",
        "BASELINE": "0",
        "PRUNE": "0.95",
    }
    out = tmp_path / "snip"
    result = subprocess.run(
        ["bash", "bench/gpu_train_snip.sh", str(out)], cwd=repo, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert "lenet5_caffe: exit 0" in result.stdout and "vgg_d: exit 0" in result.stdout
    assert "report: exit 0" in result.stdout
    can_prune = (
        "--prune"
        in subprocess.run(
            [sys.executable, "-m", "aipm_fast.cli", "train", "--help"], capture_output=True, text=True, env=env
        ).stdout
    )
    table = pd.read_csv(out / "table" / "seed_table.csv").set_index("model")
    if can_prune:
        assert "lenet5_caffe_snip0.95: exit 0" in result.stdout and "vgg_d_snip0.95: exit 0" in result.stdout
        assert table.loc["lenet5_caffe_snip0.95", "effective sparsity %"] > 90
        assert table.loc["lenet5_caffe_snip0.95", "nonzero parameters"] < 0.1 * 431_080
    else:
        assert "lenet5_caffe_snip0.95: skipped" in result.stdout
    assert {"lenet5_caffe", "vgg_d"} <= set(table.index)
    assert table.loc["lenet5_caffe", "steps"] == 3 and table.loc["vgg_d", "steps"] == 2
    assert table.loc["vgg_d", "parameters"] == 15_255_626
    assert table.loc["lenet5_caffe", "Wh per run"] > 0


def test_a_token_model_trains_on_input_ids_and_its_logits(tmp_path, fake_engine, monkeypatch):
    """The path bert takes (token ids as input_ids, a Hugging Face output's logits), on a tiny
    stand-in so that the test stays fast."""
    from types import SimpleNamespace

    calls = []

    class TinyTextClassifier(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.EmbeddingBag(50, 4)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, input_ids):
            calls.append(input_ids.shape)
            return SimpleNamespace(logits=self.head(self.embed(input_ids)))

    def samples(spec, size, n, device, dtype):
        return torch.randint(0, 50, (n, size), generator=torch.Generator().manual_seed(0))

    spec = models.ModelSpec(
        name="tiny_text",
        input_kind="tokens",
        native_size=6,
        default_batch_size=3,
        description="",
        builder=lambda spec, size: TinyTextClassifier(),
        inputs=lambda *a: None,
        classes=2,
        samples=samples,
    )
    monkeypatch.setitem(models.MODELS, "tiny_text", spec)
    opts = options(tmp_path, model="tiny_text", sizes=[6], batch_size=3, steps=4, runs=1, engine=fake_engine)
    Training(opts, log=lambda m: None).run()
    run = json.loads((tmp_path / "out" / "input_6" / "run_0" / "run.json").read_text())
    assert run["n_steps"] == 4 and run["n_inferences"] == 12
    assert (3, 6) in calls


def test_counts_in_summary_csv_keep_every_digit(tmp_path):
    from aipm_fast.bench.summary import write_summary

    summary = pd.DataFrame([{"size": 32, "params_total": 15_255_626.0, "n_steps": 300.0, "duration_s": 1.23456789}])
    written = pd.read_csv(write_summary(tmp_path, summary))
    assert written.loc[0, "params_total"] == 15_255_626 and written.loc[0, "n_steps"] == 300
    assert written.loc[0, "duration_s"] == pytest.approx(1.23457)  # other figures: 6 significant digits


def test_a_snip_pruned_model_keeps_its_masked_weights_zero_while_it_trains(tmp_path):
    opts = options(tmp_path, prune="snip", sparsity=0.9, sparsity_format="masked", steps=3, optimizer="adam")
    training = Training(opts)
    assert training.prune_request is not None and training.prune_request.reapply_masks
    training.data = load_data(training.spec, 28, None, batch_size=opts.batch_size)
    training.dtype = torch.float32
    training.n_steps = 3
    model, optimizer = training._fresh(28)
    columns = training.model_columns[28]
    assert columns["prune_method"] == "snip" and columns["prunable_sparsity"] == pytest.approx(0.9, abs=0.01)

    def weights():
        return [m.weight for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]

    zeros = [w == 0 for w in weights()]
    for _, idx in training._batches():
        training._step(model, optimizer, training.data.x[idx], training.data.y[idx])
    model(training.data.x[:1])  # the masks are re-applied before a forward pass
    assert all(bool((w[z] == 0).all()) for w, z in zip(weights(), zeros))
    share = sum(int(z.sum()) for z in zeros) / sum(z.numel() for z in zeros)
    assert share == pytest.approx(0.9, abs=0.01)


def test_training_refuses_a_bad_pruning_option(tmp_path):
    with pytest.raises(BenchError, match="--sparsity"):
        Training(options(tmp_path, prune="snip"))


def test_training_is_not_shared_over_torchrun_ranks(tmp_path):
    from click.testing import CliRunner

    from aipm_fast import cli
    from aipm_fast.bench.sweep import Sweep

    with pytest.raises(BenchError, match="only bench shares its runs"):
        Training(options(tmp_path), sweep=Sweep(rank=0, world_size=2, local_rank=0, node="n"))
    args = ["train", "--model", "lenet5_caffe", "--steps", "1", "--device", "cpu", "--out", str(tmp_path / "cli")]
    result = CliRunner().invoke(cli.main, args, env={"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"})
    assert result.exit_code == 2 and "WORLD_SIZE=2: train runs in one process" in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "cli").exists()
    assert "gpus_at_once" in {p.name for p in cli.bench.params}  # bench's option only
    assert "gpus_at_once" not in {p.name for p in cli.train.params}
