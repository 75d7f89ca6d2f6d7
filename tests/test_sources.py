"""Discovery details that the end-to-end tests do not reach: perf PMU parsing, MSR units, and
hostile trees (a FIFO, a truncated MSR file, a backwards cpumask, more zones than slots)."""

import os

import pytest

from aipm_fast._native import MAX_CHANNELS, Engine
from aipm_fast.config import EngineConfig
from aipm_fast.recorder import Recorder
from aipm_fast.sources import OTHER_SOURCES, RESERVED_SLOTS, msr, perf, powercap


def test_perf_event_terms_and_cpumask_are_parsed():
    assert perf.parse_event("event=0x05") == 5
    assert perf.parse_event("config=0,event=0x02,umask=0") == 2
    assert perf.parse_cpumask("0,28-29") == [0, 28, 29]
    with pytest.raises(ValueError, match="no event= term"):
        perf.parse_event("umask=0x1")


def test_perf_pmu_that_cannot_be_opened_is_explained(tmp_path):
    pmu = tmp_path / "power"
    (pmu / "events").mkdir(parents=True)
    (pmu / "type").write_text("4242\n")  # no such PMU type: perf_event_open refuses it
    (pmu / "cpumask").write_text("0\n")
    (pmu / "events" / "energy-psys").write_text("event=0x05\n")
    (pmu / "events" / "energy-psys.scale").write_text("2.3283064365386962890625e-10\n")
    found = perf.discover(Engine(10), EngineConfig(perf_root=str(tmp_path)))
    assert not found.channels
    problem = found.problems[0]
    assert problem.target == "energy-psys on cpu 0"
    assert "perf_event_open(type=4242, config=0x5, cpu=0)" in problem.error
    assert "perf_event_paranoid" in problem.fix


def test_missing_perf_pmu_is_explained(tmp_path):
    found = perf.discover(Engine(10), EngineConfig(perf_root=str(tmp_path)))
    assert found.problems[0].error == "no power PMU"


def test_msr_energy_unit_comes_from_bits_12_to_8():
    assert msr.energy_unit_j(0x000A0E03) == 2.0**-14
    assert msr.energy_unit_j(0x000A1003) == 2.0**-16


def test_amd_msr_package_counter(fake_msr):
    root, writer = fake_msr(vendor="amd")
    found = msr.discover(Engine(10), EngineConfig(msr_root=str(root), cpu_root="/nonexistent"))
    assert "rapl:package-0" in {c.domain for c in found.channels}


# -- hostile trees: every channel refused says why ------------------------------------------


def test_perf_cpumask_that_runs_backwards_is_explained(tmp_path):
    for bad in ["5-2", "", "1-2-3", "-1", "a"]:
        with pytest.raises(ValueError, match="cpumask"):
            perf.parse_cpumask(bad)
    pmu = tmp_path / "power"
    (pmu / "events").mkdir(parents=True)
    (pmu / "type").write_text("4242\n")
    (pmu / "cpumask").write_text("5-2\n")
    (pmu / "events" / "energy-pkg").write_text("event=0x02\n")
    found = perf.discover(Engine(10), EngineConfig(perf_root=str(tmp_path)))
    assert not found.channels
    assert found.problems[0].target == str(pmu) and "'5-2' runs backwards" in found.problems[0].error


def test_msr_file_too_short_for_the_energy_registers_is_explained(fake_msr):
    root, writer = fake_msr(start=False)
    path = root / "0" / "msr"
    os.truncate(path, msr.INTEL_UNITS + 8)  # the unit register, none of the energy registers
    found = msr.discover(Engine(10), EngineConfig(msr_root=str(root), cpu_root="/nonexistent"))
    assert not found.channels
    (problem,) = found.problems
    assert problem.target == f"{path}@0x611" and "too short for the package energy register 0x611" in problem.error
    os.truncate(path, 0x611 + 3)  # part of the package register
    found = msr.discover(Engine(10), EngineConfig(msr_root=str(root), cpu_root="/nonexistent"))
    assert "only 3 of its 8 bytes" in found.problems[0].error


def test_a_fifo_in_a_powercap_zone_is_refused_naming_it(fake_powercap):
    root, writer = fake_powercap(start=False)
    energy = root / "intel-rapl:0" / "intel-rapl:0:0" / "energy_uj"
    energy.unlink()
    os.mkfifo(energy)
    limit = root / "intel-rapl:0" / "intel-rapl:0:1" / "max_energy_range_uj"
    limit.unlink()
    os.mkfifo(limit)
    found = powercap.discover(Engine(10), EngineConfig(powercap_root=str(root)))
    problems = {p.target: p.error for p in found.problems}
    assert "a FIFO" in problems[str(energy)] and "a FIFO" in problems[str(limit)]
    assert [c.domain for c in found.channels] == ["rapl:package-0"]  # the package is still measured


def test_thousands_of_zones_leave_slots_for_the_gpu_and_say_what_was_dropped(tmp_path, fake_nvml_lib):
    for i in range(600):  # 600 zones, for 256 slots
        zone = tmp_path / "powercap" / f"intel-rapl:{i}"
        zone.mkdir(parents=True)
        (zone / "name").write_text(f"package-{i}\n")
        (zone / "max_energy_range_uj").write_text("262143328850\n")
        (zone / "energy_uj").write_text("1000\n")
    rec = Recorder(
        powercap_root=str(tmp_path / "powercap"),
        nvml_lib=str(fake_nvml_lib),
        msr_root="/nonexistent",
        perf_root="/nonexistent",
    )
    try:
        sources = [c.source for c in rec.discovery.channels]
        assert sources.count("nvml") == 5  # every default NVML reading of the GPU
        assert sources.count("powercap") == MAX_CHANNELS - RESERVED_SLOTS * len(OTHER_SOURCES)
        (dropped,) = [p for p in rec.discovery.problems if "channel slot" in p.error]
        assert dropped.target.startswith(f"{600 - sources.count('powercap')} channel(s): ")
        assert "kept for the sources discovered after this one" in dropped.error
    finally:
        rec.close()
