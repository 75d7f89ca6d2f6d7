"""What the training-loop callbacks share; imports no framework, so each callback module can."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from aipm_fast.integrations.distributed import _dist, _gather, gather_windows, job_summary, rank_meter
from aipm_fast.integrations.keys import total_j


def window_energy(meter, window) -> tuple[dict[str, float], float]:
    """({domain: J}, duration in s) of a closed window whose end is resolved, as Meter.windows()
    gives it, without waiting (see StepMarks._ready_epochs for who waits)."""
    return meter.results.window_energy(window), (window.end_ns - window.start_ns) / 1e9


# -- distributed runs -------------------------------------------------------------------------------
def is_distributed() -> bool:
    """Whether a torch.distributed process group is up (then the callbacks gather on rank 0)."""
    return _dist() is not None


def owned_meter(options: dict, local_rank: int | None = None):
    """The Meter a callback owns, not started. Under torch.distributed it meters this rank's
    devices only (`rank_engine_options`, with the user's explicit `options` on top): its own
    GPU, and the host (RAPL) on local rank 0 only, so each joule counts once in the job's totals.
    `local_rank` is the framework's own figure; it replaces LOCAL_RANK, which some launchers
    (Lightning's own, for its first process) leave unset."""
    if not is_distributed():
        from aipm_fast.meter import Meter

        return Meter(**options)
    environ = dict(os.environ)
    if local_rank is not None and local_rank >= 0:
        environ["LOCAL_RANK"] = str(local_rank)
    return rank_meter(environ, **options)


class _OneWindow:
    """What `gather_windows` reads from a Meter (`windows()`), for one closed window only: the
    figures the callback already logged for this process, and its own step count."""

    def __init__(self, window, energies: dict[str, float], steps: int, domains):
        self.rows = [
            {
                "window": window.name,
                "window_id": window.id,
                "domain": d,
                "part": domains[d].part,
                "additive": domains[d].additive,
                "start_ns": window.start_ns,
                "end_ns": window.end_ns,
                "duration_s": (window.end_ns - window.start_ns) / 1e9,
                "energy_j": e,
                "n_inferences": steps,
            }
            for d, e in energies.items()
        ]

    def windows(self) -> pd.DataFrame:
        return pd.DataFrame(
            self.rows,
            columns=[
                "window",
                "window_id",
                "domain",
                "part",
                "additive",
                "start_ns",
                "end_ns",
                "duration_s",
                "energy_j",
                "n_inferences",
            ],
        )


def gather_job(
    window, energies: dict[str, float], steps: int, samples: int | None, group=None, *, domains
) -> dict | None:
    """A window's figures from every rank, summed on rank 0: `job_summary` of the gathered table
    ({"per_rank", "per_node", "total"}, plus "table") on rank 0, None on the others.

    A collective: every rank calls it, for the same windows in the same order. `steps` and
    `samples` are this rank's (None: unknown); `domains` is its Meter's domain meaning. In the
    total, n_steps is the most steps of any
    rank (a job's step is one step on every rank), samples the sum over ranks (None if a rank
    does not know its count), joules_per_step and joules_per_sample the job's energy over them.
    Under NCCL the figures travel through the current CUDA device: it must be set
    (`torch.cuda.set_device(local_rank)`; Lightning and the Trainer do it), or `group` a gloo group."""
    table = gather_windows(_OneWindow(window, energies, steps, domains), group=group)
    counts = _gather(
        {"rank": _dist().get_rank() if is_distributed() else 0, "steps": steps, "samples": samples}, group, 0
    )
    if table is None or counts is None:
        return None
    summary = job_summary(table, window=window.name)
    counts = pd.DataFrame(counts, columns=["rank", "steps", "samples"])
    # every rank, those that meter no device too (their energy is NaN: others meter their GPU)
    summary["per_rank"] = (
        summary["per_rank"]
        .drop(columns="n_steps")
        .merge(counts.rename(columns={"steps": "n_steps"}), on="rank", how="outer")
        .sort_values("rank", ignore_index=True)
    )
    total = summary["total"]
    n_steps = int(counts["steps"].max()) if len(counts) else 0
    known = len(counts) > 0 and bool(counts["samples"].notna().all())
    n_samples = int(counts["samples"].sum()) if known else None
    total.update(
        {
            "n_steps": n_steps,
            "n_ranks": len(counts),
            "samples": n_samples,
            "joules_per_step": total["energy_j"] / n_steps if n_steps else math.nan,
            "joules_per_sample": total["energy_j"] / n_samples if n_samples else math.nan,
        }
    )
    summary["table"] = table
    return summary


def energy_record(epoch, steps: int, samples: int | None, duration: float, energies: dict[str, float], domains) -> dict:
    """One row of a callback's `epochs` (or its `train`): steps, samples, J, J per sample."""
    total = total_j(energies, domains)
    return {
        "epoch": epoch,
        "steps": steps,
        "samples": samples,
        "duration_s": duration,
        "energy_j": total,
        "energy_j_per_sample": total / samples if samples else None,
        **{f"energy_j/{d}": e for d, e in energies.items()},
    }


def training_counts(epochs: list[dict]) -> tuple[int, int | None]:
    """(steps, samples) of the whole of training from its epochs; samples None if any is unknown."""
    known = [e["samples"] for e in epochs]
    return sum(e["steps"] for e in epochs), (sum(known) if known and None not in known else None)


@dataclass
class ClosedWindow:
    """An epoch (or the training run) whose window has closed: logged once its end resolves."""

    mark: Any  # the Meter's window context, already exited
    window: Any  # its Window
    epoch: int | None
    steps: int
    samples: int | None
    at: int  # the logger's step at the window's end: where its keys are logged
    energies: dict[str, float] = field(default_factory=dict)
    record: dict = field(default_factory=dict)  # energy_record, once resolved


class StepMarks:
    """What both callbacks share: the Meter they own or were given, the windows open for
    training and the current epoch, one open step mark at a time, and the bookkeeping that
    hands each step's and each epoch's energy over once, when it is known, without making the
    training loop wait for it (user marks on the same Meter are not ours).

    Steps are grouped by a key, the logger's step (several batches share one under gradient
    accumulation): a group is complete once all its marks are integrated and a later step has
    begun (or training ended). Epochs are closed without waiting; `_ready_epochs` gives those
    whose readings have passed their end. Under torch.distributed, epoch N-1 is gathered at the
    end of epoch N (a collective that every rank reaches at the same point, by which time its
    readings are in) and the rest at the end of training.

    A mixin: the callback calls `_setup` from its __init__ and `_begin_run` when training starts."""

    def _setup(self, meter, group, meter_options: dict) -> None:
        if meter is not None and meter_options:
            raise TypeError(f"{type(self).__name__} takes either a running Meter or Meter options, not both")
        self.meter = meter
        self.group = group
        self._owns = meter is None
        self._options = meter_options
        self.epochs: list[dict] = []
        self.train: dict | None = None
        self.last_step: dict[str, float] | None = None  # {domain: J} of the latest complete step
        self.job_epochs: list[dict] = []  # rank 0 of a distributed run: the job's epochs
        self.job_train: dict | None = None
        self._distributed = False
        self._clear()

    def _clear(self) -> None:
        self._step: Any = None  # the open step mark
        self._step_key: Any = None  # its group's key
        self._index_key: dict[int, Any] = {}  # mark index -> group key, for our marks not integrated yet
        self._groups: dict[Any, list] = {}  # key -> [marks not integrated, {domain: J} so far, marks]
        self._position = 0
        self._epoch: Any = None  # (window mark, Window) of the open epoch
        self._train: Any = None  # (window mark, Window) of the open training window
        self._steps = 0
        self._unresolved: list[ClosedWindow] = []  # closed epochs not logged yet, in order
        self._ungathered: list[ClosedWindow] = []  # distributed: closed epochs not gathered yet

    def _begin_run(self, local_rank: int | None) -> None:
        """Afresh: results emptied, the Meter started if owned (checked running if given). An
        owned Meter left running by a run that raised without telling us is stopped first, so
        that a retry never meters with two."""
        if self._owns and self.meter is not None and self.meter.running:
            self._close_all()
        self._clear()
        self.epochs, self.train, self.last_step = [], None, None
        self.job_epochs, self.job_train = [], None
        self._distributed = is_distributed()  # decided once, so that every rank gathers alike
        if self._owns:
            self.meter = owned_meter(self._options, local_rank).start()
        elif not self.meter.running:
            raise RuntimeError(
                f"{type(self).__name__}(meter=...) needs a running Meter: start it before "
                "training, or pass Meter options and let the callback own one"
            )
        self._position = self.meter.results.position  # marks from before the run are not ours

    def _close_all(self) -> None:
        """Close what is still open and stop the Meter if the callback owns it (idempotent)."""
        self._close_step()
        for attr in ("_epoch", "_train"):
            opened = getattr(self, attr)
            if opened is not None:
                setattr(self, attr, None)
                opened[0].__exit__(None, None, None)
        if self._owns and self.meter is not None:
            self.meter.stop()

    def _open(self, name: str):
        mark = self.meter.window(name)
        return mark, mark.__enter__().window

    # -- steps -------------------------------------------------------------------------------
    def _begin_step(self, key) -> None:
        self._close_step()  # a step that never reached its end hook
        self._steps += 1
        step = self.meter.step()
        step.__enter__()
        self._step, self._step_key = step, key

    def _close_step(self) -> None:
        step, self._step = self._step, None
        if step is not None:
            step.__exit__(None, None, None)
            self._index_key[step.index] = self._step_key
            group = self._groups.setdefault(self._step_key, [0, {}, 0])
            group[0] += 1
            group[2] += 1

    def _complete_steps(self, final: bool = False) -> list[tuple[Any, dict[str, float], int]]:
        """[(key, {domain: J}, marks)] of the step groups completed since the last call, in the
        order they began; `final`: training is over, no step is still to come. Never waits."""
        marks, self._position = self.meter.resolved_marks(self._position)
        for index, energies in marks:
            key = self._index_key.pop(index, None)
            if key is None:
                continue  # a user's own mark on the same Meter
            group = self._groups[key]
            group[0] -= 1
            for d, e in energies.items():
                group[1][d] = group[1].get(d, 0.0) + e  # NaN stays NaN: never a partial sum
        done = []
        for key, (waiting, energies, n) in list(self._groups.items()):
            if waiting:
                break  # keep the order: a later step is handed over after an earlier one
            if key == self._step_key and not final:
                break  # more batches may still join this step
            done.append((key, energies, n))
            del self._groups[key]
        if done:
            self.last_step = done[-1][1]
        return done

    # -- epochs --------------------------------------------------------------------------------
    def _end_epoch(self, epoch: int, samples: int | None, at: int) -> None:
        """Close the epoch's window without waiting for its readings."""
        self._close_step()
        opened, self._epoch = self._epoch, None
        opened[0].__exit__(None, None, None)
        closed = ClosedWindow(opened[0], opened[1], epoch, self._steps, samples, at)
        self._unresolved.append(closed)
        if self._distributed:
            self._ungathered.append(closed)

    def _resolve(self, closed: ClosedWindow, wait: bool) -> bool:
        """Fill in a closed window's energies once its end is resolved (`wait`: flush for it)."""
        if closed.record:
            return True
        if not closed.window.end_resolved:
            if not wait:
                return False
            self.meter.flush(closed.window)
        energies, duration = window_energy(self.meter, closed.window)
        closed.energies = energies
        closed.record = energy_record(
            closed.epoch, closed.steps, closed.samples, duration, energies, self.meter.domains
        )
        return True

    def _ready_epochs(self, wait: bool = False) -> list[ClosedWindow]:
        """The closed epochs whose energies are now known, in order, each handed over once and
        added to `epochs`; `wait`: wait for all of them (training is over)."""
        ready = []
        while self._unresolved and self._resolve(self._unresolved[0], wait):
            closed = self._unresolved.pop(0)
            self.epochs.append(closed.record)
            ready.append(closed)
        return ready

    def _gather_epochs(self, keep_last: bool) -> list[tuple[ClosedWindow, dict]]:
        """Distributed: gather the closed epochs (all but the latest if `keep_last`) on rank 0,
        waiting for their readings: [(epoch, job summary)] on rank 0, [] elsewhere."""
        todo = self._ungathered[:-1] if keep_last else self._ungathered
        self._ungathered = self._ungathered[len(todo) :]
        out = []
        for closed in todo:
            self._resolve(closed, wait=True)
            job = gather_job(
                closed.window, closed.energies, closed.steps, closed.samples, self.group, domains=self.meter.domains
            )
            if job is not None:
                self.job_epochs.append({"epoch": closed.epoch, **job})
                out.append((closed, job))
        return out

    def _end_train(self, at: int) -> tuple[list[ClosedWindow], ClosedWindow | None]:
        """Training is over: close the step and the training window and wait for them and for
        the epochs not handed over yet (the loop no longer runs, so nothing is held up):
        (those epochs, the training run or None where no run was open). Its record is `train`."""
        self._close_step()
        opened, self._train = self._train, None
        if opened is not None:
            opened[0].__exit__(None, None, None)
        self.meter.flush()  # every mark of ours, and the windows' edges
        epochs = self._ready_epochs(wait=True)
        if opened is None:
            return epochs, None
        steps, samples = training_counts(self.epochs)
        closed = ClosedWindow(opened[0], opened[1], None, steps, samples, at)
        self._resolve(closed, wait=True)
        self.train = closed.record
        return epochs, closed

    def _gather_train(self, closed: ClosedWindow) -> dict | None:
        """Distributed: the training run gathered on rank 0 (None elsewhere)."""
        self.job_train = gather_job(
            closed.window, closed.energies, closed.steps, closed.samples, self.group, domains=self.meter.domains
        )
        return self.job_train
