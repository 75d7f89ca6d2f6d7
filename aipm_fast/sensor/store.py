"""Where measured sensor responses are kept: one JSON file, one entry per GPU model and driver.

The path is `--calibration-file` or AIPM_CALIBRATION_FILE, by default
~/.cache/aipm-fast/sensor-calibrations.json. A response belongs to the GPU model and driver it was
measured on: the delay includes any offset between the driver's sample stamps and the host
clock, which a driver change may move. A Meter on a GPU with no entry keeps placing samples at
their stamps and says so in its method text.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from aipm_fast.sensor.response import SensorResponse
from aipm_fast.storage import write_atomic

ENV = "AIPM_CALIBRATION_FILE"
DRIVER_VERSION_FILE = "/proc/driver/nvidia/version"


def default_path() -> str:
    return os.environ.get(ENV) or str(Path.home() / ".cache" / "aipm-fast" / "sensor-calibrations.json")


def driver_version(path: str = DRIVER_VERSION_FILE) -> str:
    """The NVIDIA kernel driver's version ('' where it cannot be read)."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    m = re.search(r"Kernel Module\s+(?:for \S+\s+)?([0-9][0-9.]+)", text)
    return m.group(1) if m else ""


def key(gpu_name: str, driver: str) -> str:
    return f"{gpu_name} | driver {driver or 'unknown'}"


def _read(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ValueError(
            f"{path}: not a readable calibration file ({exc}); move it away or pass another --calibration-file"
        ) from exc
    if not isinstance(data, dict) or not isinstance(data.get("responses", {}), dict):
        raise ValueError(f"{path}: not a calibration file (want an object with 'responses')")
    return data


def load(gpu_name: str, driver: str, path: str | None = None) -> tuple[SensorResponse | None, dict]:
    """The response stored for this GPU model and driver, and its entry (None, {} if none)."""
    path = path or default_path()
    entry = _read(path).get("responses", {}).get(key(gpu_name, driver))
    if not entry:
        return None, {}
    return SensorResponse.from_dict(entry["response"]), entry


#: the channel a calibration measures (sources/nvml.py's 50 Hz sample buffer)
CALIBRATED_CHANNEL = "power_samples"


def responses_for(channels, domains, path: str | None = None, driver: str | None = None):
    """({channel id: (response, entry)} for every channel with a stored calibration, [notes]).
    An unreadable file is a note, not an error: the meter then places samples at their stamps."""
    driver = driver_version() if driver is None else driver
    try:
        data = _read(path or default_path())
    except ValueError as exc:
        return {}, [f"sensor calibrations not used: {exc}"]
    found = {}
    for ch in channels:
        dom = domains.get(ch.domain)
        if dom is None or not dom.device or ch.label != CALIBRATED_CHANNEL:
            continue
        entry = data.get("responses", {}).get(key(dom.device, driver))
        if entry and entry.get("channel", CALIBRATED_CHANNEL) == ch.label:
            try:
                found[ch.id] = (SensorResponse.from_dict(entry["response"]), entry)
            except (KeyError, TypeError, ValueError) as exc:
                return {}, [f"sensor calibrations not used: {path or default_path()}: {exc!r}"]
    return found, []


def save(gpu_name: str, driver: str, response: SensorResponse, info: dict, path: str | None = None) -> str:
    """Store a response (replacing the model's and driver's previous one); returns the path."""
    path = path or default_path()
    data = _read(path)
    data.setdefault("responses", {})[key(gpu_name, driver)] = {
        "gpu": gpu_name,
        "driver": driver,
        "channel": CALIBRATED_CHANNEL,
        "response": response.to_dict(),
        **info,
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (json.dumps(data, indent=1) + "\n").encode())
    return path
