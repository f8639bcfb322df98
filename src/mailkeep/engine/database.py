"""One database: a table file (.edb, SQLite in WAL mode) and a streaming file (.stm).

Invariants:
- The .edb holds the rows of the layers above, the header, and ``applied_lsn``: the end of
  the last logged transaction whose effects it contains, updated in the same SQLite
  transaction as those effects, so replay (which skips everything at or before it) is
  idempotent.
- SQLite runs with ``synchronous=NORMAL`` and no automatic WAL checkpoints: commits are not
  fsync'd by SQLite because the log stream already made them durable; the engine checkpoints
  the WAL into the .edb itself and fsyncs both files before the storage-group checkpoint may
  pass them (docs/decisions/0002-sqlite-settings.md).
- Every row carries a CRC of its values (``_ck``) and every stream a SHA-256, checked on each
  read: a damaged record is -1018, never served.
- Stream data is written to the .stm at offsets beyond everything committed, so an aborted
  transaction's data is never referenced; the same bytes are in the log for replay.
"""

from __future__ import annotations

import errno
import hashlib
import os
import sqlite3
import struct
import threading
import zlib
from collections.abc import Iterator
from typing import Any

from mailkeep.engine import codec, errors
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.header import DatabaseHeader
from mailkeep.engine.schema import TableSpec

STM_MAGIC = b"MKSTM\x00\x01\x00"
STM_HEADER = 4096
_HDR = struct.Struct("<I")

ENGINE_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS _header (id INTEGER PRIMARY KEY CHECK (id = 1), "
    "data BLOB NOT NULL, applied_lsn INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS _tables (name TEXT PRIMARY KEY, spec BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS _streams (id INTEGER PRIMARY KEY, offset INTEGER NOT NULL, "
    "length INTEGER NOT NULL, sha256 BLOB NOT NULL)",
]


def _connect(path: str, *, readonly: bool = False) -> sqlite3.Connection:
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 10000")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("PRAGMA wal_autocheckpoint = 0")
    return conn


def encode_header(h: DatabaseHeader) -> bytes:
    body = h.encode()
    return _HDR.pack(zlib.crc32(body)) + body


def decode_header(blob: bytes, path: str) -> DatabaseHeader:
    try:
        (crc,) = _HDR.unpack_from(blob, 0)
        body = bytes(blob[4:])
        if zlib.crc32(body) != crc:
            raise ValueError("header checksum mismatch")
        return DatabaseHeader.decode(body)
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise EseError(
            errors.ReadVerifyFailure,
            f"the header of database {path} is damaged ({e}). Restore the database from "
            "backup; 'mailkeep eseutil /p' can rebuild a header as a last resort.",
            path=path,
        ) from e


def row_check(spec: TableSpec, row: dict[str, Any]) -> int:
    return zlib.crc32(codec.encode([row.get(c) for c in spec.columns]))


def sqlite_error(e: sqlite3.Error, path: str) -> EseError:
    msg = str(e)
    code = errors.DatabaseCorrupted if "not a database" in msg else errors.ReadVerifyFailure
    if isinstance(e, sqlite3.OperationalError) and ("disk" in msg and "full" in msg):
        code = errors.DiskFull
    elif isinstance(e, sqlite3.OperationalError) and "disk I/O" in msg:
        code = errors.DiskIO
    elif isinstance(e, sqlite3.OperationalError) and "unable to open" in msg:
        code = errors.FileNotFound
    return EseError(
        code,
        f"database {path}: {msg}. Check the disk; if the file is damaged, restore it from "
        "backup (or run 'mailkeep eseutil /k' to locate the damage).",
        path=path,
    )


def read_header(path: str) -> tuple[DatabaseHeader, int]:
    """Header and applied position of a database file, read without changing it."""
    if not os.path.exists(path):
        raise EseError(errors.FileNotFound, f"database file {path} not found", path=path)
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT data, applied_lsn FROM _header WHERE id = 1").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        if "no such table" in str(e):  # a SQLite file, but not a database of ours
            raise EseError(errors.DatabaseCorrupted, f"{path} is not a Mailkeep database ({e})", path=path) from e
        raise sqlite_error(e, path) from e
    if row is None:
        raise EseError(errors.DatabaseCorrupted, f"{path} has no database header", path=path)
    return decode_header(row[0], path), int(row[1])


def create_files(io: FileIO, edb: str, stm: str, header: DatabaseHeader) -> None:
    for p in (edb, stm):
        if os.path.exists(p):
            raise EseError(
                errors.FileAccessDenied,
                f"{p} already exists; refusing to overwrite a database file",
                path=p,
            )
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
    conn = _connect(edb)
    try:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("BEGIN")
        for sql in ENGINE_SCHEMA:
            conn.execute(sql)
        conn.execute("INSERT INTO _header VALUES (1, ?, 0)", (encode_header(header),))
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    fd = io.open(stm, create=True, exclusive=True)
    try:
        io.pwrite(fd, stm_header(header.signature), 0)
        io.fsync(fd)
    finally:
        io.close(fd)
    io.fsync_path(edb)
    for d in {os.path.dirname(os.path.abspath(p)) for p in (edb, stm)}:
        io.fsync_dir(d)


def stm_header(signature: str) -> bytes:
    body = codec.encode({"signature": signature})
    data = STM_MAGIC + _HDR.pack(zlib.crc32(body)) + _HDR.pack(len(body)) + body
    return data + bytes(STM_HEADER - len(data))


def read_stm_signature(path: str) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(STM_HEADER)
    except FileNotFoundError as e:
        raise EseError(
            errors.SLVStreamingFileMissing,
            f"the streaming file {path} is missing. Restore the .edb and .stm together from "
            "backup.",
            path=path,
        ) from e
    try:
        if data[:8] != STM_MAGIC:
            raise ValueError("bad magic")
        (crc,) = _HDR.unpack_from(data, 8)
        (n,) = _HDR.unpack_from(data, 12)
        body = data[16 : 16 + n]
        if zlib.crc32(body) != crc:
            raise ValueError("checksum mismatch")
        return str(codec.decode(body)["signature"])
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise EseError(
            errors.ReadVerifyFailure,
            f"the header of streaming file {path} is damaged ({e}); restore it from backup",
            path=path,
        ) from e


class Database:
    """An open database. All writes go through the single writer connection, which the
    storage group serializes; readers get one connection per thread."""

    def __init__(self, io: FileIO, edb_path: str, stm_path: str) -> None:
        self.io = io
        self.edb_path = os.path.abspath(edb_path)
        self.stm_path = os.path.abspath(stm_path)
        self.name = os.path.splitext(os.path.basename(edb_path))[0]
        self.dbid = 0
        self._writer: sqlite3.Connection | None = None
        self._readers: list[sqlite3.Connection] = []
        self._idle: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        self.specs: dict[str, TableSpec] = {}
        self.header: DatabaseHeader
        self.applied_lsn = 0
        self.stm_fd = -1
        self.stm_end = STM_HEADER
        self.in_write = False
        self.backup_holds = 0  # while > 0 an online backup is copying the .edb: its WAL is not folded

    # -- lifecycle -------------------------------------------------------------------------
    def open(self) -> None:
        self.header, self.applied_lsn = read_header(self.edb_path)
        sig = read_stm_signature(self.stm_path)
        if sig != self.header.signature:
            raise EseError(
                errors.DatabaseStreamingFileMismatch,
                f"streaming file {self.stm_path} belongs to another database (signature {sig}, "
                f"database {self.edb_path} has {self.header.signature}). Restore both halves "
                "of the database from the same backup.",
                path=self.stm_path,
            )
        try:
            self._writer = _connect(self.edb_path)
            for name, blob in self._writer.execute("SELECT name, spec FROM _tables"):
                self.specs[name] = TableSpec.from_dict(codec.decode(blob))
        except sqlite3.Error as e:
            self.close()
            raise sqlite_error(e, self.edb_path) from e
        self.stm_fd = self.io.open(self.stm_path)
        self.stm_end = max(STM_HEADER, self.io.size(self.stm_fd))

    def close_readers(self) -> None:
        """Close every reader connection (a dismount must not wait for a slow reader)."""
        with self._readers_lock:
            for c in self._readers:
                try:
                    c.close()
                except sqlite3.Error:
                    pass
            self._readers.clear()
            self._idle.clear()

    def close(self) -> None:
        self.close_readers()
        if self._writer is not None:
            try:
                if self._writer.in_transaction:
                    self._writer.execute("ROLLBACK")
                self._writer.close()
            except sqlite3.Error:
                pass
            self._writer = None
        if self.stm_fd >= 0:
            self.io.close(self.stm_fd)
            self.stm_fd = -1

    def abandon(self) -> None:
        """Drop every handle without writing anything (simulated crash)."""
        self.close()

    @property
    def writer(self) -> sqlite3.Connection:
        if self._writer is None:
            raise EseError(errors.DatabaseNotFound, f"database {self.edb_path} is not open")
        return self._writer

    def reader(self) -> sqlite3.Connection:
        """A reader connection of its own (from a pool): read transactions may nest in one
        thread and run in many threads; give it back with :meth:`release_reader`."""
        with self._readers_lock:
            if self._writer is None:
                raise EseError(errors.DatabaseNotFound, f"database {self.edb_path} is not open")
            if self._idle:
                return self._idle.pop()
            conn = _connect(self.edb_path, readonly=True)
            self._readers.append(conn)
            return conn

    def release_reader(self, conn: sqlite3.Connection) -> None:
        with self._readers_lock:
            if conn in self._readers:
                self._idle.append(conn)

    # -- writer transaction ----------------------------------------------------------------
    def begin(self) -> None:
        try:
            self.writer.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as e:
            raise sqlite_error(e, self.edb_path) from e
        self.in_write = True

    def commit(self, applied_lsn: int, header: DatabaseHeader | None = None) -> None:
        try:
            if header is not None:
                self.writer.execute(
                    "UPDATE _header SET data = ?, applied_lsn = ? WHERE id = 1",
                    (encode_header(header), applied_lsn),
                )
            else:
                self.writer.execute("UPDATE _header SET applied_lsn = ? WHERE id = 1", (applied_lsn,))
            self.writer.execute("COMMIT")
        except sqlite3.Error as e:
            raise sqlite_error(e, self.edb_path) from e
        finally:
            self.in_write = False
        self.applied_lsn = applied_lsn
        if header is not None:
            self.header = header

    def rollback(self) -> None:
        self.in_write = False
        if self._writer is not None and self._writer.in_transaction:
            self._writer.execute("ROLLBACK")
        # Table specs may have been declared in the rolled-back transaction.
        self.specs = {
            n: TableSpec.from_dict(codec.decode(b))
            for n, b in self.writer.execute("SELECT name, spec FROM _tables")
        }

    def write_header(self, header: DatabaseHeader, applied_lsn: int | None = None) -> None:
        """Replace the header in its own SQLite transaction."""
        self.begin()
        self.commit(self.applied_lsn if applied_lsn is None else applied_lsn, header)

    def checkpoint(self) -> bool:
        """Make everything committed durable in the .edb and .stm. False if readers kept
        SQLite from completing its WAL checkpoint (try again later), or while an online backup
        copies the .edb (the main file must not change under the copy)."""
        if self.backup_holds:
            return False
        w = self.writer
        try:
            # A reader in the middle of a long read must not stall the storage group's
            # writers (the caller holds the write lock): give up quickly, retry later.
            w.execute("PRAGMA busy_timeout = 200")
            try:
                busy, _log, _done = w.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                w.execute("PRAGMA busy_timeout = 10000")
        except sqlite3.Error as e:
            raise sqlite_error(e, self.edb_path) from e
        if busy:
            return False
        self.io.fsync_path(self.edb_path)
        self.io.fsync(self.stm_fd)
        self.io.snapshot_sqlite(self.edb_path)
        return True

    # -- operations (live and replay) ------------------------------------------------------
    def spec(self, table: str) -> TableSpec:
        s = self.specs.get(table)
        if s is None:
            raise KeyError(f"table {table!r} is not declared in database {self.name}")
        return s

    def apply(self, op: list[Any]) -> None:
        """Apply one logged operation on the writer connection (idempotent)."""
        kind = op[0]
        w = self.writer
        if kind == "p":
            spec = self.spec(op[1])
            row = op[2]
            cols = ", ".join(f'"{c}"' for c in spec.columns)
            marks = ", ".join("?" for _ in spec.columns)
            w.execute(
                f"INSERT OR REPLACE INTO {spec.sql_name} ({cols}, _ck) VALUES ({marks}, ?)",
                [*(row.get(c) for c in spec.columns), row_check(spec, row)],
            )
        elif kind == "d":
            spec = self.spec(op[1])
            where = " AND ".join(f'"{c}" IS ?' for c in spec.primary_key)
            w.execute(f"DELETE FROM {spec.sql_name} WHERE {where}", list(op[2]))
        elif kind == "T":
            spec = TableSpec.from_dict(op[1])
            stmts = spec.create_sql()
            stmts[0] = stmts[0].replace(", PRIMARY KEY", ", _ck INTEGER, PRIMARY KEY")
            for sql in stmts:
                w.execute(sql)
            w.execute(
                "INSERT OR REPLACE INTO _tables VALUES (?, ?)",
                (spec.name, codec.encode(spec.to_dict())),
            )
            self.specs[spec.name] = spec
        elif kind == "s":
            w.execute("INSERT OR REPLACE INTO _streams VALUES (?, ?, ?, ?)", tuple(op[1:5]))
        elif kind == "x":
            w.execute("DELETE FROM _streams WHERE id = ?", (op[1],))
        else:
            raise ValueError(f"unknown logged operation {kind!r}")

    def write_stream_data(self, offset: int, data: bytes | memoryview) -> None:
        try:
            self.io.pwrite(self.stm_fd, data, offset)
        except OSError as e:
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            raise EseError(
                errors.DiskFull if full else errors.DiskIO,
                f"writing the streaming file {self.stm_path} failed ({e.strerror}). "
                + ("Free space on its disk; " if full else "Check the disk; ")
                + "transactions already acknowledged are not affected.",
                path=self.stm_path,
            ) from e
        self.stm_end = max(self.stm_end, offset + len(data))

    # -- reads -----------------------------------------------------------------------------
    def row_from(self, spec: TableSpec, values: tuple[Any, ...]) -> dict[str, Any]:
        row = dict(zip(spec.columns, values[:-1], strict=True))
        if row_check(spec, row) != values[-1]:
            raise EseError(
                errors.ReadVerifyFailure,
                f"record {spec.key_of(row)!r} of table {spec.name} in {self.edb_path} fails "
                "its checksum. Restore the database from backup, or repair it "
                "(eseutil /p, then isinteg -fix).",
                path=self.edb_path,
            )
        return row

    def get(self, conn: sqlite3.Connection, table: str, key: tuple[Any, ...]) -> dict[str, Any] | None:
        spec = self.spec(table)
        cols = ", ".join(f'"{c}"' for c in spec.columns)
        where = " AND ".join(f'"{c}" IS ?' for c in spec.primary_key)
        try:
            r = conn.execute(f"SELECT {cols}, _ck FROM {spec.sql_name} WHERE {where}", key).fetchone()
        except sqlite3.DatabaseError as e:
            raise sqlite_error(e, self.edb_path) from e
        return None if r is None else self.row_from(spec, r)

    def scan(
        self,
        conn: sqlite3.Connection,
        table: str,
        *,
        index: str | None = None,
        prefix: tuple[Any, ...] = (),
        lo: tuple[Any, ...] | None = None,
        hi: tuple[Any, ...] | None = None,
        reverse: bool = False,
        limit: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        spec = self.spec(table)
        keycols = spec.indexes[index] if index is not None else spec.primary_key
        if len(prefix) > len(keycols):
            raise ValueError("prefix longer than the index")
        where: list[str] = []
        params: list[Any] = []
        for c, v in zip(keycols, prefix, strict=False):
            where.append(f'"{c}" IS ?')
            params.append(v)
        for bound, op in ((lo, ">="), (hi, "<")):
            if bound is not None:
                cols = ", ".join(f'"{c}"' for c in keycols[: len(bound)])
                where.append(f"({cols}) {op} ({', '.join('?' for _ in bound)})")
                params.extend(bound)
        order_cols = list(keycols) + [c for c in spec.primary_key if c not in keycols]
        direction = " DESC" if reverse else ""
        sql = f"SELECT {', '.join(chr(34) + c + chr(34) for c in spec.columns)}, _ck FROM {spec.sql_name}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY " + ", ".join(f'"{c}"{direction}' for c in order_cols)
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        try:
            cur = conn.execute(sql, params)
            while True:
                batch = cur.fetchmany(256)
                if not batch:
                    return
                for r in batch:
                    yield self.row_from(spec, r)
        except sqlite3.DatabaseError as e:
            raise sqlite_error(e, self.edb_path) from e

    def stream_info(self, conn: sqlite3.Connection, stream_id: int) -> tuple[int, int, bytes]:
        r = conn.execute("SELECT offset, length, sha256 FROM _streams WHERE id = ?", (stream_id,)).fetchone()
        if r is None:
            raise KeyError(f"no stream {stream_id} in database {self.name}")
        return int(r[0]), int(r[1]), bytes(r[2])

    def next_stream_id(self, conn: sqlite3.Connection) -> int:
        r = conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM _streams").fetchone()
        return int(r[0])

    def streams(self, conn: sqlite3.Connection) -> Iterator[tuple[int, int, int, bytes]]:
        for r in conn.execute("SELECT id, offset, length, sha256 FROM _streams ORDER BY id"):
            yield int(r[0]), int(r[1]), int(r[2]), bytes(r[3])


class StreamReader:
    """Reads one stream in chunks; checks its SHA-256 when the end is reached."""

    def __init__(self, db: Database, offset: int, length: int, digest: bytes) -> None:
        self._fd = os.open(db.stm_path, os.O_RDONLY)
        self._db = db
        self._pos = offset
        self._left = length
        self._digest = digest
        self._hash = hashlib.sha256()
        self.length = length

    def read(self, size: int = 1 << 16) -> bytes:
        if self._left <= 0:
            return b""
        n = min(size, self._left)
        data = os.pread(self._fd, n, self._pos)
        if len(data) != n:
            data += bytes(n - len(data))
        self._pos += n
        self._left -= n
        self._hash.update(data)
        if self._left == 0 and self._hash.digest() != self._digest:
            raise EseError(
                errors.ReadVerifyFailure,
                f"stream data in {self._db.stm_path} fails its checksum. Restore the database "
                "from backup.",
                path=self._db.stm_path,
            )
        return data

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read():
            parts.append(chunk)
        return b"".join(parts)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> StreamReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
