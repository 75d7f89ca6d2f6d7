"""The sampler's two threads and its backoff: slow library calls never delay fast deadlines, a
quiet channel is read less often until it moves, and the fake's costs are what a test asks."""

import ctypes
import time

import numpy as np
import pytest

from aipm_fast._native import Engine
from aipm_fast.recorder import backoff_interval_s
from aipm_fast.sources.base import COUNTER, INSTANT_POWER, Channel


def counter_file(tmp_path, value="1000000\n", name="energy_uj"):
    path = tmp_path / name
    path.write_text(value)
    return str(path)


def test_a_slow_nvml_call_does_not_make_the_fast_deadlines_late(tmp_path, fake_nvml_lib, monkeypatch):
    # a 20 ms energy call every 50 ms: on one thread it would make 40% of the 1 kHz wake-ups late
    monkeypatch.setenv("FAKE_NVML_CALL_US", "nvmlDeviceGetTotalEnergyConsumption:20000")
    e = Engine(16)
    e.add_text_counter(counter_file(tmp_path), 1e-6, 0.001)
    late = e.add_lateness_channel()
    e.nvml_open(str(fake_nvml_lib))
    energy = e.add_nvml_channel(0, "energy", 0.05)
    e.start()
    time.sleep(1.0)
    e.stop()
    recs = e.drain()
    lateness_us = recs[recs["channel"] == late]["value"] / 1e3
    assert lateness_us.size > 500
    # a late wake-up from the 20 ms call would be late by up to 20,000 µs; other load on the
    # machine (parallel test runs) makes a few late too, never a fifth of them
    assert np.mean(lateness_us > 5000) < 0.05
    stats = e.sampler_stats()
    assert stats["library_wakeups"] >= 10  # the energy counter was read on the library thread
    assert e.channel_stats(energy)["reads"] >= 10
    assert stats["library_cpu_ns"] <= stats["cpu_ns"]


def test_a_drain_returns_the_records_of_both_threads(tmp_path, fake_nvml_lib):
    e = Engine(12)
    text = e.add_text_counter(counter_file(tmp_path), 1e-6, 0.01)
    e.nvml_open(str(fake_nvml_lib))
    power = e.add_nvml_channel(0, "power_instant", 0.01)
    e.start()
    time.sleep(0.2)
    e.stop()
    assert e.pending() > 0
    recs = e.drain()
    assert e.pending() == 0
    assert {text, power} <= set(recs["channel"].tolist())
    assert recs.size == e.sampler_stats()["records_written"]


def started_counter(tmp_path, quiet_s, longest_s):
    """A running engine with one text counter read every 2 ms, backed off as given."""
    path = counter_file(tmp_path)
    e = Engine(14)
    cid = e.add_text_counter(path, 1e-6, 0.002)
    e.set_backoff(cid, quiet_s, longest_s)
    e.start()
    return e, cid, path


def test_a_quiet_channel_is_read_less_often_and_its_period_comes_back_when_it_moves(tmp_path):
    e, cid, path = started_counter(tmp_path, 0.3, 0.1)
    time.sleep(1.0)
    quiet = e.channel_stats(cid)
    assert quiet["interval_ns"] == pytest.approx(0.1e9)
    # 0.3 s at 2 ms (150 reads), then about 7 reads at 0.1 s: far from the 500 of its period
    assert 120 <= quiet["reads"] <= 250
    with open(path, "w") as f:
        f.write("2000000\n")
    time.sleep(0.15)  # less than the quiet span: not backed off again yet
    moved = e.channel_stats(cid)
    e.stop()
    assert moved["interval_ns"] == pytest.approx(0.002e9)
    assert moved["changes"] == 2
    assert moved["reads"] - quiet["reads"] > 25  # back at 2 ms after the change (~0.05-0.15 s of it)
    recs = e.drain()
    values = recs[recs["channel"] == cid]["value"]
    assert values[-1] == pytest.approx(2.0)  # nothing lost: the new value was read


def test_a_failing_channel_is_backed_off_too(tmp_path):
    e, cid, path = started_counter(tmp_path, 0.1, 0.2)
    with open(path, "w") as f:
        f.write("garbage\n")
    time.sleep(0.8)
    e.stop()
    s = e.channel_stats(cid)
    assert s["errors"] > 0 and s["interval_ns"] == pytest.approx(0.2e9)
    assert s["errors"] < 150  # 0.8 s at its 2 ms period would be 400


def test_backoff_is_refused_while_running_and_for_bad_values(tmp_path):
    e = Engine(10)
    cid = e.add_text_counter(counter_file(tmp_path), 1e-6, 0.01)
    with pytest.raises(Exception, match="must be positive"):
        e.set_backoff(cid, 1.0, -1.0)
    with pytest.raises(Exception, match="no channel"):
        e.set_backoff(cid + 5, 1.0, 1.0)
    e.start()
    try:
        with pytest.raises(Exception, match="while the sampler runs"):
            e.set_backoff(cid, 1.0, 1.0)
    finally:
        e.stop()


def _channel(reading, wrap=None, max_power_w=None, period_s=0.001):
    return Channel(1, "d", "x", reading, "energy", "J", "test", period_s, wrap=wrap, max_power_w=max_power_w)


def test_the_backoff_interval_lets_no_whole_wrap_pass_between_reads():
    assert backoff_interval_s(_channel(INSTANT_POWER)) == 1.0
    assert backoff_interval_s(_channel(COUNTER)) == 1.0  # never wraps
    # 262 kJ at 400 W wraps after 655 s: the one-second cap holds
    assert backoff_interval_s(_channel(COUNTER, wrap=262_143.0, max_power_w=400.0)) == 1.0
    # 3 J at 40 W wraps every 75 ms: read at least every 37.5 ms
    assert backoff_interval_s(_channel(COUNTER, wrap=3.0, max_power_w=40.0)) == pytest.approx(0.0375)
    # never below the channel's own period
    assert backoff_interval_s(_channel(COUNTER, wrap=3.0, max_power_w=40.0, period_s=0.05)) == 0.05


def test_the_recorder_backs_off_a_stuck_counter_and_still_reports_it(fake_powercap):
    from aipm_fast.recorder import Recorder

    pc = fake_powercap(start=False, max_energy_range_uj=262_143_328_850)  # no writer: counters stand still
    rec = Recorder(
        powercap_root=str(pc.root),
        nvml_lib="/nonexistent.so",
        msr_root="/x",
        perf_root="/x",
        backoff_quiet_s=0.3,
        stuck_after_s=0.3,
    )
    rec.start()
    time.sleep(2.5)  # quiet from 0.3 s, then doubling from 10 ms: at 1 s after about 1.3 s more
    rec.stop()
    assert rec.channels
    health = rec.health()
    for cid, ch in rec.channels.items():
        s = rec.engine.channel_stats(cid)
        longest = backoff_interval_s(ch)
        assert longest > 5 * ch.period_s
        assert s["interval_ns"] == pytest.approx(longest * 1e9), ch.name
        assert s["reads"] < 0.3 / ch.period_s + 12 + 2.5 / longest, ch.name  # not one every period
        assert health[cid] == "stuck", ch.name  # still read, still reported
    rec.close()


def test_spin_costs_are_cpu_time_and_sleep_costs_are_not(fake_nvml_lib, monkeypatch):
    def cpu_of_calls(spin: bool) -> float:
        monkeypatch.setenv("FAKE_NVML_CALL_US", "nvmlDeviceGetTotalEnergyConsumption:3000")
        monkeypatch.setenv("FAKE_NVML_CALL_SPIN", "1" if spin else "0")
        lib = ctypes.CDLL(str(fake_nvml_lib))
        assert lib.nvmlInit_v2() == 0
        dev = ctypes.c_void_p()
        assert lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(dev)) == 0
        mj = ctypes.c_ulonglong()
        t0 = time.thread_time()
        for _ in range(10):
            lib.nvmlDeviceGetTotalEnergyConsumption(dev, ctypes.byref(mj))
        cpu = time.thread_time() - t0
        lib.nvmlShutdown()
        return cpu

    assert cpu_of_calls(spin=True) >= 0.029  # ten calls of 3 ms of CPU each
    assert cpu_of_calls(spin=False) < 0.01
