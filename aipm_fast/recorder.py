"""Recorder: start the sampler, drain it, and turn what it read into energy per domain.

The later layers (the asyncio coordinator, the Meter, bench) build on this: it owns the engine,
the discovered channels, the drained history and the health of every channel.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from aipm_fast import energy
from aipm_fast._native import RECORD_DTYPE, Engine, now_ns
from aipm_fast.config import EngineConfig
from aipm_fast.sources import Channel, discover_all

STUCK_AFTER_S = 3.0


@dataclass
class ChannelStatus:
    name: str
    domain: str
    quantity: str
    source: str
    status: str               # live, stale, stuck, failing, dead
    reads: int
    errors: int
    changes: int
    read_cost_us: float | None
    last_error: str = ""
    detail: str = ""


@dataclass
class DomainEnergy:
    energy_j: float | None
    mean_power_w: float | None
    method: str
    alternatives: dict[str, float] = field(default_factory=dict)


class Recorder:
    """Reads every channel that works here; `energy()` integrates them per domain."""

    def __init__(self, config: EngineConfig | None = None, *, lateness: bool = False,
                 stuck_after_s: float = STUCK_AFTER_S, keep_history: bool = True, **options):
        self.stuck_after_s = stuck_after_s
        # A long-running Meter hands every drain to its coordinator and keeps nothing here,
        # so that memory stays bounded; recordings (record, probe, bench runs) keep it all.
        self.keep_history = keep_history
        self.config = config if config is not None else EngineConfig.from_env(**options)
        self.engine = Engine(self.config.ring_capacity_log2)
        self.discovery = discover_all(self.engine, self.config)
        self.channels: dict[int, Channel] = {c.id: c for c in self.discovery.channels}
        self.lateness_channel = self.engine.add_lateness_channel() if lateness else None
        self._chunks: list[np.ndarray] = []
        self.curve_errors: dict[str, str] = {}
        self._closed_stats = None
        self._sinks = []
        self.start_ns: int | None = None
        self.stop_ns: int | None = None

    # -- life cycle ----------------------------------------------------------------------
    def start(self) -> "Recorder":
        self.engine.start()     # returns once every channel has a first reading
        self.start_ns = now_ns()
        return self

    def stop(self) -> None:
        if self.engine.running:
            self.stop_ns = now_ns()
            self.engine.stop()
        self.drain()

    def close(self) -> None:
        """Stop and free the engine (its thread, fds and NVML handle). What was measured stays
        readable: channel and sampler statistics are kept as they were at the end."""
        if self._closed_stats is not None:
            return
        self.stop()
        final_status = self.status()
        self._closed_stats = ({cid: self.engine.channel_stats(cid) for cid in self.channels},
                              self.engine.sampler_stats(), final_status)
        self.engine.close()

    def channel_stats(self, cid: int) -> dict:
        return self._closed_stats[0][cid] if self._closed_stats else self.engine.channel_stats(cid)

    def sampler_stats(self) -> dict:
        return self._closed_stats[1] if self._closed_stats else self.engine.sampler_stats()

    def __enter__(self) -> "Recorder":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def add_sink(self, sink) -> None:
        """sink(records) is called with every drained RECORD_DTYPE array (e.g. a file writer)."""
        self._sinks.append(sink)

    def remove_sink(self, sink) -> None:
        self._sinks.remove(sink)

    def drain(self) -> np.ndarray:
        records = self.engine.drain()
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

    def samples_frame(self) -> pd.DataFrame:
        recs = self.records()
        names = self.channel_names()
        return pd.DataFrame({
            "t_ns": recs["t_ns"],
            "channel": pd.Categorical.from_codes(recs["channel"].astype(np.int64), categories=list(names)),
            "value": recs["value"],
            "flags": recs["flags"],
        })

    def series(self, channel_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(t_ns, value) of one channel, in time order."""
        recs = self.records()
        sel = recs[recs["channel"] == channel_id]
        order = np.argsort(sel["t_ns"], kind="stable")
        return sel["t_ns"][order], sel["value"][order]

    # -- health --------------------------------------------------------------------------
    def status(self) -> list[ChannelStatus]:
        if self._closed_stats:
            return self._closed_stats[2]
        end = self.stop_ns or now_ns()
        out = []
        for cid, ch in self.channels.items():
            s = self.channel_stats(cid)
            out.append(ChannelStatus(
                ch.name, ch.domain, ch.quantity, ch.source,
                classify(ch, s, self.start_ns, end, self.stuck_after_s),
                s["reads"], s["errors"], s["changes"],
                s["read_ns_total"] / s["reads"] / 1e3 if s["reads"] else None,
                self._error_text(ch, s), ch.detail))
        return out

    def _error_text(self, ch: Channel, s: dict) -> str:
        if not s["errors"]:
            return ""
        if ch.source == "nvml" and s["last_error_kind"] == -6:
            return f"{self.engine.nvml_error_string(s['last_error'])} (NVML error {s['last_error']})"
        if s["last_error_kind"] == -4:
            return "the file did not hold a number"
        if s["last_error_kind"] == -9:
            return "the file was removed"
        return os.strerror(s["last_error"]) if s["last_error"] else f"error {s['last_error_kind']}"

    # -- energy --------------------------------------------------------------------------
    def curves(self) -> dict[str, dict[str, energy.EnergyCurve]]:
        """domain -> {channel kind -> cumulative energy curve} for every channel with data."""
        out: dict[str, dict[str, energy.EnergyCurve]] = {}
        for cid, ch in self.channels.items():
            if ch.quantity not in ("energy", "power"):
                continue
            t, v = self.series(cid)
            if t.size < 2:
                continue
            kind = ch.name.rsplit(".", 1)[1]
            try:
                if ch.quantity == "energy":
                    curve = energy.counter_curve(t, v, ch.wrap)
                else:
                    curve = energy.power_curve(t, v)
            except ValueError as exc:   # e.g. a counter that never advanced: reported by status()
                self.curve_errors[ch.name] = str(exc)
                continue
            out.setdefault(ch.domain, {})[kind] = curve
        return out

    def energy(self, a_ns: int | None = None, b_ns: int | None = None) -> dict[str, DomainEnergy]:
        """Energy of every domain over [a, b] (default: the whole recording)."""
        a = self.start_ns if a_ns is None else a_ns
        b = (self.stop_ns or now_ns()) if b_ns is None else b_ns
        statuses = {st.name: st for st in self.status()}
        result: dict[str, DomainEnergy] = {}
        domains = sorted({ch.domain for ch in self.channels.values() if ch.quantity in ("energy", "power")})
        curves = self.curves()
        for domain in domains:
            result[domain] = domain_energy(domain, curves.get(domain, {}), statuses, a, b, self.curve_errors)
        return result

    def summary(self) -> dict:
        duration = ((self.stop_ns or now_ns()) - self.start_ns) / 1e9 if self.start_ns else 0.0
        return {
            "duration_s": duration,
            "domains": {d: asdict(e) for d, e in self.energy().items()} if self.keep_history else {},
            "devices": self.discovery.devices,
            "channels": [asdict(s) for s in self.status()],
            "sampler": self.sampler_stats(),
            "problems": [asdict(p) for p in self.discovery.problems],
            "notes": self.discovery.notes,
        }


def classify(ch: Channel, s: dict, start_ns: int | None, end_ns: int,
             stuck_after_s: float = STUCK_AFTER_S) -> str:
    """live; stale (a reading that stopped changing) or stuck (a counter that stopped
    advancing: never integrated as 0 W); failing (some reads failed); dead (none worked)."""
    if s["reads"] == 0:
        return "dead" if s["errors"] else "idle"
    if s["errors"]:
        return "failing"
    ran_s = (end_ns - start_ns) / 1e9 if start_ns else 0.0
    quiet_s = (end_ns - s["last_change_ns"]) / 1e9
    if ran_s > stuck_after_s and quiet_s > stuck_after_s:
        return "stuck" if ch.quantity == "energy" else "stale"
    return "live"


# Preference among a GPU's power channels: the 50 Hz buffered trace is the finest.
POWER_PREFERENCE = ("power_samples", "power_instant", "power_average")


def _energy(curve, a: int, b: int) -> float:
    return float(curve.energy(np.array([a]), np.array([b]))[0])


def domain_energy(domain: str, curves: dict, statuses: dict, a: int, b: int,
                  curve_errors: dict | None = None) -> DomainEnergy:
    """The best estimate of a domain's energy over [a, b], with how it was made.

    The finest power trace integrates; where a counter exists too it anchors the trace's scale
    over long spans (energy.scaled_curve). Stuck or dead channels are never used. Readings that
    stop inside the span (a GPU lost, a file gone) give the energy of what they cover, marked
    partial, rather than nothing."""
    span_s = (b - a) / 1e9
    usable = {kind: curve for kind, curve in curves.items()
              if statuses.get(f"{domain}.{kind}") is None
              or statuses[f"{domain}.{kind}"].status not in ("stuck", "dead")}
    alternatives = {kind: e for kind, e in ((k, _energy(c, a, b)) for k, c in usable.items()) if np.isfinite(e)}
    power_kind = next((k for k in POWER_PREFERENCE if k in usable), None)
    if power_kind is None and "energy" not in usable:
        reasons = [f"{n}: {st.status}" + (f" ({st.last_error})" if st.last_error else "")
                   + (f" ({curve_errors[n]})" if curve_errors and n in curve_errors else "")
                   for n, st in statuses.items() if n.startswith(domain + ".")]
        return DomainEnergy(None, None, "no usable reading: " + "; ".join(reasons), alternatives)
    if power_kind and "energy" in usable:
        chosen = energy.scaled_curve(usable[power_kind], usable["energy"])
        method = f"{power_kind}: {chosen.method}"
    elif power_kind:
        chosen, method = usable[power_kind], f"{power_kind}: {usable[power_kind].method}"
    else:
        chosen, method = usable["energy"], usable["energy"].method
    best = _energy(chosen, a, b)
    if np.isfinite(best):
        return DomainEnergy(best, best / span_s if span_s > 0 else None, method, alternatives)
    lo, hi = max(a, int(chosen.t_ns[0])), min(b, int(chosen.t_ns[-1]))
    if hi <= lo:
        return DomainEnergy(None, None, f"{method}: no readings inside the span", alternatives)
    best, covered = _energy(chosen, lo, hi), (hi - lo) / 1e9
    return DomainEnergy(best, best / covered, f"{method}; partial: readings cover {covered:.3f} s "
                        f"of {span_s:.3f} s", alternatives)
