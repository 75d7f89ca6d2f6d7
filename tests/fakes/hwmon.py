"""A fake /sys/class/hwmon tree: chips with power files (µW) that hold a level and energy files
(µJ) that advance, kept up to date by a writer process as the powercap fake's are.

    root/hwmon0/name                 "amdgpu"
    root/hwmon0/power1_average       µW, a level (it flickers by 2 µW every millisecond, as a
                                     live sensor's value changes; its mean is the power)
    root/hwmon0/power1_average_interval   ms (optional)
    root/hwmon0/energy1_input        µJ, a 64-bit counter
    root/hwmon0/power1_label         (optional)

Chips are given as {folder: (chip name, {sensor index: {file kind: watts, "label": text}})},
file kinds "power_average", "power_input", "energy_input". The key of a file for the truth is
"<folder>/<file name>".
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from fakes.powercap import CounterSpec, CounterWriter

WIDTH = 16
RIPPLE_UW = 2


def build_hwmon_tree(root, chips: Mapping[str, tuple]) -> dict[str, tuple]:
    """Writes the tree; returns {key: (path, kind, watts)} for the writer."""
    root = Path(root)
    files = {}
    for folder, (name, sensors) in chips.items():
        d = root / folder
        d.mkdir(parents=True)
        (d / "name").write_text(name + "\n")
        (d / "temp1_input").write_text("45000\n")  # a sensor that is no power
        for index, spec in sensors.items():
            for kind, value in spec.items():
                if kind == "label":
                    (d / f"power{index}_label").write_text(value + "\n")
                    continue
                if kind == "average_interval_ms":
                    (d / f"power{index}_average_interval").write_text(f"{value}\n")
                    continue
                quantity, how = kind.split("_")
                path = d / f"{quantity}{index}_{how}"
                path.write_text("0" * WIDTH + "\n")
                files[f"{folder}/{path.name}"] = (str(path), quantity, float(value))
    return files


class HwmonWriter(CounterWriter):
    def __init__(self, files: Mapping[str, tuple], period_s: float = 0.001):
        super().__init__({k: w for k, (_, _, w) in files.items()}, period_s=period_s)
        self.files = dict(files)

    def _specs(self) -> list[CounterSpec]:
        specs = []
        for key, (path, quantity, watts) in self.files.items():
            if quantity == "energy":
                specs.append(
                    CounterSpec(
                        key=key,
                        path=path,
                        offset=0,
                        power_w=watts,
                        units_per_j=1e6,
                        modulus=10**WIDTH,
                        initial=123_456_789,
                        fmt="text",
                        width=WIDTH,
                    )
                )
            else:
                specs.append(
                    CounterSpec(
                        key=key,
                        path=path,
                        offset=0,
                        power_w=0.0,
                        units_per_j=1e6,
                        modulus=10**WIDTH,
                        initial=int(watts * 1e6) - RIPPLE_UW // 2,
                        fmt="text",
                        width=WIDTH,
                        ripple=RIPPLE_UW,
                    )
                )
        return specs
