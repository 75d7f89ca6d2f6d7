"""Hugging Face `Trainer`: energy per optimizer step and per epoch, in the Trainer's own logs.

    from aipm_fast.integrations.huggingface import AipmTrainerCallback

    callback = AipmTrainerCallback()                 # owns a Meter for the training run
    trainer = Trainer(model, args, train_dataset=data, callbacks=[callback])
    trainer.train()
    callback.epochs                                  # one dict per epoch

Each optimizer step (`on_step_begin` to `on_step_end`, all its gradient-accumulation
micro-batches) is a step mark, each epoch a window `epoch_<n>`, the run a window `train`. At
every log the callback adds, in joules (totals add the domains without overlap, see
`aipm_fast.domains.additive_domains`):

    energy/step_j, energy/step_j/<domain>     the latest step whose energy is known
    energy/epoch_j, energy/epoch_j/<domain>   the last epoch ended since the previous log
    energy/epoch_j_per_sample                 its energy per training sample
    energy/train_j, energy/train_j/<domain>   in the Trainer's final log (the one with train_runtime)

These are the figures of the process that logs them. When the run is distributed (a
torch.distributed process group is up, as under torchrun or accelerate launch), every rank
meters its own devices and the callback gathers the ranks' figures on rank 0 at the end of
each epoch and of training, which adds (main process only):

    energy/job/epoch_j                        the epoch's energy summed over every rank and node
    energy/job/epoch_j_per_step               over the job's steps (the most steps of any rank)
    energy/job/epoch_j_per_sample             over the samples of all ranks
    energy/rank<r>/epoch_j                    each rank's share
    energy/job/train_j, energy/job/train_j_per_step, energy/job/train_j_per_sample,
    energy/rank<r>/train_j                    the same for the whole run, in the final log

The gathering uses torch.distributed collectives: under NCCL they go through the current CUDA
device, which the Trainer (accelerate) sets for each rank (pass `group=` a gloo group where it
is not set).

The Trainer copies a log into `trainer.state.log_history` and then hands it to the callbacks
in order; the callback adds its keys to both. The integrations chosen with `report_to`
(TensorBoard, W&B, MLflow, ...) come before the callbacks given to `Trainer(callbacks=...)`,
so to have them receive the energy keys too, add the callback with `callback.attach(trainer)`,
which puts it ahead of them.
"""

from __future__ import annotations

import math

try:
    from transformers import TrainerCallback
    from transformers.trainer_callback import DefaultFlowCallback
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] != "transformers":
        raise
    raise ModuleNotFoundError(
        "aipm_fast.integrations.huggingface needs Hugging Face transformers: pip install 'aipm-fast[huggingface]'",
        name=exc.name,
    ) from None

from aipm_fast.integrations.common import StepMarks, energy_keys, energy_record, gather_job, job_keys, training_counts


class AipmTrainerCallback(TrainerCallback, StepMarks):
    """Energy per step and per epoch, added to the Trainer's logs.

    meter: a running Meter to use; the callback neither starts nor stops it. Without one, the
        callback makes a Meter from `meter_options` (the Meter's keyword arguments: out_dir,
        cuda, gpus, powercap_root, ...), starts it at `on_train_begin` and stops it at
        `on_train_end`. The Trainer has no hook for a run that raises: call `callback.close()`
        (in a `finally`) where that matters; the Meter's threads never keep the process alive.
        The Meter stays at `callback.meter` for inferences(), windows().
    group: the torch.distributed process group to gather over in a distributed run (default:
        the whole world). Under NCCL without a current CUDA device, a gloo group
        (`torch.distributed.new_group(backend="gloo")`).

    `energy/step_j` is the energy of the most recent step whose energy is known, not of the
    step just logged: a step is integrated only once the power readings pass its end,
    typically 0.1-1 s later, so it lags the loop by a few steps (and the first logs of a run
    have none). Epoch figures are exact: at the end of an epoch the callback waits for its
    readings (a fraction of a second, once per epoch) and adds them to the next log.

    Only the main process (`state.is_world_process_zero`) adds keys to the logs; every
    process measures and keeps its own tables: `callback.epochs`, one dict per epoch (epoch,
    steps, samples, duration_s, energy_j, energy_j_per_sample, energy_j/<domain>), and
    `callback.train` the same for the whole run. Samples are those this process trained on,
    counted from the batch size (the last batch of an epoch may be short: the count is capped
    at the process's share of the training set).

    Distributed runs: a Meter the callback owns meters this rank's GPU only, and the host (RAPL)
    on local rank 0 only (`aipm_fast.integrations.distributed.rank_engine_options`, under the
    explicit meter options), so that each joule counts once; a Meter passed in is used as it
    is. Every rank gathers at each epoch end and at the end of training (collectives: all ranks
    take part). On rank 0, `callback.job_epochs` holds one `job_summary` dict per epoch
    ({"per_rank", "per_node", "total", "table"}, plus "epoch") and `callback.job_train` the
    one of the whole run; both stay empty (None) on the other ranks.
    """

    def __init__(self, meter=None, *, group=None, **meter_options):
        self._setup(meter, group, meter_options)

    def _clear(self) -> None:
        super()._clear()  # here _epoch holds (window mark, Window, epoch number)
        self._unlogged: dict[str, float] = {}  # epoch keys waiting for the next log

    def attach(self, trainer):
        """Add this callback to `trainer` ahead of the `report_to` integrations, so that they
        receive the energy keys too (callbacks given to `Trainer(callbacks=...)` follow them)."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        flow = [i for i, cb in enumerate(callbacks) if isinstance(cb, DefaultFlowCallback)]
        callbacks.insert(flow[0] + 1 if flow else 0, self)
        return self

    # -- life cycle ----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._begin_run(_local_rank(args))
        self._train = self._open("train")

    def on_train_end(self, args, state, control, **kwargs):
        self._close_train()
        self.close()

    def close(self) -> None:
        """Close what is still open and stop the Meter if the callback owns it (idempotent)."""
        self._close_all()

    def _close_train(self) -> None:
        self._close_step()
        if self._train is None:
            return
        (_, w), energies, duration = self._end_window("_train")
        steps, samples = training_counts(self.epochs)
        self.train = energy_record(None, steps, samples, duration, energies, self.meter.domains)
        self._unlogged.update(energy_keys("energy/train_j", energies, self.meter.domains))
        if self._distributed:
            self.job_train = gather_job(w, energies, steps, samples, self.group, domains=self.meter.domains)
            if self.job_train is not None:
                self._unlogged.update(job_keys("train", self.job_train))

    # -- epochs --------------------------------------------------------------------------
    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.meter is None:
            return
        self._close_step()
        n = math.floor((state.epoch or 0) + 1e-6)
        mark, w = self._open(f"epoch_{n}")
        self._epoch = (mark, w, n)
        self._steps = 0

    def on_epoch_end(self, args, state, control, train_dataloader=None, **kwargs):
        self._close_step()
        if self._epoch is None:
            return
        (_, w, n), energies, duration = self._end_window("_epoch")
        samples = self._samples(args, train_dataloader)
        record = energy_record(n, self._steps, samples, duration, energies, self.meter.domains)
        self.epochs.append(record)
        per_sample = record["energy_j_per_sample"]
        self._unlogged.update(energy_keys("energy/epoch_j", energies, self.meter.domains))
        if per_sample is not None and math.isfinite(per_sample):
            self._unlogged["energy/epoch_j_per_sample"] = per_sample
        if self._distributed:  # every rank takes part; rank 0 gets the job's figures
            job = gather_job(w, energies, self._steps, samples, self.group, domains=self.meter.domains)
            if job is not None:
                self.job_epochs.append({"epoch": n, **job})
                self._unlogged.update(job_keys("epoch", job))

    def _samples(self, args, train_dataloader) -> int | None:
        """Samples this process trained on in the epoch: steps x batch x accumulation, capped at
        its share of the training set where the set has a length."""
        n = self._steps * args.per_device_train_batch_size * args.gradient_accumulation_steps
        try:
            share = math.ceil(len(train_dataloader.dataset) / max(int(args.world_size), 1))
        except (AttributeError, TypeError):
            return n or None
        return min(n, share) or None

    # -- steps ---------------------------------------------------------------------------
    def on_step_begin(self, args, state, control, **kwargs):
        if self.meter is None:
            return
        self._begin_step()

    def on_step_end(self, args, state, control, **kwargs):
        self._close_step()

    # -- logs ----------------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.meter is None or logs is None:
            return
        if "train_runtime" in logs:  # the Trainer's final summary: training is over
            self._close_train()
        self._poll()
        if not state.is_world_process_zero:
            self._unlogged.clear()
            return
        added = dict(self._unlogged)
        self._unlogged.clear()
        if self.last_step is not None:
            added.update(energy_keys("energy/step_j", self.last_step, self.meter.domains))
        if not added:
            return
        # the Trainer stored a copy of these logs in log_history just before this call
        history = state.log_history
        if history and history[-1].get("step") == state.global_step and all(k in history[-1] for k in logs):
            history[-1].update(added)
        logs.update(added)


def _local_rank(args) -> int | None:
    """The Trainer's local rank (None where it cannot tell: LOCAL_RANK then decides)."""
    try:
        return int(args.local_process_index)
    except Exception:  # older TrainingArguments, or a stand-in without it
        rank = getattr(args, "local_rank", -1)
        return rank if isinstance(rank, int) and rank >= 0 else None
