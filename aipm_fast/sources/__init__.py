"""Hardware discovery: which channels can be read here, and why the others cannot.

Policy lives here, not in C: the order in which RAPL interfaces are tried (powercap, then
MSR, then perf, stopping at the first that gives any domain so nothing is counted twice),
which GPUs to read, and what to tell the user about what is missing.
"""

from __future__ import annotations

from aipm_fast.sources import hwmon, msr, nvml, perf, powercap, rapl, wallmeter
from aipm_fast.sources.base import Channel, Discovery, Domain, Problem

RAPL_SOURCES = [("powercap", powercap), ("msr", msr), ("perf", perf)]
#: every other source: each one module with discover(engine, config) -> Discovery
OTHER_SOURCES = [nvml, hwmon, wallmeter]

__all__ = ["Channel", "Discovery", "Domain", "Problem", "discover_all"]


def discover_all(engine, config) -> Discovery:
    """Attach every channel that works to `engine`; explain the rest."""
    found = Discovery()
    if config.cpu:
        for name, module in RAPL_SOURCES:
            result = module.discover(engine, config)
            rapl.settle_platform(result)
            found.extend(result)
            if result.channels:
                rest = [n for n, _ in RAPL_SOURCES if n != name]
                found.notes.append(
                    f"RAPL read through {name}; {' and '.join(rest)} not used so that no domain is counted twice"
                )
                break
    else:
        found.notes.append("RAPL not read by this process (another rank on this node reads it)")
    for module in OTHER_SOURCES:
        found.extend(module.discover(engine, config))
    return found
