"""What the training-loop callbacks share; imports no framework, so each callback module can."""

from __future__ import annotations

import math
import os

import pandas as pd

from aipm_fast.domains import additive_domains
from aipm_fast.integrations.distributed import _dist, _gather, gather_windows, job_summary, rank_meter


def total_j(energies: dict[str, float], domains) -> float:
    """Sum of the domains that add up without overlap (NaN if any of them is unknown);
    `domains` is the Meter's domain -> meaning mapping."""
    parts = additive_domains(domains, energies)
    return float(sum(energies[d] for d in parts)) if parts else math.nan


def window_energy(meter, window) -> tuple[dict[str, float], float]:
    """({domain: J}, duration in s) of a closed window, as Meter.windows() gives it. Waits for
    this window's end only, not for marks that other threads may keep adding."""
    return meter.window_energy(window), (window.end_ns - window.start_ns) / 1e9


def energy_keys(prefix: str, energies: dict[str, float], domains) -> dict[str, float]:
    """{prefix: total, prefix/<domain>: J}, leaving out what is not a finite number."""
    keys = {prefix: total_j(energies, domains), **{f"{prefix}/{d}": e for d, e in energies.items()}}
    return {k: float(v) for k, v in keys.items() if math.isfinite(v)}


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


def job_keys(kind: str, summary: dict) -> dict[str, float]:
    """Rank 0's job keys for a gathered window ("epoch" or "train"): energy/job/<kind>_j (over
    every rank and node), energy/job/<kind>_j_per_step, energy/job/<kind>_j_per_sample, and
    energy/rank<r>/<kind>_j per rank; what is not a finite number is left out."""
    total = summary["total"]
    keys = {
        f"energy/job/{kind}_j": total["energy_j"],
        f"energy/job/{kind}_j_per_step": total["joules_per_step"],
        f"energy/job/{kind}_j_per_sample": total["joules_per_sample"],
    }
    for rank, energy in zip(summary["per_rank"]["rank"], summary["per_rank"]["energy_j"]):
        keys[f"energy/rank{int(rank)}/{kind}_j"] = energy
    return {k: float(v) for k, v in keys.items() if v is not None and math.isfinite(v)}


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


class StepMarks:
    """What both callbacks share: the Meter they own or were given, the windows open for
    training and the current epoch, one open step mark at a time, and the latest of this
    callback's steps whose energy is known (user marks on the same Meter are not ours).
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
        self.last_step: dict[str, float] | None = None  # {domain: J} of the latest resolved step
        self.job_epochs: list[dict] = []  # rank 0 of a distributed run: the job's epochs
        self.job_train: dict | None = None
        self._distributed = False
        self._clear()

    def _clear(self) -> None:
        self._clear_steps()
        self._epoch = None  # (window mark, Window, ...) of the open epoch
        self._train = None  # (window mark, Window) of the open training window
        self._steps = 0

    def _begin_run(self, local_rank: int | None) -> None:
        """Afresh: results emptied, the Meter started if owned (checked running if given)."""
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

    def _end_window(self, attr: str):
        """Close the window held in `attr` ("_epoch" or "_train"): (what was held, its
        {domain: J}, its duration in s)."""
        opened = getattr(self, attr)
        setattr(self, attr, None)
        opened[0].__exit__(None, None, None)
        energies, duration = window_energy(self.meter, opened[1])
        return opened, energies, duration

    def _begin_step(self) -> None:
        self._close_step()  # a step that never reached its end hook
        self._steps += 1
        step = self.meter.step()
        step.__enter__()
        self._step = step

    def _clear_steps(self) -> None:
        self._step = None  # the open step mark
        self._mine: set[int] = set()  # indices of this callback's steps not integrated yet
        self._last_index = -1
        self._position = 0

    def _open(self, name: str):
        mark = self.meter.window(name)
        return mark, mark.__enter__()

    def _close_step(self) -> None:
        step, self._step = self._step, None
        if step is not None:
            step.__exit__(None, None, None)
            self._mine.add(step.index)

    def _poll(self) -> None:
        marks, self._position = self.meter.resolved_marks(self._position)
        for index, energies in marks:
            if index in self._mine:
                self._mine.discard(index)
                if index > self._last_index:
                    self._last_index, self.last_step = index, energies
