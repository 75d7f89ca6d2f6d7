"""What the training-loop callbacks share; imports no framework, so each callback module can."""
from __future__ import annotations

import math

from aipm_fast.integrations.distributed import additive_domains


def total_j(energies: dict[str, float]) -> float:
    """Sum of the domains that add up without overlap (NaN if any of them is unknown)."""
    parts = additive_domains(energies)
    return float(sum(energies[d] for d in parts)) if parts else math.nan


def window_energy(meter, window) -> tuple[dict[str, float], float]:
    """({domain: J}, duration in s) of a closed window, as Meter.windows() gives it. Waits for
    this window's end only, not for marks that other threads may keep adding."""
    tracks = meter.coordinator.tracks
    meter.flush(window)
    if len(window.end_j) < len(tracks):
        meter.flush(window)   # caught while the coordinator filled it in: done once it lets go
    energies = {d: (window.end_j.get(d, math.nan) - window.start_j.get(d, math.nan)) * meter.coordinator.scale(d)[0]
                for d in tracks}
    return energies, (window.end_ns - window.start_ns) / 1e9


def energy_keys(prefix: str, energies: dict[str, float]) -> dict[str, float]:
    """{prefix: total, prefix/<domain>: J}, leaving out what is not a finite number."""
    keys = {prefix: total_j(energies), **{f"{prefix}/{d}": e for d, e in energies.items()}}
    return {k: float(v) for k, v in keys.items() if math.isfinite(v)}
