"""The response of a power sensor: how a sample stamped t relates to the power drawn before it.

A sample is modelled as a weighted mean of the true power around its stamp,

    s(t) = integral h(lag) p(t - lag) d lag,        integral h = 1,

with h the impulse response (lags in seconds, positive: the past). Unit area means the sensor
only moves energy in time; its gain is the energy counter's business (policy.counter_scale).
Three shapes are fitted and compared (`fit.py`): an averaging window of width W after a delay D,
a single-pole filter of time constant T after a delay D, and a free impulse response on 1 ms
bins. Every shape is stored the same way, as h on a regular grid of lags, so the energy policy
needs one code path whatever shape the data chose.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

#: the lag grid every response is stored on (s)
GRID_S = 0.0005

KINDS = ("window", "pole", "fir")


@dataclass(frozen=True)
class SensorResponse:
    """h on lags lag0_s + (i + 1/2) * GRID_S, i = 0..n-1 (weights sum to 1).

    kind: "window", "pole" or "fir"; params: the shape's parameters in s ("delay_s",
    "width_s" or "tau_s"), ci95: their 95% intervals (lo, hi), noise_w: the RMS of what the
    model leaves unexplained on data not used for the fit (W), the scale of a sample's error."""

    kind: str
    weights: tuple[float, ...]
    lag0_s: float
    params: dict[str, float] = field(default_factory=dict)
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    noise_w: float = float("nan")
    timing_sigma_s: float = 0.0  # 1 sigma of where the response lies in time (its delay's interval)
    #: what the model misplaces at a load change, per W of step (J/W, 1 sigma): its held-out
    #: residual over the response's width, for the steps it was fitted on; whatever the GPU's own
    #: transients do that the fit's model of the power (sensor/fit.py) leaves out is in it
    edge_error_j_per_w: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown sensor response kind {self.kind!r} (want one of {', '.join(KINDS)})")
        w = np.asarray(self.weights, dtype=float)
        if w.ndim != 1 or w.size == 0 or not np.all(np.isfinite(w)) or not w.sum() > 0:
            raise ValueError("a sensor response needs finite weights with a positive sum")

    # -- construction ----------------------------------------------------------------------
    @classmethod
    def from_kernel(cls, kind: str, kernel, lag0_s: float, **kw) -> SensorResponse:
        k = np.asarray(kernel, dtype=float)
        return cls(kind=kind, weights=tuple((k / k.sum()).tolist()), lag0_s=float(lag0_s), **kw)

    @classmethod
    def window(cls, width_s: float, delay_s: float, **kw) -> SensorResponse:
        """The mean over [t - delay - width, t - delay]."""
        n = max(1, int(round(width_s / GRID_S)))
        params = {"delay_s": float(delay_s), "width_s": float(width_s)}
        return cls.from_kernel("window", np.ones(n), delay_s, params=kw.pop("params", params), **kw)

    @classmethod
    def pole(cls, tau_s: float, delay_s: float, **kw) -> SensorResponse:
        """A first-order low-pass of time constant tau after a delay (10 tau of tail kept)."""
        n = max(1, int(np.ceil(10 * tau_s / GRID_S)))
        lag = (np.arange(n) + 0.5) * GRID_S
        kernel = np.exp(-lag / tau_s) if tau_s > 0 else np.ones(1)
        params = {"delay_s": float(delay_s), "tau_s": float(tau_s)}
        return cls.from_kernel("pole", kernel, delay_s, params=kw.pop("params", params), **kw)

    # -- what it says ----------------------------------------------------------------------
    @property
    def kernel(self) -> np.ndarray:
        return np.asarray(self.weights, dtype=float)

    @property
    def lags_s(self) -> np.ndarray:
        return self.lag0_s + (np.arange(len(self.weights)) + 0.5) * GRID_S

    @property
    def centroid_s(self) -> float:
        """Where in the past a sample's energy is on average: the lag that placing each sample
        at its stamp gets wrong by."""
        return float(np.dot(self.kernel, self.lags_s))

    @property
    def support_s(self) -> tuple[float, float]:
        """The lags holding the central 95% of the response."""
        c = np.cumsum(self.kernel)
        lags = self.lags_s
        lo = int(np.searchsorted(c, 0.025))
        hi = min(int(np.searchsorted(c, 0.975)), lags.size - 1)
        return float(lags[lo]), float(lags[hi])

    @property
    def width_s(self) -> float:
        lo, hi = self.support_s
        return hi - lo + GRID_S

    def cumulative_weight(self, lag_s) -> np.ndarray:
        """The share of a sample's response at lags below lag_s (0 before the response, 1 after),
        linear within a grid cell: the fraction of a sample stamped t that comes from power
        drawn after t - lag_s."""
        edges = self.lag0_s + np.arange(len(self.weights) + 1) * GRID_S
        cum = np.concatenate(([0.0], np.cumsum(self.kernel)))
        return np.interp(lag_s, edges, cum, left=0.0, right=1.0)

    def overlap(self, stamps_s: np.ndarray, starts_s: np.ndarray, ends_s: np.ndarray) -> np.ndarray:
        """(samples x spans) matrix: the share of each sample's response that falls on power drawn
        within each span [start, end): a sample stamped t sees power at t - lag."""
        t = np.asarray(stamps_s, dtype=float)[:, None]
        # power at time x is seen at lag t - x: x in [a, b) <-> lag in (t - b, t - a]
        return self.cumulative_weight(t - np.asarray(starts_s)[None, :]) - self.cumulative_weight(
            t - np.asarray(ends_s)[None, :]
        )

    def predict(self, stamps_s, starts_s, ends_s, power_w, base_w: float = 0.0) -> np.ndarray:
        """What the sensor reads at each stamp for piecewise-constant power `power_w` over the
        spans (and base_w outside them)."""
        m = self.overlap(stamps_s, starts_s, ends_s)
        return base_w * (1.0 - m.sum(axis=1)) + m @ np.asarray(power_w, dtype=float)

    def describe(self) -> str:
        """One line: the shape, its parameters with their intervals, the centroid and noise."""
        parts = []
        for k, v in self.params.items():
            lo, hi = self.ci95.get(k, (float("nan"), float("nan")))
            ci = f" [{lo * 1e3:.1f}, {hi * 1e3:.1f}]" if np.isfinite(lo) else ""
            parts.append(f"{k[:-2]} {v * 1e3:.1f} ms{ci}")
        shape = ", ".join(parts) if self.kind != "fir" else "1 ms bins"
        return (
            f"{self.kind}: {shape}; centroid {self.centroid_s * 1e3:.1f} ms{self._ci_text('centroid_s')}, "
            f"95% of the response within {self.width_s * 1e3:.1f} ms; noise {self.noise_w:.1f} W"
        )

    def _ci_text(self, key: str) -> str:
        lo, hi = self.ci95.get(key, (float("nan"), float("nan")))
        return f" [{lo * 1e3:.1f}, {hi * 1e3:.1f}]" if np.isfinite(lo) else ""

    # -- storage ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["weights"] = [round(w, 9) for w in self.weights]
        d["ci95"] = {k: list(v) for k, v in self.ci95.items()}
        d["grid_s"] = GRID_S
        return d

    @classmethod
    def from_dict(cls, d: dict) -> SensorResponse:
        if d.get("grid_s", GRID_S) != GRID_S:
            raise ValueError(f"sensor response stored on a {d.get('grid_s')} s grid, this version reads {GRID_S} s")
        return cls(
            kind=d["kind"],
            weights=tuple(float(w) for w in d["weights"]),
            lag0_s=float(d["lag0_s"]),
            params={k: float(v) for k, v in d.get("params", {}).items()},
            ci95={k: (float(v[0]), float(v[1])) for k, v in d.get("ci95", {}).items()},
            noise_w=float(d.get("noise_w", float("nan"))),
            timing_sigma_s=float(d.get("timing_sigma_s", 0.0)),
            edge_error_j_per_w=float(d.get("edge_error_j_per_w", 0.0)),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict())
