"""Marks timed by CUDA events without a GPU: the CUDA runtime path over a fake libcudart, and
the fake event factory."""

import ctypes
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from aipm_fast.timing import EventTimer, FakeGpu, RuntimeEvents, loaded_cudart, now_ns

FAKE_CUDART_SRC = Path(__file__).parent / "fakes" / "fake_cudart.c"


@pytest.fixture(scope="module")
def fake_cudart(tmp_path_factory):
    gcc = shutil.which("gcc") or pytest.skip("gcc is needed to build the fake CUDA runtime")
    out = tmp_path_factory.mktemp("cudart") / "libcudart.so.13"
    subprocess.run([gcc, "-std=c11", "-shared", "-fPIC", "-O2", str(FAKE_CUDART_SRC), "-o", str(out)], check=True)
    lib = ctypes.CDLL(str(out))
    lib.fake_cudart_records.restype = ctypes.c_ulong
    lib.path = str(out)
    return lib


def runtime_timer(lib, streams):
    def raw_stream(device):
        streams.append(device)
        return 1234

    events = RuntimeEvents(lib.path, raw_stream, device=3)
    return EventTimer(events.event, lambda: None, kind="cudart")


def test_runtime_events_time_marks_on_the_current_stream_of_the_timer_device(fake_cudart, monkeypatch):
    monkeypatch.setenv("FAKE_CUDART_LAG_US", "30000")  # the GPU runs 30 ms behind the host
    streams: list[int] = []
    timer = runtime_timer(fake_cudart, streams)
    before = fake_cudart.fake_cudart_records()
    anchor = timer.anchor
    start = timer.begin()
    time.sleep(0.01)
    end = timer.end()
    assert fake_cudart.fake_cudart_records() - before == 2  # one record per boundary
    assert streams and set(streams) == {3}
    assert timer.resolve(anchor, start, end) is None  # the GPU has not reached the end yet
    time.sleep(0.04)
    a, b = timer.resolve(anchor, start, end)
    assert (b - a) / 1e6 == pytest.approx(10.0, abs=3.0)
    assert b <= now_ns()


def test_runtime_events_are_reused_once_resolved(fake_cudart, monkeypatch):
    monkeypatch.setenv("FAKE_CUDART_LAG_US", "0")
    timer = runtime_timer(fake_cudart, [])
    pairs = [(timer.begin(), timer.end()) for _ in range(3)]
    handles = {ev.handle for pair in pairs for ev in pair}
    for s, e in pairs:
        assert timer.resolve(timer.anchor, s, e) is not None
    again = {timer.begin().handle for _ in range(6)}
    assert again == handles  # no new event while the pool has some


def test_a_runtime_error_is_raised_naming_the_call(fake_cudart):
    events = RuntimeEvents(fake_cudart.path, lambda d: 0, device=0)
    a, b = events.event(), events.event()  # never recorded
    with pytest.raises(RuntimeError, match="cudaEventElapsedTime: CUDA runtime error 400"):
        a.elapsed_time(b)


def test_the_loaded_cuda_runtime_is_found_in_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/libc.so.6\n"
        "7f02-7f03 r-xp 00000000 08:01 2 /venv/nvidia/cuda_runtime/lib/libcudart.so.13\n"
        "7f04-7f05 rw-p 00000000 00:00 0 \n"
    )
    assert loaded_cudart(str(maps)) == "/venv/nvidia/cuda_runtime/lib/libcudart.so.13"
    maps.write_text("7f00-7f01 r-xp 00000000 08:01 1 /usr/lib/libc.so.6\n")
    assert loaded_cudart(str(maps)) is None
    assert loaded_cudart(str(tmp_path / "absent")) is None


def test_fake_gpu_events_complete_when_its_queue_reaches_them():
    gpu = FakeGpu()
    timer = gpu.timer()
    s = timer.begin()
    gpu.launch(0.02)
    e = timer.end()
    assert timer.resolve(timer.anchor, s, e) is None
    gpu.synchronize()
    a, b = timer.resolve(timer.anchor, s, e)
    assert np.isclose((b - a) / 1e6, 20.0, atol=1.0)
