"""aipm-fast: energy of deep-learning work, from RAPL and NVML sampled at their real rate."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["EngineConfig", "Recorder", "__version__"]


def __getattr__(name):
    # Imported lazily so that `import aipm_fast` stays cheap and works before the native
    # extension is needed.
    if name == "Recorder":
        from aipm_fast.recorder import Recorder

        return Recorder
    if name == "EngineConfig":
        from aipm_fast.config import EngineConfig

        return EngineConfig
    if name == "Meter":
        from aipm_fast.meter import Meter

        return Meter
    raise AttributeError(f"module 'aipm_fast' has no attribute {name!r}")
