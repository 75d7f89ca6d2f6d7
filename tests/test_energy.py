import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipm_fast.energy import (
    EnergyCurve,
    counter_curve,
    power_curve,
    scaled_curve,
)

MS = 1_000_000
S = 1_000_000_000
T0 = 123_456 * S  # a monotonic clock some way into uptime

fast = settings(max_examples=60, deadline=None)


def grid(start_ns, end_ns, step_ns):
    return np.arange(start_ns, end_ns + 1, step_ns, dtype=np.int64)


def trace_50hz(seconds, watts):
    t = grid(T0, T0 + int(seconds * S), 20 * MS)
    return power_curve(t, np.broadcast_to(np.asarray(watts, dtype=float), t.shape))


# -- integration is exact where the model holds -------------------------------------------


def test_constant_power_integrates_exactly():
    curve = trace_50hz(10, 250.0)
    assert curve.total_j == pytest.approx(2500.0, rel=1e-12)
    a = T0 + 1_234_567_891
    assert curve.energy(a, a + 3 * S) == pytest.approx(750.0, rel=1e-12)
    assert curve.mean_power(a, a + 7 * MS) == pytest.approx(250.0, rel=1e-9)


@fast
@given(
    steps_ms=st.lists(st.integers(1, 200), min_size=2, max_size=30),
    watts=st.lists(st.floats(0.0, 1000.0), min_size=31, max_size=31),
    cuts=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
)
def test_piecewise_linear_power_integrates_exactly_at_any_edge(steps_ms, watts, cuts):
    t = T0 + np.concatenate(([0], np.cumsum(steps_ms))).astype(np.int64) * MS
    p = np.array(watts[: t.size])
    curve = power_curve(t, p)

    def exact(t_ns):  # integral of the piecewise-linear power from t[0]
        t_ns = int(t_ns)
        total = 0.0
        for k in range(t.size - 1):
            lo, hi = int(t[k]), int(t[k + 1])
            if t_ns <= lo:
                break
            end = min(t_ns, hi)
            p_end = p[k] + (p[k + 1] - p[k]) * (end - lo) / (hi - lo)
            total += 0.5 * (p[k] + p_end) * (end - lo) * 1e-9
        return total

    a, b = sorted(int(T0 + c * (t[-1] - T0)) for c in cuts)
    scale = max(1.0, float(p.max()) * (t[-1] - t[0]) * 1e-9)
    assert curve.energy(a, b) == pytest.approx(exact(b) - exact(a), rel=1e-9, abs=1e-9 * scale)


@fast
@given(
    steps_ms=st.lists(st.integers(1, 100), min_size=2, max_size=50),
    watts=st.lists(st.floats(0.5, 1000.0), min_size=51, max_size=51),
    cuts=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=40),
)
def test_adjacent_intervals_sum_to_their_union(steps_ms, watts, cuts):
    t = T0 + np.concatenate(([0], np.cumsum(steps_ms))).astype(np.int64) * MS
    w = np.array(watts[: t.size])
    for curve in (power_curve(t, w), counter_curve(t, np.cumsum(w) + 1.0)):
        span = curve.end_ns - curve.start_ns
        edges = np.unique((curve.start_ns + np.array(cuts) * span).astype(np.int64))
        parts = curve.energy(edges[:-1], edges[1:])
        union = curve.energy(edges[0], edges[-1])
        assert parts.sum() == pytest.approx(union, rel=1e-9, abs=1e-9 * max(1.0, curve.total_j))


# -- counters ------------------------------------------------------------------------------


def test_counter_wraps_several_times_and_gives_the_total():
    wrap = 1000.0
    t = grid(T0, T0 + 10 * S, 1 * MS)
    steps = np.full(t.size - 1, 0.4)  # 400 W read every ms: 4000 J, four wraps
    truth = np.concatenate(([37.0], 37.0 + np.cumsum(steps)))
    curve = counter_curve(t, truth % wrap, wrap_j=wrap)
    assert curve.total_j == pytest.approx(4000.0, rel=1e-9)
    assert curve.energy(T0 + 2 * S, T0 + 7 * S) == pytest.approx(2000.0, rel=1e-9)


@fast
@given(
    increments=st.lists(st.floats(0.0, 300.0), min_size=1, max_size=200),
    start=st.floats(0.0, 999.0),
)
def test_counter_unwrapping_matches_the_sum_of_increments(increments, start):
    wrap = 1000.0
    truth = start + np.concatenate(([0.0], np.cumsum(increments)))
    increments = np.diff(truth)  # what the float arithmetic really added
    values = np.mod(truth, wrap)
    t = T0 + np.arange(values.size, dtype=np.int64) * 10 * MS
    moved = np.flatnonzero(np.diff(values) != 0) + 1
    if moved.size < 1:
        with pytest.raises(ValueError, match="at least two updates"):
            counter_curve(t, values, wrap_j=wrap, first_is_new=True)
        return
    curve = counter_curve(t, values, wrap_j=wrap, first_is_new=True)
    expected = truth[moved[-1]] - truth[0]
    assert curve.total_j == pytest.approx(expected, rel=1e-9, abs=1e-6)


def test_counter_decrease_without_wrap_raises_naming_index_and_values():
    t = grid(T0, T0 + 5 * MS, MS)
    values = np.array([10.0, 11.0, 12.0, 0.5, 1.5, 2.5])
    with pytest.raises(ValueError, match=re.escape("decreased at index 3: 12.0 J -> 0.5 J")):
        counter_curve(t, values)


def test_counter_with_a_small_range_wraps_on_any_decrease():
    # a 3 J range wraps every 150 ms at 20 W: a reader that stalls 100 ms sees a small drop
    t = np.array([0, 10, 110, 120], dtype=np.int64) * MS + T0
    curve = counter_curve(t, np.array([1.0, 1.2, 0.2, 0.4]), wrap_j=3.0)
    assert curve.total_j == pytest.approx(2.4)


def test_counter_read_faster_than_it_updates_has_knots_where_values_first_appear():
    # 200 W; the counter updates every 100 ms (3 ms past each 100 ms tick), read every 10 ms.
    read = grid(T0, T0 + 2 * S, 10 * MS)
    update = np.arange(0, 3 * S, 100 * MS) + 3 * MS + T0
    values = 200.0 * 0.1 * np.searchsorted(update, read, side="right")
    curve = counter_curve(read, values)
    assert curve.method == "counter"
    assert curve.sample_period_s == pytest.approx(0.1)
    assert np.all((curve.t_ns - T0) % (100 * MS) == 10 * MS)  # first read after each update
    # constant power between updates, not a staircase: 50 ms inside one update period
    assert curve.energy(T0 + 1000 * MS, T0 + 1050 * MS) == pytest.approx(10.0, rel=1e-9)
    # the unchanged readings after the last update are covered by extrapolation
    tail_s = (read[-1] - curve.end_ns) * 1e-9
    assert curve.energy(curve.end_ns, int(read[-1])) == pytest.approx(200.0 * tail_s)


def _slow_counter(read_from_ns):
    """200 W counter updating every 100 ms (3 ms past each tick), read every 10 ms."""
    read = grid(read_from_ns, T0 + 2 * S, 10 * MS)
    update = np.arange(0, 3 * S, 100 * MS) + 3 * MS + T0
    return read, 200.0 * 0.1 * np.searchsorted(update, read, side="right")


def test_counter_first_reading_is_a_knot_only_if_its_value_was_seen_appearing():
    read, values = _slow_counter(T0 + 50 * MS)  # starts mid-way through an update period
    assert counter_curve(read, values).start_ns == T0 + 110 * MS  # first change
    assert counter_curve(read, values, first_is_new=True).start_ns == T0 + 50 * MS
    # a history cut where the counter changed keeps its first reading and its energy
    whole = counter_curve(*_slow_counter(T0))
    cut = counter_curve(*_slow_counter(T0 + 510 * MS))
    assert cut.start_ns == T0 + 510 * MS
    times = np.array([T0 + 600 * MS, T0 + 1234 * MS, T0 + 1900 * MS])
    rebased = whole.at(T0 + 510 * MS) + cut.at(times)
    assert rebased == pytest.approx(whole.at(times), rel=1e-12)
    with pytest.raises(ValueError, match="at least two updates"):
        counter_curve(read[:10], values[:10], first_is_new=False)


def test_duplicate_timestamps_are_dropped():
    t = np.array([0, 10, 10, 20, 30, 30, 40], dtype=np.int64) * MS + T0
    p = np.array([100.0, 100.0, 900.0, 100.0, 100.0, 5.0, 100.0])
    curve = power_curve(t, p)
    assert curve.t_ns.size == 5
    assert curve.total_j == pytest.approx(4.0)


def test_at_extrapolates_one_sample_period_then_gives_nan():
    curve = trace_50hz(1, 100.0)
    end = curve.end_ns
    assert curve.at(end + 5 * MS) == pytest.approx(100.5)
    assert curve.at(end + 20 * MS) == pytest.approx(102.0)
    assert np.isnan(curve.at(end + 20 * MS + 1))
    assert curve.at(T0 - 20 * MS) == pytest.approx(-2.0)
    assert np.isnan(curve.at(T0 - 21 * MS))
    assert np.isnan(curve.energy(T0, end + S))
    values = curve.at(np.array([T0 - S, T0, end, end + S]))
    assert np.isnan(values[[0, 3]]).all() and np.isfinite(values[[1, 2]]).all()


def test_extrapolation_limit_is_a_field():
    curve = trace_50hz(1, 100.0)
    longer = EnergyCurve(
        curve.t_ns,
        curve.joules,
        curve.sample_period_s,
        curve.method,
        curve.power_w,
        max_extrapolation_s=1.0,
    )
    assert longer.at(curve.end_ns + S) == pytest.approx(200.0)


# -- uncertainty ---------------------------------------------------------------------------


def test_uncertainty_grows_relative_to_energy_below_the_sample_period():
    curve = trace_50hz(2, 300.0)  # 20 ms samples
    lengths = np.array([1000, 100, 40, 20, 10, 5, 2]) * MS
    a = np.full(lengths.size, T0 + 500 * MS + 3 * MS)
    b = a + lengths
    relative = curve.uncertainty(a, b) / curve.energy(a, b)
    assert np.all(np.diff(relative) > 0)
    assert relative[0] < 0.005  # 1 s against 20 ms samples: a measurement
    assert relative[5] > 0.1  # 5 ms against 20 ms samples: clearly an estimate
    assert curve.is_estimate(a, b).tolist() == [False, False, False, True, True, True, True]
    edges = curve.edge_uncertainty(np.stack([a, b]))
    assert edges.shape == (2, lengths.size)
    assert np.hypot(edges[0], edges[1])[:3] == pytest.approx(curve.uncertainty(a, b)[:3])


def test_uncertainty_is_larger_at_a_power_step():
    t = grid(T0, T0 + 2 * S, 20 * MS)
    curve = power_curve(t, np.where(t < T0 + S, 150.0, 900.0))
    steady = curve.uncertainty(T0 + 200 * MS, T0 + 400 * MS)
    at_step = curve.uncertainty(T0 + 995 * MS, T0 + 1195 * MS)
    assert at_step > 5 * steady
    assert np.isnan(curve.uncertainty(T0, T0 + 5 * S))


def test_interval_ending_before_it_starts_is_refused():
    curve = trace_50hz(1, 100.0)
    with pytest.raises(ValueError, match="ends before it starts"):
        curve.energy(np.array([T0 + 10 * MS]), np.array([T0]))


# -- scaling a trace to a counter ----------------------------------------------------------


def _true_power(t_ns):
    s = (t_ns - T0) * 1e-9
    return 400.0 + 150.0 * np.sin(2 * np.pi * s / 0.7)


def _true_energy(t_ns):
    s = (np.asarray(t_ns) - T0) * 1e-9
    return 400.0 * s + 150.0 * 0.7 / (2 * np.pi) * (1 - np.cos(2 * np.pi * s / 0.7))


def _trace_and_counter(trace_gain, seconds=10):
    trace_t = grid(T0, T0 + seconds * S, 20 * MS)
    trace = power_curve(trace_t, trace_gain * _true_power(trace_t))
    counter_t = grid(T0 + 7 * MS, T0 + seconds * S, 100 * MS)
    counter = counter_curve(counter_t, 5000.0 + _true_energy(counter_t))
    return trace, counter


def test_scaled_curve_corrects_a_trace_reading_3_percent_low():
    trace, counter = _trace_and_counter(0.97)
    scaled = scaled_curve(trace, counter)
    assert scaled.scale == pytest.approx(1 / 0.97, rel=1e-3)
    assert scaled.method.startswith("power-trapezoid scaled to counter")
    a, b = T0 + 2 * S + 3 * MS, T0 + 8 * S + 11 * MS
    truth = _true_energy(b) - _true_energy(a)
    assert trace.energy(a, b) == pytest.approx(0.97 * truth, rel=1e-3)
    assert scaled.energy(a, b) == pytest.approx(truth, rel=1e-3)
    assert scaled.power_w[100] == pytest.approx(trace.power_w[100] * scaled.scale)


def test_scaled_curve_follows_the_counter_through_an_aliased_trace_and_warns():
    # a load locked to the sample period can bias the trace by tens of percent
    trace, counter = _trace_and_counter(0.70)
    scaled = scaled_curve(trace, counter)
    assert scaled.scale == pytest.approx(1 / 0.70, rel=1e-3)
    a, b = T0 + 2 * S + 3 * MS, T0 + 8 * S + 11 * MS
    assert scaled.energy(a, b) == pytest.approx(_true_energy(b) - _true_energy(a), rel=1e-3)
    assert "trace alone read -30.0% against the counter" in scaled.method and "alias" in scaled.method


def test_scaled_curve_does_not_warn_about_a_small_calibration():
    trace, counter = _trace_and_counter(0.97)
    assert "trace alone read" not in scaled_curve(trace, counter).method


def test_scaled_curve_leaves_a_threefold_mismatch_unscaled_and_says_why():
    trace, counter = _trace_and_counter(0.30)
    result = scaled_curve(trace, counter)
    assert result.scale == 1.0
    assert np.array_equal(result.joules, trace.joules)
    assert "not scaled" in result.method and "outside [0.5, 2]" in result.method


def test_scaled_curve_needs_a_long_enough_common_span():
    trace, counter = _trace_and_counter(0.97, seconds=3)
    result = scaled_curve(trace, counter, min_span_s=5.0)
    assert result.scale == 1.0
    assert np.array_equal(result.joules, trace.joules)
    assert "not scaled" in result.method and "< 5 s" in result.method


# -- baseline, inputs, scale ---------------------------------------------------------------


def test_unsorted_times_and_float_times_are_refused():
    with pytest.raises(ValueError, match="sorted"):
        power_curve(np.array([T0, T0 + 2, T0 + 1]), np.ones(3))
    with pytest.raises(TypeError, match="integer nanoseconds"):
        power_curve(np.array([0.0, 1.0]), np.ones(2))
    with pytest.raises(ValueError, match="at least two samples"):
        power_curve(np.array([T0, T0 + 1]), np.array([1.0, np.nan]))  # one sample is left


def test_a_sensor_nan_costs_its_own_span_not_the_whole_trace():
    t = grid(T0, T0 + 1 * S, 20 * MS)
    watts = np.full(t.size, 100.0)
    watts[[10, 11, 30]] = [np.nan, np.inf, np.nan]
    curve = power_curve(t, watts)
    assert curve.total_j == pytest.approx(100.0, rel=1e-9)
    assert curve.method == "power-trapezoid (3 invalid samples dropped)"


def test_a_million_intervals_at_once():
    rng = np.random.default_rng(0)
    t = grid(T0, T0 + 100 * S, 20 * MS)
    curve = power_curve(t, 300.0 + 50.0 * rng.random(t.size))
    a = rng.integers(T0, T0 + 99 * S, size=1_000_000)
    b = a + rng.integers(0, S, size=a.size)
    energy = curve.energy(a, b)
    assert energy.shape == (1_000_000,) and energy.dtype == np.float64
    assert np.isfinite(energy).all() and (energy >= 0).all()
    assert curve.uncertainty(a, b).shape == (1_000_000,)
    assert curve.is_estimate(a, b).shape == (1_000_000,)
    for k in (0, 1234, 999_999):
        assert energy[k] == pytest.approx(curve.at(int(b[k])) - curve.at(int(a[k])))
    grid_2d = curve.energy(a[:6].reshape(2, 3), b[:6].reshape(2, 3))
    assert grid_2d.shape == (2, 3)
