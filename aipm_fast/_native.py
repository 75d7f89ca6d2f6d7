"""The one module that imports the compiled sampler (aipm_fast._aipm_native).

Everything else in the package talks to the C core through `Engine`, which turns negative
return codes into exceptions carrying the C side's message (which file, which call, why), and
drains the ring straight into numpy without a Python object per sample.
"""

from __future__ import annotations

import functools

import numpy as np

try:
    from aipm_fast._aipm_native import ffi, lib
except ImportError as exc:  # pragma: no cover - exercised only on a broken install
    raise ImportError(
        "aipm-fast's native sampler (aipm_fast._aipm_native) is not built. Install the package "
        "with `pip install .` (needs gcc), or build it in place with "
        "`python csrc/build_native.py`."
    ) from exc

RECORD_DTYPE = np.dtype([("t_ns", "<i8"), ("value", "<f8"), ("channel", "<u4"), ("flags", "<u4")])
if ffi.sizeof("aipm_record") != RECORD_DTYPE.itemsize:  # pragma: no cover - a build mismatch
    raise ImportError("aipm_record and RECORD_DTYPE disagree in size: rebuild the extension")

MAX_CHANNELS = lib.AIPM_MAX_CHANNELS  # C channel slots per engine; discovery shares them out
FLAG_REPEAT = lib.AIPM_FLAG_REPEAT
FLAG_FINAL = lib.AIPM_FLAG_FINAL

NVML_KINDS = {
    "power_samples": lib.AIPM_NVML_POWER_SAMPLES,
    "power_instant": lib.AIPM_NVML_POWER_INSTANT,
    "energy": lib.AIPM_NVML_ENERGY,
    "utilization": lib.AIPM_NVML_UTILIZATION,
    "memory_used": lib.AIPM_NVML_MEMORY_USED,
    "power_average": lib.AIPM_NVML_POWER_AVERAGE,
}

ERROR_NAMES = {
    lib.AIPM_ENOMEM: "out of memory",
    lib.AIPM_EOPEN: "cannot open",
    lib.AIPM_EREAD: "read failed",
    lib.AIPM_EPARSE: "not a number",
    lib.AIPM_ESYMBOL: "missing library function",
    lib.AIPM_ENVML: "NVML error",
    lib.AIPM_EARG: "bad argument",
    lib.AIPM_ESTATE: "wrong state",
    lib.AIPM_EGONE: "file removed",
    lib.AIPM_ETIMEOUT: "first readings too slow",
}


QUERY_MAX_PROCESSES = 256  # processes one per-process query returns at most
QUERY_MAX_UTIL_SAMPLES = 4096
UINT64_MAX = 2**64 - 1


class GpmSample:
    """One GPM sample buffer of the C core (aipm_gpm_sample), taken on one GPU."""

    def __init__(self, engine: Engine, handle, gpu: int):
        self.engine, self.handle, self.gpu = engine, handle, gpu

    def close(self) -> None:
        if self.handle is not None and self.engine._e is not None:
            lib.aipm_gpm_sample_free(self.engine._e, self.handle)
        self.handle = None


#: the start of the message of a channel refused for want of a slot (discovery gathers them)
NO_SLOT = "no channel slot left"


class NativeError(RuntimeError):
    """A setup call of the C core failed; `code` is the AIPM_E* value, `errno` the OS errno
    behind it (for code AIPM_ENVML, NVML's return code), or None where there is none."""

    def __init__(self, code: int, message: str, errno: int | None = None):
        super().__init__(message)
        self.code = code
        self.errno = errno


def now_ns() -> int:
    """CLOCK_MONOTONIC in ns, the clock every record is stamped with."""
    return lib.aipm_now_ns()


class CudaRuntime:
    """The CUDA runtime library this process has already loaded (csrc/cudart.c): its event
    functions on raw handles, each returning the runtime's cudaError_t. `record(event, stream)`
    is the C function itself with the runtime bound, so that a mark's boundary costs one cffi
    call; the other calls are not on a hot path. Raises NativeError when the library is not
    loaded or lacks an event function."""

    def __init__(self, library_path: str):
        error = ffi.new("char[]", 512)
        rt = lib.aipm_cudart_open(library_path.encode(), error, 512)
        if rt == ffi.NULL:
            raise NativeError(lib.AIPM_EOPEN, ffi.string(error).decode(errors="replace"))
        # the pointer owns the C side: freed once nothing (these partials included) holds it
        self._rt = ffi.gc(rt, lib.aipm_cudart_close)
        self.record = functools.partial(lib.aipm_cudart_event_record, self._rt)
        self.query = functools.partial(lib.aipm_cudart_event_query, self._rt)
        self.synchronize = functools.partial(lib.aipm_cudart_event_synchronize, self._rt)
        self.destroy = functools.partial(lib.aipm_cudart_event_destroy, self._rt)

    def create(self) -> tuple[int, int]:
        """(cudaError_t, the new event's handle)"""
        handle = ffi.new("uintptr_t *")
        rc = lib.aipm_cudart_event_create(self._rt, handle)
        return rc, int(handle[0])

    def elapsed_ms(self, start: int, end: int) -> tuple[int, float]:
        """(cudaError_t, ms from start to end)"""
        ms = ffi.new("float *")
        rc = lib.aipm_cudart_event_elapsed_ms(self._rt, start, end, ms)
        return rc, float(ms[0])

    def resolve(self, anchors, starts, ends) -> tuple[int, int, list[float], list[float]]:
        """(cudaError_t, n, ms since each anchor, ms of each duration) for the leading n marks
        whose end event is complete (aipm_cudart_resolve)."""
        count = len(ends)
        since = ffi.new("float[]", count)
        duration = ffi.new("float[]", count)
        error = ffi.new("int *")
        n = lib.aipm_cudart_resolve(
            self._rt,
            count,
            ffi.new("uintptr_t[]", anchors),
            ffi.new("uintptr_t[]", starts),
            ffi.new("uintptr_t[]", ends),
            since,
            duration,
            error,
        )
        return int(error[0]), int(n), ffi.unpack(since, n), ffi.unpack(duration, n)


def _ns(seconds: float) -> int:
    return max(1, int(round(seconds * 1e9)))


class Engine:
    """The sampler's two threads (fast channels, library calls), its channels and its rings."""

    def __init__(self, ring_capacity_log2: int = 18):
        self._e = lib.aipm_engine_new(ring_capacity_log2)
        if self._e == ffi.NULL:
            raise NativeError(lib.AIPM_EARG, f"cannot create the engine with a ring of 2**{ring_capacity_log2} records")
        self._slot_limit: int | None = None

    # -- channel slots -------------------------------------------------------------------
    @property
    def n_channels(self) -> int:
        return self.sampler_stats()["n_channels"]

    def limit_channels(self, total: int | None) -> None:
        """Refuse (NativeError naming NO_SLOT) any channel that would make more than `total`
        in all; None lifts the limit. Discovery uses it to keep slots for later sources."""
        self._slot_limit = total

    def _slot(self) -> None:
        used = self.n_channels
        limit = MAX_CHANNELS if self._slot_limit is None else min(self._slot_limit, MAX_CHANNELS)
        if used >= limit:
            kept = MAX_CHANNELS - limit
            raise NativeError(
                lib.AIPM_ESTATE,
                f"{NO_SLOT}: {used} of the engine's {MAX_CHANNELS} are taken"
                + (f" and {kept} are kept for the sources discovered after this one" if kept else ""),
            )

    # -- setup -------------------------------------------------------------------------
    def _check(self, rc: int) -> int:
        if rc < 0:
            message = ffi.string(lib.aipm_last_error(self._e)).decode(errors="replace")
            errno = lib.aipm_last_errno(self._e)
            raise NativeError(rc, message or ERROR_NAMES.get(rc, f"error {rc}"), errno or None)
        return rc

    def add_text_counter(self, path: str, scale: float, period_s: float) -> int:
        self._slot()
        return self._check(lib.aipm_add_text_counter(self._e, path.encode(), scale, _ns(period_s)))

    def add_msr_counter(self, path: str, register: int, scale: float, period_s: float) -> int:
        self._slot()
        return self._check(lib.aipm_add_msr_counter(self._e, path.encode(), register, scale, _ns(period_s)))

    def add_perf_counter(self, type_: int, config: int, cpu: int, scale: float, period_s: float) -> int:
        self._slot()
        return self._check(lib.aipm_add_perf_counter(self._e, type_, config, cpu, scale, _ns(period_s)))

    def add_lateness_channel(self) -> int:
        return self._check(lib.aipm_add_lateness_channel(self._e))

    def nvml_open(self, library: str) -> int:
        return self._check(lib.aipm_nvml_open(self._e, library.encode()))

    def nvml_device_name(self, gpu: int) -> str:
        buf = ffi.new("char[]", 96)
        if lib.aipm_nvml_device_name(self._e, gpu, buf, 96) < 0:
            return f"GPU {gpu}"
        return ffi.string(buf).decode(errors="replace")

    def nvml_error_string(self, code: int) -> str:
        """NVML's text for a return code; a placeholder where the library gives none."""
        text = lib.aipm_nvml_error_string(self._e, code)
        return ffi.string(text).decode(errors="replace") if text != ffi.NULL else "unknown NVML error"

    def add_nvml_channel(self, gpu: int, kind: str, period_s: float) -> int:
        self._slot()
        return self._check(lib.aipm_add_nvml_channel(self._e, gpu, NVML_KINDS[kind], _ns(period_s)))

    def set_backoff(self, channel: int, quiet_s: float | None, max_interval_s: float = 1.0) -> None:
        """Read `channel` less often once its reading has been unchanged (or failing) for quiet_s:
        its interval doubles at each quiet read up to max_interval_s, and its first change brings
        its period back. None: never (the default)."""
        if (quiet_s is not None and not quiet_s > 0) or not max_interval_s > 0:
            raise ValueError(
                f"backoff of channel {channel}: quiet span {quiet_s!r} s and longest interval "
                f"{max_interval_s!r} s must be positive"
            )
        quiet = 0 if quiet_s is None else _ns(quiet_s)
        self._check(lib.aipm_set_backoff(self._e, channel, quiet, _ns(max_interval_s)))

    # -- on-demand NVML queries, from the caller's thread (never the sampler's) -----------
    def nvml_process_memory(self, gpu: int) -> dict[int, int | None]:
        """GPU memory (bytes) each compute process holds on NVML GPU `gpu`, by pid; None where
        NVML cannot tell. Raises NativeError (AIPM_ESYMBOL: the driver lacks the call)."""
        out = ffi.new("aipm_process_memory[]", QUERY_MAX_PROCESSES)
        n = self._check(lib.aipm_nvml_process_memory(self._e, gpu, out, QUERY_MAX_PROCESSES))
        held = {int(out[i].pid): int(out[i].used_bytes) for i in range(n)}
        return {pid: (None if used == UINT64_MAX else used) for pid, used in held.items()}

    def nvml_process_utilization(self, gpu: int, since_us: int) -> list[tuple[int, int, int, int]]:
        """The driver's per-process samples on GPU `gpu` stamped after since_us (µs since the
        epoch): (pid, t_us, sm %, memory %) each; empty when no process ran a kernel."""
        out = ffi.new("aipm_process_util[]", QUERY_MAX_UTIL_SAMPLES)
        n = self._check(lib.aipm_nvml_process_util(self._e, gpu, since_us, out, QUERY_MAX_UTIL_SAMPLES))
        return [(int(out[i].pid), int(out[i].t_us), int(out[i].sm_pct), int(out[i].mem_pct)) for i in range(n)]

    def gpm_supported(self, gpu: int) -> bool:
        """Whether NVML GPU `gpu` gives GPM metrics (Hopper and newer, with a driver that has them)."""
        return self._check(lib.aipm_gpm_supported(self._e, gpu)) == 1

    def gpm_sample(self, gpu: int) -> GpmSample:
        """A GPM sample of GPU `gpu` taken now; free it with GpmSample.close() before the engine."""
        out = ffi.new("aipm_gpm_sample **")
        self._check(lib.aipm_gpm_sample_new(self._e, out))
        handle = out[0]
        sample = GpmSample(self, handle, gpu)
        try:
            self._check(lib.aipm_gpm_sample_take(self._e, gpu, handle))
        except NativeError:
            sample.close()
            raise
        return sample

    def gpm_metrics(self, first: GpmSample, second: GpmSample, ids: list[int]) -> dict[int, float]:
        """GPM metric id -> its average between two samples of one GPU; NaN for a metric the
        GPU does not give."""
        n = len(ids)
        values = ffi.new("double[]", max(n, 1))
        codes = ffi.new("int32_t[]", max(n, 1))
        self._check(lib.aipm_gpm_metrics(self._e, first.handle, second.handle, ids, n, values, codes))
        return {ids[i]: float(values[i]) for i in range(n)}

    def record_unchanged(self, on: bool = True) -> None:
        """Record every reading, not only changes (sampling studies at full rate)."""
        lib.aipm_set_record_unchanged(self._e, 1 if on else 0)

    # -- running -----------------------------------------------------------------------
    def start(self, first_pass_limit_s: float = 2.0) -> None:
        """Starts the sampler and returns once every channel holds a first reading; raises
        NativeError (code AIPM_ETIMEOUT, sampler stopped again) if that takes longer than
        first_pass_limit_s."""
        lib.aipm_set_first_pass_limit(self._e, _ns(first_pass_limit_s))
        self._check(lib.aipm_start(self._e))

    def stop(self) -> None:
        if lib.aipm_running(self._e):
            lib.aipm_stop(self._e)

    @property
    def running(self) -> bool:
        return bool(lib.aipm_running(self._e))

    def pending(self) -> int:
        return lib.aipm_pending(self._e)

    def drain(self, max_records: int | None = None) -> np.ndarray:
        """Everything in the ring (or at most max_records), oldest first, as RECORD_DTYPE."""
        n = self.pending() if max_records is None else max_records
        out = np.empty(n, dtype=RECORD_DTYPE)
        got = self.drain_into(out)
        return out[:got]

    def drain_into(self, out: np.ndarray) -> int:
        """Copies into a preallocated RECORD_DTYPE array; returns how many records."""
        if out.size == 0:
            return 0
        return lib.aipm_drain(self._e, ffi.from_buffer("aipm_record[]", out), out.size)

    def channel_stats(self, channel: int) -> dict:
        s = ffi.new("aipm_channel_stats *")
        self._check(lib.aipm_channel_stats_get(self._e, channel, s))
        return {
            "reads": s.reads,
            "errors": s.errors,
            "changes": s.changes,
            "read_ns_total": s.read_ns_total,
            "last_read_ns": s.last_read_ns,
            "last_change_ns": s.last_change_ns,
            "last_error": s.last_error,
            "last_error_kind": s.last_error_kind,
            "last_value": s.last_value,
            "interval_ns": s.interval_ns,
        }

    def sampler_stats(self) -> dict:
        s = ffi.new("aipm_sampler_stats *")
        lib.aipm_sampler_stats_get(self._e, s)
        return {
            "wakeups": s.wakeups,
            "missed_deadlines": s.missed_deadlines,
            "overflows": s.overflows,
            "records_written": s.records_written,
            "lateness_max_ns": s.lateness_max_ns,
            "lateness_mean_ns": s.lateness_sum_ns / s.wakeups if s.wakeups else 0.0,
            "cpu_ns": s.cpu_ns,
            "ring_capacity": s.ring_capacity,
            "n_channels": s.n_channels,
            "library_wakeups": s.library_wakeups,
            "library_lateness_max_ns": s.library_lateness_max_ns,
            "library_cpu_ns": s.library_cpu_ns,
        }

    def close(self) -> None:
        if self._e is not None and self._e != ffi.NULL:
            lib.aipm_engine_free(self._e)
        self._e = None

    def abandon(self) -> None:
        """In a forked child: forget the parent's engine without touching it (its thread is not
        in this process and its mutex may be held); the child's memory goes with the child."""
        self._e = None

    def __del__(self):  # the C side owns a thread and fds: never leak them
        try:
            self.close()
        except Exception:
            pass
