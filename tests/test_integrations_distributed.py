"""The Lightning and Hugging Face callbacks in a distributed run: two gloo ranks on localhost.

Each rank is launched the way torchrun launches it (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR,
MASTER_PORT in its environment), so that Lightning (strategy="ddp" on CPU) and the Trainer
(accelerate) join the process group instead of starting processes of their own. Both frameworks
train the same tiny MLP in the same two processes, Lightning first; the Trainer reuses the
process group. Hardware is faked: two fake GPUs (GPU r draws 100 + 10 r W, rank r meters GPU r)
and one powercap tree that only local rank 0 reads.
"""

import textwrap

import pytest

from gloo_ranks import two_gloo_ranks

pytest.importorskip("torch.distributed")
pytest.importorskip("lightning.pytorch")
pytest.importorskip("transformers")
pytest.importorskip("accelerate")

EPOCHS, SAMPLES, BATCH = 2, 64, 4  # 64 samples over 2 ranks: 8 steps of 4 per rank and epoch
STEPS = SAMPLES // 2 // BATCH
RANK_SCRIPT = (
    textwrap.dedent("""
    import os, pickle, sys, time, warnings
    warnings.filterwarnings("ignore")
    import torch
    from torch import nn
    from torch.nn import functional as F
    from torch.utils.data import DataLoader, TensorDataset
    powercap_root, nvml_lib, out, tmp = sys.argv[1:5]
    EPOCHS, SAMPLES, BATCH, STEP_S = EPOCHS_, SAMPLES_, BATCH_, 0.05
    options = {"powercap_root": powercap_root, "nvml_lib": nvml_lib, "msr_root": "/x", "perf_root": "/x",
               "cuda": False}
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(SAMPLES, 8, generator=g), torch.randn(SAMPLES, 1, generator=g)
    result = {}

    def tables(cb):
        return {"epochs": cb.epochs, "train": cb.train, "job_epochs": cb.job_epochs, "job_train": cb.job_train,
                "channels": sorted({c.domain for c in cb.meter.recorder.channels.values()})}

    # -- Lightning: DDP on CPU, the process group set up by the strategy ---------------------
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import Logger
    from aipm_fast.integrations.lightning import AipmCallback

    class Capture(Logger):
        name, version = "capture", 0

        def __init__(self):
            super().__init__()
            self.rows = []

        def log_hyperparams(self, *args, **kwargs):
            pass

        def log_metrics(self, metrics, step=None):
            self.rows.append(dict(metrics))

    class Tiny(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))

        def training_step(self, batch, batch_idx):
            time.sleep(STEP_S)
            return F.mse_loss(self.net(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.01)

    logger, cb = Capture(), AipmCallback(**options)
    trainer = pl.Trainer(max_epochs=EPOCHS, accelerator="cpu", devices=2, strategy="ddp", logger=logger,
                         callbacks=[cb], enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, log_every_n_steps=1, num_sanity_val_steps=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Tiny(), DataLoader(TensorDataset(x, y), batch_size=BATCH))
    warnings.filterwarnings("ignore")
    assert torch.distributed.is_initialized()
    result["lightning"] = {**tables(cb), "logged": logger.rows,
                           "sync_dist_warnings": [str(w.message) for w in caught if "sync_dist" in str(w.message)]}

    # -- Hugging Face: the Trainer joins the same process group ------------------------------
    import transformers
    from aipm_fast.integrations.huggingface import AipmTrainerCallback

    from tiny_models import Regressor

    args = transformers.TrainingArguments(
        output_dir=tmp, report_to=[], use_cpu=True, logging_steps=1, num_train_epochs=EPOCHS,
        per_device_train_batch_size=BATCH, save_strategy="no", disable_tqdm=True)
    cb = AipmTrainerCallback(**options)
    hf = transformers.Trainer(model=Regressor(STEP_S), args=args, callbacks=[cb],
                              train_dataset=[{"x": x[i], "labels": y[i]} for i in range(SAMPLES)])
    hf.train()
    assert args.world_size == 2
    result["huggingface"] = {**tables(cb), "logged": hf.state.log_history}

    with open(out, "wb") as f:
        pickle.dump(result, f)
    torch.distributed.destroy_process_group()
""")
    .replace("EPOCHS_", str(EPOCHS))
    .replace("SAMPLES_", str(SAMPLES))
    .replace("BATCH_", str(BATCH))
)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, build_fake_nvml):
    """Runs RANK_SCRIPT on two gloo ranks; returns [rank 0's results, rank 1's]."""
    tmp = tmp_path_factory.mktemp("dist_callbacks")
    with two_gloo_ranks(
        RANK_SCRIPT,
        tmp,
        build_fake_nvml(),
        extra_args=lambda rank: [str(tmp / f"hf{rank}")],
        extra_env={"TOKENIZERS_PARALLELISM": "false"},
        timeout_s=55,
    ) as (results, _):
        yield results


FRAMEWORKS = ["lightning", "huggingface"]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_each_rank_meters_its_own_gpu_and_only_local_rank_zero_the_host(two_ranks, framework):
    r0, r1 = (two_ranks[r][framework] for r in (0, 1))
    assert r0["channels"][0] == "nvml:0" and any(d.startswith("rapl:") for d in r0["channels"])
    assert r1["channels"] == ["nvml:1"]
    for rank, res in enumerate((r0, r1)):
        assert len(res["epochs"]) == EPOCHS
        for rec in res["epochs"]:
            assert rec["steps"] == STEPS and rec["samples"] == STEPS * BATCH
            gpus = [k for k in rec if k.startswith("energy_j/nvml:")]
            assert gpus == [f"energy_j/nvml:{rank}"]
            # the fake GPU of rank r draws (100 + 10 r) W for the whole epoch
            watts = 100 + 10 * rank
            assert rec[f"energy_j/nvml:{rank}"] == pytest.approx(watts * rec["duration_s"], rel=0.03)
        assert any(k.startswith("energy_j/rapl:") for k in res["epochs"][0]) is (rank == 0)


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_rank_zero_gets_the_job_totals(two_ranks, framework):
    r0, r1 = (two_ranks[r][framework] for r in (0, 1))
    assert r1["job_epochs"] == [] and r1["job_train"] is None  # only rank 0 gets the tables
    assert [j["epoch"] for j in r0["job_epochs"]] == list(range(EPOCHS))
    for n, job in enumerate(r0["job_epochs"]):
        e0, e1 = r0["epochs"][n]["energy_j"], r1["epochs"][n]["energy_j"]
        total = job["total"]
        assert total["energy_j"] == pytest.approx(e0 + e1, rel=1e-6)
        assert total["n_ranks"] == 2 and total["n_nodes"] == 1 and total["n_steps"] == STEPS
        assert total["samples"] == 2 * STEPS * BATCH
        assert total["joules_per_step"] == pytest.approx((e0 + e1) / STEPS, rel=1e-6)
        assert total["joules_per_sample"] == pytest.approx((e0 + e1) / (2 * STEPS * BATCH), rel=1e-6)
        per_rank = job["per_rank"].set_index("rank")
        assert per_rank.loc[0, "energy_j"] == pytest.approx(e0, rel=1e-6)
        assert per_rank.loc[1, "energy_j"] == pytest.approx(e1, rel=1e-6)
        assert per_rank.loc[1, "host_energy_j"] == 0.0 and per_rank.loc[0, "host_energy_j"] > 0
        assert job["per_node"]["energy_j"].sum() == pytest.approx(e0 + e1, rel=1e-6)
        # RAPL counted once: its rows come from rank 0 only
        t = job["table"]
        rapl = t[(t["scope"] == "rank") & t["domain"].str.startswith("rapl:")]
        assert len(rapl) and set(rapl["rank"]) == {0}
    train = r0["job_train"]["total"]
    assert train["energy_j"] == pytest.approx(r0["train"]["energy_j"] + r1["train"]["energy_j"], rel=1e-6)
    assert train["n_steps"] == EPOCHS * STEPS and train["samples"] == 2 * EPOCHS * STEPS * BATCH


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_rank_zero_logs_the_job_keys_in_records_of_their_own(two_ranks, framework):
    r0, r1 = (two_ranks[r][framework] for r in (0, 1))
    own = [row for row in r0["logged"] if "energy/epoch/total_j" in row]
    assert [row["energy/epoch/total_j"] for row in own] == pytest.approx([e["energy_j"] for e in r0["epochs"]])
    epochs = [row for row in r0["logged"] if "energy/job_epoch/total_j" in row]
    assert len(epochs) == EPOCHS
    for n, row in enumerate(epochs):
        e0, e1 = r0["epochs"][n]["energy_j"], r1["epochs"][n]["energy_j"]
        assert "energy/epoch/total_j" not in row
        assert row["energy/job_epoch/total_j"] == pytest.approx(e0 + e1, rel=1e-6)
        assert row["energy/job_epoch/j_per_sample"] == pytest.approx((e0 + e1) / (2 * STEPS * BATCH), rel=1e-6)
        assert row["energy/job_epoch/j_per_step"] == pytest.approx((e0 + e1) / STEPS, rel=1e-6)
        assert row["energy/job_epoch/rank0_j"] == pytest.approx(e0, rel=1e-6)
        assert row["energy/job_epoch/rank1_j"] == pytest.approx(e1, rel=1e-6)
    train = [row for row in r0["logged"] if "energy/job_train/total_j" in row]
    assert len(train) == 1
    assert train[0]["energy/job_train/total_j"] == pytest.approx(
        r0["train"]["energy_j"] + r1["train"]["energy_j"], rel=1e-6
    )
    assert train[0]["energy/job_train/rank1_j"] == pytest.approx(r1["train"]["energy_j"], rel=1e-6)
    assert not any(k.startswith("energy/") for row in r1["logged"] for k in row)  # rank 1 logs nothing


def test_lightning_under_ddp_gives_no_per_key_sync_dist_warning(two_ranks):
    for rank in (0, 1):
        assert two_ranks[rank]["lightning"]["sync_dist_warnings"] == []
