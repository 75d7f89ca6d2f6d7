"""The training benchmark behind `aipm-fast train`: joules per training step, per sample and per run.

The same protocol and folder as `aipm-fast bench` (:class:`~aipm_fast.bench.protocol.Benchmark`:
the Meter, the idle baseline, the GPUs metered, the run files written while the next run
measures), with a training run in place of an inference run. For each input size: a warm-up
of training steps on a throwaway copy of the model, then `runs` repetitions of the same
training (same initial weights, same batch order: their spread is the measurement's), each a
window of the Meter with every step marked (`Meter.step()`, CUDA-event timed on GPU). A step is
one batch's forward pass, loss, backward pass and optimizer step; choosing the batch from the
data on the device happens between steps, as a data loader's work does between a framework's
step hooks. Losses are kept on the device and read after the window closes, so that no step
waits for the host; the held-out accuracy is measured after the window too.

Beside the inference run's files, each run folder holds loss.csv (step, epoch, samples, loss);
run.json holds the run's steps, parameters, final loss and accuracy (runfile.py), and per part
the median energy of its steps and their spread. `inferences.csv` has one row per step.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from aipm_fast.bench import models
from aipm_fast.bench.folder import LOSS_COLUMNS
from aipm_fast.bench.protocol import BenchError, Benchmark, BenchOptions, _PendingRun
from aipm_fast.bench.train_data import DataError, TrainData, load_data
from aipm_fast.storage import write_atomic, write_json

__all__ = ["DEFAULT_LR", "FINAL_LOSS_STEPS", "OPTIMIZERS", "TrainOptions", "Training", "optimizer_for"]

#: --optimizer choices and their default learning rates (sgd with momentum 0.9: the SNIP code's
#: plain SGD at 0.1 diverges with momentum, which multiplies the step by 1/(1 - momentum))
DEFAULT_LR = {"sgd": 0.01, "adam": 1e-3}
OPTIMIZERS = tuple(DEFAULT_LR)
FINAL_LOSS_STEPS = 10  # the final loss is the mean training loss of the run's last steps


@dataclass
class TrainOptions(BenchOptions):
    """A training benchmark's options: the bench's (duration_s, iters and precision unused) and
    the training's own. Give steps or epochs, not both."""

    optimizer: str = "sgd"
    lr: float | None = None  # None: DEFAULT_LR of the optimizer
    momentum: float = 0.9  # sgd only
    steps: int | None = None  # per run
    epochs: int | None = None  # per run, over the training part of the data
    data: str | None = None  # None: synthetic (train_data.py)
    seed: int = 0  # of the initial weights and the batch order, the same in every run


def optimizer_for(opts: TrainOptions, params):
    import torch

    lr = opts.lr if opts.lr is not None else DEFAULT_LR.get(opts.optimizer, 0.0)
    if opts.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=opts.momentum)
    if opts.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise BenchError(f"--optimizer {opts.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")


class Training(Benchmark):
    COMMAND = "train"
    opts: TrainOptions

    def _check_options(self) -> None:
        opts = self.opts
        if self.sweep is not None:  # its size loop would run every run on every rank (sweep.py is bench's)
            raise BenchError("train runs in one process: only bench shares its runs over torchrun's ranks")
        if self.spec.train_refusal:
            raise BenchError(f"{opts.model} cannot be trained here: {self.spec.train_refusal}")
        if self.spec.samples is None:
            raise BenchError(f"{opts.model} cannot be trained here: its family makes no training samples")
        if (opts.steps is None) == (opts.epochs is None):
            raise BenchError("give --steps or --epochs (one of them)")
        if opts.optimizer not in OPTIMIZERS:
            raise BenchError(f"--optimizer {opts.optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if opts.lr is not None and not (math.isfinite(opts.lr) and opts.lr > 0):
            raise BenchError(f"--lr {opts.lr!r}: a learning rate is a positive number")

    # -- one size --------------------------------------------------------------------------
    def _measure_size(self, size: int, model, dtype):
        opts = self.opts
        try:
            self.data = load_data(
                self.spec, size, opts.data, batch_size=opts.batch_size, device=opts.device, dtype=dtype
            )
        except DataError as exc:
            raise BenchError(str(exc)) from None
        self.dtype = dtype
        self.steps_per_epoch = math.ceil(self.data.samples / opts.batch_size)
        self.n_steps = opts.steps if opts.steps is not None else opts.epochs * self.steps_per_epoch  # type: ignore[operator]
        write_json(os.path.join(opts.out, "meta.json"), self._meta())  # now with the data's description
        self._warmup_training(size)
        self._runs_of_size(None, None, size)
        return None

    def _prune_request(self):
        """The bench's request with the masks re-applied before every forward pass, so that the
        masked weights stay zero while the model trains."""
        request = super()._prune_request()
        return None if request is None else dataclasses.replace(request, reapply_masks=True)

    def _fresh(self, size: int):
        """The model at its initial weights (the same in every run), pruned as asked at
        initialisation from the first batch (SNIP's and FORCE's gradients are of its training
        loss), in training mode, and its optimizer."""
        import torch
        from torch.nn import functional as F

        torch.manual_seed(self.opts.seed)
        model = models.build_model(
            self.opts.model, weights_path=self.opts.weights, device=self.opts.device, dtype=self.dtype, size=size
        )
        model.eval()  # counted (and scored) as the bench does: batch norm of a single sample has no batch statistics
        first = next(self._batches())[1]

        def loss_fn(outputs, targets):
            return F.cross_entropy(getattr(outputs, "logits", outputs), targets)

        model, self.model_columns[size] = self._prepare(
            model, self.data.x[first], targets=self.data.y[first], loss_fn=loss_fn
        )
        model.train()
        return model, optimizer_for(self.opts, model.parameters())

    def _batches(self):
        """(epoch, batch indices) for every step of a run: a fresh permutation each epoch, the
        same sequence in every run; the last batch of an epoch holds what is left."""
        import torch

        generator = torch.Generator().manual_seed(self.opts.seed)
        n, b = self.data.samples, self.opts.batch_size
        step = 0
        epoch = 0
        while True:
            order = torch.randperm(n, generator=generator).to(self.opts.device)
            for start in range(0, n, b):
                if step == self.n_steps:
                    return
                yield epoch, order[start : start + b]
                step += 1
            epoch += 1

    def _step(self, model, optimizer, x, y):
        from torch.nn import functional as F

        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(models.train_forward(self.spec, model, x), y)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def _warmup_training(self, size: int) -> None:
        """Training steps on a throwaway model for warmup_s seconds (one at least): kernels chosen,
        memory pools grown, before any run is measured."""
        model, optimizer = self._fresh(size)
        end = time.monotonic() + self.opts.warmup_s
        first = True
        while first or time.monotonic() < end:
            for _, idx in self._batches():
                self._step(model, optimizer, self.data.x[idx], self.data.y[idx])
                if time.monotonic() >= end:
                    break
            first = False
        self._sync()

    def _one_run(self, model, inputs, size: int, k: int) -> None:
        import torch

        m, data = self.meter, self.data
        model, optimizer = self._fresh(size)
        losses, epochs, counts = [], [], []
        batches = list(self._batches())
        run_dir, writer = self._open_run(size, k)
        with m.window(f"input_{size}/run_{k}") as w:
            for epoch, idx in batches:
                x, y = data.x[idx], data.y[idx]
                with m.step():
                    losses.append(self._step(model, optimizer, x, y))
                epochs.append(epoch)
                counts.append(int(idx.shape[0]))
        loss = torch.stack(losses).float().cpu().numpy().astype(np.float64)
        curve = pd.DataFrame(dict(zip(LOSS_COLUMNS, (np.arange(len(losses)), epochs, counts, loss))))
        extra: dict[str, Any] = {"curve": curve}
        self._measured(run_dir, size, k, w, len(losses), writer, samples=int(sum(counts)), extra=extra)
        extra.update(self._accuracy(model, data))  # after the run's edge figures: not part of the run

    def _accuracy(self, model, data: TrainData) -> dict:
        import torch

        if data.eval_x is None or data.eval_y is None:
            return {"accuracy": None, "accuracy_on": None, "accuracy_missing_reason": data.no_accuracy_reason}
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, data.eval_y.shape[0], self.opts.batch_size):
                x = data.eval_x[start : start + self.opts.batch_size]
                y = data.eval_y[start : start + self.opts.batch_size]
                correct += int((models.train_forward(self.spec, model, x).argmax(dim=1) == y).sum())
        model.train()
        held = int(data.eval_y.shape[0])
        return {
            "accuracy": correct / held,
            "accuracy_on": f"held-out split of {data.name} ({held} samples)",
            "accuracy_missing_reason": None,
        }

    # -- the run's files -------------------------------------------------------------------
    def _run_fields(self, pending: _PendingRun, table: pd.DataFrame, energy: dict) -> dict[str, Any]:
        extra = pending.extra
        curve: pd.DataFrame = extra["curve"]
        write_atomic(os.path.join(pending.run_dir, "loss.csv"), curve.to_csv(index=False).encode())
        for part, value in energy.items():
            if value is not None:
                energy[part] = value.with_steps(table[f"{part}_j"].to_numpy())
        loss = curve["loss"].to_numpy()
        bad = np.flatnonzero(~np.isfinite(loss))
        tail = loss[-FINAL_LOSS_STEPS:]
        return {
            "mode": "train",
            "n_steps": len(curve),
            "final_loss": float(tail.mean()) if bad.size == 0 else None,
            "loss_missing_reason": None
            if bad.size == 0
            else f"the loss is not finite from step {int(bad[0])} (diverged: lower --lr)",
            "accuracy": extra["accuracy"],
            "accuracy_on": extra["accuracy_on"],
            "accuracy_missing_reason": extra["accuracy_missing_reason"],
        }

    def _meta(self) -> dict:
        meta = super()._meta()
        meta["mode"] = "train"
        meta["data"] = self.data.describe() if hasattr(self, "data") else {"name": self.opts.data or "synthetic"}
        meta["steps_per_epoch"] = getattr(self, "steps_per_epoch", None)
        meta["inference"] = "one training sample (n_inferences counts the samples trained on)"
        meta["step"] = "one batch: forward pass, cross-entropy loss, backward pass, optimizer step"
        return meta
