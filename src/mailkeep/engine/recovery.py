"""Replay: bring databases up to date from a log stream.

Invariants:
- Replay starts at the beginning of a generation and applies a logged transaction to a
  database only if its COMMIT record ends after the database's ``applied_lsn``; so replay
  is idempotent, and running it twice (or after a crash during replay) is harmless.
- A transaction without its COMMIT record is discarded; stream bytes of such a transaction
  may reach the .stm, but nothing references them.
- STREAM records are written to the .stm whatever the database's ``applied_lsn``: the .stm
  is not fsync'd with SQLite's WAL, so a power loss can keep a commit in the .edb and lose
  its stream bytes; rewriting the logged bytes at their offsets (in log order) is harmless.
- Which file a database id means is learnt from the generation header's attachment list and
  from ATTACH/DETACH records; the caller's ``resolve`` decides how a logged path maps to a
  file (eseutil /d) and whether a missing or mismatched file is an error (-1216) or skipped
  (/i).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mailkeep.engine import codec, errors
from mailkeep.engine.database import Database
from mailkeep.engine.errors import EseError
from mailkeep.engine.header import DbState
from mailkeep.engine.logformat import (
    ATTACH,
    COMMIT,
    CREATEDB,
    DETACH,
    OPS,
    ROLLBACK,
    STREAM,
    STREAM_HEAD,
    TERM,
    AttachedDb,
    format_lsn,
    lsn,
)
from mailkeep.engine.logreader import StreamLayout, iter_generations

Resolver = Callable[[AttachedDb], "Database | None"]
BATCH = 512


@dataclass
class ReplayResult:
    end: int = 0
    last_flush: int = 0
    sealed: bool = True  # the last flush ends with its FILL (or the generation has no record)
    torn_bytes: int = 0
    generations: int = 0
    bytes_read: int = 0
    transactions: int = 0
    applied: int = 0
    attached_at_end: dict[int, Database | None] = field(default_factory=dict)
    max_txn_id: int = 0
    seconds: float = 0.0


def replay(
    lay: StreamLayout,
    start_gen: int,
    resolve: Resolver,
    *,
    checkpoint_gen: int | None = None,
    on_generation: Callable[[int], None] | None = None,
) -> ReplayResult:
    t0 = time.monotonic()
    res = ReplayResult()
    dbmap: dict[int, Database | None] = {}
    pending: list[tuple[int, int, list[Any]]] = []
    batched: dict[int, tuple[Database, int]] = {}  # dbid -> (db, applied end not committed)
    count = 0

    def flush_batches() -> None:
        for db, end in batched.values():
            db.commit(end)
        batched.clear()

    first = True
    for data in iter_generations(lay, start_gen, checkpoint_gen=checkpoint_gen):
        if first:
            for a in data.header.attached:
                dbmap[a.dbid] = _bind(resolve(a), a.dbid)
            first = False
        for rec in data.records:
            t = rec.type
            if t in (ATTACH, CREATEDB):
                info = codec.decode(rec.payload)
                flush_batches()
                dbmap[rec.dbid] = _bind(resolve(AttachedDb.from_list(info)), rec.dbid)
            elif t == DETACH:
                flush_batches()
                dbmap.pop(rec.dbid, None)
            elif t == OPS:
                txn_id, ops = codec.decode(rec.payload)
                pending.append((int(txn_id), rec.dbid, ops))
            elif t == STREAM:
                db = dbmap.get(rec.dbid)
                if db is not None:  # even if applied: the .stm may have lost it (see above)
                    _txn, _sid, off = STREAM_HEAD.unpack_from(rec.payload, 0)
                    db.write_stream_data(off, memoryview(rec.payload)[STREAM_HEAD.size :])
            elif t == COMMIT:
                txn_id = int(codec.decode(rec.payload)[0])
                res.max_txn_id = max(res.max_txn_id, txn_id)
                res.transactions += 1
                for p_txn, dbid, ops in pending:
                    if p_txn != txn_id:
                        continue
                    db = dbmap.get(dbid)
                    if db is None or rec.end <= db.applied_lsn:
                        continue
                    if dbid not in batched:
                        db.begin()
                    for op in ops:
                        db.apply(op)
                    batched[dbid] = (db, rec.end)
                    res.applied += 1
                pending.clear()
                count += 1
                if count % BATCH == 0:
                    flush_batches()
            elif t in (ROLLBACK, TERM):
                pending.clear()
        flush_batches()
        res.generations += 1
        res.bytes_read += data.end & 0xFFFFFFFF
        res.end = data.end
        res.last_flush = data.last_flush
        res.sealed = data.sealed
        res.torn_bytes = data.torn_bytes
        if on_generation is not None:
            on_generation(data.header.generation)
    res.attached_at_end = dbmap
    res.seconds = time.monotonic() - t0
    return res


def _bind(db: Database | None, dbid: int) -> Database | None:
    """The database now answers to the id the log uses for it (recovery detaches it by it)."""
    if db is not None:
        db.dbid = dbid
    return db


def check_required(db: Database, start_gen: int) -> None:
    """A dirty database that lacks transactions from before the first generation replayed
    cannot be made consistent by this replay."""
    if db.applied_lsn < lsn(start_gen, 0) and db.header.state != DbState.CLEAN:
        raise EseError(
            errors.RequiredLogFilesMissing,
            f"database {db.edb_path} needs log records from {format_lsn(db.applied_lsn)} on "
            f"(generation {db.header.log_required_low}), but replay starts at generation "
            f"{start_gen}. Copy the missing generations into the log folder, or restore the "
            "database from backup.",
            path=db.edb_path,
        )
