"""`aipm-fast bench` under torchrun: the sweep's cells shared out over ranks, one GPU each.

A cell is one run of the sweep, (size, k): cell i of the cells still missing goes to rank
i % WORLD_SIZE, the same sharing in both modes, so that the two modes measure each cell on the
same GPU. Each rank meters only its own GPU (LOCAL_RANK's entry of CUDA_VISIBLE_DEVICES, as
`integrations.distributed.rank_engine_options` decides) and writes each of its cells' run
folders into the shared output folder as they resolve; rank 0 gathers (gather.py).

Modes (`--gpus-at-once`):

* ``all``: every rank runs its cells at once. Host sources (RAPL) are read by local rank 0 only,
  once per node, and the host energy of cells that run at once cannot be split between them:
  per run the cpu and total figures are left out (with the reason) and the node's host energy
  over the whole sweep is given in meta.json.
* ``one``: one cell at a time over the whole group (a barrier per cell in the cells' order; a
  rank idle since its last cell warms up again before its next one). With one cell running per
  node, every rank reads the host too, and each run's host energy is its own.

Ranks of one node are told apart from other nodes by AIPM_NODE_NAME, else the hostname: set
it when several torchrun groups share one host (simulated nodes), or when hostnames repeat.
The process group is gloo whatever the device: the sweep exchanges only small Python objects
(plans, spans, mean powers), gloo carries them on CPU and GPU ranks alike, and an NCCL
collective would put that traffic on the GPU being measured and need its CUDA device set first.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta

from aipm_fast.bench.folder import run_folder
from aipm_fast.integrations.distributed import LOCAL_RANK_VARS, RANK_VARS, _first_int, rank_engine_options
from aipm_fast.storage import write_json

__all__ = [
    "MODES",
    "NODE_VAR",
    "Sweep",
    "SweepError",
    "complete_cells",
    "node_name",
    "share_cells",
    "sweep_from_env",
    "world_size",
]

#: --gpus-at-once: every GPU at once, or one GPU at a time
MODES = ("all", "one")
#: the environment variable naming this rank's node (simulated nodes, repeated hostnames)
NODE_VAR = "AIPM_NODE_NAME"
#: the per-run file that says which rank, GPU and node measured it (written before run.json)
PLACEMENT_FILE = "placement.json"
#: how long a collective waits: in mode `one` a rank waits through the other ranks' cells, and at
#: the end the fastest rank waits for the slowest (torchrun ends the group on a failure anyway)
GROUP_TIMEOUT = timedelta(hours=24)

Cell = tuple[int, int]  # (size, k)


class SweepError(RuntimeError):
    pass


def node_name(environ: Mapping[str, str] = os.environ) -> str:
    """This rank's node: AIPM_NODE_NAME, else the hostname."""
    return environ.get(NODE_VAR, "").strip() or socket.gethostname()


def share_cells(cells: list[Cell], world_size: int) -> list[list[Cell]]:
    """Each rank's cells: cell i to rank i % world_size, in the cells' order."""
    return [cells[r::world_size] for r in range(world_size)]


def complete_cells(out_dir: str, cells: list[Cell]) -> list[Cell]:
    """The cells whose run folder holds run.json: it is written last, atomically (rename), so
    its presence means every other file of the run is complete."""
    return [c for c in cells if os.path.lexists(os.path.join(run_folder(out_dir, *c), "run.json"))]


def cell_name(cell: Cell) -> str:
    return f"input_{cell[0]}/run_{cell[1]}"


@dataclass
class Sweep:
    """This rank's part of a sweep over a torch.distributed group."""

    rank: int
    world_size: int
    local_rank: int
    node: str
    mode: str = "all"
    cells: list[Cell] = field(default_factory=list)  # this rank's cells, in order
    all_cells: list[Cell] = field(default_factory=list)  # the missing cells of every rank, in order
    done_before: list[Cell] = field(default_factory=list)  # complete before this sweep began
    spans: list[dict] = field(default_factory=list)  # this rank's cells measured in this sweep
    # rank 0: the runs of the folder's meta.json before this sweep rewrites it, by name
    earlier_runs: dict[str, dict] = field(default_factory=dict)
    _turn: int = 0  # the position in all_cells the group has reached (mode one)

    # -- launch -----------------------------------------------------------------------------
    @staticmethod
    def init_group() -> None:
        """The gloo process group of a torchrun launch (env:// rendezvous), once per process."""
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=GROUP_TIMEOUT)

    @staticmethod
    def leave_group() -> None:
        """End the group together once every rank is done: a gloo group left to the interpreter's
        exit can abort the process there (std::terminate on a joinable thread), which torchrun
        reports as a failed rank although every run was written."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()

    @property
    def reads_host(self) -> bool:
        """One reader of host sources per node while cells run at once; every rank one at a time."""
        return self.mode == "one" or self.local_rank == 0

    @property
    def host_per_run(self) -> bool:
        """Whether a run's host energy is its own: not while other cells of the node run at once."""
        return self.mode == "one"

    def device(self, device: str) -> str:
        """The torch device of this rank: cuda is cuda:LOCAL_RANK; cpu stays cpu."""
        if device.startswith("cuda"):
            if ":" in device:
                raise SweepError(f"{device}: under torchrun each rank runs on cuda:LOCAL_RANK; give --device cuda")
            return f"cuda:{self.local_rank}"
        return device

    def engine_options(self, engine: dict, environ: Mapping[str, str] = os.environ) -> dict:
        """The engine's options with this rank's GPU and host reading (unless GPUs were chosen)."""
        chosen = rank_engine_options(environ, reads_host=self.reads_host)
        if any(isinstance(g, str) for g in chosen["gpus"] or []):
            raise SweepError(f"CUDA_VISIBLE_DEVICES names GPUs by UUID ({chosen['gpus']}): give NVML indices")
        engine = dict(engine)
        config = engine.get("config")
        if config is not None:
            gpus = config.gpus if config.gpus is not None else chosen["gpus"]
            engine["config"] = dataclasses.replace(config, gpus=gpus, cpu=config.cpu and chosen["cpu"])
        else:
            engine.setdefault("gpus", chosen["gpus"])
            engine["cpu"] = engine.get("cpu", True) and chosen["cpu"]
        return engine

    # -- the plan ---------------------------------------------------------------------------
    def plan(self, out_dir: str, cells: list[Cell], options: dict, log: Callable[[str], None] = print) -> None:
        """Rank 0 checks that a folder already there was measured with the same `options` (those
        that change a run's figures), finds the cells already complete in out_dir, reports them, clears the run
        folders of the missing ones (interrupted: no run.json) and shares the missing cells out;
        every rank gets the same plan. A collective."""
        import torch.distributed as dist

        plan: list = [None]
        if self.rank == 0:
            clash = options_clash(out_dir, options)
            plan = [clash]
        if self.rank == 0 and plan[0] is None:
            self.earlier_runs = earlier_runs(out_dir)
            done = complete_cells(out_dir, cells)
            missing = [c for c in cells if c not in done]
            if done:
                log(
                    f"{out_dir}: {len(done)} of {len(cells)} runs complete ({_names(done)}); "
                    f"running the {len(missing)} missing: {_names(missing) or 'none'}"
                )
            for c in missing:
                folder = run_folder(out_dir, *c)
                if os.path.isdir(folder):  # an interrupted run's files: the rerun writes them anew
                    shutil.rmtree(folder)
            plan = [(done, missing)]
        dist.broadcast_object_list(plan, src=0)
        if isinstance(plan[0], str):
            raise SweepError(plan[0])
        self.done_before, self.all_cells = plan[0]
        self.cells = share_cells(self.all_cells, self.world_size)[self.rank]
        self._turn = 0

    def start_together(self) -> None:
        """Every rank begins its cells at once (after its baseline, every GPU idle during it)."""
        import torch.distributed as dist

        dist.barrier()

    def cells_of_size(self, size: int) -> list[int]:
        return [k for s, k in self.cells if s == size]

    # -- one GPU at a time --------------------------------------------------------------------
    def take_turn(self, cell: Cell, while_waiting: Callable[[], None]) -> bool:
        """In mode one, waits until every cell before this one in the group's order has run (two
        barriers per cell: its begin and its end, which its owner reaches once it has run it),
        then begins this one; True when this rank waited for another's cell (its GPU idled, so
        it warms up again). `while_waiting` runs once the first other cell has begun (e.g. to
        write this rank's last runs while another GPU measures). In mode all: False at once."""
        if self.mode != "one":
            return False
        import torch.distributed as dist

        target = self.all_cells.index(cell)
        waited = False
        while self._turn < target:
            dist.barrier()  # another rank's cell begins
            if not waited:
                while_waiting()
                waited = True
            dist.barrier()  # ... and has ended
            self._turn += 1
        dist.barrier()  # this rank's cell begins
        return waited

    def end_turn(self) -> None:
        """This rank's cell, begun by take_turn, has ended (mode one)."""
        if self.mode != "one":
            return
        import torch.distributed as dist

        dist.barrier()
        self._turn += 1

    def finish_turns(self) -> None:
        """Pass the barriers of the cells after this rank's last one (mode one)."""
        if self.mode != "one":
            return
        import torch.distributed as dist

        while self._turn < len(self.all_cells):
            dist.barrier()
            dist.barrier()
            self._turn += 1

    # -- what each run records ----------------------------------------------------------------
    def write_placement(self, run_dir: str, cell: Cell, start_ns: int, end_ns: int, gpu: dict) -> None:
        """The run's placement.json (before its run.json): rank, node, GPU, span."""
        entry = {
            "size": cell[0],
            "run": cell[1],
            "rank": self.rank,
            "local_rank": self.local_rank,
            "node": self.node,
            "gpu": gpu,
            "start_ns": int(start_ns),
            "end_ns": int(end_ns),
            "gpus_at_once": self.mode,
            "world_size": self.world_size,
        }
        write_json(os.path.join(run_dir, PLACEMENT_FILE), entry)
        self.spans.append(entry)


#: the options a rerun must share with the folder it fills: each changes a run's figures
SAME_OPTIONS = (
    "model",
    "batch_size",
    "duration_s",
    "iters",
    "warmup_s",
    "dtype",
    "weights",
    "prune",
    "sparsity",
    "sparsity_format",
)


def options_clash(out_dir: str, options: dict) -> str | None:
    """Why out_dir's runs cannot be completed with `options` (the BenchOptions as a dict), or
    None: no meta.json yet, or the same SAME_OPTIONS."""
    path = os.path.join(out_dir, "meta.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            before = json.load(f).get("options", {})
    except (OSError, ValueError, AttributeError) as exc:
        return f"{path}: not a readable meta.json ({exc}); give another --out"
    differ = [
        f"{k} {before.get(k)!r} there, {options.get(k)!r} now" for k in SAME_OPTIONS if before.get(k) != options.get(k)
    ]
    if differ:
        return (
            f"{out_dir} holds runs made with other options ({'; '.join(differ)}): rerun with them or give another --out"
        )
    return None


def earlier_runs(out_dir: str) -> dict[str, dict]:
    """The runs of out_dir's meta.json sweep section by name (empty without one), so that a rerun
    keeps what an earlier complete sweep knew of its runs' neighbours."""
    try:
        with open(os.path.join(out_dir, "meta.json")) as f:
            runs = json.load(f).get("sweep", {}).get("runs", [])
        return {cell_name((r["size"], r["run"])): r for r in runs}
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        return {}


def _names(cells: list[Cell], most: int = 8) -> str:
    names = [cell_name(c) for c in cells[:most]]
    return ", ".join(names) + (f" and {len(cells) - most} more" if len(cells) > most else "")


def world_size(environ: Mapping[str, str] = os.environ) -> int:
    """The processes of a torchrun launch (WORLD_SIZE; 1 without one)."""
    return _first_int(environ, ("WORLD_SIZE",)) or 1


def sweep_from_env(mode: str = "all", environ: Mapping[str, str] = os.environ) -> Sweep | None:
    """The Sweep of a torchrun launch (WORLD_SIZE above 1, RANK and LOCAL_RANK set), else None."""
    world = world_size(environ)
    if world < 2:
        return None
    if mode not in MODES:
        raise SweepError(f"--gpus-at-once {mode!r}: choose {' or '.join(MODES)}")
    rank = _first_int(environ, RANK_VARS)
    local_rank = _first_int(environ, LOCAL_RANK_VARS)
    if rank is None or local_rank is None:
        raise SweepError(f"WORLD_SIZE={world} but RANK or LOCAL_RANK is not set: launch with torchrun")
    return Sweep(rank=rank, world_size=world, local_rank=local_rank, node=node_name(environ), mode=mode)
