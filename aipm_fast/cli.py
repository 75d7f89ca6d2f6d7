"""The `aipm-fast` command line."""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import signal
import subprocess
import sys
import time

import click
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from aipm_fast.config import HARDWARE_OPTIONS, PERIODS_ENV, EngineConfig, HardwareOption, parse_periods
from aipm_fast.sensor.models import DEFAULT_MODEL as DEFAULT_FIT_MODEL
from aipm_fast.sensor.models import MODELS as FIT_MODELS
from aipm_fast.sensor.models import TRANSIENT_MODELS as FIT_TRANSIENT_MODELS


def _console(stderr: bool) -> Console:
    """A console for a terminal, or for a log (CI, a batch job, `| tee`): there rich would cut
    tables at 80 columns and a headline figure would read `0.5…`, so lines take the width their
    content needs (COLUMNS, where set, still rules)."""
    stream = sys.stderr if stderr else sys.stdout
    wide = None if stream.isatty() or os.environ.get("COLUMNS") else LOG_WIDTH
    return Console(stderr=stderr, width=wide)


LOG_WIDTH = 1000
console = _console(stderr=True)  # messages and progress
out = _console(stderr=False)  # tables (or their --json), the one stream a script reads


def print_table(table: Table) -> None:
    """A table on stdout, every figure whole: a column too narrow for its cells (a terminal, or
    COLUMNS set small) folds them onto more lines, never cuts them to `…`."""
    for column in table.columns:
        column.overflow = "fold"
    out.print(table)


class _Parsed(click.ParamType):
    """A hardware option's text through its table row's parser: a bad value names the option."""

    name = "text"

    def __init__(self, option: HardwareOption):
        self.option = option

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        if value == "":
            return None
        try:
            return self.option.parse(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class _Periods(click.ParamType):
    """--periods KEY=S[,KEY=S]: a bad key or value names the option."""

    name = "key=seconds"

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value
        try:
            return parse_periods(value) or None
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class Finite(click.FloatRange):
    """A FloatRange that also refuses nan and inf (which pass every bound, so that `--seconds nan`
    would run forever or not at all)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number of seconds", param, ctx)
        return number


def _address(ctx, param, value: str) -> str:
    """--addr: an address or host name this machine can resolve (so that a typo is an error
    that names the option, not a traceback from getaddrinfo)."""
    import socket

    try:
        socket.getaddrinfo(value, None, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise click.BadParameter(f"{value!r} is not an address or host name this machine resolves ({exc})") from None
    return value


#: devices a benchmark can run on: the host, or a CUDA device (`cuda`, `cuda:N`)
BENCH_DEVICES = "cpu, cuda or cuda:N"


def _bench_device(ctx, param, value: str | None) -> str | None:
    """--device: cpu or an existing CUDA device, checked before any model is built."""
    if value is None:
        return None
    import torch

    try:
        device = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"unknown device {value!r}; use {BENCH_DEVICES}") from None
    if device.type == "cpu" and device.index is None:
        return value
    if device.type != "cuda":
        raise click.BadParameter(f"{value!r}: the benchmark runs on {BENCH_DEVICES}")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise click.BadParameter(f"{value!r}, but torch sees no CUDA device here; use --device cpu")
    if device.index is not None and device.index >= count:
        raise click.BadParameter(f"{value!r}: torch sees {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    return value


def _free_memory_bytes(device: str) -> int | None:
    """Memory free on the benchmark's device now (None where it cannot be told)."""
    import torch

    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return None


def _check_sizes_fit(sizes: list[int], spec, batch_size: int, dtype: str, device: str) -> None:
    """Refuse --sizes whose input batch alone is larger than the device's free memory (the
    model's activations need many times more)."""
    import torch

    free = _free_memory_bytes(device)
    if free is None:
        return
    itemsize = torch.empty((), dtype=getattr(torch, dtype)).element_size()
    largest = max(sizes)
    elements = batch_size * (3 * largest * largest if spec.input_kind == "image" else largest)
    need = elements * itemsize
    if need > free:
        raise click.BadParameter(
            f"size {largest}: one batch of {batch_size} inputs alone needs {need / 2**30:.1f} GiB, "
            f"more than the {free / 2**30:.1f} GiB free on {device}; lower --sizes or --batch-size",
            param_hint="--sizes",
        )


def engine_options(func):
    """The hardware options every command accepts, one per row of config.HARDWARE_OPTIONS."""
    for o in reversed(HARDWARE_OPTIONS):
        if o.switch is not None:
            option = click.option(o.cli_flag, o.name, is_flag=True, help=o.help)
        else:
            option = click.option(
                o.cli_flag,
                o.name,
                envvar=o.env,
                show_envvar=bool(o.env),
                type=click.STRING if o.parse is str else _Parsed(o),
                help=f"{o.help} [{o.shown_default or o.default}]",
            )
        func = option(func)
    return click.option(
        "--periods",
        "periods",
        envvar=PERIODS_ENV,
        show_envvar=True,
        type=_Periods(),
        help="sampling periods replacing the defaults, e.g. rapl=0.001 (RAPL at 1 kHz, for studies of "
        "millisecond work), nvml.energy=1",
    )(func)


def run_options(func):
    """The options bench and train share about where and how a model runs."""
    func = click.option(
        "--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16", "bfloat16"])
    )(func)
    func = click.option("--device", callback=_bench_device, help="cpu, cuda or cuda:N [cuda when present]")(func)
    return click.option(
        "--baseline", default=3.0, show_default=True, type=Finite(min=0), help="seconds of idle baseline"
    )(func)


def prune_options(func):
    """The pruning options bench and train share (aipm_fast.prune, bench/model_counts.py)."""
    func = click.option(
        "--sparsity-format",
        type=click.Choice(["masked", "2:4", "structured"]),
        help="masked: zeros in dense kernels; 2:4: sparse tensor cores on linear layers; structured: "
        "channels removed, a smaller dense model [masked]",
    )(func)
    func = click.option(
        "--sparsity",
        type=float,
        help="share of the prunable weights (conv and linear) to remove, in [0, 1) [2:4: 0.5]",
    )(func)
    return click.option(
        "--prune",
        type=click.Choice(["magnitude", "snip", "force"]),
        help="prune the model before measuring: global |w|, SNIP |g w| from one batch, or FORCE's progressive schedule",
    )(func)


def output_options(func):
    """The options bench and train share about their outputs."""
    func = click.option("--json", "as_json", is_flag=True, help="print the table as JSON on stdout")(func)
    return click.option("--no-plots", is_flag=True, help="skip the PNG plots")(func)


def engine_config(kwargs: dict) -> EngineConfig:
    """Take the hardware options out of a command's keyword arguments and make the EngineConfig:
    defaults, then environment variables, then the command line."""
    values = {}
    for o in HARDWARE_OPTIONS:
        given = kwargs.pop(o.name)
        values[o.name] = given if o.switch is None else (o.switch if given else None)
    return EngineConfig.from_env(periods_s=kwargs.pop("periods", None), **values)


def print_problems(problems, notes=()) -> None:
    for p in problems:
        console.print(f"[yellow]not measured[/] {p.source}: [bold]{p.target}[/]: {p.error}")
        if p.fix:
            console.print(f"    fix: {p.fix}")
    for n in notes:
        console.print(f"[dim]note: {n}[/]")


@click.group()
@click.version_option(package_name="aipm-fast")
def main():
    """aipm-fast: energy of deep-learning work, from RAPL and NVML sampled at their real rate."""


@main.command()
@click.option("--json", "as_json", is_flag=True, help="print JSON on stdout")
@engine_options
def devices(as_json, **kwargs):
    """List every power source tried, its channels, and why any is unavailable."""
    from aipm_fast.recorder import Recorder

    rec = Recorder(engine_config(kwargs))
    found = rec.discovery
    calibrations = _calibration_status(rec)
    if as_json:
        out.print_json(
            data={
                "calibrations": calibrations,
                "channels": [c.to_dict() for c in found.channels],
                "domains": {d: m.to_dict() for d, m in found.domains.items()},
                "devices": found.devices,
                "problems": [dataclasses.asdict(p) for p in found.problems],
                "notes": found.notes,
            }
        )
    else:
        table = Table(title="channels")
        for col in ("domain", "channel", "source", "unit", "period", "reads from"):
            table.add_column(col)
        for c in found.channels:
            table.add_row(c.domain, c.label, c.source, c.unit, f"{c.period_s * 1e3:g} ms", c.detail)
        print_table(table)
        for domain, name in found.devices.items():
            out.print(f"{domain}: {name}")
        for domain, status in calibrations.items():
            out.print(f"{domain}: {status['says']}", markup=False)
        if not found.channels:
            console.print("[red]no power source can be read on this machine[/]")
        print_problems(found.problems, found.notes)
    rec.close()


def _calibration_status(rec) -> dict[str, dict]:
    """Per domain with an instant-power trace: whether a measured sensor response is in use."""
    from aipm_fast.sensor import store
    from aipm_fast.sources.base import INSTANT_POWER

    status = {}
    for ch in rec.channels.values():
        if ch.label != store.CALIBRATED_CHANNEL or ch.reading != INSTANT_POWER:
            continue
        got = rec.sensor_calibrations.get(ch.id)
        if got is None:
            says = f"{ch.label}: sensor response not measured (samples placed at their stamps): run aipm-fast calibrate"
            status[ch.domain] = {"calibrated": False, "says": says}
            continue
        resp, entry = got
        says = (
            f"{ch.label}: measured sensor response in use, {resp.describe()} (measured {entry.get('measured') or '?'})"
        )
        status[ch.domain] = {
            "calibrated": True,
            "says": says,
            "response": resp.to_dict(),
            "measured": entry.get("measured"),
        }
    return status


@main.command()
@click.option("--seconds", default=3.0, show_default=True, type=Finite(min=0.5))
@click.option("--json", "as_json", is_flag=True, help="print JSON on stdout")
@engine_options
def probe(seconds, as_json, **kwargs):
    """Measure each channel's real update interval and the cost of one read."""
    from aipm_fast.probe import run_probe

    config = engine_config(kwargs)
    with console.status(f"probing for {seconds:g} s"):
        result = run_probe(config, seconds)
    if as_json:
        out.print_json(data=result)
        return
    table = Table(title=f"sources, probed for {seconds:g} s")
    for col in ("channel", "status", "read every", "update median", "p10", "p90", "updates", "read cost"):
        table.add_column(col, justify="right" if col not in ("channel", "status") else "left")

    def ms(v):
        return "-" if v is None else f"{v:.3g} ms"

    for r in result["channels"]:
        status = r["status"] + (f" ({r['last_error']})" if r["last_error"] else "")
        table.add_row(
            r["channel"],
            status,
            ms(r["read_period_ms"]),
            ms(r["update_median_ms"]),
            ms(r["update_p10_ms"]),
            ms(r["update_p90_ms"]),
            str(r["updates"]),
            "-" if r["read_cost_us"] is None else f"{r['read_cost_us']:.3g} µs",
        )
    print_table(table)
    s = result["sampler"]
    out.print(
        f"sampler: {s['wakeups']} wake-ups, lateness p50 {s['lateness_p50_us'] or 0:.1f} µs, "
        f"p99 {s['lateness_p99_us'] or 0:.1f} µs, CPU {s['cpu_percent_of_core']:.2f}% of a core, "
        f"missed deadlines {s['missed_deadlines']}, ring overflows {s['overflows']}"
    )
    print_problems([_problem(p) for p in result["problems"]], result["notes"])


@main.command()
@click.option("--gpu", "gpu", default=0, show_default=True, type=click.IntRange(min=0), help="GPU index to calibrate")
@click.option(
    "--from-capture",
    "from_capture",
    type=click.Path(dir_okay=False, exists=True),
    help="fit a capture file written by an earlier calibration (no GPU needed)",
)
@click.option("--capture", "capture_out", type=click.Path(dir_okay=False), help="also write the raw capture here")
@click.option("--gpu-name", help="the GPU model a --from-capture file was measured on, where it does not say")
@click.option("--driver", help="the driver version a --from-capture file was measured with, where it does not say")
@click.option("--no-save", is_flag=True, help="print the fit without storing it")
@click.option("--seed", type=int, default=None, help="seed of the schedule's random phases")
@click.option(
    "--square-periods",
    help="square-wave periods of the schedule, in ms, comma separated, for instance bursts as short as an "
    "inference's phases [the standard schedule's, 400 to 40 ms]",
)
@click.option(
    "--power-model",
    type=click.Choice(list(FIT_MODELS)),
    default=DEFAULT_FIT_MODEL,
    show_default=True,
    help="the true power the response is fitted under: the load's levels, or the levels plus the GPU's own "
    "transient after a rise (an H200 overshoots its power limit for ~100 ms, which the levels' fit takes "
    "for the sensor responding early), or those plus its transient after a fall (rise-fall: the H200 dips "
    "below idle for ~100 ms after a fall from its limit)",
)
@click.option("--json", "as_json", is_flag=True, help="print JSON on stdout")
@engine_options
def calibrate(
    gpu, from_capture, capture_out, gpu_name, driver, no_save, seed, square_periods, power_model, as_json, **kwargs
):
    """Measure a GPU power sensor's response against known load edges (about a minute of load),
    fit it, and store it for this GPU model and driver, so that marks get time-true energy."""
    from aipm_fast.sensor import capture as cap
    from aipm_fast.sensor import store
    from aipm_fast.sensor.fit import fit_response

    config = engine_config(kwargs)
    if from_capture:
        try:
            capture = cap.load(from_capture)
        except ValueError as exc:
            raise click.ClickException(str(exc)) from exc
    else:
        from rich.progress import Progress

        from aipm_fast.sensor.drive import PERIODS_S, NoGpu, capture_gpu, parse_periods

        try:
            periods_s = PERIODS_S if square_periods is None else parse_periods(square_periods)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--square-periods") from None
        try:
            with Progress(console=console, transient=not console.is_terminal) as bar:
                task = bar.add_task("calibrating", total=1.0)

                def progress(what, share):
                    bar.update(task, completed=share, description=what)

                capture = capture_gpu(gpu, progress, config, seed=seed, periods_s=periods_s)
        except NoGpu as exc:
            raise click.ClickException(str(exc)) from exc
    if capture_out:
        cap.save(capture, capture_out)
    t = capture.samples
    with console.status("fitting"):
        try:
            result = fit_response(t[:, 0], t[:, 1], capture.blocks, heldout=capture.heldout(), model=power_model)
        except ValueError as exc:
            raise click.ClickException(f"{from_capture or 'the capture'}: {exc}") from exc
    gpu_name = capture.info.get("gpu") or gpu_name
    driver = capture.info.get("driver") or driver or ""
    if not gpu_name:
        raise click.ClickException(
            f"{from_capture}: the capture does not say which GPU it was measured on: give --gpu-name (and --driver)"
        )
    info = {
        "measured": capture.info.get("date", ""),
        "power_model": result.model,
        "levels_w": result.levels_w,
        "candidates": {
            c.response.kind: {"fit_rms_w": c.fit_rms_w, "heldout_rms_w": c.heldout_rms_w} for c in result.candidates
        },
        "stamp_gaps_ms": result.stamp_gaps_ms,
        "update_intervals_ms": capture.update_intervals_ms(),
    }
    if result.model in FIT_TRANSIENT_MODELS:  # the GPU's own transients the response was fitted under
        info.update(transients_w=result.transients_w, recovery_s=result.recovery_s)
        if result.fall_transients_w:
            info["fall_transients_w"] = result.fall_transients_w
    saved = None
    if not no_save:
        saved = store.save(gpu_name, driver, result.chosen, info, config.calibration_file)
    if as_json:
        out.print_json(
            data={"gpu": gpu_name, "driver": driver, "response": result.chosen.to_dict(), **info, "saved": saved}
        )
        return
    out.print(f"{gpu_name} (driver {driver or 'unknown'}):", markup=False)
    out.print(result.report(), markup=False)
    for name, ms in info["update_intervals_ms"].items():
        out.print(f"{name} value changes every {ms:.1f} ms (median)", markup=False)
    out.print(f"stored in {saved}" if saved else "not stored (--no-save)", markup=False)


@main.command()
@click.option("--model", required=True, help="architecture to profile (see aipm-fast bench --list-models)")
@click.option("--size", type=click.IntRange(min=1), help="input size [the model's native size]")
@click.option("--batch-size", type=click.IntRange(min=1), help="inputs per inference [the model's default]")
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float16", "bfloat16"]))
@click.option("--depth", default=1, show_default=True, type=click.IntRange(min=1), help="module depth of the parts")
@click.option(
    "--precision",
    default=0.03,
    show_default=True,
    type=Finite(min=0, min_open=True),
    help="stop when the curve's 1-sigma band (RMS) is within this share of the mean power",
)
@click.option("--max-seconds", default=120.0, show_default=True, type=Finite(min=0, min_open=True), help="time limit")
@click.option("--bin-ms", default=1.0, show_default=True, type=Finite(min=0, min_open=True), help="phase bin (ms)")
@click.option(
    "--gaps",
    default="random",
    show_default=True,
    type=click.Choice(["random", "drift"]),
    help="spread phases by short random idle gaps, or by the sample grid's drift (back to back)",
)
@click.option("--gpu", default=0, show_default=True, type=click.IntRange(min=0), help="GPU index")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="output folder [aipm-profile/<model>]")
@click.option("--no-plot", is_flag=True, help="skip profile.png")
@click.option("--seed", type=int, default=None, help="seed of the idle gaps")
@engine_options
def profile(
    model, size, batch_size, dtype, depth, precision, max_seconds, bin_ms, gaps, gpu, out_dir, no_plot, seed, **kwargs
):
    """The power inside one inference at millisecond resolution, and the energy of its modules:
    many inferences folded onto one timeline through the calibrated sensor response.

    aipm-fast profile --model resnet50 --batch-size 32 --depth 1
    """
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        raise click.ClickException("profile runs the model with torch: pip install 'aipm-fast[torch]'")
    from rich.progress import Progress

    from aipm_fast.bench import models
    from aipm_fast.profile import NoCalibration
    from aipm_fast.profile import output as profile_output
    from aipm_fast.profile import profile as run_profile
    from aipm_fast.sensor.drive import NoGpu, require_cuda

    try:
        spec = models.get_spec(model)
        size = models.validate_size(model, size if size is not None else spec.native_size)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--model/--size") from None
    config = engine_config(kwargs)
    try:
        torch = require_cuda(gpu, "profile")
    except NoGpu as exc:
        raise click.ClickException(str(exc)) from exc
    device = f"cuda:{gpu}"
    batch = batch_size or spec.default_batch_size
    try:
        net = models.build_model(model, device=device, dtype=getattr(torch, dtype), size=size)
        inputs = models.make_inputs(model, size, batch, device=device, dtype=getattr(torch, dtype))
    except models.BenchModelError as exc:
        raise click.ClickException(str(exc)) from None
    out_dir = out_dir or os.path.join("aipm-profile", model)
    with Progress(console=console, transient=not console.is_terminal) as bar:
        task = bar.add_task(f"profiling {model}", total=1.0)

        def progress(share, text):
            bar.update(task, completed=share, description=f"{model}: {text}")

        try:
            result = run_profile(
                lambda: models.forward(net, inputs),
                model=net,
                depth=depth,
                gpu=gpu,
                config=config,
                precision=precision,
                max_s=max_seconds,
                bin_s=bin_ms / 1e3,
                gaps=gaps,
                seed=seed,
                progress=progress,
            )
        except (NoGpu, NoCalibration, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc
    result.info["title"] = f"{model} size {size} batch {batch} {dtype}"
    written = profile_output.write(result, out_dir, plot=not no_plot)
    f = result.folded
    table = Table(title=f"{model}: energy per part of one inference ({f.energy_j:.4g} J, {f.duration_s * 1e3:.2f} ms)")
    for col in ("part", "start ms", "end ms", "energy J", "1 sigma J", "share"):
        table.add_column(col)
    for r in result.table:
        table.add_row(
            r["name"],
            f"{r['start_ms']:.2f}" if r["name"] != "other" else "-",
            f"{r['end_ms']:.2f}" if r["name"] != "other" else "-",
            f"{r['energy_j']:.4g}",
            f"{r['sigma_j']:.2g}",
            f"{r['share']:.1%}",
        )
    out.print(table)
    out.print(
        f"time resolution {f.resolution_s * 1e3:.1f} ms (bins of {f.bin_s * 1e3:g} ms); {result.stopped}; "
        f"{result.wall_s:.0f} s of running",
        markup=False,
    )
    out.print(result.method, markup=False)
    if not no_plot and not profile_output.can_plot():
        console.print("[dim]profile.png skipped: matplotlib is not installed (pip install 'aipm-fast[plot]')[/]")
    console.print(f"results in {out_dir}/ ({', '.join(os.path.basename(w) for w in written)})")


def _problem(d):
    from aipm_fast.sources import Problem

    return Problem(**d)


class _Seconds(click.ParamType):
    """A finite number of seconds above `minimum` (nan and inf are refused, naming the option)."""

    name = "seconds"

    def __init__(self, minimum: float = 0.0, inclusive: bool = False):
        self.minimum, self.inclusive = minimum, inclusive

    def convert(self, value, param, ctx):
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        low_ok = v >= self.minimum if self.inclusive else v > self.minimum
        if not math.isfinite(v) or not low_ok:
            bound = f"{'at least' if self.inclusive else 'above'} {self.minimum:g}"
            self.fail(f"{value!r}: give a finite number of seconds {bound}", param, ctx)
        return v


#: signals that stop a recording (forwarded to the command, if any)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SUMMARY_EVERY_S = 2.0  # a provisional summary.json at least this often (more rarely if it is slow to make)
GRACE_HELP = "seconds the command has to exit after a forwarded SIGINT/SIGTERM, before SIGKILL [10]"
SI_KERNEL = 0x80  # si_code of a signal sent by the kernel: a terminal's Ctrl-C reaches the whole group itself


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--duration", type=_Seconds(), help="seconds to record (without a command)")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False),
    help="folder for samples.parquet and summary.json",
)
@click.option("--drain-every", default=0.25, type=_Seconds(0.01, inclusive=True), help="seconds between drains [0.25]")
@click.option("--grace", default=10.0, type=_Seconds(0.0, inclusive=True), help=GRACE_HELP)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@engine_options
def record(duration, out_dir, drain_every, grace, command, **kwargs):
    """Record every live channel for --duration seconds, or for the lifetime of a command:

    aipm-fast record --out run1 -- python train.py

    SIGINT, SIGTERM and SIGHUP are forwarded to the command, which then has --grace seconds to
    exit before SIGKILL; recording goes on meanwhile. The exit code is the command's (128+N if
    a signal N killed it, 127 if it was not found, 126 if it could not be run).
    """
    from aipm_fast.recorder import Recorder
    from aipm_fast.storage import create_temp

    if bool(duration) == bool(command):
        raise click.UsageError("give either --duration S or a command after --, not both and not neither")
    if duration is not None and drain_every > duration:
        raise click.BadParameter(
            f"{drain_every:g} s is longer than --duration {duration:g} s", param_hint="'--drain-every'"
        )
    config = engine_config(kwargs)
    try:  # a bad --out fails here, before anything starts
        os.makedirs(out_dir, exist_ok=True)
        fd, tmp = create_temp(os.path.join(out_dir, "summary.json"))
        os.close(fd)
        os.unlink(tmp)
    except OSError as exc:
        raise click.BadParameter(f"{out_dir}: {exc.strerror or exc}", param_hint="'--out'") from None
    # Stop signals are blocked in every thread (the sampler's included: they are made after
    # this) and taken by sigtimedwait between drains, so that no signal interrupts a write.
    waited = {s for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN} | {signal.SIGCHLD}
    caller_mask = signal.pthread_sigmask(signal.SIG_BLOCK, waited)
    caught: list[int] = []
    handlers = {s: signal.signal(s, lambda signum, frame: caught.append(signum)) for s in waited - {signal.SIGCHLD}}
    try:
        rec = Recorder(config, keep_history=False)  # readings go to disk; the span is integrated as it goes
        try:
            exit_code = _record(rec, out_dir, duration, drain_every, grace, list(command), waited, caller_mask, caught)
        finally:
            rec.close()
    finally:
        while signal.sigtimedwait(waited, 0) is not None:  # what came during the final writes
            pass
        for s, h in handlers.items():
            signal.signal(s, h)
        signal.pthread_sigmask(signal.SIG_SETMASK, caller_mask)
    sys.exit(exit_code)


def _record(rec, out_dir, duration, drain_every, grace, command, waited, caller_mask, caught) -> int:
    from aipm_fast.span import SpanEnergy
    from aipm_fast.storage import jsonable, write_json

    if not rec.channels:
        console.print("[red]no power source can be read here: the recording will hold no samples[/]")
    print_problems(rec.discovery.problems, rec.discovery.notes)
    try:
        writer = rec.sample_writer(os.path.join(out_dir, "samples.parquet"))
    except OSError as exc:
        raise click.BadParameter(str(exc.strerror if exc.filename else exc), param_hint="'--out'") from None
    rec.add_sink(writer)
    summary_path = os.path.join(out_dir, "summary.json")
    state: dict = {"signals": [], "killed_after_grace": False, "summary_errors": 0, "last_summary_error": ""}
    exit_code: int | None = None

    span = SpanEnergy(rec)

    def summary(status: str) -> dict:
        s = rec.summary(span.energies())
        s["status"] = status
        s["samples"] = writer.stats()
        s["signals"] = list(state["signals"])
        if command:
            s["command"] = command
            s["command_exit_code"] = exit_code
            s["command_killed_after_grace"] = state["killed_after_grace"]
        s["summary_write_errors"] = state["summary_errors"]
        return s

    def write_summary(status: str) -> bool:
        try:
            write_json(summary_path, summary(status))
            return True
        except OSError as exc:
            state["summary_errors"] += 1
            state["last_summary_error"] = f"{summary_path}: {exc.strerror or exc}"
            return False

    proc = None
    rec.start()
    span.start()
    start = time.monotonic()
    try:
        if command:
            signal.pthread_sigmask(signal.SIG_SETMASK, caller_mask)  # the command starts as we were started
            try:
                proc = subprocess.Popen(command)
            except FileNotFoundError:
                console.print(f"[red]{command[0]}: command not found[/]")
                exit_code = 127
            except OSError as exc:
                console.print(f"[red]cannot run {command[0]!r}: {exc.strerror}[/]")
                exit_code = 126
            finally:
                signal.pthread_sigmask(signal.SIG_BLOCK, waited)
        deadline = start + duration if duration else None
        next_drain = start + drain_every
        next_summary = start + SUMMARY_EVERY_S
        grace_end = None
        with console.status("recording") as status:
            while exit_code is None:
                timeout = max(0.0, min(next_drain, deadline or next_drain) - time.monotonic())
                info = signal.sigtimedwait(waited, timeout)
                pending = [*caught, *([] if info is None else [info])]
                caught.clear()
                for got in pending:
                    signum = got if isinstance(got, int) else got.si_signo
                    if signum == signal.SIGCHLD:
                        continue
                    state["signals"].append(signal.Signals(signum).name)
                    if proc is None:  # --duration: stop as the signal asks
                        console.print(f"[yellow]{signal.Signals(signum).name}: writing what was recorded[/]")
                        exit_code = 128 + signum
                        break
                    from_terminal = not isinstance(got, int) and got.si_code == SI_KERNEL and signum == signal.SIGINT
                    if not from_terminal and proc.poll() is None:
                        proc.send_signal(signum)
                    if grace_end is None:
                        grace_end = time.monotonic() + grace
                        console.print(
                            f"[yellow]{signal.Signals(signum).name}: passed to {command[0]}, "
                            f"which has {grace:g} s to exit; recording goes on[/]"
                        )
                now = time.monotonic()
                if now >= next_drain:
                    span.update()  # drains the recorder and integrates what came
                    next_drain = max(next_drain + drain_every, now)
                    status.update(
                        f"recording: {now - start:.0f} s"
                        if deadline
                        else f"recording while {command[0]} runs ({writer.stats()['rows_written']} samples written)"
                    )
                if proc is not None and proc.poll() is not None:
                    exit_code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
                elif (
                    grace_end is not None and proc is not None and now >= grace_end and not state["killed_after_grace"]
                ):
                    console.print(f"[red]{command[0]} did not exit within {grace:g} s: SIGKILL[/]")
                    proc.kill()
                    state["killed_after_grace"] = True
                if deadline is not None and now >= deadline and exit_code is None:
                    exit_code = 0
                if now >= next_summary and exit_code is None:
                    t = time.monotonic()
                    write_summary("provisional")
                    next_summary = time.monotonic() + max(SUMMARY_EVERY_S, 10 * (time.monotonic() - t))
    finally:
        if proc is not None and proc.poll() is None:  # an error of ours: never leave the command behind
            proc.kill()
            proc.wait()
        rec.stop()
        span.finish()
        writer.close()
        written = write_summary("final")
    final = summary("final")
    _print_domains(final, on_stdout=written)  # else stdout carries the summary itself, as JSON
    lost = writer.stats()
    if not lost["finalised"]:
        console.print(f"[red]samples kept as parts in {writer.parts_dir} ({lost['last_error']})[/]")
    if lost["rows_lost"]:
        console.print(f"[red]{lost['rows_lost']} samples could not be written ({lost['last_error']})[/]")
    if not written:
        console.print(f"[red]summary.json could not be written ({state['last_summary_error']}): it follows[/]")
        out.print_json(json.dumps(final, default=jsonable))
    if exit_code == 0 and (lost["rows_lost"] or not written):
        exit_code = 1
    return exit_code


def _print_domains(summary: dict, on_stdout: bool) -> None:
    table = Table(title=f"energy over {summary['duration_s']:.2f} s")
    for col in ("domain", "energy (J)", "mean power (W)", "method"):
        table.add_column(col)
    for domain, d in summary["domains"].items():
        table.add_row(
            domain,
            "-" if d["energy_j"] is None else f"{d['energy_j']:.3f}",
            "-" if d["mean_power_w"] is None else f"{d['mean_power_w']:.2f}",
            d["method"],
        )
    if on_stdout:
        print_table(table)
    else:
        console.print(table)


@main.command()
@click.option(
    "--model",
    help="architecture to measure (see --list-models); a comma list measures each at its native size "
    "and writes one combined table (seed_table.csv, seed_table.md)",
)
@click.option("--list-models", is_flag=True, help="list the models and exit")
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="inputs per forward pass [the model's published default]"
)
@click.option("--sizes", help="input sizes: a list (112,224) or start:stop:step [the model's native size]")
@click.option(
    "--runs",
    default=10,
    show_default=True,
    type=click.IntRange(min=1),
    help="repetitions per size (the maximum, with --precision)",
)
@click.option("--duration", type=Finite(min=0, min_open=True), help="seconds per run [5]")
@click.option("--iters", type=click.IntRange(min=1), help="forward passes per run (instead of --duration)")
@click.option("--warmup", default=2.0, show_default=True, type=Finite(min=0), help="seconds of warm-up per size")
@run_options
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False),
    help="local state-dict file (weights are random otherwise)",
)
@click.option(
    "--precision",
    type=Finite(min=0, min_open=True),
    help="adaptive: stop repeating once the median J/inference is known to this relative precision (0.02 = 2%)",
)
@click.option(
    "--out",
    "out_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="output folder [aipm-bench/<model>; several models: aipm-bench, one folder each]",
)
@prune_options
@output_options
@click.option(
    "--gpus-at-once",
    type=click.Choice(["all", "one"]),
    default="all",
    show_default=True,
    help="under torchrun: every rank's GPU runs its cells at once, or one GPU at a time",
)
@engine_options
def bench(
    model,
    list_models,
    batch_size,
    sizes,
    runs,
    duration,
    iters,
    warmup,
    baseline,
    device,
    dtype,
    weights,
    precision,
    out_dir,
    prune,
    sparsity,
    sparsity_format,
    no_plots,
    as_json,
    gpus_at_once,
    **kwargs,
):
    """Joules per inference of a model at several input sizes, repeated runs, medians.

    aipm-fast bench --model vit_b_16 --sizes 224,384 --runs 10

    aipm-fast bench --model yolov5s,resnet50,vit_b_16,bert   (the seed's table)

    aipm-fast bench --model resnet50 --prune magnitude --sparsity 0.9 --sparsity-format structured

    torchrun --nproc_per_node 8 -m aipm_fast.cli bench --model alexnet --sizes 112:2240:112
    (the runs shared out over the node's GPUs; rank 0 writes the folder)
    """
    from aipm_fast.bench import models
    from aipm_fast.bench.model_counts import prune_request
    from aipm_fast.bench.sweep import SweepError, sweep_from_env

    try:
        sweep = sweep_from_env(gpus_at_once)
    except SweepError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        prune_request(prune, sparsity, sparsity_format)  # checked before any model is built
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None

    if list_models:
        listed = models.list_models()
        if as_json:
            out.print_json(data=[r._asdict() for r in listed])
            return
        table = Table(title="models")
        for col in ("model", "input", "native size", "batch size", "needs", "available"):
            table.add_column(col)
        for r in listed:
            table.add_row(
                r.name,
                r.input_kind,
                str(r.native_size),
                str(r.default_batch_size),
                r.requires or "-",
                "yes" if r.available else "no",
            )
        print_table(table)
        return
    if not model:
        raise click.UsageError("give --model (see --list-models)")
    specs = _model_specs(model, sizes)
    names = list(specs)
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if sweep is not None:
        if precision is not None:
            raise click.BadParameter("a sweep over ranks shares fixed --runs out", param_hint="--precision")
        try:
            device = sweep.device(device)
        except SweepError as exc:
            raise click.BadParameter(str(exc), param_hint="--device") from None
        sweep.init_group()
    for spec, size_list in specs.values():
        _check_sizes_fit(size_list, spec, batch_size or spec.default_batch_size, dtype, device)
    config = engine_config(kwargs)
    root = out_dir or "aipm-bench"
    folders = {}
    for name, (spec, size_list) in specs.items():
        opts = BenchOptionsFor(
            model=name,
            sizes=size_list,
            batch_size=batch_size or spec.default_batch_size,
            runs=runs,
            duration_s=None if iters else (duration or 5.0),
            iters=iters,
            warmup_s=warmup,
            baseline_s=baseline,
            device=device,
            dtype=dtype,
            out=_model_folder(root, name, out_dir, several=len(names) > 1),
            weights=weights,
            precision=precision,
            engine={"config": config},
            prune=prune,
            sparsity=sparsity,
            sparsity_format=sparsity_format,
        )
        summary = _bench_one(opts, no_plots, quiet_table=as_json or len(names) > 1, sweep=_fresh(sweep))
        folders[name] = opts.out
        if summary is None:  # a rank of a sweep but rank 0: rank 0 writes the folder
            continue
        if as_json and len(names) == 1:
            out.print_json(json.dumps(_records(summary)))
    if len(names) > 1 and (sweep is None or sweep.rank == 0):
        _combined_table(root, folders, as_json)
    if sweep is not None:
        sweep.leave_group()  # only after a sweep that ended well: a failed rank is not waited for


def _model_folder(root: str, name: str, out_dir: str | None, several: bool) -> str:
    """A model's output folder: --out itself for one model, ROOT/<model> for several or by default."""
    return os.path.join(root, name) if several or not out_dir else out_dir


def _model_specs(model: str, sizes: str | None) -> dict:
    """{name: (spec, sizes)} of --model's comma list (each name once) and --sizes (one model only)."""
    from aipm_fast.bench import models

    names = [m.strip() for m in model.split(",") if m.strip()]
    if not names or len(set(names)) != len(names):
        raise click.BadParameter(f"{model!r}: give models once each, comma separated", param_hint="--model")
    if len(names) > 1 and sizes:
        raise click.BadParameter(
            "several models run at their native sizes; give one --model to choose sizes", param_hint="--sizes"
        )
    specs = {}
    for name in names:
        try:
            spec = models.get_spec(name)
            specs[name] = (spec, models.parse_sizes(sizes, spec))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--model/--sizes") from None
    return specs


def _combined_table(root: str, folders: dict[str, str], as_json: bool) -> None:
    """Several models' folders in one table: ROOT/seed_table.csv and .md, and on stdout."""
    from aipm_fast.bench import seed_table

    table = seed_table.seed_table(folders)
    csv_path, md_path = seed_table.write_seed_table(root, table)
    if as_json:
        out.print_json(json.dumps(_records(table)))
    else:
        print_table(seed_table.format_seed_table(table, title=f"{', '.join(folders)} ({root})"))
    console.print(f"combined table: {csv_path}, {md_path}")


def _fresh(sweep):
    """The sweep of one model: the group's identity, no cells yet."""
    import dataclasses

    return None if sweep is None else dataclasses.replace(sweep, cells=[], all_cells=[], done_before=[], spans=[])


def BenchOptionsFor(**kw):
    """The protocol's options (imported late: torch is loaded only for a benchmark)."""
    from aipm_fast.bench.protocol import BenchOptions

    return BenchOptions(**kw)


def _records(frame) -> list[dict]:
    """A table's rows for JSON: NaN (not measured) as null."""
    return [
        {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        for row in frame.to_dict(orient="records")
    ]


def _bench_one(opts, no_plots: bool, quiet_table: bool, runner=None, sweep=None):
    """One model's benchmark (runner: the protocol's class, Benchmark unless given): runs,
    summary.csv, plots; its table on stdout unless quiet_table. In a sweep, None on every rank
    but rank 0, which writes the folder."""
    import torch

    from aipm_fast.bench import models, report
    from aipm_fast.bench.protocol import BenchError, Benchmark
    from aipm_fast.bench.sweep import SweepError

    runner = runner or Benchmark

    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{opts.model}", total=len(opts.sizes) * opts.runs)
        done = {}

        def tick(size, k):
            done[size] = k
            progress.update(task, completed=sum(done.values()), description=f"{opts.model} size {size} run {k}")

        try:
            summary = runner(opts, progress=tick, log=lambda msg: console.print(msg), sweep=sweep).run()
        except (BenchError, SweepError, models.BenchModelError) as exc:
            raise click.ClickException(str(exc)) from None
        except torch.OutOfMemoryError:
            raise click.ClickException(
                f"{opts.device} ran out of memory; lower --batch-size or --sizes (largest {max(opts.sizes)})"
            ) from None
    if summary is None:
        return None
    if not quiet_table:
        print_table(report.format_table(summary, title=f"{opts.model}: medians over runs ({opts.out})"))
    if not no_plots:
        result = report.build_report(opts.out)
        if result["skipped"]:
            console.print(f"[dim]plots skipped: {', '.join(result['skipped'])} (see `aipm-fast report`)[/]")
    console.print(f"results in {opts.out}/ (summary.csv, per-run folders, plots/)")
    return summary


@main.command()
@click.option(
    "--model",
    required=True,
    help="architecture to train (see bench --list-models; yolov5s is refused); a comma list trains each at its "
    "native size and writes one combined table (seed_table.csv, seed_table.md)",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="samples per step [the model's published default]")
@click.option("--sizes", help="input sizes: a list (112,224) or start:stop:step [the model's native size]")
@click.option("--runs", default=3, show_default=True, type=click.IntRange(min=1), help="repetitions per size")
@click.option("--steps", type=click.IntRange(min=1), help="training steps per run")
@click.option("--epochs", type=click.IntRange(min=1), help="epochs over the training data per run (instead of --steps)")
@click.option("--optimizer", default="sgd", show_default=True, type=click.Choice(["sgd", "adam"]))
@click.option("--lr", type=Finite(min=0, min_open=True), help="learning rate [sgd 0.01, adam 0.001]")
@click.option(
    "--momentum", default=0.9, show_default=True, type=Finite(min=0, max=1, max_open=True), help="sgd's momentum"
)
@click.option(
    "--data",
    help="synthetic (default: random labels), digits (scikit-learn's, upsampled), an ImageFolder folder, or an .npz "
    "with arrays x and y; real data sets hold 20% out for accuracy",
)
@click.option("--seed", default=0, show_default=True, type=int, help="of the initial weights and the batch order")
@click.option("--warmup", default=2.0, show_default=True, type=Finite(min=0), help="seconds of warm-up steps per size")
@run_options
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False),
    help="local state-dict file to start from (weights are random otherwise)",
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False),
    help="output folder [aipm-train/<model>; several models: aipm-train, one folder each]",
)
@prune_options
@output_options
@engine_options
def train(
    model,
    batch_size,
    sizes,
    runs,
    steps,
    epochs,
    optimizer,
    lr,
    momentum,
    data,
    seed,
    warmup,
    baseline,
    device,
    dtype,
    weights,
    out_dir,
    prune,
    sparsity,
    sparsity_format,
    no_plots,
    as_json,
    **kwargs,
):
    """Joules per training step, per sample and per run of a model: repeated runs of the same
    training, every step marked, medians; the same folder and tables as bench.

    aipm-fast train --model lenet5_caffe --data digits --epochs 2

    aipm-fast train --model vgg_d --steps 200 --runs 5

    aipm-fast train --model lenet5_caffe --steps 1000 --prune snip --sparsity 0.98   (masks kept while training)
    """
    from aipm_fast.bench.model_counts import prune_request
    from aipm_fast.bench.sweep import world_size

    world = world_size()
    if world > 1:  # every rank would train every run on the same GPU into the same folder
        raise click.UsageError(
            f"WORLD_SIZE={world}: train runs in one process; only bench shares its runs over torchrun's ranks"
        )
    try:
        prune_request(prune, sparsity, sparsity_format)  # checked before any model is built
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if (steps is None) == (epochs is None):
        raise click.UsageError("give --steps or --epochs (one of them)")
    specs = _model_specs(model, sizes)
    names = list(specs)
    for name, (spec, _) in specs.items():
        if spec.train_refusal:
            raise click.BadParameter(f"{name} cannot be trained here: {spec.train_refusal}", param_hint="--model")
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    from aipm_fast.bench.train import Training, TrainOptions

    config = engine_config(kwargs)
    root = out_dir or "aipm-train"
    folders = {}
    for name, (spec, size_list) in specs.items():
        opts = TrainOptions(
            model=name,
            sizes=size_list,
            batch_size=batch_size or spec.default_batch_size,
            runs=runs,
            duration_s=None,
            warmup_s=warmup,
            baseline_s=baseline,
            device=device,
            dtype=dtype,
            out=_model_folder(root, name, out_dir, several=len(names) > 1),
            weights=weights,
            engine={"config": config},
            optimizer=optimizer,
            lr=lr,
            momentum=momentum,
            steps=steps,
            epochs=epochs,
            data=data,
            seed=seed,
            prune=prune,
            sparsity=sparsity,
            sparsity_format=sparsity_format,
        )
        summary = _bench_one(opts, no_plots, quiet_table=as_json or len(names) > 1, runner=Training)
        folders[name] = opts.out
        if as_json and len(names) == 1:
            out.print_json(json.dumps(_records(summary)))
    if len(names) > 1:
        _combined_table(root, folders, as_json)


@main.command()
@click.option(
    "--port", default=9464, show_default=True, type=click.IntRange(0, 65535), help="port to serve /metrics on"
)
@click.option(
    "--addr",
    default="127.0.0.1",
    show_default=True,
    callback=_address,
    help="address to bind (0.0.0.0 for every interface)",
)
@click.option("--duration", type=Finite(min=0, min_open=True), help="stop after this many seconds [never]")
@engine_options
def serve(port, addr, duration, **kwargs):
    """Serve this machine's live power and cumulative energy to Prometheus."""
    try:
        import prometheus_client  # noqa: F401  (the exporter needs it: fail here, clearly)

        from aipm_fast.integrations import prometheus
    except ImportError:
        raise click.ClickException(
            "aipm-fast serve needs prometheus_client: pip install 'aipm-fast[prometheus]'"
        ) from None
    config = engine_config(kwargs)
    try:
        prometheus.serve(
            port, addr, duration, config=config, on_ready=lambda e: console.print(f"serving {e.url} (Ctrl-C stops)")
        )
    except OSError as exc:
        why = {
            errno.EADDRINUSE: ("--port", f"port {port} on {addr} is in use (another exporter?); pick another --port"),
            errno.EACCES: ("--port", f"port {port} needs privileges; use a port above 1023"),
            errno.EADDRNOTAVAIL: ("--addr", f"{addr} is not an address of this machine"),
        }.get(exc.errno)
        if why is None:
            raise
        raise click.BadParameter(why[1], param_hint=why[0]) from None


@main.command("report")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.option("--json", "as_json", is_flag=True, help="print the table as JSON on stdout")
def report_command(folder, as_json):
    """Rebuild summary.csv and the plots of a finished (or partial) bench folder; for a folder of
    several models' folders (`bench --model a,b`), the combined seed_table.csv and .md."""
    from aipm_fast.bench import report, seed_table

    if not any(name.startswith("input_") for name in os.listdir(folder)) and seed_table.model_folders(folder):
        try:
            table = seed_table.seed_table(seed_table.model_folders(folder))
        except report.ReportError as exc:
            raise click.ClickException(str(exc)) from None
        paths = seed_table.write_seed_table(folder, table)
        if as_json:
            out.print_json(json.dumps(_records(table)))
        else:
            print_table(seed_table.format_seed_table(table, title=folder))
        console.print(f"combined table: {', '.join(paths)}")
        return
    try:
        result = report.build_report(folder)
        runs = report.load_runs(folder)
        summary = report.summarize(runs)
    except report.ReportError as exc:
        raise click.ClickException(str(exc)) from None
    if as_json:
        out.print_json(json.dumps(_records(summary)))
    else:
        print_table(report.format_table(summary, title=folder))
    for path in result["plots"]:
        console.print(f"plot: {path}")
    for name, why in result["skipped"].items():
        console.print(f"[dim]plot {name} skipped: {why}[/]")
    for path in result["missing"]:
        console.print(f"[yellow]incomplete run left out (no run.json): {path}[/]")
    console.print(f"summary: {result['summary']}")


if __name__ == "__main__":
    main()
