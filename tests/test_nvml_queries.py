"""The C core's on-demand NVML queries (per-process memory and utilisation, GPM), against the
fake NVML: what each returns, and what it says when the GPU or the driver cannot answer."""

from __future__ import annotations

import math
import os
import time

import pytest

from aipm_fast._native import Engine, NativeError, lib


@pytest.fixture
def engine(fake_nvml_lib, monkeypatch):
    def make(**env):
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        e = Engine()
        e.nvml_open(str(fake_nvml_lib))
        made.append(e)
        return e

    made: list[Engine] = []
    yield make
    for e in made:
        e.close()


def test_process_memory_lists_every_compute_process_in_bytes(engine):
    e = engine(FAKE_NVML_PROCESSES="self:900:87,4242:100:5")
    assert e.nvml_process_memory(0) == {os.getpid(): 900 * 2**20, 4242: 100 * 2**20}


def test_no_compute_process_is_an_empty_answer_not_an_error(engine):
    e = engine()
    assert e.nvml_process_memory(0) == {}
    assert e.nvml_process_utilization(0, 0) == []


def test_process_utilization_gives_the_samples_after_the_stamp(engine):
    e = engine(FAKE_NVML_PROCESSES="self:900:87,4242:100:5")
    since = int(time.time() * 1e6) - 1_000_000
    samples = e.nvml_process_utilization(0, since)
    assert sorted((pid, sm) for pid, _, sm, _ in samples) == sorted([(os.getpid(), 87), (4242, 5)])
    assert all(t > since for _, t, _, _ in samples)
    assert e.nvml_process_utilization(0, int(time.time() * 1e6) + 10_000_000) == []


def test_a_query_of_a_gpu_that_does_not_exist_names_it(engine):
    e = engine(FAKE_NVML_GPUS="1")
    with pytest.raises(NativeError, match="GPU 3: no such device") as err:
        e.nvml_process_memory(3)
    assert err.value.code == lib.AIPM_EARG


def test_gpm_metrics_between_two_samples(engine):
    e = engine(FAKE_NVML_GPM="61,32,44,57")
    assert e.gpm_supported(0)
    first = e.gpm_sample(0)
    time.sleep(0.002)
    second = e.gpm_sample(0)
    try:
        values = e.gpm_metrics(first, second, [2, 3, 5, 10, 1])
    finally:
        first.close()
        second.close()
    assert {k: v for k, v in values.items() if k != 1} == {2: 61.0, 3: 32.0, 5: 44.0, 10: 57.0}
    assert math.isnan(values[1])  # a metric the GPU does not give is NaN, never 0


def test_gpm_unsupported_is_said_at_the_support_query_and_the_sample(engine):
    e = engine()
    assert not e.gpm_supported(0)
    with pytest.raises(NativeError, match="nvmlGpmSampleGet on GPU 0: Not Supported"):
        e.gpm_sample(0)


def test_gpm_metrics_refuse_samples_of_two_gpus(engine):
    e = engine(FAKE_NVML_GPUS="2", FAKE_NVML_GPM="61,32,44,57")
    first, second = e.gpm_sample(0), e.gpm_sample(1)
    try:
        with pytest.raises(NativeError, match="GPM samples of GPUs 0 and 1"):
            e.gpm_metrics(first, second, [2])
    finally:
        first.close()
        second.close()


def test_a_runs_gpu_use_without_gpm_says_why(engine):
    from aipm_fast.bench.gpu_use import GpuUseProbe

    e = engine(FAKE_NVML_PROCESSES="self:512:40")
    probe = GpuUseProbe(e, [0], on_gpu=True)
    probe.start()
    use = probe.finish()
    assert use.gpm == dict.fromkeys(use.gpm) and "GPM is not supported on GPU 0" in use.gpm_missing_reason
    assert use.process_sm_pct == 40 and use.process_gpu_memory_bytes == 512 * 2**20


def test_a_process_nvml_does_not_list_is_not_measured_rather_than_zero(engine):
    from aipm_fast.bench.gpu_use import GpuUseProbe

    e = engine(FAKE_NVML_PROCESSES="4242:512:40")  # as in a container: NVML gives the host's pids
    probe = GpuUseProbe(e, [0], on_gpu=True)
    probe.start()
    use = probe.finish()
    assert use.process_sm_pct is None and use.process_gpu_memory_bytes is None
    assert "not among NVML's compute processes on GPU 0 (pids: 4242)" in use.process_missing_reason
    assert use.attributable_share is None
