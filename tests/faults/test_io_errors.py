"""Nth-I/O error injection, as SQLite's test VFS does it (reliability.md, method 3 and 5).

For each kind of operation ('write', 'fsync') and errno (ENOSPC, EIO), a fixed workload runs
with a FileIO whose fault fires at operation N (once, and separately persistently), for
N = 1, 2, 3, ... until the workload completes without the fault firing. Then a fresh, plain
FileIO opens the storage group (soft recovery) and mounts the database, and the test checks:

- every transaction whose ``commit()`` returned is present, row by row and byte by byte;
- no transaction is half applied (each writes one row in each of two tables, the stream
  transaction also a stream: all of it or none of it);
- every failure reaches the caller as an EseError (never a bare OSError);
- the group opens, and the database mounts; the only exceptions are a ``create()`` or
  ``create_database()`` that failed: it leaves nothing behind (-1811 at mount), so creating
  it again works;
- after an fsync failed, no later commit on that group returns success: it raises
  -510 JET_errLogWriteFail ("fsyncgate": a retried fsync is never trusted).
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailkeep.engine import errors
from mailkeep.engine.database import Database
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import Fault, FileIO
from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import StorageGroup
from tests.conftest import db_paths, make_config

MAX_N = 400
TIME_BUDGET = 60.0  # seconds per (kind, errno, persistent) combination
TXNS = 20
STREAM_TXN = 10

TA = TableSpec("a", ("id", "payload"), ("id",))
TB = TableSpec("b", ("id", "digest", "stream"), ("id",))


def payload(i: int) -> str:
    return f"row-{i}-" + "x" * 1500


def digest(i: int) -> str:
    return hashlib.sha256(payload(i).encode()).hexdigest()


def stream_data(i: int) -> bytes:
    seed = hashlib.sha256(f"stream-{i}".encode()).digest()
    return (seed * (45_000 // len(seed) + 1))[:45_000]


class InjectIO(FileIO):
    """Plain FileIO that also remembers where its injected fault fired (the names of the
    functions on the stack), so the test can tell which file a failed fsync was for."""

    def __init__(self) -> None:
        super().__init__()
        self.fired_in: list[tuple[str, tuple[str, ...]]] = []

    def _check(self, kind: str) -> None:
        try:
            super()._check(kind)
        except OSError:
            self.fired_in.append((kind, tuple(f.name for f in traceback.extract_stack())))
            raise


# Functions whose fsync concerns a log file that holds no record yet: the next generation
# being prepared (zero-filled, then given its header) and the reserve logs.
SCRATCH_LOG_FILES = {"_zero_file", "prepare_next", "_write_header", "create_reserve_logs"}


def counts_as_fsync_failure(io: InjectIO) -> bool:
    """Has an fsync failed on a file that holds committed data: a log generation with
    records, a database file, the checkpoint, or the log folder's entries?

    A failed fsync of a log file that holds no record yet is tolerated by design, because
    nothing durable depends on it: the next generation is re-created from scratch
    (truncated, zero-filled, fsync'd again) before it takes a record, or on ENOSPC replaced
    by a reserve log (the disk-full path: the databases are dismounted cleanly, so later
    commits fail with -1203); the reserve logs are re-created at the next open (event 429).
    Commits after such a failure may succeed."""
    return any(kind == "fsync" and not SCRATCH_LOG_FILES & set(stack) for kind, stack in io.fired_in)


@dataclass
class Outcome:
    """What the workload saw under one injected fault."""

    created: bool = False  # StorageGroup.create returned
    db_created: bool = False  # create_database returned
    declared: bool = False  # the transaction declaring the tables committed
    closed: bool = False  # close() returned
    acked: set[int] = field(default_factory=set)
    stream_ids: dict[int, int] = field(default_factory=dict)  # txn -> stream id (acked only)
    raised: list[tuple[str, BaseException]] = field(default_factory=list)
    refused_after_fsync: int = 0  # commits refused (-510) because an earlier fsync failed


def run_workload(root: Path, io: InjectIO) -> Outcome:
    out = Outcome()
    cfg = make_config(root)
    edb, stm = db_paths(root)
    try:
        sg = StorageGroup.create(cfg, io=io)
    except EseError as e:
        out.raised.append(("create", e))
        return out
    out.created = True
    try:
        try:
            db = sg.create_database(edb, stm)
        except EseError as e:
            out.raised.append(("create_database", e))
            return out
        out.db_created = True
        steps: list[int | None] = [None, *range(TXNS)]  # None: declare the tables
        for i in steps:
            fsync_failed = counts_as_fsync_failure(io)
            sid = None
            try:
                t = sg.begin()
                try:
                    if i is None:
                        t.declare_table(db, TA)
                        t.declare_table(db, TB)
                    else:
                        if i == STREAM_TXN:
                            with t.create_stream(db) as s:
                                s.write(stream_data(i))
                            sid = s.stream_id
                        t.put(db, "a", {"id": i, "payload": payload(i)})
                        t.put(db, "b", {"id": i, "digest": digest(i), "stream": sid})
                except BaseException:
                    t.rollback()
                    raise
                t.commit()
            except (EseError, KeyError) as e:  # KeyError: the tables were never declared
                out.raised.append((f"txn {i}", e))
                if fsync_failed:
                    # fsyncgate: once an fsync failed, the group accepts no further commit.
                    assert isinstance(e, EseError) and e.number == errors.LogWriteFail, (
                        f"txn {i} after an fsync failure raised {e!r}, not -510"
                    )
                    out.refused_after_fsync += 1
                continue
            assert not fsync_failed, f"txn {i} was acknowledged after an fsync failure {io.fired_in[-1]}"
            if i is None:
                out.declared = True
                continue
            out.acked.add(i)
            if sid is not None:
                out.stream_ids[i] = sid
        try:
            sg.close()
        except EseError as e:
            out.raised.append(("close", e))
        else:
            out.closed = True
    finally:
        sg.crash()  # drop every handle whatever happened (a no-op after close())
    return out


def check_recovered(root: Path, out: Outcome, label: str) -> None:
    """Fresh plain FileIO: open (soft recovery), mount, compare with what was acknowledged."""
    cfg = make_config(root)
    edb, stm = db_paths(root)
    if not out.created:
        # create() never returned: it must leave nothing behind, so creating the group again
        # works (a half-created group that neither opens nor can be created would need a
        # human to clean it up).
        try:
            sg = StorageGroup.create(cfg, io=FileIO())
        except EseError as e:
            pytest.fail(f"{label}: create() failed and left files that block creating it again: {e}")
        sg.close()
        return
    sg = StorageGroup.open(cfg, io=FileIO())
    try:
        try:
            db = sg.mount(edb, stm)
        except EseError as e:
            # Only a database whose create_database() failed may be missing: a failed
            # creation leaves nothing behind (-1811), and creating it again works.
            assert not out.db_created and e.number == errors.FileNotFound, f"{label}: mount failed: {e}"
            sg.create_database(edb, stm)
            return
        check_rows(sg, db, out, label)
    finally:
        sg.close()
    # Open and mount again after the clean close: the same data.
    sg = StorageGroup.open(cfg, io=FileIO())
    try:
        db = sg.mount(edb, stm)
        check_rows(sg, db, out, label + " (second open)")
    finally:
        sg.close()


def check_rows(sg: StorageGroup, db: Database, out: Outcome, label: str) -> None:
    with sg.reader() as r:
        try:
            a_rows = {row["id"]: row for row in r.scan(db, "a")}
            b_rows = {row["id"]: row for row in r.scan(db, "b")}
        except KeyError:
            # the tables were never declared: only possible if declaring them was not acknowledged
            assert not out.declared and not out.acked, f"{label}: tables missing"
            return
        missing = sorted(out.acked - set(a_rows))
        assert not missing, f"{label}: acknowledged transactions lost: {missing}"
        assert set(a_rows) == set(b_rows), f"{label}: half-applied transactions: {set(a_rows) ^ set(b_rows)}"
        assert set(a_rows) <= set(range(TXNS)), f"{label}: unexpected rows {sorted(a_rows)}"
        for i in sorted(a_rows):
            assert a_rows[i] == {"id": i, "payload": payload(i)}, f"{label}: row a/{i} differs"
            b = b_rows[i]
            assert b["digest"] == digest(i), f"{label}: row b/{i} differs"
            if i == STREAM_TXN:
                assert b["stream"] is not None, f"{label}: stream txn {i} present without its stream"
                with r.open_stream(db, b["stream"]) as sr:
                    data = sr.readall()
                assert data == stream_data(i), f"{label}: stream of txn {i} differs"
                if i in out.stream_ids:
                    assert b["stream"] == out.stream_ids[i]
            else:
                assert b["stream"] is None
        streams = list(db.streams(r._conn(db)))
        referenced = {b_rows[i]["stream"] for i in b_rows if b_rows[i]["stream"] is not None}
        assert {s[0] for s in streams} == referenced, f"{label}: streams without their row: {streams}"


COMBOS = [
    (kind, err, persistent)
    for kind in ("write", "fsync")
    for err in (errno.ENOSPC, errno.EIO)
    for persistent in (False, True)
]


@pytest.mark.parametrize(
    ("kind", "err", "persistent"),
    COMBOS,
    ids=[f"{k}-{errno.errorcode[e]}-{'persistent' if p else 'once'}" for k, e, p in COMBOS],
)
def test_nth_io_error(tmp_path: Path, kind: str, err: int, persistent: bool) -> None:
    deadline = time.monotonic() + TIME_BUDGET
    fired_runs = 0
    refused_after_fsync = 0
    completed = False
    for n in range(1, MAX_N + 1):
        assert time.monotonic() < deadline, f"N={n}: out of time budget"
        root = tmp_path / f"n{n}"
        os.makedirs(root)
        io = InjectIO()
        fault = Fault(kind, n, err, persistent)
        io.faults.append(fault)
        out = run_workload(root, io)
        label = f"{kind} {errno.errorcode[err]} {'persistent' if persistent else 'once'} at #{n}"
        if fault.fired == 0:
            assert out.closed and out.acked == set(range(TXNS)), f"{label}: {out.raised}"
            check_recovered(root, out, label)
            completed = True
            break
        fired_runs += 1
        refused_after_fsync += out.refused_after_fsync
        check_recovered(root, out, label)
        shutil.rmtree(root)
    assert completed, f"the workload never completed without the fault within N <= {MAX_N}"
    assert fired_runs >= 20, "the workload performs fewer I/O operations than expected"
    if kind == "fsync":
        assert refused_after_fsync > 0, "no run exercised commits after a failed fsync"


def test_fsync_failure_blocks_later_commits(tmp_path: Path) -> None:
    """A commit whose log fsync failed raises -510, and so does every later one, even
    though the next fsync would succeed."""
    io = FileIO()
    cfg = make_config(tmp_path)
    sg = StorageGroup.create(cfg, io=io)
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    with sg.begin() as t:
        t.declare_table(db, TA)
    with sg.begin() as t:
        t.put(db, "a", {"id": 0, "payload": "ok"})
    io.faults.append(Fault("fsync", io.counts["fsync"] + 1, errno.EIO))
    t = sg.begin()
    t.put(db, "a", {"id": 1, "payload": "unknown outcome"})
    with pytest.raises(EseError) as ei:
        t.commit()
    assert ei.value.number == errors.LogWriteFail
    for i in range(2, 5):
        with pytest.raises(EseError) as ei, sg.begin() as t:
            t.put(db, "a", {"id": i, "payload": "never"})
        assert ei.value.number == errors.LogWriteFail
    with pytest.raises(EseError) as ei:
        sg.checkpoint()
    assert ei.value.number == errors.LogWriteFail
    sg.close()
    sg = StorageGroup.open(cfg, io=FileIO())
    try:
        db = sg.mount(edb, stm)
        with sg.reader() as r:
            ids = {row["id"] for row in r.scan(db, "a")}
        # id 1 is "unknown outcome" (its commit record reached the file before the fsync
        # failed); ids 2..4 were never acknowledged and never logged.
        assert 0 in ids and not ids & {2, 3, 4}
    finally:
        sg.close()



def test_database_fsync_failure_stops_the_group(tmp_path: Path) -> None:
    """fsyncgate for database files: when the fsync of an .edb fails during a checkpoint
    (its WAL was already copied into it and truncated), the kernel may have dropped those
    pages. A later checkpoint whose fsync succeeds must not move E00.chk past them, so the
    group stops (-510) and reopening replays the log."""
    io = InjectIO()
    cfg = make_config(tmp_path)
    sg = StorageGroup.create(cfg, io=io)
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    with sg.begin() as t:
        t.declare_table(db, TA)
    for i in range(5):
        with sg.begin() as t:
            t.put(db, "a", {"id": i, "payload": payload(i)})
    chk_before = sg.checkpoint_lsn
    io.faults.append(Fault("fsync", io.counts["fsync"] + 1, errno.EIO))
    with pytest.raises(EseError) as ei:
        sg.checkpoint()
    assert ei.value.number == errors.LogWriteFail
    assert io.fired_in and "fsync_path" in io.fired_in[0][1], io.fired_in  # the .edb's fsync
    for i in range(5, 8):
        with pytest.raises(EseError) as ei, sg.begin() as t:
            t.put(db, "a", {"id": i, "payload": payload(i)})
        assert ei.value.number == errors.LogWriteFail
    with pytest.raises(EseError):
        sg.checkpoint()  # the next fsync would succeed: it must not be trusted
    assert sg.checkpoint_lsn == chk_before
    sg.crash()
    sg = StorageGroup.open(cfg, io=FileIO())
    try:
        db = sg.mount(edb, stm)
        with sg.reader() as r:
            assert [row["id"] for row in r.scan(db, "a")] == list(range(5))
    finally:
        sg.close()
