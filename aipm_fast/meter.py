"""The user API: `Meter`, windows, per-inference and per-step marks.

from aipm_fast import Meter
with Meter(out_dir="runs/a") as m:
    m.measure_baseline(2.0)
    with m.window("eval"):
        for batch in loader:
            with m.inference():
                model(batch)
print(m.summary())
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import os
import threading
import weakref

import pandas as pd

from aipm_fast.config import EngineConfig
from aipm_fast.coordinator import Coordinator
from aipm_fast.measurement import Measurement
from aipm_fast.recorder import Recorder
from aipm_fast.results import BASELINE, SessionResults, Window
from aipm_fast.timing import HostTimer, cuda_timer, now_ns

_METERS: weakref.WeakSet = weakref.WeakSet()  # every Meter of this process, for the fork hook


def _after_fork_in_child() -> None:
    """A forked child inherits the parent's Meters without their threads: each one becomes
    inert (see Meter), its fds closed in the child, its locks never taken again."""
    for m in list(_METERS):
        m._forked_from = m._pid
        m._started = False
        m._thread = None
        if m.results._files is not None:
            m.results._files.abandon()


os.register_at_fork(after_in_child=_after_fork_in_child)


def check_gpus(gpus) -> list[int] | None:
    """The `gpus` argument as a list of NVML indices (None: every GPU), or a TypeError or
    ValueError that says what was given and what is expected."""
    if gpus is None:
        return None
    if isinstance(gpus, (str, bytes)) or not hasattr(gpus, "__iter__"):
        raise TypeError(
            f"Meter: gpus must be a list of GPU indices such as [0] or [0, 1] (None: every GPU), "
            f"got {type(gpus).__name__} {gpus!r}"
        )
    out = list(gpus)
    for g in out:
        if isinstance(g, bool) or not isinstance(g, int):
            raise TypeError(f"Meter: gpus must hold GPU indices (int), got {type(g).__name__} {g!r} in {gpus!r}")
        if g < 0:
            raise ValueError(f"Meter: a GPU index is 0 or more, got {g} in {gpus!r}")
    return out


def _window_of(w) -> Window:
    """The Window behind what the user holds (a Measurement, or a Window itself)."""
    return w.window if isinstance(w, Measurement) else w


class Meter:
    """Measures energy per window and per inference (or training step).

    After os.fork (multiprocessing's fork start method, a DataLoader worker), the child's copy of
    a running Meter is inert: marks, windows and stop() (leaving the `with` block) do nothing,
    and everything else (start, flush, measure_baseline, windows, inferences, summary, report,
    ...) raises RuntimeError. The child never writes the parent's files and takes none of its
    locks; a Meter created in the child measures normally.

    Takes the engine's options (powercap_root, msr_root, perf_root, nvml_lib, gpus, cpu,
    periods_s, ...), or a ready EngineConfig as `config`. `cuda=None` uses CUDA events when
    torch sees a GPU; `out_dir` streams results to CSV files as they are integrated.
    """

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        out_dir: str | None = None,
        cuda: bool | None = None,
        drain_period_s: float = 0.1,
        timer=None,
        **engine_options,
    ):
        if "gpus" in engine_options:
            engine_options["gpus"] = check_gpus(engine_options["gpus"])
        elif config is not None:
            check_gpus(config.gpus)
        self.recorder = Recorder(config, keep_history=False, **engine_options)
        self._warn_unmetered_gpus()
        if timer is None:
            timer = cuda_timer() if cuda is not False else None
            if timer is None and cuda:
                raise RuntimeError("cuda=True but torch sees no CUDA device")
            timer = timer or HostTimer()
        self.timer = timer
        self.out_dir = out_dir
        self.coordinator = Coordinator(self.recorder, timer, out_dir, drain_period_s)
        self._index = itertools.count()
        self._windows = itertools.count()
        self._local = threading.local()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task | None = None
        self._started = False
        self._stopped = False  # a Meter measures one session: never restarted
        self._explicit: list[Window] = []  # windows open from start_window, for end_window(name)
        self._pid = os.getpid()
        self._forked_from: int | None = None  # the parent's pid, in a forked child
        _METERS.add(self)

    def _warn_unmetered_gpus(self) -> None:
        """One warning per GPU asked for by index that NVML cannot give (no such GPU, no NVML)."""
        gpus = self.recorder.config.gpus
        if not gpus:
            return
        import warnings

        problems = [p for p in self.recorder.discovery.problems if p.source == "nvml"]
        for gpu in gpus:
            why = [p for p in problems if p.target in (f"GPU {gpu}", self.recorder.config.nvml_lib)]
            if why:
                warnings.warn(f"aipm-fast: GPU {gpu} (gpus={gpus}) cannot be metered: {why[0]}", stacklevel=3)

    def _check_running(self, what: str) -> None:
        """Marks and windows belong to a running Meter: outside one they would measure nothing."""
        if not self._started:
            when = "after stop()" if self._stopped else "before start()"
            raise RuntimeError(
                f"{what} {when}: marks and windows need a running Meter (inside `with Meter() as m:`, "
                "or between m.start() and m.stop())"
            )

    def _check_process(self) -> None:
        if self._forked_from is not None:
            raise RuntimeError(
                f"this Meter belongs to process {self._forked_from}; process {os.getpid()} is a fork of it "
                "and cannot use it (create a Meter in the child to measure there)"
            )

    @property
    def results(self) -> SessionResults:
        """The session's one result object: every output of this Meter reads it."""
        return self.coordinator.results

    @property
    def running(self) -> bool:
        """Between start (or `async with`) and stop."""
        return self._started

    @property
    def domains(self):
        """domain -> its meaning (aipm_fast.sources.Domain: part, additive, parent, device)."""
        return self.recorder.discovery.domains

    @property
    def baseline_w(self) -> dict[str, float]:
        """Idle power per domain (W) from measure_baseline, scaled as the energies are ({} before)."""
        return self.results.baseline_power()

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> Meter:
        """Start sampling, with the coordinator on a background thread."""
        self._start_sampling()
        self._thread = threading.Thread(
            target=asyncio.run, args=(self.coordinator.run(),), name="aipm-coordinator", daemon=True
        )
        self._thread.start()
        return self

    def _start_sampling(self) -> None:
        self._check_process()
        if self._started:
            raise RuntimeError("this Meter is already running")
        if self._stopped:
            raise RuntimeError(
                "this Meter has stopped and cannot be restarted (its engine is closed): create a new Meter"
            )
        self._started = True
        if not self.recorder.channels:
            import warnings

            warnings.warn(
                "aipm-fast: no power source can be read here; only times will be measured. "
                + "; ".join(str(p) for p in self.recorder.discovery.problems),
                stacklevel=3,
            )
        self.recorder.start()

    def stop(self) -> None:
        """Stop sampling, integrate everything still pending, close the result files (nothing
        in a forked child)."""
        if not self._started or self._forked_from is not None:
            return
        self.coordinator.stop()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._finish()

    def _finish(self) -> None:
        self.recorder.stop()
        self._started = False
        self._stopped = True
        self.coordinator.process(final=True)
        self.coordinator.close()
        # free the engine now (thread, fds, NVML handle) rather than whenever the GC runs;
        # the report below reads the statistics kept at close
        self.recorder.close()
        if self.out_dir:
            from aipm_fast.storage import UnsafeOutputError, write_json

            try:
                write_json(os.path.join(self.out_dir, "meter.json"), self.report())
            except UnsafeOutputError:
                raise
            except OSError as exc:  # the results stay readable from this object
                import warnings

                warnings.warn(f"aipm-fast: meter.json not written: {exc}", stacklevel=3)

    def __enter__(self) -> Meter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    async def __aenter__(self) -> Meter:
        self._start_sampling()
        self._task = asyncio.get_running_loop().create_task(self.coordinator.run())
        return self

    async def __aexit__(self, *exc) -> None:
        if self._forked_from is not None:
            return
        self.coordinator.stop()
        if self._task is not None:
            await self._task
            self._task = None
        self._finish()

    # -- marks ---------------------------------------------------------------------------
    def window(self, name: str = "window") -> _WindowMark:
        """Context manager (and decorator) measuring a named window; windows may nest.
        `with m.window("eval") as w:` gives the window's Measurement (its figures once it ends)."""
        return _WindowMark(self, name)

    def start_window(self, name: str = "window") -> Measurement:
        """Opens a window explicitly, for spans that no `with` block fits; close it with
        `end_window`, from any thread. Such windows may overlap in any order. An inference
        belongs to the innermost `with` window of its thread (the `window` column of
        inferences()); an explicit window counts every inference that lies within its span."""
        self._check_running("start_window")
        w = self._open(name, explicit=True)
        with self.coordinator.lock:
            self._explicit.append(w)
        return Measurement(self, w)

    def end_window(self, w: Measurement | Window | str) -> Measurement:
        """Closes a window opened by `start_window` (what it returned, or its name: the most
        recently opened window of that name still open) and returns its Measurement."""
        if isinstance(w, str):
            with self.coordinator.lock:
                named = [x for x in self._explicit if x.name == w]
            if not named:
                open_names = sorted({x.name for x in self._explicit})
                raise ValueError(
                    f"end_window({w!r}): no window of that name is open"
                    + (f" (open: {', '.join(map(repr, open_names))})" if open_names else "")
                )
            w = named[-1]
        window = _window_of(w)
        self._close(window)
        with self.coordinator.lock:
            if window in self._explicit:
                self._explicit.remove(window)
        return w if isinstance(w, Measurement) else Measurement(self, window)

    def inference(self) -> _InferenceMark:
        """Marks one inference: CUDA-event timed on GPU, host-timed on CPU."""
        return _InferenceMark(self)

    step = inference  # one training step is marked the same way

    def _stack(self) -> list:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack

    def _open(self, name: str, explicit: bool = False) -> Window:
        if self._forked_from is not None:  # inert in a forked child: a window of nothing
            return Window(-1, name, 0, explicit=explicit)
        self._check_running(f"window {name!r}")
        w = Window(next(self._windows), name, self.timer.window_edge(), explicit=explicit)
        self.coordinator.open_window(w)
        if not explicit:  # explicit windows take no marks of a thread: see start_window
            self._stack().append(w)
        return w

    def _close(self, w: Window) -> None:
        if self._forked_from is not None:
            w.end_ns = 0
            return
        if w.end_ns is not None:
            raise ValueError(f"window {w.name!r} is already closed")
        self._check_running(f"closing window {w.name!r}")
        w.end_ns = self.timer.window_edge()
        stack = self._stack()
        if w in stack:
            stack.remove(w)
        self.coordinator.close_window(w)

    # -- baseline ------------------------------------------------------------------------
    def measure_baseline(self, seconds: float = 2.0) -> dict[str, float]:
        """Idle power per domain over the next `seconds` (do nothing else meanwhile). A duration
        that is not a positive finite number raises ValueError before anything is measured."""
        import math
        import time

        self._check_process()
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise ValueError(f"measure_baseline: seconds must be a finite number, got {seconds!r}")
        if seconds <= 0:
            raise ValueError(
                f"measure_baseline: seconds must be positive (an idle span to average over), got {seconds!r}"
            )
        if not self._started:
            raise RuntimeError("start the Meter before measuring the baseline")
        w = self._open(BASELINE)
        time.sleep(seconds)
        self._close(w)
        self.flush(w)
        return self.baseline_w

    def flush(self, window: Measurement | Window | None = None, timeout_s: float = 10.0) -> None:
        """Wait until every mark so far (or one window) is integrated."""
        import time

        self._check_process()
        window = None if window is None else _window_of(window)
        deadline = time.monotonic() + timeout_s
        while True:
            self.coordinator.process(final=not self._started)
            if window is not None:
                done = window.end_resolved or not window.end_ns
            else:
                done = not self.coordinator.pending()
            if done or time.monotonic() > deadline:
                return
            time.sleep(0.02)

    # -- results (all read from the one result object) -----------------------------------
    def inferences(self, window: str | None = None) -> pd.DataFrame:
        """One row per (inference, domain): index, window, domain, start_ns, end_ns, latency_s,
        energy_j, dynamic_energy_j, uncertainty_j (1 sigma), estimate (True where the source
        cannot resolve it), channel (the reading that answered), scale, status (provisional
        until the Meter stops, then final). `window` keeps the inferences of windows of that
        name only (cheaper than filtering afterwards in a long session)."""
        self._check_process()
        if window is not None and not isinstance(window, str):
            raise TypeError(f"window selects by name (a str), got {type(window).__name__}")
        if self._started:
            self.flush()
        return self.results.inferences(window)

    def windows(self) -> pd.DataFrame:
        """One row per (window, domain): window, window_id, domain, part, additive, start_ns,
        end_ns, duration_s, energy_j, dynamic_energy_j, uncertainty_j (1 sigma), n_inferences,
        method, status."""
        self._check_process()
        if self._started:
            self.flush()
        return self.results.windows()

    def window_energy(self, window: Measurement | Window) -> dict[str, float]:
        """{domain: J} of one closed window, as windows() gives it; waits for this window's end
        only, not for marks that other threads may keep adding."""
        window = _window_of(window)
        self.flush(window)
        return self.results.window_energy(window)

    def resolved_marks(self, since: int = 0) -> tuple[list[tuple[int, dict[str, float]]], int]:
        """Marks integrated since an earlier call, without waiting: ([(index, {domain: J})], position).

        Pass the returned position as `since` next time (0 the first time; `results.position`
        for marks from now on). A mark's energy is known only once the readings pass its end
        (typically 0.1-1 s later), so the latest marks are not here yet. Energies are scaled as
        in inferences(); NaN where a domain could not be integrated. Cheap enough to call once
        per training step.
        """
        return self.results.marks_since(since)

    def totals(self) -> pd.DataFrame:
        """One row per window: energy summed over the domains that add up without overlap (a
        package's core is not added to its package again), 1-sigma uncertainty in quadrature,
        duration, n_inferences, and `domains`, those added (aipm_fast.results.window_totals).
        Kept apart from windows(): a total row inside the per-domain table would be summed again."""
        self._check_process()
        if self._started:
            self.flush()
        return self.results.totals()

    def summary(self) -> pd.DataFrame:
        """Per (window, domain): energy, joules per inference (total and dynamic), throughput,
        and the uncertainty of joules per inference."""
        w = self.windows()
        n = w["n_inferences"].where(w["n_inferences"] > 0)
        w["joules_per_inference"] = w["energy_j"] / n
        w["dynamic_joules_per_inference"] = w["dynamic_energy_j"] / n
        w["uncertainty_j_per_inference"] = w["uncertainty_j"] / n
        w["throughput_per_s"] = n / w["duration_s"]
        return w

    def side_mean(self, quantity: str, window: Measurement | Window) -> list[float]:
        """Time-weighted mean over a window of every side channel of `quantity` ("utilization",
        "memory"), one per channel (NaN where none covers it)."""
        window = _window_of(window)
        if window.end_ns is None:
            raise ValueError(f"window {window.name!r} is still open")
        return self.coordinator.side_mean(quantity, window.start_ns, window.end_ns)

    def scales(self) -> dict[str, dict]:
        """Per domain, the counter scale of the channel that answers for it now: factor and how."""
        out = {}
        for domain in self.coordinator.ranked:
            tr = self.coordinator.primary(domain)
            s = self.results.scale(tr.channel_id) if tr is not None else None
            out[domain] = {
                "factor": s.factor if s else 1.0,
                "how": (s.how if s else "") or "not scaled",
                "channel": tr.label if tr is not None else None,
            }
        return out

    def report(self) -> dict:
        """Everything needed to judge the numbers: windows, scales, channel health, problems."""
        from aipm_fast.policy import UNCERTAINTY

        self._check_process()
        return {
            "windows": json.loads(self.windows().to_json(orient="records")),
            "baseline_w": self.baseline_w,
            "scales": self.scales(),
            "domains": {d: m.to_dict() for d, m in self.domains.items()},
            "counter_events": {
                self.recorder.channels[cid].name: text for cid, text in self.coordinator.counter_events().items()
            },
            "uncertainty": UNCERTAINTY,
            "status": self.results.status,
            "files": self.results.file_stats(),
            "recording": self.recorder.summary(),
        }


class _WindowMark:
    __slots__ = ("meter", "name", "w")

    def __init__(self, meter: Meter, name: str):
        self.meter, self.name = meter, name
        self.w: Window | None = None

    def __enter__(self) -> Measurement:
        w = self.w = self.meter._open(self.name)
        return Measurement(self.meter, w)

    def __exit__(self, *exc):
        self.meter._close(self.w)

    def __call__(self, func):
        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            with _WindowMark(self.meter, self.name):
                return func(*args, **kwargs)

        return wrapper


class _InferenceMark:
    """Kept minimal: this runs once per inference in the user's hot loop. Once the mark has
    ended, `index` is its index in inferences() and resolved_marks()."""

    __slots__ = ("meter", "start", "index")

    def __init__(self, meter: Meter):
        self.meter = meter

    def __enter__(self):
        t = now_ns()  # before the meter's own checks: the gap to the previous mark is the user's
        m = self.meter
        if m._forked_from is None:
            if not m._started:
                m._check_running("a mark (inference or step)")
            self.start = m.timer.begin(t)
        return self

    def __exit__(self, *exc):
        m = self.meter
        if m._forked_from is not None:  # inert in a forked child
            return
        stack = m._stack()  # (a getattr with a default would raise inside while no window is open)
        w = stack[-1] if stack else None
        if w is not None:
            w.n_marks += 1
        self.index = i = next(m._index)
        # the end last: its event lands at the same point of the stream (this bookkeeping queues
        # no GPU work)
        timer = m.timer
        end = timer.end(self.start)
        # a plain tuple in Mark's order: cheaper to make here than the named one
        m.coordinator.marks.append((i, w.name if w else "", timer.anchor, self.start, end))
        timer.ended(end)  # the meter's bookkeeping is done: the gap to a next mark starts now
