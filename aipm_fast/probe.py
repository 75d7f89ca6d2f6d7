"""Characterise the sources themselves: how often each value really changes, what a read costs.

The sampler reads every channel faster than its sources update, and records a reading only
when it changed; the spacing of those changes is the source's update interval.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from aipm_fast._native import FLAG_FINAL, FLAG_REPEAT
from aipm_fast.config import EngineConfig
from aipm_fast.recorder import Recorder

# Read faster than any source updates, within a budget of CPU a short study can afford.
PROBE_PERIODS_S = {
    "rapl": 0.0002,
    "nvml.power_samples": 0.1,
    "nvml.power_instant": 0.001,
    "nvml.power_average": 0.001,
    "nvml.energy": 0.02,  # ~4 ms of CPU each on an H200: 20% of a core while probing
    "nvml.utilization": 0.005,
    "nvml.memory_used": 0.005,
}


def probe_config(config: EngineConfig) -> EngineConfig:
    periods = dict(config.periods_s)
    periods.update(PROBE_PERIODS_S)
    channels = tuple(dict.fromkeys((*config.nvml_channels, "power_average")))
    # a probe studies each source at its own rate: a quiet one is not read less often
    return dataclasses.replace(config, periods_s=periods, nvml_channels=channels, backoff_quiet_s=None)


def update_intervals(t_ns: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """Seconds between successive changes; the first reading is where we started, not a change."""
    changes = t_ns[(flags & (FLAG_REPEAT | FLAG_FINAL)) == 0]
    return np.diff(changes[1:]) / 1e9 if changes.size > 2 else np.empty(0)


def run_probe(config: EngineConfig, seconds: float = 3.0, on_tick=None) -> dict:
    rec = Recorder(probe_config(config), lateness=True, stuck_after_s=min(3.0, 0.8 * seconds))
    rec.start()
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.1, max(0.0, end - time.monotonic())))
        rec.drain()
        if on_tick:
            on_tick(1 - (end - time.monotonic()) / seconds)
    rec.stop()
    records = rec.records()
    rows = []
    for st in rec.status():
        cid = next(c.id for c in rec.channels.values() if c.name == st.name)
        sel = records[records["channel"] == cid]
        iv = update_intervals(sel["t_ns"], sel["flags"])
        ch = rec.channels[cid]
        rows.append(
            {
                "channel": st.name,
                "source": st.source,
                "status": st.status,
                "read_period_ms": ch.period_s * 1e3,
                "update_median_ms": float(np.median(iv) * 1e3) if iv.size else None,
                "update_p10_ms": float(np.percentile(iv, 10) * 1e3) if iv.size else None,
                "update_p90_ms": float(np.percentile(iv, 90) * 1e3) if iv.size else None,
                "updates": int(iv.size),
                "read_cost_us": st.read_cost_us,
                "reads": st.reads,
                "errors": st.errors,
                "last_error": st.last_error,
            }
        )
    lateness = records[records["channel"] == rec.lateness_channel]["value"] / 1e3
    sampler = rec.sampler_stats()
    sampler.update(
        {
            "lateness_p50_us": float(np.percentile(lateness, 50)) if lateness.size else None,
            "lateness_p99_us": float(np.percentile(lateness, 99)) if lateness.size else None,
            "cpu_percent_of_core": 100.0 * sampler["cpu_ns"] / (seconds * 1e9),
        }
    )
    result = {
        "seconds": seconds,
        "channels": rows,
        "sampler": sampler,
        "problems": [dataclasses.asdict(p) for p in rec.discovery.problems],
        "notes": rec.discovery.notes,
        "devices": rec.discovery.devices,
    }
    rec.close()
    return result
