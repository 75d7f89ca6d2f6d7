"""PyTorch Lightning: energy per training step and per epoch, logged through the module's logger.

    from aipm_fast.integrations.lightning import AipmCallback

    trainer = lightning.Trainer(callbacks=[AipmCallback()])           # owns a Meter for the fit
    trainer = lightning.Trainer(callbacks=[AipmCallback(meter=m)])    # or uses a running Meter

Each training batch is a step mark (`Meter.step()`), each training epoch a window `epoch_<n>`
(it holds the epoch's validation too, the steps do not), the whole of `fit`'s training a window
`train`. Logged keys, in joules (totals add the domains without overlap, see
`aipm_fast.domains.additive_domains`):

    energy/step_j, energy/step_j/<domain>     every batch: the latest step whose energy is known
    energy/epoch_j, energy/epoch_j/<domain>   at the end of each epoch
    energy/epoch_j_per_sample                 where the batch size can be read from the batches
    energy/train_j, energy/train_j/<domain>   at the end of training, to the trainer's loggers

These are the figures of the process that logs them. When the run is distributed (a
torch.distributed process group is up, as under strategy="ddp"), every rank meters its own
devices and the callback gathers the ranks' figures on rank 0 at the end of each epoch and of
training, which adds (rank 0 only):

    energy/job/epoch_j                        the epoch's energy summed over every rank and node
    energy/job/epoch_j_per_step               over the job's steps (the most steps of any rank)
    energy/job/epoch_j_per_sample             over the samples of all ranks, where every rank knows its count
    energy/rank<r>/epoch_j                    each rank's share
    energy/job/train_j, energy/job/train_j_per_step, energy/job/train_j_per_sample,
    energy/rank<r>/train_j                    the same for the whole of training

The gathering uses torch.distributed collectives: under NCCL they go through the current CUDA
device, which Lightning sets for each rank before the fit starts (pass `group=` a gloo group
where it is not set).

Works with `lightning.pytorch` or, where that is not installed, the older `pytorch_lightning`.
"""

from __future__ import annotations

import math

try:
    try:
        from lightning.pytorch import Callback
        from lightning.pytorch.utilities.data import extract_batch_size
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "lightning":
            raise
        from pytorch_lightning import Callback  # type: ignore[assignment]
        from pytorch_lightning.utilities.data import extract_batch_size
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] not in ("lightning", "pytorch_lightning"):
        raise
    raise ModuleNotFoundError(
        "aipm_fast.integrations.lightning needs PyTorch Lightning: pip install 'aipm-fast[lightning]'", name=exc.name
    ) from None

from aipm_fast.integrations.common import StepMarks, energy_keys, energy_record, gather_job, job_keys, training_counts


class AipmCallback(Callback, StepMarks):
    """Energy per training step and per epoch, logged through `pl_module.log`.

    meter: a running Meter to use; the callback neither starts nor stops it. Without one, the
        callback makes a Meter from `meter_options` (the Meter's keyword arguments: out_dir,
        cuda, gpus, powercap_root, ...), starts it at `on_fit_start` and stops it at the end of
        the fit, or on an exception. It stays at `callback.meter` for inferences(), windows().
    log_steps: log `energy/step_j` every batch (False: epochs and training only).
    group: the torch.distributed process group to gather over in a distributed run (default:
        the whole world). Under NCCL without a current CUDA device, a gloo group
        (`torch.distributed.new_group(backend="gloo")`).

    `energy/step_j` is the energy of the most recent step whose energy is known, not of the
    batch that just ran: a step is integrated only once the power readings pass its end,
    typically 0.1-1 s later, so the step keys lag the loop by a few steps (they start to
    appear a fraction of a second into the first epoch). The epoch keys are exact: at the end
    of an epoch the callback waits for its readings (a fraction of a second, once per epoch).

    After the fit, `callback.epochs` holds one dict per epoch (epoch, steps, samples,
    duration_s, energy_j, energy_j_per_sample, energy_j/<domain>) and `callback.train` the same
    for the whole of training. Per sample means per sample trained on by this process.

    Distributed runs: a Meter the callback owns meters this rank's GPU only, and the host (RAPL)
    on local rank 0 only (`aipm_fast.integrations.distributed.rank_engine_options`, under the
    explicit meter options), so that each joule counts once; a Meter passed in is used as it
    is. Every rank gathers at each epoch end and at the end of training (collectives: all ranks
    take part). On rank 0, `callback.job_epochs` holds one `job_summary` dict per epoch
    ({"per_rank", "per_node", "total", "table"}, plus "epoch") and `callback.job_train` the
    one of the whole of training; both stay empty (None) on the other ranks.
    """

    def __init__(self, meter=None, *, log_steps: bool = True, group=None, **meter_options):
        self.log_steps = log_steps
        self._setup(meter, group, meter_options)

    def _clear(self) -> None:
        super()._clear()
        self._samples = 0
        self._samples_known = True

    # -- life cycle ----------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self._begin_run(getattr(trainer, "local_rank", None))

    def on_train_start(self, trainer, pl_module) -> None:
        if self.meter is not None:
            self._train = self._open("train")

    def on_train_end(self, trainer, pl_module) -> None:
        # `log` is not allowed here: the figures go to the loggers directly
        self._close_step()
        if self._train is None:
            return
        (_, w), energies, duration = self._end_window("_train")
        self.train = energy_record(None, *training_counts(self.epochs), duration, energies, self.meter.domains)
        metrics = energy_keys("energy/train_j", energies, self.meter.domains)
        if self._distributed:
            self.job_train = gather_job(
                w, energies, self.train["steps"], self.train["samples"], self.group, domains=self.meter.domains
            )
            if self.job_train is not None:
                metrics.update(job_keys("train", self.job_train))
        if metrics and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    def on_fit_end(self, trainer, pl_module) -> None:
        self._close_all()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._close_all()

    # -- epochs --------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.meter is None:
            return
        self._close_step()
        self._epoch = self._open(f"epoch_{trainer.current_epoch}")
        self._steps = self._samples = 0
        self._samples_known = True

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._close_step()  # a batch that ended the epoch early never reached on_train_batch_end
        if self._epoch is None:
            return
        (_, w), energies, duration = self._end_window("_epoch")
        samples = self._samples if self._samples_known else None
        record = energy_record(trainer.current_epoch, self._steps, samples, duration, energies, self.meter.domains)
        self.epochs.append(record)
        metrics = energy_keys("energy/epoch_j", energies, self.meter.domains)
        per_sample = record["energy_j_per_sample"]
        if per_sample is not None and math.isfinite(per_sample):
            metrics["energy/epoch_j_per_sample"] = per_sample
        for key, value in metrics.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, batch_size=1)
        if self._distributed:  # every rank takes part; rank 0 gets the job's figures
            job = gather_job(w, energies, record["steps"], record["samples"], self.group, domains=self.meter.domains)
            if job is not None:
                self.job_epochs.append({"epoch": trainer.current_epoch, **job})
                for key, value in job_keys("epoch", job).items():
                    pl_module.log(key, value, on_step=False, on_epoch=True, batch_size=1, rank_zero_only=True)

    # -- steps ---------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if self.meter is None:
            return
        try:
            self._samples += int(extract_batch_size(batch))
        except Exception:  # no tensor to read a batch size from
            self._samples_known = False
        self._begin_step()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        self._close_step()
        if not self.log_steps or self.meter is None:
            return
        self._poll()
        if self.last_step is not None:
            for key, value in energy_keys("energy/step_j", self.last_step, self.meter.domains).items():
                pl_module.log(key, value, on_step=True, on_epoch=False, batch_size=1)
