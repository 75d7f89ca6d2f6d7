"""Helpers for tests that record from fakes."""

import time


def drain_for(rec, seconds: float, every_s: float = 0.1):
    """Start `rec` (a Recorder), drain it every `every_s` for `seconds`, close it; returns it."""
    rec.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(every_s)
        rec.drain()
    rec.close()
    return rec
