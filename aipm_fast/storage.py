"""Writing samples to disk as they are drained, so that a stopped run keeps what it read."""

from __future__ import annotations

import errno
import io
import json
import os
import re
import secrets
import stat
import time

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


class UnsafeOutputError(OSError):
    """An output path that the meter refuses to write through (a symbolic link, a hard link, a
    file that is not a regular file): a planted link must not make it overwrite another file."""


def _os_write(fd: int, data) -> int:
    """Every byte of the meter's output files goes through here (tests fake a full disk on it)."""
    return os.write(fd, data)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = _os_write(fd, view)
        view = view[n:]


def check_target(path: str) -> None:
    """Refuse a path that is a symbolic link or anything but a regular file (absent is fine)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeOutputError(
            errno.ELOOP, f"{path} is a symbolic link: refusing to write through it (remove it or use another folder)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeOutputError(errno.EEXIST, f"{path} exists and is not a regular file: refusing to replace it")


def open_append(path: str) -> int:
    """An fd appending to `path` (created 0644 if absent), never through a symbolic link, nor
    into a hard-linked or special file."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            check_target(path)  # names the link
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
        os.close(fd)
        what = "not a regular file" if not stat.S_ISREG(st.st_mode) else "a hard link to another file"
        raise UnsafeOutputError(errno.EEXIST, f"{path} is {what}: refusing to append to it")
    return fd


def create_temp(path: str, dir_fd: int | None = None) -> tuple[int, str]:
    """A new hidden file beside `path`, created with O_EXCL (never an existing file or link):
    (fd, its name, relative to dir_fd when given)."""
    folder, base = os.path.split(path)
    for _ in range(100):
        tmp = os.path.join(folder, f".{base}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
        except FileExistsError:
            continue
        return fd, tmp
    raise FileExistsError(errno.EEXIST, f"no free temporary name beside {path}")


def write_atomic(path: str, data: bytes, dir_fd: int | None = None) -> None:
    """Write a whole file through an O_EXCL temporary and a rename: a reader never sees half a
    file, a planted link at `path` is refused, and a failed write leaves `path` as it was."""
    if dir_fd is None:
        check_target(path)
    fd, tmp = create_temp(path, dir_fd)
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        _unlink_quietly(tmp, dir_fd)
        raise


def _unlink_quietly(path: str, dir_fd: int | None = None) -> None:
    try:
        os.unlink(path, dir_fd=dir_fd)
    except OSError:
        pass


class _FdFile(io.RawIOBase):
    """A writable file over an fd whose writes go through write_all (for pyarrow's writer)."""

    def __init__(self, fd: int):
        self.fd = fd

    def writable(self) -> bool:
        return True

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()

    def write(self, data) -> int:
        write_all(self.fd, data)
        return len(data)


def parts_folder(path: str) -> str:
    """Where a sample file's parts are written while recording: samples.parquet -> samples/."""
    return path[: -len(".parquet")] if path.endswith(".parquet") else path + ".parts"


PART_NAME = re.compile(r"^part-(\d+)\.parquet$")


def list_parts(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if PART_NAME.match(n))


class ParquetSampleWriter:
    """Writes drained records as a folder of complete Parquet parts, finalised into one file.

    While recording, records are kept in memory for at most `part_every_s` and then written as
    one complete part, `<name>/part-000001.parquet` beside `<name>.parquet`, through an O_EXCL
    temporary and a rename: a process killed at any moment (SIGKILL, the OOM killer) leaves
    whole parts that `pd.read_parquet(folder)` reads, losing at most the last `part_every_s`.
    `close()` merges the parts into `path` and removes the folder; if that fails (a full disk),
    the parts stay and `location` says so.

    Channel names are stored as a dictionary column built from the channel ids, so writing
    creates no Python object per sample. `metadata` (Recorder.sample_metadata(): every
    channel's and domain's declared meaning) goes into every part's schema, so that a recording
    can be replayed through the energy policy without the hardware (aipm_fast.replay).

    A write error (a full disk) never raises out of a drain: the records wait in memory (at
    most `max_pending_rows`, the oldest dropped beyond that and counted in `rows_lost`), and
    the next part is tried a part period later. `stats()` says what was written and lost.
    """

    def __init__(
        self,
        path: str,
        channel_names,
        metadata: dict | None = None,
        *,
        part_every_s: float = 1.0,
        max_pending_rows: int = 4_000_000,
    ):
        self.path = path
        self.parts_dir = parts_folder(path)
        self._names = pa.array([str(n) for n in channel_names], pa.string())
        schema = SAMPLE_SCHEMA
        if metadata is not None:
            schema = schema.with_metadata({META_KEY: json.dumps(metadata, default=jsonable).encode()})
        self._schema = schema
        self.part_every_s = part_every_s
        self.max_pending_rows = max_pending_rows
        check_target(path)
        try:
            os.mkdir(self.parts_dir, 0o755)
        except FileExistsError:
            if os.path.islink(self.parts_dir) or not os.path.isdir(self.parts_dir):
                raise UnsafeOutputError(
                    errno.EEXIST, f"{self.parts_dir} exists and is not a folder of ours: refusing to write into it"
                ) from None
            if list_parts(self.parts_dir):
                raise FileExistsError(
                    errno.EEXIST,
                    f"{self.parts_dir} holds the parts of an earlier recording that was not finalised: "
                    "move it away (pd.read_parquet reads it) or choose another folder",
                ) from None
        self._dir_fd: int | None = os.open(self.parts_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._last_part = time.monotonic()
        self.parts = 0
        self.rows = 0  # written to parts
        self.rows_lost = 0  # dropped after write errors
        self.write_errors = 0
        self.last_error = ""
        self.finalised = False

    @property
    def location(self) -> str:
        """The one file once finalised, else the folder of parts."""
        return self.path if self.finalised else self.parts_dir

    def __call__(self, records: np.ndarray) -> None:
        if records.size and self._dir_fd is not None:
            channel = pa.DictionaryArray.from_arrays(pa.array(records["channel"].astype(np.int32)), self._names)
            table = pa.Table.from_arrays(
                [pa.array(records["t_ns"]), channel, pa.array(records["value"]), pa.array(records["flags"])],
                schema=self._schema,
            )
            self._pending.append(table)
            self._pending_rows += records.size
        if time.monotonic() - self._last_part >= self.part_every_s:
            self.flush()

    def flush(self) -> bool:
        """Write what is pending as one part; False (and counted) if the write failed."""
        self._last_part = time.monotonic()
        if not self._pending or self._dir_fd is None:
            return True
        table = pa.concat_tables(self._pending)
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        name = f"part-{self.parts + 1:06d}.parquet"
        try:
            write_atomic(name, sink.getvalue().to_pybytes(), dir_fd=self._dir_fd)
        except OSError as exc:
            self.write_errors += 1
            self.last_error = f"{os.path.join(self.parts_dir, name)}: {exc.strerror or exc}"
            while self._pending_rows > self.max_pending_rows and len(self._pending) > 1:
                dropped = self._pending.pop(0)
                self._pending_rows -= dropped.num_rows
                self.rows_lost += dropped.num_rows
            return False
        self.parts += 1
        self.rows += table.num_rows
        self._pending, self._pending_rows = [], 0
        return True

    def close(self) -> None:
        """Write the last part and merge every part into `path` (the parts stay if that fails)."""
        if self._dir_fd is None:
            return
        if not self.flush():
            self.rows_lost += self._pending_rows
            self._pending, self._pending_rows = [], 0
        try:
            self._merge()
        except OSError as exc:
            self.write_errors += 1
            self.last_error = f"{self.path}: {exc.strerror or exc} (the parts in {self.parts_dir} are kept)"
        else:
            for name in list_parts(self.parts_dir):
                _unlink_quietly(name, self._dir_fd)
            try:
                os.rmdir(self.parts_dir)
            except OSError:
                pass  # something else was put there: left as it is
            self.finalised = True
        os.close(self._dir_fd)
        self._dir_fd = None

    def _merge(self) -> None:
        check_target(self.path)
        fd, tmp = create_temp(self.path)
        raw = _FdFile(fd)
        try:
            with pq.ParquetWriter(pa.PythonFile(raw, mode="w"), self._schema) as out:
                for name in list_parts(self.parts_dir):
                    out.write_table(pq.read_table(os.path.join(self.parts_dir, name)).cast(self._schema))
            raw.close()
            os.replace(tmp, self.path)
        except BaseException:
            raw.close()
            _unlink_quietly(tmp)
            raise

    def stats(self) -> dict:
        return {
            "location": self.location,
            "finalised": self.finalised,
            "parts": self.parts,
            "rows_written": self.rows,
            "rows_pending": self._pending_rows,
            "rows_lost": self.rows_lost,
            "write_errors": self.write_errors,
            "last_error": self.last_error,
        }

    def abandon(self) -> None:
        """In a forked child: forget the parent's files without writing or removing anything."""
        if self._dir_fd is not None:
            os.close(self._dir_fd)
            self._dir_fd = None
        self._pending, self._pending_rows = [], 0


def write_json(path: str, data) -> None:
    """Write through an O_EXCL temporary file and a rename, so a reader never sees half a file
    and a planted link at `path` is refused (UnsafeOutputError)."""
    write_atomic(path, (json.dumps(data, indent=2, default=jsonable) + "\n").encode())


def jsonable(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def samples_source(path: str) -> str:
    """What to read for a samples.parquet: the file, or, for a recording that was killed (or not
    yet finalised), its folder of parts; a folder given directly is read as parts."""
    if not os.path.exists(path) and path.endswith(".parquet") and os.path.isdir(parts_folder(path)):
        return parts_folder(path)
    return path


def read_sample_schema(path: str) -> pa.Schema:
    """The schema of a sample file or folder of parts (every part carries the same)."""
    src = samples_source(path)
    if os.path.isdir(src):
        parts = list_parts(src)
        if not parts:
            raise FileNotFoundError(errno.ENOENT, f"{src}: a folder without any part-*.parquet")
        return pq.read_schema(os.path.join(src, parts[0]))
    return pq.read_schema(src)


def read_sample_table(path: str, columns=None) -> pa.Table:
    """The samples of a file or of a folder of parts, as one table."""
    src = samples_source(path)
    if os.path.isdir(src):
        schema = read_sample_schema(src)
        tables = [pq.read_table(os.path.join(src, n), columns=columns) for n in list_parts(src)]
        return pa.concat_tables(tables) if tables else schema.empty_table()
    return pq.read_table(src, columns=columns)


def read_sample_metadata(path: str) -> dict | None:
    """The channels' and domains' meaning stored in a samples.parquet or a folder of its parts
    (None for a file without)."""
    meta = read_sample_schema(path).metadata or {}
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
