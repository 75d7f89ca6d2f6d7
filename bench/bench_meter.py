"""Cost of the Meter on the host (no GPU needed).

    python bench/bench_meter.py

1. CPU cost of one `with m.inference():` mark in host mode (target < 5 µs);
2. a small CPU model loop (torchvision resnet18 at 64 px, batch 1) with per-inference marks
   against without, interleaved A/B in one process (target < 1% slower).
The sampler reads a fake powercap tree and a fake NVML meanwhile, at the default periods, as it
would read real ones (the fake counters stand still: a writer process would compete for the
CPU, which real RAPL does not).
"""

from __future__ import annotations

import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))
sys.path.insert(0, HERE)

from aipm_fast import Meter  # noqa: E402

from bench_engine import fake_nvml  # noqa: E402
from fakes.powercap import build_powercap_tree  # noqa: E402


def main() -> None:
    import torch
    import torchvision

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tree = build_powercap_tree(os.path.join(tmp, "pc"))
        try:
            with Meter(
                powercap_root=str(tree.root), nvml_lib=fake_nvml(tmp), msr_root="/x", perf_root="/x", cuda=False
            ) as m:
                costs = []
                for _ in range(20):
                    n = 10_000
                    c0 = time.process_time_ns()
                    for _ in range(n):
                        with m.inference():
                            pass
                    costs.append((time.process_time_ns() - c0) / n / 1e3)
                model = torchvision.models.resnet18(weights=None).eval()
                x = torch.randn(1, 3, 64, 64)
                times = {"off": [], "on": []}
                with torch.inference_mode():
                    for _ in range(20):
                        model(x)
                    for p in range(20):
                        for mode in ("off", "on") if p % 2 == 0 else ("on", "off"):
                            t = time.perf_counter()
                            for _ in range(100):
                                if mode == "on":
                                    with m.inference():
                                        model(x)
                                else:
                                    model(x)
                            times[mode].append((time.perf_counter() - t) / 100)
        finally:
            pass
    off, on = np.median(times["off"]), np.median(times["on"])
    print(
        f"{platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()}, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}"
    )
    print(f"one host-mode mark: median {np.median(costs):.2f} µs of CPU (target < 5 µs)")
    print(
        f"resnet18 64px batch 1 on CPU: {off * 1e3:.3f} ms off, {on * 1e3:.3f} ms on, "
        f"{100 * (on / off - 1):+.2f}% (target < 1%)"
    )


if __name__ == "__main__":
    main()
