"""aipm-fast: energy of deep-learning work, from RAPL and NVML sampled at their real rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = ["EngineConfig", "Measurement", "Meter", "Recorder", "__version__", "track_energy"]

if TYPE_CHECKING:  # what type checkers see; at run time the names are imported on first use
    from aipm_fast.config import EngineConfig
    from aipm_fast.measurement import Measurement, track_energy
    from aipm_fast.meter import Meter
    from aipm_fast.recorder import Recorder

# Imported lazily so that `import aipm_fast` stays cheap and works before the native extension
# is needed: name -> the module that defines it.
_LAZY = {
    "EngineConfig": "aipm_fast.config",
    "Measurement": "aipm_fast.measurement",
    "Meter": "aipm_fast.meter",
    "Recorder": "aipm_fast.recorder",
    "track_energy": "aipm_fast.measurement",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'aipm_fast' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
