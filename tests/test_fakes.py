"""Tests of the hardware fakes themselves (tests/fakes), through ctypes and plain file reads.

The rest of the suite measures the sampler against these fakes, so they must be right first:
a fake that is off by a sample or a wrap would turn into a wrong verdict on the code.
"""

from __future__ import annotations

import ctypes
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from aipm_fast.recorder import Recorder

from fakes.msr import (
    AMD_PKG_ENERGY_STATUS,
    AMD_RAPL_POWER_UNIT,
    INTEL_DRAM_ENERGY_STATUS,
    INTEL_PKG_ENERGY_STATUS,
    INTEL_PP0_ENERGY_STATUS,
    INTEL_RAPL_POWER_UNIT,
    esu_of,
)
from fakes.nvml_clock import NvmlClock
from recording import drain_for

# ---- NVML constants and structures (the layouts of csrc/src_nvml.c) ----
SUCCESS, UNINITIALIZED, INVALID_ARGUMENT, NOT_SUPPORTED = 0, 1, 2, 3
NOT_FOUND, INSUFFICIENT_SIZE, GPU_IS_LOST, UNKNOWN = 6, 7, 15, 999
TOTAL_POWER_SAMPLES = 0
FI_DEV_POWER_INSTANT = 186
VALUE_TYPE_UNSIGNED_INT = 1
ENERGY_OFFSET_MJ = 123456789
ULONG_MAX = 2 ** (8 * ctypes.sizeof(ctypes.c_ulong)) - 1
FAKE_ENV = [
    "FAKE_NVML_GPUS",
    "FAKE_NVML_TRACE",
    "FAKE_NVML_LOAD",
    "FAKE_NVML_SAMPLE_MS",
    "FAKE_NVML_UTIL",
    "FAKE_NVML_LOSE_GPU_AFTER_S",
    "FAKE_NVML_FAULT",
    "FAKE_NVML_INIT_FAIL",
    "FAKE_NVML_CALL_US",
    "FAKE_NVML_SENSOR",
]


class Value(ctypes.Union):
    _fields_ = [
        ("dVal", ctypes.c_double),
        ("uiVal", ctypes.c_uint),
        ("ulVal", ctypes.c_ulong),
        ("ullVal", ctypes.c_ulonglong),
        ("sllVal", ctypes.c_longlong),
        ("siVal", ctypes.c_int),
    ]


class Sample(ctypes.Structure):
    _fields_ = [("timeStamp", ctypes.c_ulonglong), ("sampleValue", Value)]


class FieldValue(ctypes.Structure):
    _fields_ = [
        ("fieldId", ctypes.c_uint),
        ("scopeId", ctypes.c_uint),
        ("timestamp", ctypes.c_longlong),
        ("latencyUsec", ctypes.c_longlong),
        ("valueType", ctypes.c_int),
        ("nvmlReturn", ctypes.c_int),
        ("value", Value),
    ]


class Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


class Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class Nvml:
    """Thin wrapper over the ctypes library so that the tests read as NVML calls."""

    def __init__(self, lib):
        self.lib = lib

    def handle(self, i):
        h = ctypes.c_void_p()
        assert self.lib.nvmlDeviceGetHandleByIndex_v2(i, ctypes.byref(h)) == SUCCESS
        return h

    def samples(self, dev, last_seen=0, capacity=512):
        """-> (rc, [(timestamp µs, mW)], count as returned)."""
        buf = (Sample * max(capacity, 1))()
        vtype = ctypes.c_int(-1)
        count = ctypes.c_uint(capacity)
        rc = self.lib.nvmlDeviceGetSamples(
            dev, TOTAL_POWER_SAMPLES, last_seen, ctypes.byref(vtype), ctypes.byref(count), buf
        )
        got = []
        if rc == SUCCESS:
            assert vtype.value == VALUE_TYPE_UNSIGNED_INT
            got = [(buf[i].timeStamp, buf[i].sampleValue.uiVal) for i in range(count.value)]
        return rc, got, count.value

    def energy_mj(self, dev):
        mj = ctypes.c_ulonglong()
        rc = self.lib.nvmlDeviceGetTotalEnergyConsumption(dev, ctypes.byref(mj))
        return rc, mj.value

    def power_mw(self, dev):
        mw = ctypes.c_uint()
        rc = self.lib.nvmlDeviceGetPowerUsage(dev, ctypes.byref(mw))
        return rc, mw.value

    def instant_mw(self, dev, field=FI_DEV_POWER_INSTANT):
        f = FieldValue(fieldId=field)
        rc = self.lib.nvmlDeviceGetFieldValues(dev, 1, ctypes.byref(f))
        return rc, f

    def energy_j(self, gpu, t_ns):
        """Truth since the origin at t (CLOCK_REALTIME ns), from the exact integer-time helper."""
        return self.lib.fake_nvml_energy_ns_j(gpu, t_ns)

    def origin_us(self):
        return self.lib.fake_nvml_origin_us()

    def error(self, rc):
        return self.lib.nvmlErrorString(rc).decode()


@pytest.fixture
def nvml(fake_nvml_lib, fake_nvml_ctypes, monkeypatch, tmp_path):
    """nvml(path=None, init=True, **FAKE_NVML_settings) -> Nvml, with only the given settings
    in the environment (an outer FAKE_NVML_* cannot leak in). Each call loads a private copy
    of the library: a new file is a new instance, so its reference count, origin and call
    counts start fresh whatever other tests did with the shared one. The init it makes is
    undone at teardown; a test that calls nvmlInit_v2 itself balances it."""
    initialised = []

    def start(path=None, init=True, **env):
        for name in FAKE_ENV:
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(f"FAKE_NVML_{name.upper()}", str(value))
        private = tmp_path / f"libfake_nvml_{len(list(tmp_path.glob('libfake_nvml_*')))}.so"
        shutil.copyfile(path or fake_nvml_lib, private)
        n = Nvml(fake_nvml_ctypes(private))
        if init:
            assert n.lib.nvmlInit_v2() == SUCCESS
            initialised.append(n)
        return n

    yield start
    for n in initialised:
        assert n.lib.nvmlShutdown() == SUCCESS


def triangle_mw(rel_us, base_w, amp_w, period_ms):
    """The triangle trace at a grid instant, computed independently of the C code."""
    p = period_ms * 1000
    ph = rel_us % p
    frac = ph / (p / 2) if 2 * ph < p else (p - ph) / (p / 2)
    return round((base_w + amp_w * frac) * 1000)


# ------------------------------------------------------------------------------------------
# fake NVML
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("defines", [[], ["-DFAKE_NVML_OMIT_SAMPLES", "-DFAKE_NVML_OMIT_ENERGY"]])
def test_fake_nvml_compiles_without_warnings(tmp_path, defines):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found")
    src = Path(__file__).parent / "fakes" / "fake_nvml.c"
    csrc = Path(__file__).parent.parent / "csrc"
    r = subprocess.run(
        [
            gcc,
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Wextra",
            f"-I{csrc}",
            *defines,
            str(src),
            "-o",
            str(tmp_path / "f.so"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_devices_and_static_readings(nvml):
    n = nvml(gpus=2, trace="const:100", util="70,30")
    count = ctypes.c_uint()
    assert n.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == SUCCESS and count.value == 2
    h = ctypes.c_void_p()
    assert n.lib.nvmlDeviceGetHandleByIndex_v2(2, ctypes.byref(h)) == INVALID_ARGUMENT
    for i in range(2):
        dev = n.handle(i)
        name = ctypes.create_string_buffer(64)
        assert n.lib.nvmlDeviceGetName(dev, name, 64) == SUCCESS
        assert name.value == f"Fake GPU {i}".encode()
        assert n.lib.nvmlDeviceGetName(dev, name, 5) == INSUFFICIENT_SIZE
        # GPU i draws the trace plus i * 10 W, everywhere
        assert n.power_mw(dev) == (SUCCESS, 100_000 + 10_000 * i)
        rc, f = n.instant_mw(dev)
        assert rc == SUCCESS and f.nvmlReturn == SUCCESS and f.valueType == VALUE_TYPE_UNSIGNED_INT
        assert f.value.uiVal == 100_000 + 10_000 * i
        rc, f = n.instant_mw(dev, field=187)  # any other field: not supported, per field
        assert rc == SUCCESS and f.nvmlReturn == NOT_SUPPORTED
        u = Utilization()
        assert n.lib.nvmlDeviceGetUtilizationRates(dev, ctypes.byref(u)) == SUCCESS
        assert (u.gpu, u.memory) == (70, 30)
        m = Memory()
        assert n.lib.nvmlDeviceGetMemoryInfo(dev, ctypes.byref(m)) == SUCCESS
        assert m.total == 80 << 30 and m.used == (10 + i) << 30 and m.free == m.total - m.used
    assert n.lib.nvmlDeviceGetPowerUsage(ctypes.c_void_p(8), ctypes.byref(ctypes.c_uint())) == INVALID_ARGUMENT
    assert n.error(GPU_IS_LOST) == "GPU is lost"
    assert n.error(NOT_FOUND) == "Not Found"
    assert n.error(INSUFFICIENT_SIZE) == "Insufficient Size"


def test_samples_lie_on_the_grid_and_follow_the_trace(nvml):
    n = nvml(gpus=2, trace="triangle:100,200,400")
    origin = n.origin_us()
    assert origin % 20_000 == 0
    time.sleep(0.3)
    for gpu in range(2):
        rc, got, count = n.samples(n.handle(gpu))
        now_us = time.time_ns() // 1000
        assert rc == SUCCESS and count == len(got) >= 14
        stamps = [ts for ts, _ in got]
        assert stamps[0] == origin  # fewer than 120 taken so far: the buffer starts at the origin
        assert all(b - a == 20_000 for a, b in zip(stamps, stamps[1:]))
        assert stamps[-1] <= now_us < stamps[-1] + 20_000 + 5_000  # the newest, never the future
        for ts, mw in got:
            assert mw == triangle_mw(ts - origin, 100, 200, 400) + 10_000 * gpu
            assert mw == round(n.lib.fake_nvml_power_w(gpu, ts / 1e6) * 1000)


def test_samples_are_incremental_by_last_seen(nvml):
    n = nvml()
    dev = n.handle(0)
    time.sleep(0.1)
    rc, got, _ = n.samples(dev)
    assert rc == SUCCESS
    last = got[-1][0]
    # nothing newer than the newest: NOT_FOUND, unless a grid instant passed meanwhile
    rc, newer, _ = n.samples(dev, last_seen=last)
    assert rc == NOT_FOUND or (rc == SUCCESS and all(ts > last for ts, _ in newer))
    # a last-seen stamp between two grid instants returns the sample after it
    rc, tail, _ = n.samples(dev, last_seen=last - 5_000)
    assert rc == SUCCESS and tail[0][0] == last
    time.sleep(0.1)
    rc, more, _ = n.samples(dev, last_seen=last)
    assert rc == SUCCESS and 3 <= len(more) <= 8
    assert [ts for ts, _ in more] == [last + 20_000 * (k + 1) for k in range(len(more))]
    # a last-seen stamp in the future: nothing
    rc, _, _ = n.samples(dev, last_seen=more[-1][0] + 10_000_000)
    assert rc == NOT_FOUND


def test_sample_buffer_depth_and_capacity(nvml):
    n = nvml(sample_ms=2)  # fills the 120-deep buffer in 240 ms
    dev = n.handle(0)
    time.sleep(0.35)
    vtype, count = ctypes.c_int(), ctypes.c_uint(0)
    assert (
        n.lib.nvmlDeviceGetSamples(dev, TOTAL_POWER_SAMPLES, 0, ctypes.byref(vtype), ctypes.byref(count), None)
        == SUCCESS
    )
    assert count.value == 120  # samples == NULL: the buffer's depth
    rc, got, _ = n.samples(dev)
    assert rc == SUCCESS and len(got) == 120 and got[0][0] > n.origin_us()  # the oldest are gone
    assert all(b[0] - a[0] == 2_000 for a, b in zip(got, got[1:]))
    rc, _, needed = n.samples(dev, capacity=10)
    assert rc == INSUFFICIENT_SIZE and needed == 120
    rc, few, _ = n.samples(dev, last_seen=got[-4][0], capacity=3 + 50)
    assert rc == SUCCESS and few[0][0] == got[-3][0]
    assert n.lib.nvmlDeviceGetSamples(dev, 1, 0, ctypes.byref(vtype), ctypes.byref(count), None) == NOT_SUPPORTED


def test_energy_counter_is_the_integral_of_the_trace(nvml):
    n = nvml(gpus=2, trace="triangle:100,200,400")
    devs = [n.handle(gpu) for gpu in range(2)]

    def read_all():  # -> [(realtime before, counter, realtime after)] per GPU
        out = []
        for dev in devs:
            a = time.time_ns()
            rc, mj = n.energy_mj(dev)
            out.append((a, mj, time.time_ns()))
            assert rc == SUCCESS and mj >= ENERGY_OFFSET_MJ
        return out

    first = read_all()
    time.sleep(0.5)
    for gpu, ((a0, c0, b0), (a1, c1, b1)) in enumerate(zip(first, read_all())):
        # the fake read the clock somewhere inside each bracket, and the integral is monotonic
        lo = n.energy_j(gpu, a1) - n.energy_j(gpu, b0)
        hi = n.energy_j(gpu, b1) - n.energy_j(gpu, a0)
        assert lo - 0.002 <= (c1 - c0) / 1000 <= hi + 0.002
        # absolute: counter = offset + truncated mJ since the origin
        assert int(n.energy_j(gpu, a1) * 1000) - 1 <= c1 - ENERGY_OFFSET_MJ <= int(n.energy_j(gpu, b1) * 1000) + 1
    # closed form: one period of the triangle is period * (base + amp / 2)
    t0 = n.origin_us() * 1000
    assert n.energy_j(0, t0 + 400_000_000) == pytest.approx(0.4 * 200.0, abs=1e-5)
    assert n.energy_j(1, t0 + 400_000_000) == pytest.approx(0.4 * 210.0, abs=1e-5)
    assert n.energy_j(0, t0 - 1_000_000) == 0.0  # nothing before the origin
    # the seconds-as-double helper agrees, to the ~0.24 µs a double holds of an epoch time
    t = time.time_ns()
    assert n.lib.fake_nvml_energy_j(0, t / 1e9) == pytest.approx(n.energy_j(0, t), abs=1e-3)


def test_trapezoid_of_samples_equals_the_integral(nvml):
    # PERIOD_MS a multiple of 40: the corners are samples, so trapezoids are exact
    n = nvml(trace="triangle:80,120,200")
    time.sleep(0.45)
    rc, got, _ = n.samples(n.handle(0))
    assert rc == SUCCESS and len(got) >= 20
    trapezoid = sum((b[0] - a[0]) / 1e6 * (a[1] + b[1]) / 2000 for a, b in zip(got, got[1:]))
    exact = n.energy_j(0, got[-1][0] * 1000) - n.energy_j(0, got[0][0] * 1000)
    assert trapezoid == pytest.approx(exact, rel=1e-6)


def test_square_trace_steps_at_half_period(nvml):
    n = nvml(trace="square:50,150,200")
    time.sleep(0.25)
    rc, got, _ = n.samples(n.handle(0))
    origin = n.origin_us()
    assert rc == SUCCESS
    for ts, mw in got:
        assert mw == (50_000 if (ts - origin) % 200_000 < 100_000 else 150_000)
    assert n.energy_j(0, (origin + 200_000) * 1000) == pytest.approx(0.2 * 100.0, abs=1e-5)
    assert n.energy_j(0, (origin + 150_000) * 1000) == pytest.approx(0.1 * 50 + 0.05 * 150, abs=1e-5)


def test_gpu_lost_mid_run(nvml):
    n = nvml(lose_gpu_after_s=0.2)
    dev = n.handle(0)
    assert n.power_mw(dev)[0] == SUCCESS
    time.sleep(0.25)
    assert n.power_mw(dev)[0] == GPU_IS_LOST
    assert n.energy_mj(dev)[0] == GPU_IS_LOST
    assert n.samples(dev)[0] == GPU_IS_LOST
    assert n.instant_mw(dev)[0] == GPU_IS_LOST
    h = ctypes.c_void_p()
    assert n.lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(h)) == GPU_IS_LOST
    count = ctypes.c_uint()
    assert n.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == SUCCESS  # not a device function
    assert n.error(GPU_IS_LOST) == "GPU is lost"


def test_init_failure(nvml):
    n = nvml(init=False, init_fail=1)
    assert n.lib.nvmlInit_v2() == UNKNOWN
    assert n.error(UNKNOWN) == "Unknown Error"
    count = ctypes.c_uint()
    assert n.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == UNINITIALIZED
    assert n.lib.nvmlShutdown() == UNINITIALIZED


def test_init_with_new_settings_replaces_the_old_ones(nvml, monkeypatch):
    # an engine that a test forgot to close still holds a reference: the next test's settings
    # must apply all the same
    n = nvml(gpus=1, trace="const:100")
    monkeypatch.setenv("FAKE_NVML_GPUS", "3")
    assert n.lib.nvmlInit_v2() == SUCCESS
    count = ctypes.c_uint()
    assert n.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == SUCCESS and count.value == 3
    assert n.lib.nvmlShutdown() == SUCCESS
    assert n.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == SUCCESS  # one reference left


def test_bad_setting_fails_init_and_says_why(nvml, capfd):
    n = nvml(init=False, trace="sine:100")
    assert n.lib.nvmlInit_v2() == UNKNOWN
    assert "FAKE_NVML_TRACE=sine:100" in capfd.readouterr().err


def test_init_is_reference_counted_and_truth_outlives_shutdown(nvml):
    n = nvml()
    assert n.lib.nvmlInit_v2() == SUCCESS  # second reference
    assert n.lib.nvmlShutdown() == SUCCESS
    count = ctypes.c_uint()
    assert n.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == SUCCESS
    assert n.lib.nvmlShutdown() == SUCCESS
    assert n.lib.nvmlDeviceGetCount_v2(ctypes.byref(count)) == UNINITIALIZED
    assert n.energy_j(0, time.time_ns()) > 0  # the origin is kept for the truth helpers
    assert n.lib.nvmlInit_v2() == SUCCESS  # the reference the fixture undoes


def test_omitted_functions_are_absent(nvml, build_fake_nvml):
    n = nvml(path=build_fake_nvml(omit_samples=True))
    assert not hasattr(n.lib, "nvmlDeviceGetSamples")
    assert hasattr(n.lib, "nvmlDeviceGetTotalEnergyConsumption")
    assert n.energy_mj(n.handle(0))[0] == SUCCESS
    m = nvml(path=build_fake_nvml(omit_energy=True))
    assert not hasattr(m.lib, "nvmlDeviceGetTotalEnergyConsumption")
    assert hasattr(m.lib, "nvmlDeviceGetSamples")
    assert m.power_mw(m.handle(0))[0] == SUCCESS


def test_calls_are_counted(nvml):
    n = nvml()
    dev = n.handle(0)
    n.lib.fake_nvml_reset_calls()
    for _ in range(3):
        n.energy_mj(dev)
    n.power_mw(dev)
    assert n.lib.fake_nvml_calls(b"nvmlDeviceGetTotalEnergyConsumption") == 3
    assert n.lib.fake_nvml_calls(b"nvmlDeviceGetPowerUsage") == 1
    assert n.lib.fake_nvml_calls(b"nvmlDeviceGetSamples") == 0
    assert n.lib.fake_nvml_calls(b"nvmlDeviceGetTotalEnergy") == ULONG_MAX  # misspelt: never 0


# ---- the sensor response (FAKE_NVML_SENSOR) ----

SENSOR = "lag_ms=5,tau_ms=10"
HALFWAY_MS = 5 + 10 * math.log(2)  # lag + tau ln 2
STEP_MS = 10 / 32  # the fake's summing step: an edge's age is exact to half of it


def square_response_w(t_ms, lo, hi, period_ms, lag_ms=0.0, tau_ms=0.0, overshoot=0.0, overshoot_ms=0.0):
    """The square trace (ms after the origin) through the documented response, in closed form,
    independently of the C code: the level long before, plus each edge since weighted by the
    step response at its age."""
    span = 20 * max(tau_ms, overshoot_ms, 1.0)
    seen = t_ms - lag_ms

    def level(t):
        return lo if (t % period_ms) < period_ms / 2 else hi

    value = level(seen - span)
    k = math.floor((seen - span) / (period_ms / 2)) + 1
    while k * period_ms / 2 <= seen:
        edge = k * period_ms / 2
        rise = level(edge) - level(edge - 1e-9)
        x = seen - edge
        g = 1 - (math.exp(-x / tau_ms) if tau_ms else 0.0)
        if rise > 0 and overshoot:
            if tau_ms == overshoot_ms:
                g += overshoot * x / tau_ms * math.exp(-x / tau_ms)
            else:
                e_tau = math.exp(-x / tau_ms) if tau_ms else 0.0
                g += overshoot * overshoot_ms / (overshoot_ms - tau_ms) * (math.exp(-x / overshoot_ms) - e_tau)
        value += rise * g
        k += 1
    return value


def halfway_ms(points, lo, hi):
    """[(ms after an edge, W)] sorted by time -> when they first cross halfway from lo to hi
    (either way), linearly interpolated."""
    mid = (lo + hi) / 2
    for (x0, v0), (x1, v1) in zip(points, points[1:]):
        if (v0 - mid) * (v1 - mid) <= 0 and v0 != v1:
            return x0 + (mid - v0) / (v1 - v0) * (x1 - x0)
    raise AssertionError(f"no crossing of {mid} W in {points}")


def test_sensor_lags_and_smooths_a_square_trace(nvml):
    n = nvml(trace="square:100,300,200", sensor=SENSOR)
    origin_s = n.origin_us() / 1e6
    for edge_ms, lo, hi in [(100, 100, 300), (200, 300, 100), (1100, 100, 300)]:
        xs = [edge_ms + i * 0.05 for i in range(-40, 1200)]
        got = [(x - edge_ms, n.lib.fake_nvml_sensed_w(0, origin_s + x / 1000)) for x in xs]
        assert halfway_ms(got, lo, hi) == pytest.approx(HALFWAY_MS, abs=STEP_MS / 2 + 0.05)
        # the truth steps at the edge; the sensor has not moved until the lag is over
        assert n.lib.fake_nvml_power_w(0, origin_s + (edge_ms + 0.01) / 1000) == hi
        assert all(abs(v - lo) < 0.1 for x, v in got if x < 5)
    # everywhere over a period: the documented response, an edge's age exact to half a step
    for i in range(800):
        t_ms = 1000 + i * 0.25
        want = square_response_w(t_ms, 100, 300, 200, lag_ms=5, tau_ms=10)
        slope = abs(square_response_w(t_ms + 0.01, 100, 300, 200, lag_ms=5, tau_ms=10) - want) / 0.01
        got = n.lib.fake_nvml_sensed_w(0, origin_s + t_ms / 1000)
        assert got == pytest.approx(want, abs=slope * STEP_MS / 2 + 0.02), t_ms
    # GPU i reads 10 W more, through the same response
    t = origin_s + 0.110
    assert n.lib.fake_nvml_sensed_w(1, t) == pytest.approx(n.lib.fake_nvml_sensed_w(0, t) + 10, abs=1e-9)


@pytest.mark.parametrize("overshoot_ms", [30, 10])  # 10: the same constant as tau, its own formula
def test_sensor_overshoots_on_rises_only(nvml, overshoot_ms):
    sensor = {"lag_ms": 5, "tau_ms": 10, "overshoot": 0.3, "overshoot_ms": overshoot_ms}
    n = nvml(trace="square:100,300,400", sensor=",".join(f"{k}={v}" for k, v in sensor.items()))
    origin_s = n.origin_us() / 1e6
    got = {}
    for i in range(1600):
        t_ms = 400 + i * 0.25
        got[t_ms] = n.lib.fake_nvml_sensed_w(0, origin_s + t_ms / 1000)
        want = square_response_w(t_ms, 100, 300, 400, **sensor)
        slope = abs(square_response_w(t_ms + 0.01, 100, 300, 400, **sensor) - want) / 0.01
        assert got[t_ms] == pytest.approx(want, abs=slope * STEP_MS / 2 + 0.05), t_ms
    after_rise = [v for t, v in got.items() if 600 <= t < 800]
    after_fall = [v for t, v in got.items() if 400 <= t < 600]
    assert max(after_rise) > 300 + (10 if overshoot_ms == 30 else 0.5)  # above the new level
    assert min(after_fall) > 100 - 0.05  # never below it


def test_sensor_with_only_a_lag_is_a_pure_delay(nvml):
    n = nvml(trace="triangle:100,200,400", sensor="lag_ms=7.5")
    origin_s = n.origin_us() / 1e6
    for i in range(0, 400_000, 1_250):
        t = origin_s + i / 1e6
        assert n.lib.fake_nvml_sensed_w(0, t) == n.lib.fake_nvml_power_w(0, t - 0.0075)


def test_sensor_stamps_are_irregular_increasing_and_repeatable(nvml):
    n = nvml(gpus=2, trace="square:100,300,130", sensor=SENSOR + ",jitter_ms=6")
    origin = n.origin_us()
    time.sleep(0.6)
    for gpu in range(2):
        dev = n.handle(gpu)
        rc, got, _ = n.samples(dev)
        assert rc == SUCCESS and len(got) >= 25
        stamps = [ts for ts, _ in got]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        assert stamps[0] == origin  # sample 0 stays at the origin
        assert all(8_000 <= g <= 32_000 for g in gaps)  # 20 ms ± twice the jitter, so increasing
        assert len(set(gaps)) > len(gaps) // 2  # and irregular
        assert all(abs(ts - origin - 20_000 * k) <= 6_000 for k, ts in enumerate(stamps))
        for ts, mw in got:  # each holds the response at its own stamp
            assert mw == round(n.lib.fake_nvml_sensed_w(gpu, ts / 1e6) * 1000)
        # a second call agrees sample for sample, and last_seen still means "after this stamp"
        rc, again, _ = n.samples(dev, last_seen=stamps[9])
        assert rc == SUCCESS and again[: len(got) - 10] == got[10:]
        rc, again, _ = n.samples(dev, last_seen=stamps[9] + 1)
        assert rc == SUCCESS and again[0] == got[10]
        # field 186 follows the same response; the 1 s average (here the trace) does not
        rc, f = n.instant_mw(dev)
        assert rc == SUCCESS and f.value.uiVal == round(n.lib.fake_nvml_sensed_w(gpu, f.timestamp / 1e6) * 1000)
        assert n.power_mw(dev)[1] in (100_000 + 10_000 * gpu, 300_000 + 10_000 * gpu)
    # the GPUs' sample clocks are not in step
    assert n.samples(n.handle(0))[1][1:] != n.samples(n.handle(1))[1][1:]


def assert_counter_counts_the_truth(n, seconds):
    """GPU 0's energy counter over `seconds` of real time lies within the truth's energy over
    the spans that surely are inside and surely contain the two reads (±2 mJ for the counter's
    truncation); -> the counted J and the truth between the reads' midpoints."""
    dev = n.handle(0)
    a0 = time.time_ns()
    c0 = n.energy_mj(dev)[1]
    b0 = time.time_ns()
    time.sleep(seconds)
    a1 = time.time_ns()
    c1 = n.energy_mj(dev)[1]
    b1 = time.time_ns()
    lo, hi = n.energy_j(0, a1) - n.energy_j(0, b0), n.energy_j(0, b1) - n.energy_j(0, a0)
    assert lo - 0.002 <= (c1 - c0) / 1000 <= hi + 0.002
    return (c1 - c0) / 1000, n.energy_j(0, (a1 + b1) // 2) - n.energy_j(0, (a0 + b0) // 2)


def test_sensor_leaves_the_energy_counter_on_the_true_trace(nvml):
    n = nvml(trace="square:100,300,130", sensor="lag_ms=5,tau_ms=10,jitter_ms=6,overshoot=0.3,overshoot_ms=30")
    counted_j, truth_j = assert_counter_counts_the_truth(n, 0.5)
    assert counted_j == pytest.approx(truth_j, rel=0.01)


def test_recorder_sees_the_sensor_lag_and_the_true_energy(fake_nvml_lib, fake_nvml_ctypes, monkeypatch):
    # realistic: 20 ms samples with jittered stamps, a 130 ms square wave whose edges fall at
    # every phase of the sample grid, so that folding the edges gives the response finely
    for name in FAKE_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FAKE_NVML_TRACE", "square:100,300,130")
    monkeypatch.setenv("FAKE_NVML_SENSOR", SENSOR + ",jitter_ms=6")
    lib = fake_nvml_ctypes()
    assert lib.nvmlInit_v2() == 0  # a reference, so the origin outlives the recording
    try:
        rec = drain_for(
            Recorder(
                nvml_lib=str(fake_nvml_lib),
                powercap_root="/nonexistent",
                msr_root="/nonexistent",
                perf_root="/nonexistent",
            ),
            2.0,
        )
        names = list(rec.channel_names())
        t_ns, watts = rec.series(names.index("nvml:0.power_samples"))
        gaps_ms = (t_ns[1:] - t_ns[:-1]) / 1e6
        assert len(t_ns) >= 80 and gaps_ms.min() > 0 and gaps_ms.std() > 2  # increasing, irregular
        origin_ms = lib.fake_nvml_origin_us() / 1000
        to_real_ms = (time.time_ns() - time.monotonic_ns()) / 1e6
        phase = (t_ns / 1e6 + to_real_ms - origin_ms) % 130  # ms after a falling edge
        for edge_ms, lo, hi in [(65, 100, 300), (0, 300, 100)]:
            after = sorted((p - edge_ms, w) for p, w in zip(phase, watts) if 0 <= p - edge_ms < 40)
            assert len(after) >= 15
            assert halfway_ms(after, lo, hi) == pytest.approx(HALFWAY_MS, abs=1.5)
        result = rec.energy()["nvml:0"]
        truth = lib.fake_nvml_energy_ns_j(0, int(rec.stop_ns + to_real_ms * 1e6)) - lib.fake_nvml_energy_ns_j(
            0, int(rec.start_ns + to_real_ms * 1e6)
        )
        # the samples' energy is late by the sensor's mean delay (lag + tau): at each end of the
        # window at most that long at the other level goes missing or extra
        assert abs(result.energy_j - truth) <= (300 - 100) * 0.015 + 0.01 * truth
        assert result.alternatives["energy"] == pytest.approx(truth, rel=0.05)  # read once a second
    finally:
        lib.nvmlShutdown()


def test_sensor_settings_are_checked(nvml, capfd):
    for bad in [
        "tau=10",
        "lag_ms=5,lag_ms=6",
        "lag_ms=-1",
        "lag_ms=x",
        "lag_ms=5;tau_ms=1",
        "overshoot=0.3",
        "jitter_ms=10",
    ]:
        n = nvml(init=False, sensor=bad)
        assert n.lib.nvmlInit_v2() == UNKNOWN, bad
        assert f"FAKE_NVML_SENSOR={bad}" in capfd.readouterr().err
    n = nvml(init=False, sample_ms=40, sensor="jitter_ms=10")  # below half of 40 ms: fine
    assert n.lib.nvmlInit_v2() == SUCCESS
    assert n.lib.nvmlShutdown() == SUCCESS


def test_faults_break_the_driver_as_named(nvml, capfd):
    n = nvml(fault="oversized_samples,null_error_string,bad_value_type,unterminated_name")
    dev = n.handle(0)
    time.sleep(0.05)
    buf = (Sample * 4)()
    vtype, count = ctypes.c_int(-1), ctypes.c_uint(4)
    assert n.lib.nvmlDeviceGetSamples(dev, TOTAL_POWER_SAMPLES, 0, ctypes.byref(vtype), ctypes.byref(count), buf) == 0
    assert count.value > 100000 and vtype.value == 42  # claims far more than the 4 it may write
    assert n.lib.nvmlErrorString(GPU_IS_LOST) is None
    name = ctypes.create_string_buffer(b"\x01" * 9)
    assert n.lib.nvmlDeviceGetName(dev, name, 8) == SUCCESS
    assert name.raw[:9] == b"X" * 8 + b"\x01"  # the whole buffer, no NUL, and nothing past it
    for bad in ["oversized", "null_error_string,null_error_string"]:
        m = nvml(init=False, fault=bad)
        assert m.lib.nvmlInit_v2() == UNKNOWN, bad
        assert f"FAKE_NVML_FAULT={bad}" in capfd.readouterr().err


def test_without_a_sensor_readings_are_the_trace(nvml, monkeypatch):
    for sensor in [None, "", "lag_ms=0,tau_ms=0,jitter_ms=0"]:
        n = nvml(trace="square:100,300,200", **({} if sensor is None else {"sensor": sensor}))
        time.sleep(0.25)
        origin = n.origin_us()
        rc, got, _ = n.samples(n.handle(0))
        assert rc == SUCCESS and [ts for ts, _ in got] == [origin + 20_000 * k for k in range(len(got))]
        for ts, mw in got:
            assert mw == round(n.lib.fake_nvml_power_w(0, ts / 1e6) * 1000)
            assert n.lib.fake_nvml_sensed_w(0, ts / 1e6) == n.lib.fake_nvml_power_w(0, ts / 1e6)
    # a new sensor setting is a new setting: it replaces the one in force (and the origin)
    monkeypatch.setenv("FAKE_NVML_SENSOR", SENSOR)
    assert n.lib.nvmlInit_v2() == SUCCESS
    t = n.origin_us() / 1e6 + 0.102
    assert n.lib.fake_nvml_sensed_w(0, t) < 150 < n.lib.fake_nvml_power_w(0, t)
    assert n.lib.nvmlShutdown() == SUCCESS


# ---- a trace from a file, the load response, the virtual clock ----

LLONG_MIN = -(2**63)


def write_trace(path, lines):
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def midpoint_integral_j(lib, gpu, from_us, to_us, step_us=10):
    """The numeric integral of fake_nvml_true_w over [from_us, to_us] by midpoints of step_us
    cells: exact on the constant and linear pieces, whose breaks the tests put on the grid."""
    total = sum(lib.fake_nvml_true_w(gpu, t + step_us // 2) for t in range(from_us, to_us, step_us))
    return total * step_us / 1e6


def test_segments_trace_holds_each_power_from_its_start(nvml, tmp_path):
    path = write_trace(tmp_path / "t.txt", ["# start_ms watts", "100 50", "", "250.5 300", "  400 120  "])
    n = nvml(gpus=2, trace=f"segments:{path}")
    lib = n.lib
    for rel_us, want in [(-5000, 50), (0, 50), (100_000, 50), (250_499, 50), (250_500, 300), (399_999, 300),
                         (400_000, 120), (10**9, 120)]:  # fmt: skip
        assert lib.fake_nvml_true_w(0, rel_us) == want, rel_us
        assert lib.fake_nvml_true_w(1, rel_us) == want + 10
        assert lib.fake_nvml_sensed_at_w(0, rel_us) == want  # no sensor: the samples hold the power
    # from the origin: 100 ms before the first start at its power, then each segment in turn
    want_j = 0.1 * 50 + 0.1505 * 50 + 0.1495 * 300 + 0.6 * 120
    assert lib.fake_nvml_energy_between_j(0, 0, 1_000_000) == pytest.approx(want_j, rel=1e-12)
    assert lib.fake_nvml_energy_between_j(1, 0, 1_000_000) == pytest.approx(want_j + 10, rel=1e-12)
    assert lib.fake_nvml_energy_between_j(0, 1_000_000, 0) == pytest.approx(-want_j, rel=1e-12)
    # the real-clock helpers and the counter agree with it
    origin_ns = n.origin_us() * 1000
    assert n.energy_j(0, origin_ns + 1_000_000_000) == pytest.approx(want_j, rel=1e-12)
    time.sleep(0.05)
    rc, got, _ = n.samples(n.handle(0))
    assert rc == SUCCESS and got
    for ts, mw in got:
        assert mw == round(lib.fake_nvml_true_w(0, ts - n.origin_us()) * 1000)


def test_segments_file_errors_name_the_file_and_line(nvml, tmp_path, capfd):
    cases = {
        "missing.txt": None,
        "empty.txt": ["# nothing", ""],
        "word.txt": ["0 100", "ten 200"],
        "three.txt": ["0 100", "10 200 5"],
        "one.txt": ["0 100", "10"],
        "back.txt": ["0 100", "10 200", "10.0004 300"],  # the same µs
        "negative.txt": ["0 100", "10 -1"],
        "nan.txt": ["0 100", "nan 200"],
    }
    expect = {
        "missing.txt": "cannot open",
        "empty.txt": "no START_MS WATTS line",
        "word.txt": "line 2",
        "three.txt": "line 2",
        "one.txt": "line 2",
        "back.txt": "line 3",
        "negative.txt": "line 2",
        "nan.txt": "line 2",
    }
    for name, lines in cases.items():
        path = tmp_path / name
        if lines is not None:
            write_trace(path, lines)
        n = nvml(init=False, trace=f"segments:{path}")
        assert n.lib.nvmlInit_v2() == UNKNOWN, name
        err = capfd.readouterr().err
        assert f"FAKE_NVML_TRACE=segments:{path}" in err and f"{path}" in err.split("(", 1)[1], err
        assert expect[name] in err, err


def test_segments_of_a_million_lines(nvml, tmp_path):
    lines = 1_000_000
    path = tmp_path / "long.txt"
    path.write_text("".join(f"{i} {100 + (i % 7) * 10}\n" for i in range(lines)))
    n = nvml(trace=f"segments:{path}")
    lib = n.lib
    for i in [0, 1, 6, 7, 123_457, lines - 1]:
        assert lib.fake_nvml_true_w(0, i * 1000 + 500) == 100 + (i % 7) * 10
    assert lib.fake_nvml_true_w(0, lines * 1000 + 10**9) == 100 + ((lines - 1) % 7) * 10
    whole_weeks = lines // 7  # seven 1 ms segments of 100..160 W: 0.91 J a week
    assert lib.fake_nvml_energy_between_j(0, 0, whole_weeks * 7000) == pytest.approx(whole_weeks * 0.91, rel=1e-9)


LOAD = {"overshoot": 0.3, "overshoot_ms": 20, "fall_ms": 15}
LOAD_SETTING = ",".join(f"{k}={v}" for k, v in LOAD.items())


def trace_cases(tmp_path):
    """(trace, load) settings whose breaks lie on a 10 µs grid, each with and without the load
    response (which only steps get)."""
    seg = write_trace(tmp_path / "seg.txt", ["-200 80", "30 300", "45 120", "46 260", "300 90", "301 90", "500 400"])
    traces = [f"segments:{seg}", "square:100,300,130", "square:300,100,52", "triangle:100,200,130", "const:75"]
    return [(trace, load) for trace in traces for load in (None, LOAD_SETTING)]


def test_true_energy_is_exact_for_every_trace_and_load(nvml, tmp_path):
    for trace, load in trace_cases(tmp_path):
        n = nvml(gpus=2, trace=trace, **({"load": load} if load else {}))
        for gpu, (a_us, b_us) in [(0, (-300_000, 700_000)), (1, (2_000_000, 2_400_000))]:
            numeric = midpoint_integral_j(n.lib, gpu, a_us, b_us)
            exact = n.lib.fake_nvml_energy_between_j(gpu, a_us, b_us)
            assert exact == pytest.approx(numeric, rel=1e-6), (trace, load, gpu)
        # the counter's helpers are the same integral from the origin
        origin_ns = n.origin_us() * 1000
        assert n.energy_j(0, origin_ns + 700_000_000) == pytest.approx(
            n.lib.fake_nvml_energy_between_j(0, 0, 700_000), rel=1e-12
        )


def test_load_overshoots_rises_and_slows_falls(nvml, tmp_path):
    f, o_ms, x_ms = LOAD["overshoot"], LOAD["overshoot_ms"], LOAD["fall_ms"]
    path = write_trace(tmp_path / "step.txt", ["0 100", "1000 300", "2000 100"])
    lib = nvml(trace=f"segments:{path}", load=LOAD_SETTING).lib
    for x_ms in [0, 0.5, 3, 20, 100]:
        rise_tail = f * 200 * math.exp(-x_ms / o_ms)
        assert lib.fake_nvml_true_w(0, round((1000 + x_ms) * 1000)) == pytest.approx(300 + rise_tail, rel=1e-12)
        fall_tail = 200 * math.exp(-x_ms / LOAD["fall_ms"]) + f * 200 * math.exp(-(1000 + x_ms) / o_ms)
        assert lib.fake_nvml_true_w(0, round((2000 + x_ms) * 1000)) == pytest.approx(100 + fall_tail, rel=1e-12)
    assert lib.fake_nvml_true_w(0, 999_999) == 100  # nothing before the rise
    x_ms = LOAD["fall_ms"]
    for a_ms in [1, 10, 50, 500]:
        rise_j = 300 * a_ms / 1000 + f * 200 * o_ms / 1000 * (1 - math.exp(-a_ms / o_ms))
        assert lib.fake_nvml_energy_between_j(0, 1_000_000, 1_000_000 + a_ms * 1000) == pytest.approx(rise_j, rel=1e-9)
    # over the whole run every step's tail is in: the excess is F d O for the rise, d X for the fall
    excess_j = lib.fake_nvml_energy_between_j(0, 0, 60_000_000) - (100 * 59 + 300 * 1)
    assert excess_j == pytest.approx(f * 200 * o_ms / 1000 + 200 * x_ms / 1000, rel=1e-9)


def test_load_on_a_square_trace_is_every_steps_tail(nvml):
    f, o_ms, x_ms = LOAD["overshoot"], LOAD["overshoot_ms"], LOAD["fall_ms"]
    lib = nvml(trace="square:100,300,40", load=LOAD_SETTING).lib  # steps 20 ms apart: tails overlap

    def brute_force_w(t_ms):  # the trace plus every step's tail back 60 time constants
        value = 100 if t_ms % 40 < 20 else 300
        k = math.floor(t_ms / 20)
        while k * 20 > t_ms - 60 * o_ms:
            age = t_ms - k * 20
            value += f * 200 * math.exp(-age / o_ms) if k % 2 else 200 * math.exp(-age / x_ms)
            k -= 1
        return value

    for t_ms in [0, 0.25, 7, 19.99, 20, 33.3, 1000.5, -512.75]:
        assert lib.fake_nvml_true_w(0, round(t_ms * 1000)) == pytest.approx(brute_force_w(t_ms), rel=1e-9), t_ms
    # steady state: each period has one rise and one fall, so it draws their whole excess
    for start_us in [0, 13_000, 5_000_000]:
        period_j = lib.fake_nvml_energy_between_j(0, start_us, start_us + 40_000)
        assert period_j == pytest.approx(0.02 * 400 + f * 200 * o_ms / 1000 + 200 * x_ms / 1000, rel=1e-9)


def test_load_is_what_the_counter_and_the_sensor_see(nvml):
    n = nvml(trace="square:100,300,130", load=LOAD_SETTING, sensor="lag_ms=7")
    lib = n.lib
    for rel_us in range(0, 400_000, 2_500):
        assert lib.fake_nvml_sensed_at_w(0, rel_us) == lib.fake_nvml_true_w(0, rel_us - 7000)
    assert_counter_counts_the_truth(n, 0.3)


def test_load_settings_are_checked(nvml, capfd):
    for bad in ["overshoot=0.3", "fall=3", "fall_ms=-1", "fall_ms=3,fall_ms=4", "overshoot_ms=x"]:
        n = nvml(init=False, trace="square:100,300,100", load=bad)
        assert n.lib.nvmlInit_v2() == UNKNOWN, bad
        assert f"FAKE_NVML_LOAD={bad}" in capfd.readouterr().err
    n = nvml(init=False, trace="triangle:100,200,100", load="fall_ms=3")  # no steps: the power is the trace
    assert n.lib.nvmlInit_v2() == SUCCESS
    assert n.lib.fake_nvml_true_w(0, 75_000) == 200
    assert n.lib.nvmlShutdown() == SUCCESS


def ramp_through_low_pass(x_ms, window_ms, tau_ms):
    """A unit step averaged over window_ms, then low-passed by tau_ms, x_ms after the step
    (closed form): (G(x) - G(x - W)) / W with G(u) = u - tau (1 - e^(-u/tau)) for u > 0."""

    def g(u):
        return u - tau_ms * (1 - math.exp(-u / tau_ms)) if u > 0 else 0.0

    return (g(x_ms) - g(x_ms - window_ms)) / window_ms


def test_sensor_window_makes_a_step_a_ramp(nvml, tmp_path):
    path = write_trace(tmp_path / "step.txt", ["0 100", "1000 300"])
    lib = nvml(trace=f"segments:{path}", sensor="window_ms=25,lag_ms=5").lib
    for x_us in range(-2000, 40_000, 250):  # x after the lagged step
        want = 100 + 200 * min(max(x_us / 25_000, 0.0), 1.0)
        assert lib.fake_nvml_sensed_at_w(0, 1_005_000 + x_us) == pytest.approx(want, abs=1e-9), x_us
    # with a low-pass too: the mean of the low-passed power over [t - lag - W, t - lag]
    lib = nvml(trace=f"segments:{path}", sensor="window_ms=25,lag_ms=5,tau_ms=10").lib
    for x_us in range(-2000, 100_000, 500):
        want = 100 + 200 * ramp_through_low_pass(x_us / 1000, 25, 10)
        slope = 200 / 25  # W/ms at most; the sum places an edge's age to half a step
        assert lib.fake_nvml_sensed_at_w(0, 1_005_000 + x_us) == pytest.approx(want, abs=slope * STEP_MS / 2 + 1e-6)


def test_sensor_window_averages_the_true_power_with_its_load(nvml):
    lib = nvml(trace="square:100,300,130", load=LOAD_SETTING, sensor="window_ms=25,lag_ms=3").lib
    for rel_us in range(100_000, 500_000, 1_700):
        mean_w = lib.fake_nvml_energy_between_j(0, rel_us - 28_000, rel_us - 3_000) / 0.025
        assert lib.fake_nvml_sensed_at_w(0, rel_us) == pytest.approx(mean_w, rel=1e-12)
    bad = nvml(init=False, sensor="window_ms=-5")
    assert bad.lib.nvmlInit_v2() == UNKNOWN


def test_sample_stamps_on_the_virtual_clock_are_the_drivers(nvml):
    n = nvml(gpus=2, trace="square:100,300,130", sensor="lag_ms=5,tau_ms=10,jitter_ms=6")
    lib = n.lib
    for gpu in range(2):
        stamps = [lib.fake_nvml_sample_stamp_us(gpu, k) for k in range(3000)]
        assert stamps[0] == 0 and lib.fake_nvml_sample_stamp_us(gpu, -1) == LLONG_MIN
        assert all(b > a for a, b in zip(stamps, stamps[1:]))
        offsets = [ts - 20_000 * k for k, ts in enumerate(stamps)]
        assert max(abs(o) for o in offsets) <= 6000 and max(offsets) > 5000 and min(offsets) < -5000
        assert len(set(offsets)) > 1000  # irregular
        assert math.isnan(lib.fake_nvml_sample_w(gpu, -1))
    time.sleep(0.3)
    rc, got, _ = n.samples(n.handle(1))
    assert rc == SUCCESS and len(got) >= 10
    for k, (ts, mw) in enumerate(got):  # what the driver holds, sample for sample
        assert ts - n.origin_us() == lib.fake_nvml_sample_stamp_us(1, k)
        assert mw / 1000 == lib.fake_nvml_sample_w(1, k)


def test_nvml_clock_serves_a_minute_of_samples_and_their_truth(fake_nvml_lib):
    schedule = [(i * 0.5, 100.0 if i % 2 == 0 else 300.0) for i in range(120)]
    env_before = dict(os.environ)
    with NvmlClock(
        fake_nvml_lib, schedule=schedule, load=LOAD_SETTING, sensor="lag_ms=5,tau_ms=10,jitter_ms=4"
    ) as clock:
        assert dict(os.environ) == env_before  # the settings were in force for the init only
        stamps, watts = clock.samples(0.0, 60.0)
        assert 2990 <= len(stamps) <= 3001 and (stamps[1:] > stamps[:-1]).all()
        assert stamps[0] == 0.0 and stamps[-1] <= 60.0
        for i in [0, 1, 777, len(stamps) - 1]:
            assert watts[i] == round(clock.sensed_w(stamps[i]) * 1000) / 1000
        part_s, part_w = clock.samples(10.0, 11.0)
        assert (part_s >= 10.0).all() and (part_s <= 11.0).all() and len(part_s) in (49, 50, 51)
        assert set(part_s) <= set(stamps)
        # the truth: the schedule's energy plus every step's whole tail (60 rises, 59 falls)
        f, o_s, x_s = LOAD["overshoot"], LOAD["overshoot_ms"] / 1000, LOAD["fall_ms"] / 1000
        tails_j = 60 * f * 200 * o_s + 59 * 200 * x_s
        schedule_j = 60 * 0.5 * (100 + 300) + 1.0 * 300  # the last 300 W holds past 60 s
        assert clock.energy_j(0.0, 60.0 + 1.0) == pytest.approx(schedule_j + tails_j, rel=1e-6)
        assert clock.true_w(0.5) == pytest.approx(300 + f * 200)
    with pytest.raises(ValueError, match="refused"):
        NvmlClock(fake_nvml_lib, schedule=[(0.0, -1.0)])


# ------------------------------------------------------------------------------------------
# fake powercap
# ------------------------------------------------------------------------------------------


def unwrap(values, modulus):
    """Counter readings -> cumulative values, and how many wraps were seen."""
    out, offset, wraps = [values[0]], 0, 0
    for a, b in zip(values, values[1:]):
        if b < a:
            offset += modulus
            wraps += 1
        out.append(b + offset)
    return out, wraps


def poll(read, seconds, interval=0.002):
    """[(monotonic ns just before the read, value, monotonic ns just after)] for `seconds`."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.monotonic_ns()
        v = read()
        out.append((t0, v, time.monotonic_ns()))
        time.sleep(interval)
    return out


def test_powercap_layout(fake_powercap):
    root, writer = fake_powercap(packages=2, start=False)
    zones = {
        "intel-rapl:0": "package-0",
        "intel-rapl:0:0": "core",
        "intel-rapl:0:1": "dram",
        "intel-rapl:1": "package-1",
        "intel-rapl:1:0": "core",
    }
    assert set(writer.tree.zones) == set(zones)
    for key, name in zones.items():
        top = root / key
        assert (top / "name").read_text() == name + "\n"
        assert (top / "max_energy_range_uj").read_text() == "3000000\n"
        raw = (top / "energy_uj").read_bytes()
        assert len(raw) == 8 and raw.endswith(b"\n") and 0 <= int(raw) < 3_000_000
        if key.count(":") == 2:  # subzone: a flat symlink to the directory nested in its parent
            parent = key.rsplit(":", 1)[0]
            assert top.is_symlink() and not os.path.isabs(os.readlink(top))
            assert top.resolve() == (root / parent / key).resolve()
            assert (root / parent / key).is_dir() and not (root / parent / key).is_symlink()
        else:
            assert top.is_dir() and not top.is_symlink()
    assert (root / "intel-rapl" / "enabled").exists() and not (root / "intel-rapl" / "name").exists()


def test_powercap_writer_advances_in_place_and_wraps(fake_powercap):
    root, writer = fake_powercap(start=False)  # package 20 W: a 3 J counter wraps every 150 ms
    fds = {k: os.open(z.energy_path, os.O_RDONLY) for k, z in writer.tree.zones.items()}
    try:
        with writer:
            readings = {k: [] for k in fds}
            end = time.monotonic() + 0.6
            while time.monotonic() < end:
                for k, fd in fds.items():  # pread on fds opened before the writer started
                    t0 = time.monotonic_ns()
                    v = int(os.pread(fd, 64, 0))
                    readings[k].append((t0, v, time.monotonic_ns()))
                time.sleep(0.002)
    finally:
        for fd in fds.values():
            os.close(fd)
    for key, rs in readings.items():
        modulus = writer.spec(key).modulus
        values, wraps = unwrap([v for _, v, _ in rs], modulus)
        if key == "intel-rapl:0":
            assert wraps >= 3
        truth_uj = writer.energy_j(key, rs[0][2], rs[-1][0]) * 1e6
        slack_uj = writer.power_w(key) * 0.02 * 1e6  # a late writer tick at either end
        assert abs((values[-1] - values[0]) - truth_uj) <= slack_uj, key
        for t0, v, t1 in rs:  # each reading: never ahead of the power, never far behind it
            lag_uj = (writer.expected_raw(key, t1) - v) % modulus
            assert lag_uj <= writer.power_w(key) * (t1 - t0) / 1e3 + slack_uj, key


def test_powercap_truth_stops_with_the_writer(fake_powercap):
    root, writer = fake_powercap()
    t0 = time.monotonic_ns()
    time.sleep(0.05)
    writer.stop()
    frozen = writer.tree.read_uj("intel-rapl:0")
    time.sleep(0.02)
    assert writer.tree.read_uj("intel-rapl:0") == frozen
    t1 = time.monotonic_ns()
    assert writer.energy_j("intel-rapl:0", t0, t1) == pytest.approx(20.0 * (writer.stop_ns - t0) / 1e9)


def test_powercap_faults(fake_powercap):
    root, writer = fake_powercap()
    zone = writer.tree.zones["intel-rapl:0:1"]
    fd = os.open(zone.energy_path, os.O_RDONLY)
    try:
        writer.corrupt("intel-rapl:0:1")
        time.sleep(0.02)
        assert os.pread(fd, 64, 0) == b"garbage\n"  # seen through the fd kept open
        writer.corrupt("intel-rapl:0:1", b"")
        assert os.pread(fd, 64, 0) == b""
        writer.restore("intel-rapl:0:1")
        first = int(os.pread(fd, 64, 0))
        time.sleep(0.02)
        assert int(os.pread(fd, 64, 0)) != first
        writer.remove("intel-rapl:0:1")
        assert not zone.energy_path.exists()
        assert os.fstat(fd).st_nlink == 0  # how a reader holding the fd can tell
        before = writer.tree.read_uj("intel-rapl:0:0")
        time.sleep(0.02)
        assert writer.tree.read_uj("intel-rapl:0:0") != before  # the other zones carry on
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------
# fake MSR
# ------------------------------------------------------------------------------------------


def test_msr_intel_layout(fake_msr):
    root, writer = fake_msr(packages=2, start=False, reserved_high=0xDEAD)
    tree = writer.tree
    for cpu in (0, 1):
        path = root / str(cpu) / "msr"
        assert path.stat().st_size == INTEL_PP0_ENERGY_STATUS + 8  # the highest register
        assert esu_of(tree.read_register(cpu, INTEL_RAPL_POWER_UNIT)) == 14
        for reg in (INTEL_PKG_ENERGY_STATUS, INTEL_PP0_ENERGY_STATUS, INTEL_DRAM_ENERGY_STATUS):
            assert tree.read_register(cpu, reg) >> 32 == 0xDEAD
    assert tree.unit_j == pytest.approx(61.035e-6, rel=1e-4)
    assert sorted(tree.counters) == ["cpu0/dram", "cpu0/package", "cpu0/pp0", "cpu1/dram", "cpu1/package", "cpu1/pp0"]


def test_msr_counters_advance_and_wrap(fake_msr):
    root, writer = fake_msr(wrap_after_s=0.1, reserved_high=0x1)
    tree = writer.tree
    keys = ["cpu0/package", "cpu0/pp0", "cpu0/dram"]
    fd = os.open(root / "0" / "msr", os.O_RDONLY)
    try:  # all at once: each wraps 0.1 s after the writer started
        both = poll(lambda: [int.from_bytes(os.pread(fd, 8, tree.counters[k][1]), "little") for k in keys], 0.3)
    finally:
        os.close(fd)
    for i, key in enumerate(keys):
        rs = [(t0, v[i], t1) for t0, v, t1 in both]
        assert all(v >> 32 == 0x1 for _, v, _ in rs)  # reserved bits kept
        counts, wraps = unwrap([v & 0xFFFFFFFF for _, v, _ in rs], 1 << 32)
        assert wraps == 1
        joules = (counts[-1] - counts[0]) * tree.unit_j
        truth = writer.energy_j(key, rs[0][2], rs[-1][0])
        assert joules == pytest.approx(truth, abs=writer.power_w(key) * 0.02)


def test_msr_amd_is_sparse(fake_msr):
    root, writer = fake_msr(vendor="amd", packages=2)
    tree = writer.tree
    assert sorted(tree.counters) == ["cpu0/package", "cpu1/package"]  # no core counter: see msr.py
    before = {k: tree.read_counter(k) for k in tree.counters}
    t0 = time.monotonic_ns()
    time.sleep(0.05)
    for cpu in (0, 1):
        st = (root / str(cpu) / "msr").stat()
        assert st.st_size == AMD_PKG_ENERGY_STATUS + 8
        assert st.st_blocks * 512 < 1 << 20  # 3 GiB long, a few KiB on disk
        # the package counter overlaps the unit register's upper bytes but leaves ESU alone
        assert esu_of(tree.read_register(cpu, AMD_RAPL_POWER_UNIT)) == 16
        key = f"cpu{cpu}/package"
        joules = (tree.read_counter(key) - before[key]) % (1 << 32) * tree.unit_j
        truth = writer.energy_j(key, t0, time.monotonic_ns())
        assert joules == pytest.approx(truth, abs=writer.power_w(key) * 0.02)
    assert writer.power_w("cpu1/package") == writer.power_w("cpu0/package") - 5.0
