"""The Lightning and Hugging Face callbacks on a tiny CPU model, with fake RAPL and NVML.

Each training step sleeps a few ms so that epochs last a few tenths of a second: long enough
for 1 ms RAPL updates and 20 ms NVML samples to give epoch energies within a few per cent of
the fakes' constant power times the epoch's duration.
"""

import importlib
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from tiny_models import Regressor  # noqa: E402

OFF = {"msr_root": "/nonexistent", "perf_root": "/nonexistent"}
GPU_W = 100.0
STEP_S = 0.03
PACKAGE, DRAM, CORE, GPU = "rapl:package-0", "rapl:package-0/dram", "rapl:package-0/core", "nvml:0"


@pytest.fixture
def hw(fake_powercap, fake_nvml_lib, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_TRACE", f"const:{GPU_W:g}")
    root, writer = fake_powercap()
    options = {"powercap_root": str(root), "nvml_lib": str(fake_nvml_lib), "cuda": False, **OFF}
    powers = {
        PACKAGE: writer.power_w("intel-rapl:0"),
        CORE: writer.power_w("intel-rapl:0:0"),
        DRAM: writer.power_w("intel-rapl:0:1"),
        GPU: GPU_W,
    }
    return options, powers


def additive_w(powers):
    # core lies inside the package: the totals leave it out
    return powers[PACKAGE] + powers[DRAM] + powers[GPU]


def check_epoch(energies, duration_s, powers, rel=0.04):
    """Per-domain epoch energies: constant fake power times the epoch's duration."""
    for domain in (PACKAGE, DRAM, GPU):
        assert energies[domain] == pytest.approx(powers[domain] * duration_s, rel=rel), domain


def data(n=32):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 8, generator=g), torch.randn(n, 1, generator=g)


# -- Lightning ----------------------------------------------------------------------------------
@pytest.fixture
def pl():
    return pytest.importorskip("lightning.pytorch")


def lightning_parts(pl):
    from lightning.pytorch.loggers import Logger

    class Capture(Logger):
        def __init__(self):
            super().__init__()
            self.rows = []

        @property
        def name(self):
            return "capture"

        @property
        def version(self):
            return 0

        def log_hyperparams(self, params, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.rows.append((dict(metrics), step))

    class Tiny(pl.LightningModule):
        def __init__(self, meter=None, fail_at=None):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
            self.meter, self.fail_at = meter, fail_at

        def training_step(self, batch, batch_idx):
            if batch_idx == self.fail_at:
                raise RuntimeError("boom")
            if self.meter is not None:  # the user's own marks on the same Meter are not steps
                with self.meter.inference():
                    time.sleep(0.002)
            time.sleep(STEP_S)
            x, y = batch
            return F.mse_loss(self.net(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    return Capture, Tiny


def fit(pl, module, callback, logger, epochs=2, n=32):
    from torch.utils.data import DataLoader, TensorDataset

    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_progress_bar=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, DataLoader(TensorDataset(*data(n)), batch_size=4))
    return trainer


def test_lightning_callback_logs_steps_and_epochs(pl, hw):
    from aipm_fast.integrations.lightning import AipmCallback

    options, powers = hw
    Capture, Tiny = lightning_parts(pl)
    logger = Capture()
    cb = AipmCallback(**options)
    fit(pl, Tiny(), cb, logger)

    m = cb.meter
    assert not m._started  # owned: stopped at the end of the fit
    logged = [metrics for metrics, _ in logger.rows]

    # steps: lagging, but present from the first epoch on, and each one a real step's energy
    steps = [r for r in logged if "energy/step_j" in r]
    assert len(steps) >= 8
    inf = m.inferences()
    assert len(inf[inf["domain"] == GPU]) == 16  # one mark per batch, 2 epochs x 8 batches
    for r in steps:
        assert r["energy/step_j"] > 0
        assert r["energy/step_j"] == pytest.approx(sum(r[f"energy/step_j/{d}"] for d in (PACKAGE, DRAM, GPU)))
        assert np.isclose(inf.loc[inf["domain"] == GPU, "energy_j"], r[f"energy/step_j/{GPU}"]).any()
        # a step is >= STEP_S long (plus the optimizer), well under a second here
        assert STEP_S * 0.9 < r["energy/step_j"] / additive_w(powers) < 1.0

    # epochs: the Meter's window energies, and constant power x duration
    epochs = [r for r in logged if "energy/epoch_j" in r]
    assert [int(r["epoch"]) for r in epochs] == [0, 1]
    windows = m.windows().set_index(["window", "domain"])
    for n, (r, rec) in enumerate(zip(epochs, cb.epochs)):
        assert rec["epoch"] == n and rec["steps"] == 8 and rec["samples"] == 32
        energies = {d: r[f"energy/epoch_j/{d}"] for d in (PACKAGE, DRAM, CORE, GPU)}
        for d, e in energies.items():
            assert e == pytest.approx(windows.loc[(f"epoch_{n}", d), "energy_j"], rel=1e-6)
        duration = windows.loc[(f"epoch_{n}", GPU), "duration_s"]
        assert duration > 8 * STEP_S
        check_epoch(energies, duration, powers)
        assert r["energy/epoch_j"] == pytest.approx(additive_w(powers) * duration, rel=0.04)
        assert r["energy/epoch_j_per_sample"] == pytest.approx(r["energy/epoch_j"] / 32, rel=1e-6)
        assert rec["energy_j"] == pytest.approx(r["energy/epoch_j"], rel=1e-6)

    # the whole of training, to the loggers at its end
    train = [r for r in logged if "energy/train_j" in r]
    assert len(train) == 1
    assert train[0]["energy/train_j"] >= sum(r["energy/epoch_j"] for r in epochs)
    assert cb.train["steps"] == 16 and cb.train["samples"] == 64


def test_lightning_callback_with_a_running_meter(pl, hw):
    from aipm_fast import Meter
    from aipm_fast.integrations.lightning import AipmCallback

    options, _ = hw
    Capture, Tiny = lightning_parts(pl)
    logger = Capture()
    with Meter(**options) as m:
        cb = AipmCallback(m)
        fit(pl, Tiny(meter=m), cb, logger, epochs=2, n=16)
        assert m._started  # not the callback's to stop
        inf = m.inferences()
        user = set(inf.loc[inf["latency_s"] < 0.9 * STEP_S, "index"])
        assert len(user) == 8 and len(set(inf["index"]) - user) == 8  # 8 inferences, 8 steps
    gpu = inf[inf["domain"] == GPU].set_index("index")["energy_j"]
    step_values = [r[f"energy/step_j/{GPU}"] for r, _ in logger.rows if f"energy/step_j/{GPU}" in r]
    assert step_values
    for v in step_values:  # a step's energy, never one of the user's inferences
        matches = gpu[np.isclose(gpu, v)].index
        assert len(matches) and not set(matches) & user


def test_lightning_callback_stops_its_meter_on_an_exception(pl, hw):
    from aipm_fast.integrations.lightning import AipmCallback

    options, _ = hw
    Capture, Tiny = lightning_parts(pl)
    cb = AipmCallback(**options)
    with pytest.raises(RuntimeError, match="boom"):
        fit(pl, Tiny(fail_at=3), cb, Capture(), epochs=1)
    assert not cb.meter._started
    assert cb._step is None and cb._epoch is None
    win = cb.meter.windows()
    assert set(win["window"]) == {"train", "epoch_0"}
    assert (win.loc[win["window"] == "epoch_0", "n_inferences"] == 4).all()  # the failed batch's mark closed too


# -- Hugging Face -------------------------------------------------------------------------------
def test_huggingface_callback_adds_energy_to_the_logs(hw, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    from aipm_fast.integrations.huggingface import AipmTrainerCallback

    options, powers = hw

    class Reporter(transformers.TrainerCallback):  # stands for a report_to integration
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    x, y = data(32)
    dataset = [{"x": x[i], "labels": y[i]} for i in range(32)]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        report_to=[],
        use_cpu=True,
        logging_steps=1,
        num_train_epochs=2,
        per_device_train_batch_size=4,
        save_strategy="no",
        disable_tqdm=True,
    )
    reporter = Reporter()
    cb = AipmTrainerCallback(**options)
    trainer = transformers.Trainer(model=Regressor(STEP_S), args=args, train_dataset=dataset, callbacks=[reporter])
    cb.attach(trainer)  # ahead of the reporter, as of the report_to integrations
    trainer.train()
    assert not cb.meter._started

    history = trainer.state.log_history
    steps = [h for h in history if "energy/step_j" in h]
    assert steps and all(h["energy/step_j"] > 0 and f"energy/step_j/{GPU}" in h for h in steps)
    epochs = [h for h in history if "energy/epoch_j" in h]
    assert len(epochs) == 2 == len(cb.epochs)
    windows = cb.meter.windows().set_index(["window", "domain"])
    for n, (h, rec) in enumerate(zip(epochs, cb.epochs)):
        assert rec["epoch"] == n and rec["steps"] == 8 and rec["samples"] == 32
        assert h["energy/epoch_j"] == pytest.approx(rec["energy_j"], rel=1e-9)
        assert h[f"energy/epoch_j/{GPU}"] == pytest.approx(windows.loc[(f"epoch_{n}", GPU), "energy_j"], rel=1e-9)
        check_epoch({d: rec[f"energy_j/{d}"] for d in (PACKAGE, DRAM, GPU)}, rec["duration_s"], powers)
        assert h["energy/epoch_j_per_sample"] == pytest.approx(rec["energy_j"] / 32, rel=1e-9)
    final = history[-1]
    assert "train_runtime" in final and final["energy/train_j"] >= sum(r["energy_j"] for r in cb.epochs)
    # the integrations that come after the callback received the same keys
    assert [{k: v for k, v in h.items() if k.startswith("energy/")} for h in history] == [
        {k: v for k, v in r.items() if k.startswith("energy/")} for r in reporter.logs
    ]

    # only the main process adds keys
    cb._unlogged = {"energy/epoch_j": 1.0}
    state = SimpleNamespace(is_world_process_zero=False, log_history=[], global_step=0)
    logs = {"loss": 1.0}
    cb.on_log(args, state, None, logs=logs)
    assert logs == {"loss": 1.0}


# -- missing frameworks -------------------------------------------------------------------------
@pytest.mark.parametrize(
    "module, blocked, extra",
    [
        ("aipm_fast.integrations.lightning", ("lightning", "pytorch_lightning"), "lightning"),
        ("aipm_fast.integrations.huggingface", ("transformers",), "huggingface"),
    ],
)
def test_a_missing_framework_names_the_extra(monkeypatch, module, blocked, extra):
    for name in [n for n in sys.modules if n.split(".")[0] in blocked] + list(blocked):
        monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError, match=rf"pip install 'aipm-fast\[{extra}\]'"):
        importlib.import_module(module)
