"""The Lightning and Hugging Face callbacks on a tiny CPU model, with fake RAPL and NVML.

Each training step sleeps a few ms so that epochs last a few tenths of a second: long enough
for 1 ms RAPL updates and 20 ms NVML samples to give epoch energies within a few per cent of
the fakes' constant power times the epoch's duration.
"""

import importlib
import os
import sys
import time
import warnings
from types import SimpleNamespace

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


def fit(pl, module, callback, logger, epochs=2, n=32, **trainer_args):
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
        **trainer_args,
    )
    trainer.fit(module, DataLoader(TensorDataset(*data(n)), batch_size=4))
    return trainer


def marked_steps(meter, user=()):
    """{mark index: energy of the additive domains} of every step mark, from the Meter's table."""
    inf = meter.inferences()
    inf = inf[inf["additive"] & ~inf["index"].isin(list(user))]
    return inf.groupby("index")["energy_j"].sum(min_count=1).to_dict()


def assert_keys_every_logger_takes(keys):
    from aipm_fast.integrations.keys import clashes

    keys = set(keys)
    assert keys and not clashes(keys), clashes(keys)
    assert not any(":" in k for k in keys)


def test_lightning_logs_each_step_once_at_its_own_step_and_epochs_in_their_own_records(pl, hw):
    from aipm_fast.integrations.lightning import AipmCallback

    options, powers = hw
    Capture, Tiny = lightning_parts(pl)
    logger = Capture()
    cb = AipmCallback(**options)
    fit(pl, Tiny(), cb, logger)

    m = cb.meter
    assert not m._started  # owned: stopped at the end of the fit
    truth = marked_steps(m)
    assert len(truth) == 16  # one mark per batch, 2 epochs x 8 batches

    steps = [(step, r) for r, step in logger.rows if "energy/step/total_j" in r]
    # every step once, under the step Lightning files that batch's loss at (0, 1, ...)
    assert sorted(step for step, _ in steps) == list(range(16))
    for step, r in steps:
        assert set(r) == {k for k in r if k.startswith("energy/step/")}  # a record of steps only
        # the step's own energy: mark k is batch k (no other marks on this Meter)
        assert r["energy/step/total_j"] == pytest.approx(truth[step], rel=1e-6)
        assert r["energy/step/total_j"] == pytest.approx(
            sum(r[f"energy/step/{k}_j"] for k in ("rapl_package-0", "rapl_package-0_dram", "nvml_0"))
        )
        # a step is >= STEP_S long (plus the optimizer), well under a second here
        assert STEP_S * 0.9 < r["energy/step/total_j"] / additive_w(powers) < 1.0
    values = [r["energy/step/total_j"] for _, r in steps]
    assert len(set(values)) == len(values)  # no value repeated
    assert sum(values) == pytest.approx(sum(truth.values()), rel=1e-6)
    assert_keys_every_logger_takes(k for r, _ in logger.rows for k in r)

    # epochs: each a record of its own at its last step, the Meter's window energies
    epochs = [(step, r) for r, step in logger.rows if "energy/epoch/total_j" in r]
    # at the step of the epoch's last batch, where Lightning files its own epoch metrics
    assert [(step, int(r["epoch"])) for step, r in epochs] == [(7, 0), (15, 1)]
    windows = m.windows().set_index(["window", "domain"])
    for n, ((_, r), rec) in enumerate(zip(epochs, cb.epochs)):
        assert not any(k.startswith("energy/step") for k in r)
        assert rec["epoch"] == n and rec["steps"] == 8 and rec["samples"] == 32
        energies = {d: r[f"energy/epoch/{d.replace(':', '_').replace('/', '_')}_j"] for d in (PACKAGE, DRAM, CORE, GPU)}
        for d, e in energies.items():
            assert e == pytest.approx(windows.loc[(f"epoch_{n}", d), "energy_j"], rel=1e-6)
        duration = windows.loc[(f"epoch_{n}", GPU), "duration_s"]
        assert duration > 8 * STEP_S
        check_epoch(energies, duration, powers)
        assert r["energy/epoch/total_j"] == pytest.approx(additive_w(powers) * duration, rel=0.04)
        assert r["energy/epoch/j_per_sample"] == pytest.approx(r["energy/epoch/total_j"] / 32, rel=1e-6)
        assert rec["energy_j"] == pytest.approx(r["energy/epoch/total_j"], rel=1e-6)

    # the whole of training, at its end
    train = [r for r, _ in logger.rows if "energy/train/total_j" in r]
    assert len(train) == 1
    assert train[0]["energy/train/total_j"] >= sum(r["energy/epoch/total_j"] for _, r in epochs)
    assert cb.train["steps"] == 16 and cb.train["samples"] == 64


def test_lightning_epoch_end_does_not_wait_for_readings(pl, hw):
    from aipm_fast.integrations.lightning import AipmCallback

    options, _ = hw
    Capture, Tiny = lightning_parts(pl)

    class Watched(AipmCallback):
        """Counts every wait for readings (Meter.flush) made inside the epoch-end hook."""

        waits_at_epoch_end: list[int] = []

        def on_train_epoch_end(self, trainer, pl_module):
            waits = []
            flush = self.meter.flush
            self.meter.flush = lambda *a, **k: (waits.append(a), flush(*a, **k))
            try:
                super().on_train_epoch_end(trainer, pl_module)
            finally:
                del self.meter.flush
            self.waits_at_epoch_end.append(len(waits))

    logger = Capture()
    cb = Watched(**options)
    fit(pl, Tiny(), cb, logger, epochs=3, n=16)
    assert cb.waits_at_epoch_end == [0, 0, 0]
    # and yet every epoch was logged, each at its own step
    epochs = [(step, int(r["epoch"])) for r, step in logger.rows if "energy/epoch/total_j" in r]
    assert epochs == [(3, 0), (7, 1), (11, 2)]


def test_lightning_steps_of_accumulated_batches_are_logged_once_as_one(pl, hw):
    from aipm_fast.integrations.lightning import AipmCallback

    options, _ = hw
    Capture, Tiny = lightning_parts(pl)
    logger = Capture()
    cb = AipmCallback(**options)
    fit(pl, Tiny(), cb, logger, epochs=1, accumulate_grad_batches=2)
    truth = marked_steps(cb.meter)
    steps = sorted((step, r["energy/step/total_j"]) for r, step in logger.rows if "energy/step/total_j" in r)
    assert [s for s, _ in steps] == [0, 1, 2, 3]  # 8 batches, 4 optimizer steps
    for step, energy in steps:  # batches 2k and 2k+1 make step k
        assert energy == pytest.approx(truth[2 * step] + truth[2 * step + 1], rel=1e-6)


LOGGERS = ["csv", "tensorboard", "mlflow"]


def real_logger(kind, tmp_path, monkeypatch):
    from lightning.pytorch import loggers

    if kind == "csv":
        return loggers.CSVLogger(str(tmp_path), name="run")
    if kind == "tensorboard":
        pytest.importorskip("tensorboard")
        return loggers.TensorBoardLogger(str(tmp_path), name="run")
    pytest.importorskip("mlflow")
    # the file store: the one that keeps a metric as a file under its key's folders, so the one
    # that refuses a key that is both a leaf and a prefix (MLflow 3 asks for this opt-in)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return loggers.MLFlowLogger(experiment_name="aipm", tracking_uri=f"file:{tmp_path / 'mlruns'}")


def read_back(kind, logger) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value)]} as the logger wrote them to disk."""
    out: dict[str, list[tuple[int, float]]] = {}
    if kind == "csv":
        import pandas as pd

        rows = pd.read_csv(os.path.join(logger.log_dir, "metrics.csv"))
        for key in rows.columns:
            if key.startswith("energy/"):
                sel = rows[rows[key].notna()]
                out[key] = list(zip(sel["step"].astype(int), sel[key].astype(float)))
    elif kind == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(logger.log_dir)
        acc.Reload()
        for key in acc.Tags()["scalars"]:
            if key.startswith("energy/"):
                out[key] = [(e.step, e.value) for e in acc.Scalars(key)]
    else:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(logger._tracking_uri)
        for key in client.get_run(logger.run_id).data.metrics:
            if key.startswith("energy/"):
                out[key] = [(h.step, h.value) for h in client.get_metric_history(logger.run_id, key)]
    return out


@pytest.mark.parametrize("kind", LOGGERS)
def test_real_loggers_take_every_key_and_the_steps_sum_to_the_marked_steps(pl, hw, tmp_path, monkeypatch, kind):
    from aipm_fast.integrations.lightning import AipmCallback

    options, _ = hw
    _, Tiny = lightning_parts(pl)
    logger = real_logger(kind, tmp_path, monkeypatch)
    cb = AipmCallback(**options)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(pl, Tiny(), cb, logger)
    ours = [str(w.message) for w in caught if "energy" in str(w.message) or "sync_dist" in str(w.message)]
    assert not ours  # no key rewritten, no per-key DDP advice

    got = read_back(kind, logger)
    assert_keys_every_logger_takes(got)
    steps = got["energy/step/total_j"]
    assert sorted(s for s, _ in steps) == list(range(16))  # each step once, at its own step
    values = [v for _, v in steps]
    assert len(set(values)) == len(values)
    truth = marked_steps(cb.meter)
    # float32 in TensorBoard's events
    assert sum(values) == pytest.approx(sum(truth.values()), rel=1e-5)
    for step, value in steps:
        assert value == pytest.approx(truth[step], rel=1e-5)
    assert [s for s, _ in got["energy/epoch/total_j"]] == [7, 15]
    assert len(got["energy/train/total_j"]) == 1
    assert f"energy/epoch/{'rapl_package-0_core'}_j" in got  # a nested domain beside its parent


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
    truth = marked_steps(m, user)
    steps = sorted((step, r["energy/step/total_j"]) for r, step in logger.rows if "energy/step/total_j" in r)
    assert [s for s, _ in steps] == list(range(8))
    # a step's energy, never one of the user's inferences: step k is the k-th step mark
    assert [e for _, e in steps] == pytest.approx([truth[i] for i in sorted(truth)], rel=1e-6)


def test_lightning_callback_stops_its_meter_on_an_exception_and_a_retry_meters_afresh(pl, hw):
    from aipm_fast.integrations.lightning import AipmCallback

    options, _ = hw
    Capture, Tiny = lightning_parts(pl)
    cb = AipmCallback(**options)
    with pytest.raises(RuntimeError, match="boom"):
        fit(pl, Tiny(fail_at=3), cb, Capture(), epochs=1)
    first = cb.meter
    assert not first._started
    assert cb._step is None and cb._epoch is None
    win = first.windows()
    assert set(win["window"]) == {"train", "epoch_0"}
    assert (win.loc[win["window"] == "epoch_0", "n_inferences"] == 4).all()  # the failed batch's mark closed too

    fit(pl, Tiny(), cb, Capture(), epochs=1, n=8)
    assert cb.meter is not first and not cb.meter._started
    assert len(cb.epochs) == 1 and cb.epochs[0]["steps"] == 2


# -- Hugging Face -------------------------------------------------------------------------------
@pytest.fixture
def hf():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    return transformers


def hf_trainer(transformers, tmp_path, callbacks=(), epochs=2, n=32, **args):
    x, y = data(n)
    dataset = [{"x": x[i], "labels": y[i]} for i in range(n)]
    args.setdefault("report_to", [])
    training = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        use_cpu=True,
        logging_steps=1,
        num_train_epochs=epochs,
        per_device_train_batch_size=4,
        save_strategy="no",
        disable_tqdm=True,
        **args,
    )
    return transformers.Trainer(
        model=Regressor(STEP_S),
        args=training,
        train_dataset=dataset,
        eval_dataset=dataset[:8] if "eval_strategy" in args else None,
        callbacks=list(callbacks),
    )


def hf_reporter(transformers):
    class Reporter(transformers.TrainerCallback):  # stands for a report_to integration
        def __init__(self):
            self.logs = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            self.logs.append(dict(logs))

    return Reporter()


def test_huggingface_logs_carry_the_steps_resolved_since_the_previous_log(hf, hw, tmp_path):
    from aipm_fast.integrations.huggingface import AipmTrainerCallback

    options, powers = hw
    reporter = hf_reporter(hf)
    cb = AipmTrainerCallback(**options)
    trainer = hf_trainer(hf, tmp_path, [reporter])
    cb.attach(trainer)  # ahead of the reporter, as of the report_to integrations
    trainer.train()
    assert not cb.meter._started

    history = trainer.state.log_history
    truth = marked_steps(cb.meter)
    assert len(truth) == 16
    steps = [h for h in history if "energy/steps/total_j" in h]
    assert steps and all("loss" in h or "train_runtime" in h for h in steps)  # training logs only
    # summed over the logs, the energy of every step, each counted once
    assert sum(h["energy/steps/count"] for h in steps) == 16
    assert sum(h["energy/steps/total_j"] for h in steps) == pytest.approx(sum(truth.values()), rel=1e-6)
    values = [h["energy/steps/total_j"] for h in steps]
    assert len(set(values)) == len(values)
    for h in steps:
        assert h["energy/steps/total_j"] == pytest.approx(
            sum(h[f"energy/steps/{k}_j"] for k in ("rapl_package-0", "rapl_package-0_dram", "nvml_0"))
        )
    # the first log comes before the first step is integrated: no energy, rather than a stale one
    assert "energy/steps/total_j" not in history[0]
    assert_keys_every_logger_takes(k for h in history for k in h if k.startswith("energy/"))

    # epochs, in records of their own
    epochs = [h for h in history if "energy/epoch/total_j" in h]
    assert len(epochs) == 2 == len(cb.epochs)
    windows = cb.meter.windows().set_index(["window", "domain"])
    for n, (h, rec) in enumerate(zip(epochs, cb.epochs)):
        assert not ({"loss", "energy/steps/total_j"} & set(h))
        assert rec["epoch"] == n and rec["steps"] == 8 and rec["samples"] == 32
        assert h["energy/epoch/total_j"] == pytest.approx(rec["energy_j"], rel=1e-9)
        assert h["energy/epoch/nvml_0_j"] == pytest.approx(windows.loc[(f"epoch_{n}", GPU), "energy_j"], rel=1e-9)
        check_epoch({d: rec[f"energy_j/{d}"] for d in (PACKAGE, DRAM, GPU)}, rec["duration_s"], powers)
        assert h["energy/epoch/j_per_sample"] == pytest.approx(rec["energy_j"] / 32, rel=1e-9)
    train = [h for h in history if "energy/train/total_j" in h]
    assert len(train) == 1 and "train_runtime" not in train[0]
    assert train[0]["energy/train/total_j"] >= sum(r["energy_j"] for r in cb.epochs)
    # the integrations that come after the callback received the same keys
    assert [{k: v for k, v in h.items() if k.startswith("energy/")} for h in history] == [
        {k: v for k, v in r.items() if k.startswith("energy/")} for r in reporter.logs
    ]

    # only the main process adds keys
    cb._unlogged_steps = [{GPU: 1.0}, 1]
    cb.meter = SimpleNamespace(running=True, resolved_marks=lambda since: ([], since), domains=cb.meter.domains)
    state = SimpleNamespace(is_world_process_zero=False, log_history=[], global_step=0)
    logs = {"loss": 1.0}
    cb.on_log(trainer.args, state, None, logs=logs)
    assert logs == {"loss": 1.0}


@pytest.mark.parametrize("kind", ["tensorboard", "mlflow"])
def test_huggingface_report_to_real_loggers_gets_every_step_once(hf, hw, tmp_path, monkeypatch, kind):
    from aipm_fast.integrations.huggingface import AipmTrainerCallback

    options, _ = hw
    pytest.importorskip(kind)
    if kind == "mlflow":
        monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the file store: see real_logger
        import mlflow

        # the Trainer keeps a tracking URI set earlier in the process (by another test): set ours
        mlflow.set_tracking_uri(f"file:{tmp_path / 'mlruns'}")
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "aipm")
        # The Trainer logs to MLflow asynchronously, and MLflow's file store then creates a
        # metric's folder from two threads at once and loses a batch to EEXIST now and then (a
        # race of the file store, not of what is logged): log synchronously here.
        from transformers.integrations import MLflowCallback

        setup = MLflowCallback.setup

        def synchronous_setup(self, *args, **kwargs):
            setup(self, *args, **kwargs)
            self._async_log = False

        monkeypatch.setattr(MLflowCallback, "setup", synchronous_setup)
    cb = AipmTrainerCallback(**options)
    trainer = hf_trainer(hf, tmp_path / "out", report_to=[kind])
    cb.attach(trainer)
    trainer.train()

    if kind == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        folders = {os.path.dirname(p) for p in map(str, tmp_path.rglob("events.out.tfevents.*"))}
        got: dict[str, list[float]] = {}
        for folder in folders:
            acc = EventAccumulator(folder)
            acc.Reload()
            for key in acc.Tags()["scalars"]:
                # the Trainer's TensorBoard integration files every training key under train/
                got.setdefault(key.removeprefix("train/"), []).extend(e.value for e in acc.Scalars(key))
        rel = 1e-5  # float32 in the events
    else:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
        (run,) = client.search_runs([client.get_experiment_by_name("aipm").experiment_id])
        got = {k: [h.value for h in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}
        rel = 1e-9
    energy = {k: v for k, v in got.items() if k.startswith("energy/")}
    assert_keys_every_logger_takes(energy)
    truth = marked_steps(cb.meter)
    steps = energy["energy/steps/total_j"]
    assert len(set(steps)) == len(steps)  # no value repeated
    assert sum(steps) == pytest.approx(sum(truth.values()), rel=rel)
    assert sum(energy["energy/steps/count"]) == 16
    assert len(energy["energy/epoch/total_j"]) == 2 and len(energy["energy/train/total_j"]) == 1


def test_huggingface_epoch_energy_stays_out_of_the_eval_records(hf, hw, tmp_path):
    from aipm_fast.integrations.huggingface import AipmTrainerCallback

    options, _ = hw
    cb = AipmTrainerCallback(**options)
    trainer = hf_trainer(hf, tmp_path, eval_strategy="epoch")
    cb.attach(trainer)
    trainer.train()
    history = trainer.state.log_history
    evals = [h for h in history if "eval_loss" in h]
    assert len(evals) == 2
    assert not any(k.startswith("energy/") for h in evals for k in h)
    assert len([h for h in history if "energy/epoch/total_j" in h]) == 2


@pytest.mark.parametrize("attached", [True, False])
def test_huggingface_meter_stopped_when_train_raises_and_a_retry_meters_afresh(hf, hw, tmp_path, attached):
    from aipm_fast.integrations.huggingface import AipmTrainerCallback

    options, _ = hw

    class FailAt(hf.TrainerCallback):
        def __init__(self):
            self.armed = True

        def on_step_end(self, args, state, control, **kwargs):
            if self.armed and state.global_step == 3:
                raise RuntimeError("boom")

    fail = FailAt()
    cb = AipmTrainerCallback(**options)
    trainer = hf_trainer(hf, tmp_path, [fail] if attached else [fail, cb], epochs=1, n=16)
    if attached:
        cb.attach(trainer)
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    first = cb.meter
    assert first._started is not attached  # attached: stopped at once; otherwise at the retry
    fail.armed = False
    trainer.train()
    assert not first._started and cb.meter is not first and not cb.meter._started
    assert len(cb.epochs) == 1 and cb.epochs[0]["steps"] == 4


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
