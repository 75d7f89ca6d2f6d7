"""The fake NVML (tests/fakes/fake_nvml.c) on a clock the test controls.

The fake computes everything from the time it is asked about, so its helpers on µs after the
origin (fake_nvml_true_w, fake_nvml_sample_stamp_us, fake_nvml_sample_w,
fake_nvml_energy_between_j) answer for any virtual time: a test can read a minute of driver
samples, and the exact truth behind them, in a fraction of a second of real time, without
waiting for the samples to happen.

    with NvmlClock(fake_nvml_lib, schedule=[(0.0, 100.0), (1.0, 300.0)],
                   sensor="lag_ms=5,tau_ms=10,jitter_ms=4", load="overshoot=0.2,overshoot_ms=20") as clock:
        stamps_s, watts = clock.samples(0.0, 60.0)
        truth_j = clock.energy_j(1.0, 2.0)

Times are seconds after the fake's origin. Each clock loads a private copy of the library, so
its settings and origin are its own whatever else the process does with the fake.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

LLONG_MIN = -(2**63)


@contextmanager
def _fake_environment(settings: dict[str, str]) -> Iterator[None]:
    """Exactly these FAKE_NVML_* variables while the block runs (the fake reads them at init);
    the process's own come back afterwards."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("FAKE_NVML_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(settings)
    try:
        yield
    finally:
        for name in settings:
            os.environ.pop(name, None)
        os.environ.update(saved)


# The virtual-clock helpers' C types: name -> (result, arguments).
CLOCK_HELPERS: dict[str, tuple[type, list[type]]] = {
    "fake_nvml_true_w": (ctypes.c_double, [ctypes.c_uint, ctypes.c_longlong]),
    "fake_nvml_sensed_at_w": (ctypes.c_double, [ctypes.c_uint, ctypes.c_longlong]),
    "fake_nvml_sample_stamp_us": (ctypes.c_longlong, [ctypes.c_uint, ctypes.c_longlong]),
    "fake_nvml_sample_w": (ctypes.c_double, [ctypes.c_uint, ctypes.c_longlong]),
    "fake_nvml_energy_between_j": (ctypes.c_double, [ctypes.c_uint, ctypes.c_longlong, ctypes.c_longlong]),
}


def declare_clock_helpers(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declares the virtual-clock helpers' types on lib (conftest declares the rest of the fake's)."""
    for name, (restype, argtypes) in CLOCK_HELPERS.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def write_segments(path: Path, schedule: Sequence[tuple[float, float]]) -> Path:
    """A segments file for FAKE_NVML_TRACE=segments:PATH from [(start_s, watts)]."""
    path.write_text("".join(f"{float(start_s) * 1000.0!r} {float(watts)!r}\n" for start_s, watts in schedule))
    return path


def _us(t_s: float) -> int:
    return round(t_s * 1e6)


class NvmlClock:
    """The fake's driver and truth for one set of settings, on virtual time.

    schedule: [(start_s, watts)], the true power's trace before the load response
    (FAKE_NVML_TRACE=segments:...); or trace: any other FAKE_NVML_TRACE. The other settings
    are FAKE_NVML_* by their lower-case suffix (sensor=, load=, sample_ms=, gpus=...).
    """

    def __init__(
        self,
        lib_path: str | os.PathLike[str],
        schedule: Sequence[tuple[float, float]] | None = None,
        **settings: object,
    ):
        if schedule is not None and "trace" in settings:
            raise ValueError("NvmlClock: give a schedule or a trace, not both")
        self._dir = tempfile.TemporaryDirectory(prefix="nvml_clock_")
        tmp = Path(self._dir.name)
        env = {f"FAKE_NVML_{k.upper()}": str(v) for k, v in settings.items()}
        if schedule is not None:
            if not schedule:
                raise ValueError("NvmlClock: the schedule is empty")
            env["FAKE_NVML_TRACE"] = "segments:" + str(write_segments(tmp / "trace.txt", schedule))
        private = tmp / "libfake_nvml_clock.so"  # a file of its own: a library instance of its own
        shutil.copyfile(lib_path, private)
        self.lib = declare_clock_helpers(ctypes.CDLL(str(private)))
        with _fake_environment(env):
            rc = self.lib.nvmlInit_v2()
        if rc != 0:
            self._dir.cleanup()
            raise ValueError(f"NvmlClock: the fake refused the settings {env} (rc {rc}; it says why on stderr)")
        self._open = True

    def close(self) -> None:
        if self._open:
            self._open = False
            self.lib.nvmlShutdown()
            self._dir.cleanup()

    def __enter__(self) -> NvmlClock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def true_w(self, t_s: float, gpu: int = 0) -> float:
        """The GPU's true power at t_s (what the energy counter integrates)."""
        return float(self.lib.fake_nvml_true_w(gpu, _us(t_s)))

    def sensed_w(self, t_s: float, gpu: int = 0) -> float:
        """What a sample stamped t_s would report, before the rounding to mW."""
        return float(self.lib.fake_nvml_sensed_at_w(gpu, _us(t_s)))

    def energy_j(self, t0_s: float, t1_s: float, gpu: int = 0) -> float:
        """The true energy over [t0_s, t1_s], exact."""
        return float(self.lib.fake_nvml_energy_between_j(gpu, _us(t0_s), _us(t1_s)))

    def samples(self, start_s: float, stop_s: float, gpu: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """The driver's power samples stamped in [start_s, stop_s] -> (stamps_s, watts): every
        one a sampler polling often enough would see (the driver's buffer holds the last 120),
        stamps with the sensor's jitter, values in whole mW as NVML gives them."""
        lib = self.lib
        # sample k is stamped k periods after the origin, moved by under half a period
        far = 2**30
        period_us = max(1, (lib.fake_nvml_sample_stamp_us(gpu, far) + far // 2) // far)
        lo, hi = _us(start_s), _us(stop_s)
        k = max(0, lo // period_us - 1)
        stamps, watts = [], []
        while True:
            ts = lib.fake_nvml_sample_stamp_us(gpu, k)
            if ts == LLONG_MIN or ts > hi:
                break
            if ts >= lo:
                stamps.append(ts / 1e6)
                watts.append(lib.fake_nvml_sample_w(gpu, k))
            k += 1
        return np.array(stamps), np.array(watts)
