"""Writing samples to disk as they are drained, so that a stopped run keeps what it read."""
from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SAMPLE_SCHEMA = pa.schema([
    ("t_ns", pa.int64()),
    ("channel", pa.dictionary(pa.int32(), pa.string())),
    ("value", pa.float64()),
    ("flags", pa.uint32()),
])


class ParquetSampleWriter:
    """Appends drained records to a Parquet file, one row group per drain.

    Channel names are stored as a dictionary column built from the channel ids, so writing
    creates no Python object per sample.
    """

    def __init__(self, path: str, channel_names):
        self.path = path
        self._names = pa.array([str(n) for n in channel_names], pa.string())
        self._writer = pq.ParquetWriter(path, SAMPLE_SCHEMA)
        self.rows = 0

    def __call__(self, records: np.ndarray) -> None:
        if not records.size:
            return
        channel = pa.DictionaryArray.from_arrays(pa.array(records["channel"].astype(np.int32)), self._names)
        table = pa.Table.from_arrays(
            [pa.array(records["t_ns"]), channel, pa.array(records["value"]), pa.array(records["flags"])],
            schema=SAMPLE_SCHEMA)
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
