"""Linux hwmon: power and energy files that AMD GPUs (amdgpu), Intel GPUs (i915, xe) and many
boards expose under <root>/hwmonN/: powerK_average and powerK_input (µW), energyK_input (µJ).

Each chip's sensor K is one domain: hwmon:<chip name> where the chip has one power sensor, else
hwmon:<chip name>/<label or K>; an index follows the name where several chips share it
(hwmon:amdgpu-0, hwmon:amdgpu-1). Some chips repeat what another source already counts (AMD's
CPU energy drivers repeat RAPL), so only chips known here to measure a separate device add into
totals: every other chip is measured and reported but not added, so that no joule counts twice.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from aipm_fast._native import NativeError
from aipm_fast.sources.base import (
    COUNTER,
    GPU,
    HOST,
    INSTANT_POWER,
    MEAN_POWER,
    OTHER,
    Channel,
    Discovery,
    Domain,
    Problem,
    read_small_file,
)

SENSOR_RE = re.compile(r"^(power|energy)(\d+)_(average|input)$")

HWMON_FIX = (
    "point AIPM_HWMON_ROOT (--hwmon-root) at the hwmon class folder (/sys/class/hwmon), "
    "e.g. inside a container that mounts sysfs elsewhere"
)


@dataclass(frozen=True)
class ChipMeaning:
    part: str
    additive: bool
    why: str


#: What a chip's power means, by its `name` file. Chips not listed are measured, not added.
KNOWN_CHIPS = {
    "amdgpu": ChipMeaning(GPU, True, "AMD GPU package power (PPT): a device of its own"),
    "i915": ChipMeaning(GPU, True, "Intel discrete GPU: hwmon energy exists only for discrete cards"),
    "xe": ChipMeaning(GPU, True, "Intel discrete GPU (xe driver)"),
    "amd_energy": ChipMeaning(HOST, False, "AMD CPU energy: the same counters RAPL reads"),
    "zenergy": ChipMeaning(HOST, False, "AMD CPU energy: the same counters RAPL reads"),
    "zenpower": ChipMeaning(HOST, False, "AMD CPU power: what RAPL already counts"),
}

#: What each file kind measures, and its unit scale to W or J.
FILE_READINGS = {
    ("power", "average"): (MEAN_POWER, "power", "W", 1e-6),
    ("power", "input"): (INSTANT_POWER, "power", "W", 1e-6),
    ("energy", "input"): (COUNTER, "energy", "J", 1e-6),
}


def _read(path: str) -> str:
    """A small sysfs file's text, never blocking on a FIFO planted there (OSError then)."""
    return read_small_file(path).strip()


def find_sensors(root: str) -> list[tuple[str, str, dict[int, list[str]]]]:
    """(chip folder, chip name, {sensor index: [file names]}) for every chip with power or energy files."""
    chips = []
    for entry in sorted(os.listdir(root), key=lambda e: (len(e), e)):
        folder = os.path.join(root, entry)
        if not os.path.isdir(folder):
            continue
        sensors: dict[int, list[str]] = {}
        for name in sorted(os.listdir(folder)):
            m = SENSOR_RE.match(name)
            if m:
                sensors.setdefault(int(m.group(2)), []).append(name)
        if not sensors:
            continue
        try:
            chip = _read(os.path.join(folder, "name"))
        except OSError:
            chip = entry
        chips.append((folder, chip or entry, sensors))
    return chips


def _averaging_s(folder: str, kind: str, index: int) -> float | None:
    """powerK_average_interval (ms), where the driver says over what it averages."""
    try:
        return float(_read(os.path.join(folder, f"{kind}{index}_average_interval"))) / 1e3
    except (OSError, ValueError):
        return None


def discover(engine, config) -> Discovery:
    found = Discovery()
    root = config.hwmon_root
    if not os.path.isdir(root):
        found.problems.append(Problem("hwmon", root, "no such folder", HWMON_FIX))
        return found
    chips = find_sensors(root)
    repeats = {name for _, name, _ in chips if sum(1 for _, n, _ in chips if n == name) > 1}
    seen: dict[str, int] = {}
    period = config.period("hwmon")
    for folder, chip, sensors in chips:
        base = f"hwmon:{chip}"
        if chip in repeats:
            base = f"{base}-{seen.get(chip, 0)}"
            seen[chip] = seen.get(chip, 0) + 1
        meaning = KNOWN_CHIPS.get(chip, ChipMeaning(OTHER, False, "a chip not known to measure a separate device"))
        for index, files in sorted(sensors.items()):
            label = _label(folder, files, index)
            domain = base if len(sensors) == 1 else f"{base}/{label}"
            added = False
            for name in files:
                kind, _, how = _parts(name)
                reading, quantity, unit, scale = FILE_READINGS[(kind, how)]
                path = os.path.join(folder, name)
                try:
                    cid = engine.add_text_counter(path, scale, period)
                except (NativeError, OSError) as exc:  # the message names the call and the file
                    found.problems.append(
                        Problem("hwmon", path, str(exc), "run as root or grant read access to the file")
                    )
                    continue
                found.channels.append(
                    Channel(
                        cid,
                        domain,
                        f"{kind}_{how}",
                        reading,
                        quantity,
                        unit,
                        "hwmon",
                        period,
                        averaging_s=_averaging_s(folder, kind, index) if reading == MEAN_POWER else None,
                        detail=path,
                    )
                )
                added = True
            if added:
                # a chip's first sensor is the device; further ones are rails that may lie inside it
                first = index == min(sensors)
                found.add_domain(
                    Domain(
                        domain,
                        meaning.part,
                        meaning.additive and first,
                        parent=None if first else (base if len(sensors) == 1 else None),
                        device=f"hwmon {chip} ({os.path.basename(folder)}): {meaning.why}",
                    )
                )
    return found


def _parts(name: str) -> tuple[str, str, str]:
    """("power", "1", "average") of a file find_sensors listed (so it matches)."""
    m = SENSOR_RE.match(name)
    assert m is not None, name
    return m.group(1), m.group(2), m.group(3)


def _label(folder: str, files: list[str], index: int) -> str:
    """A sensor's label file (e.g. 'PPT'), else its index."""
    kind = _parts(files[0])[0]
    try:
        text = _read(os.path.join(folder, f"{kind}{index}_label"))
    except OSError:
        return str(index)
    return re.sub(r"[^\w-]+", "_", text) or str(index)
