"""What a RAPL domain is, whichever interface (powercap, MSR, perf) reads it.

The three RAPL readers name domains alike (rapl:package-0, rapl:package-0/core, rapl:psys) and
take their meaning from here, so that the rule for what adds up is written once:
- a package adds into the host's total, and so does its DRAM (memory energy is outside the
  package's own counter);
- core (PP0) and uncore (PP1) lie inside their package: measured, never added;
- psys covers the whole platform, packages included: it adds only where no package is read;
- a zone of a name not known here is measured and reported but not added (it may repeat one).
"""

from __future__ import annotations

import dataclasses

from aipm_fast.sources.base import HOST, OTHER, PLATFORM, Discovery, Domain

#: RAPL counters update about every millisecond
UPDATE_S = 0.001

INSIDE_PACKAGE = ("core", "uncore")
BESIDE_PACKAGE = ("dram",)
PLATFORM_NAME = "psys"


def domain(zone: str, sub: str = "", device: str = "") -> Domain:
    """The domain of RAPL zone `zone` ("package-0", "psys"), or of its subzone `sub` ("core")."""
    if sub:
        name = f"rapl:{zone}/{sub}"
        if sub in INSIDE_PACKAGE:
            return Domain(name, HOST, additive=False, parent=f"rapl:{zone}", device=device)
        if sub in BESIDE_PACKAGE:
            return Domain(name, HOST, additive=True, device=device)
        return Domain(name, OTHER, additive=False, parent=f"rapl:{zone}", device=device)
    name = f"rapl:{zone}"
    if zone == PLATFORM_NAME:
        return Domain(name, PLATFORM, additive=True, device=device)
    if zone.startswith("package-"):
        return Domain(name, HOST, additive=True, device=device)
    return Domain(name, OTHER, additive=False, device=device)


def settle_platform(found: Discovery) -> None:
    """psys holds the packages: once one RAPL reader has found its domains (`found` holds that
    reader's result only), psys stops adding where any package is read."""
    if any(d.part == HOST and d.additive for d in found.domains.values()):
        for d in [d for d in found.domains.values() if d.part == PLATFORM]:
            found.domains[d.name] = dataclasses.replace(d, additive=False)
