"""The Meter's files under a hostile world: a full disk, planted links, names that would break a
CSV or become spreadsheet formulas, and processes that fork inside `with Meter(out_dir=...)`."""

from __future__ import annotations

import errno
import multiprocessing
import os
import time

import pandas as pd
import pytest

from aipm_fast import Meter, results, storage

OFF = {"msr_root": "/nonexistent", "perf_root": "/nonexistent", "nvml_lib": "/nonexistent/libnvidia-ml.so.1"}


@pytest.fixture
def options(fake_powercap):
    root, _ = fake_powercap()
    return {"powercap_root": str(root), **OFF, "cuda": False}


def marks(m, n, name="w"):
    with m.window(name):
        for _ in range(n):
            with m.inference():
                time.sleep(0.002)


def _no_space(*args):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_does_not_stall_the_meter_and_writing_resumes(options, tmp_path, monkeypatch):
    real = storage._os_write
    with Meter(**options, out_dir=str(tmp_path)) as m:
        marks(m, 20, "before")
        m.flush()
        monkeypatch.setattr(storage, "_os_write", _no_space)
        marks(m, 20, "full")
        m.flush()
        assert m.inferences()["index"].nunique() == 40  # integrated on, from memory
        stats = m.report()["files"]
        assert stats["write_errors"] > 0 and "No space left" in stats["last_error"]
        assert stats["rows_waiting"]["inferences.csv"] > 0
        monkeypatch.setattr(storage, "_os_write", real)
        marks(m, 20, "after")
        m.flush()
    report = m.report()["files"]
    assert report["rows_lost"] == {"windows.csv": 0, "inferences.csv": 0}
    on_disk = pd.read_csv(tmp_path / "inferences.csv")
    assert sorted(on_disk["index"].unique()) == list(range(60))
    assert (on_disk["status"] == "final").all()
    assert set(pd.read_csv(tmp_path / "windows.csv")["window"]) == {"before", "full", "after"}


def test_a_disk_that_stays_full_loses_counted_rows_in_bounded_memory(options, tmp_path, monkeypatch):
    monkeypatch.setattr(results, "MAX_PENDING_BYTES", 2000)
    with pytest.warns(UserWarning, match="meter.json not written"), Meter(**options, out_dir=str(tmp_path)) as m:
        monkeypatch.setattr(storage, "_os_write", _no_space)
        for k in range(5):
            marks(m, 20, f"w{k}")
            m.flush()
        waiting = sum(len(c[0]) for c in m.results._files._pending["marks"])
        assert waiting <= 2000 + 20_000  # the bound, plus at most the latest batch
    stats = m.report()["files"]
    assert stats["rows_lost"]["inferences.csv"] > 0
    assert "provisional rows are kept" in stats["last_error"]  # the final rewrite failed too
    assert len(m.windows()) > 0  # what was measured stays readable


@pytest.mark.parametrize("name", ["windows.csv", "inferences.csv"])
def test_a_planted_link_for_a_csv_is_refused(options, tmp_path, name):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / name).symlink_to(victim)
    with pytest.raises(storage.UnsafeOutputError, match=f"{name} is a symbolic link"):
        Meter(**options, out_dir=str(out))
    os.link(victim, out / "hard")
    with pytest.raises(storage.UnsafeOutputError, match="hard link"):
        storage.open_append(str(out / "hard"))
    assert victim.read_text() == "precious\n"


def test_a_planted_link_for_meter_json_is_refused(options, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "meter.json").symlink_to(victim)
    m = Meter(**options, out_dir=str(out)).start()
    marks(m, 3)
    with pytest.raises(storage.UnsafeOutputError, match="meter.json is a symbolic link"):
        m.stop()
    assert victim.read_text() == "precious\n"
    with pytest.raises(storage.UnsafeOutputError, match="symbolic link"):
        storage.write_json(str(out / "meter.json"), {})
    assert victim.read_text() == "precious\n"


NAMES = ["a\nb", "c,d", 'say "hi"', "e\rf", "=1+1", "+x", "-y", "@z", "'q"]


def test_names_with_separators_and_formulas_survive_the_csvs(options, tmp_path):
    with Meter(**options, out_dir=str(tmp_path)) as m:
        for name in NAMES:
            marks(m, 2, name)
        m.flush()
        assert set(m.inferences()["window"]) == set(NAMES)  # read back from the streamed file
    windows = pd.read_csv(tmp_path / "windows.csv", keep_default_na=False)
    raw = set(windows["window"])
    assert {"a\nb", "c,d", 'say "hi"', "e\rf"} <= raw  # quoted, whole
    assert {"'=1+1", "'+x", "'-y", "'@z", "''q"} <= raw  # never a formula
    assert not any(w.startswith(("=", "+", "-", "@")) for w in raw)
    assert set(m.inferences()["window"]) == set(NAMES)
    assert m.inferences(window="=1+1")["index"].nunique() == 2
    assert len(pd.read_csv(tmp_path / "inferences.csv")) == len(m.inferences())


def _child_uses_the_parents_meter(m, conn):
    try:
        with m.window("child"):
            with m.inference():
                pass
        m.stop()
        try:
            m.windows()
            conn.send("no error")
        except RuntimeError as exc:
            conn.send(str(exc))
    except BaseException as exc:  # report, never hang
        conn.send(f"raised {exc!r}")


def _read_all(out):
    return (out / "windows.csv").read_bytes(), (out / "inferences.csv").read_bytes()


def test_a_forked_child_neither_writes_the_parents_files_nor_deadlocks(options, tmp_path):
    with Meter(**options, out_dir=str(tmp_path)) as m:
        marks(m, 5, "parent")
        m.flush()
        before = _read_all(tmp_path)
        pid = os.fork()
        if pid == 0:  # the child leaves the `with` block normally, and exits without os._exit
            code = 0
            try:
                marks(m, 5, "child")
                m.stop()
                try:
                    m.inferences()
                    code = 3
                except RuntimeError as exc:
                    code = 0 if "is a fork of it" in str(exc) else 4
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert _read_all(tmp_path) == before
        ctx = multiprocessing.get_context("fork")
        parent_conn, child_conn = ctx.Pipe()
        for _ in range(5):  # while the coordinator thread runs and takes its lock
            p = ctx.Process(target=_child_uses_the_parents_meter, args=(m, child_conn))
            p.start()
            assert parent_conn.poll(20), "the child hung on the parent's Meter"
            assert "is a fork of it" in parent_conn.recv()
            p.join(10)
            assert p.exitcode == 0
        marks(m, 5, "parent2")
    windows = pd.read_csv(tmp_path / "windows.csv")
    assert set(windows["window"]) == {"parent", "parent2"}
    assert list(pd.read_csv(tmp_path / "windows.csv", nrows=0).columns) == results.WINDOW_COLUMNS
    inf = pd.read_csv(tmp_path / "inferences.csv")
    assert sorted(inf["index"].unique()) == list(range(10))
    assert (tmp_path / "windows.csv").read_text().count("window,window_id") == 1


def test_a_new_meter_in_a_forked_child_measures(options, tmp_path):
    with Meter(**options):
        ctx = multiprocessing.get_context("fork")
        p = ctx.Process(target=_fresh_meter, args=(options, str(tmp_path / "child")))
        p.start()
        p.join(60)
        assert p.exitcode == 0
    assert len(pd.read_csv(tmp_path / "child" / "inferences.csv")) > 0


def _fresh_meter(options, out):
    with Meter(**options, out_dir=out) as m:
        marks(m, 3)
