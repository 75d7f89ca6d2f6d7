"""Python-side sources: readings that no C channel can take (a wall meter's stream, a vendor's
Python bindings) enter the same record stream as the C ring's, stamped on the same clock
(CLOCK_MONOTONIC ns), so the recorder, the coordinator and every output treat them alike.

A producer runs its own thread, which reads its source and calls `emit(t_ns, value)`; the
recorder drains it with the C ring at each drain (`Recorder.drain`). It keeps the same
statistics as a C channel (reads, errors, changes, last error), so health is judged alike.
Channel ids come from `FIRST_ID` up, above every id the C core hands out.
"""

from __future__ import annotations

import itertools
import threading

import numpy as np

from aipm_fast._native import RECORD_DTYPE, now_ns

FIRST_ID = 256  # AIPM_MAX_CHANNELS: the C core's ids stay below it
_ids = itertools.count(FIRST_ID)
_ids_lock = threading.Lock()


def new_channel_id() -> int:
    """An id no C channel and no other producer uses."""
    with _ids_lock:
        return next(_ids)


class Producer:
    """Base of a Python-side source of one channel. Subclasses implement `run(stop_event)`,
    reading until the event is set and calling emit() / error()."""

    def __init__(self, channel_id: int, name: str):
        self.channel_id = channel_id
        self.name = name
        self._lock = threading.Lock()
        self._t: list[int] = []
        self._v: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stats = {
            "reads": 0,
            "errors": 0,
            "changes": 0,
            "read_ns_total": 0,
            "last_read_ns": 0,
            "last_change_ns": 0,
            "last_error": 0,
            "last_error_kind": 0,
            "last_value": float("nan"),
        }
        self.last_error_text = ""

    # -- called by the producer's own thread -----------------------------------------------
    def emit(self, t_ns: int, value: float) -> None:
        now = now_ns()
        with self._lock:
            s = self._stats
            s["reads"] += 1
            s["last_read_ns"] = now
            if value != s["last_value"]:
                s["changes"] += 1
                s["last_change_ns"] = now
            s["last_value"] = value
            self._t.append(int(t_ns))
            self._v.append(float(value))

    def error(self, text: str, kind: int = -4) -> None:
        """A reading that failed (kind: the AIPM_E* it is closest to, -4 'not a number')."""
        with self._lock:
            self._stats["errors"] += 1
            self._stats["last_error_kind"] = kind
            self.last_error_text = text

    def run(self, stop: threading.Event) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- called by the recorder ---------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._main, name=f"aipm-{self.name}", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        try:
            self.run(self._stop)
        except Exception as exc:  # a failing source must not go unnoticed, nor stop the others
            self.error(f"{type(exc).__name__}: {exc}", kind=-3)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def drain(self) -> np.ndarray:
        with self._lock:
            t, v = self._t, self._v
            self._t, self._v = [], []
        out = np.empty(len(t), RECORD_DTYPE)
        if t:
            out["t_ns"] = t
            out["value"] = v
            out["channel"] = self.channel_id
            out["flags"] = 0
        return out

    @property
    def note(self) -> str:
        """What the channel's health should add about this source (e.g. how its clock maps)."""
        return ""

    def stats(self) -> dict:
        with self._lock:
            return dict(self._stats)
