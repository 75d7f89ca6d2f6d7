"""What every source discovers: channels that work, and problems that explain what does not."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Channel:
    """One physical quantity from one device, attached to the engine under `id`."""

    id: int
    name: str            # e.g. "rapl:package-0.energy", "nvml:0.power_samples"
    domain: str          # e.g. "rapl:package-0", "rapl:package-0/dram", "nvml:0"
    quantity: str        # "energy" (a counter, J), "power" (W), "utilization" (%), "memory" (bytes)
    unit: str
    source: str          # "powercap", "msr", "perf", "nvml"
    period_s: float
    wrap: float | None = None   # counter range in the channel's unit, where it wraps
    detail: str = ""            # the file, register or function it reads


@dataclass
class Problem:
    """Why a source, device or channel is not measured, and what would fix it."""

    source: str
    target: str          # the file, library or device concerned
    error: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.source}: {self.target}: {self.error}"
        return f"{text}. Fix: {self.fix}" if self.fix else text


@dataclass
class Discovery:
    channels: list[Channel] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    devices: dict[str, str] = field(default_factory=dict)   # domain -> human name

    def extend(self, other: "Discovery") -> None:
        self.channels += other.channels
        self.problems += other.problems
        self.notes += other.notes
        self.devices.update(other.devices)
