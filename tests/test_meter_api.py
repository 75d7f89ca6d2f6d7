"""The Meter's user API on fake hardware: Measurements of windows, totals over additive domains,
track_energy, and misuse refused with errors that say what to do."""

import time
import warnings

import numpy as np
import pytest

from aipm_fast import Measurement, Meter, track_energy

OFF = {"msr_root": "/nonexistent", "perf_root": "/nonexistent"}
PACKAGE, CORE, DRAM, GPU = "rapl:package-0", "rapl:package-0/core", "rapl:package-0/dram", "nvml:0"


@pytest.fixture
def hw(fake_powercap, fake_nvml_lib, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_TRACE", "const:100")
    monkeypatch.setenv("FAKE_NVML_GPUS", "1")
    root, writer = fake_powercap()
    return {"powercap_root": str(root), "nvml_lib": str(fake_nvml_lib), "cuda": False, **OFF}, writer


# -- Measurements -----------------------------------------------------------------------------------
def test_end_window_returns_the_window_s_figures_and_totals_leave_nested_domains_out(hw):
    options, writer = hw
    with Meter(**options) as m:
        started = m.start_window("phase")
        time.sleep(0.3)
        got = m.end_window(started)
        assert isinstance(got, Measurement) and got is started
        # read while running: waits for this window's readings, no explicit flush
        energy = got.energy_j
        assert np.isfinite(energy[PACKAGE]) and np.isfinite(energy[GPU])
        assert got.status == "provisional"
    assert got.status == "final"
    row = m.windows().set_index(["window_id", "domain"])
    for d in (PACKAGE, CORE, DRAM, GPU):
        assert got.energy_j[d] == pytest.approx(row.loc[(got.id, d), "energy_j"], rel=1e-12)
        assert got.uncertainty_j[d] == pytest.approx(row.loc[(got.id, d), "uncertainty_j"], rel=1e-12)
        assert got.method[d] == row.loc[(got.id, d), "method"]
    # core lies inside its package: the total adds package, DRAM and GPU, and not core again
    additive = got.energy_j[PACKAGE] + got.energy_j[DRAM] + got.energy_j[GPU]
    assert got.total_j == pytest.approx(additive, rel=1e-12)
    assert got.total_j < additive + got.energy_j[CORE]
    assert got.total_uncertainty_j == pytest.approx(
        np.sqrt(sum(got.uncertainty_j[d] ** 2 for d in (PACKAGE, DRAM, GPU))), rel=1e-12
    )
    assert got.duration_s == pytest.approx((got.end_ns - got.start_ns) / 1e9)
    assert got.duration_s >= 0.3
    assert got.energy_j[GPU] == pytest.approx(100 * got.duration_s, rel=0.1)
    assert "phase" in str(got) and "J" in str(got)

    totals = m.totals().set_index("window_id")
    assert totals.loc[got.id, "energy_j"] == pytest.approx(got.total_j, rel=1e-12)
    assert set(totals.loc[got.id, "domains"].split(",")) == {PACKAGE, DRAM, GPU}


def test_end_window_by_name_closes_the_most_recent_open_window_of_that_name(hw):
    options, _ = hw
    with Meter(**options) as m:
        outer = m.start_window("x")
        inner = m.start_window("x")
        other = m.start_window("y")
        time.sleep(0.05)
        closed = m.end_window("x")
        assert closed.id == inner.id and inner.closed and not outer.closed and not other.closed
        assert m.end_window("x").id == outer.id
        with pytest.raises(ValueError, match=r"end_window\('x'\): no window of that name is open \(open: 'y'\)"):
            m.end_window("x")
        m.end_window("y")


def test_a_with_window_gives_a_measurement_usable_where_a_window_was(hw):
    options, _ = hw
    with Meter(**options) as m:
        with m.window("eval") as w:
            with pytest.raises(ValueError, match="'eval' is still open"):
                _ = w.total_j
            for _ in range(3):
                with m.inference():
                    time.sleep(0.02)
        assert isinstance(w, Measurement) and w.n_inferences == 3
        assert m.window_energy(w) == w.energy_j
        assert np.isfinite(w.total_j)


def test_inferences_carry_additivity_and_totals_are_a_separate_table(hw):
    options, _ = hw
    with Meter(**options) as m:
        with m.window("a"):
            with m.inference():
                time.sleep(0.05)
    inf = m.inferences().set_index("domain")
    assert inf.loc[CORE, "additive"] == False  # noqa: E712  (numpy bools)
    assert inf.loc[PACKAGE, "additive"] == True  # noqa: E712
    assert inf.loc[GPU, "part"] == "gpu"
    for frame in (m.windows(), m.summary(), m.inferences()):
        assert "additive" in frame.columns
        assert "total" not in set(frame["domain"])  # no total row to be summed again
    totals = m.totals()
    assert list(totals["window"]) == ["a"] and totals["n_inferences"].tolist() == [1]


def test_inferences_read_back_from_out_dir_carry_additivity(hw, tmp_path):
    options, _ = hw
    with Meter(**options, out_dir=str(tmp_path)) as m:
        with m.inference():
            time.sleep(0.02)
        m.flush()
        live = m.inferences().set_index("domain")
    assert live.loc[CORE, "additive"] == False  # noqa: E712
    assert bool(m.inferences().set_index("domain").loc[GPU, "additive"])


@pytest.mark.parametrize("streamed", [False, True], ids=["in memory", "read back from out_dir"])
def test_mark_energies_are_the_inferences_of_a_window_name_one_column_per_domain(hw, tmp_path, streamed):
    options, _ = hw
    with Meter(**options, out_dir=str(tmp_path) if streamed else None) as m:
        for name in ("a", "b", "a"):
            with m.window(name):
                for _ in range(4):
                    with m.inference():
                        time.sleep(0.01)
        m.flush()
        wide = m.results.mark_energies("a")
        long = m.inferences("a")
    assert list(wide.columns[:4]) == ["index", "start_ns", "end_ns", "latency_s"]
    assert sorted(wide.columns[4:]) == sorted(m.domains)
    assert wide["index"].tolist() == sorted(long["index"].unique()) and len(wide) == 8
    for domain in m.domains:
        rows = long[long["domain"] == domain].set_index("index")
        assert wide.set_index("index")[domain].to_numpy() == pytest.approx(rows["energy_j"].to_numpy(), rel=1e-12)
        assert wide["latency_s"].to_numpy() == pytest.approx(rows["latency_s"].to_numpy())
    assert m.results.mark_energies("none").empty


# -- track_energy --------------------------------------------------------------------------------
def test_track_energy_as_a_context_manager_owns_its_meter(hw, capsys):
    options, _ = hw
    with track_energy("block", **options) as t:
        time.sleep(0.25)
    assert t.status == "final" and not t.meter.running
    assert t.energy_j[GPU] == pytest.approx(100 * t.duration_s, rel=0.1)
    assert np.isfinite(t.total_j)
    assert "aipm-fast: block:" in capsys.readouterr().err


def test_track_energy_as_a_decorator_measures_each_call_and_stops_on_an_exception(hw):
    options, _ = hw

    @track_energy("f", echo=False, **options)
    def work(fail=False):
        time.sleep(0.1)
        if fail:
            raise KeyError("x")
        return 7

    assert work() == 7
    first = work.last_measurement
    assert first.status == "final" and first.energy_j[GPU] > 0
    with pytest.raises(KeyError):
        work(fail=True)
    assert work.last_measurement is not first
    assert not work.last_measurement.meter.running  # stopped though the call raised
    assert work.last_measurement.closed


# -- misuse ---------------------------------------------------------------------------------------
def test_marks_outside_a_running_meter_are_refused(hw):
    options, _ = hw
    m = Meter(**options)
    for act in (m.inference, m.step, lambda: m.window("w"), lambda: m.start_window("w")):
        with pytest.raises(RuntimeError, match=r"before start\(\).*running Meter"):
            with act():
                pass
    m.start()
    w = m.start_window("late")
    m.stop()
    with pytest.raises(RuntimeError, match=r"after stop\(\)"):
        with m.inference():
            pass
    with pytest.raises(RuntimeError, match=r"closing window 'late' after stop\(\)"):
        m.end_window(w)


def test_a_stopped_meter_cannot_be_restarted(hw):
    options, _ = hw
    m = Meter(**options).start()
    m.stop()
    with pytest.raises(RuntimeError, match="cannot be restarted.*create a new Meter"):
        m.start()


@pytest.mark.parametrize(
    "gpus, error, text",
    [
        (5, TypeError, r"gpus must be a list of GPU indices .* got int 5"),
        ("0,1", TypeError, r"got str '0,1'"),
        ([0, "1"], TypeError, r"got str '1' in \[0, '1'\]"),
        ([True], TypeError, r"got bool True"),
        ([-1], ValueError, r"0 or more, got -1"),
    ],
)
def test_wrong_gpus_are_refused_with_what_was_given(hw, gpus, error, text):
    options, _ = hw
    with pytest.raises(error, match=text):
        Meter(**options, gpus=gpus)


def test_each_requested_gpu_that_cannot_be_metered_is_warned_about(hw):
    options, _ = hw
    with pytest.warns(UserWarning) as caught:
        m = Meter(**options, gpus=[0, 7, 9])
    texts = [str(w.message) for w in caught if "cannot be metered" in str(w.message)]
    assert len(texts) == 2
    assert "GPU 7" in texts[0] and "GPU 9" in texts[1] and "no such GPU (NVML sees 1)" in texts[0]
    assert GPU in m.domains
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a GPU that exists: no warning
        Meter(**options, gpus=[0])
