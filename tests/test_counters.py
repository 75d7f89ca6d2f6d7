"""A counter's steps classified: wraps, resets, glitches and gaps, against a known steady power."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aipm_fast.counters import GAP, GLITCH, RESET
from aipm_fast.energy import counter_curve

MS = 1_000_000
T0 = 10**12


def readings(power_w, seconds, wrap_j, start_j=0.0, every_ms=1.0):
    """(t_ns, counter values, truth J at each reading) of a steady power read every `every_ms`."""
    t = T0 + np.arange(0, int(seconds * 1000 / every_ms)) * int(every_ms * MS)
    truth = start_j + power_w * (t - T0) / 1e9
    return t, np.mod(truth, wrap_j) if wrap_j else truth.copy(), truth


def kinds(curve):
    return [k for _, k in curve.events]


def test_a_reset_is_not_read_as_a_wrap_and_is_bridged():
    # a 40 W package on a 262 kJ range: the counter restarts from 12 J after 1 s
    wrap = 262_143.0
    t, v, truth = readings(40.0, 2.0, wrap, start_j=200_000.0)
    v[1000:] = 12.0 + 40.0 * (t[1000:] - t[1000]) / 1e9
    curve = counter_curve(t, v, wrap, max_power_w=100.0)
    assert curve.total_j == pytest.approx(truth[-1] - truth[0], rel=1e-3)  # not + 262 kJ
    assert kinds(curve) == [RESET] and curve.method == "counter (1 reset bridged)"
    # without a bound every decrease is a wrap, as before: the reset gains a whole range
    assert counter_curve(t, v, wrap).total_j > 60_000


def test_a_reading_out_of_line_is_dropped_as_a_glitch():
    wrap = 262_143.0
    t, v, truth = readings(40.0, 1.0, wrap, start_j=1000.0)
    v[300] = 5.0  # one garbage reading down
    v[600] = 1e9  # and one up
    curve = counter_curve(t, v, wrap, max_power_w=100.0)
    assert curve.total_j == pytest.approx(truth[-1] - truth[0], rel=1e-6)
    assert kinds(curve) == [GLITCH, GLITCH]
    assert curve.method == "counter (2 glitches dropped)"


def test_a_gap_in_the_readings_is_unwrapped_from_the_neighbouring_power():
    # a 3 J range at 40 W wraps every 75 ms; the readings stop for 2 s (a ring overflow)
    t, v, truth = readings(40.0, 4.0, 3.0)
    keep = (t < T0 + 1000 * MS) | (t > T0 + 3000 * MS)
    curve = counter_curve(t[keep], v[keep], 3.0, max_power_w=100.0)
    assert curve.total_j == pytest.approx(truth[keep][-1] - truth[keep][0], rel=1e-3)  # not 40 W x 2 s short
    assert kinds(curve) == [GAP]


def test_a_last_reading_that_looks_like_a_reset_waits_for_the_next():
    wrap = 262_143.0
    t, v, truth = readings(40.0, 0.5, wrap, start_j=1000.0)
    v[-1] = 3.0
    curve = counter_curve(t, v, wrap, max_power_w=100.0)
    assert curve.end_ns == t[-2] and curve.events == ()


def test_a_counter_that_never_wraps_is_classified_too():
    t, v, truth = readings(250.0, 1.0, None, start_j=5e6)
    v[500:] -= 5e6  # the driver restarted the count
    curve = counter_curve(t, v, None, max_power_w=1000.0)
    assert curve.total_j == pytest.approx(truth[-1] - truth[0], rel=1e-3)
    assert kinds(curve) == [RESET]


@settings(max_examples=300, deadline=None)
@given(
    power=st.floats(1.0, 500.0),
    # RAPL-sized ranges, far above what the bound allows in one step (2 J a ms here): a reset or
    # a glitch that lands within one step's allowance below the range's top passes for a wrap,
    # and nothing in one reading tells them apart (on a 60 J range that is 3% of the values)
    wrap=st.sampled_from([262_143.0, 1e6]),
    start=st.floats(0.0, 1.0),
    glitches=st.lists(st.integers(5, 1990), max_size=4, unique=True),
    glitch_values=st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
    reset_at=st.one_of(st.none(), st.integers(10, 1990)),
)
def test_steady_power_survives_any_mix_of_wraps_glitches_and_a_reset(
    power, wrap, start, glitches, glitch_values, reset_at
):
    t, v, truth = readings(power, 2.0, wrap, start_j=start * wrap)
    if reset_at is not None:
        v[reset_at:] = np.mod(power * (t[reset_at:] - t[reset_at]) / 1e9, wrap)
    glitches = [g for g in glitches if reset_at is None or abs(g - reset_at) > 2]
    glitches = [g for i, g in enumerate(sorted(glitches)) if i == 0 or g - sorted(glitches)[i - 1] > 2]
    for g, x in zip(glitches, glitch_values):
        v[g] = x * wrap
    curve = counter_curve(t, v, wrap, max_power_w=2 * 500.0)
    # each bridged reset or dropped glitch costs at most about one 1 ms step of energy
    allowed = (len(glitches) + 2) * power * 2e-3 + 1e-9
    assert abs(curve.total_j - (truth[-1] - truth[0])) <= allowed


def test_a_reading_out_of_line_upwards_within_the_bound_is_a_glitch_not_a_step_and_a_reset():
    """A reading too high but by less than the bound allows in one step passes as a step; the
    drop after it would then read as a reset, and keep the spike's energy. Its neighbours agree
    with each other, so it is a glitch (found by the property test above)."""
    t, v, truth = readings(1.0, 2.0, 262_143.0, start_j=0.0)
    v[5] = 1e-6 * 262_143.0  # 0.26 J where the count is 0.005 J: 0.26 J in 1 ms is within 2 J
    curve = counter_curve(t, v, 262_143.0, max_power_w=1000.0)
    assert curve.total_j == pytest.approx(truth[-1] - truth[0], abs=2e-3)
    assert kinds(curve) == [GLITCH]
