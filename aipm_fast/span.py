"""The energy of a whole recording, in bounded memory: the Meter's online path with one window.

`record` keeps no history of its readings (they go to disk as they come): its summary is the
window from the recorder's start to its stop, integrated by a coordinator whose tracks hold only
the last seconds, with the same policy, scales and uncertainty as the Meter (and the same
energies as the offline path over the whole recording, which tests/test_policy.py checks).
Readings that stop inside the span (a GPU lost) give the energy of what they cover, marked
partial; while the recording runs, the figures go up to each domain's latest reading.
"""

from __future__ import annotations

import numpy as np

from aipm_fast import policy
from aipm_fast.coordinator import Coordinator
from aipm_fast.offline import DomainEnergy
from aipm_fast.results import Window
from aipm_fast.timing import HostTimer


class SpanEnergy:
    def __init__(self, recorder):
        self.rec = recorder
        self.coordinator = Coordinator(recorder, HostTimer())
        self.window: Window | None = None

    def start(self) -> None:
        """Open the span at the recorder's start (call after Recorder.start)."""
        self.window = Window(0, "recording", self.rec.start_ns)
        self.coordinator.open_window(self.window)

    def update(self) -> None:
        """Integrate what the recorder drained (call after each drain)."""
        self.coordinator.process()

    def finish(self) -> None:
        """Close the span at the recorder's stop (call after Recorder.stop)."""
        if self.window is not None and self.window.end_ns is None:
            self.window.end_ns = self.rec.stop_ns
            self.coordinator.close_window(self.window)
            self.coordinator.process(final=True)

    def energies(self) -> dict[str, DomainEnergy]:
        """Every domain's energy over the span (up to the latest readings while it is open)."""
        w = self.window
        if w is None:
            return {}
        results = self.coordinator.results
        out = {}
        with self.coordinator.lock:
            for domain, ranked in self.coordinator.ranked.items():
                alternatives = {}
                for c in ranked:
                    e = (w.end_j.get(c.id, np.nan) - w.start_j.get(c.id, np.nan)) * results.scale(c.id).factor
                    if np.isfinite(e):
                        alternatives[c.label] = float(e)
                if w.end_resolved and w.end_ns is not None:
                    e, u, method = results.window_figures(w, domain)
                    if np.isfinite(e):
                        span_s = (w.end_ns - w.start_ns) / 1e9
                        out[domain] = DomainEnergy(e, e / span_s if span_s > 0 else None, method, u, alternatives)
                        continue
                out[domain] = self._up_to_last(domain, alternatives)
        return out

    def _up_to_last(self, domain: str, alternatives: dict) -> DomainEnergy:
        """From the start to the answering channel's latest reading: partial once the span is
        closed, provisional while it is open."""
        w = self.window
        assert w is not None
        c = self.coordinator
        chosen = policy.choose(
            c.ranked[domain],
            c.health,
            lambda ch: np.isfinite(w.start_j.get(ch.id, np.nan)) and c.tracks[ch.id].last_ns is not None,
        )
        tr = c.tracks[chosen.id] if chosen is not None else None
        start_j = w.start_j.get(tr.channel_id, np.nan) if tr is not None else np.nan
        if tr is None or tr.last_ns is None or not np.isfinite(start_j) or tr.last_ns <= w.start_ns:
            e, u, method = self.coordinator.results.window_figures(w, domain) if w.end_resolved else (None, None, "")
            return DomainEnergy(None, None, method or "no usable reading yet", None, alternatives)
        scale = self.coordinator.results.scale(tr.channel_id)
        e = (float(tr.cumulative(np.array([tr.last_ns]))[0]) - start_j) * scale.factor
        covered = (tr.last_ns - w.start_ns) / 1e9
        method = tr.label + (f"; {scale.how}" if scale.how else "")
        if w.end_ns is not None:
            method += f"; partial: readings cover {covered:.3f} s of {(w.end_ns - w.start_ns) / 1e9:.3f} s"
        else:
            method += f"; up to the latest reading ({covered:.1f} s)"
        return DomainEnergy(e, e / covered if covered > 0 else None, method, None, alternatives)
