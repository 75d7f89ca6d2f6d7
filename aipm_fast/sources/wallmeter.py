"""An external wall meter's stream: lines of "timestamp watts" (or "watts" alone) from a file
being appended, a named pipe or a serial device, as lab wattmeters and their loggers write them.

    1764620000.125 231.4        seconds since the epoch (CLOCK_REALTIME) and watts
    1764620000.125,231.4        a comma, a semicolon or a tab separate as well
    231.4                       no timestamp: the line is stamped when it is read

The meter's timestamps are mapped onto the meter's record clock (CLOCK_MONOTONIC). Where they
come from this host's clock, the mapping is the host's own realtime-to-monotonic offset. Where
they come from another clock (a logger on another machine), they lag or lead the lines' arrival
by far more than any transport does: when the median difference over the first lines exceeds
CLOCK_DISAGREES_S, the offset is estimated from arrival times instead (the smallest arrival
minus stamp seen so far: the line that travelled fastest bounds the clock difference best), and
the channel's health says so. A regular file is followed from its end (only new lines count);
a pipe or device is read as lines arrive. A serial line must be configured first (stty).

Each reading is taken as the meter's mean power since its previous line. The domain is
wall:<file name>, of part "wall": it holds everything behind the plug, so it is not added to
totals that already count the host and its GPUs, unless `wall_meter_adds` says that the meter
measures a device that no other source covers (a second machine, a switch).
"""

from __future__ import annotations

import os
import re
import select
import stat
import statistics
import time

from aipm_fast._native import now_ns
from aipm_fast.producers import Producer, new_channel_id
from aipm_fast.sources.base import MEAN_POWER, OTHER, WALL, Channel, Discovery, Domain, Problem

SEPARATORS = re.compile(r"[\s,;]+")
CLOCK_DISAGREES_S = 1.0  # median arrival - stamp beyond this: the meter has its own clock
CLOCK_PROBE_LINES = 5  # lines looked at before deciding
POLL_S = 0.01  # how often a regular file is checked for new lines


def parse_line(line: str) -> tuple[float | None, float]:
    """(timestamp s or None, watts) of one line; ValueError naming what is wrong."""
    fields = [f for f in SEPARATORS.split(line.strip()) if f]
    if len(fields) == 1:
        stamp, watts = None, fields[0]
    elif len(fields) == 2:
        stamp, watts = fields
    else:
        raise ValueError(f"expected 'timestamp watts' or 'watts', got {line.strip()!r}")
    try:
        w = float(watts)
        t = None if stamp is None else float(stamp)
    except ValueError:
        raise ValueError(f"not a number in {line.strip()!r}") from None
    if not (w == w and abs(w) != float("inf")) or w < 0:
        raise ValueError(f"{w!r} W is not a power reading")
    return t, w


class WallMeterStream(Producer):
    def __init__(self, path: str, channel_id: int, name: str):
        super().__init__(channel_id, name)
        self.path = path
        self.clock = "host"  # "host", "own" (offset from arrivals) or "arrival"
        self.offset_ns: int | None = None
        self._probe: list[float] = []  # arrival - stamp (s) of the first lines
        self._min_delay_ns: int | None = None

    def to_monotonic(self, stamp_s: float | None, arrival_mono_ns: int, arrival_real_ns: int) -> int:
        """A line's time on CLOCK_MONOTONIC (see the module's note on clocks)."""
        if stamp_s is None:
            self.clock = "arrival"
            return arrival_mono_ns
        stamp_ns = int(round(stamp_s * 1e9))
        host_offset = arrival_real_ns - arrival_mono_ns  # realtime - monotonic, now
        delay_ns = arrival_real_ns - stamp_ns
        if len(self._probe) < CLOCK_PROBE_LINES:
            self._probe.append(delay_ns / 1e9)
            if len(self._probe) == CLOCK_PROBE_LINES and abs(statistics.median(self._probe)) > CLOCK_DISAGREES_S:
                self.clock = "own"
        if self.clock == "own":
            self._min_delay_ns = delay_ns if self._min_delay_ns is None else min(self._min_delay_ns, delay_ns)
            self.offset_ns = self._min_delay_ns
            return stamp_ns + self._min_delay_ns - host_offset
        self.offset_ns = 0
        return stamp_ns - host_offset

    def run(self, stop) -> None:
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
            if regular:
                os.lseek(fd, 0, os.SEEK_END)  # a log being appended: only new lines count
            pending = b""
            while not stop.is_set():
                if not regular:
                    ready, _, _ = select.select([fd], [], [], 0.1)
                    if not ready:
                        continue
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    chunk = b""
                if not chunk:
                    time.sleep(POLL_S)
                    continue
                arrival_mono, arrival_real = now_ns(), time.time_ns()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    if not line.strip():
                        continue
                    try:
                        stamp, watts = parse_line(line)
                    except ValueError as exc:
                        self.error(f"{self.path}: {exc}")
                        continue
                    self.emit(self.to_monotonic(stamp, arrival_mono, arrival_real), watts)
        finally:
            os.close(fd)

    @property
    def note(self) -> str:
        if self.clock == "own" and self.offset_ns is not None:
            return f"the meter's clock differs from this host's: offset {self.offset_ns / 1e9:+.3f} s from arrivals"
        return {"host": "stamps on this host's clock", "arrival": "stamped on arrival"}[self.clock]


def discover(engine, config) -> Discovery:
    found = Discovery()
    path = config.wall_meter
    if not path:
        return found
    if not os.path.exists(path):
        found.problems.append(
            Problem(
                "wallmeter",
                path,
                "no such file, pipe or device",
                "start the meter's logger first, or point AIPM_WALL_METER (--wall-meter) at the file it appends to",
            )
        )
        return found
    if not os.access(path, os.R_OK):
        found.problems.append(
            Problem(
                "wallmeter",
                path,
                "not readable",
                "grant read access (a serial device: add the user to the dialout group)",
            )
        )
        return found
    name = os.path.basename(path.rstrip("/")) or "meter"
    domain = f"wall:{name}"
    cid = new_channel_id()
    found.producers.append(WallMeterStream(path, cid, domain))
    found.channels.append(
        Channel(cid, domain, "power", MEAN_POWER, "power", "W", "wallmeter", config.period("wall"), detail=path)
    )
    adds = bool(config.wall_meter_adds)
    found.add_domain(
        Domain(
            domain,
            OTHER if adds else WALL,
            additive=adds,
            device=f"wall meter stream {path}" + ("" if adds else " (holds the host: not added to totals)"),
        )
    )
    return found
