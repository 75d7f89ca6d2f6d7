"""What a run did on its GPUs, beside its energy: the process's own SM utilisation and GPU
memory, as AIPowerMeter measured them (per process, through NVML), and GPM's SM activity,
tensor-core activity and DRAM bandwidth utilisation, which explain the joules far better than
any utilisation.

Read on demand at each run's edges (`GpuUseProbe.start` before the first pass, `finish` after
the last), never in the sampler loop: GPM metrics are averages between any two samples, and the
driver keeps per-process utilisation samples, so two queries cover the whole run.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

from aipm_fast._native import Engine, GpmSample, NativeError

__all__ = ["GPM_METRICS", "GpuUse", "GpuUseProbe"]

#: GPM metric ids (NVML_GPM_METRIC_*) -> the run file's field, all in % of the GPU's capacity
GPM_METRICS = {
    2: "gpm_sm_active_pct",  # SM_UTIL: the share of SMs busy
    3: "gpm_sm_occupancy_pct",  # SM_OCCUPANCY: resident warps against the maximum
    5: "gpm_tensor_active_pct",  # ANY_TENSOR_UTIL: time the SMs ran any tensor-core op
    10: "gpm_dram_bw_pct",  # DRAM_BW_UTIL: DRAM bandwidth against its maximum
}


@dataclass
class GpuUse:
    """A run's use of its GPUs; None where not measured, with the reason."""

    process_sm_pct: float | None = None  # this process's SM utilisation, mean over the run (summed over GPUs)
    all_processes_sm_pct: float | None = None  # every process's, on the same GPUs
    process_gpu_memory_bytes: int | None = None  # what this process holds on the GPUs at the run's end
    process_missing_reason: str | None = None
    gpm: dict[str, float | None] = field(default_factory=lambda: dict.fromkeys(GPM_METRICS.values()))
    gpm_missing_reason: str | None = None
    # AIPowerMeter's per-GPU figures: {gpu: {pid: bytes}} and [{"gpu", "pid", "sm"}]
    memory_by_gpu: dict[int, dict[int, int]] = field(default_factory=dict)
    sm_by_gpu: list[dict] = field(default_factory=list)

    @property
    def attributable_share(self) -> float | None:
        """The share of the GPUs' SM time that was this process's (AIPowerMeter's attribution
        of board power); None where unknown."""
        if self.process_sm_pct is None or not self.all_processes_sm_pct:
            return None  # not measured, or no kernel of any process in the driver's samples
        return self.process_sm_pct / self.all_processes_sm_pct


class GpuUseProbe:
    """Per-process and GPM queries of the metered GPUs over one run."""

    def __init__(self, engine: Engine | None, gpus: list[int], on_gpu: bool, pid: int | None = None):
        """`on_gpu`: the model runs on these GPUs, so this process must be among NVML's compute
        processes (if it is not, NVML sees other pids, as in a container: not measured)."""
        self.engine, self.gpus, self.on_gpu = engine, list(gpus), on_gpu
        self.pid = os.getpid() if pid is None else pid
        self._start_us = 0
        self._first: dict[int, GpmSample] = {}
        self._gpm_reason: str | None = None

    def start(self) -> None:
        self._start_us = int(time.time() * 1e6)
        self._close_samples()
        if self.engine is None or not self.gpus:
            self._gpm_reason = "no NVML GPU metered"
            return
        self._gpm_reason = None
        for gpu in self.gpus:
            try:
                if not self.engine.gpm_supported(gpu):
                    self._gpm_reason = f"GPM is not supported on GPU {gpu} (Hopper and newer, driver 520+)"
                    break
                self._first[gpu] = self.engine.gpm_sample(gpu)
            except NativeError as exc:
                self._gpm_reason = f"GPM: {exc}"
                break
        if self._gpm_reason:
            self._close_samples()

    def finish(self) -> GpuUse:
        use = GpuUse()
        if self.engine is None or not self.gpus:
            use.process_missing_reason = use.gpm_missing_reason = "no NVML GPU metered"
            return use
        self._finish_gpm(use)
        self._finish_processes(use)
        return use

    def _finish_gpm(self, use: GpuUse) -> None:
        if self._gpm_reason:
            use.gpm_missing_reason = self._gpm_reason
            return
        assert self.engine is not None
        totals: dict[str, list[float]] = {name: [] for name in GPM_METRICS.values()}
        try:
            for gpu, first in self._first.items():
                second = self.engine.gpm_sample(gpu)
                try:
                    values = self.engine.gpm_metrics(first, second, list(GPM_METRICS))
                finally:
                    second.close()
                for metric, name in GPM_METRICS.items():
                    totals[name].append(values[metric])
        except NativeError as exc:
            use.gpm_missing_reason = f"GPM: {exc}"
            return
        finally:
            self._close_samples()
        # one figure per run: the mean over the metered GPUs (NaN where a GPU lacks the metric)
        use.gpm = {name: _mean(v) for name, v in totals.items()}

    def _finish_processes(self, use: GpuUse) -> None:
        assert self.engine is not None
        ours, everyone, held = 0.0, 0.0, 0
        try:
            for gpu in self.gpus:
                by_pid: dict[int, list[int]] = {}
                for pid, _, sm, _ in self.engine.nvml_process_utilization(gpu, self._start_us):
                    by_pid.setdefault(pid, []).append(sm)
                means = {pid: sum(v) / len(v) for pid, v in by_pid.items()}
                ours += means.get(self.pid, 0.0)
                everyone += sum(means.values())
                use.sm_by_gpu.append({"gpu": gpu, "pid": self.pid, "sm": means.get(self.pid, 0.0)})
                memory = self.engine.nvml_process_memory(gpu)
                if self.pid not in memory and self.on_gpu:
                    pids = ", ".join(map(str, sorted(memory))) or "none"
                    use.process_missing_reason = (
                        f"this process (pid {self.pid}) is not among NVML's compute processes on GPU {gpu} "
                        f"(pids: {pids}); in a container NVML gives the host's pids"
                    )
                    use.memory_by_gpu, use.sm_by_gpu = {}, []
                    return
                mine = memory.get(self.pid)
                use.memory_by_gpu[gpu] = {self.pid: mine} if mine is not None else {}
                held += mine or 0
        except NativeError as exc:
            use.process_missing_reason = f"per-process NVML query: {exc}"
            use.memory_by_gpu, use.sm_by_gpu = {}, []
            return
        use.process_sm_pct, use.all_processes_sm_pct = ours, everyone
        use.process_gpu_memory_bytes = held

    def _close_samples(self) -> None:
        for sample in self._first.values():
            sample.close()
        self._first = {}


def _mean(values: list[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite and len(finite) == len(values) else None


def nvml_gpus(recorder, chosen: list[int] | None) -> dict[str, int]:
    """GPU domain -> its NVML index, for the GPUs the recorder meters through NVML (`chosen`, or
    all); empty where they cannot be matched (a GPU none of whose channels could be read)."""
    channels = recorder.discovery.channels
    domains = list(dict.fromkeys(c.domain for c in channels if c.source == "nvml"))
    if not domains:
        return {}
    try:
        count = recorder.engine.nvml_open(recorder.config.nvml_lib)  # open already: the count
    except NativeError:
        return {}
    indices = [g for g in (range(count) if chosen is None else chosen) if 0 <= g < count]
    return dict(zip(domains, indices)) if len(domains) == len(indices) else {}
