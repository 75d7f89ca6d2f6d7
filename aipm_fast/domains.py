"""Which measured domains add up without counting any energy twice."""
from __future__ import annotations


def additive_domains(domains) -> list[str]:
    """Domains whose energies add up without overlap: GPUs, RAPL packages and their DRAM.
    Core and uncore lie inside their package; psys (the platform) holds the packages and is
    used only where no package is read."""
    parts = gpu_and_host(domains)
    return parts["gpu"] + parts["cpu"]


def gpu_and_host(domains) -> dict[str, list[str]]:
    """{"gpu": NVML domains, "cpu": the host domains that add up (see additive_domains)}."""
    domains = list(domains)
    gpu = [d for d in domains if d.startswith("nvml:")]
    packages = [d for d in domains if d.startswith("rapl:package-") and "/" not in d]
    dram = [d for d in domains if d.startswith("rapl:package-") and d.endswith("/dram")]
    host = packages + dram if packages else [d for d in domains if d == "rapl:psys"]
    return {"gpu": gpu, "cpu": host}
