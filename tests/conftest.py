"""Shared fixtures: hardware fakes, so that the suite runs on machines without GPUs or RAPL.

* build_fake_nvml(omit_samples=False, omit_energy=False) -> Path   (session factory)
  compiles tests/fakes/fake_nvml.c into a shared library (once per variant per session).
* fake_nvml_lib -> Path                                             (session)
  the full variant. Point the code under test at it; configure it with the FAKE_NVML_*
  environment variables (monkeypatch.setenv) before the code calls nvmlInit.
* fake_nvml_ctypes(path=None) -> ctypes.CDLL                         (function factory)
  the library loaded in the test process with the helpers' signatures declared. Loaded from
  the same path as the code under test, it is the same instance (the loader maps a file once),
  so fake_nvml_energy_ns_j and fake_nvml_calls see what the code under test did. It does not
  shut NVML down at teardown: a test that calls nvmlInit_v2 through it calls nvmlShutdown too
  (dropping references it did not take would let an engine leaked by an earlier test, when
  garbage collected, shut NVML down under the next test's feet).
* fake_powercap(packages=1, powers_w=None, max_energy_range_uj=3_000_000, start=True,
  period_s=0.001) -> FakePowercap(root, writer)                     (function factory)
* fake_msr(vendor="intel", packages=1, powers_w=None, esu=None, wrap_after_s=None,
  reserved_high=0, start=True, period_s=0.001) -> FakeMsr(root, writer)   (function factory)
  Writers still running at teardown are stopped. The writers update every period_s (1 ms,
  as RAPL does), so a reading lags the truth by up to a period plus scheduling delay: over a
  window of T seconds expect up to about 2 * period_s / T of relative error.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
# The fakes are imported as the namespace package `fakes`; do not rely on pytest's rootdir
# handling to put tests/ on sys.path (it does not under --import-mode=importlib).
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

from fakes.msr import FakeMsr, MsrWriter, build_msr_tree  # noqa: E402
from fakes.nvml_clock import declare_clock_helpers  # noqa: E402
from fakes.powercap import (  # noqa: E402
    DEFAULT_MAX_ENERGY_RANGE_UJ,
    DEFAULT_PERIOD_S,
    FakePowercap,
    PowercapWriter,
    build_powercap_tree,
)

FAKE_NVML_SRC = TESTS_DIR / "fakes" / "fake_nvml.c"
# -I csrc: the fake is built with the sampler's own NVML declarations (csrc/nvml_types.h)
FAKE_NVML_CFLAGS = ["-std=c11", "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", f"-I{TESTS_DIR.parent / 'csrc'}"]


def compile_fake_nvml(out: Path, omit_samples: bool = False, omit_energy: bool = False):
    """Compile the fake; returns gcc's CompletedProcess (its stderr holds any warning)."""
    gcc = shutil.which(os.environ.get("CC", "gcc")) or shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: cannot build the fake NVML library (tests/fakes/fake_nvml.c)")
    defines = []
    if omit_samples:
        defines.append("-DFAKE_NVML_OMIT_SAMPLES")
    if omit_energy:
        defines.append("-DFAKE_NVML_OMIT_ENERGY")
    cmd = [gcc, *FAKE_NVML_CFLAGS, *defines, str(FAKE_NVML_SRC), "-o", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.fail(f"building the fake NVML failed:\n{' '.join(cmd)}\n{result.stderr}", pytrace=False)
    return result


@pytest.fixture(autouse=True)
def no_host_hwmon(monkeypatch):
    """Tests see only the hardware they fake: the machine's own hwmon chips stay out unless a
    test points AIPM_HWMON_ROOT (or hwmon_root) at a fake tree."""
    monkeypatch.setenv("AIPM_HWMON_ROOT", "/nonexistent/hwmon")


@pytest.fixture(autouse=True)
def no_user_calibrations(monkeypatch, tmp_path):
    """Tests see only the sensor calibrations they store: the user's own file stays out."""
    monkeypatch.setenv("AIPM_CALIBRATION_FILE", str(tmp_path / "no-calibrations.json"))


@pytest.fixture(scope="session")
def build_fake_nvml(tmp_path_factory):
    """Factory: build_fake_nvml(omit_samples=False, omit_energy=False) -> path of the .so.
    Each variant gets its own file name, hence its own library instance and state."""
    out_dir = tmp_path_factory.mktemp("fake_nvml")
    built = {}

    def build(omit_samples: bool = False, omit_energy: bool = False) -> Path:
        key = (bool(omit_samples), bool(omit_energy))
        if key not in built:
            suffix = "".join(s for s, on in (("_nosamples", key[0]), ("_noenergy", key[1])) if on)
            path = out_dir / f"libfake_nvml{suffix}.so"
            compile_fake_nvml(path, *key)
            built[key] = path
        return built[key]

    return build


@pytest.fixture(scope="session")
def fake_nvml_lib(build_fake_nvml) -> Path:
    return build_fake_nvml()


def _declare(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Result and argument types that ctypes cannot guess (NVML returns default to int)."""
    lib.nvmlErrorString.restype = ctypes.c_char_p
    lib.nvmlErrorString.argtypes = [ctypes.c_int]
    lib.fake_nvml_energy_j.restype = ctypes.c_double
    lib.fake_nvml_energy_j.argtypes = [ctypes.c_uint, ctypes.c_double]
    lib.fake_nvml_energy_ns_j.restype = ctypes.c_double
    lib.fake_nvml_energy_ns_j.argtypes = [ctypes.c_uint, ctypes.c_longlong]
    lib.fake_nvml_power_w.restype = ctypes.c_double
    lib.fake_nvml_power_w.argtypes = [ctypes.c_uint, ctypes.c_double]
    lib.fake_nvml_sensed_w.restype = ctypes.c_double
    lib.fake_nvml_sensed_w.argtypes = [ctypes.c_uint, ctypes.c_double]
    lib.fake_nvml_origin_us.restype = ctypes.c_ulonglong
    lib.fake_nvml_origin_us.argtypes = []
    lib.fake_nvml_calls.restype = ctypes.c_ulong
    lib.fake_nvml_calls.argtypes = [ctypes.c_char_p]
    lib.fake_nvml_reset_calls.restype = None
    declare_clock_helpers(lib)
    if hasattr(lib, "nvmlDeviceGetSamples"):
        lib.nvmlDeviceGetSamples.argtypes = [
            ctypes.c_void_p,
            ctypes.c_int,
            ctypes.c_ulonglong,
            ctypes.c_void_p,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
    return lib


@pytest.fixture
def fake_nvml_ctypes(fake_nvml_lib):
    """Factory: fake_nvml_ctypes(path=None) -> the fake loaded with ctypes (default variant
    unless a path from build_fake_nvml is given)."""

    def load(path=None) -> ctypes.CDLL:
        return _declare(ctypes.CDLL(str(path or fake_nvml_lib)))

    return load


@pytest.fixture
def fake_powercap(tmp_path):
    writers = []

    def make(
        packages: int = 1,
        powers_w=None,
        max_energy_range_uj: int = DEFAULT_MAX_ENERGY_RANGE_UJ,
        start: bool = True,
        period_s: float = DEFAULT_PERIOD_S,
    ) -> FakePowercap:
        root = tmp_path / f"powercap{len(writers)}"
        tree = build_powercap_tree(root, packages=packages, max_energy_range_uj=max_energy_range_uj)
        writer = PowercapWriter(tree, powers_w, period_s=period_s)
        writers.append(writer)
        if start:
            writer.start()
        return FakePowercap(root, writer)

    yield make
    for writer in writers:
        writer.stop()


@pytest.fixture
def fake_msr(tmp_path):
    writers = []

    def make(
        vendor: str = "intel",
        packages: int = 1,
        powers_w=None,
        esu=None,
        wrap_after_s=None,
        reserved_high: int = 0,
        start: bool = True,
        period_s: float = DEFAULT_PERIOD_S,
    ) -> FakeMsr:
        root = tmp_path / f"msr{len(writers)}"
        tree = build_msr_tree(root, vendor=vendor, packages=packages, esu=esu, reserved_high=reserved_high)
        writer = MsrWriter(tree, powers_w, wrap_after_s=wrap_after_s, period_s=period_s)
        writers.append(writer)
        if start:
            writer.start()
        return FakeMsr(root, writer)

    yield make
    for writer in writers:
        writer.stop()


@pytest.fixture
def fake_engine(fake_powercap, fake_nvml_lib):
    """Engine options of a benchmark on the fake powercap tree and the fake NVML, and the tree's writer."""
    root, writer = fake_powercap()
    return {"powercap_root": str(root), "nvml_lib": str(fake_nvml_lib), "msr_root": "/x", "perf_root": "/x"}, writer
