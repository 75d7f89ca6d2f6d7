"""The deep-learning energy benchmark: the protocol behind `aipm-fast bench`.

For each input size: warm up, then repeat a run (10 by default) of many inferences, each run
a window of the Meter and each forward pass a mark (CUDA-event timed on GPU). An idle
baseline is measured first, so results give total and dynamic (above idle) energy.

One inference is one input sample: joules per inference = the run's energy / (forward passes x
batch size), as in the AIPowerMeter tables. Latency is that of one forward pass (one batch).

Output folder (readable by `aipm-fast report` and by AIPowerMeter's own scripts):
    meta.json                              model, options, versions, devices
    input_<size>/run_<k>/run.json          the run's figures (a RunFile, bench/runfile.py)
    input_<size>/run_<k>/inferences.csv    one row per forward pass
    input_<size>/run_<k>/power_metrics.json, latency.csv, metadata.json    AIPowerMeter's (aipowermeter.py)
    input_<size>/run_0/samples.parquet     raw readings of the first run of each size
    summary.csv, plots/*.png               medians over runs, from aipm_fast.bench.report
Under torchrun (sweep.py, gather.py) also input_<size>/run_<k>/placement.json and sweep_runs.csv.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from aipm_fast.bench import gather, models
from aipm_fast.bench.aipowermeter import process_memory, write_run_files
from aipm_fast.bench.folder import INFERENCE_COLUMNS, load_runs, run_folder
from aipm_fast.bench.gpu_use import GpuUse, GpuUseProbe, nvml_gpus
from aipm_fast.bench.model_counts import model_columns, prune_request
from aipm_fast.bench.runfile import ENERGY_PARTS, PartEnergy, RunFile
from aipm_fast.bench.summary import summarize, write_summary
from aipm_fast.domains import bench_parts
from aipm_fast.prune import PruneError
from aipm_fast.storage import write_json

if TYPE_CHECKING:
    from aipm_fast.measurement import Measurement


@dataclass
class BenchOptions:
    model: str
    sizes: list[int]
    batch_size: int
    runs: int = 10
    duration_s: float | None = 5.0  # per run; ignored when iters is given
    iters: int | None = None  # forward passes per run
    warmup_s: float = 2.0
    baseline_s: float = 3.0
    device: str = "cpu"
    dtype: str = "float32"
    out: str = "aipm-bench"
    weights: str | None = None
    precision: float | None = None  # adaptive: stop once the median J/inference is this well known
    min_runs: int = 3
    engine: dict = field(default_factory=dict)
    prune: str | None = None  # magnitude, snip or force (aipm_fast.prune); None: the dense model
    sparsity: float | None = None  # share of the prunable weights removed (2:4: 0.5)
    sparsity_format: str | None = None  # masked (default with prune), 2:4 or structured


class BenchError(RuntimeError):
    pass


#: why a run of a sweep with every GPU at once has no cpu and total figure (sweep.py)
HOST_SHARED = (
    "host energy not split between runs at once (--gpus-at-once all): "
    "meta.json's sweep.host_energy_per_node has each node's host energy over the sweep"
)


def median_precision(values: list[float]) -> float:
    """Relative half-width of an approximate 95% interval of the median (McGill et al.'s notch:
    1.58 IQR / sqrt(n)), or inf while fewer than three values are finite."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)])
    if v.size < 3 or np.median(v) == 0:
        return math.inf
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return 1.58 * (q3 - q1) / math.sqrt(v.size) / abs(med)


def _dtype(name: str):
    import torch

    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise BenchError(f"--dtype {name!r}: choose one of {', '.join(table)}")
    return table[name]


class Benchmark:
    COMMAND = "bench"  # the command whose runs these are, as AIPowerMeter's metadata names it

    def __init__(self, opts: BenchOptions, meter=None, progress=None, log=print, sweep=None):
        self.opts = opts
        self.sweep = sweep  # this rank's part of a sweep under torchrun (sweep.py), or None
        if sweep is not None and meter is not None:
            raise BenchError("a sweep meters with its own Meter (this rank's GPU, the history it keeps)")
        if sweep is not None and opts.precision is not None:
            raise BenchError("--precision decides the runs as they come; a sweep over ranks shares fixed --runs")
        self.metered_gpus = None  # NVML indices the benchmark's own Meter reads (None: all)
        self.spec = models.get_spec(opts.model)
        for size in opts.sizes:
            models.validate_size(opts.model, size)
        self._check_options()
        try:
            self.prune_request = self._prune_request()
        except ValueError as exc:
            raise BenchError(str(exc)) from None
        self.model_columns: dict[int, dict[str, Any]] = {}  # size -> run.json's columns of the model as it ran
        self.meter = meter
        self.progress = progress
        self.log = log

    def _check_options(self) -> None:
        if self.opts.duration_s is None and self.opts.iters is None:
            raise BenchError("give --duration or --iters")

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> pd.DataFrame | None:
        """The benchmark's summary (None on the ranks of a sweep but rank 0)."""
        import torch

        from aipm_fast import Meter

        opts = self.opts
        if opts.device.startswith("cuda") and not torch.cuda.is_available():
            raise BenchError("--device cuda, but torch sees no CUDA device; use --device cpu")
        os.makedirs(opts.out, exist_ok=True)
        dtype = _dtype(opts.dtype)
        if opts.device.startswith("cuda"):
            torch.cuda.init()
            if torch.device(opts.device).index is not None:
                # CUDA events go on the current device's stream: make it the model's
                torch.cuda.set_device(torch.device(opts.device))
        own_meter = self.meter is None
        if own_meter:
            engine = self._engine_options() if self.sweep is None else self.sweep.engine_options(opts.engine)
            config = engine.get("config")
            self.metered_gpus = config.gpus if config is not None else engine.get("gpus")
            self.meter = Meter(cuda=opts.device.startswith("cuda"), **engine)
            if self.sweep is not None:  # the neighbours' spans are answered after the sweep (gather.py)
                self.meter.recorder.keep_history = True
            import warnings

            with warnings.catch_warnings():  # the benchmark says itself what it cannot measure
                warnings.simplefilter("ignore")
                self.meter.start()
        m = self.meter
        self._unresolved: list[_PendingRun] = []
        # the process's memory at each run's end, read beside the next run (process_memory)
        self._memory_reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aipm-bench-memory")
        try:
            self.parts = bench_parts(m.domains, m.results.domains)
            self.gpu_index = nvml_gpus(m.recorder, self.metered_gpus)
            self.gpu_use = GpuUseProbe(
                m.recorder.engine if self.gpu_index else None,
                list(self.gpu_index.values()),
                on_gpu=opts.device.startswith("cuda"),
            )
            self.missing_reason = self._missing_reason()
            if self.missing_reason:
                self.log(f"energy not measured: {self.missing_reason}")
            if self.sweep is not None:  # before meta.json: the folder's options are checked against it
                self.sweep.plan(opts.out, self._cells(), asdict(opts), self.log)
            if self.sweep is None or self.sweep.rank == 0:
                write_json(os.path.join(opts.out, "meta.json"), self._meta())
            if opts.baseline_s > 0:
                self._sync()
                m.measure_baseline(opts.baseline_s)
            if self.sweep is not None:
                self.sweep.start_together()
            model = None
            for size in opts.sizes:
                model = self._measure_size(size, model, dtype)
            self._finish_runs(wait=True)
            if self.sweep is not None:
                self.sweep.finish_turns()
                spans = gather.every_span(self.sweep)  # every rank's runs are written by now
        finally:
            self._close_writers()
            self._memory_reader.shutdown()
            if own_meter:
                m.stop()
        if self.sweep is not None:
            # after stop: the recording holds readings past every rank's last run
            self._end_sweep(spans)
            if self.sweep.rank != 0:
                return None
        summary = summarize(load_runs(opts.out))
        write_summary(opts.out, summary)
        return summary

    def _prepare(self, model, inputs, targets=None, loss_fn=None) -> tuple[Any, dict[str, Any]]:
        """The model pruned as asked (or counted as it is), and its columns for run.json."""
        try:
            model, columns = model_columns(model, inputs, self.prune_request, targets, loss_fn)
        except PruneError as exc:
            assert self.prune_request is not None  # counting a dense model raises no PruneError
            fmt = self.prune_request.sparsity_format
            raise BenchError(f"--prune {self.opts.prune} --sparsity-format {fmt}: {exc}") from None
        if self.prune_request is not None:
            self.log(
                f"pruned ({self.prune_request.method}, {self.prune_request.sparsity_format}): effective sparsity "
                f"{columns['effective_sparsity']:.3f}, FLOPs executed {columns['flops_executed']:.3g} of "
                f"{columns['flops_dense']:.3g} per inference"
            )
        return model, {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in columns.items()}

    def _engine_options(self) -> dict:
        """The engine's options, metering only the model's GPU unless GPUs were chosen: idle
        GPUs beside it would add their idle power to every inference."""
        engine = dict(self.opts.engine)
        config = engine.get("config")
        chosen = config.gpus if config is not None else engine.get("gpus")
        if chosen is not None or not self.opts.device.startswith("cuda"):
            return engine
        gpu, why = model_gpu(self.opts.device)
        if gpu is None:
            self.log(f"metering every GPU: {why}; choose with --gpus")
            return engine
        self.log(f"metering GPU {gpu} (NVML index), the one the model runs on; --gpus to change")
        if config is not None:
            engine["config"] = dataclasses.replace(config, gpus=[gpu])
        else:
            engine["gpus"] = [gpu]
        return engine

    def _prune_request(self):
        """The pruning the options ask for (None: the dense model); ValueError names the option."""
        return prune_request(self.opts.prune, self.opts.sparsity, self.opts.sparsity_format)

    def _measure_size(self, size: int, model, dtype):
        """Warm-up and runs of one input size (in a sweep, this rank's cells of it, none: skipped);
        returns the model, for the next size to reuse."""
        opts = self.opts
        if self.sweep is not None and not self.sweep.cells_of_size(size):
            return model
        inputs = models.make_inputs(opts.model, size, opts.batch_size, device=opts.device, dtype=dtype)
        # a pruned model is pruned (and counted) anew for each size: its FLOPs depend on it
        if model is None or self.spec.rebuild_per_size or self.prune_request is not None:
            model = models.build_model(
                opts.model, weights_path=opts.weights, device=opts.device, dtype=dtype, size=size
            )
        model, self.model_columns[size] = self._prepare(model, inputs)
        if self.sweep is None:
            self._warmup(model, inputs)
            self._runs_of_size(model, inputs, size)
        else:
            self._cells_of_size(model, inputs, size)
        return model

    def _runs_of_size(self, model, inputs, size: int) -> None:
        opts = self.opts
        jpi: list[float] = []  # of this size's runs resolved so far (they resolve while the next runs)
        k = 0
        while True:
            self._one_run(model, inputs, size, k)
            jpi += [_headline(r) for r in self._finish_runs(wait=False) if r.size == size]
            k += 1
            if self.progress:
                self.progress(size, k)
            if opts.precision is None:
                if k >= opts.runs:
                    break
            else:
                if k >= opts.min_runs and median_precision(jpi) <= opts.precision:
                    self.log(f"size {size}: median known to ±{100 * median_precision(jpi):.2f}% after {k} runs")
                    break
                if k >= opts.runs:
                    self.log(
                        f"size {size}: precision {100 * median_precision(jpi):.2f}% after the maximum "
                        f"{k} runs (asked {100 * opts.precision:g}%)"
                    )
                    break

    def _cells_of_size(self, model, inputs, size: int) -> None:
        """This rank's cells of one size in a sweep: warm-up at the size's first cell and, one GPU
        at a time, again after waiting for other ranks' cells (the GPU idled meanwhile)."""
        sweep = self.sweep
        warm = False
        for k in sweep.cells_of_size(size):
            waited = sweep.take_turn((size, k), while_waiting=lambda: self._finish_runs(wait=True))
            if waited or not warm:
                self._warmup(model, inputs)
                warm = True
            self._one_run(model, inputs, size, k)
            sweep.end_turn()
            self._finish_runs(wait=False)
            if self.progress:
                self.progress(size, k + 1)

    def _end_sweep(self, spans: list[dict]) -> None:
        """Once every rank's runs are written and this rank's recording has ended: the group's
        answers about each other's runs, and on rank 0 meta.json's sweep section (gather.py)."""
        sweep = self.sweep
        answers = gather.gather_answers(sweep, self.meter.recorder, self.gpu_index, self.parts.get("cpu", []), spans)
        if answers is None:
            return
        section = gather.sweep_section(sweep, self.opts.out, self._cells(), answers)
        meta = self._meta()
        meta["metered_gpus"] = sorted({r["gpu"]["index"] for r in section["runs"] if r["gpu"]["index"] is not None})
        gather.write_sweep_files(self.opts.out, meta, section)

    def _cells(self) -> list[tuple[int, int]]:
        """Every (size, run) of the benchmark, in the order a single GPU runs them."""
        return [(s, k) for s in self.opts.sizes for k in range(self.opts.runs)]

    def _placement_gpu(self) -> dict:
        """The GPU this rank meters: NVML index, name and, on CUDA, its UUID."""
        domain, index = next(iter(self.gpu_index.items()), (None, None))
        uuid = None
        if self.opts.device.startswith("cuda"):
            import torch

            uuid = f"GPU-{torch.cuda.get_device_properties(torch.device(self.opts.device)).uuid}"
        name = self.meter.recorder.discovery.devices.get(domain) if domain is not None else None
        return {"index": index, "name": name, "uuid": uuid, "domain": domain}

    def _warmup(self, model, inputs) -> None:
        end = time.monotonic() + self.opts.warmup_s
        models.forward(model, inputs)
        while time.monotonic() < end:
            models.forward(model, inputs)
        self._sync()

    def _sync(self) -> None:
        if self.opts.device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    def _one_run(self, model, inputs, size: int, k: int) -> None:
        """Runs one window of marked passes and leaves it to resolve while the next one runs: a
        run's energy is known only once the readings pass its end (up to the sample buffer's
        read period), and waiting for that after every run would idle the GPU meanwhile."""
        opts, m = self.opts, self.meter
        run_dir, writer = self._open_run(size, k)
        name = f"input_{size}/run_{k}"
        passes = 0
        with m.window(name) as w:
            end = time.monotonic() + (opts.duration_s or 0)
            while (passes < opts.iters) if opts.iters else (time.monotonic() < end):
                with m.inference():
                    models.forward(model, inputs)
                passes += 1
        self._measured(run_dir, size, k, w, passes, writer)

    def _open_run(self, size: int, k: int):
        """The run's folder and, for a size's first run, the sink of its raw trace (for the
        power-trace plot); the peak memory reset and the edge figures started."""
        import torch

        run_dir = run_folder(self.opts.out, size, k)
        os.makedirs(run_dir, exist_ok=True)
        writer = None
        if k == 0:
            writer = self.meter.recorder.sample_writer(os.path.join(run_dir, "samples.parquet"))
            self.meter.recorder.add_sink(writer)
        if self.opts.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        self.gpu_use.start()  # GPM and per-process samples at the run's edges, outside its window
        return run_dir, writer

    def _measured(
        self, run_dir: str, size: int, k: int, w, passes: int, writer, samples: int | None = None, extra=None
    ) -> None:
        """The run's edge figures read as its window closed, and the run left to resolve.
        samples: the inputs the run processed (None: passes x batch size)."""
        import torch

        use = self.gpu_use.finish()
        mem = torch.cuda.max_memory_allocated() / 1e9 if self.opts.device.startswith("cuda") else None
        host_memory = self._memory_reader.submit(process_memory)
        if samples is None:
            samples = passes * self.opts.batch_size
        extra = {} if extra is None else extra  # the caller's own dict: it may add to it until the run resolves
        self._unresolved.append(_PendingRun(run_dir, size, k, w, passes, mem, writer, use, host_memory, samples, extra))

    def _finish_runs(self, wait: bool) -> list[RunFile]:
        """Writes the runs whose energies are resolved, oldest first; with wait, all of them."""
        done: list[RunFile] = []
        m = self.meter
        if wait and self._unresolved:
            m.flush()
        while self._unresolved:
            run = self._unresolved[0]
            if not (wait or m.coordinator.window_done(run.window)):
                break
            self._unresolved.pop(0)
            run.close_writer(m.recorder)
            done.append(self._write_run(run))
        return done

    def _close_writers(self) -> None:
        for run in self._unresolved:
            run.close_writer(self.meter.recorder)

    # -- results -----------------------------------------------------------------------------
    def _write_run(self, pending: _PendingRun) -> RunFile:
        opts, m = self.opts, self.meter
        run_dir, size, k, passes = pending.run_dir, pending.size, pending.k, pending.passes
        w: Any = pending.window
        use = pending.gpu_use or GpuUse()
        name = f"input_{size}/run_{k}"
        # from the result object: the run is resolved (window_done), and the Meter's own
        # accessors would wait for every mark so far, the next run's included; this window's
        # rows and its passes' energies only, as each domain's column (no long table to pivot)
        win = m.results.window_frame(w.window).set_index("domain")
        passes_j = m.results.mark_energies(name)
        samples = pending.samples
        assert w.end_ns is not None  # resolved, hence closed
        duration = (w.end_ns - w.start_ns) / 1e9
        table = passes_j[["index", "start_ns", "end_ns", "latency_s"]].copy()
        energy: dict[str, PartEnergy | None] = {}
        for part, domains in self.parts.items():
            usable = [d for d in domains if d in win.index and np.isfinite(win.loc[d, "energy_j"])]
            col = f"{part}_j"
            if usable and len(usable) == len(domains):
                energy[part] = PartEnergy.of(
                    float(sum(win.loc[d, "energy_j"] for d in usable)),
                    float(sum(win.loc[d, "dynamic_energy_j"] for d in usable)),
                    samples,
                )
                # a pass that one domain could not resolve keeps the others; NaN where none could
                table[col] = passes_j[usable].sum(axis=1, min_count=1).to_numpy() if len(passes_j) else np.nan
            else:
                energy[part] = None
                table[col] = np.nan
        host_shared = self.sweep is not None and not self.sweep.host_per_run
        if host_shared:  # other cells ran on this node at once: their host energy is one
            energy["cpu"] = None
            table["cpu_j"] = np.nan
        measured = [e for e in (energy["gpu"], energy["cpu"]) if e is not None]
        if host_shared:
            energy["total"] = None
            table["total_j"] = np.nan
        elif measured:
            energy["total"] = PartEnergy.sum(measured)
            table["total_j"] = table[[f"{p}_j" for p in ("gpu", "cpu") if energy[p] is not None]].sum(axis=1)
        else:
            energy["total"] = None
            table["total_j"] = np.nan
        util = self._gpu_utilization(w)
        measured_extra: dict[str, Any] = {**use.gpm, **self.model_columns.get(size, {})}
        extra = self._run_fields(pending, table, energy)
        run = RunFile(
            model=opts.model,
            size=size,
            run=k,
            batch_size=opts.batch_size,
            device=opts.device,
            n_inferences=int(samples),
            duration_s=duration,
            latency_median_s=float(table["latency_s"].median()) if len(table) else duration / max(passes, 1),
            throughput_per_s=samples / duration if duration > 0 else 0.0,
            gpu_utilization_pct=util,
            gpu_memory_gb=pending.gpu_memory_gb,
            energy={part: energy[part] for part in ENERGY_PARTS},
            energy_missing_reason=HOST_SHARED
            if host_shared
            else None
            if measured
            else (self.missing_reason or "no power reading covered this run"),
            process_sm_pct=use.process_sm_pct,
            process_gpu_memory_gb=None if use.process_gpu_memory_bytes is None else use.process_gpu_memory_bytes / 1e9,
            process_missing_reason=use.process_missing_reason,
            gpm_missing_reason=use.gpm_missing_reason,
            **measured_extra,
            **extra,
        )
        table[list(INFERENCE_COLUMNS)].to_csv(os.path.join(run_dir, "inferences.csv"), index=False)
        host_memory = pending.host_memory.result() if pending.host_memory is not None else {}
        self._write_aipowermeter(run_dir, name, w, win, passes_j, use, host_memory, table["latency_s"].to_numpy())
        if self.sweep is not None:
            self.sweep.write_placement(run_dir, (size, k), w.start_ns, w.end_ns, self._placement_gpu())
        run.write(run_dir)  # last: its presence marks a complete run
        return run

    def _run_fields(self, pending: _PendingRun, table: pd.DataFrame, energy: dict) -> dict[str, Any]:
        """RunFile fields a kind of benchmark adds to a run (may update `energy` in place): none
        for inference."""
        return {}

    def _write_aipowermeter(
        self, run_dir: str, name: str, w, win, passes_j, use: GpuUse, host_memory: dict[str, int], latencies
    ) -> None:
        """AIPowerMeter's files of the run (aipowermeter.py), from each measured domain's passes."""
        parts = {}
        for part in ("gpu", "cpu"):
            domains = self.parts.get(part, [])
            parts[part] = {
                d: (
                    passes_j[["start_ns", "end_ns", d]].rename(columns={d: "energy_j"}),
                    float(win.loc[d, "energy_j"]),
                )
                for d in domains
                if d in win.index
            }
        by_gpu = {d: (self.gpu_index.get(d, d)) for d in self.parts.get("gpu", [])}
        means = {}
        for quantity in ("memory", "utilization"):
            values = {
                by_gpu[d]: v
                for d, v in self.meter.coordinator.side_means_by_domain(quantity, w.start_ns, w.end_ns).items()
                if d in by_gpu and np.isfinite(v)
            }
            means[quantity] = values
        write_run_files(
            run_dir,
            start_ns=w.start_ns,
            end_ns=w.end_ns,
            latencies_s=latencies,
            parts=parts,
            gpu_index=by_gpu,
            device_means=means,
            gpu_use=use,
            host_memory=host_memory,
            description=f"aipm-fast {self.COMMAND} {self.opts.model} {name}",
        )

    def _gpu_utilization(self, w) -> float | None:
        if not self.opts.device.startswith("cuda"):
            return None
        util = self.meter.side_mean("utilization", w)
        util = [u for u in util if np.isfinite(u)]
        return float(np.mean(util)) if util else None

    def _missing_reason(self) -> str:
        missing = [p for p, domains in self.parts.items() if not domains]
        if self.sweep is not None and not self.sweep.reads_host:
            missing = [p for p in missing if p != "cpu"]  # read by local rank 0 (sweep.py)
        if not missing:
            return ""
        problems = self.meter.recorder.discovery.problems
        why = "; ".join(str(p) for p in problems) or "no source found"
        return f"no {' and no '.join(p.upper() for p in missing)} power source is readable here ({why})"

    def _meta(self) -> dict:
        import torch

        versions: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__}
        for pkg in ("torchvision", "transformers", "numpy"):
            try:
                versions[pkg] = __import__(pkg).__version__
            except Exception:
                pass
        from aipm_fast import __version__

        versions["aipm_fast"] = __version__
        devices: dict[str, str | None] = dict(self.meter.recorder.discovery.devices)
        if self.opts.device.startswith("cuda"):
            devices["cuda"] = torch.cuda.get_device_name(torch.device(self.opts.device))
            versions["cuda"] = torch.version.cuda
            versions["nvidia_driver"] = _nvidia_driver()
        return {
            "model": self.opts.model,
            "input_kind": self.spec.input_kind,
            "options": asdict(self.opts),
            "versions": versions,
            "devices": devices,
            "host": platform.node(),
            "energy_parts": self.parts,
            "metered_gpus": self.metered_gpus,
            "inference": "one input sample (a batch holds batch_size)",
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }


@dataclass
class _PendingRun:
    """A run measured but not yet resolved: what its run files need once it is."""

    run_dir: str
    size: int
    k: int
    window: Measurement
    passes: int
    gpu_memory_gb: float | None  # the run's peak, read as it ended (the next run resets it)
    writer: object = None  # the samples.parquet sink of a size's first run, kept until resolved
    gpu_use: GpuUse | None = None  # the run's per-process and GPM figures, read at its edges
    host_memory: Future | None = None  # process_memory() at the run's end, read on a helper thread
    samples: int = 0  # the inputs the run processed
    extra: dict = field(default_factory=dict)  # what a kind of benchmark keeps for its run's fields

    def close_writer(self, recorder) -> None:
        if self.writer is not None:
            recorder.remove_sink(self.writer)
            self.writer.close()  # type: ignore[attr-defined]
            self.writer = None


def model_gpu(device: str, environ=os.environ, current: int | None = None) -> tuple[int | None, str]:
    """NVML index of the GPU a torch device string ("cuda", "cuda:1") runs on, or (None, why).

    CUDA numbers the GPUs listed in CUDA_VISIBLE_DEVICES, NVML all of them: "cuda:1" with
    CUDA_VISIBLE_DEVICES=2,3 is NVML's GPU 3. `current` is the index "cuda" alone means
    (torch.cuda.current_device(), asked only when needed). CUDA orders GPUs fastest first and
    NVML by PCI bus unless CUDA_DEVICE_ORDER=PCI_BUS_ID: on a machine of mixed GPUs set it, or
    pass --gpus."""
    from aipm_fast.integrations.distributed import visible_devices

    _, _, index = device.partition(":")
    if index:
        if not index.isdigit():
            return None, f"device {device!r} has no GPU index"
        cuda_index = int(index)
    elif current is not None:
        cuda_index = current
    else:
        import torch

        cuda_index = torch.cuda.current_device()
    visible = visible_devices(environ.get("CUDA_VISIBLE_DEVICES"))
    if visible is None:
        return cuda_index, ""
    if cuda_index >= len(visible):
        return None, f"{device} is not among CUDA_VISIBLE_DEVICES={environ.get('CUDA_VISIBLE_DEVICES')!r}"
    entry = visible[cuda_index]
    if isinstance(entry, str):
        return None, f"CUDA_VISIBLE_DEVICES names {device} by UUID ({entry}), which has no NVML index here"
    return entry, ""


def _nvidia_driver() -> str | None:
    """The kernel driver's version line (e.g. "... 580.159.04 ..."), where the driver exposes it."""
    try:
        with open("/proc/driver/nvidia/version") as f:
            first = f.readline()
    except OSError:
        return None
    import re

    m = re.search(r"\b(\d+\.\d+(?:\.\d+)?)\b", first)
    return m.group(1) if m else first.strip()


def _headline(run: RunFile) -> float:
    for part in ("total", "gpu", "cpu"):
        if run.energy[part] is not None:
            return run.energy[part].joules_per_inference
    return run.latency_median_s  # no energy: adapt on latency instead
