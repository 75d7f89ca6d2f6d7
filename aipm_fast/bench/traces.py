"""Power against time from a run's raw samples: power channels thinned, energy counters differentiated."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from aipm_fast.sources.base import COUNTER, ENERGY_READINGS
from aipm_fast.storage import legacy_reading

__all__ = ["MAX_POINTS_PER_TRACE", "power_traces"]

MAX_POINTS_PER_TRACE = 4000  # points per channel drawn on the power trace


def _counter_power(t_ns: np.ndarray, value_j: np.ndarray, max_points: int):
    """Power (W) from an energy counter: the derivative between its updates.

    Readings that repeat the previous value are dropped (the counter did not update); the time
    of an update is the first reading that shows it. A decrease is a wrap (or a reset) of
    unknown range: the interval across it is left out (NaN) rather than guessed. Returns
    (t_ns of each interval's start, W over the interval, t_ns of the last interval's end),
    at most max_points intervals, each the exact mean power over the updates it spans.
    """
    changed = np.concatenate(([True], np.diff(value_j) != 0))
    t, v = t_ns[changed], value_j[changed]
    if not changed[1:].all() and t.size > 2:
        t, v = t[1:], v[1:]  # when the first value appeared is unknown
    if t.size < 2:
        return np.empty(0, np.int64), np.empty(0), None
    dt = np.diff(t).astype(np.float64) * 1e-9
    de = np.diff(v)
    good = de >= 0
    # merge intervals into at most max_points bins; a bin's power is its energy over its time
    n = dt.size
    bins = max(1, int(math.ceil(n / max_points)))
    edges = np.arange(0, n, bins)
    energy = np.add.reduceat(np.where(good, de, 0.0), edges)
    seconds = np.add.reduceat(np.where(good, dt, 0.0), edges)
    with np.errstate(invalid="ignore", divide="ignore"):
        watts = np.where(seconds > 0, energy / seconds, np.nan)
    return t[:-1][edges], watts, int(t[-1])


def _bin_mean(t_ns: np.ndarray, watts: np.ndarray, max_points: int):
    n = watts.size
    bins = max(1, int(math.ceil(n / max_points)))
    if bins == 1:
        return t_ns, watts
    edges = np.arange(0, n, bins)
    counts = np.diff(np.append(edges, n))
    return t_ns[edges], np.add.reduceat(watts, edges) / counts


def power_traces(samples: pd.DataFrame, max_points: int = MAX_POINTS_PER_TRACE, readings: dict | None = None) -> dict:
    """Power against time for every power and energy-counter channel of a samples frame.

    Returns {channel name: (t_ns int64 array, watts float64 array, kind)}, kind "power" for a
    power channel (the readings, averaged in bins down to max_points) or "counter" for an energy
    counter (its derivative, see _counter_power; t_ns are interval starts, and one more point at
    the last update closes the step). Channels with fewer than two usable points are left out.
    `readings` maps channel names to what they measure (storage.sample_readings of the file);
    without it, the names of files written before recordings carried their meaning are read.
    """
    traces = {}
    for name, group in samples.groupby("channel", sort=True, observed=True):
        name = str(name)
        reading = readings.get(name) if readings is not None else legacy_reading(name)
        if reading not in ENERGY_READINGS:
            continue
        kind = "counter" if reading == COUNTER else "power"
        group = group.sort_values("t_ns", kind="stable")
        t = group["t_ns"].to_numpy(np.int64)
        v = group["value"].to_numpy(np.float64)
        finite = np.isfinite(v)
        t, v = t[finite], v[finite]
        if kind == "power":
            t, w = _bin_mean(t, v, max_points)
        else:
            t, w, end = _counter_power(t, v, max_points)
            if end is not None and w.size:
                t, w = np.append(t, end), np.append(w, w[-1])
        if t.size >= 2 and np.isfinite(w).any():
            traces[name] = (t, w, kind)
    return traces
