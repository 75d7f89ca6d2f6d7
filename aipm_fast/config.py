"""Where the hardware is and how often to read it.

Every path to hardware is a parameter with an environment variable, so that tests, containers
with sysfs mounted elsewhere and unusual driver installs can point the meter anywhere.

The hardware options are defined once, in `HARDWARE_OPTIONS`: each row gives the option's
`EngineConfig` field, default, help, command-line flag and environment variable (if any).
`EngineConfig`'s fields and defaults, `EngineConfig.from_env`, `ENV`, the command line's options
(`aipm_fast.cli.engine_options`) and the README's "Hardware paths" table
(`hardware_options_markdown`, checked by tests/test_options.py) are all made from it. Adding an
option (say a hwmon root read from `AIPM_HWMON_ROOT`) is one row here plus its use by the source
that reads it (`config.hwmon_root`); then regenerate the README table with
`python -c "from aipm_fast.config import hardware_options_markdown as m; print(m())"`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


def parse_gpu_list(text: str) -> list[int]:
    """'0,2' -> [0, 2]: GPU indices as NVML numbers them."""
    try:
        return [int(g) for g in text.split(",")]
    except ValueError:
        raise ValueError(f"expected a comma list of GPU indices, got {text!r}") from None


@dataclass(frozen=True)
class HardwareOption:
    """One hardware option: an `EngineConfig` field, a command-line option and, for paths, an
    environment variable."""

    name: str  # the EngineConfig field (and Meter/Recorder keyword)
    type: str  # the field's annotation
    default: Any
    help: str  # --help text and the README's "what" column
    env: str | None = None  # environment variable; None: command line and Python only
    flag: str = ""  # command-line option; "": --name-with-dashes
    parse: Callable[[str], Any] = str  # option or variable text -> field value (ValueError if bad)
    switch: Any = None  # not None: a flag taking no value, setting the field to this
    shown_default: str = ""  # the default as --help and the README say it; "": `default`

    def __post_init__(self):
        if self.switch is not None and self.env:
            raise ValueError(
                f"{self.name}: a switch (like --no-cpu) has no environment variable: "
                "neither the command line nor from_env would read one"
            )

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


HARDWARE_OPTIONS: tuple[HardwareOption, ...] = (
    HardwareOption("powercap_root", "str", "/sys/class/powercap", "powercap sysfs folder", env="AIPM_POWERCAP_ROOT"),
    HardwareOption(
        "msr_root", "str", "/dev/cpu", "folder of per-CPU msr files (0/msr, 1/msr, ...)", env="AIPM_MSR_ROOT"
    ),
    HardwareOption("perf_root", "str", "/sys/bus/event_source/devices", "perf PMU sysfs folder", env="AIPM_PERF_ROOT"),
    HardwareOption("cpu_root", "str", "/sys/devices/system/cpu", "CPU topology sysfs folder", env="AIPM_CPU_ROOT"),
    HardwareOption("nvml_lib", "str", "libnvidia-ml.so.1", "NVML library", env="AIPM_NVML_LIB"),
    HardwareOption(
        "hwmon_root",
        "str",
        "/sys/class/hwmon",
        "hwmon sysfs folder (AMD and Intel GPUs, boards)",
        env="AIPM_HWMON_ROOT",
    ),
    HardwareOption(
        "calibration_file",
        "str | None",
        None,
        "GPU sensor responses measured by `aipm-fast calibrate`",
        env="AIPM_CALIBRATION_FILE",
        shown_default="~/.cache/aipm-fast/sensor-calibrations.json",
    ),
    HardwareOption(
        "wall_meter",
        "str | None",
        None,
        "a wall meter's stream: file, pipe or device of 'timestamp watts' lines",
        env="AIPM_WALL_METER",
        shown_default="none",
    ),
    HardwareOption(
        "wall_meter_adds",
        "bool",
        False,
        "the wall meter measures a device no other source covers: add it to totals",
        switch=True,
        shown_default="not added",
    ),
    HardwareOption(
        "gpus",
        "list[int] | None",
        None,
        "comma list of GPU indices to read",
        parse=parse_gpu_list,
        shown_default="every GPU NVML sees",
    ),
    HardwareOption(
        "cpu",
        "bool",
        True,
        "do not read RAPL (on all but one rank per node)",
        flag="--no-cpu",
        switch=False,
        shown_default="RAPL read",
    ),
)

ENV = {o.name: o.env for o in HARDWARE_OPTIONS if o.env}

# How often each kind of channel is read by default. An energy counter loses no energy when read
# less often, only time resolution; a power reading must be read at its update rate or its changes
# are missed. Each period is the longest that keeps what accuracy needs, at a cost (CPU of one
# read on an H200, bench/RESULTS.md) that stays under 1% of a core with one GPU and 2% with eight
# (bench/bench_engine.py measures both). `periods_s` overrides any of them.
DEFAULT_PERIODS_S = {
    # RAPL counters update about every 1 ms, but a counter read every 10 ms holds the same
    # energy: 10 ms resolves twice as finely as a GPU's 20 ms power samples, and costs a tenth
    # of 1 kHz (three sysfs reads a wake-up: 1.9% of a core at 1 kHz on a VM). Read at 0.001
    # for studies of millisecond host work.
    "rapl": 0.01,
    # hwmon power files are refreshed by their drivers every few ms to 1 s; a sysfs read costs
    # tens of µs: 20 ms sees each change of the fast ones and costs little for the slow ones.
    "hwmon": 0.02,
    # A wall meter's stream sets its own pace; this is only the interval it is expected at.
    "wall": 1.0,
    # The driver buffers ~120 power samples (2.4 s on an H200) and every read returns all the new
    # ones, stamped by the driver: once a second loses none, and a read costs ~0.6 ms (0.06% of a
    # core per GPU; at 4 a second eight GPUs would cost 1.9%). Results wait up to this long.
    "nvml.power_samples": 1.0,
    # Field 186 updates about every 100 ms and costs ~2 µs: 20 ms catches each update early.
    "nvml.power_instant": 0.02,
    # The mJ counter costs ~4 ms of CPU per call on an H200. It is the anchor that scales the
    # samples over spans of 5 s and more, so a read every 5 s gives that scale its span without
    # losing energy (0.08% of a core per GPU; once a second, eight GPUs would cost 3.2%).
    "nvml.energy": 5.0,
    # a benchmark run's mean GPU utilisation needs a few readings per run; a read costs ~2 µs
    "nvml.utilization": 0.1,
    # memory in use changes with allocations, reported as a level; a read costs ~17 µs
    "nvml.memory_used": 1.0,
    "nvml.power_average": 0.1,
}


#: environment variable of periods that replace defaults: "rapl=0.001,nvml.energy=1"
PERIODS_ENV = "AIPM_PERIODS"


def parse_periods(text: str) -> dict[str, float]:
    """'rapl=0.001,nvml.energy=1' -> {'rapl': 0.001, 'nvml.energy': 1.0}: periods in seconds of
    the keys of DEFAULT_PERIODS_S (ValueError naming a bad key or value)."""
    out: dict[str, float] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or key not in DEFAULT_PERIODS_S:
            raise ValueError(f"{item!r}: want KEY=SECONDS with KEY one of {', '.join(DEFAULT_PERIODS_S)}")
        try:
            seconds = float(value)
        except ValueError:
            seconds = float("nan")
        if not 0 < seconds < 3600:
            raise ValueError(f"{item!r}: the period must be a number of seconds in (0, 3600)")
        out[key] = seconds
    return out


#: A channel whose reading has not changed for this long (what `recorder.classify` calls stale
#: or stuck) is read less often, its interval doubling up to BACKOFF_MAX_S, until it moves again.
BACKOFF_QUIET_S = 3.0
#: The longest interval a quiet channel is read at: it is still seen once a second (its health
#: reported, its first move caught within a second); counters that could wrap in less are capped
#: shorter (recorder.backoff_interval_s).
BACKOFF_MAX_S = 1.0


# The hardware fields, one per row of the table, ahead of the engine's own settings. Typed Any
# for type checkers, which cannot see fields made at run time.
_HardwareFields: Any = dataclasses.make_dataclass(
    "_HardwareFields", [(o.name, o.type, field(default=o.default)) for o in HARDWARE_OPTIONS]
)


@dataclass
class EngineConfig(_HardwareFields):
    """The engine's settings: one field per hardware option (`HARDWARE_OPTIONS`), then the NVML
    channels, the sampling periods and the ring's size."""

    nvml_channels: tuple[str, ...] = ("power_samples", "power_instant", "energy", "utilization", "memory_used")
    periods_s: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PERIODS_S))
    ring_capacity_log2: int = 18  # 262,144 records per sampler thread: about a minute at default rates
    backoff_quiet_s: float | None = BACKOFF_QUIET_S  # None: read every channel at its period, always

    @classmethod
    def from_env(cls, environ=None, **overrides) -> EngineConfig:
        """Defaults, then environment variables, then explicit overrides (None means unset)."""
        environ = os.environ if environ is None else environ
        values = {}
        for o in HARDWARE_OPTIONS:
            if o.env and environ.get(o.env):
                try:
                    values[o.name] = o.parse(environ[o.env])
                except ValueError as exc:
                    raise ValueError(f"{o.env}: {exc}") from None
        values.update({k: v for k, v in overrides.items() if v is not None})
        periods = dict(DEFAULT_PERIODS_S)
        if environ.get(PERIODS_ENV):
            try:
                periods.update(parse_periods(environ[PERIODS_ENV]))
            except ValueError as exc:
                raise ValueError(f"{PERIODS_ENV}: {exc}") from None
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


def hardware_options_markdown() -> str:
    """The README's "Hardware paths" table, one line per option of `HARDWARE_OPTIONS`."""
    lines = ["| what | option | variable | keyword | default |", "| --- | --- | --- | --- | --- |"]
    for o in HARDWARE_OPTIONS:
        env = f"`{o.env}`" if o.env else "-"
        keyword = o.name if o.switch is None else f"{o.name}={o.switch!r}"
        default = o.shown_default or f"`{o.default}`"
        lines.append(f"| {o.help} | `{o.cli_flag}` | {env} | `{keyword}` | {default} |")
    return "\n".join(lines) + "\n"
