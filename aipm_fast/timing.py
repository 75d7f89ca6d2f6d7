"""Timing of marked work: host clock on the CPU, CUDA events on the GPU.

GPU work is asynchronous: the host reaches the end of `with m.inference():` long before the
GPU has run it. So on CUDA each mark boundary is an event recorded on the current stream, and
the coordinator later polls them with `query()` (never a synchronize in the user's hot path).
An event's time is known only relative to another event, so each window takes an anchor: after
a synchronisation, an event recorded on an idle stream runs at once, and the host time around it
maps GPU time onto CLOCK_MONOTONIC:

    host_ns(start) = anchor_host_ns + elapsed_ms(anchor, start) * 1e6
    host_ns(end)   = host_ns(start) + elapsed_ms(start, end) * 1e6

(the end from the mark's own duration: elapsed times are floats of ms, whose resolution since an
anchor an hour back is a quarter of a millisecond; a duration's stays near the events' own; a
start shared with the previous mark's end is that end's host time, so that consecutive spans
tile).

A mark must cost little host CPU (a 1 ms inference has no room for 17 µs of it), so:

- events come from a pool (`POOL_START` made up front, each returned once the coordinator has
  read it), never made in the hot path while the pool has some;
- consecutive marks share their boundary: a mark that begins on the same thread and stream
  within `SHARE_GAP_NS` of the previous mark's end (counted from `ended`, once the caller's
  bookkeeping of it is done) takes that end's event as its start instead of recording a new one
  (what a boundary means: see `SHARE_GAP_NS`);
- a mark looks up the current stream once: its end is recorded on the stream its begin found;
- the coordinator times all of a drain's finished marks in one call (`times`, where the backend
  has it), so that it gives the GIL up once a drain rather than three times a mark;
- where torch's CUDA runtime can be reached, a record is one call into the C extension on a raw
  event handle and torch's raw current stream (`RuntimeEvents`, over `_native.CudaRuntime`), no
  Python object per event; else torch.cuda.Event (`TorchEvents`).

`EventTimer` holds that policy over an event backend (`RuntimeEvents`, `TorchEvents`, or
`FakeGpu`, an event factory for developing and testing all of this on the CPU). A backend has
`new()`, `stream()`, `record(event, stream)` (a falsy return on success, else an error code),
`query(event)`, `elapsed_ms(start, end)`, `wait(event)`, `destroy(event)` and
`check(code, what)`, and optionally `times(anchors, starts, ends)` (see EventTimer._times_each).
"""

from __future__ import annotations

import functools
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

from aipm_fast._native import CudaRuntime

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux, the clock the sampler stamps with

#: A mark that begins within this long (host time) of the previous mark's end, on the same thread
#: and stream, starts at that end's event: nothing can have been queued on the stream between
#: them (launching any GPU work costs the host more than this: a kernel launch or a graph replay
#: takes microseconds in the driver alone), so a new event would run at the same point of the
#: stream. A longer gap, another stream, another thread or a window edge between them: a new event.
SHARE_GAP_NS = 2_000

#: events made when a timer is created: the marks of a drain period (0.1 s) at 1,000 marks/s
#: with room to spare; the pool grows in the hot path only beyond that
POOL_START = 256


@dataclass
class Anchor:
    event: Any  # an event of the timer's backend
    host_ns: int


class HostTimer:
    """CPU work: the host clock is the truth; marks are resolved as soon as they end."""

    anchor = None  # host times need none

    def begin(self, now=None):
        return now_ns() if now is None else now

    def end(self, start=None):
        return now_ns()

    def ended(self, claim) -> None:
        pass  # host marks share nothing

    def reanchor(self):
        return None

    def window_edge(self) -> int:
        return now_ns()

    def resolve_all(self, marks) -> tuple[list[int], list[int]]:
        """(start ns, end ns) of every mark: all of them are done."""
        return [m[3] for m in marks], [m[4] for m in marks]

    def resolve(self, anchor, start, end):
        return start, end


class EventTimer:
    """CUDA-event timing over an event backend (see the module's docstring); `synchronize()`
    waits for the device. Both are parameters so that the mapping can be tested with a fake
    clock where no GPU exists. `kind` says which events it records.

    Tokens: `begin()` returns `(event, stream)`, or the previous mark's end claim when it shares
    that boundary; `end(start)` records on the start's stream (the stream the mark's work was
    queued on: one lookup of the current stream a mark) and returns a claim `(event, stream,
    thread id, window edges so far)`; `ended(claim)`, once the caller's bookkeeping is done,
    starts the gap that a next begin must fall within to share. A token's event is its [0] and
    its stream its [1]. The claim decides who gives the end's event back to the pool, once: a
    next mark that takes it as its start (then that mark gives it back as its start), or else the
    coordinator when it resolves the mark. Both take the claim out of `_claims` with one
    dict.pop, which the GIL makes atomic, so an event is never given back while a mark still
    needs it."""

    def __init__(self, events, synchronize, kind: str = "events"):
        self._events = events
        self._synchronize = synchronize
        self.kind = kind
        self.fallback_reason = ""  # why a faster kind of event was not used, where one was tried
        # the backend's calls, bound once: the hot path looks up nothing else
        self._new = events.new
        self._stream = events.stream
        self._record = events.record
        self._query = events.query
        self._elapsed = events.elapsed_ms
        # many marks' times in one call where the backend has it (RuntimeEvents), else one by one
        self._times = getattr(events, "times", None) or self._times_each
        self._pool: list = [events.new() for _ in range(POOL_START)]
        self._claims: dict[tuple, bool] = {}
        self._last: tuple | None = None  # (the latest end's claim, host ns), for the next begin to share
        self._resolved_end: tuple = (None, 0)  # the latest resolved mark's (end claim, host ns)
        self.shared_starts = 0  # marks that began at the previous mark's end event
        self._edges = 0  # window edges so far: a claim made before the latest one is never shared
        self.anchor: Anchor | None = None
        self.reanchor()

    def _recorded(self, stream):
        """An event from the pool (a new one when it is empty), recorded on `stream`."""
        try:
            ev = self._pool.pop()
        except IndexError:  # empty (or emptied by another thread since): a new one
            ev = self._new()
        if rc := self._record(ev, stream):
            self._events.check(rc, "cudaEventRecord")
        return ev

    # begin and end run once each per mark in the user's loop: every name they use is a local or
    # one attribute away
    def begin(self, now=None, _now=now_ns, _ident=threading.get_ident, _gap=SHARE_GAP_NS):
        # the gap is the user's time between two marks: from the previous end (`ended`) to
        # `now`, the time the caller began this one (the Meter takes it before its own
        # bookkeeping), else taken here before the stream lookup. What the meter and the timer
        # do on either side queues nothing, and in a loop of real inferences, whose work has
        # taken the host's caches, it alone takes longer than the gap
        if now is None:
            now = _now()
        stream = self._stream()
        last = self._last
        if last is not None:
            claim, ended_ns = last
            if (
                claim[1] == stream
                and now - ended_ns <= _gap
                and claim[2] == _ident()
                and claim[3] == self._edges
                and self._claims.pop(claim, None) is not None
            ):
                self.shared_starts += 1
                return claim
        return self._recorded(stream), stream

    def end(self, start, _now=now_ns, _ident=threading.get_ident):
        stream = start[1]
        ev = self._recorded(stream)
        claim = (ev, stream, _ident(), self._edges)
        self._claims[claim] = True  # before _last: a begin that sees the claim finds it here
        self._last = (claim, _now())
        return claim

    def ended(self, claim, _now=now_ns) -> None:
        """The caller's bookkeeping after `end` is done: the gap to the next begin counts from
        now. One assignment: if another thread ended a mark since, its claim is no longer the
        latest, and its next begin records its own start (sharing is only ever given up)."""
        self._last = (claim, _now())

    def reanchor(self) -> Anchor:
        """Synchronise, record an anchor on the idle stream, take the host time around it."""
        self._synchronize()
        # no mark after this edge starts at an event before it (begin compares a claim's count),
        # even one whose end another thread re-stamps (`ended`) after the edge
        self._edges += 1
        t0 = now_ns()
        ev = self._recorded(self._stream())
        self._events.wait(ev)
        t1 = now_ns()
        self.anchor = anchor = Anchor(ev, (t0 + t1) // 2)
        # the anchor's event goes back to the pool once no mark refers to the anchor any more
        weakref.finalize(anchor, self._pool.append, ev)
        return anchor

    def window_edge(self) -> int:
        """A window edge waits for the GPU, so the window holds all the work issued inside it."""
        return self.reanchor().host_ns

    def _times_each(self, anchors, starts, ends) -> tuple[int, list[float], list[float]]:
        """The backend-neutral form of RuntimeEvents.times: one query and two elapsed calls a mark."""
        since: list[float] = []
        duration: list[float] = []
        for anchor, start, end in zip(anchors, starts, ends):
            if not self._query(end):
                break
            since.append(self._elapsed(anchor, start))
            duration.append(self._elapsed(start, end))
        return len(since), since, duration

    def resolve_all(self, marks) -> tuple[list[int], list[int]]:
        """Host (start ns, end ns) of the leading marks the GPU has finished, in the order they
        ended (a stream runs its events in order: the first unfinished one stops the rest), from
        mark tuples (index, window, anchor, start token, end claim). A mark's start is placed by
        the elapsed time since its anchor; its end by its own duration after that, which stays
        exact when the anchor lies an hour back (a float of ms since it does not); a start shared
        with the previous mark's end is that end's time. A mark whose start is the previous
        mark's end comes after it, so that event goes back to the pool once both are read."""
        if not marks:
            return [], []
        anchors = [m[2].event for m in marks]
        starts = [m[3][0] for m in marks]
        ends = [m[4][0] for m in marks]
        n, since, duration = self._times(anchors, starts, ends)
        a_ns: list[int] = []
        b_ns: list[int] = []
        pool, claims = self._pool, self._claims
        last_claim, last_ns = self._resolved_end
        for k in range(n):
            mark = marks[k]
            # a start shared with the previous mark's end is that end, to the ns: the spans tile
            a = last_ns if mark[3] is last_claim else mark[2].host_ns + round(since[k] * 1e6)
            last_claim, last_ns = mark[4], a + round(duration[k] * 1e6)
            a_ns.append(a)
            b_ns.append(last_ns)
            pool.append(starts[k])  # complete, and this mark was its last user
            if claims.pop(mark[4], None) is not None:  # no next mark took the end as its start
                pool.append(ends[k])
        self._resolved_end = last_claim, last_ns
        return a_ns, b_ns

    def resolve(self, anchor: Anchor, start, end):
        """One mark's host times (resolve_all of one), or None while the GPU is still on it."""
        a, b = self.resolve_all([(0, "", anchor, start, end)])
        return (a[0], b[0]) if a else None

    def __del__(self):
        destroy = getattr(self._events, "destroy", None)
        try:
            for ev in getattr(self, "_pool", ()):
                destroy(ev)
        except Exception:  # at interpreter exit the runtime may be gone: nothing to give back
            pass


class RuntimeEvents:
    """CUDA events through the CUDA runtime library that torch has loaded, called from the C
    extension (`_native.CudaRuntime`) on raw handles: a record is one cffi call on torch's raw
    current stream, without the Python Stream object that torch.cuda.Event.record builds on each
    call. `raw_stream(device)` gives the current stream's cudaStream_t as an int."""

    def __init__(self, library_path: str, raw_stream, device: int):
        self._rt = CudaRuntime(library_path)
        self.record = self._rt.record  # (event, stream) -> cudaError_t, 0 on success
        self.stream = functools.partial(raw_stream, device)

    def check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what}: CUDA runtime error {rc}")

    def new(self) -> int:
        rc, handle = self._rt.create()
        self.check(rc, "cudaEventCreate")
        return handle

    def query(self, event: int) -> bool:
        rc = self._rt.query(event)
        if rc == 600:  # cudaErrorNotReady
            return False
        self.check(rc, "cudaEventQuery")
        return True

    def wait(self, event: int) -> None:
        self.check(self._rt.synchronize(event), "cudaEventSynchronize")

    def elapsed_ms(self, start: int, end: int) -> float:
        rc, ms = self._rt.elapsed_ms(start, end)
        self.check(rc, "cudaEventElapsedTime")
        return ms

    def times(self, anchors, starts, ends) -> tuple[int, list[float], list[float]]:
        """EventTimer._times_each in one C call (csrc/cudart.c: aipm_cudart_resolve): the
        coordinator then gives the GIL up once a drain, not three times a mark."""
        rc, n, since, duration = self._rt.resolve(anchors, starts, ends)
        self.check(rc, "cudaEventQuery/cudaEventElapsedTime")
        return n, since, duration

    def destroy(self, event: int) -> None:
        self._rt.destroy(event)


class TorchEvents:
    """torch.cuda.Event objects: what works wherever torch does, at a Python Stream object and
    a torch call per record."""

    def __init__(self, torch):
        self._cuda = torch.cuda

    def new(self):
        return self._cuda.Event(enable_timing=True)

    def stream(self):
        return self._cuda.current_stream()

    def record(self, event, stream) -> None:
        event.record(stream)

    def query(self, event) -> bool:
        return event.query()

    def wait(self, event) -> None:
        event.synchronize()

    def elapsed_ms(self, start, end) -> float:
        return start.elapsed_time(end)

    def destroy(self, event) -> None:
        pass  # torch's own object gives its event back

    def check(self, rc, what: str) -> None:
        raise RuntimeError(f"{what}: {rc!r}")


def loaded_cudart(maps_path: str = "/proc/self/maps") -> str | None:
    """The path of the CUDA runtime library this process has mapped (torch's own), or None: the
    events must be made by the same runtime instance as torch's streams."""
    try:
        with open(maps_path) as f:
            for line in f:
                path = line.rsplit(None, 1)[-1] if "/" in line else ""
                if "/libcudart.so" in path:
                    return path
    except OSError:
        return None
    return None


class FakeGpu:
    """An event backend for developing on the CPU: a GPU whose queue runs behind the host.
    `launch(seconds)` queues that much work; an event completes once the GPU has reached it,
    and elapsed times are differences of GPU times, as with CUDA events. One stream."""

    def __init__(self):
        self.queue_ns = 0  # the time the GPU will reach the end of the work queued so far

    def launch(self, seconds: float) -> None:
        self.queue_ns = max(self.queue_ns, now_ns()) + int(seconds * 1e9)

    def synchronize(self) -> None:
        while now_ns() < self.queue_ns:
            time.sleep(0.0005)

    def new(self) -> FakeEvent:
        return FakeEvent()

    def stream(self) -> int:
        return 0

    def record(self, event: FakeEvent, stream) -> None:
        event.t = max(self.queue_ns, now_ns())

    def query(self, event: FakeEvent) -> bool:
        return now_ns() >= event.t

    def wait(self, event: FakeEvent) -> None:
        while not self.query(event):
            time.sleep(0.0005)

    def elapsed_ms(self, start: FakeEvent, end: FakeEvent) -> float:
        return (end.t - start.t) / 1e6

    def destroy(self, event: FakeEvent) -> None:
        pass

    def check(self, rc, what: str) -> None:
        raise RuntimeError(f"{what}: {rc!r}")

    def timer(self) -> EventTimer:
        return EventTimer(self, self.synchronize, kind="fake")


class FakeEvent:
    __slots__ = ("t",)

    def __init__(self):
        self.t = 0  # the GPU time it was reached at; 0: never recorded


def cuda_timer(prefer_runtime: bool = True):
    """An EventTimer on torch's current CUDA device, or None when CUDA is not in use. Its events
    go through the CUDA runtime directly (kind "cudart") where torch's runtime library and raw
    streams can be reached and a first anchor works, else through torch.cuda.Event (kind
    "torch", with `fallback_reason` saying why)."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    why = "not asked for"
    if prefer_runtime:
        try:
            path = loaded_cudart()
            raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
            if path is None or raw_stream is None:
                raise RuntimeError("torch's CUDA runtime library or raw streams are not reachable")
            torch.cuda.init()
            events = RuntimeEvents(path, raw_stream, torch.cuda.current_device())
            return EventTimer(events, torch.cuda.synchronize, kind="cudart")
        except Exception as exc:  # any failure: torch's events, which always work
            why = str(exc)
    timer = EventTimer(TorchEvents(torch), torch.cuda.synchronize, kind="torch")
    timer.fallback_reason = why
    return timer
