"""`aipm-fast record` as a hostile world treats it: killed, interrupted, signalled, full disks, bad
options. Each test runs `python -m aipm_fast.cli record` in a subprocess against the fakes."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from aipm_fast.replay import Recording
from aipm_fast.storage import read_sample_metadata

ENV_OFF = {
    "AIPM_MSR_ROOT": "/nonexistent",
    "AIPM_PERF_ROOT": "/nonexistent",
    "AIPM_POWERCAP_ROOT": "/nonexistent",
    "AIPM_NVML_LIB": "/nonexistent/libnvidia-ml.so.1",
}


@pytest.fixture
def env(fake_powercap):
    root, _ = fake_powercap()
    return {**os.environ, **ENV_OFF, "AIPM_POWERCAP_ROOT": str(root)}


def start(env, *args) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "aipm_fast.cli", "record", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def run(env, *args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "aipm_fast.cli", "record", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def wait_for(path, timeout=20.0):
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)


def test_sigkill_leaves_readable_parts_and_a_provisional_summary(env, tmp_path):
    out = tmp_path / "rec"
    env = {**env, "AIPM_PERIODS": "rapl=0.001"}  # RAPL at 1 kHz: parts of more than a thousand rows
    proc = start(env, "--duration", "60", "--out", str(out))
    try:
        wait_for(out / "summary.json")  # the first provisional summary: about 2 s in
        time.sleep(0.3)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "samples.parquet").exists()  # never finalised
    samples = pd.read_parquet(out / "samples")  # pandas reads the folder of parts directly
    assert len(samples) > 1000
    assert "rapl:package-0.energy" in set(samples["channel"].astype(str))
    assert read_sample_metadata(str(out / "samples.parquet"))["channels"]  # found through the parts
    recording = Recording(str(out / "samples.parquet"))
    assert recording.records.size == len(samples)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "provisional"
    assert summary["domains"]["rapl:package-0"]["energy_j"] > 0
    assert summary["duration_s"] >= 1.5


def test_a_finished_recording_is_one_file_and_no_parts(env, tmp_path):
    out = tmp_path / "rec"
    result = run(env, "--duration", "1.5", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert (out / "samples.parquet").is_file() and not (out / "samples").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "final"
    assert summary["samples"]["rows_lost"] == 0 and summary["samples"]["finalised"]
    assert len(pd.read_parquet(out / "samples.parquet")) == summary["samples"]["rows_written"]


CHILD_TRAPS_TERM = """
import signal, sys, time
got = []
signal.signal(signal.SIGTERM, lambda s, f: got.append(s))
print("ready", flush=True)
while not got:
    time.sleep(0.01)
open(sys.argv[1], "w").write("got SIGTERM")
time.sleep(1.0)  # a clean shutdown that takes a while: record must keep draining
sys.exit(5)
"""


def test_sigterm_is_forwarded_and_recording_goes_on_until_the_command_exits(env, tmp_path):
    out, marker = tmp_path / "rec", tmp_path / "marker"
    proc = start(env, "--out", str(out), "--drain-every", "0.05", "--", sys.executable, "-c", CHILD_TRAPS_TERM, marker)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 5, err
    assert marker.read_text() == "got SIGTERM"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "final" and summary["signals"] == ["SIGTERM"]
    assert summary["command_exit_code"] == 5 and not summary["command_killed_after_grace"]
    assert summary["sampler"]["overflows"] == 0
    t = pd.read_parquet(out / "samples.parquet")["t_ns"]
    assert (t.max() - t.min()) / 1e9 >= 1.3  # the second after SIGTERM was recorded too


CHILD_IGNORES = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
signal.signal(signal.SIGINT, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


def test_a_command_that_ignores_the_signal_is_killed_after_the_grace_period(env, tmp_path):
    out = tmp_path / "rec"
    proc = start(env, "--out", str(out), "--grace", "0.5", "--", sys.executable, "-c", CHILD_IGNORES)
    assert proc.stdout.readline().strip() == "ready"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.005)
    proc.send_signal(signal.SIGINT)  # a double Ctrl-C: forwarded, never an abort without summary
    proc.communicate(timeout=30)
    assert time.monotonic() - t0 < 10
    assert proc.returncode == 128 + signal.SIGKILL
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "final" and summary["command_killed_after_grace"]
    assert summary["signals"] == ["SIGINT", "SIGINT"]
    assert summary["command_exit_code"] == 137


def test_double_sigint_without_a_command_still_writes_the_summary(env, tmp_path):
    out = tmp_path / "rec"
    proc = start(env, "--duration", "60", "--out", str(out))
    wait_for(out / "summary.json")
    proc.send_signal(signal.SIGINT)
    time.sleep(0.002)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "final" and summary["signals"][0] == "SIGINT"
    assert (out / "samples.parquet").is_file()


@pytest.mark.parametrize(
    "code, expected",
    [
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + 15),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + 9),
        ("import sys; sys.exit(3)", 3),
    ],
)
def test_exit_codes_follow_the_shell(env, tmp_path, code, expected):
    out = tmp_path / "rec"
    result = run(env, "--out", str(out), "--", sys.executable, "-c", code)
    assert result.returncode == expected, result.stderr
    assert json.loads((out / "summary.json").read_text())["command_exit_code"] == expected


def test_command_not_found_is_127_and_not_executable_is_126(env, tmp_path):
    result = run(env, "--out", str(tmp_path / "a"), "--", str(tmp_path / "no-such-command"))
    assert result.returncode == 127 and "command not found" in result.stderr
    assert json.loads((tmp_path / "a" / "summary.json").read_text())["command_exit_code"] == 127
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    result = run(env, "--out", str(tmp_path / "b"), "--", str(script))
    assert result.returncode == 126 and "cannot run" in result.stderr


@pytest.mark.parametrize(
    "args, option",
    [
        (["--duration", "nan"], "--duration"),
        (["--duration", "inf"], "--duration"),
        (["--duration", "-1"], "--duration"),
        (["--duration", "1", "--drain-every", "5"], "--drain-every"),
        (["--duration", "1", "--drain-every", "nan"], "--drain-every"),
        (["--duration", "1", "--grace", "-1"], "--grace"),
    ],
)
def test_bad_numbers_are_click_errors_naming_the_option(tmp_path, args, option):
    result = run({**os.environ, **ENV_OFF}, *args, "--out", str(tmp_path / "x"))
    assert result.returncode == 2 and f"'{option}'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_bad_out_paths_are_click_errors_naming_the_option(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    for out in (a_file, a_file / "below"):
        result = run({**os.environ, **ENV_OFF}, "--duration", "1", "--out", str(out))
        assert result.returncode == 2 and "'--out'" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_a_planted_link_in_the_output_folder_is_refused(env, tmp_path):
    out, victim = tmp_path / "rec", tmp_path / "victim"
    out.mkdir()
    victim.write_text("precious")
    (out / "samples.parquet").symlink_to(victim)
    result = run(env, "--duration", "0.5", "--out", str(out))
    assert result.returncode == 2 and "symbolic link" in result.stderr and "samples.parquet" in result.stderr
    assert victim.read_text() == "precious"
    (out / "samples.parquet").unlink()
    (out / "summary.json").symlink_to(victim)
    result = run(env, "--duration", "0.5", "--out", str(out))
    assert victim.read_text() == "precious"
    assert "symbolic link" in result.stderr and result.returncode == 1


def test_parts_of_a_killed_recording_are_not_mixed_with_a_new_one(env, tmp_path):
    out = tmp_path / "rec"
    (out / "samples").mkdir(parents=True)
    (out / "samples" / "part-000001.parquet").write_bytes(b"earlier")
    result = run(env, "--duration", "0.5", "--out", str(out))
    assert result.returncode == 2 and "not finalised" in result.stderr


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs (root only): a real full disk."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a tmpfs")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_record_on_a_full_disk_measures_on_and_says_what_was_lost(env, tmp_path, tiny_disk):
    out = tiny_disk / "rec"
    result = run(env, "--duration", "4", "--out", str(out), "--periods", "rapl=0.001")  # fills 64 KiB
    assert result.returncode == 1
    assert "could not be written" in result.stderr
    # the final summary: on stdout (alone, without the table) when the full disk refused it, else in its file
    refused = "summary.json could not be written" in result.stderr
    summary = json.loads(result.stdout) if refused else json.loads((out / "summary.json").read_text())
    # which file meets the full disk first (a part, the merge, the summary) depends on how fast
    # the rows came; the counting itself is pinned by the ENOSPC writer tests below
    samples = summary["samples"]
    assert samples["write_errors"] > 0 or not samples["finalised"] or summary.get("summary_write_errors", 0) > 0
    assert summary["domains"]["rapl:package-0"]["energy_j"] > 0  # measuring went on
    assert summary["duration_s"] == pytest.approx(4, abs=1)


def _records(n, t0=0):
    import numpy as np

    from aipm_fast._native import RECORD_DTYPE

    r = np.zeros(n, RECORD_DTYPE)
    r["t_ns"] = np.arange(t0, t0 + n)
    r["value"] = np.arange(n, dtype=float)
    return r


def _no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_sample_writer_keeps_records_through_a_full_disk_and_resumes(tmp_path, monkeypatch):
    from aipm_fast import storage

    w = storage.ParquetSampleWriter(str(tmp_path / "samples.parquet"), ["a"], {"channels": [], "domains": {}})
    w.part_every_s = 0.0  # one part per call
    w(_records(10))
    real = storage._os_write
    monkeypatch.setattr(storage, "_os_write", _no_space)
    w(_records(10, 10))
    w(_records(10, 20))
    assert w.stats()["write_errors"] == 2 and w.stats()["rows_pending"] == 20
    assert "No space left" in w.stats()["last_error"]
    assert not [n for n in os.listdir(tmp_path / "samples") if n.startswith(".")]  # no temporary left
    monkeypatch.setattr(storage, "_os_write", real)
    w(_records(10, 30))
    w.close()
    t = pd.read_parquet(tmp_path / "samples.parquet")["t_ns"]
    assert list(t) == list(range(40)) and w.stats()["rows_lost"] == 0 and w.finalised


def test_sample_writer_memory_is_bounded_while_the_disk_is_full(tmp_path, monkeypatch):
    from aipm_fast import storage

    w = storage.ParquetSampleWriter(str(tmp_path / "samples.parquet"), ["a"], max_pending_rows=25)
    w.part_every_s = 0.0
    monkeypatch.setattr(storage, "_os_write", _no_space)
    for k in range(10):
        w(_records(10, 10 * k))
    assert w.stats()["rows_pending"] <= 30 and w.stats()["rows_lost"] >= 70
    w.close()  # the merge fails too: counted, nothing raised
    s = w.stats()
    assert s["rows_lost"] == 100 and not s["finalised"] and s["write_errors"] >= 11
