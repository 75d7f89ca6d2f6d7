"""Hugging Face `Trainer`: energy per optimizer step and per epoch, in the Trainer's own logs.

    from aipm_fast.integrations.huggingface import AipmTrainerCallback

    callback = AipmTrainerCallback()                 # owns a Meter for the training run
    trainer = Trainer(model, args, train_dataset=data)
    callback.attach(trainer)                         # ahead of the report_to integrations
    trainer.train()
    callback.epochs                                  # one dict per epoch

Each optimizer step (`on_step_begin` to `on_step_end`, all its gradient-accumulation
micro-batches) is a step mark, each epoch a window `epoch_<n>`, the run a window `train`. Keys,
in joules (the scheme is `aipm_fast.integrations.keys`; totals add the domains without overlap,
see `aipm_fast.domains.additive_domains`):

    energy/steps/total_j, energy/steps/<domain>_j   added to a training log: the steps whose
    energy/steps/count                              energy became known since the previous one
    energy/epoch/total_j, energy/epoch/<domain>_j   a record of its own once the epoch's
    energy/epoch/j_per_sample                       readings are in (never merged into eval_*)
    energy/train/total_j, energy/train/<domain>_j   a record of its own after the final log

The Trainer logs at the current step only, and a step's energy is known only once the power
readings pass its end (typically 0.1-1 s later): so each training log carries the energy of the
steps resolved since the previous log, with their count, and no value is ever repeated; summed
over the logs they give the energy of every step. Nothing waits for readings while training
runs: an epoch's record follows at a later step.

These are the figures of the process that logs them. When the run is distributed (a
torch.distributed process group is up, as under torchrun or accelerate launch), every rank
meters its own devices, and the main process adds the job's figures in records of their own
(each epoch gathered at the end of the next one, the last at the end of training):

    energy/job_epoch/total_j                  the epoch's energy summed over every rank and node
    energy/job_epoch/j_per_step               over the job's steps (the most steps of any rank)
    energy/job_epoch/j_per_sample             over the samples of all ranks
    energy/job_epoch/rank<r>_j                each rank's share
    energy/job_train/...                      the same for the whole run

The gathering uses torch.distributed collectives: under NCCL they go through the current CUDA
device, which the Trainer (accelerate) sets for each rank (pass `group=` a gloo group where it
is not set).

The integrations chosen with `report_to` (TensorBoard, W&B, MLflow, ...) come before the
callbacks given to `Trainer(callbacks=...)`. `callback.attach(trainer)` puts the callback ahead
of them, so that they receive the energy keys, and lets it write its own records through
`trainer.log`; a callback given in `callbacks=` only adds its records to
`trainer.state.log_history`.
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

import functools

from aipm_fast.integrations.common import ClosedWindow, StepMarks
from aipm_fast.integrations.keys import energy_keys, epoch_keys, job_keys, steps_keys


class AipmTrainerCallback(TrainerCallback, StepMarks):
    """Energy per step and per epoch, added to the Trainer's logs.

    meter: a running Meter to use; the callback neither starts nor stops it. Without one, the
        callback makes a Meter from `meter_options` (the Meter's keyword arguments: out_dir,
        cuda, gpus, powercap_root, ...), starts it at `on_train_begin` and stops it at
        `on_train_end`. The Trainer has no hook for a run that raises: after `attach(trainer)`
        the callback stops its Meter when `trainer.train()` raises; otherwise a later
        `train()` stops the one left running before it starts afresh, and `callback.close()`
        stops it at once. The Meter stays at `callback.meter` for inferences(), windows().
    group: the torch.distributed process group to gather over in a distributed run (default:
        the whole world). Under NCCL without a current CUDA device, a gloo group
        (`torch.distributed.new_group(backend="gloo")`).

    Only the main process (`state.is_world_process_zero`) adds keys and records to the logs;
    every process measures and keeps its own tables: `callback.epochs`, one dict per epoch
    (epoch, steps, samples, duration_s, energy_j, energy_j_per_sample, energy_j/<domain>), and
    `callback.train` the same for the whole run. Samples are those this process trained on,
    counted from the batch size (the last batch of an epoch may be short: the count is capped
    at the process's share of the training set).

    Distributed runs: a Meter the callback owns meters this rank's GPU only, and the host (RAPL)
    on local rank 0 only (`aipm_fast.integrations.distributed.rank_engine_options`, under the
    explicit meter options), so that each joule counts once; a Meter passed in is used as it
    is. Every rank gathers (collectives: all ranks take part). On rank 0, `callback.job_epochs`
    holds one `job_summary` dict per epoch ({"per_rank", "per_node", "total", "table"}, plus
    "epoch") and `callback.job_train` the one of the whole run; both stay empty (None) on the
    other ranks.
    """

    def __init__(self, meter=None, *, group=None, **meter_options):
        self._trainer = None  # set by attach: our own records then go through trainer.log
        self._setup(meter, group, meter_options)

    def _clear(self) -> None:
        super()._clear()
        self._unlogged_steps: list = [{}, 0]  # [{domain: J}, count] of steps not in a log yet
        self._emitting = False  # our own record is passing through on_log
        self._finished = False  # the final log was seen: the records below follow it
        self._final_records: list[dict] = []  # made at the final log, emitted at on_train_end
        self._epoch_number = 0

    def attach(self, trainer):
        """Add this callback to `trainer` ahead of the `report_to` integrations, so that they
        receive the energy keys too (callbacks given to `Trainer(callbacks=...)` follow them),
        write its records through `trainer.log`, and stop an owned Meter when `train()` raises."""
        callbacks = trainer.callback_handler.callbacks
        if self in callbacks:
            callbacks.remove(self)
        flow = [i for i, cb in enumerate(callbacks) if isinstance(cb, DefaultFlowCallback)]
        callbacks.insert(flow[0] + 1 if flow else 0, self)
        if self._trainer is not trainer:
            self._trainer = trainer
            train = trainer.train

            @functools.wraps(train)
            def guarded_train(*args, **kwargs):
                try:
                    return train(*args, **kwargs)
                except BaseException:
                    self.close()
                    raise

            trainer.train = guarded_train
        return self

    def _emit(self, state, keys: dict[str, float]) -> None:
        """A record of our own (an epoch, the run, the job's figures), main process only."""
        if not keys or not state.is_world_process_zero:
            return
        if self._trainer is None:
            state.log_history.append({**keys, "epoch": state.epoch, "step": state.global_step})
            return
        self._emitting = True
        try:
            self._trainer.log(dict(keys))
        finally:
            self._emitting = False

    def _emit_epoch(self, state, closed: ClosedWindow) -> None:
        self._emit(state, epoch_keys(closed.energies, closed.record["energy_j_per_sample"], self.meter.domains))

    def _collect_steps(self, final: bool = False) -> None:
        for _, energies, _ in self._complete_steps(final):
            total = self._unlogged_steps[0]
            for d, e in energies.items():
                total[d] = total.get(d, 0.0) + e
            self._unlogged_steps[1] += 1

    def _emit_ready(self, state) -> None:
        for closed in self._ready_epochs():
            self._emit_epoch(state, closed)

    # -- life cycle ----------------------------------------------------------------------
    def on_train_begin(self, args, state, control, **kwargs):
        self._begin_run(_local_rank(args))
        self._train = self._open("train")

    def on_train_end(self, args, state, control, **kwargs):
        if self.meter is not None and self.meter.running and not self._finished:
            self._finish(state)
        for keys in self._final_records:
            self._emit(state, keys)
        self._final_records = []
        self.close()

    def close(self) -> None:
        """Close what is still open and stop the Meter if the callback owns it (idempotent)."""
        self._close_all()

    def _finish(self, state) -> None:
        """Training is over (its final log): wait for what is left and keep the records that
        follow the final log: the epochs not handed over yet, the job's, and the run's."""
        epochs, train = self._end_train(state.global_step)
        self._collect_steps(final=True)
        records = []
        for closed in epochs:
            records.append(epoch_keys(closed.energies, closed.record["energy_j_per_sample"], self.meter.domains))
        if self._distributed:
            records += [job_keys("epoch", job) for _, job in self._gather_epochs(keep_last=False)]
        if train is not None:
            records.append(energy_keys("train", train.energies, self.meter.domains))
            if self._distributed:
                job = self._gather_train(train)
                if job is not None:
                    records.append(job_keys("train", job))
        self._finished = True
        self._final_records = [r for r in records if r]

    # -- epochs --------------------------------------------------------------------------
    def on_epoch_begin(self, args, state, control, **kwargs):
        if self.meter is None:
            return
        self._close_step()
        self._epoch_number = n = math.floor((state.epoch or 0) + 1e-6)
        self._epoch = self._open(f"epoch_{n}")
        self._steps = 0

    def on_epoch_end(self, args, state, control, train_dataloader=None, **kwargs):
        if self._epoch is None:
            return
        self._end_epoch(self._epoch_number, self._samples(args, train_dataloader), state.global_step)
        self._emit_ready(state)
        if self._distributed:  # every rank takes part; rank 0 gets the job's figures
            for _, job in self._gather_epochs(keep_last=True):
                self._emit(state, job_keys("epoch", job))

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
        self._begin_step(state.global_step)

    def on_step_end(self, args, state, control, **kwargs):
        self._close_step()
        if self.meter is not None and self.meter.running:
            self._emit_ready(state)

    # -- logs ----------------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._emitting or self.meter is None or logs is None or not self.meter.running:
            return
        if _evaluation_only(logs):
            return  # the steps' energy goes to a training log, not to eval_* figures
        if "train_runtime" in logs:  # the Trainer's final summary: training is over
            self._finish(state)
        else:
            self._collect_steps()
        if not state.is_world_process_zero:
            self._unlogged_steps = [{}, 0]
            return
        energies, count = self._unlogged_steps
        if not count:
            return
        self._unlogged_steps = [{}, 0]
        added = steps_keys(energies, count, self.meter.domains)
        # the Trainer stored a copy of these logs in log_history just before this call
        history = state.log_history
        if history and history[-1].get("step") == state.global_step and all(k in history[-1] for k in logs):
            history[-1].update(added)
        logs.update(added)


def _evaluation_only(logs: dict) -> bool:
    """Whether a log holds evaluation (or test, prediction) figures only."""
    own = [k for k in logs if k not in ("epoch", "step")]
    return bool(own) and all(k.split("_")[0] in ("eval", "test", "predict") for k in own)


def _local_rank(args) -> int | None:
    """The Trainer's local rank (None where it cannot tell: LOCAL_RANK then decides)."""
    try:
        return int(args.local_process_index)
    except Exception:  # older TrainingArguments, or a stand-in without it
        rank = getattr(args, "local_rank", -1)
        return rank if isinstance(rank, int) and rank >= 0 else None
