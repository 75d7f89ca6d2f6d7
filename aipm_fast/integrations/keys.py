"""The names under which the training callbacks log energies: one scheme, made here only.

Every logger must take the keys as they are, without rewriting or refusing them:

* no key is both a leaf and the prefix of another (MLflow's file store keeps a metric as a file
  under folders named by the key's parts: `a/b` and `a/b/c` cannot both exist);
* only letters, digits, `_`, `-` and `/` (Lightning rewrites keys holding `:`, MLflow refuses
  some characters, W&B reads `.` as nesting); a domain such as `rapl:package-0/core` becomes
  `rapl_package-0_core`.

    energy/<scope>/total_j          the domains that add up without overlap
    energy/<scope>/<domain>_j       each domain (the nested ones too)

with scope `step` (one step, logged at its own step), `steps` (the steps resolved since the
previous record, with `energy/steps/count`), `epoch` (with `energy/epoch/j_per_sample`),
`train`, and under torch.distributed on rank 0 `job_epoch` and `job_train`
(`total_j`, `j_per_step`, `j_per_sample`, `rank<r>_j`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from aipm_fast.domains import additive_domains

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def domain_key(domain: str) -> str:
    """A domain's name as a key part: `rapl:package-0/core` -> `rapl_package-0_core`."""
    return _UNSAFE.sub("_", domain).strip("_") or "domain"


def total_j(energies: dict[str, float], domains) -> float:
    """Sum of the domains that add up without overlap (NaN if any of them is unknown);
    `domains` is the Meter's domain -> meaning mapping."""
    parts = additive_domains(domains, energies)
    return float(sum(energies[d] for d in parts)) if parts else math.nan


def finite(keys: Mapping[str, float | None]) -> dict[str, float]:
    """The keys whose value is a finite number (an unknown energy is left out, never logged as 0)."""
    return {k: float(v) for k, v in keys.items() if v is not None and math.isfinite(v)}


def energy_keys(scope: str, energies: dict[str, float], domains) -> dict[str, float]:
    """{energy/<scope>/total_j: total, energy/<scope>/<domain>_j: J}, finite values only."""
    keys = {f"energy/{scope}/total_j": total_j(energies, domains)}
    keys.update({f"energy/{scope}/{domain_key(d)}_j": e for d, e in energies.items()})
    return finite(keys)


def steps_keys(energies: dict[str, float], count: int, domains) -> dict[str, float]:
    """The `steps` scope: the energy of `count` steps resolved since the previous record."""
    return {**energy_keys("steps", energies, domains), "energy/steps/count": float(count)}


def epoch_keys(energies: dict[str, float], per_sample: float | None, domains) -> dict[str, float]:
    return {**energy_keys("epoch", energies, domains), **finite({"energy/epoch/j_per_sample": per_sample})}


def job_keys(kind: str, summary: dict) -> dict[str, float]:
    """Rank 0's keys for a gathered window (kind "epoch" or "train"): energy/job_<kind>/total_j
    (over every rank and node), .../j_per_step, .../j_per_sample, and .../rank<r>_j per rank."""
    total = summary["total"]
    scope = f"energy/job_{kind}"
    keys = {
        f"{scope}/total_j": total["energy_j"],
        f"{scope}/j_per_step": total["joules_per_step"],
        f"{scope}/j_per_sample": total["joules_per_sample"],
    }
    for rank, energy in zip(summary["per_rank"]["rank"], summary["per_rank"]["energy_j"]):
        keys[f"{scope}/rank{int(rank)}_j"] = energy
    return finite(keys)


def clashes(keys) -> list[str]:
    """The keys that no logger takes as they are: a `:`, or a key that is also another's prefix."""
    keys = set(keys)
    bad = {k for k in keys if _UNSAFE.sub("", k.replace("/", "")) != k.replace("/", "")}
    bad |= {k for k in keys if any(o.startswith(k + "/") for o in keys)}
    return sorted(bad)
