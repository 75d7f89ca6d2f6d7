"""Recorder: start the sampler, drain it, and turn what it read into energy per domain.

The later layers (the asyncio coordinator, the Meter, bench) build on this: it owns the engine,
the discovered channels, the drained history and the health of every channel.
"""

from __future__ import annotations

import dataclasses
import os
import weakref
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from aipm_fast import counters, offline
from aipm_fast._native import RECORD_DTYPE, Engine, now_ns
from aipm_fast.config import BACKOFF_MAX_S, EngineConfig
from aipm_fast.offline import DomainEnergy
from aipm_fast.policy import DEFAULT_MAX_POWER_W
from aipm_fast.producers import FIRST_ID
from aipm_fast.sensor.store import responses_for
from aipm_fast.sources import Channel, discover_all
from aipm_fast.sources.base import COUNTER

STUCK_AFTER_S = 3.0
_RECORDERS: weakref.WeakSet = weakref.WeakSet()  # every Recorder of this process, for the fork hook


def _after_fork_in_child() -> None:
    """The child of a fork has the parent's engine without its sampler thread, and its mutex
    possibly held: the child's copy is forgotten (never stopped, drained or freed there)."""
    for rec in list(_RECORDERS):
        rec.forked = True
        rec.engine.abandon()
        rec._sinks = []
        rec.producers = {}


os.register_at_fork(after_in_child=_after_fork_in_child)


@dataclass
class ChannelStatus:
    name: str
    domain: str
    quantity: str
    source: str
    status: str  # live, stale, stuck, failing, dead
    reads: int
    errors: int
    changes: int
    read_cost_us: float | None
    last_error: str = ""
    detail: str = ""
    events: str = ""  # what the counter showed: resets bridged, glitches dropped, gaps unwrapped


class Recorder:
    """Reads every channel that works here; `energy()` integrates them per domain."""

    def __init__(
        self,
        config: EngineConfig | None = None,
        *,
        lateness: bool = False,
        stuck_after_s: float = STUCK_AFTER_S,
        keep_history: bool = True,
        **options,
    ):
        self.stuck_after_s = stuck_after_s
        # A long-running Meter hands every drain to its coordinator and keeps nothing here,
        # so that memory stays bounded; recordings (record, probe, bench runs) keep it all.
        self.keep_history = keep_history
        self.config = config if config is not None else EngineConfig.from_env(**options)
        self.engine = Engine(self.config.ring_capacity_log2)
        self.discovery = discover_all(self.engine, self.config)
        self.channels: dict[int, Channel] = {c.id: c for c in self.discovery.channels}
        self.producers = {p.channel_id: p for p in self.discovery.producers}
        # measured sensor responses (aipm-fast calibrate) by channel id: where a power trace's
        # samples belong in time (policy.build_curve, attribution.py)
        self.sensor_calibrations, notes = responses_for(
            self.discovery.channels, self.discovery.domains, self.config.calibration_file
        )
        self.discovery.notes.extend(notes)
        self.lateness_channel = self.engine.add_lateness_channel() if lateness else None
        if self.config.backoff_quiet_s is not None:
            for ch in self.channels.values():
                if ch.id < FIRST_ID:  # a C channel; producers read at their own pace
                    self.engine.set_backoff(ch.id, self.config.backoff_quiet_s, backoff_interval_s(ch))
        self._chunks: list[np.ndarray] = []
        self.curve_errors: dict[str, str] = {}
        self.counter_events: dict[str, str] = {}  # channel name -> its counter's events, from energy()
        self._closed_stats: tuple[dict[int, dict], dict, list[ChannelStatus]] | None = None
        self._sinks: list = []
        self.start_ns: int | None = None
        self.stop_ns: int | None = None
        self.forked = False  # a forked child's copy: inert
        _RECORDERS.add(self)

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> Recorder:
        self.engine.start()  # returns once every C channel has a first reading
        for p in self.producers.values():
            p.start()
        self.start_ns = now_ns()
        return self

    def stop(self) -> None:
        if self.forked:
            return
        if self.engine.running:
            self.stop_ns = now_ns()
            self.engine.stop()
            for p in self.producers.values():
                p.stop()
        self.drain()

    def close(self) -> None:
        """Stop and free the engine (its thread, fds and NVML handle). What was measured stays
        readable: channel and sampler statistics are kept as they were at the end."""
        if self._closed_stats is not None or self.forked:
            return
        self.stop()
        final_status = self.status()
        self._closed_stats = (
            {cid: self.channel_stats(cid) for cid in self.channels},
            self.engine.sampler_stats(),
            final_status,
        )
        self.engine.close()

    def channel_stats(self, cid: int) -> dict:
        if self._closed_stats:
            return self._closed_stats[0][cid]
        if cid in self.producers:
            return self.producers[cid].stats()
        return self.engine.channel_stats(cid)

    def sampler_stats(self) -> dict:
        return self._closed_stats[1] if self._closed_stats else self.engine.sampler_stats()

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_sink(self, sink) -> None:
        """sink(records) is called with every drained RECORD_DTYPE array (e.g. a file writer)."""
        self._sinks.append(sink)

    def remove_sink(self, sink) -> None:
        self._sinks.remove(sink)

    def drain(self) -> np.ndarray:
        if self.forked:
            return np.empty(0, RECORD_DTYPE)
        records = self.engine.drain()
        if self.producers:
            records = np.concatenate([records, *(p.drain() for p in self.producers.values())])
        if records.size:
            if self.keep_history:
                self._chunks.append(records)
            for sink in self._sinks:
                sink(records)
        return records

    # -- what was read -------------------------------------------------------------------
    def records(self) -> np.ndarray:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0] if self._chunks else np.empty(0, RECORD_DTYPE)

    def channel_names(self) -> np.ndarray:
        """Names indexed by channel id (the lateness channel, if any, included)."""
        n = 1 + max([*self.channels, self.lateness_channel or 0, -1])
        names = np.array([f"channel-{i}" for i in range(n)], dtype=object)
        for cid, ch in self.channels.items():
            names[cid] = ch.name
        if self.lateness_channel is not None:
            names[self.lateness_channel] = "sampler.lateness_ns"
        return names

    def sample_metadata(self) -> dict:
        """What every channel and domain means, as stored beside recorded samples."""
        return {
            "channels": [c.to_dict() for c in self.channels.values()],
            "domains": {d: m.to_dict() for d, m in self.discovery.domains.items()},
        }

    def sample_writer(self, path: str):
        """A ParquetSampleWriter for this recorder's records, carrying their meaning."""
        from aipm_fast.storage import ParquetSampleWriter

        return ParquetSampleWriter(path, self.channel_names(), self.sample_metadata())

    def samples_frame(self) -> pd.DataFrame:
        recs = self.records()
        names = self.channel_names()
        return pd.DataFrame(
            {
                "t_ns": recs["t_ns"],
                "channel": pd.Categorical.from_codes(recs["channel"].astype(np.int64), categories=pd.Index(names)),
                "value": recs["value"],
                "flags": recs["flags"],
            }
        )

    def series(self, channel_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(t_ns, value) of one channel, in time order."""
        recs = self.records()
        sel = recs[recs["channel"] == channel_id]
        order = np.argsort(sel["t_ns"], kind="stable")
        return sel["t_ns"][order], sel["value"][order]

    # -- health --------------------------------------------------------------------------
    def status(self) -> list[ChannelStatus]:
        if self._closed_stats:  # as at close, with what energy() found in the counters since
            return [
                dataclasses.replace(s, events=self.counter_events.get(s.name, s.events)) for s in self._closed_stats[2]
            ]
        end = self.stop_ns or now_ns()
        out = []
        for cid, ch in self.channels.items():
            s = self.channel_stats(cid)
            out.append(
                ChannelStatus(
                    ch.name,
                    ch.domain,
                    ch.quantity,
                    ch.source,
                    classify(ch, s, self.start_ns, end, self.stuck_after_s),
                    s["reads"],
                    s["errors"],
                    s["changes"],
                    s["read_ns_total"] / s["reads"] / 1e3 if s["reads"] else None,
                    self._error_text(ch, s),
                    self._detail(ch),
                    self.counter_events.get(ch.name, ""),
                )
            )
        return out

    def _detail(self, ch: Channel) -> str:
        note = self.producers[ch.id].note if ch.id in self.producers else ""
        return f"{ch.detail}; {note}" if note else ch.detail

    def _error_text(self, ch: Channel, s: dict) -> str:
        if not s["errors"]:
            return ""
        if ch.source == "nvml" and s["last_error_kind"] == -6:
            return f"{self.engine.nvml_error_string(s['last_error'])} (NVML error {s['last_error']})"
        if ch.id in self.producers and self.producers[ch.id].last_error_text:
            return self.producers[ch.id].last_error_text
        if s["last_error_kind"] == -4:
            return "the file did not hold a number"
        if s["last_error_kind"] == -9:
            return "the file was removed"
        return os.strerror(s["last_error"]) if s["last_error"] else f"error {s['last_error_kind']}"

    # -- energy --------------------------------------------------------------------------
    def health(self) -> dict[int, str]:
        """channel id -> its status (live, stale, stuck, failing, dead, idle); cheap enough for
        every drain."""
        end = self.stop_ns or now_ns()
        return {
            cid: classify(ch, self.channel_stats(cid), self.start_ns, end, self.stuck_after_s)
            for cid, ch in self.channels.items()
        }

    def energy(self, a_ns: int | None = None, b_ns: int | None = None) -> dict[str, DomainEnergy]:
        """Energy of every domain over [a, b] (default: the whole recording), by the energy policy."""
        a = (self.start_ns or 0) if a_ns is None else a_ns
        b = (self.stop_ns or now_ns()) if b_ns is None else b_ns
        responses = {cid: r for cid, (r, _entry) in self.sensor_calibrations.items()}
        curves = offline.ChannelCurves(self.channels.values(), self.series, responses)
        self.curve_errors = {self.channels[cid].name: why for cid, why in curves.errors.items()}
        self.counter_events = {
            self.channels[cid].name: text
            for cid, c in curves.curves.items()
            if (text := counters.summary(list(c.events)))
        }
        return offline.domain_energies(curves, self.health(), a, b)

    def summary(self, energies: dict[str, DomainEnergy] | None = None) -> dict:
        """Everything about the recording: per domain its energy (`energies` where the caller
        integrated them itself, as `record` does in bounded memory; else from the history kept),
        the channels' health, the sampler's statistics, the problems."""
        duration = ((self.stop_ns or now_ns()) - self.start_ns) / 1e9 if self.start_ns else 0.0
        if energies is None:
            energies = self.energy() if self.keep_history else {}
        return {
            "duration_s": duration,
            "start_ns": self.start_ns,
            "stop_ns": self.stop_ns,
            "domains": {d: asdict(e) for d, e in energies.items()},
            "devices": self.discovery.devices,
            "channels": [asdict(s) for s in self.status()],
            "sampler": self.sampler_stats(),
            "problems": [asdict(p) for p in self.discovery.problems],
            "notes": self.discovery.notes,
        }


def backoff_interval_s(ch: Channel) -> float:
    """The longest interval a quiet channel is read at (config.BACKOFF_MAX_S), never below its
    period, and for a counter that wraps short enough that no whole wrap can pass between two
    reads at its largest plausible power (half its range): reading less often then costs
    only time resolution, never energy."""
    longest = BACKOFF_MAX_S
    if ch.reading == COUNTER and ch.wrap is not None:
        longest = min(longest, ch.wrap / (2 * (ch.max_power_w or DEFAULT_MAX_POWER_W)))
    return max(ch.period_s, longest)


def classify(ch: Channel, s: dict, start_ns: int | None, end_ns: int, stuck_after_s: float = STUCK_AFTER_S) -> str:
    """live; stale (a reading that stopped changing) or stuck (a counter that stopped
    advancing: never integrated as 0 W); failing (some reads failed); dead (none worked)."""
    if s["reads"] == 0:
        return "dead" if s["errors"] else "idle"
    if s["errors"]:
        return "failing"
    ran_s = (end_ns - start_ns) / 1e9 if start_ns else 0.0
    quiet_s = (end_ns - s["last_change_ns"]) / 1e9
    if ran_s > stuck_after_s and quiet_s > stuck_after_s:
        return "stuck" if ch.reading == COUNTER else "stale"
    return "live"
