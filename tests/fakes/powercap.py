"""A fake /sys/class/powercap tree whose energy counters advance while a test runs.

Layout, as on real sysfs (where the zones live under /sys/devices/virtual/powercap and
/sys/class/powercap holds one flat symlink per zone)::

    root/intel-rapl/enabled                  the control type: no `name`, not a zone
    root/intel-rapl:0/{name,energy_uj,max_energy_range_uj,enabled}      name "package-0"
    root/intel-rapl:0/intel-rapl:0:0/...                                name "core"
    root/intel-rapl:0/intel-rapl:0:1/...                                name "dram"
    root/intel-rapl:0:0 -> intel-rapl:0/intel-rapl:0:0                  flat symlinks
    root/intel-rapl:0:1 -> intel-rapl:0/intel-rapl:0:1
    (packages=2 adds intel-rapl:1 "package-1" and intel-rapl:1:0 "core")

so code that walks the tree must not count a subzone twice.

`PowercapWriter` advances every zone's `energy_uj` at a constant power from a separate process:
a thread would share the test process's GIL, and a test that holds it (or a slow teardown)
would then stall the counters and make the truth wrong. The writer opens each file once and
overwrites it in place with pwrite, never replacing it, because the code under test keeps its
fd open and preads it; a new inode would leave the reader on the old, frozen file. Values are
fixed width and zero padded so that a shorter number never leaves a stale digit behind; with
the default 3 J range a record is 7 digits and a newline, 8 aligned bytes, which a concurrent
pread in practice never sees half written.

The counter is a function of time, not a running sum, so a late wake-up of the writer delays
an update but never loses energy: at each write, value = initial + power * (now - start),
wrapped at max_energy_range_uj, and `energy_j` gives the truth over any span.

The process machinery (`CounterWriter`) is shared with the MSR fake in msr.py.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

DEFAULT_MAX_ENERGY_RANGE_UJ = 3_000_000  # 3 J: wraps several times a second at the powers below
DEFAULT_PERIOD_S = 0.001

# Default power per zone (W). Package and core wrap a 3 J counter every 150 and 250 ms.
DEFAULT_POWERS_W = {
    "intel-rapl:0": 20.0,
    "intel-rapl:0:0": 12.0,
    "intel-rapl:0:1": 4.0,
    "intel-rapl:1": 18.0,
    "intel-rapl:1:0": 10.0,
}


# --------------------------------------------------------------------------------------------
# Generic counter writer process (also used by msr.py)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CounterSpec:
    """One counter the writer process keeps up to date. Plain data, so it crosses to the child."""

    key: str
    path: str
    offset: int  # where in the file the record starts
    power_w: float
    units_per_j: float  # counter units in one joule (1e6 for µJ, 2**ESU for RAPL MSRs)
    modulus: int  # the counter wraps to 0 here
    initial: int  # raw value at the writer's start
    fmt: str  # "text": zero-padded decimal + newline; "u64le": 8 bytes little endian
    width: int = 0  # text: number of digits
    high_bits: int = 0  # u64le: constant bits 63:32 (reserved bits of a RAPL status MSR)
    ripple: int = 0  # a level, not a counter (power_w 0): adds this every other millisecond

    def value_at(self, elapsed_ns: int) -> int:
        ripple = self.ripple * ((elapsed_ns // 1_000_000) % 2)
        return (self.initial + ripple + int(self.power_w * self.units_per_j * elapsed_ns / 1e9)) % self.modulus

    def encode(self, value: int) -> bytes:
        if self.fmt == "text":
            return b"%0*d\n" % (self.width, value)
        return ((self.high_bits << 32) | value).to_bytes(8, "little")


def _writer_main(specs, period_ns, conn, stop, frozen, ticks, stop_ns):
    """Body of the writer process: wake every period on an absolute schedule and rewrite each
    counter that is not frozen. Reports its start time (or why it could not start) on conn."""
    try:
        # Run ahead of the test's own work on a busy machine, where it can (root, or
        # CAP_SYS_NICE): a late tick makes the files lag the truth. It sleeps 1 ms in every
        # tick and uses a few per cent of a core, so it cannot starve anything.
        os.nice(-10)
    except OSError:
        pass
    try:
        fds = [os.open(s.path, os.O_WRONLY) for s in specs]
        start = time.monotonic_ns()
        for s, fd in zip(specs, fds):
            os.pwrite(fd, s.encode(s.value_at(0)), s.offset)
    except Exception as exc:  # the parent re-raises it with the message
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", start))
    conn.close()
    deadline = start
    now = start
    while not stop.value:
        deadline += period_ns
        now = time.monotonic_ns()
        if deadline <= now:  # late (descheduled): skip the missed ticks instead of bursting
            deadline = now + period_ns
        time.sleep((deadline - now) / 1e9)
        now = time.monotonic_ns()
        for i, (s, fd) in enumerate(zip(specs, fds)):
            if not frozen[i]:
                os.pwrite(fd, s.encode(s.value_at(now - start)), s.offset)
        ticks.value += 1
    stop_ns.value = now  # time of the last write: the files do not change after it
    for fd in fds:
        os.close(fd)


class CounterWriter:
    """Runs `_writer_main` in a child process; a context manager. Subclasses say what to write
    by implementing `_specs()`, called at start so that each counter continues from the value
    its file holds then (a writer can be stopped and started again without a jump)."""

    def __init__(
        self, powers_w: Mapping[str, float], period_s: float = DEFAULT_PERIOD_S, start_method: str | None = None
    ):
        self.powers_w: dict[str, float] = dict(powers_w)
        self.period_s = period_s
        # fork starts in milliseconds and needs nothing importable in the child; the child
        # only runs os/time calls, so forking a process that has other threads is harmless.
        self.start_method = start_method or ("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        self.start_ns: int | None = None
        self._stop_ns: int | None = None
        self._proc = None
        self._specs_by_key: dict[str, CounterSpec] = {}
        self._index: dict[str, int] = {}

    # -- subclass hook --
    def _specs(self) -> list[CounterSpec]:
        raise NotImplementedError

    # -- lifecycle --
    def start(self) -> CounterWriter:
        if self._proc is not None:
            raise RuntimeError("writer already started")
        specs = self._specs()
        self._specs_by_key = {s.key: s for s in specs}
        self._index = {s.key: i for i, s in enumerate(specs)}
        ctx = multiprocessing.get_context(self.start_method)
        parent_conn, child_conn = ctx.Pipe(duplex=False)
        self._stop = ctx.Value("b", 0, lock=False)
        self._frozen = ctx.Array("b", len(specs), lock=False)
        self._ticks = ctx.Value("Q", 0, lock=False)
        self._stop_ns_shared = ctx.Value("q", 0, lock=False)
        self._proc = ctx.Process(
            target=_writer_main,
            args=(
                specs,
                int(self.period_s * 1e9),
                child_conn,
                self._stop,
                self._frozen,
                self._ticks,
                self._stop_ns_shared,
            ),
            name=f"{type(self).__name__}",
            daemon=True,
        )
        self._proc.start()
        child_conn.close()
        if not parent_conn.poll(10.0):
            self._kill()
            raise RuntimeError(f"{type(self).__name__}: writer process did not start within 10 s")
        kind, payload = parent_conn.recv()
        parent_conn.close()
        if kind != "ready":
            self._kill()
            raise RuntimeError(f"{type(self).__name__}: writer process failed: {payload}")
        self.start_ns = payload
        self._stop_ns = None
        return self

    def stop(self) -> None:
        if self._proc is None:
            return
        self._stop.value = 1
        self._proc.join(5.0)
        if self._proc.is_alive():
            self._kill()
        self._stop_ns = self._stop_ns_shared.value or time.monotonic_ns()
        self._proc = None

    def _kill(self) -> None:
        self._proc.kill()
        self._proc.join(5.0)
        self._stop_ns = time.monotonic_ns()
        self._proc = None

    def __enter__(self):
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def stop_ns(self) -> int | None:
        """Monotonic time of the last write, once stopped; None while running."""
        return self._stop_ns

    # -- truth --
    def power_w(self, key: str) -> float:
        return self.powers_w[key]

    def energy_j(self, key: str, t0_ns: int, t1_ns: int) -> float:
        """Energy the counter `key` accounts for between two CLOCK_MONOTONIC instants
        (time.monotonic_ns(), or the sampler's timestamps): power * (t1 - t0), with the span
        clipped to the time the writer ran."""
        if self.start_ns is None:
            raise RuntimeError("writer not started")
        lo = max(t0_ns, self.start_ns)
        hi = t1_ns if self._stop_ns is None else min(t1_ns, self._stop_ns)
        return self.powers_w[key] * max(0, hi - lo) / 1e9

    def expected_raw(self, key: str, t_ns: int) -> int:
        """The raw value the writer puts in the file for time t (what a write at t would hold)."""
        return self._spec(key).value_at(t_ns - self.start_ns)

    def spec(self, key: str) -> CounterSpec:
        return self._spec(key)

    def _spec(self, key: str) -> CounterSpec:
        try:
            return self._specs_by_key[key]
        except KeyError:
            raise KeyError(f"{key!r}: not a counter of this writer (have {sorted(self._specs_by_key)})") from None

    # -- fault injection --
    def freeze(self, key: str) -> None:
        """Stop updating `key` (a stale counter). Returns once the writer cannot be in the middle
        of a write to it, so that what the caller writes next is not overwritten."""
        self._set_frozen(key, 1)

    def resume(self, key: str) -> None:
        """Update `key` again; its value jumps to where the steady power would have taken it."""
        self._set_frozen(key, 0)

    def _set_frozen(self, key: str, flag: int) -> None:
        self._spec(key)
        if not self.running:
            raise RuntimeError("writer not running")
        self._frozen[self._index[key]] = flag
        # Two completed ticks after the flag is set mean the child has read it at least once.
        target = self._ticks.value + 2
        deadline = time.monotonic() + 5.0
        while self._ticks.value < target:
            if time.monotonic() > deadline or not self._proc.is_alive():
                raise RuntimeError("writer process stopped ticking")
            time.sleep(self.period_s / 2)


# --------------------------------------------------------------------------------------------
# The powercap tree
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Zone:
    key: str  # directory name, e.g. "intel-rapl:0:1"
    name: str  # what its `name` file says, e.g. "dram"
    path: Path  # the real, nested directory
    max_energy_range_uj: int
    width: int  # digits of the fixed-width energy_uj record

    @property
    def energy_path(self) -> Path:
        return self.path / "energy_uj"


@dataclass
class PowercapTree:
    root: Path
    zones: dict[str, Zone]

    def zone(self, key: str) -> Zone:
        return self.zones[key]

    def read_uj(self, key: str) -> int:
        return int(self.zones[key].energy_path.read_bytes())


def _zone_layout(packages: int):
    """(key, name, parent key or None) for each zone, parents first."""
    layout = [
        ("intel-rapl:0", "package-0", None),
        ("intel-rapl:0:0", "core", "intel-rapl:0"),
        ("intel-rapl:0:1", "dram", "intel-rapl:0"),
    ]
    if packages >= 2:
        layout += [("intel-rapl:1", "package-1", None), ("intel-rapl:1:0", "core", "intel-rapl:1")]
    if packages not in (1, 2):
        raise ValueError("packages must be 1 or 2")
    return layout


def build_powercap_tree(
    root,
    packages: int = 1,
    max_energy_range_uj: int = DEFAULT_MAX_ENERGY_RANGE_UJ,
    initial_uj: Mapping[str, int] | None = None,
    control_type: bool = True,
) -> PowercapTree:
    """Create the tree under `root` (made if missing). Counters start at arbitrary, distinct
    values rather than 0, as real ones do; `initial_uj` overrides them per zone."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    if control_type:
        (root / "intel-rapl").mkdir(exist_ok=True)
        (root / "intel-rapl" / "enabled").write_text("1\n")
    width = len(str(max_energy_range_uj))
    zones: dict[str, Zone] = {}
    for i, (key, name, parent) in enumerate(_zone_layout(packages)):
        if parent is None:
            path = root / key
        else:
            path = zones[parent].path / key
            os.symlink(os.path.join(parent, key), root / key)  # relative, like sysfs's
        path.mkdir()
        start = (initial_uj or {}).get(key, (123_457 + 987_653 * i) % max_energy_range_uj)
        if not 0 <= start < max_energy_range_uj:
            raise ValueError(f"initial_uj[{key!r}] out of range")
        (path / "name").write_text(name + "\n")
        (path / "max_energy_range_uj").write_text(f"{max_energy_range_uj}\n")
        (path / "enabled").write_text("1\n")
        (path / "energy_uj").write_bytes(b"%0*d\n" % (width, start))
        # as on real machines: a package states its power limit's range, a core subzone often 0
        if parent is None:
            (path / "constraint_0_max_power_uw").write_text("100000000\n")
        elif name == "core":
            (path / "constraint_0_max_power_uw").write_text("0\n")
        zones[key] = Zone(key, name, path, max_energy_range_uj, width)
    return PowercapTree(root, zones)


class PowercapWriter(CounterWriter):
    """Advances each zone's energy_uj at a constant power (W per zone key; zones not named get
    DEFAULT_POWERS_W) every `period_s`, wrapping at the zone's max_energy_range_uj."""

    def __init__(
        self,
        tree: PowercapTree,
        powers_w: Mapping[str, float] | None = None,
        period_s: float = DEFAULT_PERIOD_S,
        start_method: str | None = None,
    ):
        powers = {k: DEFAULT_POWERS_W[k] for k in tree.zones}
        for key, w in (powers_w or {}).items():
            if key not in tree.zones:
                raise KeyError(f"{key!r}: no such zone (have {sorted(tree.zones)})")
            powers[key] = float(w)
        super().__init__(powers, period_s, start_method)
        self.tree = tree

    @property
    def root(self) -> Path:
        return self.tree.root

    def _specs(self) -> list[CounterSpec]:
        return [
            CounterSpec(
                key=z.key,
                path=str(z.energy_path),
                offset=0,
                power_w=self.powers_w[z.key],
                units_per_j=1e6,
                modulus=z.max_energy_range_uj,
                initial=self.tree.read_uj(z.key),
                fmt="text",
                width=z.width,
            )
            for z in self.tree.zones.values()
        ]

    # -- faults that a reader holding the fd open must survive --
    def corrupt(self, key: str, data: bytes = b"garbage\n") -> None:
        """Stop updating the zone and make energy_uj hold `data` (b"" for an empty file), in
        place, so that the reader's open fd sees it."""
        self.freeze(key)
        fd = os.open(self.tree.zones[key].energy_path, os.O_WRONLY)
        try:
            os.pwrite(fd, data, 0)
            os.ftruncate(fd, len(data))
        finally:
            os.close(fd)

    def remove(self, key: str) -> None:
        """Stop updating the zone and unlink its energy_uj; an fd kept open on it then reports
        st_nlink == 0 (what a zone that vanishes looks like)."""
        self.freeze(key)
        self.tree.zones[key].energy_path.unlink()

    def restore(self, key: str) -> None:
        """Undo `corrupt`: put a well-formed record back and resume updating."""
        z = self.tree.zones[key]
        fd = os.open(z.energy_path, os.O_WRONLY)
        try:
            os.ftruncate(fd, z.width + 1)
        finally:
            os.close(fd)
        self.resume(key)


class FakePowercap(NamedTuple):
    """What the `fake_powercap` fixture returns: unpack as `root, writer = fake_powercap()`;
    the zones are `writer.tree.zones`."""

    root: Path
    writer: PowercapWriter
