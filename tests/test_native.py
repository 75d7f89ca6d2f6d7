"""The C core through its one Python front: channels, the ring, counting what was lost."""

import errno
import os
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aipm_fast._native import FLAG_FINAL, FLAG_REPEAT, RECORD_DTYPE, Engine, NativeError, now_ns


def counter_file(tmp_path, value="1000000\n", name="energy_uj"):
    path = tmp_path / name
    path.write_text(value)
    return str(path)


def test_missing_file_is_refused_with_the_path_and_the_reason(tmp_path):
    e = Engine(10)
    with pytest.raises(NativeError, match=r"open\(.*/nope\): No such file or directory"):
        e.add_text_counter(str(tmp_path / "nope"), 1e-6, 0.001)


def test_garbage_at_setup_is_refused_as_not_a_number(tmp_path):
    e = Engine(10)
    with pytest.raises(NativeError, match="not a number"):
        e.add_text_counter(counter_file(tmp_path, "garbage\n"), 1e-6, 0.001)


def test_unchanged_reading_is_recorded_once_then_as_heartbeat_and_final(tmp_path):
    e = Engine(12)
    cid = e.add_text_counter(counter_file(tmp_path), 1e-6, 0.001)
    e.start()
    time.sleep(1.3)
    e.stop()
    recs = e.drain()
    assert recs.dtype == RECORD_DTYPE
    mine = recs[recs["channel"] == cid]
    # first reading, one heartbeat after 1 s, one final reading at stop: not 1300 copies
    assert 2 <= mine.size <= 4
    assert mine["value"][0] == pytest.approx(1.0)
    assert mine["flags"][0] == 0
    assert mine["flags"][-1] & FLAG_FINAL
    assert all(f & FLAG_REPEAT for f in mine["flags"][1:])
    stats = e.channel_stats(cid)
    assert stats["reads"] > 1000 and stats["errors"] == 0 and stats["changes"] == 1
    # alive though unchanged: the last read is recent, the last change is old
    assert stats["last_read_ns"] - stats["last_change_ns"] > 1e9


def test_records_are_stamped_with_the_monotonic_clock(tmp_path):
    e = Engine(12)
    e.add_text_counter(counter_file(tmp_path), 1e-6, 0.01)
    t0 = now_ns()
    e.start()
    time.sleep(0.05)
    e.stop()
    t1 = now_ns()
    recs = e.drain()
    assert np.all((recs["t_ns"] >= t0) & (recs["t_ns"] <= t1))


def test_ring_overflow_is_counted_when_nobody_drains(tmp_path):
    e = Engine(4)  # 16 slots
    e.add_lateness_channel()  # one record per wake-up
    e.add_text_counter(counter_file(tmp_path), 1e-6, 0.001)
    e.start()
    time.sleep(0.3)
    e.stop()
    stats = e.sampler_stats()
    assert stats["records_written"] == 16
    assert stats["overflows"] > 100
    assert e.drain().size == 16


def test_drain_in_pieces_keeps_order_across_the_ring_wrap(tmp_path):
    e = Engine(6)  # 64 slots, drained often so that the indices wrap many times
    lat = e.add_lateness_channel()
    e.add_text_counter(counter_file(tmp_path), 1e-6, 0.001)
    e.start()
    got = []
    for _ in range(40):
        time.sleep(0.01)
        got.append(e.drain(max_records=50))
    e.stop()
    got.append(e.drain())
    recs = np.concatenate(got)
    lateness = recs[recs["channel"] == lat]
    assert lateness.size > 300
    assert np.all(np.diff(lateness["t_ns"]) > 0)
    assert e.sampler_stats()["overflows"] == 0


def test_errors_mid_run_are_counted_and_the_channel_goes_on(tmp_path):
    path = counter_file(tmp_path)
    e = Engine(12)
    cid = e.add_text_counter(path, 1e-6, 0.001)
    e.start()
    time.sleep(0.1)
    with open(path, "r+") as f:
        f.write("xx garbage\n")
    time.sleep(0.1)
    with open(path, "r+") as f:
        f.truncate(0)
        f.write("2000000\n")
    time.sleep(0.1)
    e.stop()
    stats = e.channel_stats(cid)
    assert stats["errors"] > 10
    assert stats["last_error_kind"] == -4  # AIPM_EPARSE
    recs = e.drain()
    assert recs["value"][-1] == pytest.approx(2.0)


def test_removed_file_is_reported_as_gone(tmp_path):
    path = counter_file(tmp_path)
    e = Engine(12)
    cid = e.add_text_counter(path, 1e-6, 0.01)
    e.start()
    time.sleep(0.05)
    import os

    os.unlink(path)
    time.sleep(1.2)  # removal is checked at heartbeat rate
    e.stop()
    stats = e.channel_stats(cid)
    assert stats["errors"] >= 1 and stats["last_error_kind"] == -9  # AIPM_EGONE


def test_channels_cannot_be_added_while_running(tmp_path):
    e = Engine(10)
    e.add_text_counter(counter_file(tmp_path), 1e-6, 0.01)
    e.start()
    try:
        with pytest.raises(NativeError, match="while the sampler runs"):
            e.add_text_counter(counter_file(tmp_path, name="other"), 1e-6, 0.01)
    finally:
        e.stop()


def test_nvml_library_that_is_missing_is_explained():
    e = Engine(10)
    with pytest.raises(NativeError, match=r"dlopen\(/no/such/libnvidia-ml.so\)"):
        e.nvml_open("/no/such/libnvidia-ml.so")


def test_setup_errors_carry_the_os_errno(tmp_path):
    e = Engine(10)
    with pytest.raises(NativeError) as info:
        e.add_text_counter(str(tmp_path / "nope"), 1e-6, 0.001)
    assert info.value.errno == errno.ENOENT
    assert info.value.code == -2  # AIPM_EOPEN


def test_setup_errors_carry_the_nvml_code(fake_nvml_lib, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_INIT_FAIL", "1")
    e = Engine(10)
    with pytest.raises(NativeError, match="NVML error 999") as info:
        e.nvml_open(str(fake_nvml_lib))
    assert info.value.code == -6 and info.value.errno == 999  # AIPM_ENVML, NVML_ERROR_UNKNOWN


def test_errors_without_an_os_cause_have_no_errno(tmp_path):
    e = Engine(10)
    with pytest.raises(NativeError) as info:
        e.add_text_counter(counter_file(tmp_path, "garbage\n"), 1e-6, 0.001)
    assert info.value.errno is None
    assert NativeError(-7, "bad argument").errno is None  # the two-argument form still works


def test_start_fails_when_the_first_pass_of_readings_is_too_slow(fake_nvml_lib, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_CALL_US", "nvmlDeviceGetTotalEnergyConsumption:150000")
    e = Engine(10)
    e.nvml_open(str(fake_nvml_lib))
    cid = e.add_nvml_channel(0, "energy", 0.001)
    with pytest.raises(NativeError, match="first pass of readings did not finish within 0.030 s") as info:
        e.start(first_pass_limit_s=0.03)
    assert info.value.code == -10  # AIPM_ETIMEOUT
    assert not e.running
    assert e.channel_stats(cid)["reads"] >= 1  # the slow read did finish, after the limit
    e.close()


def test_start_waits_for_a_slow_first_pass_within_its_limit(fake_nvml_lib, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_CALL_US", "nvmlDeviceGetTotalEnergyConsumption:50000")
    e = Engine(10)
    e.nvml_open(str(fake_nvml_lib))
    cid = e.add_nvml_channel(0, "energy", 1.0)
    e.start()
    assert e.channel_stats(cid)["reads"] == 1  # the first reading is in before start returns
    e.stop()
    e.close()


def test_an_engine_without_polled_channels_starts_at_once():
    e = Engine(10)
    e.add_lateness_channel()
    t0 = time.monotonic()
    e.start(first_pass_limit_s=0.5)
    assert time.monotonic() - t0 < 0.2
    e.stop()


# -- the text parser: digits and at most a trailing newline, nothing else -----------------------


def strict_counter(text: str) -> int | None:
    """What a text counter must hold: an unsigned 64-bit decimal, digits only, at most one
    trailing newline; None where the file is not a number."""
    if re.fullmatch(r"[0-9]{1,20}\n?", text) is None:
        return None
    value = int(text)
    return value if value < 2**64 else None


counter_texts = st.one_of(
    st.text(alphabet="0123456789+- \t\nx.e", max_size=30),
    st.integers(min_value=-(2**65), max_value=2**65).map(lambda v: f"{v}\n"),
    st.builds(
        lambda pad, v, tail: f"{pad}{v}{tail}",
        st.sampled_from(["", " ", "+", "0", "\t"]),
        st.integers(min_value=0, max_value=2**64 + 5),
        st.sampled_from(["", "\n", " \n", "\n\n", "\n5", "x"]),
    ),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=counter_texts)
def test_text_counter_gives_exactly_the_numbers_a_strict_parser_accepts(tmp_path, text):
    path = tmp_path / "energy_uj"
    path.write_text(text)
    e = Engine(4)
    want = strict_counter(text)
    try:
        if want is None:
            with pytest.raises(NativeError, match="not a number"):
                e.add_text_counter(str(path), 1.0, 0.001)
        else:
            cid = e.add_text_counter(str(path), 1.0, 0.001)
            assert e.channel_stats(cid)["errors"] == 0
            e.start()
            e.stop()
            assert e.drain()["value"][0] == float(want)
    finally:
        e.close()


@pytest.mark.parametrize("bad", ["-5\n", "+5\n", " 5\n", "5 \n", "18446744073709551616\n", "1" * 21 + "\n", "7\n" * 40])
def test_a_counter_that_turns_into_no_number_mid_run_counts_errors_never_values(tmp_path, bad):
    path = counter_file(tmp_path, "1000000\n")
    e = Engine(12)
    cid = e.add_text_counter(path, 1e-6, 0.001)
    e.start()
    time.sleep(0.02)
    with open(path, "w") as f:
        f.write(bad)
    time.sleep(0.03)
    e.stop()
    stats = e.channel_stats(cid)
    assert stats["errors"] > 5 and stats["last_error_kind"] == -4  # AIPM_EPARSE, "not a number"
    assert set(e.drain()["value"]) == {1.0}  # only the good reading, never the bad text read as a number


def test_a_fifo_is_refused_at_once_naming_the_file(tmp_path):
    fifo = tmp_path / "energy_uj"
    os.mkfifo(fifo)
    e = Engine(4)
    t0 = time.monotonic()
    with pytest.raises(NativeError, match=r"energy_uj\): a FIFO, not a file that can be read as a counter"):
        e.add_text_counter(str(fifo), 1e-6, 0.001)
    with pytest.raises(NativeError, match="a directory"):
        e.add_text_counter(str(tmp_path), 1e-6, 0.001)
    assert time.monotonic() - t0 < 1.0


# -- a hostile NVML library: counts clamped, strings checked, unknown types refused -------------


def hostile_nvml(fake_nvml_lib, monkeypatch, faults: str) -> Engine:
    monkeypatch.setenv("FAKE_NVML_FAULT", faults)
    e = Engine(12)
    e.nvml_open(str(fake_nvml_lib))
    return e


def test_a_library_that_claims_more_samples_than_the_buffer_holds_is_clamped(fake_nvml_lib, monkeypatch):
    e = hostile_nvml(fake_nvml_lib, monkeypatch, "oversized_samples")
    cid = e.add_nvml_channel(0, "power_samples", 0.005)
    e.start()
    time.sleep(0.2)
    e.stop()
    mine = e.drain()
    mine = mine[mine["channel"] == cid]
    assert 5 <= mine.size <= 512  # at most one buffer's worth, nothing read past it
    assert set(mine["value"]) == {100.0}  # const:100 W, no garbage from beyond the buffer
    assert np.all(np.diff(mine["t_ns"]) > 0)
    e.close()


def test_an_error_string_that_is_null_gives_a_placeholder(fake_nvml_lib, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_LOSE_GPU_AFTER_S", "0.05")
    e = hostile_nvml(fake_nvml_lib, monkeypatch, "null_error_string")
    assert e.nvml_error_string(15) == "unknown NVML error"
    time.sleep(0.06)  # the GPU is lost after its handle was taken: the next call fails
    with pytest.raises(NativeError, match=r"GPU 0: unknown NVML error \(NVML error 15\)"):
        e.add_nvml_channel(0, "energy", 0.01)
    e.close()


def test_samples_of_an_unknown_value_type_are_errors_not_zero_watts(fake_nvml_lib, monkeypatch):
    e = hostile_nvml(fake_nvml_lib, monkeypatch, "bad_value_type,unterminated_name")
    assert e.nvml_device_name(0) == "X" * 95  # cut to the buffer, terminated
    with pytest.raises(NativeError, match="NVML error 999"):
        e.add_nvml_channel(0, "power_instant", 0.01)
    cid = e.add_nvml_channel(0, "power_samples", 0.005)  # its setup reads no value
    e.start()
    time.sleep(0.1)
    e.stop()
    assert e.drain().size == 0
    stats = e.channel_stats(cid)
    assert stats["errors"] > 5 and stats["last_error_kind"] == -6 and stats["last_error"] == 999
    e.close()


def test_a_recorder_summary_survives_an_nvml_without_error_strings(fake_nvml_lib, monkeypatch):
    from aipm_fast.recorder import Recorder

    monkeypatch.setenv("FAKE_NVML_FAULT", "null_error_string")
    monkeypatch.setenv("FAKE_NVML_LOSE_GPU_AFTER_S", "0.3")
    rec = Recorder(
        nvml_lib=str(fake_nvml_lib), msr_root="/nonexistent", perf_root="/nonexistent", powercap_root="/nonexistent"
    )
    rec.start()
    time.sleep(0.5)
    rec.drain()
    summary = rec.summary()
    rec.close()
    errors = {c["name"]: c["last_error"] for c in summary["channels"]}
    assert errors["nvml:0.power_instant"] == "unknown NVML error (NVML error 15)"
