"""The generic hwmon source on a fake tree: what each chip means, its energy in `record`, the
Meter and the bench's columns, and unknown chips measured but kept out of totals."""

import os
import time

import pytest

from aipm_fast import Meter
from aipm_fast._native import Engine
from aipm_fast.config import EngineConfig
from aipm_fast.domains import additive_domains, bench_parts
from aipm_fast.integrations.common import total_j
from aipm_fast.recorder import Recorder
from aipm_fast.sources import hwmon
from aipm_fast.sources.base import COUNTER, INSTANT_POWER, MEAN_POWER

from fakes.hwmon import HwmonWriter, build_hwmon_tree
from recording import drain_for

OFF = {"powercap_root": "/x", "msr_root": "/x", "perf_root": "/x", "nvml_lib": "/x/libnvidia-ml.so.1"}

CHIPS = {
    "hwmon0": ("amdgpu", {1: {"power_average": 150.0, "average_interval_ms": 10}}),
    "hwmon1": ("coretemp", {}),
    "hwmon2": ("amdgpu", {1: {"power_input": 80.0, "energy_input": 80.0}}),
    "hwmon3": ("amd_energy", {1: {"energy_input": 30.0}}),
    "hwmon4": ("acme_board", {1: {"power_input": 5.0, "label": "VIN 12V"}, 2: {"power_input": 3.0}}),
}


@pytest.fixture
def tree(tmp_path):
    files = build_hwmon_tree(tmp_path / "hwmon", CHIPS)
    with HwmonWriter(files) as writer:
        yield str(tmp_path / "hwmon"), writer


def test_each_chip_says_what_it_measures_and_whether_it_adds(tree):
    root, _ = tree
    found = hwmon.discover(Engine(10), EngineConfig(hwmon_root=root))
    assert not found.problems
    d = found.domains
    assert sorted(d) == [
        "hwmon:acme_board/2",
        "hwmon:acme_board/VIN_12V",
        "hwmon:amd_energy",
        "hwmon:amdgpu-0",
        "hwmon:amdgpu-1",
    ]
    assert d["hwmon:amdgpu-0"].part == "gpu" and d["hwmon:amdgpu-0"].additive
    assert d["hwmon:amd_energy"].part == "host" and not d["hwmon:amd_energy"].additive  # RAPL counts it
    assert d["hwmon:acme_board/VIN_12V"].part == "other" and not d["hwmon:acme_board/VIN_12V"].additive
    readings = {c.name: (c.reading, c.unit, c.averaging_s) for c in found.channels}
    assert readings["hwmon:amdgpu-0.power_average"] == (MEAN_POWER, "W", 0.01)
    assert readings["hwmon:amdgpu-1.power_input"] == (INSTANT_POWER, "W", None)
    assert readings["hwmon:amdgpu-1.energy_input"] == (COUNTER, "J", None)


def test_a_missing_hwmon_folder_is_explained(tmp_path):
    found = hwmon.discover(Engine(10), EngineConfig(hwmon_root=str(tmp_path / "none")))
    assert found.problems[0].error == "no such folder" and "AIPM_HWMON_ROOT" in found.problems[0].fix


def test_record_measures_every_chip_within_2_percent(tree):
    root, writer = tree
    rec = drain_for(Recorder(hwmon_root=root, **OFF), 1.5)
    energies = rec.energy()
    span_s = (rec.stop_ns - rec.start_ns) / 1e9
    for domain, watts in [
        ("hwmon:amdgpu-0", 150.0),
        ("hwmon:amdgpu-1", 80.0),
        ("hwmon:amd_energy", 30.0),
        ("hwmon:acme_board/VIN_12V", 5.0),
        ("hwmon:acme_board/2", 3.0),
    ]:
        assert energies[domain].energy_j == pytest.approx(watts * span_s, rel=0.02), (domain, energies[domain])
    assert energies["hwmon:amdgpu-1"].method.startswith("power_input")  # finer than the counter's reads
    assert set(rec.summary()["domains"]) == set(energies)


def test_meter_and_bench_totals_count_the_gpus_and_leave_out_what_may_repeat(tree):
    root, writer = tree
    with Meter(hwmon_root=root, cuda=False, **OFF) as m:
        with m.window("w") as w:
            time.sleep(0.6)
    win = m.windows().set_index("domain")
    duration = win["duration_s"].iloc[0]
    assert win.loc["hwmon:amdgpu-0", "energy_j"] == pytest.approx(150.0 * duration, rel=0.03)
    assert bool(win.loc["hwmon:amdgpu-1", "additive"]) and not bool(win.loc["hwmon:amd_energy", "additive"])
    assert bench_parts(m.domains) == {"gpu": ["hwmon:amdgpu-0", "hwmon:amdgpu-1"], "cpu": []}
    assert sorted(additive_domains(m.domains)) == ["hwmon:amdgpu-0", "hwmon:amdgpu-1"]
    total = total_j(m.results.window_energy(w), m.domains)
    assert total == pytest.approx(230.0 * duration, rel=0.03)


def test_a_fifo_in_a_hwmon_folder_cannot_hang_discovery(tmp_path):
    chip = tmp_path / "hwmon" / "hwmon0"
    chip.mkdir(parents=True)
    os.mkfifo(chip / "name")
    os.mkfifo(chip / "power1_input")
    os.mkfifo(chip / "power1_average_interval")
    (chip / "power1_average").write_text("5000000\n")
    found = hwmon.discover(Engine(10), EngineConfig(hwmon_root=str(tmp_path / "hwmon")))
    assert [c.label for c in found.channels] == ["power_average"]  # the regular file is read
    assert list(found.domains) == ["hwmon:hwmon0"]  # named after its folder
    assert any(p.target.endswith("power1_input") for p in found.problems)
