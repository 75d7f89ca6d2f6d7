"""Raw samples against known load edges, as a file: what a calibration measured, kept so that it
can be refitted and tested offline.

Two layouts are read:
- this project's (`"format": "aipm-fast sensor capture 1"`): times in s on one clock (the
  sampler's CLOCK_MONOTONIC, relative to `t0_ns`): `blocks` [[kind, start, end], ...],
  `samples` [[t, W], ...], `counter` [[t, J], ...], `instant` [[t, W], ...], `runs`
  [[name, start, end], ...] (each a part of the schedule; every other one is held out);
- the raw layout of a capture taken with pynvml (`anchor`, `blocks`, `samples_us_mw`,
  `counter_realtime_s_mj`, `instant_realtime_s_stamp_us_mw`: CLOCK_REALTIME), as in
  the H200 capture the tests use.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from aipm_fast.sensor.fit import Block

FORMAT = "aipm-fast sensor capture 1"


@dataclass
class Capture:
    blocks: list[Block]
    samples: np.ndarray  # (n, 2): t s, W
    counter: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))  # t s, J
    instant: np.ndarray = field(default_factory=lambda: np.empty((0, 2)))  # t s, W
    runs: list[tuple[str, float, float]] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def heldout(self) -> np.ndarray | None:
        """True for samples in every other run (the second, fourth, ...); None without runs."""
        if not self.runs:
            return None
        t = self.samples[:, 0]
        out = np.zeros(t.size, bool)
        for i, (_, a, b) in enumerate(self.runs):
            if i % 2 == 1:
                out |= (t >= a) & (t < b)
        return out

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            **self.info,
            "blocks": [[b.kind, round(b.start_s, 7), round(b.end_s, 7)] for b in self.blocks],
            "runs": [[n, round(a, 7), round(b, 7)] for n, a, b in self.runs],
            "samples": np.round(self.samples, 7).tolist(),
            "counter": np.round(self.counter, 7).tolist(),
            "instant": np.round(self.instant, 7).tolist(),
        }

    def update_intervals_ms(self) -> dict[str, float]:
        """Median time between changes of value of the instant field and the counter (ms)."""
        out = {}
        for name, arr in (("instant", self.instant), ("counter", self.counter)):
            if arr.shape[0] > 2:
                changed = arr[1:, 0][np.diff(arr[:, 1]) != 0]
                if changed.size > 2:
                    out[name] = float(np.median(np.diff(changed)) * 1e3)
        return out


def _pairs(rows, name: str, path: str) -> np.ndarray:
    a = np.asarray(rows, dtype=float)
    if a.size == 0:
        return np.empty((0, 2))
    if a.ndim != 2 or a.shape[1] < 2:
        raise ValueError(f"{path}: '{name}' must be a list of [time, value] rows")
    return a


def load(path: str) -> Capture:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot read a sensor capture ({exc})") from exc
    try:
        if d.get("format") == FORMAT:
            return Capture(
                blocks=[Block(str(k), float(a), float(b)) for k, a, b in d["blocks"]],
                samples=_pairs(d["samples"], "samples", path),
                counter=_pairs(d.get("counter", []), "counter", path),
                instant=_pairs(d.get("instant", []), "instant", path),
                runs=[(str(n), float(a), float(b)) for n, a, b in d.get("runs", [])],
                info={k: v for k, v in d.items() if k not in ("blocks", "samples", "counter", "instant", "runs")},
            )
        if "anchor" in d and "samples_us_mw" in d:
            t0 = float(d["anchor"]["realtime_s"])
            s = _pairs(d["samples_us_mw"], "samples_us_mw", path)
            c = _pairs(d.get("counter_realtime_s_mj", []), "counter_realtime_s_mj", path)
            i = np.asarray(d.get("instant_realtime_s_stamp_us_mw", []), dtype=float).reshape(-1, 3)
            return Capture(
                blocks=[Block(str(k), float(a), float(b)) for k, a, b in d["blocks"]],
                samples=np.column_stack([s[:, 0] / 1e6 - t0, s[:, 1] / 1e3]),
                counter=np.column_stack([c[:, 0] - t0, c[:, 1] / 1e3]) if c.size else np.empty((0, 2)),
                instant=np.column_stack([i[:, 1] / 1e6 - t0, i[:, 2] / 1e3]) if i.size else np.empty((0, 2)),
                info={"source": "pynvml capture (CLOCK_REALTIME)"},
            )
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: malformed sensor capture ({exc!r})") from exc
    raise ValueError(
        f"{path}: not a sensor capture (want '\"format\": \"{FORMAT}\"' or a pynvml capture with 'anchor')"
    )


def save(capture: Capture, path: str) -> None:
    from aipm_fast.storage import write_atomic

    write_atomic(path, (json.dumps(capture.to_dict()) + "\n").encode())
