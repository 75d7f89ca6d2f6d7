"""Energy under torch.distributed: which devices each rank meters, and the job's totals on rank 0.

Every rank runs its own Meter. Two rules keep each joule counted once:

* a rank meters only the GPU it computes on (`rank_engine_options`), and
* host sources (RAPL) are read by local rank 0 only: one reader per node.

Afterwards every rank calls `gather_windows` / `gather_steps`. They are collectives: the
figures of all ranks travel to rank 0 through torch.distributed (`gather_object`), no other
transport. Rank 0 gets one table, the others None. Under NCCL, object collectives go through
the current CUDA device: call `torch.cuda.set_device(local_rank)` first (torchrun scripts do),
or pass a gloo group (`torch.distributed.new_group(backend="gloo")`) as `group`.

Clocks: times are each host's CLOCK_MONOTONIC (ns since its boot). Ranks on one node share it,
so their absolute times compare; ranks on different nodes do not, so figures that span nodes
are built from durations only (a job's span is the longest of its nodes' spans).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Mapping

import numpy as np
import pandas as pd

from aipm_fast.domains import additive_rows, gpu_rows

# torchrun sets LOCAL_RANK; the others cover mpirun and srun launches of the same script.
LOCAL_RANK_VARS = ("LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_RANK", "MV2_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID")
RANK_VARS = ("RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")


# -- which devices a rank meters ----------------------------------------------------------------
def visible_devices(value: str | None) -> list[int | str] | None:
    """CUDA_VISIBLE_DEVICES read the way CUDA reads it: integers, or GPU-/MIG- UUIDs (strings);
    CUDA ignores everything from the first invalid or negative entry on. None when unset."""
    if value is None:
        return None
    devices: list[int | str] = []
    for entry in (e.strip() for e in value.split(",")):
        if entry.lstrip("-").isdigit():
            if int(entry) < 0:
                break
            devices.append(int(entry))
        elif entry.startswith(("GPU-", "MIG-")):
            devices.append(entry)
        else:
            break
    return devices


def _first_int(environ: Mapping[str, str], names: tuple[str, ...]) -> int | None:
    for name in names:
        if environ.get(name, "").strip().isdigit():
            return int(environ[name])
    return None


def rank_engine_options(
    environ: Mapping[str, str] = os.environ, *, reads_host: bool | None = None, gpus: list | None = None
) -> dict:
    """Engine options (`gpus`, `cpu`) for this process, to pass to a Meter.

    Under a distributed launch (LOCAL_RANK set) the rank meters the LOCAL_RANK-th entry of
    CUDA_VISIBLE_DEVICES: NVML numbers physical GPUs while CUDA numbers the visible ones, so the
    entry, not LOCAL_RANK itself, is the NVML index. Without CUDA_VISIBLE_DEVICES it is GPU
    LOCAL_RANK. Two launch styles need care:
      * a launcher that gives each rank its own single-entry CUDA_VISIBLE_DEVICES (srun
        --gpus-per-task): that one entry is the rank's GPU;
      * more local ranks than visible GPUs (ranks share GPU LOCAL_RANK % n): the lowest local
        rank on each GPU meters it, the others meter none.
    CUDA numbers GPUs fastest first unless CUDA_DEVICE_ORDER=PCI_BUS_ID; NVML uses PCI order.
    The two agree on machines of identical GPUs; on mixed machines set PCI_BUS_ID.

    Entries given as UUIDs ("GPU-8f3c..." or "MIG-...") are returned as such: NVML indices
    for them must come from the caller, through `resolve_gpus`.

    Host sources are read by LOCAL_RANK 0 only (`cpu=True`), so RAPL counts once per node.
    Without a distributed launch the process meters every visible GPU and the host.
    `reads_host` and `gpus` override the choice (e.g. when ranks of one node share no LOCAL_RANK
    numbering). Pure: reads only `environ`.
    """
    local_rank = _first_int(environ, LOCAL_RANK_VARS)
    visible = visible_devices(environ.get("CUDA_VISIBLE_DEVICES"))
    if local_rank is None:
        chosen, host = visible, True  # None: every GPU NVML sees
    else:
        chosen, host = _rank_gpus(local_rank, visible), local_rank == 0
    return {"gpus": chosen if gpus is None else list(gpus), "cpu": host if reads_host is None else bool(reads_host)}


def _rank_gpus(local_rank: int, visible: list | None) -> list:
    if visible is None:
        return [local_rank]
    if local_rank < len(visible):
        return [visible[local_rank]]
    if len(visible) == 1:
        return [visible[0]]
    return []


def resolve_gpus(gpus: list | None, nvml_uuids: Mapping[str, int]) -> list[int] | None:
    """Replace UUID entries by NVML indices. `nvml_uuids` maps each GPU's UUID to its NVML index,
    e.g. parsed from `nvidia-smi --query-gpu=uuid,index --format=csv,noheader`. A unique prefix
    is accepted, as CUDA accepts one. NVML has no power reading per MIG instance: for a MIG
    device pass its parent GPU explicitly (`gpus=[index]`)."""
    if gpus is None:
        return None
    out = []
    for g in gpus:
        if isinstance(g, int):
            out.append(g)
            continue
        if g.startswith("MIG-"):
            raise ValueError(f"{g}: NVML meters whole GPUs; pass the parent GPU's index as gpus=[...]")
        matches = [index for uuid, index in nvml_uuids.items() if uuid.startswith(g)]
        if len(matches) != 1:
            raise ValueError(f"{g}: {'no' if not matches else 'more than one'} GPU has this UUID")
        out.append(matches[0])
    return out


def rank_meter(
    environ: Mapping[str, str] | None = None,
    *,
    reads_host: bool | None = None,
    gpus: list | None = None,
    **meter_options,
):
    """A Meter for this rank: `rank_engine_options` merged under explicit `meter_options`."""
    from aipm_fast.meter import Meter

    options = rank_engine_options(os.environ if environ is None else environ, reads_host=reads_host, gpus=gpus)
    if any(isinstance(g, str) for g in options["gpus"] or []):
        raise ValueError(
            f"CUDA_VISIBLE_DEVICES names GPUs by UUID ({options['gpus']}): map them to NVML "
            "indices with resolve_gpus() and pass gpus=[...]"
        )
    return Meter(**{**options, **meter_options})


# -- collectives ----------------------------------------------------------------------------------
def _dist():
    """torch.distributed when a process group is up, else None (a single process is rank 0)."""
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def _identity() -> tuple[int, str]:
    dist = _dist()
    rank = dist.get_rank() if dist else (_first_int(os.environ, RANK_VARS) or 0)
    return rank, socket.gethostname()


def _gather(obj, group, dst: int):
    dist = _dist()
    if dist is None:
        return [obj]
    parts = [None] * dist.get_world_size(group) if dist.get_rank() == dst else None
    dist.gather_object(obj, parts, dst=dst, group=group)
    return parts


def _barrier(group) -> None:
    dist = _dist()
    if dist is not None:
        dist.barrier(group=group)


@contextlib.contextmanager
def synced_window(meter, name: str = "window", group=None):
    """A window that opens and closes together on every rank: each edge waits at a barrier, so
    the window ends once the slowest rank is done and every rank's window covers the same span
    (a rank that finished early is metered while it waits). A collective: every rank enters it."""
    _barrier(group)
    with meter.window(name) as w:
        yield w
        _barrier(group)


def gather_windows(meter, group=None, dst: int = 0) -> pd.DataFrame | None:
    """Every rank's windows, on rank `dst` (None elsewhere). A collective: every rank calls it.

    Rows with scope "rank" are each rank's `meter.windows()` with its rank and node (hostname);
    `seq` numbers the windows of one name on a rank (epoch 0, 1, ...), which is how windows are
    matched across ranks. Rows with scope "node" and "job" are totals per window (domain
    "total", rank -1): energy summed over ranks and their additive domains (see
    the `additive` column), span [min start, max end] over the node's ranks; a job's duration is
    its longest node span, and its start/end are left empty when it spans nodes (clocks differ).
    Sum rows of one scope only."""
    local = meter.windows()
    local["seq"] = (local.groupby("window")["window_id"].rank(method="dense") - 1).astype(int)
    per_rank = _gather_ranks(local, group, dst)
    if per_rank is None:
        return None
    totals = _totals(per_rank, ["window", "seq"], {"n_inferences": "max"})
    return _assemble(per_rank, totals, ["window", "seq"])


def gather_steps(meter, group=None, dst: int = 0) -> pd.DataFrame | None:
    """Every rank's steps (or inferences), on rank `dst` (None elsewhere). A collective.

    Scope "rank" rows are each rank's `meter.inferences()`, with duration_s its latency and
    `step` its position in its window name on that rank: step k of every rank is the job's
    step k. Ranks whose steps end at different times keep their own figures there; the "node"
    and "job" totals of a step sum the ranks' energies and take the span across ranks
    [min start, max end] as its duration (per node; across nodes the longest node span)."""
    local = meter.inferences().rename(columns={"latency_s": "duration_s"})
    meaning = meter.domains
    local["part"] = local["domain"].map(lambda d: meaning[d].part)
    local["additive"] = local["domain"].map(lambda d: meaning[d].additive)
    local["step"] = (local.groupby("window")["index"].rank(method="dense") - 1).astype(int)
    per_rank = _gather_ranks(local, group, dst)
    if per_rank is None:
        return None
    return _assemble(per_rank, _totals(per_rank, ["window", "step"], {}), ["window", "step"])


def _gather_ranks(local: pd.DataFrame, group, dst: int) -> pd.DataFrame | None:
    """This rank's table, tagged with its rank and node, gathered with every other rank's on
    rank `dst` into one (None elsewhere). A collective."""
    rank, node = _identity()
    local.insert(0, "rank", rank)
    local.insert(1, "node", node)
    parts = _gather(local, group, dst)
    return None if parts is None else pd.concat(parts, ignore_index=True)


def _sum_strict(x: pd.Series) -> float:
    # an unknown (NaN) part makes the total unknown: a total that silently drops one is wrong
    return float(x.sum(skipna=False))


def _totals(per_rank: pd.DataFrame, keys: list[str], extra: dict) -> pd.DataFrame:
    """Node and job rows per window (or step): energies summed, spans per node."""
    if per_rank.empty:
        return pd.DataFrame()
    rows = additive_rows(per_rank)
    node = (
        rows.groupby([*keys, "node"], sort=False)
        .agg(
            energy_j=("energy_j", _sum_strict),
            start_ns=("start_ns", "min"),
            end_ns=("end_ns", "max"),
            n_ranks=("rank", "nunique"),
            **{c: (c, how) for c, how in extra.items()},
        )
        .reset_index()
    )
    node["duration_s"] = (node["end_ns"] - node["start_ns"]) / 1e9
    job = (
        node.groupby(keys, sort=False)
        .agg(
            energy_j=("energy_j", _sum_strict),
            duration_s=("duration_s", "max"),
            start_ns=("start_ns", "min"),
            end_ns=("end_ns", "max"),
            n_ranks=("n_ranks", "sum"),
            n_nodes=("node", "nunique"),
            **{c: (c, how) for c, how in extra.items()},
        )
        .reset_index()
    )
    several = job["n_nodes"] > 1
    job["start_ns"] = job["start_ns"].astype("Int64").mask(several)
    job["end_ns"] = job["end_ns"].astype("Int64").mask(several)
    job["node"] = np.where(several, "*", node.groupby(keys, sort=False)["node"].first().to_numpy())
    node["scope"], job["scope"] = "node", "job"
    return pd.concat([node, job.drop(columns="n_nodes")], ignore_index=True).assign(rank=-1, domain="total")


def _assemble(per_rank: pd.DataFrame, totals: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    per_rank = per_rank.assign(scope="rank", n_ranks=1)
    table = pd.concat([per_rank, totals], ignore_index=True)
    for col in ("start_ns", "end_ns", "window_id", "index", "n_inferences"):
        if col in table:  # integers stay integers next to the totals' empty cells (ns do not fit a float)
            table[col] = table[col].astype("Int64")
    first = ["scope", "rank", "node", *keys, "domain", "energy_j", "duration_s", "start_ns", "end_ns", "n_ranks"]
    return table[first + [c for c in table.columns if c not in first]]


# -- the job in a few numbers ---------------------------------------------------------------------
def job_summary(table: pd.DataFrame, samples_per_step: float | None = None, window=None) -> dict:
    """Per rank, per node and whole-job energy from a `gather_windows` table.

    `window` picks window names (a name or a list): nested windows (an epoch inside a "fit")
    would count twice, so name the level to sum when there are several. `samples_per_step` is
    the global batch (samples of all ranks in one step). A step of the job is one step on every
    rank, so the job's step count is the largest count of any rank.
    Energies are given whole and split into GPU and host parts (`gpu_energy_j`,
    `host_energy_j`, and per step and sample of each): a host source that cannot be read
    leaves the GPU figures usable, and `unmeasured_domains` names what is missing;
    `ranks_without_gpu` names ranks that metered no GPU (they add 0 J of GPU energy).
    A window name that the table lacks is an error.
    Returns {"per_rank": DataFrame, "per_node": DataFrame, "total": dict}."""
    rows = table[table["scope"] == "rank"]
    if window is not None:
        names = [window] if isinstance(window, str) else list(window)
        unknown = sorted(set(names) - set(rows["window"]))
        if unknown and len(rows):
            raise ValueError(
                f"no window named {', '.join(map(repr, unknown))}; the table has "
                f"{', '.join(map(repr, sorted(rows['window'].unique())))}"
            )
        rows = rows[rows["window"].isin(names)]
    rows = additive_rows(rows)
    per_rank = rows.groupby(["rank", "node"]).agg(energy_j=("energy_j", _sum_strict))
    is_gpu = gpu_rows(rows)
    for part, sel in (("gpu", is_gpu), ("host", ~is_gpu)):
        # a rank that reads no host source adds 0 J of host energy; NaN stays for unknown readings
        by_rank = rows[sel].groupby(["rank", "node"])["energy_j"].agg(_sum_strict)
        per_rank[f"{part}_energy_j"] = by_rank.reindex(per_rank.index, fill_value=0.0)
    windows = rows.drop_duplicates(["rank", "window", "seq"])
    per_rank = per_rank.join(
        windows.groupby(["rank", "node"]).agg(n_steps=("n_inferences", "sum"), duration_s=("duration_s", "sum"))
    ).reset_index()
    per_node = per_rank.groupby("node").agg(
        energy_j=("energy_j", _sum_strict),
        gpu_energy_j=("gpu_energy_j", _sum_strict),
        host_energy_j=("host_energy_j", _sum_strict),
        n_ranks=("rank", "count"),
    )
    jobs = table[(table["scope"] == "job") & table["window"].isin(windows["window"].unique())]
    n_steps = int(per_rank["n_steps"].max()) if len(per_rank) else 0
    total = {
        "duration_s": float(jobs["duration_s"].sum()),
        "n_steps": n_steps,
        "n_ranks": int(per_rank["rank"].nunique()),
        "n_nodes": int(per_rank["node"].nunique()),
        # a domain with no reading (a stuck counter, say) makes its part and the total NaN,
        # never a silent undercount; the other part's figures stay usable
        "unmeasured_domains": sorted(rows.loc[~np.isfinite(rows["energy_j"].astype(float)), "domain"].unique()),
        # 0 J of GPU energy for these: right for a rank sharing another's GPU, a loss if
        # NVML failed there (that rank's Meter warned)
        "ranks_without_gpu": sorted(int(r) for r in set(per_rank["rank"]) - set(rows.loc[is_gpu, "rank"])),
    }
    for prefix, column in (("", "energy_j"), ("gpu_", "gpu_energy_j"), ("host_", "host_energy_j")):
        energy_j = _sum_strict(per_rank[column])
        per_step = energy_j / n_steps if n_steps else float("nan")
        total[f"{prefix}energy_j"] = energy_j
        total[f"{prefix}joules_per_step"] = per_step
        total[f"{prefix}joules_per_sample"] = per_step / samples_per_step if samples_per_step else float("nan")
    return {"per_rank": per_rank, "per_node": per_node.reset_index(), "total": total}
