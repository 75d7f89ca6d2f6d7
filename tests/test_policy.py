"""The one energy policy: channel ranking and fallback, the counter's scale, and one recording
replayed through the online (Meter) and offline (record) paths with the same energies."""

import time

import numpy as np
import pytest

from aipm_fast import policy
from aipm_fast.coordinator import Coordinator, Mark
from aipm_fast.recorder import Recorder
from aipm_fast.replay import Recording, ReplayRecorder
from aipm_fast.results import Window
from aipm_fast.sources.base import COUNTER, INSTANT_POWER, LEVEL, MEAN_POWER, Channel
from aipm_fast.timing import HostTimer

from fakes.powercap import PowercapWriter, build_powercap_tree
from recording import drain_for


def channel(cid, label, reading, update_s=None, averaging_s=None, domain="gpu:0"):
    quantity = {COUNTER: "energy", LEVEL: "utilization"}.get(reading, "power")
    return Channel(cid, domain, label, reading, quantity, "W", "test", 0.01, update_s=update_s, averaging_s=averaging_s)


def test_channels_rank_by_resolution_and_power_before_a_counter_of_the_same():
    chans = [
        channel(0, "energy", COUNTER, 0.1),
        channel(1, "average", MEAN_POWER, 0.1, 1.0),
        channel(2, "instant", INSTANT_POWER, 0.1),
        channel(3, "samples", INSTANT_POWER, 0.02),
        channel(4, "util", LEVEL),
    ]
    ranked = policy.ranked_channels(chans)["gpu:0"]
    assert [c.label for c in ranked] == ["samples", "instant", "energy", "average"]
    assert policy.anchor_for(ranked[0], ranked).label == "energy"
    assert policy.anchor_for(ranked[2], ranked) is None  # a counter is not scaled


def test_choice_falls_back_from_stuck_dead_and_failing_channels():
    ranked = [
        channel(0, "samples", INSTANT_POWER, 0.02),
        channel(1, "instant", INSTANT_POWER, 0.1),
        channel(2, "energy", COUNTER, 0.1),
    ]
    known = lambda c: True  # noqa: E731
    assert policy.choose(ranked, {}, known).label == "samples"
    assert policy.choose(ranked, {0: "stale"}, known).label == "instant"  # demoted behind healthy ones
    assert policy.choose(ranked, {0: "dead", 1: "failing"}, known).label == "energy"
    assert policy.choose(ranked, {0: "dead", 1: "failing", 2: "stuck"}, known).label == "instant"
    assert policy.choose(ranked, {0: "dead", 1: "dead", 2: "stuck"}, known) is None
    assert policy.choose(ranked, {}, lambda c: c.label == "energy").label == "energy"
    assert "fell back from samples dead" in policy.fallback_note(ranked[1], ranked, {0: "dead"})


def test_uncertainty_is_one_sigma_with_a_95_percent_interval():
    lo, hi = policy.interval95(100.0, 2.0)
    assert (lo, hi) == (pytest.approx(96.08), pytest.approx(103.92))
    assert "one standard deviation" in policy.UNCERTAINTY


def test_anchor_times_skip_the_first_reading_and_keep_to_the_trace():
    t = np.array([0, 10, 20, 30, 40, 50])
    v = np.array([5.0, 5.0, 6.0, 7.0, 7.0, 8.0])
    assert policy.anchor_times(t, v, 0, 100) == (20, 50)
    assert policy.anchor_times(t, v, 25, 45) is None  # one change only inside
    assert policy.anchor_times(np.array([0, 10]), np.array([1.0, 2.0]), 0, 100) is None


@pytest.fixture(scope="module")
def recording(tmp_path_factory, build_fake_nvml):
    """A 7.2 s recording from the fakes: a square-wave GPU (trace and counter) and RAPL."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FAKE_NVML_TRACE", "square:80,300,0.3")
        env.setenv("FAKE_NVML_GPUS", "1")
        folder = tmp_path_factory.mktemp("replay")
        powercap = PowercapWriter(build_powercap_tree(folder / "powercap"), None)
        powercap.start()
        rec = Recorder(
            powercap_root=str(folder / "powercap"),
            nvml_lib=str(build_fake_nvml()),
            msr_root="/x",
            perf_root="/x",
            periods_s={"nvml.energy": 1.0},  # the counter's changes span the 5 s a scale needs
        )
        writer = rec.sample_writer(str(folder / "samples.parquet"))
        rec.add_sink(writer)
        drain_for(rec, 7.2)
        writer.close()
        powercap.stop()
    return Recording(str(folder / "samples.parquet"))


def test_a_recording_carries_what_its_channels_mean(recording):
    assert recording.domains["nvml:0"].part == "gpu" and recording.domains["nvml:0"].additive
    assert recording.domains["rapl:package-0/core"].parent == "rapl:package-0"
    readings = {c.label: c.reading for c in recording.channels.values() if c.domain == "nvml:0"}
    assert readings["power_samples"] == INSTANT_POWER and readings["energy"] == COUNTER


def replay_online(recording, spans, marks, health=None):
    """Windows (Window objects) and mark table from the coordinator fed with the recording."""
    replay = ReplayRecorder(recording, chunk_s=0.1, health=health)
    coordinator = Coordinator(replay, HostTimer(), clock=replay.clock)
    windows = []
    for i, (a, b) in enumerate(spans):
        w = Window(i, f"w{i}", a, end_ns=b)
        coordinator.open_window(w)
        coordinator.close_window(w)
        windows.append(w)
    for i, (a, b) in enumerate(marks):
        coordinator.marks.append(Mark(i, "w0", None, a, b))
    while not replay.done:
        coordinator.process()
    coordinator.process(final=True)
    return coordinator, windows


def spans_and_marks(recording):
    t0 = int(recording.records["t_ns"].min())
    spans = [
        (t0 + int(0.3e9), t0 + int(6.9e9)),
        (t0 + int(1.05e9), t0 + int(1.35e9)),
        (t0 + int(4.0e9), t0 + int(6.0e9)),
    ]
    marks = [(t0 + int(s * 1e9), t0 + int((s + 0.013) * 1e9)) for s in np.arange(0.5, 6.0, 0.37)]
    return spans, marks


def assert_same_energies(recording, coordinator, windows, spans, marks, health=None):
    results = coordinator.results
    for w, (a, b) in zip(windows, spans):
        online = results.window_energy(w)
        offline = recording.offline_energies(a, b, health)
        assert set(online) == set(offline) and "nvml:0" in online and "rapl:package-0" in online
        for domain, e in online.items():
            assert e == pytest.approx(offline[domain].energy_j, rel=1e-6), (w.name, domain)
    inf = results.inferences()
    for i, (a, b) in enumerate(marks):
        offline = recording.offline_energies(a, b, health)
        for domain in ("nvml:0", "rapl:package-0"):
            got = inf[(inf["index"] == i) & (inf["domain"] == domain)]["energy_j"].iloc[0]
            assert got == pytest.approx(offline[domain].energy_j, rel=1e-6), (i, domain)
    return inf


def test_online_and_offline_paths_give_the_same_energies(recording):
    spans, marks = spans_and_marks(recording)
    coordinator, windows = replay_online(recording, spans, marks)
    trace = next(c for c in recording.channels.values() if c.name == "nvml:0.power_samples")
    scale = coordinator.scales()[trace.id]
    assert scale.factor != 1.0 and "scaled by the energy counter" in scale.how
    inf = assert_same_energies(recording, coordinator, windows, spans, marks)
    assert set(inf.loc[inf["domain"] == "nvml:0", "channel"]) == {"power_samples"}


def test_both_paths_fall_back_alike_from_a_stuck_trace(recording):
    spans, marks = spans_and_marks(recording)
    trace = next(c for c in recording.channels.values() if c.name == "nvml:0.power_samples")
    health = {trace.id: "stuck"}
    coordinator, windows = replay_online(recording, spans, marks, health)
    inf = assert_same_energies(recording, coordinator, windows, spans, marks, health)
    assert set(inf.loc[inf["domain"] == "nvml:0", "channel"]) == {"power_instant"}
    method = coordinator.results.windows().set_index(["window", "domain"]).loc[("w0", "nvml:0"), "method"]
    assert "fell back from power_samples stuck" in method


def test_nan_samples_cost_their_own_span_on_both_paths(recording):
    import copy

    spoiled = copy.copy(recording)
    spoiled.records = recording.records.copy()
    trace = next(c for c in recording.channels.values() if c.name == "nvml:0.power_samples")
    mine = np.flatnonzero(spoiled.records["channel"] == trace.id)
    spoiled.records["value"][mine[::25]] = np.nan  # every 25th sample is no number
    spans, marks = spans_and_marks(spoiled)
    coordinator, windows = replay_online(spoiled, spans, marks)
    inf = assert_same_energies(spoiled, coordinator, windows, spans, marks)
    assert np.isfinite(inf["energy_j"]).all()
    whole = coordinator.results.window_energy(windows[0])["nvml:0"]
    clean = recording.offline_energies(*spans[0])["nvml:0"].energy_j
    assert whole == pytest.approx(clean, rel=0.02)  # the trace still answers, near the truth
    assert "invalid samples dropped" in spoiled.offline_energies(*spans[0])["nvml:0"].method


def test_record_s_bounded_span_gives_the_offline_energies_of_its_samples(tmp_path, build_fake_nvml, monkeypatch):
    from aipm_fast.span import SpanEnergy

    monkeypatch.setenv("FAKE_NVML_TRACE", "square:80,300,0.3")
    powercap = PowercapWriter(build_powercap_tree(tmp_path / "powercap"), None).start()
    rec = Recorder(
        powercap_root=str(tmp_path / "powercap"),
        nvml_lib=str(build_fake_nvml()),
        msr_root="/x",
        perf_root="/x",
        keep_history=False,
    )
    writer = rec.sample_writer(str(tmp_path / "samples.parquet"))
    rec.add_sink(writer)
    span = SpanEnergy(rec)
    rec.start()
    span.start()
    for _ in range(20):
        time.sleep(0.1)
        span.update()
    provisional = span.energies()
    rec.stop()
    span.finish()
    writer.close()
    rec.close()
    powercap.stop()
    assert "up to the latest reading" in provisional["nvml:0"].method
    online = span.energies()
    offline = Recording(str(tmp_path / "samples.parquet")).offline_energies(rec.start_ns, rec.stop_ns)
    assert set(online) == set(offline)
    for domain, d in online.items():
        assert d.energy_j == pytest.approx(offline[domain].energy_j, rel=1e-6), domain
        # an edge's uncertainty is fixed when the edge resolves, from the readings around it then
        # (the offline path sees one more segment after it): alike, not to the digit
        assert d.uncertainty_j == pytest.approx(offline[domain].uncertainty_j, rel=0.1), domain
    assert not rec.records().size  # nothing kept per record
