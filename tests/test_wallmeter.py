"""A wall meter's stream as a Python-side source: lines appended to a file (or a pipe), on this
host's clock or another's, landing in record's and the Meter's energies and, when declared a
separate device, in the totals."""

import os
import threading
import time

import pytest

from aipm_fast import Meter
from aipm_fast.domains import additive_domains
from aipm_fast.integrations.common import total_j
from aipm_fast.recorder import Recorder
from aipm_fast.sources.wallmeter import WallMeterStream, parse_line

from recording import drain_for

OFF = {"powercap_root": "/x", "msr_root": "/x", "perf_root": "/x", "nvml_lib": "/x/libnvidia-ml.so.1"}


class MeterLogger:
    """Appends 'stamp watts' lines every period_s, stamps on a clock `skew_s` off this host's."""

    def __init__(self, path, watts=230.0, period_s=0.02, skew_s=0.0, stamps=True):
        self.path, self.watts, self.period_s, self.skew_s, self.stamps = path, watts, period_s, skew_s, stamps
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        with open(self.path, "a", buffering=1) as f:
            while not self._stop.is_set():
                t = time.time() + self.skew_s
                f.write(f"{t:.6f} {self.watts}\n" if self.stamps else f"{self.watts}\n")
                time.sleep(self.period_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def test_lines_parse_with_any_separator_and_bad_ones_are_refused():
    assert parse_line("1764620000.125 231.4") == (1764620000.125, 231.4)
    assert parse_line("1764620000.125,231.4\n") == (1764620000.125, 231.4)
    assert parse_line("231.4") == (None, 231.4)
    for bad in ("a b", "1 2 3", "-5", "nan"):
        with pytest.raises(ValueError):
            parse_line(bad)


def test_another_clock_is_mapped_through_the_arrival_times():
    stream = WallMeterStream("/dev/null", 999, "wall:x")
    real, mono = 1_764_620_000_000_000_000, 5_000_000_000
    skew = 3600.0  # a logger an hour ahead
    for k in range(10):
        delay_ns = 2_000_000 + (k % 3) * 1_000_000  # 2-4 ms of transport
        stamp = (real + k * 10**8) / 1e9 + skew
        t = stream.to_monotonic(stamp, mono + k * 10**8 + delay_ns, real + k * 10**8 + delay_ns)
    assert stream.clock == "own" and "differs" in stream.note
    assert t == pytest.approx(mono + 9 * 10**8 + 2_000_000, abs=2_000)  # the fastest line sets the offset


@pytest.mark.parametrize("skew_s", [0.0, -120.0])
def test_record_integrates_the_stream_on_either_clock(tmp_path, skew_s):
    path = tmp_path / "meter.log"
    path.write_text("1.0 9999\n")  # old lines before the start do not count
    with MeterLogger(path, skew_s=skew_s):
        rec = drain_for(Recorder(**OFF, wall_meter=str(path)), 1.5)
    d = rec.energy()["wall:meter.log"]
    span_s = (rec.stop_ns - rec.start_ns) / 1e9
    assert d.energy_j == pytest.approx(230.0 * span_s, rel=0.05), d
    status = next(s for s in rec.status() if s.domain == "wall:meter.log")
    assert status.status == "live" and status.errors == 0
    assert ("differs" in status.detail) == (skew_s != 0.0)


def test_a_pipe_and_bad_lines_are_read_and_counted(tmp_path):
    fifo = tmp_path / "meter.fifo"
    os.mkfifo(fifo)
    rec = Recorder(**OFF, wall_meter=str(fifo))
    rec.start()
    with open(fifo, "w", buffering=1) as f:
        for _ in range(30):
            f.write(f"{time.time():.6f} 100\n")
            time.sleep(0.02)
        f.write("garbage\n")
        time.sleep(0.2)
    rec.close()
    status = next(s for s in rec.status() if s.domain == "wall:meter.fifo")
    assert status.reads >= 25 and status.errors == 1 and "garbage" in status.last_error


def test_the_wall_is_kept_out_of_totals_unless_it_is_a_separate_device(tmp_path):
    path = tmp_path / "meter.log"
    path.touch()
    for adds in (False, True):
        with MeterLogger(path, watts=50.0):
            with Meter(**OFF, wall_meter=str(path), wall_meter_adds=adds, cuda=False) as m:
                time.sleep(0.3)
                with m.window("w") as w:
                    time.sleep(1.0)
                time.sleep(0.3)
        energies = m.results.window_energy(w)
        assert energies["wall:meter.log"] == pytest.approx(50.0 * 1.0, rel=0.05)
        assert additive_domains(m.domains) == (["wall:meter.log"] if adds else [])
        if adds:
            assert total_j(energies, m.domains) == pytest.approx(energies["wall:meter.log"])


def test_a_missing_stream_is_explained(tmp_path):
    rec = Recorder(**OFF, wall_meter=str(tmp_path / "nope.log"))
    problem = next(p for p in rec.discovery.problems if p.source == "wallmeter")
    assert problem.error == "no such file, pipe or device" and "AIPM_WALL_METER" in problem.fix
    rec.close()
