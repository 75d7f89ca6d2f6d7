"""Throughput of EnergyCurve.energy: intervals per second (target: at least 1 million/s).

Times energy() on 1e6 and 1e7 random intervals (random starts over the curve's span,
random lengths up to 1 s, in random order, so no cache-friendly sorting helps) over
curves of 1e5 knots: a 50 Hz power trace (trapezoid with interpolated edges) and a
counter (linear between updates). Reports the best of a few repeats.

    python bench/bench_energy.py [--repeats N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))

from aipm_fast.energy import counter_curve, power_curve  # noqa: E402

KNOTS = 100_000
PERIOD_NS = 20_000_000  # 50 Hz
T0 = 1_000_000 * 1_000_000_000
TARGET_PER_S = 1_000_000


def make_curves(rng):
    t = T0 + np.arange(KNOTS, dtype=np.int64) * PERIOD_NS
    watts = 300.0 + 200.0 * rng.random(KNOTS)
    trace = power_curve(t, watts)
    counter = counter_curve(t, 1000.0 + np.cumsum(watts * PERIOD_NS / 1e9))
    return {"power trace": trace, "counter": counter}


def intervals(rng, curve, n):
    a = rng.integers(curve.start_ns, curve.end_ns - 1_000_000_000, size=n, dtype=np.int64)
    b = a + rng.integers(0, 1_000_000_000, size=n, dtype=np.int64)
    return a, b


def best_seconds(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    curves = make_curves(rng)
    rates = {}
    for name, curve in curves.items():
        for n in (1_000_000, 10_000_000):
            a, b = intervals(rng, curve, n)
            energy = curve.energy(a, b)  # warm up, and check the answer is usable
            assert energy.shape == (n,) and np.isfinite(energy).all()
            del energy
            seconds = best_seconds(lambda curve=curve, a=a, b=b: curve.energy(a, b), args.repeats)
            rates[(name, n)] = n / seconds
            print(f"{name:12s} {n:>10,d} intervals: {seconds * 1e3:8.1f} ms, {n / seconds / 1e6:6.1f} M intervals/s")

    worst = min(rates.values())
    verdict = "meets" if worst >= TARGET_PER_S else "MISSES"
    parts = ", ".join(f"{name} 1e{len(str(n)) - 1}: {r / 1e6:.1f} M/s" for (name, n), r in rates.items())
    print(
        f"RESULT EnergyCurve.energy over {KNOTS:,d} knots, random intervals, "
        f"best of {args.repeats}: "
        f"{parts}; slowest {worst / 1e6:.1f} M intervals/s ({verdict} the 1 M/s target)"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"{platform.machine()} {platform.processor() or platform.system()}, {os.cpu_count()} CPUs"
    )
    return 0 if worst >= TARGET_PER_S else 1


if __name__ == "__main__":
    sys.exit(main())
