"""Transactions: the only way the layers above change or read a database.

Invariants:
- One write transaction per storage group at a time (it holds the group's write lock from
  ``begin`` until its records are appended); its reads see its own writes.
- :meth:`Transaction.commit` returns only after the commit record is durable in the log;
  if anything fails before that, it raises and the caller must treat the transaction as not
  acknowledged. (A commit record that reached the log before a failure may still be
  replayed later: "unknown outcome" is possible, "acknowledged but lost" is not.)
- Read transactions see only transactions whose commit is durable.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from mailkeep.engine import codec
from mailkeep.engine.database import Database, StreamReader, sqlite_error
from mailkeep.engine.logformat import COMMIT, OPS, ROLLBACK, STREAM, STREAM_HEAD
from mailkeep.engine.schema import TableSpec

if TYPE_CHECKING:
    from mailkeep.engine.storagegroup import StorageGroup


class Transaction:
    def __init__(self, sg: StorageGroup) -> None:
        self.sg = sg
        sg._write_lock.acquire()
        try:
            sg._check_open()
        except BaseException:
            sg._write_lock.release()
            raise
        self.txn_id = sg._next_txn_id()
        self.ops: dict[int, list[list[Any]]] = {}
        self.dbs: dict[int, Database] = {}
        self.logged_streams = False
        self.active = True
        self._stream_open: set[int] = set()
        self._stream_ids: dict[int, int] = {}

    # -- plumbing --------------------------------------------------------------------------
    def _db(self, db: Database) -> Database:
        if not self.active:
            raise RuntimeError("transaction already ended")
        self.sg._check_mounted(db)
        if db.dbid not in self.dbs:
            db.begin()
            self.dbs[db.dbid] = db
            self.ops[db.dbid] = []
        return db

    def _log(self, db: Database, op: list[Any]) -> None:
        db.apply(op)
        self.ops[db.dbid].append(op)

    # -- schema ----------------------------------------------------------------------------
    def declare_table(self, db: Database, spec: TableSpec) -> None:
        """Create the table (and its indexes) unless it exists with the same declaration."""
        d = self._db(db)
        have = d.specs.get(spec.name)
        if have == spec:
            return
        if have is not None:
            missing = {k: v for k, v in spec.indexes.items() if k not in have.indexes}
            if have.columns != spec.columns or have.primary_key != spec.primary_key or any(
                have.indexes[k] != spec.indexes.get(k) for k in have.indexes
            ):
                raise ValueError(f"table {spec.name} exists with another declaration")
            if not missing:
                return
        self._log(d, ["T", spec.to_dict()])

    # -- rows ------------------------------------------------------------------------------
    def _full_row(self, d: Database, table: str, row: dict[str, Any]) -> dict[str, Any]:
        spec = d.spec(table)
        unknown = set(row) - set(spec.columns)
        if unknown:
            raise KeyError(f"table {table} has no column(s) {sorted(unknown)}")
        return {c: row.get(c) for c in spec.columns}

    def put(self, db: Database, table: str, row: dict[str, Any]) -> None:
        d = self._db(db)
        self._log(d, ["p", table, self._full_row(d, table, row)])

    def insert(self, db: Database, table: str, row: dict[str, Any]) -> None:
        d = self._db(db)
        full = self._full_row(d, table, row)
        key = d.spec(table).key_of(full)
        if d.get(d.writer, table, key) is not None:
            raise KeyError(f"table {table} already has a row with key {key!r}")
        self._log(d, ["p", table, full])

    def update(self, db: Database, table: str, key: tuple[Any, ...], changes: dict[str, Any]) -> dict[str, Any]:
        d = self._db(db)
        row = d.get(d.writer, table, tuple(key))
        if row is None:
            raise KeyError(f"table {table} has no row with key {tuple(key)!r}")
        row.update(changes)
        full = self._full_row(d, table, row)
        if d.spec(table).key_of(full) != tuple(key):
            self._log(d, ["d", table, list(key)])
        self._log(d, ["p", table, full])
        return full

    def delete(self, db: Database, table: str, key: tuple[Any, ...]) -> bool:
        d = self._db(db)
        if d.get(d.writer, table, tuple(key)) is None:
            return False
        self._log(d, ["d", table, list(key)])
        return True

    def get(self, db: Database, table: str, key: tuple[Any, ...]) -> dict[str, Any] | None:
        d = self._db(db)
        return d.get(d.writer, table, tuple(key))

    def scan(self, db: Database, table: str, **kw: Any) -> Iterator[dict[str, Any]]:
        d = self._db(db)
        return d.scan(d.writer, table, **kw)

    # -- streams ---------------------------------------------------------------------------
    def create_stream(self, db: Database) -> StreamWriter:
        d = self._db(db)
        if d.dbid in self._stream_open:
            raise RuntimeError("close the open stream of this database before starting another")
        sid = max(d.next_stream_id(d.writer), self._stream_ids.get(d.dbid, 0) + 1)
        self._stream_ids[d.dbid] = sid
        self._stream_open.add(d.dbid)
        return StreamWriter(self, d, sid)

    def open_stream(self, db: Database, stream_id: int) -> StreamReader:
        d = self._db(db)
        off, length, digest = d.stream_info(d.writer, stream_id)
        return StreamReader(d, off, length, digest)

    def delete_stream(self, db: Database, stream_id: int) -> None:
        d = self._db(db)
        d.stream_info(d.writer, stream_id)
        self._log(d, ["x", stream_id])

    # -- end -------------------------------------------------------------------------------
    def commit(self) -> int:
        """Make the transaction durable; returns its commit position (LSN)."""
        if not self.active:
            raise RuntimeError("transaction already ended")
        if self._stream_open:
            raise RuntimeError("a stream of this transaction is still open")
        sg = self.sg
        log = sg._log_writer()
        touched = [dbid for dbid, ops in self.ops.items() if ops]
        if not touched:
            self.rollback()
            return log.appended()
        try:
            records: list[tuple[int, int, bytes]] = []
            for dbid in touched:
                whole = codec.encode([self.txn_id, self.ops[dbid]])
                if len(whole) <= log.max_payload:
                    records.append((OPS, dbid, whole))
                else:
                    records.extend(
                        (OPS, dbid, codec.encode([self.txn_id, chunk]))
                        for chunk in _chunks(self.ops[dbid], log.max_payload)
                    )
            records.append((COMMIT, 0, codec.encode([self.txn_id, touched])))
            _s, end = log.append_many(records)[-1]
        except BaseException:
            self.rollback()
            raise
        failed: BaseException | None = None
        for dbid in list(self.dbs):
            db = self.dbs[dbid]
            try:
                db.commit(end)
            except BaseException as e:  # the log has it: the database must be replayed
                failed = e
                sg._database_failed(db, e)
        self.active = False
        sg._write_lock.release()
        if failed is not None:
            raise failed
        log.wait_durable(end)
        try:
            sg._after_commit()
        except Exception as e:  # noqa: BLE001 - the commit is durable: report, never un-acknowledge it
            sg.events.error(
                "ESE", 484,
                f"A checkpoint after a durable commit failed ({e}). The commit is kept; the storage "
                "group reports the cause on its next operation.",
            )
        return end

    def rollback(self) -> None:
        if not self.active:
            return
        self.active = False
        try:
            for db in self.dbs.values():
                try:
                    db.rollback()
                except Exception:  # noqa: BLE001 - the handle may already be gone
                    pass
            if self.logged_streams and self.sg._writer is not None and self.sg._writer.failed is None:
                try:
                    self.sg._writer.append(ROLLBACK, 0, codec.encode([self.txn_id]))
                except Exception:  # noqa: BLE001 - nothing to undo: replay discards it
                    pass
        finally:
            self.sg._write_lock.release()

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None and self.active:
            self.commit()
        else:
            self.rollback()


def _chunks(ops: list[list[Any]], limit: int) -> Iterator[list[list[Any]]]:
    chunk: list[list[Any]] = []
    size = 64
    for op in ops:
        n = len(codec.encode(op))
        if chunk and size + n > limit:
            yield chunk
            chunk, size = [], 64
        chunk.append(op)
        size += n
    if chunk:
        yield chunk


class StreamWriter:
    """Writes one stream of a transaction: each chunk is logged and written to the .stm at
    once, so a value of any size passes through memory one chunk at a time."""

    def __init__(self, txn: Transaction, db: Database, stream_id: int) -> None:
        self.txn = txn
        self.db = db
        self.stream_id = stream_id
        self.start = db.stm_end
        self.length = 0
        self._hash = hashlib.sha256()
        log = txn.sg._log_writer()
        self._chunk = max(4096, min(64 * 1024, log.max_payload - STREAM_HEAD.size))

    def write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        log = self.txn.sg._log_writer()
        while view:
            piece = view[: self._chunk]
            off = self.start + self.length
            head = STREAM_HEAD.pack(self.txn.txn_id, self.stream_id, off)
            log.append(STREAM, self.db.dbid, head + bytes(piece))
            self.txn.logged_streams = True
            self.db.write_stream_data(off, piece)
            self._hash.update(piece)
            self.length += len(piece)
            view = view[len(piece) :]

    def close(self) -> int:
        self.txn._stream_open.discard(self.db.dbid)
        self.txn._log(self.db, ["s", self.stream_id, self.start, self.length, self._hash.digest()])
        return self.stream_id

    def __enter__(self) -> StreamWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.txn._stream_open.discard(self.db.dbid)


class ReadTransaction:
    """A read-only view: each database is read from one SQLite snapshot."""

    def __init__(self, sg: StorageGroup) -> None:
        self.sg = sg
        w = sg._log_writer()
        w.wait_durable(w.appended())
        self._conns: dict[int, Any] = {}
        self._owners: dict[int, Database] = {}

    def _conn(self, db: Database) -> Any:
        self.sg._check_mounted(db)
        c = self._conns.get(db.dbid)
        if c is None:
            c = db.reader()
            c.execute("BEGIN")
            self._conns[db.dbid] = c
            self._owners[db.dbid] = db
            try:  # the snapshot starts at the first read, not at BEGIN
                c.execute("SELECT applied_lsn FROM _header").fetchone()
            except sqlite3.Error as e:
                raise sqlite_error(e, db.edb_path) from e
            # A commit is applied to the database just before its log fsync: a snapshot
            # taken now may hold one that is not durable yet, so wait until it is.
            w = self.sg._log_writer()
            w.wait_durable(w.appended())
        return c

    def get(self, db: Database, table: str, key: tuple[Any, ...]) -> dict[str, Any] | None:
        return db.get(self._conn(db), table, tuple(key))

    def scan(self, db: Database, table: str, **kw: Any) -> Iterator[dict[str, Any]]:
        return db.scan(self._conn(db), table, **kw)

    def open_stream(self, db: Database, stream_id: int) -> StreamReader:
        off, length, digest = db.stream_info(self._conn(db), stream_id)
        return StreamReader(db, off, length, digest)

    def close(self) -> None:
        for dbid, c in self._conns.items():
            try:
                c.execute("COMMIT")
            except Exception:  # noqa: BLE001 - the database may have been dismounted
                continue
            self._owners[dbid].release_reader(c)
        self._conns.clear()

    def __enter__(self) -> ReadTransaction:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
