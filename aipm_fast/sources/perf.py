"""RAPL through the perf `power` PMU: perf_event_open on the events that sysfs lists.

Used only when neither powercap nor MSR gives a RAPL domain. Event names map to the same
domain names as the other RAPL sources (energy-pkg -> rapl:package-N, energy-ram ->
rapl:package-N/dram, energy-psys -> rapl:psys).
"""

from __future__ import annotations

import os
import re

from aipm_fast._native import NativeError
from aipm_fast.sources import rapl
from aipm_fast.sources.base import COUNTER, Channel, Discovery, Problem, read_small_file

EVENT_DOMAINS = {
    "energy-pkg": "",
    "energy-cores": "core",
    "energy-gpu": "uncore",
    "energy-ram": "dram",
    "energy-psys": "psys",
}

PERF_FIX = (
    "run as root or lower /proc/sys/kernel/perf_event_paranoid to 0 "
    "(`sudo sysctl kernel.perf_event_paranoid=0`); system-wide events need it"
)


def _read(path: str) -> str:
    return read_small_file(path).strip()


def parse_event(text: str) -> int:
    """'event=0x02' (possibly with other terms) -> the config value."""
    m = re.search(r"event=(0x[0-9a-fA-F]+|\d+)", text)
    if not m:
        raise ValueError(f"no event= term in {text!r}")
    return int(m.group(1), 0)


def parse_cpumask(text: str) -> list[int]:
    """A sysfs CPU list ("0", "0,28-29") -> the CPUs in it; ValueError, saying what is wrong,
    for anything else (a reversed range like "5-2", an empty list, a negative number)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        bounds = part.split("-")
        if len(bounds) > 2 or not all(b.strip().isdigit() for b in bounds):
            raise ValueError(f"cpumask {text.strip()!r}: {part!r} is not a CPU number or a range A-B")
        first, last = int(bounds[0]), int(bounds[-1])
        if last < first:
            raise ValueError(f"cpumask {text.strip()!r}: the range {part!r} runs backwards")
        cpus += range(first, last + 1)
    return cpus


def discover(engine, config) -> Discovery:
    found = Discovery()
    pmu = os.path.join(config.perf_root, "power")
    if not os.path.isdir(pmu):
        found.problems.append(
            Problem(
                "perf",
                pmu,
                "no power PMU",
                "the kernel exposes no RAPL perf events here (needs the intel_rapl_perf or amd rapl perf driver)",
            )
        )
        return found
    try:
        pmu_type = int(_read(os.path.join(pmu, "type")))
        cpus = (
            parse_cpumask(_read(os.path.join(pmu, "cpumask"))) if os.path.exists(os.path.join(pmu, "cpumask")) else [0]
        )
    except (OSError, ValueError) as exc:
        found.problems.append(Problem("perf", pmu, f"unreadable PMU description: {exc}"))
        return found
    events_dir = os.path.join(pmu, "events")
    events = sorted(e for e in os.listdir(events_dir) if e in EVENT_DOMAINS) if os.path.isdir(events_dir) else []
    if not events:
        found.problems.append(Problem("perf", events_dir, "no energy-* events"))
        return found
    period = config.period("rapl")
    for event in events:
        base = os.path.join(events_dir, event)
        try:
            event_config = parse_event(_read(base))
            scale = float(_read(base + ".scale")) if os.path.exists(base + ".scale") else 1.0
        except (OSError, ValueError) as exc:
            found.problems.append(Problem("perf", base, f"unreadable event: {exc}"))
            continue
        suffix = EVENT_DOMAINS[event]
        for pkg, cpu in enumerate(cpus):
            device = f"perf power/{event}/ on CPU {cpu}"
            if suffix == "psys":
                if pkg:
                    continue
                meaning = rapl.domain("psys", device=device)
            else:
                meaning = rapl.domain(f"package-{pkg}", suffix, device)
            try:
                cid = engine.add_perf_counter(pmu_type, event_config, cpu, scale, period)
            except (NativeError, OSError) as exc:
                found.problems.append(Problem("perf", f"{event} on cpu {cpu}", str(exc), PERF_FIX))
                continue
            # the kernel extends perf's counter to 64 bits: it does not wrap
            found.channels.append(
                Channel(
                    cid,
                    meaning.name,
                    "energy",
                    COUNTER,
                    "energy",
                    "J",
                    "perf",
                    period,
                    update_s=rapl.UPDATE_S,
                    detail=f"perf {event} (type {pmu_type}, config {event_config:#x}) cpu {cpu}",
                )
            )
            found.add_domain(meaning)
    return found
