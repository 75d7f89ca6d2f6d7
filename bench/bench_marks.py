"""Cost of marks and of the coordinator that integrates them (no GPU needed; --cuda on one).

    python bench/bench_marks.py [--cuda] [--out FILE]

Targets (issue: cost near zero):
  host CPU of one CUDA-timed `with m.inference():` mark                    <= 5 µs
  coordinator's work per drain at 1,000 marks/s                             < 10% of the drain period
  the longest the coordinator holds the GIL at a time (seen by a thread
  that wakes every 0.5 ms and measures how late it runs again)              <= 2 ms

Marks are timed by: the host clock (`cpu`), the fake GPU event factory (`fake`), the CUDA runtime
path over a fake libcudart (`cudart-fake`: what the Python side of that path costs, without a
driver), and with --cuda torch's CUDA runtime (`cudart`) and torch.cuda.Event (`torch`). The
sampler reads a fake powercap tree and a fake NVML meanwhile, at default periods.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from aipm_fast import Meter  # noqa: E402
from aipm_fast.timing import EventTimer, FakeGpu, HostTimer, RuntimeEvents, cuda_timer  # noqa: E402

from bench_engine import fake_nvml, report_json  # noqa: E402
from fakes.powercap import build_powercap_tree  # noqa: E402

_loaded: list = []  # the fake runtimes this process has loaded, as torch loads its own


def fake_cudart_timer(tmp: str) -> EventTimer:
    lib_path = os.path.join(tmp, "libcudart.so.13")
    src = os.path.join(HERE, "..", "tests", "fakes", "fake_cudart.c")
    subprocess.run(["gcc", "-std=c11", "-shared", "-fPIC", "-O2", src, "-o", lib_path], check=True)
    _loaded.append(ctypes.CDLL(lib_path))
    events = RuntimeEvents(lib_path, lambda device: 0, 0)
    return EventTimer(events, lambda: None, kind="cudart-fake")


def timers(tmp: str, cuda: bool) -> dict:
    out = {"cpu": HostTimer(), "fake": FakeGpu().timer(), "cudart-fake": fake_cudart_timer(tmp)}
    if cuda:
        fast = cuda_timer()
        if fast is not None:
            out[fast.kind] = fast
        torch_events = cuda_timer(prefer_runtime=False)
        if torch_events is not None:
            out["torch"] = torch_events
    return out


def meter_options(tmp: str) -> dict:
    tree = build_powercap_tree(tempfile.mkdtemp(dir=tmp))
    return dict(powercap_root=str(tree.root), nvml_lib=fake_nvml(tmp), msr_root="/x", perf_root="/x")


MARKS, ROUNDS = 5000, 10  # marks a round, rounds a figure


def mark_cost_us(m: Meter, n: int, rounds: int, settle: bool = True) -> float:
    """Median over rounds of the host CPU per mark around no work (the coordinator integrates
    them meanwhile, on its own thread, as in a real loop). With `settle`, each round starts after
    two drain periods, in which the coordinator has timed the previous round's marks and given
    their events back: the steady state of a loop the coordinator keeps up with (at 1,000
    marks/s it times each drain's marks within that drain). Without, the rounds follow each
    other at the loop's full rate (hundreds of thousands of marks a second), which outruns the
    coordinator: the pool runs dry and events are made in the loop."""
    costs = []
    for _ in range(rounds):
        if settle:
            time.sleep(2 * m.coordinator.drain_period_s)
        c0 = time.thread_time_ns()
        for _ in range(n):
            with m.inference():
                pass
        costs.append((time.thread_time_ns() - c0) / n / 1e3)
    return float(np.median(costs))


def mark_parts_us(timer: EventTimer, n: int = 20_000) -> dict:
    """Host CPU of a CUDA mark's two outside parts, each alone in a loop: the lookup of the
    current stream (once a mark) and one event record (about once a mark where marks share
    their boundaries); what a mark costs beyond them is its Python."""
    stream, record = timer._stream, timer._record
    c0 = time.thread_time_ns()
    for _ in range(n):
        stream()
    lookup = (time.thread_time_ns() - c0) / n / 1e3
    s, ev = stream(), timer._new()
    c0 = time.thread_time_ns()
    for _ in range(n):
        record(ev, s)
    rec = (time.thread_time_ns() - c0) / n / 1e3
    timer._events.wait(ev)
    timer._events.destroy(ev)
    return {"stream_lookup": lookup, "event_record": rec}


class GilProbe(threading.Thread):
    """Sleeps 0.5 ms at a time and records how late it wakes: a late wake-up is the time another
    thread held the GIL (or the machine ran something else)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.late_us: list[float] = []
        self.stop_flag = False

    def run(self) -> None:
        while not self.stop_flag:
            t = time.perf_counter()
            time.sleep(0.0005)
            self.late_us.append((time.perf_counter() - t - 0.0005) * 1e6)


def drain_work(options: dict, timer, seconds: float, rate: float = 1000.0) -> dict:
    """A thread marks `rate` inferences a second for `seconds`; every process() of the
    coordinator is timed, and a probe thread measures how long the GIL is held."""
    m = Meter(**options, timer=timer)
    durations: list[float] = []  # CPU time of each process(): its wall time includes waits for the GIL
    walls: list[float] = []
    process = m.coordinator.process

    def timed_process(final: bool = False) -> None:
        t, c = time.perf_counter(), time.thread_time()
        process(final)
        durations.append(time.thread_time() - c)
        walls.append(time.perf_counter() - t)

    m.coordinator.process = timed_process  # type: ignore[method-assign]
    probe = GilProbe()
    with m:
        probe.start()
        with m.window("marks"):
            period = 1.0 / rate
            t_next = time.perf_counter()
            end = t_next + seconds
            while t_next < end:
                with m.inference():
                    pass
                t_next += period
                pause = t_next - time.perf_counter()
                if pause > 0:
                    time.sleep(pause)
        probe.stop_flag = True
    probe.join()
    d = np.array(durations[2:-2]) * 1e3  # the steady state: not the first drains nor the final ones
    wall = np.array(walls[2:-2]) * 1e3
    late = np.array(probe.late_us)
    drain_ms = m.coordinator.drain_period_s * 1e3
    return {
        "timer": getattr(timer, "kind", type(timer).__name__),
        "marks": int(len(m.inferences()) / max(1, len(m.domains))),
        "drains": int(d.size),
        "drain_period_ms": drain_ms,
        "work_per_drain_ms_median": float(np.median(d)),
        "work_per_drain_ms_p99": float(np.percentile(d, 99)),
        "work_per_drain_ms_max": float(d.max()),
        "work_share_of_drain_period_median": float(np.median(d) / drain_ms),
        "wall_per_drain_ms_median": float(np.median(wall)),
        "wall_per_drain_ms_p99": float(np.percentile(wall, 99)),
        "probe_late_us_p50": float(np.percentile(late, 50)),
        "probe_late_us_p99": float(np.percentile(late, 99)),
        "probe_late_us_p999": float(np.percentile(late, 99.9)),
        "probe_late_us_max": float(late.max()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cuda", action="store_true", help="also time marks with CUDA events (a GPU and torch)")
    ap.add_argument("--seconds", type=float, default=10.0, help="length of the drain measurement")
    ap.add_argument("--out", help="also write the JSON here")
    args = ap.parse_args()
    results: dict = {
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "mark_cpu_us": {},
        "mark_cpu_us_outrunning_the_coordinator": {},
        "shared_starts_fraction": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        options = meter_options(tmp)
        for name, timer in timers(tmp, args.cuda).items():
            with Meter(**options, timer=timer) as m:
                shared0 = getattr(timer, "shared_starts", 0)
                results["mark_cpu_us"][name] = mark_cost_us(m, MARKS, ROUNDS)
                if hasattr(timer, "shared_starts"):  # of the marks just made
                    results["shared_starts_fraction"][name] = (timer.shared_starts - shared0) / (MARKS * ROUNDS)
                results["mark_cpu_us_outrunning_the_coordinator"][name] = mark_cost_us(m, MARKS, ROUNDS, settle=False)
                if name in ("cudart", "cudart-fake"):
                    results.setdefault("mark_parts_us", {})[name] = mark_parts_us(timer)
        drain_timer = cuda_timer() if args.cuda else FakeGpu().timer()
        results["drain_at_1000_marks_per_s"] = drain_work(options, drain_timer, args.seconds)
    for name, us in results["mark_cpu_us"].items():
        shared = results["shared_starts_fraction"].get(name)
        print(
            f"one mark, {name} timing: {us:.2f} µs of host CPU (target <= 5 µs for CUDA-timed marks); "
            f"{results['mark_cpu_us_outrunning_the_coordinator'][name]:.2f} µs in a loop that outruns the coordinator"
            + (f"; {100 * shared:.1f}% started at the previous end" if shared is not None else "")
        )
    for name, parts in results.get("mark_parts_us", {}).items():
        print(
            f"  {name}: a stream lookup {parts['stream_lookup']:.2f} µs, an event record "
            f"{parts['event_record']:.2f} µs (each alone in a loop)"
        )
    d = results["drain_at_1000_marks_per_s"]
    print(
        f"coordinator at 1,000 marks/s ({d['timer']}): {d['work_per_drain_ms_median']:.2f} ms of CPU per "
        f"{d['drain_period_ms']:.0f} ms drain (median; p99 {d['work_per_drain_ms_p99']:.2f}, max "
        f"{d['work_per_drain_ms_max']:.2f}; target < 10%); a 0.5 ms sleeper woke late by p99 "
        f"{d['probe_late_us_p99']:.0f} µs, max {d['probe_late_us_max']:.0f} µs (GIL hold target <= 2 ms)"
    )
    report_json(results, args.out)


if __name__ == "__main__":
    main()
