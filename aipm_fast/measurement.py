"""One window's figures as an object: what `Meter.end_window` and `with m.window()` give, and
`track_energy`, the owned one-line form for scripts that do not want a Meter.

    with aipm_fast.track_energy() as t:          # starts a Meter, stops it at the end
        train()
    print(t.total_j, t.uncertainty_j, t.duration_s)

A Measurement reads the session's one result object (results.py): its figures are those of
`Meter.windows()` for the same window, resolved once the power readings pass the window's end.
Reading one while its Meter runs waits for that (a flush of this window only); after the Meter
stops they are final.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import pandas as pd

from aipm_fast.results import Window, window_totals

if TYPE_CHECKING:
    from aipm_fast.meter import Meter

F = TypeVar("F", bound=Callable[..., Any])


class Measurement:
    """A window of a Meter: its name, edges and, once it has ended, energy per domain, the total
    over the domains that add up without overlap, duration, 1-sigma uncertainty and method.

    `energy_j`, `uncertainty_j` and `method` are {domain: ...}; `total_j` and
    `total_uncertainty_j` add the additive domains only (NaN where one of them is unknown);
    `table()` gives the window's rows as `Meter.windows()` has them. Reading a figure before the
    window has ended raises ValueError (the window is still open)."""

    __slots__ = ("meter", "window", "_final")

    def __init__(self, meter: Meter, window: Window):
        self.meter = meter
        self.window = window
        self._final: pd.DataFrame | None = None  # the rows once their status is final

    # -- the window itself -------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.window.name

    @property
    def id(self) -> int:
        return self.window.id

    @property
    def start_ns(self) -> int:
        return self.window.start_ns

    @property
    def end_ns(self) -> int | None:
        return self.window.end_ns

    @property
    def closed(self) -> bool:
        return self.window.end_ns is not None

    def __getattr__(self, name: str) -> Any:
        # anything else a Window has (its edges, n_marks, ...), so that code written for the
        # Window that `with m.window()` used to give keeps working
        if name == "window":  # not set yet (during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.window, name)

    # -- its figures -------------------------------------------------------------------------
    def table(self) -> pd.DataFrame:
        """One row per domain: the columns of Meter.windows(), `additive` among them."""
        if self._final is not None:
            return self._final.copy()
        if self.window.end_ns is None:
            raise ValueError(f"window {self.name!r} is still open: its energy is known once it ends")
        if self.meter.running and not self.window.end_resolved:
            self.meter.flush(self.window)
        frame = self.meter.results.window_frame(self.window)
        if len(frame) and (frame["status"] == "final").all():
            self._final = frame
        return frame.copy()

    def _by_domain(self, column: str) -> dict:
        t = self.table()
        return dict(zip(t["domain"], t[column]))

    @property
    def energy_j(self) -> dict[str, float]:
        return {d: float(e) for d, e in self._by_domain("energy_j").items()}

    @property
    def uncertainty_j(self) -> dict[str, float]:
        """1 sigma per domain (a 95% interval is +-1.96 of it)."""
        return {d: float(u) for d, u in self._by_domain("uncertainty_j").items()}

    @property
    def method(self) -> dict[str, str]:
        return {d: str(m) for d, m in self._by_domain("method").items()}

    def _total(self, column: str) -> float:
        t = window_totals(self.table())
        return float(t[column].iloc[0]) if len(t) else math.nan

    @property
    def total_j(self) -> float:
        """Sum over the additive domains (NaN where one is unknown or none is measured)."""
        return self._total("energy_j")

    @property
    def total_uncertainty_j(self) -> float:
        return self._total("uncertainty_j")

    @property
    def duration_s(self) -> float:
        if self.window.end_ns is None:
            raise ValueError(f"window {self.name!r} is still open")
        return (self.window.end_ns - self.window.start_ns) / 1e9

    @property
    def n_inferences(self) -> int:
        t = self.table()
        return int(t["n_inferences"].iloc[0]) if len(t) else self.window.n_marks

    @property
    def status(self) -> str:
        """provisional while the Meter runs, final after it stops."""
        t = self.table()
        return str(t["status"].iloc[0]) if len(t) else self.meter.results.status

    def __str__(self) -> str:
        if not self.closed:
            return f"{self.name}: open"
        parts = ", ".join(f"{d} {e:.4g} J" for d, e in self.energy_j.items())
        return (
            f"{self.name}: {self.total_j:.4g} J +- {self.total_uncertainty_j:.2g} (1 sigma) in {self.duration_s:.3g} s"
            + (f" ({parts})" if parts else " (no power source could be read)")
        )

    def __repr__(self) -> str:
        return f"<Measurement {self}>"


class track_energy:  # noqa: N801  (named as the function-like decorator it is used as)
    """Meter one block or one function with a Meter of its own: a context manager and a decorator.

        with track_energy() as t:                 # t: the Measurement of the block
            work()
        print(t.total_j)

        @track_energy("train", out_dir="runs/a")  # every call is measured
        def train(): ...
        train(); print(train.last_measurement)

    A Meter is made from `meter_options` (out_dir, cuda, gpus, powercap_root, ...), started on
    entry and stopped on exit, an exception included: the figures are final when the block
    ends. `echo` prints the one-line result on stderr (False: silent). Each call of a decorated
    function is measured by a Meter of its own; the latest Measurement is kept as the
    function's `last_measurement` attribute."""

    def __init__(self, name: str = "track", *, echo: bool = True, **meter_options: Any):
        self.name, self.echo, self.options = name, echo, meter_options
        self.meter: Meter | None = None
        self.measurement: Measurement | None = None
        self._mark: Any = None

    def __enter__(self) -> Measurement:
        from aipm_fast.meter import Meter

        if self.meter is not None:
            raise RuntimeError("track_energy is already measuring a block; use one per block")
        self.meter = Meter(**self.options).start()
        self._mark = self.meter.window(self.name)
        self.measurement = self._mark.__enter__()
        return self.measurement

    def __exit__(self, *exc: Any) -> None:
        meter, self.meter = self.meter, None
        assert meter is not None
        try:
            self._mark.__exit__(*exc)
        finally:
            meter.stop()
        if self.echo and self.measurement is not None:
            print(f"aipm-fast: {self.measurement}", file=sys.stderr)

    def __call__(self, func: F) -> F:
        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            tracker = track_energy(self.name, echo=self.echo, **self.options)
            with tracker:
                try:
                    return func(*args, **kwargs)
                finally:
                    wrapper.last_measurement = tracker.measurement  # type: ignore[attr-defined]

        wrapper.last_measurement = None  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]
