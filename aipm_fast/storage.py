"""Writing samples to disk as they are drained, so that a stopped run keeps what it read."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SAMPLE_SCHEMA = pa.schema(
    [
        ("t_ns", pa.int64()),
        ("channel", pa.dictionary(pa.int32(), pa.string())),
        ("value", pa.float64()),
        ("flags", pa.uint32()),
    ]
)


#: schema metadata key holding what the channels and domains mean (Recorder.sample_metadata)
META_KEY = b"aipm_fast"


class ParquetSampleWriter:
    """Appends drained records to a Parquet file, one row group per drain.

    Channel names are stored as a dictionary column built from the channel ids, so writing
    creates no Python object per sample. `metadata` (Recorder.sample_metadata(): every
    channel's and domain's declared meaning) goes into the file's schema, so that a recording
    can be replayed through the energy policy without the hardware (aipm_fast.replay).
    """

    def __init__(self, path: str, channel_names, metadata: dict | None = None):
        self.path = path
        self._names = pa.array([str(n) for n in channel_names], pa.string())
        schema = SAMPLE_SCHEMA
        if metadata is not None:
            schema = schema.with_metadata({META_KEY: json.dumps(metadata, default=_jsonable).encode()})
        self._schema = schema
        self._writer = pq.ParquetWriter(path, schema)
        self.rows = 0

    def __call__(self, records: np.ndarray) -> None:
        if not records.size:
            return
        channel = pa.DictionaryArray.from_arrays(pa.array(records["channel"].astype(np.int32)), self._names)
        table = pa.Table.from_arrays(
            [pa.array(records["t_ns"]), channel, pa.array(records["value"]), pa.array(records["flags"])],
            schema=self._schema,
        )
        self._writer.write_table(table)
        self.rows += records.size

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def write_json(path: str, data) -> None:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=_jsonable)
        f.write("\n")
    os.replace(tmp, path)


def _jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def read_sample_metadata(path: str) -> dict | None:
    """The channels' and domains' meaning stored in a samples.parquet (None for a file without)."""
    meta = pq.read_schema(path).metadata or {}
    return json.loads(meta[META_KEY]) if META_KEY in meta else None


def sample_readings(path: str) -> dict[str, str] | None:
    """{channel name: reading} (aipm_fast.sources.base: counter, mean_power, ...) of a
    samples.parquet, or None for a file without metadata."""
    meta = read_sample_metadata(path)
    if meta is None:
        return None
    return {f"{c['domain']}.{c['label']}": c["reading"] for c in meta["channels"]}


def legacy_reading(name: str) -> str | None:
    """What a channel measures, from its name alone: only for samples.parquet files written
    before recordings carried their channels' meaning (everything newer says it)."""
    from aipm_fast.sources.base import COUNTER, INSTANT_POWER

    label = name.rsplit(".", 1)[-1]
    if label == "energy":
        return COUNTER
    if label.startswith("power"):
        return INSTANT_POWER
    return None
