"""Discovery details that the end-to-end tests do not reach: perf PMU parsing, MSR units."""

import pytest

from aipm_fast._native import Engine
from aipm_fast.config import EngineConfig
from aipm_fast.sources import msr, perf


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
