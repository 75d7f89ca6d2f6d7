"""Memory of a long session: resident memory against time while marks or records flow.

    python bench/bench_soak.py meter --minutes 15 [--out-dir]   # a Meter at 1,000 marks/s
    python bench/bench_soak.py record --minutes 15              # `aipm-fast record` at default periods

The hardware is faked as in the tests (a powercap tree whose counters a writer process advances,
and the fake NVML), at the default sampling periods. Resident memory (VmRSS) is read every 10 s;
the slope is fitted over the second half of the run, after allocators have settled, and given
per hour and per mark (or per record). Targets (issue: never a lost recording): with out_dir,
under 10 MB an hour; without it, at most 32 bytes per mark and domain.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from bench_engine import fake_nvml  # noqa: E402
from fakes.powercap import PowercapWriter, build_powercap_tree  # noqa: E402


def rss_bytes(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def fit(samples: list[tuple[float, int]]) -> dict:
    """Slope of resident memory (bytes/s) over the second half of the samples."""
    t = np.array([s[0] for s in samples])
    m = np.array([s[1] for s in samples], dtype=float)
    half = t >= t[-1] / 2
    slope = float(np.polyfit(t[half], m[half], 1)[0]) if half.sum() >= 3 else float("nan")
    return {
        "slope_bytes_per_s": slope,
        "mb_per_hour": slope * 3600 / 1e6,
        "rss_start_mb": m[0] / 1e6,
        "rss_end_mb": m[-1] / 1e6,
    }


def soak_meter(minutes: float, out_dir: str | None, tmp: str) -> dict:
    from aipm_fast import Meter

    tree = build_powercap_tree(os.path.join(tmp, "powercap"), max_energy_range_uj=262_143_328_850)
    writer = PowercapWriter(tree).start()
    samples = []
    marks = 0
    t0 = time.monotonic()
    try:
        with Meter(
            powercap_root=str(tree.root),
            nvml_lib=fake_nvml(tmp),
            msr_root="/x",
            perf_root="/x",
            hwmon_root="/x",
            cuda=False,
            out_dir=out_dir,
        ) as m:
            domains = len(m.results.domains)
            next_sample = t0
            with m.window("soak"):
                while time.monotonic() - t0 < minutes * 60:
                    deadline = time.monotonic() + 0.1
                    for _ in range(100):  # 1,000 marks/s, in bursts of 100 every 0.1 s
                        with m.inference():
                            pass
                    marks += 100
                    if time.monotonic() >= next_sample:
                        samples.append((time.monotonic() - t0, rss_bytes()))
                        next_sample += 10
                    time.sleep(max(0.0, deadline - time.monotonic()))
            kept = m.results.marks.nbytes
    finally:
        writer.stop()
    result = fit(samples)
    rate = marks / (time.monotonic() - t0)
    result.update(
        {
            "mode": "meter, out_dir" if out_dir else "meter, in memory",
            "minutes": minutes,
            "marks": marks,
            "marks_per_s": rate,
            "domains": domains,
            "bytes_per_mark_per_domain_slope": result["slope_bytes_per_s"] / rate / domains,
            "marks_kept_bytes": kept,
            "marks_kept_bytes_per_mark_per_domain": kept / marks / domains,
            "samples": samples,
        }
    )
    return result


def soak_record(minutes: float, tmp: str) -> dict:
    tree = build_powercap_tree(os.path.join(tmp, "powercap"), max_energy_range_uj=262_143_328_850)
    writer = PowercapWriter(tree).start()
    out = os.path.join(tmp, "rec")
    cmd = [
        sys.executable,
        "-m",
        "aipm_fast.cli",
        "record",
        "--duration",
        str(minutes * 60),
        "--out",
        out,
        "--powercap-root",
        str(tree.root),
        "--nvml-lib",
        fake_nvml(tmp),
        "--msr-root",
        "/x",
        "--perf-root",
        "/x",
        "--hwmon-root",
        "/x",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    samples = []
    t0 = time.monotonic()
    try:
        while proc.poll() is None:
            time.sleep(10)
            try:
                samples.append((time.monotonic() - t0, rss_bytes(proc.pid)))
            except (OSError, RuntimeError):
                break
        proc.wait()
    finally:
        writer.stop()
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    records = summary["sampler"]["records_written"]
    result = fit(samples[:-1] if len(samples) > 3 else samples)  # the last one may catch the summary
    result.update(
        {
            "mode": "record",
            "minutes": minutes,
            "records": records,
            "exit_code": proc.returncode,
            "bytes_per_record_slope": result["slope_bytes_per_s"] / (records / (minutes * 60)),
            "samples": samples,
        }
    )
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=["meter", "record"])
    p.add_argument("--minutes", type=float, default=15.0)
    p.add_argument("--out-dir", action="store_true", help="the Meter streams its results to a folder")
    p.add_argument("--json", help="write the result here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.what == "meter":
            result = soak_meter(args.minutes, os.path.join(tmp, "out") if args.out_dir else None, tmp)
        else:
            result = soak_record(args.minutes, tmp)
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    print(json.dumps({k: v for k, v in result.items() if k != "samples"}, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
