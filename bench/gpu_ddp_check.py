"""Data-parallel training metered on every rank (torch.distributed), against NVML's counters.

    torchrun --nproc_per_node 2 bench/gpu_ddp_check.py --steps 200 --out ddp.json

Each rank trains ResNet-50 on synthetic data (DDP). Phases alternate: `off` (no Meter at all)
and `on` (a Meter per rank from `rank_meter`, a step mark per step, a synchronised window), twice
each, so the throughput cost of metering is measured in one process. In each `on` phase every
rank reads its GPU's NVML energy counter through nvidia-ml-py just outside the window, and rank 0
gathers all windows (`gather_windows`, `job_summary`): per-GPU energy against its own counter,
and the job's joules per step and per sample.

`--device cpu` runs the same on the gloo backend for a smoke test (no reference counter).
"""
from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.distributed as dist


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
    p.add_argument("--steps", type=int, default=200, help="steps per phase")
    p.add_argument("--batch", type=int, default=64, help="samples per rank per step")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--device", default="cuda")
    p.add_argument("--out")
    args = p.parse_args()

    from aipm_fast.integrations.distributed import (gather_windows, job_summary, rank_engine_options, rank_meter,
                                                    synced_window)
    cuda = args.device == "cuda"
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if cuda:
        torch.cuda.set_device(local_rank)      # gather_object over NCCL needs the rank's device
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
    results = {"off": [], "on": [], "checks": []}
    for phase in ("off", "on", "on", "off"):
        if phase == "off":
            sync()
            t = time.perf_counter()
            for _ in range(args.steps):
                step()
            sync()
            results["off"].append((time.perf_counter() - t) / args.steps)
            continue
        meter = rank_meter(cuda=cuda)
        meter.start()
        sync()
        e0 = counter() if counter else None
        t = time.perf_counter()
        with synced_window(meter, "train") as w:
            for _ in range(args.steps):
                with meter.step():
                    step()
        sync()
        elapsed = time.perf_counter() - t
        e1 = counter() if counter else None
        meter.stop()
        results["on"].append(elapsed / args.steps)
        mine = meter.windows()
        gpu = mine[mine["domain"].str.startswith("nvml:")]
        local = {"rank": rank, "gpu_energy_j": float(gpu["energy_j"].sum()),
                 "reference_counter_j": None if e0 is None else e1 - e0,
                 "window_s": (w.end_ns - w.start_ns) / 1e9}
        if e0 is not None:
            local["error_pct"] = 100 * (local["gpu_energy_j"] - (e1 - e0)) / (e1 - e0)
        gathered = [None] * world
        dist.all_gather_object(gathered, local)
        table = gather_windows(meter)
        if rank == 0:
            summary = job_summary(table, samples_per_step=args.batch * world, window="train")
            results["checks"].append({"per_rank": gathered, "job": summary["total"],
                                      "per_node": summary["per_node"].to_dict(orient="records")})
    if rank == 0:
        off = sorted(results["off"])[len(results["off"]) // 2]
        on = sorted(results["on"])[len(results["on"]) // 2]
        results["step_ms_off"], results["step_ms_on"] = off * 1e3, on * 1e3
        results["slowdown_pct"] = 100 * (on / off - 1)
        results["world_size"], results["batch_per_rank"], results["steps_per_phase"] = world, args.batch, args.steps
        print(json.dumps(results, indent=2, default=float))
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=2, default=float)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
