"""Data-parallel training metered on every rank (torch.distributed), against NVML's counters.

    torchrun --nproc_per_node 2 bench/gpu_ddp_check.py --steps 200 --out ddp.json

Each rank trains ResNet-50 on synthetic data (DDP) under a Meter per rank (`rank_meter`, a step
mark per step, a synchronised window).

1. Energy (`--checks` times, `--steps` steps): every rank reads its GPU's NVML energy counter
   through nvidia-ml-py in idle time before and after the training and meters that same span;
   rank 0 gathers all windows (`gather_windows`, `job_summary`): per-GPU energy against its own
   counter, and the job's joules per step and per sample.
2. Throughput (`--ab-pairs` pairs of `--ab-steps` steps): blocks without any Meter against blocks
   with one, the order alternating from pair to pair; the cost is the median over pairs.

`--device cpu` runs the same on the gloo backend for a smoke test (no reference counter).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch
import torch.distributed as dist

IDLE_S = 0.5


def reference_counter(gpu_index):
    """(read) -> J from nvidia-ml-py for this rank's GPU, or None where it is not installed."""
    try:
        import pynvml
    except ImportError:
        return None
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
    return lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000.0


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200, help="steps per energy check")
    p.add_argument("--checks", type=int, default=2, help="energy checks against the counters")
    p.add_argument("--ab-pairs", type=int, default=12, help="pairs of blocks without and with a Meter")
    p.add_argument("--ab-steps", type=int, default=40, help="steps per block")
    p.add_argument("--batch", type=int, default=64, help="samples per rank per step")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out")
    args = p.parse_args()

    from aipm_fast.integrations.distributed import (
        gather_windows,
        job_summary,
        rank_engine_options,
        rank_meter,
        synced_window,
    )

    cuda = args.device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(local_rank)  # gather_object over NCCL needs the rank's device
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")

    import torchvision

    model = torchvision.models.resnet50(weights=None).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank] if cuda else None)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.01)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    y = torch.randint(0, 1000, (args.batch,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = torch.nn.functional.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()

    def sync():
        if cuda:
            torch.cuda.synchronize()
        dist.barrier()

    for _ in range(10):
        step()
    sync()
    gpus = rank_engine_options()["gpus"]
    counter = reference_counter(gpus[0]) if cuda and gpus else None
    results = {"checks": [], "pairs": []}
    # 1. energy: long metered phases against each GPU's counter
    for _ in range(args.checks):
        meter = rank_meter(cuda=cuda)
        meter.start()
        sync()
        # The counter moves every ~100 ms, so a read returns energy up to 100 ms old. Read it in
        # idle time, IDLE_S away from the training, and meter the same span ("span"): the stale
        # part of each read is then idle energy only, a few joules against thousands.
        time.sleep(IDLE_S)
        e0 = counter() if counter else None
        with meter.window("span"):
            time.sleep(IDLE_S)
            with synced_window(meter, "train"):
                for _ in range(args.steps):
                    with meter.step():
                        step()
            sync()
            time.sleep(IDLE_S)
        e1 = counter() if counter else None
        meter.stop()
        mine = meter.windows()
        gpu = mine[mine["domain"].str.startswith("nvml:")]
        span, train = gpu[gpu["window"] == "span"], gpu[gpu["window"] == "train"]
        local = {
            "rank": rank,
            "gpus": gpus,
            "span_gpu_energy_j": float(span["energy_j"].sum()),
            "train_gpu_energy_j": float(train["energy_j"].sum()),
            "reference_counter_j": None if e0 is None else e1 - e0,
            "span_s": float(span["duration_s"].max()),
            "train_s": float(train["duration_s"].max()),
            "scale": meter.report()["scales"],
        }
        if e0 is not None:
            local["error_pct"] = 100 * (local["span_gpu_energy_j"] - (e1 - e0)) / (e1 - e0)
        gathered = [None] * world
        dist.all_gather_object(gathered, local)
        table = gather_windows(meter)
        if rank == 0:
            summary = job_summary(table, samples_per_step=args.batch * world, window="train")
            results["checks"].append(
                {
                    "per_rank": gathered,
                    "job": summary["total"],
                    "per_node": summary["per_node"].to_dict(orient="records"),
                }
            )

    # 2. throughput: short blocks without and with a Meter, in pairs whose order alternates, so
    # slow drifts (clocks, temperature, the host) weigh on both alike; the Meter's start and
    # stop lie outside the timed span
    def block(metered: bool) -> float:
        meter = rank_meter(cuda=cuda) if metered else None
        if meter:
            meter.start()
        sync()
        t = time.perf_counter()
        if meter:
            with synced_window(meter, "block"):
                for _ in range(args.ab_steps):
                    with meter.step():
                        step()
        else:
            for _ in range(args.ab_steps):
                step()
        sync()
        elapsed = (time.perf_counter() - t) / args.ab_steps
        if meter:
            meter.stop()
        return elapsed

    for p in range(args.ab_pairs):
        order = ("off", "on") if p % 2 == 0 else ("on", "off")
        times = {mode: block(mode == "on") for mode in order}
        results["pairs"].append(times)
    if rank == 0:
        ratios = [pair["on"] / pair["off"] for pair in results["pairs"]]
        results["step_ms_off_median"] = 1e3 * float(np.median([pair["off"] for pair in results["pairs"]]))
        results["step_ms_on_median"] = 1e3 * float(np.median([pair["on"] for pair in results["pairs"]]))
        results["slowdown_pct_median_of_pairs"] = 100 * (float(np.median(ratios)) - 1)
        results["slowdown_pct_pairs"] = [100 * (r - 1) for r in ratios]
        results["world_size"], results["batch_per_rank"] = world, args.batch
        results["steps_per_check"], results["steps_per_block"] = args.steps, args.ab_steps
        print(json.dumps(results, indent=2, default=float))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2, default=float)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
