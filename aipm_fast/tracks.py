"""Per-domain energy history, bounded in memory, with an absolute running total.

The coordinator keeps only the last few seconds of readings for each domain. A track knows
the cumulative energy (J since the meter started) at its first kept reading, so trimming old
readings never changes the energy of any interval that is still to be integrated.
"""
from __future__ import annotations

import numpy as np

from aipm_fast import energy


class DomainTrack:
    def __init__(self, domain: str, channel_id: int, quantity: str, wrap: float | None, label: str):
        self.domain = domain
        self.channel_id = channel_id
        self.quantity = quantity          # "energy" (counter) or "power"
        self.wrap = wrap
        self.label = label                # which reading: "power_samples", "energy", ...
        self.t = np.empty(0, np.int64)
        self.v = np.empty(0, np.float64)
        self.base_j = 0.0                 # cumulative energy at t[0]
        self.trimmed = False              # after a trim, t[0] is known to be a counter update
        self.problem = ""                 # why no curve can be built (e.g. a stuck counter)
        self._curve: energy.EnergyCurve | None = None
        self._failed_size = -1            # readings count at the last failed build: not retried

    def append(self, t: np.ndarray, v: np.ndarray) -> None:
        if t.size:
            self.t = np.concatenate([self.t, t])
            self.v = np.concatenate([self.v, v])
            if np.any(np.diff(self.t[-t.size - 1:]) < 0):   # NVML samples may interleave: keep time order
                order = np.argsort(self.t, kind="stable")
                self.t, self.v = self.t[order], self.v[order]
            self._curve = None

    @property
    def last_ns(self) -> int | None:
        return int(self.t[-1]) if self.t.size else None

    def curve(self) -> energy.EnergyCurve | None:
        if self._curve is None and self.t.size >= 2 and self.t.size != self._failed_size:
            try:
                if self.quantity == "energy":
                    self._curve = energy.counter_curve(self.t, self.v, self.wrap,
                                                       first_is_new=True if self.trimmed else None)
                else:
                    self._curve = energy.power_curve(self.t, self.v)
                self.problem = ""
            except ValueError as exc:
                # a counter that has not advanced (yet, or ever): its energies are unknown (NaN),
                # never 0 J, and the reason travels with the results
                self.problem = str(exc)
                self._failed_size = self.t.size
        return self._curve

    def cumulative(self, t_ns: np.ndarray) -> np.ndarray:
        """Energy since the meter started, at each time (NaN where unknown)."""
        c = self.curve()
        if c is None:
            return np.full(np.shape(t_ns), np.nan)
        return self.base_j + c.at(np.asarray(t_ns, dtype=np.int64))

    def trim(self, keep_from_ns: int) -> None:
        """Forget readings before keep_from_ns, keeping one at or before it for interpolation."""
        if self.t.size < 3:
            return
        k = int(np.searchsorted(self.t, keep_from_ns, side="right")) - 1
        k = min(k, self.t.size - 2)
        if self.quantity == "energy":
            # cut only where the counter changed: its knots are the first sight of each value,
            # and cutting inside a run of repeats would move a knot and the total with it
            while k > 0 and self.v[k] == self.v[k - 1]:
                k -= 1
        if k <= 0:
            return
        c = self.curve()
        if c is None:
            return
        self.base_j += float(c.at(np.array([self.t[k]]))[0])
        self.t, self.v = self.t[k:], self.v[k:]
        self.trimmed = True
        self._curve = None
