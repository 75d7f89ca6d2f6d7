"""RAPL through Linux powercap: <root>/intel-rapl:N[:M]/energy_uj.

Zones are found by walking the root (the class folder lists every zone, subzones included, as
flat links; the device tree nests them), deduplicated by real path, and named from their
`name` file, subzones under their parent: rapl:package-0, rapl:package-0/core.
"""

from __future__ import annotations

import errno
import os
import re

from aipm_fast._native import NativeError
from aipm_fast.sources import rapl
from aipm_fast.sources.base import COUNTER, Channel, Discovery, Problem, read_small_file

ZONE_RE = re.compile(r"^intel-rapl:(\d+)(?::(\d+))?$")

PERMISSION_FIX = (
    "since Linux 5.10 energy_uj is readable only by root (CVE-2020-8694: its fine-grained energy "
    "readings let any local user infer secrets computed on the CPU, so do not make it world-readable "
    "with chmod o+r). Run as root, or give read access to a dedicated group of trusted users: "
    "`sudo groupadd -r powercap && sudo usermod -aG powercap $USER`, then a udev rule in "
    "/etc/udev/rules.d/99-powercap.rules: "
    'SUBSYSTEM=="powercap", ACTION=="add", RUN+="/bin/chgrp -R powercap /sys%p", '
    'RUN+="/bin/chmod -R g+r /sys%p" '
    "(apply it with `sudo udevadm trigger --subsystem-match=powercap --action=add`, and log in again)"
)


def _read(path: str) -> str:
    return read_small_file(path).strip()


def find_zones(root: str) -> list[tuple[str, str, str]]:
    """(zone id like '0' or '0:1', real path, parent id or '') for every RAPL zone under root."""
    seen: dict[str, tuple[str, str, str]] = {}
    for dirpath, dirnames, _ in os.walk(root, followlinks=True):
        depth = dirpath[len(root) :].count(os.sep)
        if depth > 2:
            dirnames[:] = []
            continue
        for d in dirnames:
            m = ZONE_RE.match(d)
            if not m:
                continue
            real = os.path.realpath(os.path.join(dirpath, d))
            zone_id = m.group(1) if m.group(2) is None else f"{m.group(1)}:{m.group(2)}"
            seen.setdefault(real, (zone_id, real, m.group(1) if m.group(2) is not None else ""))
    return sorted(seen.values(), key=lambda z: [int(x) for x in z[0].split(":")])


def discover(engine, config) -> Discovery:
    found = Discovery()
    root = config.powercap_root
    if not os.path.isdir(root):
        found.problems.append(
            Problem(
                "powercap",
                root,
                "no such folder",
                "load the intel_rapl_common/intel_rapl_msr modules, or point "
                "AIPM_POWERCAP_ROOT (--powercap-root) at a mounted sysfs",
            )
        )
        return found
    zones = find_zones(root)
    if not zones:
        found.problems.append(
            Problem(
                "powercap",
                root,
                "no intel-rapl zones",
                "this machine exposes no RAPL through powercap (virtual machines "
                "rarely do); MSR or perf may still work",
            )
        )
        return found
    names = {}
    for zone_id, path, _ in zones:
        try:
            names[zone_id] = _read(os.path.join(path, "name"))
        except OSError:
            names[zone_id] = f"zone-{zone_id}"
    for zone_id, path, parent in zones:
        device = f"RAPL zone {names[zone_id]} ({os.path.basename(path)})"
        meaning = (
            rapl.domain(names[parent], names[zone_id], device) if parent else rapl.domain(names[zone_id], device=device)
        )
        domain = meaning.name
        energy_file = os.path.join(path, "energy_uj")
        try:
            wrap_uj = _positive_number(_read(os.path.join(path, "max_energy_range_uj")))
        except (OSError, ValueError) as exc:
            found.problems.append(
                Problem(
                    "powercap",
                    os.path.join(path, "max_energy_range_uj"),
                    f"unreadable ({exc}); wraparound cannot be handled",
                    "check the powercap driver",
                )
            )
            continue
        try:
            cid = engine.add_text_counter(energy_file, 1e-6, config.period("rapl"))
        except (NativeError, OSError) as exc:  # the message names the call and the file
            fix = PERMISSION_FIX if _is_permission(exc, energy_file) else ""
            found.problems.append(Problem("powercap", energy_file, str(exc), fix))
            continue
        found.channels.append(
            Channel(
                cid,
                domain,
                "energy",
                COUNTER,
                "energy",
                "J",
                "powercap",
                config.period("rapl"),
                update_s=rapl.UPDATE_S,
                wrap=wrap_uj * 1e-6,
                max_power_w=zone_max_power_w(path),
                detail=energy_file,
            )
        )
        found.add_domain(meaning)
    return found


def _positive_number(text: str) -> float:
    """A finite, positive number (ValueError naming the text otherwise)."""
    value = float(text)
    if not (value > 0 and value != float("inf")):
        raise ValueError(f"{text!r} is not a positive finite number")
    return value


def zone_max_power_w(path: str) -> float | None:
    """The zone's own bound on power: twice its largest constraint_*_max_power_uw (a limit is
    exceeded for moments; twice is still far below what a misread counter implies), or None."""
    bounds = []
    for name in os.listdir(path):
        if name.startswith("constraint_") and name.endswith("_max_power_uw"):
            try:
                bounds.append(_positive_number(_read(os.path.join(path, name))) * 1e-6)
            except (OSError, ValueError):
                continue
    return 2.0 * max(bounds) if bounds else None


def _is_permission(exc: Exception, path: str) -> bool:
    if "Permission denied" in str(exc):
        return True
    try:
        os.stat(path)
        return not os.access(path, os.R_OK)
    except OSError as e:
        return e.errno == errno.EACCES
