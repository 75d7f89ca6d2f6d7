"""NVIDIA GPUs through NVML (dlopen'ed by the C core; no NVML Python package needed)."""
from __future__ import annotations

from aipm_fast.sources.base import Channel, Discovery, Problem

QUANTITY = {
    "power_samples": ("power", "W", "nvmlDeviceGetSamples(NVML_TOTAL_POWER_SAMPLES)"),
    "power_instant": ("power", "W", "nvmlDeviceGetFieldValues(NVML_FI_DEV_POWER_INSTANT)"),
    "energy": ("energy", "J", "nvmlDeviceGetTotalEnergyConsumption"),
    "utilization": ("utilization", "%", "nvmlDeviceGetUtilizationRates"),
    "memory_used": ("memory", "bytes", "nvmlDeviceGetMemoryInfo"),
    "power_average": ("power", "W", "nvmlDeviceGetPowerUsage"),
}

NVML_FIX = ("install the NVIDIA driver (it ships libnvidia-ml.so.1), or point AIPM_NVML_LIB "
            "(--nvml-lib) at the library; inside a container, run it with the NVIDIA runtime "
            "(`--gpus all`)")


def discover(engine, config) -> Discovery:
    found = Discovery()
    try:
        count = engine.nvml_open(config.nvml_lib)
    except Exception as exc:
        found.problems.append(Problem("nvml", config.nvml_lib, str(exc), NVML_FIX))
        return found
    gpus = range(count) if config.gpus is None else config.gpus
    for gpu in gpus:
        if not 0 <= gpu < count:
            found.problems.append(Problem("nvml", f"GPU {gpu}", f"no such GPU (NVML sees {count})",
                                          "check --gpus and CUDA_VISIBLE_DEVICES"))
            continue
        domain = f"nvml:{gpu}"
        found.devices[domain] = engine.nvml_device_name(gpu)
        for kind in config.nvml_channels:
            quantity, unit, function = QUANTITY[kind]
            period = config.period(f"nvml.{kind}")
            try:
                cid = engine.add_nvml_channel(gpu, kind, period)
            except Exception as exc:
                found.problems.append(Problem("nvml", f"{domain} {kind}", str(exc),
                                              "update the NVIDIA driver; this quantity is then measured "
                                              "from the other channels" if "not found" in str(exc) else ""))
                continue
            found.channels.append(Channel(cid, f"{domain}.{kind}", domain, quantity, unit, "nvml", period,
                                          detail=function))
    return found
