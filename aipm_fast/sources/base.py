"""What every source declares: channels that work (and what each one measures), the domains they
belong to (and how those add up), and problems that explain what does not work.

This is the metadata contract between the sources and everything downstream. A source states
meaning here, once; the energy policy, the totals, the bench columns and every output read these
fields and never parse a channel's or a domain's name. A new source (an AMD GPU, a board's hwmon
rail, a wall meter) is one module that fills these in.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import asdict, dataclass, field

# -- what a channel's value means (Channel.reading) --------------------------------------------
#: cumulative energy (J) that the device integrates itself; it wraps at Channel.wrap (None: never)
COUNTER = "counter"
#: power (W) that the device averaged over Channel.averaging_s before the reading's stamp
MEAN_POWER = "mean_power"
#: power (W) at the reading's stamp, as near to instantaneous as the device gives it
INSTANT_POWER = "instant_power"
#: a side quantity (utilisation %, memory bytes, ...): carries no energy
LEVEL = "level"

ENERGY_READINGS = (COUNTER, MEAN_POWER, INSTANT_POWER)
POWER_READINGS = (MEAN_POWER, INSTANT_POWER)

# -- what a domain is part of (Domain.part) ------------------------------------------------------
GPU = "gpu"  # an accelerator board
HOST = "host"  # the host's CPU packages and their memory (RAPL package, DRAM, core)
PLATFORM = "platform"  # a whole board or platform (RAPL psys): holds the host parts
WALL = "wall"  # a wall meter: holds everything behind the plug
OTHER = "other"  # anything else a source measures (a board rail, an unknown chip)
PARTS = (GPU, HOST, PLATFORM, WALL, OTHER)


@dataclass(frozen=True)
class Channel:
    """One physical quantity from one device, attached to the engine (or a Python producer)
    under `id`.

    reading: what the value means (COUNTER, MEAN_POWER, INSTANT_POWER or LEVEL).
    update_s: how often the device refreshes the value, where known (None: each read is new).
        Together with averaging_s it sets the channel's time resolution, which is how the
        energy policy ranks a domain's channels.
    averaging_s: for MEAN_POWER, the span the device averages over (None: unknown, taken as
        update_s).
    wrap: for COUNTER, the counter's range in J where it wraps (None: it does not wrap).
    max_power_w: the most power the device can draw, where it says (powercap's constraints, a
        GPU's limit): the plausibility bound that tells a counter's wrap from a reset or a glitch
        (None: the policy's default bound).
    """

    id: int
    domain: str  # e.g. "rapl:package-0", "rapl:package-0/dram", "nvml:0"
    label: str  # the channel within its domain: "energy", "power_samples", ...
    reading: str
    quantity: str  # "energy" (J), "power" (W), "utilization" (%), "memory" (bytes)
    unit: str
    source: str  # the module that found it: "powercap", "msr", "perf", "nvml", ...
    period_s: float  # how often the sampler reads it
    update_s: float | None = None
    averaging_s: float | None = None
    wrap: float | None = None
    max_power_w: float | None = None
    detail: str = ""  # the file, register or function it reads

    def __post_init__(self):
        if self.reading not in (*ENERGY_READINGS, LEVEL):
            raise ValueError(f"channel {self.name}: unknown reading {self.reading!r}")
        if self.reading == COUNTER and self.wrap is not None and not (self.wrap > 0):
            raise ValueError(f"channel {self.name}: a counter's wrap must be positive, got {self.wrap!r}")

    @property
    def name(self) -> str:
        """The channel's full name, e.g. "nvml:0.power_samples"; a label, never parsed."""
        return f"{self.domain}.{self.label}"

    @property
    def carries_energy(self) -> bool:
        return self.reading in ENERGY_READINGS

    @property
    def resolution_s(self) -> float:
        """The shortest span over which this channel tells energy apart: its update interval,
        or its averaging span if longer (as read, where the device does not say)."""
        return max(self.update_s or self.period_s, self.averaging_s or 0.0)

    def to_dict(self) -> dict:
        return {**asdict(self), "name": self.name}

    @classmethod
    def from_dict(cls, data: dict) -> Channel:
        fields = {k: v for k, v in data.items() if k != "name"}
        return cls(**fields)


@dataclass(frozen=True)
class Domain:
    """A device or part of one whose energy is measured (a GPU, a CPU package, its DRAM).

    part: what it is part of (GPU, HOST, PLATFORM, WALL, OTHER): totals per part come from this.
    additive: whether its energy adds into totals without counting any joule twice (a package's
        core lies inside the package, so it does not add; a platform counter that holds the
        packages adds only where no package is read).
    parent: the domain that contains it, if any.
    """

    name: str
    part: str
    additive: bool
    parent: str | None = None
    device: str = ""  # human name: "NVIDIA H200", "RAPL zone package-0 (intel-rapl:0)"

    def __post_init__(self):
        if self.part not in PARTS:
            raise ValueError(f"domain {self.name}: unknown part {self.part!r} (one of {', '.join(PARTS)})")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Problem:
    """Why a source, device or channel is not measured, and what would fix it."""

    source: str
    target: str  # the file, library or device concerned
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
    domains: dict[str, Domain] = field(default_factory=dict)
    producers: list = field(default_factory=list)  # Python-side sources (aipm_fast.producers)

    @property
    def devices(self) -> dict[str, str]:
        """domain -> human name of its device."""
        return {name: d.device for name, d in self.domains.items()}

    def add_domain(self, domain: Domain) -> None:
        self.domains.setdefault(domain.name, domain)

    def extend(self, other: Discovery) -> None:
        self.channels += other.channels
        self.problems += other.problems
        self.notes += other.notes
        self.producers += other.producers
        for d in other.domains.values():
            self.add_domain(d)


def read_small_file(path: str, limit: int = 4096) -> str:
    """The text of a small sysfs file. Opened without blocking and refused unless it is a
    regular file: a FIFO or a socket planted at a sysfs path would hang discovery (OSError
    naming the file and what it is)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
            raise OSError(errno.EINVAL, f"{kind}, not a file that can be read", path)
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)
