"""Cost of the on-demand NVML queries a benchmark run makes at its edges: a GPM sample, GPM
metrics between two samples, the per-process utilisation samples and the compute processes'
memory. Each is timed over `--repeats` calls, idle and while the GPU runs matrix products (a
call of the host thread; what it costs is host time at the run's edges, not inside the run).

    python3 bench/bench_nvml_queries.py [--nvml-lib LIB] [--repeats 200] [--out FILE.json]

Runs against the fake NVML too (AIPM_NVML_LIB), where it checks the script, not the cost."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time

from aipm_fast._native import Engine, NativeError


def timed(call, repeats: int) -> dict:
    took = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        call()
        took.append((time.perf_counter_ns() - t0) / 1e3)
    took.sort()
    return {
        "median_us": statistics.median(took),
        "p90_us": took[int(0.9 * (len(took) - 1))],
        "max_us": took[-1],
        "calls": repeats,
    }


def measure(engine: Engine, gpu: int, repeats: int) -> dict:
    result: dict = {}
    since = int(time.time() * 1e6) - 1_000_000
    result["process_memory"] = timed(lambda: engine.nvml_process_memory(gpu), repeats)
    result["process_utilization"] = timed(lambda: engine.nvml_process_utilization(gpu, since), repeats)
    try:
        supported = engine.gpm_supported(gpu)
    except NativeError as exc:
        supported, result["gpm_error"] = False, str(exc)
    result["gpm_supported"] = supported
    if supported:
        first = engine.gpm_sample(gpu)
        samples = []

        def take():
            samples.append(engine.gpm_sample(gpu))

        result["gpm_sample"] = timed(take, repeats)
        values: dict = {}

        def metrics():
            values.update(engine.gpm_metrics(first, samples[-1], [2, 3, 5, 10]))

        result["gpm_metrics"] = timed(metrics, repeats)
        result["gpm_values_last"] = values
        for s in samples:
            s.close()
        first.close()
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--nvml-lib", default=os.environ.get("AIPM_NVML_LIB", "libnvidia-ml.so.1"))
    p.add_argument("--gpu", type=int, default=0)
    p.add_argument("--repeats", type=int, default=200)
    p.add_argument("--out")
    args = p.parse_args()
    engine = Engine()
    engine.nvml_open(args.nvml_lib)
    report = {"nvml_lib": args.nvml_lib, "gpu": args.gpu, "name": engine.nvml_device_name(args.gpu)}
    report["idle"] = measure(engine, args.gpu, args.repeats)
    try:
        import torch

        busy = torch.cuda.is_available()
    except ImportError:
        busy = False
    if busy:
        from gpu_common import matmul_load

        stop = threading.Event()

        def load():
            while not stop.is_set():
                matmul_load(0.5)

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        time.sleep(1.0)
        report["under_load"] = measure(engine, args.gpu, args.repeats)
        stop.set()
        worker.join()
    engine.close()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
