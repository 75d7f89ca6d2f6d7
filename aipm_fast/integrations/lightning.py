"""PyTorch Lightning: energy per training step and per epoch, logged to the trainer's loggers.

    from aipm_fast.integrations.lightning import AipmCallback

    trainer = lightning.Trainer(callbacks=[AipmCallback()])           # owns a Meter for the fit
    trainer = lightning.Trainer(callbacks=[AipmCallback(meter=m)])    # or uses a running Meter

Each training batch is a step mark (`Meter.step()`), each training epoch a window `epoch_<n>`
(it holds the epoch's validation too, the steps do not), the whole of `fit`'s training a window
`train`. Logged keys, in joules (the scheme is `aipm_fast.integrations.keys`; totals add the
domains without overlap, see `aipm_fast.domains.additive_domains`):

    energy/step/total_j, energy/step/<domain>_j     each step, at that step
    energy/epoch/total_j, energy/epoch/<domain>_j   each epoch, at its last batch's step, in a record of its own
    energy/epoch/j_per_sample                       where the batch size can be read from the batches
    energy/train/total_j, energy/train/<domain>_j   the whole of training, at its end

Lightning's loggers (CSV, TensorBoard, MLflow, W&B) all take an explicit step: a step's energy
is known only once the power readings pass its end (typically 0.1-1 s later), so the callback
logs it when it is known, under the step it belongs to, once. Nothing waits for readings while
training runs: an epoch's keys follow when its readings are in, at a later batch. Where
gradient accumulation puts several batches in one step, the step's energy is theirs together.

These are the figures of the process that logs them. When the run is distributed (a
torch.distributed process group is up, as under strategy="ddp"), every rank meters its own
devices and rank 0 logs the job's figures too (each epoch gathered at the end of the next one,
the last at the end of training):

    energy/job_epoch/total_j                  the epoch's energy summed over every rank and node
    energy/job_epoch/j_per_step               over the job's steps (the most steps of any rank)
    energy/job_epoch/j_per_sample             over the samples of all ranks, where every rank knows its count
    energy/job_epoch/rank<r>_j                each rank's share
    energy/job_train/...                      the same for the whole of training

The gathering uses torch.distributed collectives: under NCCL they go through the current CUDA
device, which Lightning sets for each rank before the fit starts (pass `group=` a gloo group
where it is not set). Only rank 0 writes to the loggers: no metric goes through `self.log`, so
none needs `sync_dist`.

Works with `lightning.pytorch` or, where that is not installed, the older `pytorch_lightning`.
"""

from __future__ import annotations

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

from aipm_fast.integrations.common import ClosedWindow, StepMarks
from aipm_fast.integrations.keys import energy_keys, epoch_keys, job_keys


def logger_step(trainer) -> int:
    """The step under which Lightning's loggers file the current batch's metrics (its count of
    batches that stepped: the global step without a second optimizer)."""
    return int(getattr(trainer.fit_loop.epoch_loop, "_batches_that_stepped", trainer.global_step))


def last_step(callback: StepMarks, trainer) -> int:
    """Where Lightning files an epoch's own metrics: the step of its last batch."""
    return callback._step_key if callback._steps and callback._step_key is not None else logger_step(trainer)


class AipmCallback(Callback, StepMarks):
    """Energy per training step and per epoch, logged to `trainer.loggers` under their own steps.

    meter: a running Meter to use; the callback neither starts nor stops it. Without one, the
        callback makes a Meter from `meter_options` (the Meter's keyword arguments: out_dir,
        cuda, gpus, powercap_root, ...), starts it at `on_fit_start` and stops it at the end of
        the fit, or on an exception (a later fit starts a fresh one). It stays at
        `callback.meter` for inferences(), windows().
    log_steps: log the step keys (False: epochs and training only).
    group: the torch.distributed process group to gather over in a distributed run (default:
        the whole world). Under NCCL without a current CUDA device, a gloo group
        (`torch.distributed.new_group(backend="gloo")`).

    After the fit, `callback.epochs` holds one dict per epoch (epoch, steps, samples,
    duration_s, energy_j, energy_j_per_sample, energy_j/<domain>) and `callback.train` the same
    for the whole of training. Per sample means per sample trained on by this process.

    Distributed runs: a Meter the callback owns meters this rank's GPU only, and the host (RAPL)
    on local rank 0 only (`aipm_fast.integrations.distributed.rank_engine_options`, under the
    explicit meter options), so that each joule counts once; a Meter passed in is used as it
    is. Every rank gathers (collectives: all ranks take part). On rank 0, `callback.job_epochs`
    holds one `job_summary` dict per epoch ({"per_rank", "per_node", "total", "table"}, plus
    "epoch") and `callback.job_train` the one of the whole of training; both stay empty (None)
    on the other ranks.
    """

    def __init__(self, meter=None, *, log_steps: bool = True, group=None, **meter_options):
        self.log_steps = log_steps
        self._setup(meter, group, meter_options)

    def _clear(self) -> None:
        super()._clear()
        self._samples = 0
        self._samples_known = True

    def _log(self, trainer, keys: dict[str, float], step: int) -> None:
        if keys and trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(keys, step=step)

    def _log_epoch(self, trainer, closed: ClosedWindow) -> None:
        keys = epoch_keys(closed.energies, closed.record["energy_j_per_sample"], self.meter.domains)
        self._log(trainer, {"epoch": float(closed.epoch or 0), **keys} if keys else {}, closed.at)

    def _log_ready(self, trainer, final: bool = False) -> None:
        """Log what became known since the last call: complete steps, then resolved epochs."""
        for step, energies, _ in self._complete_steps(final):
            if self.log_steps:
                self._log(trainer, energy_keys("step", energies, self.meter.domains), step)
        for closed in self._ready_epochs():
            self._log_epoch(trainer, closed)

    # -- life cycle ----------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self._begin_run(getattr(trainer, "local_rank", None))

    def on_train_start(self, trainer, pl_module) -> None:
        if self.meter is not None:
            self._train = self._open("train")

    def on_train_end(self, trainer, pl_module) -> None:
        if self.meter is None or not self.meter.running:
            return
        at = last_step(self, trainer)
        epochs, train = self._end_train(at)  # training is over: waiting holds nothing up
        self._log_ready(trainer, final=True)
        for closed in epochs:
            self._log_epoch(trainer, closed)
        if self._distributed:
            for closed, job in self._gather_epochs(keep_last=False):
                self._log(trainer, job_keys("epoch", job), closed.at)
        if train is None:
            return
        self._log(trainer, energy_keys("train", train.energies, self.meter.domains), at)
        if self._distributed:
            job_train = self._gather_train(train)
            if job_train is not None:
                self._log(trainer, job_keys("train", job_train), at)

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
        if self._epoch is None:
            return
        # a batch that ended the epoch early never reached on_train_batch_end: closed here
        self._end_epoch(trainer.current_epoch, self._samples if self._samples_known else None, last_step(self, trainer))
        self._log_ready(trainer)
        if self._distributed:  # every rank takes part; rank 0 gets the job's figures
            for closed, job in self._gather_epochs(keep_last=True):
                self._log(trainer, job_keys("epoch", job), closed.at)

    # -- steps ---------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx, *args) -> None:
        if self.meter is None:
            return
        try:
            self._samples += int(extract_batch_size(batch))
        except Exception:  # no tensor to read a batch size from
            self._samples_known = False
        self._begin_step(logger_step(trainer))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, *args) -> None:
        self._close_step()
        if self.meter is not None:
            self._log_ready(trainer)
