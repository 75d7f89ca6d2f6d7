"""One result object per Meter session: window and mark energies, computed once, scaled once, with
their uncertainty (1 sigma, see aipm_fast.policy) and method. Every output reads it:
Meter.windows/inferences/summary, the streamed CSVs and meter.json, the training callbacks, the
distributed gathers and the Prometheus exporter.

The coordinator feeds it: resolved window edges (cumulative energy of every channel of every
domain at the edge) and batches of integrated marks (per domain: the channel that answered, its
energy, uncertainty and estimate flag), and, at each drain, the channels' health and the
current counter scales. Until the session stops a figure is provisional: the counter's scale is
refined as its span grows (one factor covers the whole session). At stop the figures become
final, and the streamed files are rewritten with the final figures (status "final"), equal to
windows() and inferences().
"""

from __future__ import annotations

import csv
import io
import os
import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from aipm_fast import policy
from aipm_fast.marks import MarkBatch, MarkStore
from aipm_fast.sources.base import Channel, Domain

PROVISIONAL, FINAL = "provisional", "final"
#: marks kept in memory when they are streamed to out_dir: enough for the callbacks and the
#: exporter, which read the latest (at 32 bytes a mark and domain, a few MB at most)
TAIL_MARKS = 100_000
BASELINE = "__baseline__"  # the idle window of Meter.measure_baseline

WINDOW_COLUMNS = [
    "window",
    "window_id",
    "domain",
    "part",
    "additive",
    "start_ns",
    "end_ns",
    "duration_s",
    "energy_j",
    "dynamic_energy_j",
    "uncertainty_j",
    "n_inferences",
    "method",
    "status",
]
MARK_COLUMNS = [
    "index",
    "window",
    "domain",
    "part",
    "additive",
    "start_ns",
    "end_ns",
    "latency_s",
    "energy_j",
    "dynamic_energy_j",
    "uncertainty_j",
    "estimate",
    "channel",
    "scale",
    "status",
]

#: Meter.totals(): one row per window, the sum over its additive domains only
TOTAL_COLUMNS = [
    "window",
    "window_id",
    "start_ns",
    "end_ns",
    "duration_s",
    "energy_j",
    "dynamic_energy_j",
    "uncertainty_j",
    "n_inferences",
    "domains",
    "status",
]


def window_totals(table: pd.DataFrame) -> pd.DataFrame:
    """TOTAL_COLUMNS from a table of WINDOW_COLUMNS: per window, energies summed over the domains
    that add up without overlap (the `additive` column: a package's core is not added to its
    package again). NaN where an additive domain is unknown, or where none was measured: a
    partial sum would read as the whole. The uncertainty adds the domains' in quadrature (their
    sampling errors are independent); `domains` names what was added."""
    rows = []
    for wid, group in table.groupby("window_id", sort=True):
        add = group[group["additive"].astype(bool)]
        first = group.iloc[0]
        energy = add["energy_j"].sum(skipna=False) if len(add) else np.nan
        dynamic = add["dynamic_energy_j"].sum(skipna=False) if len(add) else np.nan
        u = float(np.sqrt((add["uncertainty_j"] ** 2).sum(skipna=False))) if len(add) else np.nan
        rows.append(
            {
                "window": first["window"],
                "window_id": wid,
                "start_ns": first["start_ns"],
                "end_ns": first["end_ns"],
                "duration_s": first["duration_s"],
                "energy_j": float(energy),
                "dynamic_energy_j": float(dynamic),
                "uncertainty_j": u,
                "n_inferences": first["n_inferences"],
                "domains": ",".join(add["domain"]),
                "status": first["status"],
            }
        )
    return pd.DataFrame(rows, columns=TOTAL_COLUMNS)


@dataclass
class Window:
    """A measured span. Its edges hold, per channel id, the cumulative energy (J since the meter
    started) and its 1-sigma uncertainty, written whole by the coordinator once readings pass."""

    id: int
    name: str
    start_ns: int
    end_ns: int | None = None
    start_j: dict = field(default_factory=dict)  # channel id -> cumulative J at the start edge
    end_j: dict = field(default_factory=dict)
    start_u: dict = field(default_factory=dict)  # channel id -> edge uncertainty (J)
    end_u: dict = field(default_factory=dict)
    n_marks: int = 0
    explicit: bool = False  # opened by start_window: marks counted by span
    end_resolved: bool = False  # end_j/end_u hold their final values


class SessionResults:
    def __init__(self, ranked: dict[str, list[Channel]], domains: dict[str, Domain], out_dir: str | None = None):
        self.ranked = ranked
        self.meaning = {d: domains.get(d, Domain(d, "other", additive=False)) for d in ranked}
        self.channels = {c.id: c for chs in ranked.values() for c in chs}
        self.windows_list: list[Window] = []
        # Marks in memory, packed: all of them without out_dir; with it, only the latest
        # TAIL_MARKS (for marks_since and last_mark), the rest read back from inferences.csv.
        self.marks = MarkStore(ranked, keep_marks=TAIL_MARKS if out_dir else None)
        self.status = PROVISIONAL
        self._scales: dict[int, policy.Scale] = {}
        self._health: dict[int, str] = {}
        self._curve_problems: dict[int, str] = {}
        self._notes: dict[int, str] = {}
        self.overflows = 0
        self._lock = threading.Lock()  # guards the lists against a reader on another thread
        self._files = StreamedFiles(out_dir) if out_dir else None

    @property
    def domains(self) -> list[str]:
        return list(self.ranked)

    @property
    def n_marks(self) -> int:
        return self.marks.count

    # -- fed by the coordinator ----------------------------------------------------------------
    def update(
        self,
        scales: dict[int, policy.Scale],
        health: dict[int, str],
        problems: dict[int, str],
        notes: dict[int, str] | None = None,
        overflows: int = 0,
    ) -> None:
        """The coordinator's view at a drain: scales, channels' health, why a curve failed, what a
        counter showed (resets, glitches, gaps), and records the ring dropped so far."""
        self._scales, self._health, self._curve_problems = dict(scales), dict(health), dict(problems)
        self._notes = dict(notes or {})
        self.overflows = overflows

    def open_window(self, w: Window) -> None:
        with self._lock:
            self.windows_list.append(w)

    def window_resolved(self, w: Window) -> None:
        if self._files is not None and w.name != BASELINE:
            self._files.append_windows(self._window_frame([w]))

    def add_marks(self, batch: MarkBatch) -> None:
        if self._files is not None:  # written at full precision before it is packed
            self._files.append_marks(self._marks_frame([batch]))
        with self._lock:
            self.marks.append(batch)

    def finalize(self) -> None:
        """The session stopped: scales are final; the streamed files are rewritten as final."""
        if self.status == FINAL:
            return
        self.status = FINAL
        if self._files is not None:
            self._files.rewrite(self.windows(), self.inferences())
            self._files.close()

    def file_stats(self) -> dict | None:
        """What the streamed files could not hold (StreamedFiles.stats), None without out_dir."""
        return self._files.stats() if self._files is not None else None

    # -- how one figure is made -------------------------------------------------------------------
    def scale(self, channel_id: int) -> policy.Scale:
        return self._scales.get(channel_id, policy.Scale.none(""))

    def _factors(self, channel_ids: np.ndarray) -> np.ndarray:
        """Scale factor per mark from its answering channel (NaN for -1: no channel)."""
        lookup = {cid: self.scale(cid).factor for cid in self.channels}
        out = np.full(channel_ids.shape, np.nan)
        for cid, k in lookup.items():
            out[channel_ids == cid] = k
        return out

    def window_channel(self, w: Window, domain: str) -> Channel | None:
        """The channel that answers for a window: the policy's choice among those with both edges known."""

        def known(c: Channel) -> bool:
            return bool(np.isfinite(w.end_j.get(c.id, np.nan) - w.start_j.get(c.id, np.nan)))

        return policy.choose(self.ranked[domain], self._health, known)

    def window_energy(self, w: Window) -> dict[str, float]:
        """{domain: J} of a window, scaled (NaN where unknown)."""
        return {d: self.window_figures(w, d)[0] for d in self.ranked}

    def window_figures(self, w: Window, domain: str) -> tuple[float, float, str]:
        """(energy J, 1-sigma uncertainty J, method) of one domain over a window."""
        ranked = self.ranked[domain]
        c = self.window_channel(w, domain)
        if c is None:
            why = "; ".join(
                f"{x.label}: {self._health.get(x.id) or 'no readings at the edges'}"
                + (f" ({self._curve_problems[x.id]})" if x.id in self._curve_problems else "")
                for x in ranked
            )
            return np.nan, np.nan, f"no usable reading: {why}"
        s = self.scale(c.id)
        e = (w.end_j[c.id] - w.start_j[c.id]) * s.factor
        u = float(np.hypot(w.start_u.get(c.id, np.nan), w.end_u.get(c.id, np.nan))) * s.factor
        method = c.label + (f"; {s.how}" if s.how else "") + policy.fallback_note(c, ranked, self._health)
        if c.id in self._notes:
            method += f"; {self._notes[c.id]}"
        if self.overflows:
            method += (
                f"; the sampler's ring overflowed ({self.overflows} readings lost): a trace has gaps, "
                "a counter's are unwrapped from the neighbouring power"
            )
        return float(e), u, method

    def baseline_power(self) -> dict[str, float]:
        """Idle power per domain (W) from the latest baseline window, scaled ({} if none)."""
        base = [w for w in self.windows_list if w.name == BASELINE and w.end_resolved]
        if not base:
            return {}
        w = base[-1]
        assert w.end_ns is not None  # resolved, hence closed
        duration = (w.end_ns - w.start_ns) / 1e9
        return {d: e / duration for d, e in self.window_energy(w).items()}

    # -- read by every output ---------------------------------------------------------------
    def windows(self) -> pd.DataFrame:
        """One row per (window, domain): WINDOW_COLUMNS; the baseline window is left out."""
        with self._lock:
            ws = [w for w in self.windows_list if w.name != BASELINE and w.end_ns is not None]
        return self._window_frame(ws)

    def totals(self) -> pd.DataFrame:
        """One row per window (the baseline left out): TOTAL_COLUMNS, see window_totals."""
        return window_totals(self.windows())

    def window_frame(self, w: Window) -> pd.DataFrame:
        """The rows of one closed window (any window, the baseline too), as windows() has them."""
        return self._window_frame([w])

    def _window_frame(self, ws: list[Window]) -> pd.DataFrame:
        rows = []
        base = self.baseline_power()
        spans = self.mark_spans() if any(w.explicit for w in ws) else None
        for w in ws:
            assert w.end_ns is not None  # only closed windows are tabled
            duration = (w.end_ns - w.start_ns) / 1e9
            n_marks = w.n_marks
            if w.explicit and spans is not None:
                n_marks = int(np.count_nonzero((spans[0] >= w.start_ns) & (spans[1] <= w.end_ns)))
            for domain in self.ranked:
                e, u, method = self.window_figures(w, domain)
                meaning = self.meaning[domain]
                rows.append(
                    {
                        "window": w.name,
                        "window_id": w.id,
                        "domain": domain,
                        "part": meaning.part,
                        "additive": meaning.additive,
                        "start_ns": w.start_ns,
                        "end_ns": w.end_ns,
                        "duration_s": duration,
                        "energy_j": e,
                        "dynamic_energy_j": e - base.get(domain, np.nan) * duration,
                        "uncertainty_j": u,
                        "n_inferences": n_marks,
                        "method": method,
                        "status": self.status,
                    }
                )
        return pd.DataFrame(rows, columns=WINDOW_COLUMNS)

    def mark_spans(self) -> tuple[np.ndarray, np.ndarray]:
        """(start_ns, end_ns) of every integrated mark."""
        if self._files is not None:
            rows = self._files.read_marks().drop_duplicates("index")
            return rows["start_ns"].to_numpy(np.int64), rows["end_ns"].to_numpy(np.int64)
        with self._lock:
            batches = self.marks.batches()
        if not batches:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate([b.start_ns for b in batches]), np.concatenate([b.end_ns for b in batches])

    def inferences(self, window: str | None = None) -> pd.DataFrame:
        """One row per (mark, domain): MARK_COLUMNS, sorted by index and domain. `window` keeps the
        marks of windows of that name."""
        if self._files is not None:
            frame = self._rescaled(self._files.read_marks(), window)
        else:
            with self._lock:
                batches = self.marks.batches()
            frame = self._marks_frame(batches, window)
        return frame.sort_values(["index", "domain"], ignore_index=True)

    def mark_energies(self, window: str) -> pd.DataFrame:
        """The marks of the windows named `window`, one row each, sorted by index: index,
        start_ns, end_ns, latency_s, then one column per domain (named after it) holding its
        energy_j as inferences(window) has it. The same figures in the wide form, made without a
        row per domain: what a benchmark run writes between runs."""
        if self._files is not None:  # read back from the streamed file: inferences() rescales them
            rows = self.inferences(window)
            wide = rows.pivot(index="index", columns="domain", values="energy_j").reindex(columns=list(self.ranked))
            spans = rows.drop_duplicates("index").set_index("index")[["start_ns", "end_ns", "latency_s"]]
            return spans.join(wide).reset_index().rename_axis(columns=None)
        with self._lock:
            batches = self.marks.batches()
        kept = [(b, k) for b in batches if (k := b.window == window).any()]

        def joined(pick, dtype) -> np.ndarray:
            return np.concatenate([pick(b)[k] for b, k in kept]) if kept else np.empty(0, dtype)

        index = joined(lambda b: b.index, np.int64)
        order = np.argsort(index, kind="stable")  # marks of several threads may end out of order
        start, end = joined(lambda b: b.start_ns, np.int64)[order], joined(lambda b: b.end_ns, np.int64)[order]
        columns: dict[str, np.ndarray] = {
            "index": index[order],
            "start_ns": start,
            "end_ns": end,
            "latency_s": (end - start) / 1e9,
        }
        for domain in self.ranked:
            energy = joined(lambda b, d=domain: b.energy[d][0] * self._factors(b.energy[d][3]), np.float64)
            columns[domain] = energy[order]
        return pd.DataFrame(columns)

    def _rescaled(self, rows: pd.DataFrame, window: str | None) -> pd.DataFrame:
        """Marks read back from the streamed file, with today's scale and baseline: each row's
        unscaled energy is its energy over the scale it was written with."""
        if window is not None:
            rows = rows[rows["window"] == window]
        rows = rows.reset_index(drop=True)
        ids = {(c.domain, c.label): cid for cid, c in self.channels.items()}
        k = np.array(
            [
                self.scale(ids[(d, c)]).factor if (d, c) in ids else np.nan
                for d, c in zip(rows["domain"], rows["channel"])
            ],
            dtype=float,
        )
        base = self.baseline_power()
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = k / rows["scale"].to_numpy(float)
        rows["energy_j"] = rows["energy_j"].to_numpy(float) * ratio
        rows["uncertainty_j"] = rows["uncertainty_j"].to_numpy(float) * ratio
        rows["scale"] = k
        rows["dynamic_energy_j"] = rows["energy_j"] - rows["domain"].map(base).astype(float) * rows["latency_s"]
        rows["estimate"] = rows["estimate"].astype(bool)
        # what a domain means comes from its source, not from the file
        rows["part"] = [self.meaning[d].part if d in self.meaning else "other" for d in rows["domain"]]
        rows["additive"] = [bool(d in self.meaning and self.meaning[d].additive) for d in rows["domain"]]
        rows["status"] = self.status
        return rows[MARK_COLUMNS]

    def _marks_frame(self, batches: list[MarkBatch], window: str | None = None) -> pd.DataFrame:
        frames = []
        base = self.baseline_power()
        labels = {cid: c.label for cid, c in self.channels.items()}
        for b in batches:
            keep = slice(None)
            if window is not None:
                keep = b.window == window
                if not keep.any():
                    continue
            latency = (b.end_ns[keep] - b.start_ns[keep]) / 1e9
            for domain in self.ranked:
                e, u, est, cid = (x[keep] for x in b.energy[domain])
                k = self._factors(cid)
                frames.append(
                    pd.DataFrame(
                        {
                            "index": b.index[keep],
                            "window": b.window[keep],
                            "domain": domain,
                            "part": self.meaning[domain].part,
                            "additive": self.meaning[domain].additive,
                            "start_ns": b.start_ns[keep],
                            "end_ns": b.end_ns[keep],
                            "latency_s": latency,
                            "energy_j": e * k,
                            "dynamic_energy_j": e * k - base.get(domain, np.nan) * latency,
                            "uncertainty_j": u * k,
                            "estimate": est,
                            "channel": [labels.get(int(c), "") for c in cid],
                            "scale": k,
                            "status": self.status,
                        }
                    )
                )
        if not frames:
            return pd.DataFrame(columns=MARK_COLUMNS)
        return pd.concat(frames, ignore_index=True)[MARK_COLUMNS]

    def marks_since(self, position: int = 0) -> tuple[list[tuple[int, dict[str, float]]], int]:
        """Marks integrated since an earlier call: ([(index, {domain: J})], position); pass the
        position back next time (0 the first time). Scaled as in inferences()."""
        with self._lock:
            batches = self.marks.batches(since=position)
            end = self.marks.count
        out = []
        for b in batches:
            energies = {d: b.energy[d][0] * self._factors(b.energy[d][3]) for d in self.ranked}
            for i, index in enumerate(b.index.tolist()):
                out.append((index, {d: float(e[i]) for d, e in energies.items()}))
        return out, end

    @property
    def position(self) -> int:
        """Where marks_since would start for marks integrated from now on."""
        return self.marks.count

    def last_mark(self) -> dict[str, float]:
        """{domain: J} of the latest integrated mark, scaled ({} before the first)."""
        with self._lock:
            batches = self.marks.batches(since=self.marks.count - 1) if self.marks.count else []
        if not batches:
            return {}
        last = batches[-1]
        return {d: float(last.energy[d][0][-1] * self._factors(last.energy[d][3][-1:])[0]) for d in self.ranked}


#: characters that make a spreadsheet read a cell as a formula (and the escape itself)
FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "'")
TEXT_COLUMNS = ("window", "domain", "channel", "method")
MAX_PENDING_BYTES = 16 << 20  # rows kept in memory while their file cannot be written


def _escape(col: pd.Series) -> pd.Series:
    text = col.astype(str)
    return text.where(~text.str.startswith(FORMULA_START), "'" + text)


def _unescape(col: pd.Series) -> pd.Series:
    return col.where(~col.str.startswith("'"), col.str[1:])


def csv_bytes(frame: pd.DataFrame) -> bytes:
    """Rows as the streamed files hold them: every text field quoted (a name may hold a comma,
    a quote or a line break), and a text that starts like a spreadsheet formula (= + - @, a tab
    or a carriage return) or with the escape ' itself written with a leading '."""
    frame = frame.copy()
    for c in TEXT_COLUMNS:
        if c in frame.columns and len(frame):
            frame[c] = _escape(frame[c])
    return frame.to_csv(
        header=False, index=False, na_rep="nan", quoting=csv.QUOTE_NONNUMERIC, lineterminator="\n"
    ).encode()


class StreamedFiles:
    """windows.csv and inferences.csv in out_dir: rows appended as they are integrated (status
    "provisional") and written through at once, so that a killed process keeps them; rewritten
    whole at stop with the final figures (status "final"), through an O_EXCL temporary file and
    a rename. Files are opened without following symbolic links (storage.open_append).

    A write error (a full disk) never raises into the coordinator: the rows wait in memory (at
    most MAX_PENDING_BYTES per file, the oldest dropped beyond that and counted), the next
    append tries again, and stats() says what was lost. Rows are written whole and in order:
    a row cut by a full disk is completed before the next one."""

    def __init__(self, out_dir: str):
        from aipm_fast.storage import open_append

        os.makedirs(out_dir, exist_ok=True)
        self.paths = {"windows": os.path.join(out_dir, "windows.csv"), "marks": os.path.join(out_dir, "inferences.csv")}
        self._fds: dict[str, int | None] = {}
        self._ours_from = {}  # byte offset where this session's rows begin: earlier sessions' stay
        self._pending: dict[str, deque] = {k: deque() for k in self.paths}  # [bytes, rows, bytes written]
        self.rows_lost = {k: 0 for k in self.paths}
        self.write_errors = 0
        self.last_error = ""
        for key, columns in (("windows", WINDOW_COLUMNS), ("marks", MARK_COLUMNS)):
            fd = open_append(self.paths[key])
            self._fds[key] = fd
            size = os.fstat(fd).st_size
            if size == 0:
                header = (",".join(columns) + "\n").encode()
                self._pending[key].append([header, 0, 0])
                size = len(header)
                self._send(key)
            self._ours_from[key] = size

    def _send(self, key: str) -> None:
        from aipm_fast.storage import _os_write

        fd, pending = self._fds[key], self._pending[key]
        while pending and fd is not None:
            chunk = pending[0]
            try:
                chunk[2] += _os_write(fd, memoryview(chunk[0])[chunk[2] :])
            except OSError as exc:
                self.write_errors += 1
                self.last_error = f"{self.paths[key]}: {exc.strerror or exc}"
                self._bound(key)
                return
            if chunk[2] >= len(chunk[0]):
                pending.popleft()

    def _bound(self, key: str) -> None:
        pending = self._pending[key]
        size = sum(len(c[0]) - c[2] for c in pending)
        while size > MAX_PENDING_BYTES and len(pending) > 1:
            drop = pending[1] if pending[0][2] else pending[0]  # a row begun on disk is finished first
            pending.remove(drop)
            size -= len(drop[0])
            self.rows_lost[key] += drop[1]

    def _append(self, key: str, frame: pd.DataFrame) -> None:
        if len(frame):
            self._pending[key].append([csv_bytes(frame), len(frame), 0])
            self._send(key)

    def stats(self) -> dict:
        """What could not be written: rows lost (dropped) and waiting, per file; write errors."""
        return {
            "rows_lost": {os.path.basename(self.paths[k]): n for k, n in self.rows_lost.items()},
            "rows_waiting": {os.path.basename(self.paths[k]): sum(c[1] for c in q) for k, q in self._pending.items()},
            "write_errors": self.write_errors,
            "last_error": self.last_error,
        }

    def read_marks(self) -> pd.DataFrame:
        """This session's marks as streamed, those still waiting to be written included (what
        earlier sessions appended is not read)."""
        with open(self.paths["marks"], "rb") as f:
            f.seek(self._ours_from["marks"])
            data = f.read() + b"".join(bytes(memoryview(c[0])[c[2] :]) for c in self._pending["marks"])
        numbers = [c for c in MARK_COLUMNS if c not in ("window", "domain", "part", "additive", "channel", "status")]
        rows = pd.read_csv(
            io.BytesIO(data),
            header=None,
            names=MARK_COLUMNS,
            keep_default_na=False,
            na_values={c: ["nan"] for c in numbers},
            dtype={"window": str, "domain": str, "part": str, "additive": str, "channel": str, "status": str},
        )
        for c in ("window", "domain", "channel"):
            rows[c] = _unescape(rows[c])
        return rows

    def append_windows(self, frame: pd.DataFrame) -> None:
        self._append("windows", frame)

    def append_marks(self, frame: pd.DataFrame) -> None:
        self._append("marks", frame)

    def rewrite(self, windows: pd.DataFrame, marks: pd.DataFrame) -> None:
        """The final figures, replacing this session's provisional rows; on a write error the
        provisional file stays as it is (counted in stats())."""
        from aipm_fast.storage import write_atomic

        for key, frame in (("windows", windows), ("marks", marks)):
            self._send(key)
            try:
                with open(self.paths[key], "rb") as old:
                    before = old.read(self._ours_from[key])
                write_atomic(self.paths[key], before + csv_bytes(frame))
            except OSError as exc:
                self.write_errors += 1
                self.last_error = f"{self.paths[key]}: {exc.strerror or exc} (the provisional rows are kept)"
            else:
                if key == "windows":  # rewritten from memory, whole; lost marks stay lost
                    self.rows_lost[key] = 0
                self._pending[key].clear()

    def close(self) -> None:
        for key, fd in self._fds.items():
            if fd is not None:
                self.rows_lost[key] += sum(c[1] for c in self._pending[key])
                self._pending[key].clear()
                os.close(fd)
                self._fds[key] = None

    def abandon(self) -> None:
        """In a forked child: close this process's copies of the fds, write nothing."""
        for key, fd in self._fds.items():
            if fd is not None:
                os.close(fd)
                self._fds[key] = None
            self._pending[key].clear()
