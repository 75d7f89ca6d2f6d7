"""Integrated marks kept compactly: at most 32 bytes per mark and domain in memory.

A mark (one inference or step) is stored as one record of a numpy structured array: its index
(relative to its chunk's first), its window (a code into a table of names), its start and end
(int64 ns), and per domain its energy and uncertainty (float32: seven significant digits, far
finer than any sensor), whether it is an estimate, and which of the domain's ranked channels
answered. That is 22 bytes per mark plus 10 per domain. Chunks are merged as they accumulate
(each at least twice the size of the next), so their number grows with the log of the marks
and their overhead per mark vanishes; with a `keep_marks` bound (marks streamed to disk) the
oldest chunks are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aipm_fast.sources.base import Channel

MAX_WINDOW_NAMES = 65_535


@dataclass
class MarkBatch:
    """Marks integrated together, unpacked: per domain, the answering channel id (-1: none) and
    its figures, unscaled; the scale is applied when read."""

    index: np.ndarray  # int64
    window: np.ndarray  # object (str)
    start_ns: np.ndarray  # int64
    end_ns: np.ndarray  # int64
    energy: dict  # domain -> (energy J, uncertainty J, estimate bool, channel id int)


class TimedMarks:
    """Marks timed but not integrated yet (readings have not passed their end), as arrays: a
    drain adds its newly timed marks at once and takes those now covered with one mask, so the
    coordinator's Python per drain does not grow with the marks waiting (at 1,000 marks a second
    and half a second's wait, hundreds)."""

    def __init__(self):
        self.index = np.empty(0, np.int64)
        self.window = np.empty(0, object)
        self.start_ns = np.empty(0, np.int64)
        self.end_ns = np.empty(0, np.int64)

    def __len__(self) -> int:
        return self.index.size

    def add(self, index, window, start_ns, end_ns) -> None:
        self.index = np.concatenate([self.index, np.asarray(index, np.int64)])
        self.window = np.concatenate([self.window, np.array(window, dtype=object)])
        self.start_ns = np.concatenate([self.start_ns, np.asarray(start_ns, np.int64)])
        self.end_ns = np.concatenate([self.end_ns, np.asarray(end_ns, np.int64)])

    def take(self, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(index, window, start_ns, end_ns) of the marks under `mask`, which leave; the rest stay."""
        out = self.index[mask], self.window[mask], self.start_ns[mask], self.end_ns[mask]
        keep = ~mask
        self.index, self.window = self.index[keep], self.window[keep]
        self.start_ns, self.end_ns = self.start_ns[keep], self.end_ns[keep]
        return out


class MarkStore:
    def __init__(self, ranked: dict[str, list[Channel]], keep_marks: int | None = None):
        self.domains = list(ranked)
        self._ids = {d: np.array([c.id for c in chs], dtype=np.int64) for d, chs in ranked.items()}
        fields = [("index", "<i4"), ("window", "<u2"), ("start_ns", "<i8"), ("end_ns", "<i8")]
        for k in range(len(self.domains)):
            fields += [(f"e{k}", "<f4"), (f"u{k}", "<f4"), (f"est{k}", "u1"), (f"ch{k}", "i1")]
        self.dtype = np.dtype(fields)  # packed: no padding between fields
        self.keep_marks = keep_marks
        self._chunks: list[tuple[int, np.ndarray]] = []  # (index base, records)
        self._names: list[str] = []
        self._codes: dict[str, int] = {}
        self.first = 0  # position (count of marks) of the first mark still kept
        self.count = 0  # marks stored so far

    @property
    def nbytes(self) -> int:
        """Bytes the kept marks take (the records; the chunk list is a few objects)."""
        return sum(a.nbytes for _, a in self._chunks)

    def _code(self, name: str) -> int:
        code = self._codes.get(name)
        if code is None:
            if len(self._names) >= MAX_WINDOW_NAMES:
                raise ValueError(f"more than {MAX_WINDOW_NAMES:,} distinct window names in one Meter session")
            code = self._codes[name] = len(self._names)
            self._names.append(name)
        return code

    def append(self, batch: MarkBatch) -> None:
        n = batch.index.size
        if not n:
            return
        base = int(batch.index.min())
        rec = np.empty(n, self.dtype)
        rec["index"] = batch.index - base
        rec["window"] = [self._code(str(w)) for w in batch.window]
        rec["start_ns"], rec["end_ns"] = batch.start_ns, batch.end_ns
        for k, d in enumerate(self.domains):
            e, u, est, cid = batch.energy[d]
            rec[f"e{k}"], rec[f"u{k}"], rec[f"est{k}"] = e, u, est
            rank = np.full(n, -1, np.int8)
            for r, channel_id in enumerate(self._ids[d]):
                rank[cid == channel_id] = r
            rec[f"ch{k}"] = rank
        self._chunks.append((base, rec))
        self.count += n
        self._merge()
        self._drop()

    def _merge(self) -> None:
        # with a bound, chunks stay small enough to be dropped in steps of a quarter of it
        limit = self.keep_marks // 4 if self.keep_marks is not None else None
        while len(self._chunks) >= 2 and self._chunks[-2][1].size <= 2 * self._chunks[-1][1].size:
            (b0, a0), (b1, a1) = self._chunks[-2], self._chunks[-1]
            if limit is not None and a0.size + a1.size > limit:
                break
            base = min(b0, b1)
            a0 = a0.copy()
            a1 = a1.copy()
            a0["index"] += b0 - base
            a1["index"] += b1 - base
            self._chunks[-2:] = [(base, np.concatenate([a0, a1]))]

    def _drop(self) -> None:
        if self.keep_marks is None:
            return
        while len(self._chunks) > 1 and self.count - self.first - self._chunks[0][1].size >= self.keep_marks:
            self.first += self._chunks.pop(0)[1].size

    def batches(self, since: int = 0) -> list[MarkBatch]:
        """The kept marks from position `since` on (positions count marks from the first), unpacked."""
        out = []
        pos = self.first
        for base, rec in list(self._chunks):
            end = pos + rec.size
            if end > since:
                out.append(self._unpack(base, rec[max(0, since - pos) :]))
            pos = end
        return out

    def _unpack(self, base: int, rec: np.ndarray) -> MarkBatch:
        names = np.array(self._names, dtype=object)
        energy = {}
        for k, d in enumerate(self.domains):
            rank = rec[f"ch{k}"].astype(np.int64)
            ids = np.where(rank >= 0, self._ids[d][np.clip(rank, 0, None)] if self._ids[d].size else -1, -1)
            energy[d] = (
                rec[f"e{k}"].astype(np.float64),
                rec[f"u{k}"].astype(np.float64),
                rec[f"est{k}"].astype(bool),
                ids,
            )
        return MarkBatch(
            index=rec["index"].astype(np.int64) + base,
            window=names[rec["window"]] if names.size else np.array([], dtype=object),
            start_ns=rec["start_ns"].copy(),
            end_ns=rec["end_ns"].copy(),
            energy=energy,
        )
