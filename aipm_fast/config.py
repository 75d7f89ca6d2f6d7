"""Where the hardware is and how often to read it.

Every path to hardware is a parameter with an environment variable, so that tests, containers
with sysfs mounted elsewhere and unusual driver installs can point the meter anywhere.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

ENV = {
    "powercap_root": "AIPM_POWERCAP_ROOT",
    "msr_root": "AIPM_MSR_ROOT",
    "perf_root": "AIPM_PERF_ROOT",
    "cpu_root": "AIPM_CPU_ROOT",
    "nvml_lib": "AIPM_NVML_LIB",
}

DEFAULT_PERIODS_S = {
    # RAPL counters update about every 1 ms: read them at that rate.
    "rapl": 0.001,
    # The driver buffers ~120 power samples (2.4 s on an H200): drain it a few times a second.
    "nvml.power_samples": 0.25,
    # Field 186 updates about every 100 ms and costs ~7 µs: 20 ms catches each update early.
    "nvml.power_instant": 0.02,
    # The mJ counter costs ~4 ms of CPU per call on an H200: once a second, as the anchor.
    "nvml.energy": 1.0,
    "nvml.utilization": 0.1,
    "nvml.memory_used": 0.1,
    "nvml.power_average": 0.1,
}


@dataclass
class EngineConfig:
    powercap_root: str = "/sys/class/powercap"
    msr_root: str = "/dev/cpu"
    perf_root: str = "/sys/bus/event_source/devices"
    cpu_root: str = "/sys/devices/system/cpu"
    nvml_lib: str = "libnvidia-ml.so.1"
    gpus: list[int] | None = None          # None: every GPU NVML sees
    cpu: bool = True                       # read RAPL (off on all but one rank per node)
    nvml_channels: tuple[str, ...] = ("power_samples", "power_instant", "energy", "utilization", "memory_used")
    periods_s: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PERIODS_S))
    ring_capacity_log2: int = 18           # 262,144 records: about a minute at default rates

    @classmethod
    def from_env(cls, environ=None, **overrides) -> "EngineConfig":
        """Defaults, then environment variables, then explicit overrides (None means unset)."""
        environ = os.environ if environ is None else environ
        values = {}
        for name, var in ENV.items():
            if environ.get(var):
                values[name] = environ[var]
        values.update({k: v for k, v in overrides.items() if v is not None})
        periods = dict(DEFAULT_PERIODS_S)
        periods.update(values.pop("periods_s", {}) or {})
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"unknown engine option(s): {', '.join(sorted(unknown))}")
        return cls(periods_s=periods, **values)

    def period(self, key: str) -> float:
        value = self.periods_s.get(key)
        if value is None or value <= 0:
            raise ValueError(f"sampling period for {key!r} must be a positive number of seconds, got {value!r}")
        return value
