"""Shared pieces of the GPU benchmarks: an independent NVML energy counter and steady loads."""

from __future__ import annotations

import time

import pynvml
import torch

from aipm_fast._native import now_ns


class IndependentCounter:
    """NVML's mJ energy counter through nvidia-ml-py, outside aipm-fast, as the reference."""

    def __init__(self, gpu: int = 0):
        pynvml.nvmlInit()
        self.handle = pynvml.nvmlDeviceGetHandleByIndex(gpu)

    def read(self) -> tuple[int, float]:
        """(CLOCK_MONOTONIC ns at the middle of the call, J)."""
        t0 = now_ns()
        mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        t1 = now_ns()
        return (t0 + t1) // 2, mj / 1000.0


def matmul_load(seconds: float, n: int = 8192) -> int:
    """bf16 matrix products for `seconds`; returns how many were issued."""
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    count = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        for _ in range(10):
            a @ b
        count += 10
        torch.cuda.synchronize()
    return count
