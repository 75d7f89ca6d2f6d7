"""`aipm-fast profile`: the power inside one inference, folded over many repetitions and
deconvolved through the calibrated sensor response, on the fake NVML's virtual clock (a known
periodic power shape, its exact truth), and its outputs."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from aipm_fast.profile import folding as fl
from aipm_fast.sensor.response import SensorResponse
from tests.fakes.nvml_clock import NvmlClock
from tests.test_sensor import fit_fake

IDLE_W = 110.0
#: one inference: (seconds, watts) phases of a known shape, 13 ms in all
SHAPE = ((0.002, 450.0), (0.005, 680.0), (0.003, 250.0), (0.003, 520.0))
SENSOR = "lag_ms=4,window_ms=16,jitter_ms=5"


def periodic_schedule(rng, seconds, t0=0.5, gap_s=(0.004, 0.024)):
    """The shape repeated with idle gaps drawn uniformly (phases spread over the sample grid):
    [(start, watts)] for the fake, and each repetition's [start, end)."""
    schedule, starts, ends, t = [(0.0, IDLE_W)], [], [], t0
    while t < t0 + seconds:
        starts.append(t)
        for dur, watts in SHAPE:
            schedule.append((t, watts))
            t += dur
        ends.append(t)
        schedule.append((t, IDLE_W))
        t += rng.uniform(*gap_s)
    return schedule, np.array(starts), np.array(ends), t + 0.5


def truth_at(phase_s):
    edges = np.cumsum([0.0, *(d for d, _ in SHAPE)])
    i = np.clip(np.searchsorted(edges, phase_s, side="right") - 1, 0, len(SHAPE) - 1)
    return np.array([SHAPE[k][1] for k in np.atleast_1d(i)])


@pytest.fixture(scope="module")
def fake_run(fake_nvml_lib):
    """(the fitted response, sample stamps, watts, repetitions' starts, ends, one inference's J)."""
    response = fit_fake(fake_nvml_lib, SENSOR).chosen
    schedule, starts, ends, end = periodic_schedule(np.random.default_rng(7), 60.0)
    with NvmlClock(fake_nvml_lib, schedule=schedule, sensor=SENSOR) as clock:
        t, w = clock.samples(0.2, end)
        truth_j = clock.energy_j(starts[0], ends[0])
    return response, t, w, starts, ends, truth_j


@pytest.fixture(scope="module")
def folded(fake_run):
    response, t, w, starts, ends, truth_j = fake_run
    return fl.fold(response, t, w, starts, ends), truth_j, response


def test_the_folded_deconvolved_curve_matches_the_known_shape(folded):
    f, _, _ = folded
    phase = f.phase_s
    edges = np.cumsum([0.0, *(d for d, _ in SHAPE)])
    away = np.min(np.abs(phase[:, None] - edges[None, :]), axis=1) >= 0.0009
    inside = f.in_inference & away
    truth = truth_at(phase)
    err = f.power_w - truth
    assert inside.sum() == 5
    # within 5% of the true power in the middle of each phase, and the band covers the truth
    assert np.all(np.abs(err[inside]) < 0.05 * truth[inside]), np.c_[phase, truth, f.power_w, f.sigma_w][inside]
    assert np.mean(np.abs(err[inside]) <= 3 * f.sigma_w[inside] + 2.0) >= 0.9
    # the curve steps: the 680 W phase and the 250 W phase are told apart at ms resolution
    assert f.resolution_s < 0.003
    assert f.n_reps > 1000 and f.n_samples > 2000


def test_energy_per_inference_and_per_phase_match_the_truth(folded):
    f, truth_j, _ = folded
    assert f.energy_j == pytest.approx(truth_j, rel=0.01)
    assert abs(f.energy_j - truth_j) < 3 * f.energy_sigma_j + 0.002 * truth_j
    edges = np.cumsum([0.0, *(d for d, _ in SHAPE)])
    spans = [fl.Span(f"phase {k}", edges[k], edges[k + 1]) for k in range(len(SHAPE))]
    rows = f.span_table(spans)
    for k, (dur, watts) in enumerate(SHAPE):
        assert rows[k]["energy_j"] == pytest.approx(dur * watts, rel=0.05), rows[k]
    assert rows[-1]["name"] == "other" and abs(rows[-1]["energy_j"]) < 0.02 * truth_j
    assert sum(r["energy_j"] for r in rows) == pytest.approx(f.energy_j, rel=1e-9)


def phase_truth_errors(f):
    """Per phase of SHAPE: (profiled J - true J, the profile's 1 sigma J, of it the response's)."""
    edges = np.cumsum([0.0, *(d for d, _ in SHAPE)])
    rows = f.span_table([fl.Span(f"phase {k}", edges[k], edges[k + 1]) for k in range(len(SHAPE))])
    return [(r["energy_j"] - d * watts, r["sigma_j"], r["response_sigma_j"]) for r, (d, watts) in zip(rows, SHAPE)]


def test_the_band_carries_the_responses_own_uncertainty_and_covers_a_misplaced_response(fake_run):
    """A response 2 ms off where the sensor's lies (as calibrations of one H200 differ) moves
    energy across the phases' edges. The fit's own scatter does not see it; the band, given the
    response's timing (1 sigma 2 ms) and another calibration (the right one), does, and covers
    every phase's error at 95%."""
    import dataclasses

    response, t, w, starts, ends, _ = fake_run
    off = dataclasses.replace(response, lag0_s=response.lag0_s + 0.002, timing_sigma_s=0.002)
    alone = phase_truth_errors(fl.fold(off, t, w, starts, ends))
    assert max(abs(e) / (d * watts) for (e, _, _), (d, watts) in zip(alone, SHAPE)) > 0.05  # the shift matters
    assert any(abs(e) > 1.96 * u for e, u, _ in alone)  # and the fit's band alone misses it
    assert all(ru == 0.0 for _, _, ru in alone)
    shifted, how = fl.response_timing(off)
    assert "2.00 ms" in how and len(shifted) == 2
    f = fl.fold(off, t, w, starts, ends, alternatives=[shifted, [response]])
    errors = phase_truth_errors(f)
    assert all(abs(e) <= 1.96 * u for e, u, _ in errors), errors
    assert all(0.0 < ru <= u for _, u, ru in errors)
    assert f.response_sigma_j() > 0.0 and f.energy_sigma_j >= f.response_sigma_j()
    # the curve's band holds the response's part too, and the parts' rows say how much of theirs
    assert np.all(f.sigma_w >= fl.fold(off, t, w, starts, ends).sigma_w - 1e-9)


def test_the_responses_timing_comes_from_its_calibration_or_is_said_to_be_missing():
    r = SensorResponse.window(0.016, 0.004, timing_sigma_s=0.001)
    shifted, how = fl.response_timing(r)
    assert [s.lag0_s for s in shifted] == pytest.approx([0.003, 0.005]) and "1.00 ms" in how
    from_ci = SensorResponse.window(0.016, 0.004, ci95={"centroid_s": (0.008, 0.016)})
    assert fl.response_timing(from_ci)[0][1].lag0_s == pytest.approx(0.004 + 0.004 / 1.96)
    none, why = fl.response_timing(SensorResponse.window(0.016, 0.004))
    assert none == [] and "not measured" in why and "not in the band" in why


def test_the_gap_after_an_inference_is_reconstructed_at_idle(folded):
    f, _, _ = folded
    assert f.gap_power_w[2:-1] == pytest.approx(IDLE_W, rel=0.1)


def test_more_repetitions_narrow_the_band(fake_nvml_lib, folded):
    f, _, response = folded
    schedule, starts, ends, end = periodic_schedule(np.random.default_rng(8), 15.0)
    with NvmlClock(fake_nvml_lib, schedule=schedule, sensor=SENSOR) as clock:
        t, w = clock.samples(0.2, end)
    short = fl.fold(response, t, w, starts, ends)
    assert short.relative_band > f.relative_band


def test_folding_refuses_what_it_cannot_solve():
    r = SensorResponse.window(0.016, 0.004)
    with pytest.raises(ValueError, match="two or more repetitions"):
        fl.fold(r, np.arange(0, 1, 0.02), np.ones(50), [0.1], [0.2])
    with pytest.raises(ValueError, match="none overlapping"):
        fl.fold(r, np.arange(0, 1, 0.02), np.ones(50), [0.1, 0.15], [0.2, 0.3])
    with pytest.raises(ValueError, match="too few"):
        fl.fold(r, np.arange(0, 1, 0.02), np.ones(50), [0.1, 0.2], [0.15, 0.25])
    with pytest.raises(ValueError, match="phase bin must be positive"):
        fl.fold(r, np.arange(0, 1, 0.02), np.ones(50), [0.1, 0.2], [0.15, 0.25], bin_s=0.0)


def test_spans_are_medians_over_repetitions_and_repeated_calls_are_numbered():
    reps = [
        [("a", 0.0, 0.002), ("b", 0.002, 0.005), ("a", 0.005, 0.006)],
        [("a", 0.0, 0.0022), ("b", 0.0022, 0.0052), ("a", 0.0052, 0.0062)],
        [("a", 0.0, 0.0024), ("b", 0.0024, 0.0054), ("a", 0.0054, 0.0064)],
    ]
    spans = fl.median_spans(reps)
    assert [s.name for s in spans] == ["a", "b", "a (2)"]
    assert spans[1].start_s == pytest.approx(0.0022)


# -- outputs ---------------------------------------------------------------------------------
def a_profile(f):
    from aipm_fast.profile.run import Profile

    edges = np.cumsum([0.0, *(d for d, _ in SHAPE)])
    spans = [fl.Span(f"phase {k}", edges[k], edges[k + 1]) for k in (1, 3)]
    return Profile(f, spans, f.span_table(spans), 12.0, "curve known", "random", "folded", {"gpu": "fake"})


def test_the_outputs_hold_the_curve_the_parts_and_a_plot(folded, tmp_path):
    from aipm_fast.profile import output

    f, _, _ = folded
    written = output.write(a_profile(f), str(tmp_path / "out"))
    names = sorted(p.rsplit("/", 1)[-1] for p in written)
    assert names == ["curve.csv", "parts.csv", "profile.json", "profile.png"]
    with open(tmp_path / "out" / "curve.csv") as fh:
        curve = list(csv.DictReader(fh))
    assert len(curve) == f.power_w.size
    assert float(curve[3]["power_w"]) == pytest.approx(f.power_w[3], abs=1e-3)
    with open(tmp_path / "out" / "parts.csv") as fh:
        parts = list(csv.DictReader(fh))
    assert [p["name"] for p in parts] == ["phase 1", "phase 3", "other"]
    assert parts[-1]["start_ms"] == ""  # "other" has no single span
    assert sum(float(p["energy_j"]) for p in parts) == pytest.approx(f.energy_j, rel=1e-4)
    summary = json.loads((tmp_path / "out" / "profile.json").read_text())
    assert summary["energy_per_inference_j"] == pytest.approx(f.energy_j)
    assert summary["resolution_ms"] == pytest.approx(f.resolution_s * 1e3)
    assert (tmp_path / "out" / "profile.png").read_bytes()[:4] == b"\x89PNG"


# -- the GPU side's CPU logic ------------------------------------------------------------------
class FakeEvent:
    """A CUDA event on a counter: records the order in which it was recorded."""

    clock = 0

    def record(self):
        FakeEvent.clock += 1
        self.at = FakeEvent.clock


class FakeTorch:
    class cuda:  # noqa: N801 (stands in for torch.cuda)
        @staticmethod
        def Event(enable_timing=True):  # noqa: N802
            return FakeEvent()


def test_modules_at_depth_and_their_hooks_bracket_each_call():
    import torch

    from aipm_fast.profile.run import Parts, modules_at_depth

    net = torch.nn.Sequential(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU()), torch.nn.Linear(4, 2))
    assert [n for n, _ in modules_at_depth(net, 1)] == ["0", "1"]
    assert [n for n, _ in modules_at_depth(net, 2)] == ["0.0", "0.1", "1"]  # a leaf stops its branch
    with pytest.raises(ValueError, match="depth must be 1 or more"):
        modules_at_depth(net, 0)
    parts = Parts(FakeTorch)
    assert parts.hook(net, 1) == ["0", "1"]
    with parts.range("whole"):
        net(torch.zeros(1, 4))
    got = parts.take()
    assert [n for n, _, _ in got] == ["0", "1", "whole"]
    (_, a0, a1), (_, b0, b1), (_, w0, w1) = got
    assert w0.at < a0.at < a1.at < b0.at < b1.at < w1.at
    parts.remove()
    net(torch.zeros(1, 4))
    assert parts.take() == []


def test_a_gpu_without_a_calibration_is_refused_naming_the_fix():
    from types import SimpleNamespace

    from aipm_fast.profile.run import NoCalibration, find_response

    chan = SimpleNamespace(id=3, domain="nvml:0", label="power_samples")
    rec = SimpleNamespace(
        sensor_calibrations={}, discovery=SimpleNamespace(domains={"nvml:0": SimpleNamespace(device="NVIDIA H200")})
    )
    with pytest.raises(NoCalibration, match="NVIDIA H200.*aipm-fast calibrate"):
        find_response(rec, {"power_samples": chan})
    r = SensorResponse.window(0.016, 0.004)
    rec.sensor_calibrations[3] = (r, {})
    assert find_response(rec, {"power_samples": chan}) is r


def test_the_profile_command_refuses_clearly_without_a_gpu():
    import torch
    from click.testing import CliRunner

    from aipm_fast import cli

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    res = CliRunner().invoke(cli.main, ["profile", "--model", "resnet50"])
    assert res.exit_code == 1 and "needs a CUDA GPU" in res.output
    res = CliRunner().invoke(cli.main, ["profile", "--model", "nope"])
    assert res.exit_code == 2 and "unknown model 'nope'" in res.output
    res = CliRunner().invoke(cli.main, ["profile", "--model", "vit_b_16", "--size", "100"])
    assert res.exit_code == 2 and "size 100" in res.output


def test_the_api_refuses_bad_options_before_touching_a_gpu():
    from aipm_fast.profile import profile

    with pytest.raises(ValueError, match="gaps must be one of random, drift"):
        profile(lambda: None, gaps="sometimes")
    with pytest.raises(ValueError, match="precision must be positive"):
        profile(lambda: None, precision=0.0)


# -- the H200 validation's judging (bench/gpu_profile_checks.py), on CPU ---------------------------
def test_the_validation_measures_an_edge_as_its_10_90_width():
    from bench.gpu_profile_checks import edge_width_s

    t = np.arange(0.0, 0.030, 0.0001)
    p = np.interp(t, [0.0, 0.009, 0.011, 0.030], [700.0, 700.0, 400.0, 400.0])  # a 2 ms ramp at 10 ms
    assert edge_width_s(t, p, 0.010, 0.008, 0.015) == pytest.approx(0.0016, abs=1e-4)
    assert np.isnan(edge_width_s(t, np.full(t.size, 300.0), 0.010, 0.008, 0.015))  # no step: no width
    assert np.isnan(edge_width_s(t, p, 0.0005, 0.008, 0.015))  # nothing before the edge


def test_the_edge_finder_takes_the_crossings_around_the_step_not_a_ringing_phases():
    from bench.gpu_profile_checks import edge_width_s

    # 1 ms bins as the profile's curve: a phase that rings (an overshoot and a dip well past 10%
    # of the step) before a 2-bin fall at 10 ms: the widths the old finder gave up on (NaN)
    t = np.arange(0.0005, 0.030, 0.001)
    ring = 700.0 + np.where(t < 0.003, np.where(t < 0.001, 350.0, -200.0), 0.0)
    p = np.where(t < 0.0095, ring, np.where(t < 0.0105, 550.0, 400.0))
    assert edge_width_s(t, p, 0.010, 0.008, 0.015) == pytest.approx(0.0016, abs=1e-4)
    rising = edge_width_s(t, 1100.0 - p, 0.010, 0.008, 0.015)  # the same step upwards
    assert rising == pytest.approx(0.0016, abs=1e-4)


def test_the_counter_truth_is_the_slope_of_its_changes_whatever_the_runs_ends():
    from bench.gpu_profile_checks import slope_power_w

    # a counter updated every 100 ms, read every 2 ms (each value repeated until it changes), a
    # steady 400 W with +-1 J of quantisation jitter: the run's ends fall anywhere between updates
    rng = np.random.default_rng(3)
    reads = np.arange(0.0, 3.0, 0.002)
    updates = np.arange(0.013, 3.0, 0.1)
    value = 400.0 * updates + rng.uniform(-1.0, 1.0, updates.size)
    held = value[np.clip(np.searchsorted(updates, reads, side="right") - 1, 0, None)]
    watts, sigma, used = slope_power_w(reads, held, 0.25, 2.77)
    assert watts == pytest.approx(400.0, abs=3 * sigma) and sigma < 1.0
    assert used == np.count_nonzero((updates >= 0.25) & (updates <= 2.77)) + 1  # the held value at 0.25 s too
    assert np.isnan(slope_power_w(reads, held, 0.25, 0.4)[0])  # too few changes: no figure


def test_the_validation_finds_the_folded_curves_edge_sharp(folded):
    from bench.gpu_profile_checks import edge_width_s

    f, _, _ = folded
    width = edge_width_s(f.phase_s, f.power_w, 0.007, 0.003, 0.0015)  # 680 W -> 250 W
    assert 0.0 < width < 0.002


def test_the_validation_compares_parts_with_their_difference_runs():
    from bench.gpu_profile_checks import agreement, part_energy, truth_from

    table = [
        {"name": "layer2", "energy_j": 1.0, "sigma_j": 0.03},
        {"name": "layer2 (2)", "energy_j": 0.5, "sigma_j": 0.04},
        {"name": "other", "energy_j": 0.2, "sigma_j": 0.01},
    ]
    assert part_energy(table, "layer2") == pytest.approx((1.5, 0.05))
    with pytest.raises(KeyError, match="no part 'layer3'.*layer2, layer2 \\(2\\), other"):
        part_energy(table, "layer3")
    truth = truth_from(1.40, 1.50, 0.02)  # doubled, removed, the runs' noise
    assert truth["truth_j"] == pytest.approx(1.45) and truth["truth_limit_j"] == pytest.approx(0.05)
    ok = agreement(1.5, 0.05, truth)
    assert ok["within_5pct"] and ok["relative"] == pytest.approx(0.05 / 1.45)
    assert ok["relative_doubled"] == pytest.approx(0.1 / 1.4) and ok["relative_removed"] == pytest.approx(0.0)
    assert ok["band_covers"]  # 0.05 J off, 1.96 * hypot(0.05, 0.02) = 0.106 J
    assert not agreement(1.5, 0.01, truth_from(1.40, 1.40, 0.0))["within_5pct"]
    assert not agreement(1.5, 0.01, truth_from(1.40, 1.40, 0.0))["band_covers"]
    alone = truth_from(1.40, float("nan"), 0.01)  # no removal possible: the doubled run alone
    assert alone["truth_j"] == pytest.approx(1.40) and np.isnan(alone["truth_limit_j"])


def test_the_truth_adds_back_the_idle_a_part_displaces_in_its_fixed_slot():
    from bench.gpu_profile_checks import DISPLACED_IDLE_SIGMA_W, part_truths

    # slot runs: doubling a 10 ms part raised the cycle's energy by 6.0 J, removing it lowered it by
    # 6.4 J; in both the cycle kept its length, so 10 ms of idle at 120 W (1.2 J) were displaced
    diff = {"idle_w": 120.0, "difference": {"hot": {"doubled_slot_j": 6.0, "removed_slot_j": 6.4, "sigma_j": 0.05}}}
    spans = [fl.Span("hot", 0.001, 0.006), fl.Span("hot (2)", 0.008, 0.013), fl.Span("cold", 0.013, 0.02)]
    t = part_truths(diff, spans)["hot"]  # a part called twice: both calls' time
    assert t["doubled_j"] == pytest.approx(7.2) and t["removed_j"] == pytest.approx(7.6)
    assert t["truth_j"] == pytest.approx(7.4) and t["truth_limit_j"] == pytest.approx(0.2)
    assert t["displaced_idle_j"] == pytest.approx(1.2)
    assert t["run_sigma_j"] == pytest.approx(np.hypot(0.05, DISPLACED_IDLE_SIGMA_W * 0.010))


def test_a_doubled_module_runs_twice_per_call_until_undone():
    import torch

    from bench.gpu_profile_checks import doubled

    class Counting(torch.nn.Module):
        runs = 0

        def forward(self, x):
            Counting.runs += 1
            return x * 2

    m = Counting()
    undo = doubled(m)
    assert torch.equal(m(torch.ones(2)), torch.full((2,), 2.0))
    assert Counting.runs == 2
    undo()
    m(torch.ones(2))
    assert Counting.runs == 3


def test_a_profile_stops_at_the_precision_asked_or_at_its_time_limit():
    from aipm_fast.profile.run import stop_reason

    assert stop_reason(0.05, 500, 10.0, 0.03, 200, 120.0) == ""
    assert "known to 2.0%" in stop_reason(0.02, 500, 10.0, 0.03, 200, 120.0)
    assert stop_reason(0.02, 100, 10.0, 0.03, 200, 120.0) == ""  # too few repetitions yet
    assert "time limit 120 s" in stop_reason(float("inf"), 100, 121.0, 0.03, 200, 120.0)


def test_a_batch_maps_each_repetition_and_its_parts_to_the_samplers_clock(monkeypatch):
    """The GPU loop's bookkeeping with a stand-in for torch.cuda whose events read a virtual
    device clock that the inference advances."""
    from types import SimpleNamespace

    from aipm_fast.profile import run

    device = {"now": 10.0}

    class Event:
        def __init__(self, enable_timing=True):
            self.at = float("nan")

        def record(self):
            self.at = device["now"]

        def synchronize(self):
            pass

    fake = SimpleNamespace(cuda=SimpleNamespace(Event=Event, synchronize=lambda: None))
    parts = run.Parts(fake)

    def inference():
        with parts.range("first"):
            device["now"] += 0.002
        device["now"] += 0.001
        with parts.range("second"):
            device["now"] += 0.003

    def timeline(torch, stream, t0):
        return SimpleNamespace(seconds=lambda e: e.at - 10.0 + 1.0)  # device time 10 s is 1 s after t0

    got = run._Collected()
    run._batch(fake, None, inference, parts, np.random.default_rng(0), "drift", 0, got, timeline, 0.05)
    n = len(got.starts)
    assert n >= 2 and len(got.ends) == len(got.parts) == n
    assert got.starts[0] == pytest.approx(1.0)
    assert np.allclose(np.array(got.ends) - np.array(got.starts), 0.006)
    for rep in got.parts:
        assert [(name, round(a, 6), round(b, 6)) for name, a, b in rep] == [
            ("first", 0.0, 0.002),
            ("second", 0.003, 0.006),
        ]


def test_the_whole_gpu_loop_runs_on_the_fake_nvml_with_a_stand_in_for_cuda(fake_nvml_lib, monkeypatch):
    """profile() end to end: the Recorder on the fake NVML (constant 250 W), a stand-in for
    torch.cuda whose events read the host clock, an 'inference' that waits 6 ms; the curve is
    flat at the fake's power."""
    import time
    from contextlib import nullcontext
    from types import SimpleNamespace

    from aipm_fast.config import EngineConfig
    from aipm_fast.profile import run
    from aipm_fast.sensor import drive

    class Event:
        def __init__(self, enable_timing=True):
            self.ns = 0

        def record(self):
            self.ns = time.monotonic_ns()

        def synchronize(self):
            pass

        def elapsed_time(self, other):
            return (other.ns - self.ns) / 1e6

    cuda = SimpleNamespace(
        Event=Event,
        synchronize=lambda: None,
        set_device=lambda d: None,
        current_stream=lambda: None,
        stream=lambda s: nullcontext(),
    )
    monkeypatch.setattr(drive, "require_cuda", lambda gpu, what: SimpleNamespace(cuda=cuda))
    monkeypatch.setenv("FAKE_NVML_TRACE", "const:250")
    monkeypatch.setattr(run, "CHECK_S", 0.5)
    off = "/nonexistent"
    config = EngineConfig.from_env(nvml_lib=str(fake_nvml_lib), powercap_root=off, msr_root=off, perf_root=off)
    parts = run.Parts(SimpleNamespace(cuda=cuda))

    def inference():
        with parts.range("wait"):
            time.sleep(0.006)

    seen = []
    result = run.profile(
        inference,
        parts=parts,
        response=SensorResponse.window(0.016, 0.004),
        config=config,
        precision=1e-9,  # never reached: the time limit stops it
        max_s=2.0,
        min_reps=10,
        progress=lambda share, text: seen.append((share, text)),
    )
    f = result.folded
    assert "time limit 2 s" in result.stopped and seen and 0 < seen[-1][0] <= 1.0
    assert f.n_reps > 50
    assert f.power_w[f.in_inference] == pytest.approx(250.0, rel=0.03)
    assert f.energy_j == pytest.approx(250.0 * f.duration_s, rel=0.03)
    assert [r["name"] for r in result.table] == ["wait", "other"]
    # what it was folded from is kept, so that the fold can be redone offline (bench/profile_refold.py)
    raw = result.raw
    assert raw["starts_s"].size == raw["ends_s"].size == f.n_reps and raw["stamps_s"].size == raw["watts"].size
    assert raw["parts"]["wait"].shape == (f.n_reps, 2) and raw["counter_s"].size == raw["counter_j"].size > 0
    again = fl.fold(SensorResponse.window(0.016, 0.004), raw["stamps_s"], raw["watts"], raw["starts_s"], raw["ends_s"])
    assert again.energy_j == pytest.approx(f.energy_j / result.info["scale"], rel=1e-9)
    assert "timing uncertainty was not measured" in result.method  # and says its band lacks that term
    # a run this short is not scaled by the counter, and says so
    assert "NVML energy counter span" in result.method and "< 5 s: trace unscaled" in result.method


def test_the_h200s_free_response_with_its_negative_lags_folds_as_well():
    """Samples made through the stored H200 calibration's free response (it starts 10 ms before
    the stamp) from the known shape with idle gaps: the phases' energies come back."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "results" / "h200" / "sensor" / "calibrations.json"
    entry = next(iter(json.loads(path.read_text())["responses"].values()))
    response = SensorResponse.from_dict(entry["response"])
    assert response.lag0_s < 0
    rng = np.random.default_rng(3)
    _, starts, ends, end = periodic_schedule(rng, 40.0)
    offsets = np.cumsum([0.0, *(d for d, _ in SHAPE)])
    a = (starts[:, None] + offsets[None, :-1]).ravel()
    b = (starts[:, None] + offsets[None, 1:]).ravel()
    watts = np.tile([w for _, w in SHAPE], starts.size)
    stamps = np.arange(0.6, end - 0.2, 0.02) + rng.uniform(-0.002, 0.002, size=np.arange(0.6, end - 0.2, 0.02).size)
    samples = response.predict(stamps, a, b, watts, base_w=IDLE_W) + rng.normal(0.0, 3.0, stamps.size)
    f = fl.fold(response, stamps, samples, starts, ends)
    rows = f.span_table([fl.Span(f"phase {k}", offsets[k], offsets[k + 1]) for k in range(len(SHAPE))])
    for k, (dur, w) in enumerate(SHAPE):
        assert rows[k]["energy_j"] == pytest.approx(dur * w, rel=0.05), rows[k]
    assert f.energy_j == pytest.approx(sum(d * w for d, w in SHAPE), rel=0.01)


def test_a_stalled_repetition_does_not_stretch_the_curve_and_its_time_still_counts(fake_nvml_lib, folded):
    """One repetition in a thousand held ten times as long (a host stall): the bins stay those of
    the usual inference, the stall's time goes into the last bin, bin * coverage is the mean
    duration."""
    _, _, response = folded
    schedule, starts, ends, end = periodic_schedule(np.random.default_rng(9), 20.0)
    ends = ends.copy()
    ends[100] = starts[100] + 0.9 * (starts[101] - starts[100])  # the inference held into its gap
    with NvmlClock(fake_nvml_lib, schedule=schedule, sensor=SENSOR) as clock:
        t, w = clock.samples(0.2, end)
    f = fl.fold(response, t, w, starts, ends)
    assert f.power_w.size == 13
    assert f.coverage.sum() * f.bin_s == pytest.approx(np.mean(ends - starts), rel=1e-9)
    assert f.duration_s == pytest.approx(np.mean(ends - starts), rel=1e-9)


def test_a_recorded_validation_run_folds_again_offline_with_its_truths(fake_run, tmp_path):
    """bench/profile_refold.py on a run folder as gpu_profile_checks.py writes it: the same fold of
    the same samples, the parts judged against the run's slot differences with the displaced idle
    added back, and the diagnosis (each calibration, shifted responses, a block jackknife)."""
    from types import SimpleNamespace

    from bench.gpu_profile_checks import save_raw
    from bench.profile_refold import diagnose, refold

    response, t, w, starts, ends, _ = fake_run
    edges = np.cumsum([0.0, *(d for d, _ in SHAPE)])
    names = [f"phase {k}" for k in range(len(SHAPE))]
    parts = {
        n: np.column_stack([np.full(starts.size, edges[k]), np.full(starts.size, edges[k + 1])])
        for k, n in enumerate(names)
    }
    raw = {
        "stamps_s": t,
        "watts": w,
        "starts_s": starts,
        "ends_s": ends,
        "counter_s": t,
        "counter_j": w,
        "parts": parts,
    }
    (tmp_path / "fake").mkdir()
    save_raw(SimpleNamespace(raw=raw), str(tmp_path / "fake" / "raw.npz"))
    # slot differences as a fixed-cycle run would give them: each phase's energy less its time of idle
    cycle_s = 0.030  # a base cycle: the inference, then idle
    cycle_j = IDLE_W * cycle_s + sum((watts - IDLE_W) * d for d, watts in SHAPE)
    diff = {
        "idle_w": IDLE_W,
        "base_j": [cycle_j],
        "difference": {
            n: {"doubled_slot_j": (watts - IDLE_W) * d, "removed_slot_j": (watts - IDLE_W) * d, "sigma_j": 0.001}
            for n, (d, watts) in zip(names, SHAPE)
        },
    }
    checks = {
        "gpu": "fake",
        "fake": {"scale": 1.0, "checks": {n: {} for n in names}, "difference_runs": diff},
        "counter_runs": [{"label": "fake base", "n": 100, "seconds": 100 * cycle_s}],
    }
    (tmp_path / "checks.json").write_text(json.dumps(checks))
    out = refold(tmp_path, response, [], None)["profiles"]["fake"]
    assert out["energy_j"] == pytest.approx(fl.fold(response, t, w, starts, ends).energy_j, rel=1e-12)
    for n, (d, watts) in zip(names, SHAPE):
        c = out["parts"][n]
        assert c["truth_j"] == pytest.approx(d * watts) and c["displaced_idle_j"] == pytest.approx(IDLE_W * d)
        assert c["within_5pct"], c
    d = diagnose(tmp_path, {"fitted": response})["fake"]
    assert set(d["calibrations"]) == {"fitted"} and "+0 ms" in d["shifts"]
    assert d["shifts"]["+0 ms"]["parts_j"] == pytest.approx(d["calibrations"]["fitted"]["parts_j"])
    assert d["additive_idle_w"] == pytest.approx(IDLE_W)  # every phase removed once: the cycle's idle
    for n in names:  # the fit's own sigma and the jackknife's agree in size on the fake's noise
        assert 0.2 < d["jackknife_sigma_j"][n] / d["sandwich_sigma_j"][n] < 5.0
