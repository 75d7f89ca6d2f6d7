"""Timing of marked work: host clock on the CPU, CUDA events on the GPU.

GPU work is asynchronous: the host reaches the end of `with m.inference():` long before the
GPU has run it. So on CUDA each mark records a start and an end event on the current stream,
and the coordinator later polls them with `query()` (never a synchronize in the user's hot
path). An event's time is known only relative to another event, so each window takes an
anchor: after a synchronisation, an event recorded on an idle stream runs at once, and the
host time around it maps GPU time onto CLOCK_MONOTONIC:

    host_ns(event) = anchor_host_ns + anchor.elapsed_time(event) * 1e6
"""

from __future__ import annotations

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
    (torch.cuda.Event(enable_timing=True)); `synchronize()` waits for the device. Both are
    parameters so that the mapping can be tested with a fake clock where no GPU exists."""

    def __init__(self, event_factory, synchronize):
        self._new_event = event_factory
        self._synchronize = synchronize
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


def cuda_timer():
    """An EventTimer on torch's current CUDA device, or None when CUDA is not in use."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    return EventTimer(lambda: torch.cuda.Event(enable_timing=True), torch.cuda.synchronize)
