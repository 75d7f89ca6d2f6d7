"""What an energy counter's steps mean: a normal increase, a wrap, a reset, a glitch, or a gap
in the readings that hides whole wraps.

A counter only ever increases, modulo its range. Any step that does not fit (a decrease that is
no plausible wrap, or an increase no device could draw) is classified, with a plausibility bound
on power (`max_power_w`, from the device's own limits where it has them, else the policy's
default) and the time since the previous reading, so that a long stall still unwraps:

- **wrap**: the step plus one range is a plausible energy for its duration;
- **gap**: the readings stopped for longer than one range takes at the bound (a ring overflow,
  a stalled reader): the number of wraps inside is inferred from the power of the neighbouring
  steps, and the step counts as that many wraps plus its remainder;
- **glitch**: one reading out of line whose neighbours agree with each other: it is dropped;
- **reset**: the counter restarted (a driver reload, a firmware update) and continues from its
  new value: the step itself is bridged at the neighbouring steps' power.

The last reading is held back while it looks like the start of a reset or glitch: the next one
tells which. Telling a glitch from a wrap needs the counter's range to exceed what the bound
allows in one step (RAPL's 262 kJ against 10 J a millisecond); on a smaller range a reading out
of line can pass for a wrap, an error of up to one range that nothing in one reading reveals.
Every event but an ordinary wrap is returned with its time, so that the curve's method and the
channel's health can report it.
"""

from __future__ import annotations

import numpy as np

RESET, GLITCH, GAP = "reset", "glitch", "gap"
NEIGHBOURS = 8  # plausible steps on each side that estimate the local power
GAP_FACTOR = 5.0  # a pause this many times the usual read interval may hide wraps


def classify(
    t_ns: np.ndarray, v: np.ndarray, wrap_j: float | None, max_power_w: float, update_s: float = 0.001
) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
    """(kept times, cumulative energy from the first kept reading, events) of a counter's
    readings (t_ns int64 sorted with distinct times, v float64).

    Events are (t_ns of the reading concerned, kind). Raises ValueError when a reset or gap has
    no plausible neighbouring step to estimate the power from."""
    dt = np.diff(t_ns) / 1e9
    dv = np.diff(v)
    allow = max_power_w * (dt + update_s)
    ok = (dv >= 0) & (dv <= allow)
    if wrap_j is not None and dt.size:
        # a pause in the readings far longer than usual, long enough to hide whole wraps
        gap = (dt * max_power_w > wrap_j) & (dt > GAP_FACTOR * np.median(dt))
        ok &= ~gap
    else:
        gap = np.zeros(dt.size, bool)
    if ok.all():
        return t_ns, np.concatenate(([0.0], np.cumsum(dv))), []
    inc = np.where(ok, dv, np.nan)
    keep = np.ones(t_ns.size, bool)
    events: list[tuple[int, str]] = []
    step_power = np.where(ok & (dt > 0), dv / np.where(dt > 0, dt, 1.0), np.nan)
    i = 0
    n = dv.size
    while i < n:
        if ok[i]:
            i += 1
            continue
        if gap[i]:
            p = _local_power(step_power, i)  # readings missing for a while
            if not np.isfinite(p):
                raise ValueError(
                    f"energy counter readings stop for {dt[i]:.3f} s at t = {int(t_ns[i])} ns, "
                    "long enough to hide wraps, with no steady reading around to tell how many"
                )
            assert wrap_j is not None
            inc[i] = dv[i] + max(0, round((p * dt[i] - dv[i]) / wrap_j)) * wrap_j
            events.append((int(t_ns[i + 1]), GAP))
            i += 1
            continue
        skip = _step(v[i], v[i + 2], t_ns[i], t_ns[i + 2], wrap_j, max_power_w, update_s) if i + 1 < n else np.nan
        wrapped = dv[i] + wrap_j if wrap_j is not None else np.nan
        # A reading out of line makes two odd steps in a row, the first of which may pass for a
        # wrap: when the next step is odd too and skipping the reading fits, it is a glitch.
        # Otherwise a plausible wrap is one; and a step that is neither, after which skipping
        # the reading fits, is a glitch too (a reset would not come back to the old count).
        glitch = np.isfinite(skip) and (not ok[i + 1] and not gap[i + 1] or not 0 <= wrapped <= allow[i])
        if glitch:
            keep[i + 1] = False
            inc[i], inc[i + 1] = 0.0, skip
            events.append((int(t_ns[i + 1]), GLITCH))
            i += 2
            continue
        if wrap_j is not None and 0 <= wrapped <= allow[i]:
            inc[i] = wrapped  # an ordinary wrap
            i += 1
            continue
        # A reading out of line upwards, but within the bound, passes as a step; the drop after
        # it then looks like a reset. When its neighbours agree with each other, it was a glitch.
        back = (
            _step(v[i - 1], v[i + 1], t_ns[i - 1], t_ns[i + 1], wrap_j, max_power_w, update_s)
            if i >= 1 and ok[i - 1] and keep[i]
            else np.nan
        )
        if np.isfinite(back):
            keep[i] = False
            inc[i - 1], inc[i] = 0.0, back
            events.append((int(t_ns[i]), GLITCH))
            i += 1
            continue
        if i + 1 >= n:
            keep[i + 1] = False  # the last reading: wait for the next
            inc[i] = 0.0
            break
        p = _local_power(step_power, i)
        if not np.isfinite(p):
            raise ValueError(
                f"energy counter reset at t = {int(t_ns[i + 1])} ns with no steady reading around it to bridge the step"
            )
        inc[i] = p * dt[i]  # a reset: bridged at the local power
        events.append((int(t_ns[i + 1]), RESET))
        i += 1
    cum = np.concatenate(([0.0], np.cumsum(inc)))
    return t_ns[keep], cum[keep], events


def _local_power(step_power: np.ndarray, i: int) -> float:
    """Median power of the plausible steps around step i (W), NaN if there are none."""
    lo = step_power[max(0, i - NEIGHBOURS) : i]
    hi = step_power[i + 1 : i + 1 + NEIGHBOURS]
    around = np.concatenate((lo[np.isfinite(lo)], hi[np.isfinite(hi)]))
    return float(np.median(around)) if around.size else float("nan")


def _step(v0, v1, t0, t1, wrap_j, max_power_w, update_s) -> float:
    """The plausible energy between two readings (with at most one wrap), NaN if none."""
    allow = max_power_w * ((t1 - t0) / 1e9 + update_s)
    d = v1 - v0
    if 0 <= d <= allow:
        return float(d)
    if wrap_j is not None and 0 <= d + wrap_j <= allow:
        return float(d + wrap_j)
    return float("nan")


def summary(events: list[tuple[int, str]]) -> str:
    """'2 resets bridged, 1 glitch dropped' ('' when there is nothing to say)."""
    words = {
        RESET: ("reset bridged", "resets bridged"),
        GLITCH: ("glitch dropped", "glitches dropped"),
        GAP: ("gap unwrapped from the neighbouring power", "gaps unwrapped from the neighbouring power"),
    }
    parts = []
    for kind in (RESET, GLITCH, GAP):
        k = sum(1 for _, e in events if e == kind)
        if k:
            parts.append(f"{k} {words[kind][k > 1]}")
    return ", ".join(parts)
