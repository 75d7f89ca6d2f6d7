"""A fake /dev/cpu/<cpu>/msr tree with RAPL energy counters that advance while a test runs.

The msr driver exposes each CPU's model-specific registers as one file in which the register
number is the offset: pread(fd, buf, 8, 0x611) reads MSR_PKG_ENERGY_STATUS. The fake is a sparse
regular file per CPU with the same addressing, so the reader under test needs no change (only
its root: `<root>/<cpu>/msr`). Nothing is written beyond the highest register + 8 bytes: the
AMD registers sit near 3 GiB, which costs nothing in a sparse file but would in a dense one.

Registers (Intel SDM vol. 4; AMD PPR for family 17h and later):

* the power unit register (Intel 0x606, AMD 0xC0010299) gives the energy status unit ESU in bits
  12:8, so one count is 2**-ESU J (Intel client and server parts typically 14: 61 µJ; AMD 16:
  15.3 µJ). Bits 3:0 (power unit) and 19:16 (time unit) hold typical values but nothing reads
  them here.
* an energy status register holds a 32-bit counter in bits 31:0; bits 63:32 are reserved.
  `reserved_high` puts a constant there, to check that the reader masks them.

CPU 0 is package 0 and, with packages=2, CPU 1 is package 1. On Intel each CPU's file holds
its package's counters (package, PP0 = cores, DRAM).

AMD's three registers are consecutive MSR numbers, and the driver's file maps one register to
each offset while a regular file maps one byte: the 8 bytes read at 0xC001029A (core energy)
would be bytes 1-8 of the unit register, ESU byte included, and overlap the package counter
at 0xC001029B too. No byte layout satisfies all three, so the AMD fake holds the unit register
and the package counter only (AMD_CORE_ENERGY_STATUS is defined but not faked). The package
counter's 8 bytes cover bits 63:16 of the unit register, so reading that register gives the
right ESU (bits 12:8) and power unit but a meaningless time unit; nothing here uses the time
unit. build_msr_tree refuses any layout in which a counter's low 32 bits or the ESU byte would
share a byte with another.

A 32-bit counter of 61 µJ units wraps after 262 kJ, i.e. after tens of minutes; to exercise
wraparound in a short test, `MsrWriter(wrap_after_s=...)` starts each counter that long before
its wrap. (Real server parts count DRAM in a fixed 15.3 µJ unit whatever the ESU says; the
fake uses the ESU for every counter.)

The writer is the powercap one (see powercap.py): a separate process that pwrites each
register in place every millisecond, the value being a function of time so the truth is
`writer.energy_j(key, t0_ns, t1_ns)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from .powercap import DEFAULT_PERIOD_S, CounterSpec, CounterWriter

INTEL_RAPL_POWER_UNIT = 0x606
INTEL_PKG_ENERGY_STATUS = 0x611
INTEL_PP0_ENERGY_STATUS = 0x639
INTEL_DRAM_ENERGY_STATUS = 0x619

AMD_RAPL_POWER_UNIT = 0xC0010299
AMD_CORE_ENERGY_STATUS = 0xC001029A
AMD_PKG_ENERGY_STATUS = 0xC001029B

VENDORS = {
    #        unit register,       counters in each CPU's file,               default ESU
    "intel": (
        INTEL_RAPL_POWER_UNIT,
        {"package": INTEL_PKG_ENERGY_STATUS, "pp0": INTEL_PP0_ENERGY_STATUS, "dram": INTEL_DRAM_ENERGY_STATUS},
        14,
    ),
    "amd": (AMD_RAPL_POWER_UNIT, {"package": AMD_PKG_ENERGY_STATUS}, 16),  # core: see above
}

# W, by counter name; package 1 draws 5 W less than package 0 so that the two differ.
DEFAULT_POWERS_W = {"package": 40.0, "pp0": 25.0, "dram": 6.0}

COUNTER_MODULUS = 1 << 32


def power_unit_value(esu: int, power_unit: int = 3, time_unit: int = 10) -> int:
    """The unit register's value: PU in bits 3:0, ESU in 12:8, TU in 19:16."""
    if not 0 <= esu <= 31:
        raise ValueError("ESU is a 5-bit field")
    return (time_unit << 16) | (esu << 8) | power_unit


def esu_of(unit_register: int) -> int:
    return (unit_register >> 8) & 0x1F


@dataclass
class MsrTree:
    root: Path
    vendor: str
    cpus: list[int]
    esu: int
    unit_register: int  # the power unit register of the vendor
    units_value: int  # what it holds
    # counter key ("cpu<N>/<name>") -> (file, register)
    counters: dict[str, tuple[Path, int]]
    reserved_high: int = 0

    @property
    def unit_j(self) -> float:
        """Joules per count."""
        return 2.0**-self.esu

    def path(self, cpu: int) -> Path:
        return self.root / str(cpu) / "msr"

    def read_register(self, cpu: int, reg: int) -> int:
        fd = os.open(self.path(cpu), os.O_RDONLY)
        try:
            data = os.pread(fd, 8, reg)
        finally:
            os.close(fd)
        if len(data) != 8:
            raise OSError(f"short read of MSR 0x{reg:x} on CPU {cpu}")
        return int.from_bytes(data, "little")

    def read_counter(self, key: str) -> int:
        """The counter's low 32 bits (what the hardware counts)."""
        path, reg = self.counters[key]
        return self.read_register(int(path.parent.name), reg) & 0xFFFFFFFF


def _check_layout(unit_reg: int, registers: Mapping[str, int]) -> None:
    """The bytes that carry meaning (the ESU byte; each counter's bits 31:0) must not overlap,
    or writing one register would change another's value (see the module docstring)."""
    spans = sorted(
        [(unit_reg + 1, unit_reg + 2, "the ESU byte")]
        + [(reg, reg + 4, f"{name} (0x{reg:x})") for name, reg in registers.items()]
    )
    for (_a0, a1, a), (b0, _b1, b) in zip(spans, spans[1:]):
        if b0 < a1:
            raise ValueError(f"{a} and {b} share bytes in a file addressed by MSR number")


def _write_u64(path: Path, reg: int, value: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, value.to_bytes(8, "little"), reg)
    finally:
        os.close(fd)


def build_msr_tree(
    root,
    vendor: str = "intel",
    packages: int = 1,
    esu: int | None = None,
    reserved_high: int = 0,
    initial: Mapping[str, int] | None = None,
) -> MsrTree:
    """Create `<root>/0/msr` (and `<root>/1/msr` for two packages). Counters start at arbitrary
    distinct values; `initial` overrides them per key ("cpu0/package", ...)."""
    if vendor not in VENDORS:
        raise ValueError(f"vendor must be one of {sorted(VENDORS)}")
    if packages not in (1, 2):
        raise ValueError("packages must be 1 or 2")
    if not 0 <= reserved_high < COUNTER_MODULUS:
        raise ValueError("reserved_high is bits 63:32")
    unit_reg, registers, default_esu = VENDORS[vendor]
    _check_layout(unit_reg, registers)
    esu = default_esu if esu is None else esu
    units = power_unit_value(esu)
    root = Path(root)
    cpus = list(range(packages))
    counters: dict[str, tuple[Path, int]] = {}
    for cpu in cpus:
        path = root / str(cpu) / "msr"
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_u64(path, unit_reg, units)
        for j, (name, reg) in enumerate(sorted(registers.items(), key=lambda kv: kv[1])):
            key = f"cpu{cpu}/{name}"
            start = (initial or {}).get(key, (0x1234567 * (1 + j + 3 * cpu)) % COUNTER_MODULUS)
            _write_u64(path, reg, (reserved_high << 32) | start)
            counters[key] = (path, reg)
        # A read past the last register must fail as the driver's would, so the file ends there.
        if path.stat().st_size != max(registers.values()) + 8:
            raise RuntimeError(f"{path} grew past its last register")
    return MsrTree(root, vendor, cpus, esu, unit_reg, units, counters, reserved_high)


class MsrWriter(CounterWriter):
    """Advances each energy status counter at a constant power (W per key "cpu<N>/<name>";
    keys not given get DEFAULT_POWERS_W, less 5 W per package after the first), with 32-bit
    wraparound. `wrap_after_s`: start every counter that many seconds before it wraps."""

    def __init__(
        self,
        tree: MsrTree,
        powers_w: Mapping[str, float] | None = None,
        wrap_after_s: float | None = None,
        period_s: float = DEFAULT_PERIOD_S,
        start_method: str | None = None,
    ):
        powers = {}
        for key in tree.counters:
            cpu, name = key.split("/")
            powers[key] = DEFAULT_POWERS_W[name] - (5.0 if cpu != "cpu0" and name == "package" else 0.0)
        for key, w in (powers_w or {}).items():
            if key not in tree.counters:
                raise KeyError(f"{key!r}: no such counter (have {sorted(tree.counters)})")
            powers[key] = float(w)
        super().__init__(powers, period_s, start_method)
        self.tree = tree
        self.wrap_after_s = wrap_after_s

    @property
    def root(self) -> Path:
        return self.tree.root

    def _specs(self) -> list[CounterSpec]:
        specs = []
        units_per_j = 2.0**self.tree.esu
        for key, (path, reg) in self.tree.counters.items():
            if self.wrap_after_s is None:
                initial = self.tree.read_counter(key)
            else:
                initial = (
                    COUNTER_MODULUS - round(self.powers_w[key] * self.wrap_after_s * units_per_j)
                ) % COUNTER_MODULUS
            specs.append(
                CounterSpec(
                    key=key,
                    path=str(path),
                    offset=reg,
                    power_w=self.powers_w[key],
                    units_per_j=units_per_j,
                    modulus=COUNTER_MODULUS,
                    initial=initial,
                    fmt="u64le",
                    high_bits=self.tree.reserved_high,
                )
            )
        return specs


class FakeMsr(NamedTuple):
    """What the `fake_msr` fixture returns: unpack as `root, writer = fake_msr()`; the file of
    CPU n is `root / str(n) / "msr"` and the counters are `writer.tree.counters`."""

    root: Path
    writer: MsrWriter
