"""The end of a sweep under torchrun (sweep.py): what each rank's recording says about the other
ranks' runs, gathered on rank 0 into meta.json and sweep_runs.csv.

Every rank keeps its readings for the sweep (its Recorder's history). After the last cell:

* every rank learns every run's span (all_gather), and answers, for each run of another rank on
  its node, the mean power of its own GPU over that span (same CLOCK_MONOTONIC on one node;
  spans of other nodes are never compared);
* local rank 0 of each node answers the node's host energy over the node's sweep (from its first
  run's start to its last run's end): while cells run at once this is the only host figure.

Rank 0 then reads each complete run's placement.json (shared filesystem) and writes meta.json's
``sweep`` section and OUT/sweep_runs.csv: one row per run with its rank, node, GPU, span and a
``neighbour_gpu<i>_power_w`` column per other GPU of its node (NaN, with the reason in
``neighbours_missing_reason``, for runs of an earlier, interrupted sweep: the readings of their
neighbours went with it).
"""

from __future__ import annotations

import json
import math
import os

import pandas as pd

from aipm_fast import offline
from aipm_fast.bench.folder import run_folder
from aipm_fast.bench.sweep import PLACEMENT_FILE, Cell, Sweep, cell_name
from aipm_fast.storage import write_atomic, write_json

__all__ = ["SWEEP_RUNS_FILE", "every_span", "gather_answers", "read_placements"]

SWEEP_RUNS_FILE = "sweep_runs.csv"
EARLIER_SWEEP = "measured in an earlier sweep that was interrupted: its neighbours' readings are lost"


def _power(e: offline.DomainEnergy, span_s: float) -> dict:
    """A domain's mean power over a span with its 1 sigma and method (None where unknown)."""
    energy_j = e.energy_j if e.energy_j is not None and math.isfinite(e.energy_j) and span_s > 0 else None
    ok = energy_j is not None
    return {
        "mean_power_w": energy_j / span_s if energy_j is not None else None,
        "uncertainty_w": e.uncertainty_j / span_s if ok and e.uncertainty_j is not None else None,
        "method": e.method,
    }


def _energy(e: offline.DomainEnergy) -> dict:
    return {"energy_j": e.energy_j, "uncertainty_j": e.uncertainty_j, "method": e.method}


def local_answers(sweep: Sweep, recorder, gpu_index: dict[str, int], host_domains: list[str], spans: list[dict]):
    """This rank's answers: its GPUs' mean power over each other run of its node, and (local rank
    0) the node's host energy over the node's sweep."""
    curves = offline.ChannelCurves(recorder.channels.values(), recorder.series)
    health = recorder.health()
    ranked = curves.ranked
    neighbours: dict[str, list[dict]] = {}
    node_spans = [s for s in spans if s["node"] == sweep.node]
    for s in node_spans:
        if s["rank"] == sweep.rank:
            continue
        span_s = (s["end_ns"] - s["start_ns"]) / 1e9
        for domain, index in gpu_index.items():
            if domain not in ranked:
                continue
            e = offline.domain_energy(curves, ranked[domain], health, s["start_ns"], s["end_ns"])
            neighbours.setdefault(cell_name((s["size"], s["run"])), []).append(
                {"gpu_index": index, "rank": sweep.rank, "domain": domain, **_power(e, span_s)}
            )
    host = None
    if sweep.local_rank == 0 and node_spans:
        a, b = min(s["start_ns"] for s in node_spans), max(s["end_ns"] for s in node_spans)
        domains = {d: _energy(offline.domain_energy(curves, ranked[d], health, a, b)) for d in host_domains}
        values = [v["energy_j"] for v in domains.values()]
        total = sum(values) if values and all(v is not None and math.isfinite(v) for v in values) else None
        host = {
            "node": sweep.node,
            "start_ns": a,
            "end_ns": b,
            "duration_s": (b - a) / 1e9,
            "energy_j": total,
            "domains": domains,
            "missing_reason": None if total is not None else ("no host source read" if not domains else "unreadable"),
        }
    return {"rank": sweep.rank, "node": sweep.node, "neighbours": neighbours, "host": host}


def every_span(sweep: Sweep) -> list[dict]:
    """The placements of every rank's runs of this sweep, on every rank. A collective, once
    every rank has written its runs."""
    import torch.distributed as dist

    spans: list = [None] * sweep.world_size
    dist.all_gather_object(spans, sweep.spans)
    return [s for part in spans for s in part]


def gather_answers(
    sweep: Sweep, recorder, gpu_index: dict[str, int], host_domains: list[str], spans: list[dict]
) -> list[dict] | None:
    """Every rank's answers (local_answers) on rank 0, None elsewhere. A collective, after each
    rank's recording has ended (its readings then pass every span)."""
    import torch.distributed as dist

    answers = local_answers(sweep, recorder, gpu_index, host_domains, spans)
    parts: list | None = [None] * sweep.world_size if sweep.rank == 0 else None
    dist.gather_object(answers, parts, dst=0)
    return parts


def read_placements(out_dir: str, cells: list[Cell]) -> list[dict]:
    """placement.json of every cell that has one (a run of a sweep)."""
    found = []
    for cell in cells:
        path = os.path.join(run_folder(out_dir, *cell), PLACEMENT_FILE)
        if os.path.exists(path):
            with open(path) as f:
                found.append(json.load(f))
    return found


def sweep_section(sweep: Sweep, out_dir: str, cells: list[Cell], answers: list[dict]) -> dict:
    """meta.json's ``sweep``: the group, the mode, every run's placement and neighbours, and the
    host energy per node."""
    by_run: dict[str, list[dict]] = {}
    for part in answers:
        for name, entries in part["neighbours"].items():
            by_run.setdefault(name, []).extend(entries)
    this_sweep = {cell_name(c) for c in sweep.all_cells}
    runs = []
    for placement in read_placements(out_dir, cells):
        name = cell_name((placement["size"], placement["run"]))
        entry = {**placement, "neighbours": sorted(by_run.get(name, []), key=lambda n: n["gpu_index"])}
        entry["neighbours_missing_reason"] = None
        if name not in this_sweep:  # measured before: as the earlier sweep's meta.json had it, if it got that far
            earlier = sweep.earlier_runs.get(name)
            entry["neighbours"] = earlier.get("neighbours", []) if earlier else []
            entry["neighbours_missing_reason"] = earlier.get("neighbours_missing_reason") if earlier else EARLIER_SWEEP
        runs.append(entry)
    host = [part["host"] for part in answers if part["host"] is not None]
    return {
        "world_size": sweep.world_size,
        "gpus_at_once": sweep.mode,
        "nodes": sorted({part["node"] for part in answers}),
        "host_energy_per_run": sweep.host_per_run,
        "host_energy_note": (
            "each run's host energy is its own (one run at a time; every rank reads the host)"
            if sweep.host_per_run
            else "runs at once share the host, whose energy cannot be split between them: per run the cpu "
            "and total figures are left out; host_energy_per_node covers each node's whole sweep"
        ),
        "host_energy_per_node": host,
        "runs_complete_before": [cell_name(c) for c in sweep.done_before],
        "runs": runs,
    }


def sweep_runs_table(section: dict) -> pd.DataFrame:
    """One row per run: where it ran and the mean power of each other GPU of its node during it."""
    rows = []
    for r in section["runs"]:
        gpu = r.get("gpu") or {}
        row = {
            "size": r["size"],
            "run": r["run"],
            "rank": r["rank"],
            "node": r["node"],
            "gpu_index": gpu.get("index"),
            "gpu_name": gpu.get("name"),
            "gpu_uuid": gpu.get("uuid"),
            "start_ns": r["start_ns"],
            "end_ns": r["end_ns"],
            "gpus_at_once": r["gpus_at_once"],
            "neighbours_missing_reason": r["neighbours_missing_reason"],
        }
        for n in r["neighbours"]:
            value = n["mean_power_w"]
            row[f"neighbour_gpu{n['gpu_index']}_power_w"] = float("nan") if value is None else value
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values(["size", "run"]).reset_index(drop=True) if len(table) else table


def write_sweep_files(out_dir: str, meta: dict, section: dict) -> None:
    """meta.json with its sweep section, and sweep_runs.csv."""
    write_json(os.path.join(out_dir, "meta.json"), {**meta, "sweep": section})
    table = sweep_runs_table(section)
    write_atomic(os.path.join(out_dir, SWEEP_RUNS_FILE), table.to_csv(index=False, float_format="%.6g").encode())
