"""The Prometheus exporter, scraped over loopback, against the meter's own figures and the fakes'."""

import threading
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from aipm_fast import Meter  # noqa: E402
from aipm_fast.integrations.prometheus import PrometheusExporter, serve  # noqa: E402

OFF = {"msr_root": "/nonexistent", "perf_root": "/nonexistent"}


@pytest.fixture
def hw(fake_powercap, fake_nvml_lib, monkeypatch):
    monkeypatch.setenv("FAKE_NVML_TRACE", "const:100")
    monkeypatch.setenv("FAKE_NVML_GPUS", "1")
    monkeypatch.delenv("RANK", raising=False)
    root, writer = fake_powercap()
    # the sample buffer read 4 times a second and the counter once (defaults: once, every 5 s), so
    # that live power is there early and every GPU channel has been read again when one is lost
    periods = {"nvml.power_samples": 0.25, "nvml.energy": 1.0}
    return {"powercap_root": str(root), "nvml_lib": str(fake_nvml_lib), "periods_s": periods, **OFF}, writer


def scrape(port: int) -> dict:
    """{(sample name, domain or None): (value, labels)} from one scrape of 127.0.0.1:port."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, s.labels.get("domain"))] = (s.value, s.labels)
    return samples


def cumulative_j(meter, domain: str) -> float:
    """The meter's own running total for a domain, at its latest reading."""
    c = meter.coordinator
    with c.lock:
        track = c.primary(domain)
        return float(track.cumulative(np.array([track.last_ns]))[0]) * meter.results.scale(track.channel_id).factor


def test_scraped_power_energy_and_steps_match_the_meter(hw):
    options, writer = hw
    with Meter(**options, cuda=False) as m, PrometheusExporter(m, port=0, labels={"job_id": "t1"}) as exporter:
        assert exporter.port > 0
        with m.window("train"):
            for _ in range(5):
                with m.step():
                    time.sleep(0.05)
        time.sleep(1.2)  # a full power window of readings after the start
        m.flush()
        before = {d: cumulative_j(m, d) for d in ("nvml:0", "rapl:package-0")}
        live = scrape(exporter.port)
        after = {d: cumulative_j(m, d) for d in ("nvml:0", "rapl:package-0")}
        again = scrape(exporter.port)

    power, labels = live[("aipm_power_watts", "nvml:0")]
    assert power == pytest.approx(100.0, rel=0.03)
    assert live[("aipm_power_watts", "rapl:package-0")][0] == pytest.approx(writer.power_w("intel-rapl:0"), rel=0.03)
    assert set(labels) == {"domain", "host", "rank", "device", "additive", "job_id"}
    assert labels["rank"] == "0" and labels["job_id"] == "t1" and labels["host"] and labels["device"]
    assert labels["additive"] == "true" and live[("aipm_power_watts", "rapl:package-0/core")][1]["additive"] == "false"
    for domain in before:
        energy = live[("aipm_energy_joules_total", domain)][0]
        assert before[domain] * 0.99 <= energy <= after[domain] * 1.01
        assert again[("aipm_energy_joules_total", domain)][0] >= energy  # a counter
    # the last step: what the meter integrated for it
    inf = m.inferences()
    last = inf[inf["index"] == inf["index"].max()].set_index("domain")
    assert live[("aipm_steps_total", None)][0] == 5
    assert live[("aipm_step_energy_joules", "nvml:0")][0] == pytest.approx(last.loc["nvml:0", "energy_j"], rel=0.01)
    assert live[("aipm_step_energy_joules", "nvml:0")][0] == pytest.approx(100 * 0.05, rel=0.1)


def test_energy_counter_after_stop_is_the_meter_s_total_and_the_truth(hw):
    options, writer = hw
    m = Meter(**options, cuda=False).start()
    exporter = PrometheusExporter(m, port=0).start()
    try:
        time.sleep(1.0)
        m.stop()  # readings frozen: the scrape and the meter see the same data
        got = scrape(exporter.port)
    finally:
        exporter.stop()
        m.stop()
    track = m.coordinator.primary("rapl:package-0")
    energy = got[("aipm_energy_joules_total", "rapl:package-0")][0]
    assert energy == pytest.approx(cumulative_j(m, "rapl:package-0"), rel=1e-9)
    assert not track.trimmed  # so the total counts from the first reading kept
    assert energy == pytest.approx(writer.energy_j("intel-rapl:0", int(track.t[0]), track.last_ns), rel=0.03)
    gpu = got[("aipm_energy_joules_total", "nvml:0")][0]
    assert gpu == pytest.approx(cumulative_j(m, "nvml:0"), rel=1e-9)
    gpu_track = m.coordinator.primary("nvml:0")
    assert gpu == pytest.approx(100 * (gpu_track.last_ns - gpu_track.t[0]) / 1e9, rel=0.03)


def test_exporter_stops_serving(hw):
    options, _ = hw
    with Meter(**options, cuda=False) as m:
        exporter = PrometheusExporter(m, port=0).start()
        port = exporter.port
        assert ("aipm_steps_total", None) in scrape(port)
        exporter.stop()
        with pytest.raises(OSError):
            scrape(port)


def test_a_bare_recorder_can_be_served(hw):
    from aipm_fast.recorder import Recorder

    options, writer = hw
    rec = Recorder(keep_history=False, **options).start()
    exporter = PrometheusExporter(rec, port=0).start()
    try:
        for _ in range(12):  # a recorder is drained by its owner
            time.sleep(0.1)
            rec.drain()
        got = scrape(exporter.port)
    finally:
        exporter.stop()
        rec.close()
    assert got[("aipm_power_watts", "rapl:package-0")][0] == pytest.approx(writer.power_w("intel-rapl:0"), rel=0.05)
    assert got[("aipm_energy_joules_total", "nvml:0")][0] == pytest.approx(100 * 1.1, rel=0.15)


def test_serve_meters_the_whole_machine(hw):
    options, _ = hw
    ready = threading.Event()
    exporters = []

    def on_ready(exporter):
        exporters.append(exporter)
        ready.set()

    thread = threading.Thread(target=serve, kwargs=dict(port=0, duration_s=2.0, on_ready=on_ready, **options))
    thread.start()
    try:
        assert ready.wait(10)
        time.sleep(0.5)
        got = scrape(exporters[0].port)
        assert got[("aipm_power_watts", "nvml:0")][0] == pytest.approx(100, rel=0.05)
        assert ("aipm_energy_joules_total", "rapl:package-0") in got
    finally:
        thread.join(10)
    assert not thread.is_alive()


def scrape_all(port: int) -> list:
    """[(sample name, labels, value)] of one scrape, every series (several per domain)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def pick(samples: list, name: str, domain: str) -> list[float]:
    return [v for n, lb, v in samples if n == name and lb["domain"] == domain]


def test_a_lost_gpu_keeps_its_series_with_nan_power_health_says_why_and_a_stopped_meter_is_not_live(
    hw, monkeypatch, caplog
):
    options, _ = hw
    monkeypatch.setenv("FAKE_NVML_LOSE_GPU_AFTER_S", "1.0")
    m = Meter(**options, cuda=False).start()
    exporter = PrometheusExporter(m, port=0).start()
    try:
        time.sleep(0.6)
        live = scrape_all(exporter.port)
        assert pick(live, "aipm_power_watts", "nvml:0")[0] == pytest.approx(100.0, rel=0.05)
        states = {(lb["channel"], lb["state"]): v for n, lb, v in live if n == "aipm_channel_state"}
        gpu_channels = sorted({c for c, _ in states if c.startswith("nvml")})
        assert gpu_channels and all(states[(c, "live")] == 1 for c in gpu_channels)
        assert all(
            sum(states[(c, s)] for s in ("live", "stale", "stuck", "failing", "dead", "idle")) == 1 for c, _ in states
        )
        ages = {lb["channel"]: v for n, lb, v in live if n == "aipm_channel_last_read_age_seconds"}
        assert all(0 <= ages[c] < 0.7 for c in gpu_channels)  # every one read since the start

        time.sleep(3.0)  # the GPU is lost at 1 s: its reads fail from then on
        with caplog.at_level("WARNING", logger="aipm_fast.prometheus"):
            lost = scrape_all(exporter.port)
        energy = pick(lost, "aipm_energy_joules_total", "nvml:0")
        assert len(energy) == 1 and energy[0] >= pick(live, "aipm_energy_joules_total", "nvml:0")[0]  # held
        power = pick(lost, "aipm_power_watts", "nvml:0")
        assert len(power) == 1 and np.isnan(power[0])
        assert np.isfinite(pick(lost, "aipm_power_watts", "rapl:package-0")[0])  # the rest goes on
        now = {lb["channel"]: lb["state"] for n, lb, v in lost if n == "aipm_channel_state" and v == 1}
        assert all(now[c] in ("failing", "dead") for c in gpu_channels), now
        assert all(now[c] == "live" for c in now if c.startswith("rapl")), now
        ages = {lb["channel"]: v for n, lb, v in lost if n == "aipm_channel_last_read_age_seconds"}
        assert all(ages[c] > 2.0 for c in gpu_channels), ages  # none read since the loss at 1 s
        logged = [r.getMessage() for r in caplog.records if r.name == "aipm_fast.prometheus"]
        assert any("nvml" in text and "NaN" in text for text in logged), logged

        m.stop()
        stopped = scrape(exporter.port)
        health = [(c["name"], c["status"]) for c in m.report()["recording"]["channels"]]
        assert np.isnan(stopped[("aipm_power_watts", "rapl:package-0")][0]), health
        assert stopped.get(("aipm_energy_joules_total", "rapl:package-0"), (0,))[0] > 0, (health, stopped)
    finally:
        exporter.stop()
        m.stop()


def test_a_stalled_counter_is_served_as_stuck_with_its_energy_held(hw):
    options, writer = hw
    m = Meter(**options, cuda=False, stuck_after_s=1.0).start()
    exporter = PrometheusExporter(m, port=0).start()
    try:
        time.sleep(0.5)
        writer.freeze("intel-rapl:0")  # the package's counter stops advancing
        before = scrape_all(exporter.port)
        time.sleep(2.0)
        after = scrape_all(exporter.port)
    finally:
        writer.resume("intel-rapl:0")
        exporter.stop()
        m.stop()

    held = pick(after, "aipm_energy_joules_total", "rapl:package-0")
    assert len(held) == 1 and held[0] >= pick(before, "aipm_energy_joules_total", "rapl:package-0")[0]
    assert np.isnan(pick(after, "aipm_power_watts", "rapl:package-0")[0])
    state = [
        lb["state"] for n, lb, v in after if n == "aipm_channel_state" and v == 1 and lb["domain"] == "rapl:package-0"
    ]
    assert state == ["stuck"]
    assert np.isfinite(pick(after, "aipm_power_watts", "nvml:0")[0])  # the others go on


def test_a_busy_port_is_a_clean_error_naming_address_and_port(hw):
    import errno
    import socket

    options, _ = hw
    with socket.socket() as busy, Meter(**options, cuda=False) as m:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match=rf"cannot listen on 127.0.0.1:{port}: .*choose another port") as caught:
            PrometheusExporter(m, port=port).start()
    assert caught.value.errno == errno.EADDRINUSE
