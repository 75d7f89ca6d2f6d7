"""NVIDIA GPUs through NVML (dlopen'ed by the C core; no NVML Python package needed)."""

from __future__ import annotations

from dataclasses import dataclass

from aipm_fast._native import NativeError
from aipm_fast.sources.base import COUNTER, GPU, INSTANT_POWER, LEVEL, MEAN_POWER, Channel, Discovery, Domain, Problem


@dataclass(frozen=True)
class NvmlReading:
    reading: str
    quantity: str
    unit: str
    function: str
    update_s: float | None = None  # how often the driver refreshes it (H200, bench/RESULTS.md)
    averaging_s: float | None = None


READINGS = {
    # the driver's buffered samples: one every 20 ms, each close to instantaneous
    "power_samples": NvmlReading(INSTANT_POWER, "power", "W", "nvmlDeviceGetSamples(NVML_TOTAL_POWER_SAMPLES)", 0.02),
    "power_instant": NvmlReading(
        INSTANT_POWER, "power", "W", "nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)", 0.1
    ),
    "energy": NvmlReading(COUNTER, "energy", "J", "nvmlDeviceGetTotalEnergyConsumption", 0.1),
    "utilization": NvmlReading(LEVEL, "utilization", "%", "nvmlDeviceGetUtilizationRates"),
    "memory_used": NvmlReading(LEVEL, "memory", "bytes", "nvmlDeviceGetMemoryInfo"),
    # a 1 s average on Ampere and newer, refreshed about every 100 ms
    "power_average": NvmlReading(MEAN_POWER, "power", "W", "nvmlDeviceGetPowerUsage", 0.1, 1.0),
}

NVML_FIX = (
    "install the NVIDIA driver (it ships libnvidia-ml.so.1), or point AIPM_NVML_LIB "
    "(--nvml-lib) at the library; inside a container, run it with the NVIDIA runtime "
    "(`--gpus all`)"
)


def discover(engine, config) -> Discovery:
    found = Discovery()
    try:
        count = engine.nvml_open(config.nvml_lib)
    except (NativeError, OSError) as exc:
        found.problems.append(Problem("nvml", config.nvml_lib, str(exc), NVML_FIX))
        return found
    gpus = range(count) if config.gpus is None else config.gpus
    for gpu in gpus:
        if not 0 <= gpu < count:
            found.problems.append(
                Problem(
                    "nvml", f"GPU {gpu}", f"no such GPU (NVML sees {count})", "check --gpus and CUDA_VISIBLE_DEVICES"
                )
            )
            continue
        domain = f"nvml:{gpu}"
        found.add_domain(Domain(domain, GPU, additive=True, device=engine.nvml_device_name(gpu)))
        for kind in config.nvml_channels:
            r = READINGS[kind]
            period = config.period(f"nvml.{kind}")
            try:
                cid = engine.add_nvml_channel(gpu, kind, period)
            except (NativeError, OSError) as exc:
                found.problems.append(
                    Problem(
                        "nvml",
                        f"{domain} {kind}",
                        str(exc),
                        "update the NVIDIA driver; this quantity is then measured from the other channels"
                        if "not found" in str(exc)
                        else "",
                    )
                )
                continue
            found.channels.append(
                Channel(
                    cid,
                    domain,
                    kind,
                    r.reading,
                    r.quantity,
                    r.unit,
                    "nvml",
                    period,
                    update_s=r.update_s,
                    averaging_s=r.averaging_s,
                    detail=r.function,
                )
            )
    return found
