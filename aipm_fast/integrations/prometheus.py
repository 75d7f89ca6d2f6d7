"""A Prometheus endpoint for live power and energy (needs the `prometheus` extra).

    exporter = PrometheusExporter(meter, port=9464).start()   # http://127.0.0.1:9464/metrics
    ...
    exporter.stop()

Nothing is pushed or polled in the background: each scrape reads the coordinator's per-channel
tracks (the last few seconds of readings and the running total) under its lock, through the
same energy policy and scales as the Meter's results, so a scrape costs one integration per
domain and the figures are those the meter itself uses.

Metrics, each labelled domain, host, rank, device, additive (plus any constant `labels` given):
  aipm_power_watts           mean power over the last `power_window_s` of readings
  aipm_energy_joules_total   energy since the meter started (a counter)
  aipm_step_energy_joules    energy of the last step (or inference) that was integrated
  aipm_steps_total           steps integrated so far (labels host, rank)
and per channel (labels channel, domain, host, rank):
  aipm_channel_state                      1 for the channel's state, 0 for the others (label
                                          state: live, stale, stuck, failing, dead, idle)
  aipm_channel_last_update_age_seconds    since its reading last changed (NaN: never read)
  aipm_channel_last_read_age_seconds      since its last successful read (NaN: never read)

When a source stalls or is lost, its series stay: the energy counter holds its last value, the
power gauge reads NaN (never the last power as if live; a sum over it reads NaN rather than
silently less) and aipm_channel_state says why; the change is logged once (logger
"aipm_fast.prometheus").

Some domains lie inside others (RAPL core inside its package; the sources say which): sum only
series with additive="true", e.g. `sum by (host) (aipm_power_watts{additive="true"})`.

The exporter has its own registry, so it never mixes with (or is mixed into) the process's
default one, and several meters can serve on several ports.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
from typing import Any

import numpy as np

from aipm_fast import policy
from aipm_fast.tracks import ChannelTrack, answering_track, latest

KEEP_NS = 10_000_000_000  # readings a recorder's view keeps: enough for any power window
#: the states of aipm_fast.recorder.classify, one series each in aipm_channel_state
STATES = ("live", "stale", "stuck", "failing", "dead", "idle")
log = logging.getLogger("aipm_fast.prometheus")


def channel_health(recorder, health: dict[int, str], now_ns: int) -> list[tuple[Any, str, float, float]]:
    """[(channel, state, seconds since its reading last changed, since its last successful
    read)] for every channel of a recorder, from the health it was last classified with."""
    out = []
    for cid, ch in recorder.channels.items():
        try:
            stats = recorder.channel_stats(cid)
        except Exception:  # a closed engine without kept statistics: unknown, not 0
            stats = {}
        changed, read = (stats.get(k) for k in ("last_change_ns", "last_read_ns"))
        out.append(
            (
                ch,
                health.get(cid, "idle"),
                (now_ns - changed) / 1e9 if changed else float("nan"),
                (now_ns - read) / 1e9 if read else float("nan"),
            )
        )
    return out


class _MeterView:
    """What the collector reads from a Meter: its coordinator's live figures (scaled as the
    Meter's results are) and its result object's marks."""

    def __init__(self, meter):
        self.coordinator = meter.coordinator
        self.results = meter.results
        self.domains = meter.domains
        self.recorder = meter.recorder

    def channels(self) -> list[tuple[Any, str, float, float]]:
        """Each channel's health as the coordinator classified it at its latest drain."""
        with self.coordinator.lock:
            health = dict(self.coordinator.health)
        return channel_health(self.recorder, health, self.coordinator.clock())

    def live(self, window_ns: int) -> dict[str, tuple[float, float]]:
        return self.coordinator.live(window_ns)

    def steps(self) -> tuple[int, dict[str, float]]:
        """(steps integrated so far, energy of the last one per domain, scaled)."""
        return self.results.n_marks, self.results.last_mark()

    def close(self) -> None:
        pass


class _RecorderView:
    """A bare Recorder has no coordinator: keep our own tracks, fed by every drain. The total
    then counts from the exporter's first drain, and nothing is scaled."""

    def __init__(self, recorder):
        self.recorder = recorder
        self.domains = recorder.discovery.domains
        self.lock = threading.Lock()
        self.ranked = policy.ranked_channels(recorder.channels.values())
        self.tracks = {c.id: ChannelTrack(c) for chs in self.ranked.values() for c in chs}
        recorder.add_sink(self._ingest)

    def _ingest(self, records: np.ndarray) -> None:
        with self.lock:
            for track in self.tracks.values():
                sel = records[records["channel"] == track.channel_id]
                track.append(sel["t_ns"], sel["value"])
                if track.last_ns is not None:
                    track.trim(track.last_ns - KEEP_NS)

    def live(self, window_ns: int) -> dict[str, tuple[float, float]]:
        with self.lock:
            out = {}
            for domain, ranked in self.ranked.items():
                tr = answering_track(ranked, self.tracks, {})
                out[domain] = latest(tr, window_ns) if tr is not None else (np.nan, np.nan)
            return out

    def steps(self):
        return 0, {}

    def channels(self) -> list[tuple[Any, str, float, float]]:
        return channel_health(self.recorder, self.recorder.health(), time.monotonic_ns())

    def close(self) -> None:
        remove = getattr(self.recorder, "remove_sink", None)
        if remove is not None:
            remove(self._ingest)


class _EnergyCollector:
    """A prometheus_client custom collector: builds the metric families at each scrape."""

    def __init__(self, exporter: PrometheusExporter):
        self.exporter = exporter
        self._reported: dict[str, float] = {}  # last energy per domain: a counter never goes down
        self._states: dict[str, str] = {}  # channel -> state at the previous scrape, to log changes

    def describe(self):
        return []  # no collect() at registration: the meter may not have read anything yet

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        ex = self.exporter
        names = ["domain", "host", "rank", "device", "additive", *ex.extra_labels]
        power = GaugeMetricFamily("aipm_power_watts", "Mean power over the last readings (W)", labels=names)
        energy = CounterMetricFamily("aipm_energy_joules", "Energy since the meter started (J)", labels=names)
        step = GaugeMetricFamily("aipm_step_energy_joules", "Energy of the last integrated step (J)", labels=names)
        steps = CounterMetricFamily("aipm_steps", "Steps integrated so far", labels=["host", "rank", *ex.extra_labels])
        view = ex.view
        health = self._channel_families(view, ex)
        n_steps, last_step = view.steps()
        for domain, (total_j, power_w) in view.live(ex.power_window_ns).items():
            meaning = view.domains.get(domain)
            values = [
                domain,
                ex.host,
                ex.rank,
                meaning.device if meaning else "",
                "true" if meaning is not None and meaning.additive else "false",
                *ex.extra_labels.values(),
            ]
            power.add_metric(values, power_w)  # NaN once stale: a gap, never the last value as live
            if np.isfinite(total_j):
                # the counter-derived scale settles after a few seconds; a small step down
                # would read as a counter reset to Prometheus, so hold the highest value
                self._reported[domain] = max(total_j, self._reported.get(domain, 0.0))
            if domain in self._reported:  # a source lost keeps its last total: no series vanishes
                energy.add_metric(values, self._reported[domain])
            if np.isfinite(last_step.get(domain, np.nan)):
                step.add_metric(values, last_step[domain])
        steps.add_metric([ex.host, ex.rank, *ex.extra_labels.values()], n_steps)
        return [power, energy, step, steps, *health]

    def _channel_families(self, view, ex):
        from prometheus_client.core import GaugeMetricFamily

        names = ["channel", "domain", "host", "rank", *ex.extra_labels]
        state = GaugeMetricFamily(
            "aipm_channel_state", "1 for the channel's state (label state), 0 for the others", labels=[*names, "state"]
        )
        age = GaugeMetricFamily(
            "aipm_channel_last_update_age_seconds", "Seconds since the channel's reading last changed", labels=names
        )
        read_age = GaugeMetricFamily(
            "aipm_channel_last_read_age_seconds", "Seconds since the channel's last successful read", labels=names
        )
        for ch, now, age_s, read_s in view.channels():
            values = [ch.name, ch.domain, ex.host, ex.rank, *ex.extra_labels.values()]
            for s in STATES:
                state.add_metric([*values, s], 1.0 if s == now else 0.0)
            age.add_metric(values, age_s)
            read_age.add_metric(values, read_s)
            before = self._states.get(ch.name)
            if before is not None and before != now:
                if now == "live":
                    log.warning("aipm-fast: channel %s (%s) is live again", ch.name, ch.domain)
                else:
                    log.warning(
                        "aipm-fast: channel %s (%s) is %s (was %s): its power is served as NaN, "
                        "its energy holds its last value",
                        ch.name,
                        ch.domain,
                        now,
                        before,
                    )
            self._states[ch.name] = now
        return [state, age, read_age]


class PrometheusExporter:
    """Serves a Meter's (or a Recorder's) power and energy on http://addr:port/metrics.

    `port=0` lets the system choose a free port; `.port` tells which once started. The default
    address is loopback: pass addr="0.0.0.0" for Prometheus on another machine to reach it.
    `labels` adds constant labels (e.g. {"job_id": "..."}); host and rank default to the
    hostname and $RANK (0 outside a distributed launch) and may be overridden there."""

    def __init__(
        self,
        meter_or_recorder,
        port: int = 9464,
        addr: str = "127.0.0.1",
        labels: dict | None = None,
        power_window_s: float = 1.0,
    ):
        from prometheus_client import CollectorRegistry

        labels = dict(labels or {})
        self.host = str(labels.pop("host", socket.gethostname()))
        self.rank = str(labels.pop("rank", os.environ.get("RANK", "0")))
        self.extra_labels = {str(k): str(v) for k, v in labels.items()}
        self.port, self.addr = port, addr
        self.power_window_ns = int(power_window_s * 1e9)
        is_meter = hasattr(meter_or_recorder, "coordinator")
        self.view = _MeterView(meter_or_recorder) if is_meter else _RecorderView(meter_or_recorder)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_EnergyCollector(self))
        self._server: Any = None
        self._thread: Any = None

    def start(self) -> PrometheusExporter:
        from prometheus_client import start_http_server

        try:
            started = start_http_server(self.port, addr=self.addr, registry=self.registry)
        except OSError as exc:
            fix = {
                errno.EADDRINUSE: "another process (another exporter?) holds it: choose another port (0: any free one)",
                errno.EACCES: "ports below 1024 need privileges: choose a port above 1023",
                errno.EADDRNOTAVAIL: "that address is not one of this machine's",
            }.get(exc.errno or 0, "check the address and port")
            raise OSError(
                exc.errno, f"Prometheus exporter cannot listen on {self.addr}:{self.port}: {exc.strerror}; {fix}"
            ) from None
        if started is not None:  # prometheus_client >= 0.17 returns (server, thread)
            self._server, self._thread = started
            self.port = self._server.server_port
        return self

    def stop(self) -> None:
        """Stop serving (with prometheus_client < 0.17 the server lives until the process ends)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(5.0)
            self._server = self._thread = None
        self.view.close()

    @property
    def url(self) -> str:
        return f"http://{self.addr}:{self.port}/metrics"

    def __enter__(self) -> PrometheusExporter:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(
    port: int = 9464,
    addr: str = "127.0.0.1",
    duration_s: float | None = None,
    labels: dict | None = None,
    on_ready=None,
    **engine_options,
) -> None:
    """Meter the whole machine and serve it until interrupted (Ctrl-C) or for `duration_s`.
    `engine_options` are the Meter's (powercap_root, nvml_lib, gpus, ...); `on_ready(exporter)`
    is called once serving, e.g. to print the address."""
    from aipm_fast.meter import Meter

    meter = Meter(cuda=False, **engine_options)  # no marks to time: no CUDA context
    with meter, PrometheusExporter(meter, port, addr, labels) as exporter:
        if on_ready is not None:
            on_ready(exporter)
        deadline = None if duration_s is None else time.monotonic() + duration_s
        try:
            while deadline is None or time.monotonic() < deadline:
                time.sleep(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
        except KeyboardInterrupt:
            pass
