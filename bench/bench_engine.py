"""Benchmarks of the sampling engine on fake hardware (run on any machine, no GPU needed).

    python bench/bench_engine.py            # prints one line per target, and JSON at the end

Targets (issue: native sampling engine):
  sampler CPU at default periods, fake RAPL (1 kHz) + fake NVML   <= 1% of one core
  records into the ring, sustained, no loss                       >= 100,000 records/s
  drain into numpy                                                >= 10 million records/s
  loop jitter p99 at 1 kHz, idle machine                          < 200 µs
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from aipm_fast._native import Engine  # noqa: E402
from aipm_fast.recorder import Recorder  # noqa: E402

from fakes.powercap import PowercapWriter, build_powercap_tree  # noqa: E402


def fake_nvml(tmp: str) -> str:
    lib = os.path.join(tmp, "libfake_nvml.so")
    subprocess.run(
        [
            "gcc",
            "-std=c11",
            "-shared",
            "-fPIC",
            "-O2",
            f"-I{os.path.join(HERE, '..', 'csrc')}",
            os.path.join(HERE, "..", "tests", "fakes", "fake_nvml.c"),
            "-o",
            lib,
        ],
        check=True,
    )
    return lib


def sampler_cpu(tmp: str, seconds: float = 10.0) -> dict:
    tree = build_powercap_tree(os.path.join(tmp, "pc"))
    writer = PowercapWriter(tree, None).start()
    try:
        rec = Recorder(
            powercap_root=str(tree.root), nvml_lib=fake_nvml(tmp), msr_root="/x", perf_root="/x", lateness=True
        )
        rec.start()
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(0.25)
            rec.drain()
        rec.stop()
        stats = rec.engine.sampler_stats()
        lat = rec.records()[rec.records()["channel"] == rec.lateness_channel]["value"] / 1e3
        channels = len(rec.channels)
        rec.close()
    finally:
        writer.stop()
    return {
        "cpu_percent_of_core": 100 * stats["cpu_ns"] / (seconds * 1e9),
        "channels": channels,
        "wakeups_per_s": stats["wakeups"] / seconds,
        "missed_deadlines": stats["missed_deadlines"],
        "lateness_p50_us": float(np.percentile(lat, 50)),
        "lateness_p99_us": float(np.percentile(lat, 99)),
        "lateness_max_us": float(lat.max()),
    }


def jitter_1khz(tmp: str, seconds: float = 10.0) -> dict:
    path = os.path.join(tmp, "counter")
    with open(path, "w") as f:
        f.write("1\n")
    e = Engine(20)
    e.add_text_counter(path, 1e-6, 0.001)
    lat_ch = e.add_lateness_channel()
    e.start()
    chunks = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.1)
        chunks.append(e.drain())
    e.stop()
    recs = np.concatenate(chunks + [e.drain()])
    lat = recs[recs["channel"] == lat_ch]["value"] / 1e3
    return {
        "wakeups": int(lat.size),
        "p50_us": float(np.percentile(lat, 50)),
        "p99_us": float(np.percentile(lat, 99)),
        "max_us": float(lat.max()),
    }


def sustained_rate(tmp: str, seconds: float = 5.0, channels: int = 8, period_s: float = 40e-6) -> dict:
    """Every reading recorded (record_unchanged), many channels at a short period, drained every 10 ms."""
    e = Engine(20)
    for i in range(channels):
        path = os.path.join(tmp, f"c{i}")
        with open(path, "w") as f:
            f.write(f"{i}\n")
        e.add_text_counter(path, 1e-6, period_s)
    e.record_unchanged(True)
    buf = np.empty(1 << 20, dtype=[("t_ns", "<i8"), ("value", "<f8"), ("channel", "<u4"), ("flags", "<u4")])
    got = 0
    e.start()
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(0.01)
        got += e.drain_into(buf)
    e.stop()
    elapsed = time.monotonic() - t0
    got += e.drain_into(buf)
    stats = e.sampler_stats()
    return {
        "records_per_s": got / elapsed,
        "overflows": stats["overflows"],
        "missed_deadlines": stats["missed_deadlines"],
        "sampler_cpu_percent": 100 * stats["cpu_ns"] / (elapsed * 1e9),
    }


def drain_rate(tmp: str) -> dict:
    e = Engine(22)
    path = os.path.join(tmp, "d")
    with open(path, "w") as f:
        f.write("1\n")
    for _ in range(8):
        e.add_text_counter(path, 1e-6, 20e-6)
    e.record_unchanged(True)
    e.start()
    while e.pending() < 2_000_000:
        time.sleep(0.05)
    e.stop()
    n = e.pending()
    t0 = time.perf_counter()
    out = e.drain()
    dt = time.perf_counter() - t0
    assert out.size == n
    return {"records": int(n), "seconds": dt, "records_per_s": n / dt}


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "machine": (
                f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"
            ),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "sampler_cpu_default_periods": sampler_cpu(tmp),
            "jitter_1khz": jitter_1khz(tmp),
            "sustained_records": sustained_rate(tmp),
            "drain": drain_rate(tmp),
        }
    s, j, r, d = (results[k] for k in ("sampler_cpu_default_periods", "jitter_1khz", "sustained_records", "drain"))
    print(
        f"sampler CPU at default periods ({s['channels']} channels): "
        f"{s['cpu_percent_of_core']:.2f}% of a core (target <= 1%)"
    )
    print(f"sustained: {r['records_per_s']:,.0f} records/s, {r['overflows']} lost (target >= 100,000/s, none lost)")
    print(f"drain: {d['records_per_s'] / 1e6:,.1f} million records/s over {d['records']:,} records (target >= 10 M/s)")
    print(
        f"jitter at 1 kHz: p50 {j['p50_us']:.1f} µs, p99 {j['p99_us']:.1f} µs, max {j['max_us']:.0f} µs "
        "(target p99 < 200 µs)"
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
