"""Hardware discovery: which channels can be read here, and why the others cannot.

Policy lives here, not in C: the order in which RAPL interfaces are tried (powercap, then
MSR, then perf, stopping at the first that gives any domain so nothing is counted twice),
which GPUs to read, and what to tell the user about what is missing.

The C engine holds AIPM_MAX_CHANNELS channels. So that a source with a flood of channels (a
machine listing thousands of powercap zones) cannot leave a GPU unmeasured, each source may
take only the slots free when its turn comes less RESERVED_SLOTS for every source after it;
the channels refused for want of a slot are reported as one Problem that names them.
"""

from __future__ import annotations

from aipm_fast._native import MAX_CHANNELS, NO_SLOT
from aipm_fast.sources import hwmon, msr, nvml, perf, powercap, rapl, wallmeter
from aipm_fast.sources.base import Channel, Discovery, Domain, Problem

RAPL_SOURCES = [("powercap", powercap), ("msr", msr), ("perf", perf)]
#: every other source: each one module with discover(engine, config) -> Discovery
OTHER_SOURCES = [nvml, hwmon, wallmeter]

__all__ = ["Channel", "Discovery", "Domain", "Problem", "discover_all"]

#: slots kept for each source still to be discovered (8 GPUs with every NVML reading)
RESERVED_SLOTS = 48
DROPPED_NAMED = 5  # channels named in the Problem that reports those dropped


def _with_slots(module, engine, config, sources_after: int) -> Discovery:
    """module.discover(), with at most the free slots less those kept for the sources after it; the
    channels it could not attach for want of a slot gathered into one Problem."""
    limit = getattr(engine, "limit_channels", None)
    if limit is not None:
        used = engine.n_channels
        limit(used + max(0, MAX_CHANNELS - used - RESERVED_SLOTS * sources_after))
    try:
        result = module.discover(engine, config)
    finally:
        if limit is not None:
            limit(None)
    dropped = [p for p in result.problems if p.error.startswith(NO_SLOT)]
    if dropped:
        result.problems = [p for p in result.problems if not p.error.startswith(NO_SLOT)]
        names = ", ".join(p.target for p in dropped[:DROPPED_NAMED])
        more = f" and {len(dropped) - DROPPED_NAMED} more" if len(dropped) > DROPPED_NAMED else ""
        result.problems.append(
            Problem(
                dropped[0].source,
                f"{len(dropped)} channel(s): {names}{more}",
                f"not measured: {dropped[0].error}",
                "read fewer channels (--gpus, the source's root option), or measure them in another process",
            )
        )
    return result


def discover_all(engine, config) -> Discovery:
    """Attach every channel that works to `engine`; explain the rest."""
    found = Discovery()
    if config.cpu:
        for name, module in RAPL_SOURCES:
            result = _with_slots(module, engine, config, len(OTHER_SOURCES))
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
    for i, module in enumerate(OTHER_SOURCES):
        found.extend(_with_slots(module, engine, config, len(OTHER_SOURCES) - 1 - i))
    return found
