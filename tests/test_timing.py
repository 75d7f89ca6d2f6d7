"""Marks timed by CUDA events without a GPU: the CUDA runtime path over a fake libcudart, and
the fake event factory."""

import ctypes
import itertools
import shutil
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from aipm_fast import timing
from aipm_fast._native import NativeError
from aipm_fast.timing import EventTimer, FakeGpu, RuntimeEvents, loaded_cudart, now_ns

FAKE_CUDART_SRC = Path(__file__).parent / "fakes" / "fake_cudart.c"


@pytest.fixture(scope="module")
def fake_cudart(tmp_path_factory):
    gcc = shutil.which("gcc") or pytest.skip("gcc is needed to build the fake CUDA runtime")
    out = tmp_path_factory.mktemp("cudart") / "libcudart.so.13"
    subprocess.run([gcc, "-std=c11", "-shared", "-fPIC", "-O2", str(FAKE_CUDART_SRC), "-o", str(out)], check=True)
    lib = ctypes.CDLL(str(out))  # loaded, as torch loads its runtime: the C side only looks it up
    lib.fake_cudart_records.restype = ctypes.c_ulong
    lib.path = str(out)
    return lib


def runtime_timer(lib, streams):
    def raw_stream(device):
        streams.append(device)
        return 1234

    events = RuntimeEvents(lib.path, raw_stream, device=3)
    return EventTimer(events, lambda: None, kind="cudart")


def test_runtime_events_time_marks_on_the_current_stream_of_the_timer_device(fake_cudart, monkeypatch):
    monkeypatch.setenv("FAKE_CUDART_LAG_US", "30000")  # the GPU runs 30 ms behind the host
    streams: list[int] = []
    timer = runtime_timer(fake_cudart, streams)
    before = fake_cudart.fake_cudart_records()
    anchor = timer.anchor
    start = timer.begin()
    time.sleep(0.01)
    end = timer.end(start)
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
    pool = {*timer._pool, timer.anchor.event}  # the first anchor took one
    assert len(pool) == timing.POOL_START  # made up front, not in the hot path
    made = []
    real_new = timer._new
    timer._new = lambda: made.append(1) or real_new()
    marks = []
    for _ in range(3 * timing.POOL_START):  # more marks than the pool holds, each resolved after it
        s = timer.begin()
        time.sleep(0.0001)
        marks.append((s, timer.end(s)))
        assert timer.resolve(timer.anchor, *marks[-1]) is not None
    used = {ev for s, e in marks for ev in (s[0], e[0])}
    assert not made and used <= pool  # every event came from the pool


def test_consecutive_marks_share_their_boundary_event(fake_cudart, monkeypatch):
    """A mark beginning right after the previous one ended starts at that end's event: one
    record per mark, and the spans tile the stream's time with nothing lost or counted twice."""
    monkeypatch.setenv("FAKE_CUDART_LAG_US", "20000")  # the GPU runs 20 ms behind
    timer = runtime_timer(fake_cudart, [])
    before = fake_cudart.fake_cudart_records()
    marks = []
    for _ in range(50):
        start = timer.begin()
        t = time.perf_counter()
        while time.perf_counter() - t < 0.0002:  # 0.2 ms of work inside the mark
            pass
        marks.append((start, timer.end(start)))
    records = fake_cudart.fake_cudart_records() - before
    assert timer.shared_starts >= 25  # of 49: only a preemption between two marks breaks the chain
    assert records == 100 - timer.shared_starts
    time.sleep(0.03)
    spans = [timer.resolve(timer.anchor, s, e) for s, e in marks]
    assert all(sp is not None for sp in spans)
    for (_, prev_end), (s, _), (prev, cur) in zip(marks, marks[1:], zip(spans, spans[1:])):
        if s is prev_end:  # shared: this mark starts exactly where the previous one ended
            assert cur[0] == prev[1]
        assert cur[0] >= prev[1]
    # every event back in the pool once, none still held for a mark
    assert len(timer._pool) == len(set(timer._pool)) and not timer._claims


def test_a_boundary_is_not_shared_across_a_gap_a_stream_a_thread_or_a_window_edge(fake_cudart, monkeypatch):
    monkeypatch.setenv("FAKE_CUDART_LAG_US", "0")
    stream = [7]
    events = RuntimeEvents(fake_cudart.path, lambda device: stream[0], device=0)
    timer = EventTimer(events, lambda: None, kind="cudart")

    def shares(between) -> bool:
        timer.end(timer.begin())
        between()
        before = timer.shared_starts
        timer.begin()
        return timer.shared_starts > before

    assert any(shares(lambda: None) for _ in range(5))  # a preemption in between may break one
    assert not shares(lambda: time.sleep(2 * timing.SHARE_GAP_NS / 1e9))  # time to launch work

    def other_stream():
        stream[0] = 8

    assert not shares(other_stream)
    assert not shares(timer.reanchor)  # a window edge: marks after it start after it
    timer.end(timer.begin())
    before = timer.shared_starts
    worker = threading.Thread(target=timer.begin)
    worker.start()
    worker.join()
    assert timer.shared_starts == before  # another thread's mark: its own start event


def test_an_end_restamped_after_a_window_edge_is_not_shared_across_it(fake_cudart, monkeypatch):
    """The meter re-stamps an end once its bookkeeping is done (`ended`); a window edge taken
    on another thread in between must still keep the next mark from starting before it."""
    monkeypatch.setenv("FAKE_CUDART_LAG_US", "0")
    timer = runtime_timer(fake_cudart, [])
    at = [time.monotonic_ns()]

    def clock() -> int:  # no time passes between a re-stamp and the next begin, on any host
        return at[0]

    end = timer.end(timer.begin())
    timer.reanchor()  # the edge, between the end and its re-stamp
    timer.ended(end, _now=clock)

    def next_shares() -> bool:
        before = timer.shared_starts
        start = timer.begin(at[0])
        timer.ended(timer.end(start), _now=clock)
        return timer.shared_starts > before

    assert not next_shares()  # its own start event, after the edge
    assert next_shares()  # and from then on marks share again


def test_an_end_given_back_by_the_coordinator_is_never_shared_afterwards(fake_cudart, monkeypatch):
    """The race between the coordinator resolving a mark and the user's next begin: whoever
    takes the end's claim first owns the event, the other leaves it alone."""
    monkeypatch.setenv("FAKE_CUDART_LAG_US", "0")
    timer = runtime_timer(fake_cudart, [])
    s = timer.begin()
    e = timer.end(s)
    assert timer.resolve(timer.anchor, s, e) is not None  # resolved at once: e's event is back
    before = fake_cudart.fake_cudart_records()
    shared = timer.shared_starts
    nxt = timer.begin()
    assert nxt is not e and timer.shared_starts == shared  # its own start, recorded now (be it the same event, reused)
    assert fake_cudart.fake_cudart_records() - before == 1


def test_a_runtime_error_is_raised_naming_the_call(fake_cudart):
    events = RuntimeEvents(fake_cudart.path, lambda d: 0, device=0)
    a, b = events.new(), events.new()  # never recorded
    with pytest.raises(RuntimeError, match="cudaEventElapsedTime: CUDA runtime error 400"):
        events.elapsed_ms(a, b)


def test_a_runtime_that_is_not_loaded_is_refused_naming_it(tmp_path):
    with pytest.raises(NativeError, match=r"libcudart\.so\.99 is not loaded in this process"):
        RuntimeEvents(str(tmp_path / "libcudart.so.99"), lambda d: 0, device=0)


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
    e = timer.end(s)
    assert timer.resolve(timer.anchor, s, e) is None
    gpu.synchronize()
    a, b = timer.resolve(timer.anchor, s, e)
    assert np.isclose((b - a) / 1e6, 20.0, atol=1.0)


def test_torch_events_share_boundaries_on_streams_that_are_equal_but_not_the_same_object():
    """torch.cuda.current_stream() makes a new Stream object each call: the timer compares
    streams by equality, and its claims hash them."""

    class Stream:
        def __init__(self, handle):
            self.handle = handle

        def __eq__(self, other):
            return isinstance(other, Stream) and other.handle == self.handle

        def __hash__(self):
            return hash(self.handle)

    gpu = FakeGpu()  # the clock behind the stand-in events

    class StandInEvent:
        def __init__(self, enable_timing=True):
            self.fake = gpu.new()

        def record(self, stream):
            assert isinstance(stream, Stream)
            gpu.record(self.fake, stream)

        def query(self):
            return gpu.query(self.fake)

        def synchronize(self):
            gpu.wait(self.fake)

        def elapsed_time(self, other):
            return gpu.elapsed_ms(self.fake, other.fake)

    class Cuda:
        Event = StandInEvent

        @staticmethod
        def current_stream():
            return Stream(7)

    class Torch:
        cuda = Cuda

    timer = EventTimer(timing.TorchEvents(Torch), lambda: None, kind="torch")
    host_ns = itertools.count(time.monotonic_ns(), 100)  # marks 100 ns apart, whatever this host's speed
    marks = []
    for _ in range(5):
        s = timer.begin(_now=host_ns.__next__)
        gpu.launch(0.002)
        marks.append((s, timer.end(s, _now=host_ns.__next__)))
    assert timer.shared_starts == 4  # every mark after the first, on a new but equal Stream object
    gpu.synchronize()
    spans = [timer.resolve(timer.anchor, s, e) for s, e in marks]
    assert [b - a for a, b in spans] == pytest.approx([2e6] * 5, abs=2e5)


def test_a_drain_of_runtime_marks_is_timed_in_one_call_up_to_the_first_unfinished(fake_cudart, monkeypatch):
    """The coordinator's resolve goes through one C call for all its marks (RuntimeEvents.times)
    and gives the same times as one query and two elapsed calls a mark; it stops at the first
    mark the GPU has not reached, and those after it wait for the next drain."""
    monkeypatch.setenv("FAKE_CUDART_LAG_US", "40000")  # the GPU runs 40 ms behind the host
    timer = runtime_timer(fake_cudart, [])
    assert timer._times == timer._events.times  # the batched path is the one in use
    marks, host_ms = [], []
    for i in range(20):
        t0 = now_ns()
        s = timer.begin()
        time.sleep(0.002)  # about 2 ms marks, each its own start (the gap breaks sharing)
        marks.append((i, "w", timer.anchor, s, timer.end(s)))
        host_ms.append((now_ns() - t0) / 1e6)
        time.sleep(0.0001)
    time.sleep(0.040 - 0.021)  # the GPU is about halfway through them
    anchors = [m[2].event for m in marks]
    starts = [m[3][0] for m in marks]
    ends = [m[4][0] for m in marks]
    n, since, duration = timer._times(anchors, starts, ends)
    assert 0 < n < 20  # some done, the rest not yet
    n_each, since_each, duration_each = timer._times_each(anchors[:n], starts[:n], ends[:n])
    assert (n_each, since_each, duration_each) == (n, since, duration)
    a, b = timer.resolve_all(marks)
    assert len(a) <= n + 1  # (the GPU moves on meanwhile)
    time.sleep(0.05)
    a2, b2 = timer.resolve_all(marks[len(a) :])
    spans = list(zip(a + a2, b + b2))
    assert len(spans) == 20
    assert [(e - s) / 1e6 for s, e in spans] == pytest.approx(host_ms, abs=0.2)  # as the host saw them
    assert all(nxt[0] > cur[1] for cur, nxt in zip(spans, spans[1:]))  # in order, apart


def test_a_runtime_error_in_a_drain_is_raised_naming_the_calls(fake_cudart):
    events = RuntimeEvents(fake_cudart.path, lambda d: 0, device=0)
    a, b = events.new(), events.new()  # never recorded: no elapsed time between them
    with pytest.raises(RuntimeError, match="cudaEventElapsedTime: CUDA runtime error 400"):
        events.times([a], [a], [b])


def test_a_marks_duration_stays_exact_when_its_anchor_lies_an_hour_back():
    """cudaEventElapsedTime gives a float of ms: an hour after the anchor its resolution is a
    quarter of a millisecond, a quarter of a 1 ms inference. The duration comes from the mark's
    own two events instead, and a start shared with the previous end is that end."""

    class Float32Gpu(FakeGpu):
        def elapsed_ms(self, start, end) -> float:
            return float(np.float32((end.t - start.t) / 1e6))

    gpu = Float32Gpu()
    timer = gpu.timer()
    anchor = timer.anchor
    hour = 3_600_000_000_000
    anchor.event.t = now_ns() - hour - 10_000_000  # an hour and 10 ms ago: the marks are done
    marks = []
    for i, (s_ns, e_ns) in enumerate([(1_100_000, 2_230_000), (2_230_000, 3_360_000)]):
        s, e = timer.begin(), None
        s[0].t = anchor.event.t + hour + s_ns
        e = timer.end(s)
        e[0].t = anchor.event.t + hour + e_ns
        if marks:  # the second starts at the first's end event
            s = marks[-1][4]
        marks.append((i, "w", anchor, s, e))
    since = gpu.elapsed_ms(anchor.event, marks[0][3][0])
    assert abs(since * 1e6 - (hour + 1_100_000)) > 10_000  # the float since the anchor is coarse
    (a0, a1), (b0, b1) = timer.resolve_all(marks)
    assert b0 - a0 == pytest.approx(1_130_000, abs=100)  # each duration to well under a µs
    assert b1 - a1 == pytest.approx(1_130_000, abs=100)
    assert a1 == b0  # tiled: the shared boundary is one time
