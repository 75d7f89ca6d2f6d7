"""A recorded samples.parquet played back through either energy path, without the hardware.

A recording carries what each channel and domain means (storage.read_sample_metadata), so the
offline path (offline.ChannelCurves, as `record` uses) and the Meter's online path (the
coordinator, fed in drain-sized chunks on the recording's own clock) can both be run on it:
they must give the same energies, and a test holds them to it.
"""

from __future__ import annotations

import numpy as np

from aipm_fast import offline
from aipm_fast._native import RECORD_DTYPE
from aipm_fast.sources.base import Channel, Discovery, Domain
from aipm_fast.storage import read_sample_metadata, read_sample_table


class Recording:
    """The readings and meaning of one samples.parquet, or of the folder of parts that a killed
    recording leaves (storage.samples_source)."""

    def __init__(self, path: str):
        meta = read_sample_metadata(path)
        if meta is None:
            raise ValueError(
                f"{path}: no channel metadata (written before recordings carried it): it cannot be replayed"
            )
        self.channels = {c["id"]: Channel.from_dict(c) for c in meta["channels"]}
        self.domains = {d: Domain(**m) for d, m in meta["domains"].items()}
        frame = read_sample_table(path).to_pandas()
        ids = {c.name: cid for cid, c in self.channels.items()}
        known = frame["channel"].astype(str).isin(ids)
        frame = frame[known]
        records = np.empty(len(frame), RECORD_DTYPE)
        records["t_ns"] = frame["t_ns"].to_numpy()
        records["value"] = frame["value"].to_numpy()
        records["channel"] = frame["channel"].astype(str).map(ids).to_numpy()
        records["flags"] = frame["flags"].to_numpy()
        self.records = records

    def series(self, channel_id: int) -> tuple[np.ndarray, np.ndarray]:
        sel = self.records[self.records["channel"] == channel_id]
        order = np.argsort(sel["t_ns"], kind="stable")
        return sel["t_ns"][order], sel["value"][order]

    def offline_energies(self, a_ns: int, b_ns: int, health: dict[int, str] | None = None):
        """{domain: DomainEnergy} over [a, b] by the offline path."""
        curves = offline.ChannelCurves(self.channels.values(), self.series)
        return offline.domain_energies(curves, health or {}, a_ns, b_ns)


class ReplayRecorder:
    """What the coordinator needs of a Recorder, delivering a Recording's records in order, in
    chunks of `chunk_s` of its own time, with `clock()` the recording's time so far."""

    def __init__(self, recording: Recording, chunk_s: float = 0.1, health: dict[int, str] | None = None):
        self.recording = recording
        self._health = dict(health or {})  # channel id -> status to replay (default: all live)
        self.channels = recording.channels
        self.sensor_calibrations: dict = {}  # {channel id: (SensorResponse, entry)}, as a Recorder's
        self.discovery = Discovery(channels=list(recording.channels.values()), domains=dict(recording.domains))
        order = np.argsort(recording.records["t_ns"], kind="stable")
        self._records = recording.records[order]
        self.start_ns = int(self._records["t_ns"][0]) if self._records.size else 0
        self.stop_ns = int(self._records["t_ns"][-1]) if self._records.size else 0
        self._chunk_ns = int(chunk_s * 1e9)
        self._next = 0
        self.now_ns = self.start_ns
        self._sinks: list = []

    def add_sink(self, sink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink) -> None:
        self._sinks.remove(sink)

    def clock(self) -> int:
        return self.now_ns

    @property
    def done(self) -> bool:
        return self._next >= self._records.size

    def drain(self) -> np.ndarray:
        """The records of the next chunk of recorded time."""
        self.now_ns += self._chunk_ns
        end = int(np.searchsorted(self._records["t_ns"], self.now_ns, side="right"))
        chunk = self._records[self._next : end]
        self._next = end
        if chunk.size:
            for sink in self._sinks:
                sink(chunk)
        return chunk

    def sampler_stats(self) -> dict:
        return {"overflows": 0}  # what the recording lost is not in it

    def health(self) -> dict[int, str]:
        return dict(self._health)
