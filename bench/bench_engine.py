"""Benchmarks of the sampling engine on fake hardware (run on any machine, no GPU needed).

    python bench/bench_engine.py            # prints one line per target, and JSON at the end

Targets (issues: native sampling engine; cost near zero):
  sampler CPU at default periods, fake RAPL + fake NVML of 1 GPU   <= 1% of one core
  the same with 8 GPUs                                             <= 2% of one core
  (the fake's NVML calls spin the CPU for what an H200's cost: H200_CALL_US)
  fast-thread lateness p99 with a 1 kHz channel while NVML is read < 200 µs
  records into the ring, sustained, no loss                        >= 100,000 records/s
  drain into numpy                                                 >= 10 million records/s
  loop jitter p99 at 1 kHz, idle machine                           < 200 µs

    python bench/bench_engine.py --only cpu    # just the sampler's CPU and lateness
"""

from __future__ import annotations

import argparse
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


#: CPU time of one NVML call on an H200 (bench/RESULTS.md, `aipm-fast probe`), in µs
H200_CALL_US = {
    "nvmlDeviceGetTotalEnergyConsumption": 4000,
    "nvmlDeviceGetSamples": 600,
    "nvmlDeviceGetFieldValues": 2,
    "nvmlDeviceGetUtilizationRates": 2,
    "nvmlDeviceGetMemoryInfo": 17,
}


def h200_costs(gpus: int) -> dict[str, str]:
    """The fake NVML's environment: `gpus` GPUs whose calls spin for what an H200's cost."""
    return {
        "FAKE_NVML_GPUS": str(gpus),
        "FAKE_NVML_CALL_US": ",".join(f"{fn}:{us}" for fn, us in H200_CALL_US.items()),
        "FAKE_NVML_CALL_SPIN": "1",
    }


def sampler_cpu(tmp: str, seconds: float = 10.0, gpus: int = 1, periods_s: dict | None = None) -> dict:
    """The sampler's CPU and its fast thread's lateness at default periods (or `periods_s`), fake
    RAPL (3 powercap zones) and a fake NVML of `gpus` GPUs at H200 call costs."""
    tree = build_powercap_tree(tempfile.mkdtemp(dir=tmp))
    writer = PowercapWriter(tree, None).start()
    saved = {k: os.environ.get(k) for k in h200_costs(gpus)}
    os.environ.update(h200_costs(gpus))
    try:
        rec = Recorder(
            powercap_root=str(tree.root),
            nvml_lib=fake_nvml(tmp),
            msr_root="/x",
            perf_root="/x",
            lateness=True,
            periods_s=periods_s,
        )
        rec.start()
        # CPU between two points of the steady state: the first pass and the final readings at
        # stop are a full round of every channel each, which a short run would overweigh
        time.sleep(1.0)
        rec.drain()
        before = rec.engine.sampler_stats()
        reads_before = {cid: rec.engine.channel_stats(cid)["read_ns_total"] for cid in rec.channels}
        t0 = time.monotonic()
        end = t0 + seconds
        while time.monotonic() < end:
            time.sleep(0.25)
            rec.drain()
        after = rec.engine.sampler_stats()
        seconds = time.monotonic() - t0
        reads = {cid: rec.engine.channel_stats(cid)["read_ns_total"] - reads_before[cid] for cid in rec.channels}
        rec.stop()
        stats = rec.engine.sampler_stats()
        lat = rec.records()[rec.records()["channel"] == rec.lateness_channel]["value"] / 1e3
        channels = len(rec.channels)
        per_channel = {c.name: 100 * reads[cid] / (seconds * 1e9) for cid, c in rec.channels.items()}
        rec.close()
    finally:
        writer.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return {
        "gpus": gpus,
        "cpu_percent_of_core": 100 * (after["cpu_ns"] - before["cpu_ns"]) / (seconds * 1e9),
        "library_thread_cpu_percent": 100 * (after["library_cpu_ns"] - before["library_cpu_ns"]) / (seconds * 1e9),
        "read_cpu_percent_by_channel": {k: round(v, 4) for k, v in per_channel.items() if v >= 0.001},
        "channels": channels,
        "wakeups_per_s": (after["wakeups"] - before["wakeups"]) / seconds,
        "library_wakeups_per_s": (after["library_wakeups"] - before["library_wakeups"]) / seconds,
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
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["cpu"], help="only the sampler's CPU and lateness (1 and 8 GPUs)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of each CPU measurement")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results: dict = {
            "machine": (
                f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}"
            ),
            "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "nvml_call_us": H200_CALL_US,
        }
        for gpus in (1, 8):
            results[f"sampler_cpu_default_periods_{gpus}gpu"] = sampler_cpu(tmp, args.seconds, gpus)
        # RAPL at 1 kHz (the option for high-frequency studies) beside eight GPUs' NVML calls
        results["rapl_1khz_8gpu"] = sampler_cpu(tmp, args.seconds, 8, {"rapl": 0.001})
        if args.only != "cpu":
            results["jitter_1khz"] = jitter_1khz(tmp)
            results["sustained_records"] = sustained_rate(tmp)
            results["drain"] = drain_rate(tmp)
    for gpus, target in ((1, 1.0), (8, 2.0)):
        s = results[f"sampler_cpu_default_periods_{gpus}gpu"]
        print(
            f"sampler CPU at default periods, {gpus} GPU(s) ({s['channels']} channels): "
            f"{s['cpu_percent_of_core']:.2f}% of a core (library thread {s['library_thread_cpu_percent']:.2f}%; "
            f"target <= {target:g}%); fast-thread lateness p99 {s['lateness_p99_us']:.0f} µs"
        )
    k = results["rapl_1khz_8gpu"]
    print(
        f"RAPL at 1 kHz beside 8 GPUs' NVML calls: fast-thread lateness p50 {k['lateness_p50_us']:.0f} µs, "
        f"p99 {k['lateness_p99_us']:.0f} µs (target < 200 µs), max {k['lateness_max_us']:.0f} µs; "
        f"sampler CPU {k['cpu_percent_of_core']:.2f}%"
    )
    if args.only != "cpu":
        j, r, d = (results[k] for k in ("jitter_1khz", "sustained_records", "drain"))
        print(f"sustained: {r['records_per_s']:,.0f} records/s, {r['overflows']} lost (target >= 100,000/s, none lost)")
        print(
            f"drain: {d['records_per_s'] / 1e6:,.1f} million records/s over {d['records']:,} records (target >= 10 M/s)"
        )
        print(
            f"jitter at 1 kHz: p50 {j['p50_us']:.1f} µs, p99 {j['p99_us']:.1f} µs, max {j['max_us']:.0f} µs "
            "(target p99 < 200 µs)"
        )
    report_json(results, args.out)


def report_json(results: dict, out: str | None) -> None:
    """Prints a benchmark's figures as JSON, and writes them to `out` too where given."""
    print(json.dumps(results, indent=2))
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
