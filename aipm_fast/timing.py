"""Timing of marked work: host clock on the CPU, CUDA events on the GPU.

GPU work is asynchronous: the host reaches the end of `with m.inference():` long before the
GPU has run it. So on CUDA each mark records a start and an end event on the current stream,
and the coordinator later polls them with `query()` (never a synchronize in the user's hot
path). An event's time is known only relative to another event, so each window takes an
anchor: after a synchronisation, an event recorded on an idle stream runs at once, and the
host time around it maps GPU time onto CLOCK_MONOTONIC:

    host_ns(event) = anchor_host_ns + anchor.elapsed_time(event) * 1e6

A mark must cost little host CPU (a 1 ms inference has no room for 17 µs of it). The events are
therefore recorded straight through the CUDA runtime that torch has loaded (`RuntimeEvents`:
one ctypes call on a raw event handle and torch's raw current stream, no Python object per
event) where it can be found, else through torch.cuda.Event. `FakeGpu` is an event factory for
developing and testing all of this on the CPU.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import Any

now_ns = time.monotonic_ns  # CLOCK_MONOTONIC on Linux, the clock the sampler stamps with


@dataclass
class Anchor:
    event: Any  # a torch.cuda.Event, or a test's stand-in with elapsed_time()
    host_ns: int


class HostTimer:
    """CPU work: the host clock is the truth; marks are resolved as soon as they end."""

    def begin(self):
        return now_ns()

    def end(self):
        return now_ns()

    def reanchor(self):
        return None

    def window_edge(self) -> int:
        return now_ns()

    def resolve(self, anchor, start, end):
        return start, end


class EventTimer:
    """CUDA-event timing. `event_factory()` makes an event with record/query/elapsed_time
    (torch.cuda.Event(enable_timing=True), RuntimeEvents.event, FakeGpu.event); `synchronize()`
    waits for the device. Both are parameters so that the mapping can be tested with a fake
    clock where no GPU exists. `kind` says which events it records."""

    def __init__(self, event_factory, synchronize, kind: str = "events"):
        self._new_event = event_factory
        self._synchronize = synchronize
        self.kind = kind
        self.fallback_reason = ""  # why a faster kind of event was not used, where one was tried
        self._pool: list = []
        self.anchor: Anchor | None = None
        self.reanchor()

    def _event(self):
        return self._pool.pop() if self._pool else self._new_event()

    def begin(self):
        ev = self._event()
        ev.record()
        return ev

    end = begin

    def reanchor(self) -> Anchor:
        """Synchronise, record an anchor on the idle stream, take the host time around it."""
        self._synchronize()
        ev = self._new_event()
        t0 = now_ns()
        ev.record()
        ev.synchronize()
        t1 = now_ns()
        self.anchor = Anchor(ev, (t0 + t1) // 2)
        return self.anchor

    def window_edge(self) -> int:
        """A window edge waits for the GPU, so the window holds all the work issued inside it."""
        return self.reanchor().host_ns

    def resolve(self, anchor: Anchor, start, end):
        """Host times of a finished (start, end) pair, or None while the GPU is still on it."""
        if not end.query():
            return None
        a = anchor.host_ns + int(anchor.event.elapsed_time(start) * 1e6)
        b = anchor.host_ns + int(anchor.event.elapsed_time(end) * 1e6)
        self._pool += (start, end)  # events are reusable once complete: no allocation per mark
        return a, b


class RuntimeEvents:
    """CUDA events through the CUDA runtime library that torch has loaded, called with ctypes on
    raw handles: a record is one foreign call on torch's raw current stream, without the Python
    Stream object that torch.cuda.Event.record builds on each call. Same interface as a
    torch.cuda.Event factory (`event()`), so EventTimer takes either.

    The calls that return at once (create, record, query, elapsed time) keep the GIL (ctypes'
    PyDLL): letting it go and taking it back costs more than the call whenever another thread (the
    coordinator) wants it; only cudaEventSynchronize, which waits for the GPU, lets it go."""

    def __init__(self, library_path: str, raw_stream, device: int):
        cudart = ctypes.PyDLL(library_path)
        self._rt = cudart
        self._waiting = ctypes.CDLL(library_path)  # the same library: dlopen maps a file once
        self._raw_stream = raw_stream  # device index -> the current stream's cudaStream_t
        self._device = device
        vp, pvp, f = ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_float)
        for name, args in (
            ("cudaEventCreate", [pvp]),
            ("cudaEventRecord", [vp, vp]),
            ("cudaEventQuery", [vp]),
            ("cudaEventSynchronize", [vp]),
            ("cudaEventElapsedTime", [f, vp, vp]),
            ("cudaEventDestroy", [vp]),
        ):
            fn = getattr(self._waiting if name == "cudaEventSynchronize" else cudart, name)
            fn.argtypes, fn.restype = args, ctypes.c_int
        self._record_fn = cudart.cudaEventRecord

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what}: CUDA runtime error {rc}")

    def event(self) -> RuntimeEvent:
        handle = ctypes.c_void_p()
        self._check(self._rt.cudaEventCreate(ctypes.byref(handle)), "cudaEventCreate")
        return RuntimeEvent(self, handle.value)


class RuntimeEvent:
    """One CUDA event by its raw handle (created with timing enabled)."""

    __slots__ = ("_events", "handle")

    def __init__(self, events: RuntimeEvents, handle):
        self._events = events
        self.handle = handle

    def record(self) -> None:
        ev = self._events
        rc = ev._record_fn(self.handle, ev._raw_stream(ev._device))
        if rc:
            ev._check(rc, "cudaEventRecord")

    def __del__(self):
        try:
            self._events._rt.cudaEventDestroy(self.handle)
        except Exception:  # at interpreter exit the runtime may be gone: nothing to give back
            pass

    def query(self) -> bool:
        rc = self._events._rt.cudaEventQuery(self.handle)
        if rc == 600:  # cudaErrorNotReady
            return False
        self._events._check(rc, "cudaEventQuery")
        return True

    def synchronize(self) -> None:
        self._events._check(self._events._waiting.cudaEventSynchronize(self.handle), "cudaEventSynchronize")

    def elapsed_time(self, other: RuntimeEvent) -> float:
        ms = ctypes.c_float()
        self._events._check(
            self._events._rt.cudaEventElapsedTime(ctypes.byref(ms), self.handle, other.handle), "cudaEventElapsedTime"
        )
        return float(ms.value)


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
    """An event factory for developing on the CPU: a GPU whose queue runs behind the host.
    `launch(seconds)` queues that much work; an event completes once the GPU has reached it,
    and elapsed_time is the difference of GPU times, as with CUDA events."""

    def __init__(self):
        self.queue_ns = 0  # the time the GPU will reach the end of the work queued so far

    def launch(self, seconds: float) -> None:
        self.queue_ns = max(self.queue_ns, now_ns()) + int(seconds * 1e9)

    def synchronize(self) -> None:
        while now_ns() < self.queue_ns:
            time.sleep(0.0005)

    def event(self) -> FakeEvent:
        return FakeEvent(self)

    def timer(self) -> EventTimer:
        return EventTimer(self.event, self.synchronize, kind="fake")


class FakeEvent:
    __slots__ = ("gpu", "t")

    def __init__(self, gpu: FakeGpu):
        self.gpu = gpu
        self.t = 0

    def record(self) -> None:
        self.t = max(self.gpu.queue_ns, now_ns())

    def query(self) -> bool:
        return now_ns() >= self.t

    def synchronize(self) -> None:
        while not self.query():
            time.sleep(0.0005)

    def elapsed_time(self, other: FakeEvent) -> float:
        return (other.t - self.t) / 1e6


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
            return EventTimer(events.event, torch.cuda.synchronize, kind="cudart")
        except Exception as exc:  # any failure: torch's events, which always work
            why = str(exc)
    timer = EventTimer(lambda: torch.cuda.Event(enable_timing=True), torch.cuda.synchronize, kind="torch")
    timer.fallback_reason = why
    return timer
