"""Model-based crash test of the storage engine (reliability.md, methods 1 and 11).

A hypothesis state machine drives one storage group (64 KiB logs, CrashSimIO) with one to
three databases of one table each: transactions of puts and deletes across databases
(committed or rolled back), stream transactions, dismount + mount, roll-over, checkpoint,
and power losses (an open transaction, then ``sg.crash()`` and ``io.crash()``, which drops
every write not fsync'd and puts each database file back to its last durable image). Some
power losses come right after an injected I/O error in a commit or a roll-over.

A model (plain dicts) holds exactly the committed transactions. After every step, and so
after every recovery, each database's rows equal the model exactly and every stream reads
back byte-identical.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from mailkeep.engine import errors
from mailkeep.engine.database import Database
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import CrashSimIO, Fault
from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import StorageGroup
from tests.conftest import db_paths, make_config

TABLE = TableSpec("t", ("k", "v"), ("k",))
KEYS = st.integers(0, 11)
STREAM_ROW = 1000  # a stream's row: key STREAM_ROW + stream id, value its SHA-256

# (database index, key, value or None for a delete)
op_st = st.tuples(st.integers(0, 2), KEYS, st.one_of(st.none(), st.text("abcxyz", max_size=40)))
ops_st = st.lists(op_st, min_size=1, max_size=8)


def blob(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


class StorageModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="mk-model-"))
        self.cfg = make_config(self.root)
        self.io = CrashSimIO()
        self.sg = StorageGroup.create(self.cfg, io=self.io)
        self.paths: list[tuple[str, str]] = []
        self.dbs: list[Database] = []
        self.rows: list[dict[int, str]] = []  # committed rows per database
        self.streams: list[dict[int, bytes]] = []  # committed streams per database
        self.crashes = 0

    # -- set-up ----------------------------------------------------------------------------
    @initialize(n=st.integers(1, 3))
    def create_databases(self, n: int) -> None:
        for i in range(n):
            edb, stm = db_paths(self.root, f"db{i}")
            db = self.sg.create_database(edb, stm)
            with self.sg.begin() as t:
                t.declare_table(db, TABLE)
            self.paths.append((edb, stm))
            self.dbs.append(db)
            self.rows.append({})
            self.streams.append({})

    def db(self, i: int) -> Database:
        return self.dbs[i % len(self.dbs)]

    def _apply(self, t: Any, ops: list[tuple[int, int, str | None]], rows: list[dict[int, str]]) -> None:
        for i, k, v in ops:
            i %= len(self.dbs)
            if v is None:
                t.delete(self.dbs[i], "t", (k,))
                rows[i].pop(k, None)
            else:
                t.put(self.dbs[i], "t", {"k": k, "v": v})
                rows[i][k] = v

    # -- rules -----------------------------------------------------------------------------
    @rule(ops=ops_st, commit=st.booleans())
    def transaction(self, ops: list[tuple[int, int, str | None]], commit: bool) -> None:
        rows = [dict(r) for r in self.rows]
        t = self.sg.begin()
        self._apply(t, ops, rows)
        if commit:
            t.commit()
            self.rows = rows
        else:
            t.rollback()

    @rule(i=st.integers(0, 2), seed=st.integers(0, 2**32), size=st.integers(0, 40_000),
          ops=st.lists(op_st, max_size=3), commit=st.booleans())
    def stream_transaction(self, i: int, seed: int, size: int, ops: list[Any], commit: bool) -> None:
        i %= len(self.dbs)
        data = blob(seed, size)
        rows = [dict(r) for r in self.rows]
        t = self.sg.begin()
        with t.create_stream(self.dbs[i]) as s:
            s.write(data[: size // 2])
            s.write(data[size // 2 :])
        sid = s.stream_id
        t.put(self.dbs[i], "t", {"k": STREAM_ROW + sid, "v": hashlib.sha256(data).hexdigest()})
        rows[i][STREAM_ROW + sid] = hashlib.sha256(data).hexdigest()
        self._apply(t, [op for op in ops if op[1] < STREAM_ROW], rows)
        if commit:
            t.commit()
            self.rows = rows
            self.streams[i][sid] = data
        else:
            t.rollback()

    @rule(pick=st.integers(0, 2**16))
    def delete_stream(self, pick: int) -> None:
        owners = [i for i, s in enumerate(self.streams) if s]
        if not owners:
            return
        i = owners[pick % len(owners)]
        sid = sorted(self.streams[i])[pick % len(self.streams[i])]
        with self.sg.begin() as t:
            t.delete_stream(self.dbs[i], sid)
            t.delete(self.dbs[i], "t", (STREAM_ROW + sid,))
        del self.streams[i][sid]
        del self.rows[i][STREAM_ROW + sid]

    @rule(i=st.integers(0, 2))
    def remount(self, i: int) -> None:
        i %= len(self.dbs)
        self.sg.dismount(self.dbs[i])
        self.dbs[i] = self.sg.mount(*self.paths[i])

    @rule()
    def roll(self) -> None:
        self.sg.roll()

    @rule()
    def checkpoint(self) -> None:
        self.sg.checkpoint()

    @rule(ops=st.lists(op_st, max_size=6), stream=st.integers(0, 40_000), seed=st.integers(0, 2**32))
    def crash(self, ops: list[tuple[int, int, str | None]], stream: int, seed: int) -> None:
        """Power loss with a transaction open (never committed)."""
        t = self.sg.begin()
        self._apply(t, ops, [dict(r) for r in self.rows])
        if stream:
            with t.create_stream(self.dbs[seed % len(self.dbs)]) as s:
                s.write(blob(seed, stream))
        self.power_loss()

    @rule(ops=ops_st, nth=st.integers(1, 3))
    def crash_after_failed_commit(self, ops: list[tuple[int, int, str | None]], nth: int) -> None:
        """The log write or fsync of a commit fails: the commit is not acknowledged, the
        group refuses further commits, and after a power loss the transaction is absent
        (its records were never made durable)."""
        kind = "fsync" if nth == 3 else "write"
        at = self.io.counts[kind] + (1 if kind == "fsync" else nth)
        self.io.faults.append(Fault(kind, at))
        t = self.sg.begin()
        t.put(self.dbs[0], "t", {"k": 0, "v": "never acknowledged"})  # something is logged
        self._apply(t, ops, [dict(r) for r in self.rows])
        try:
            t.commit()
        except EseError as e:
            assert e.number == errors.LogWriteFail, e
        else:
            raise AssertionError("a commit whose log I/O failed was acknowledged")
        try:
            with self.sg.begin() as t2:
                t2.put(self.dbs[0], "t", {"k": 0, "v": "after the failure"})
        except EseError as e:
            assert e.number == errors.LogWriteFail, e
        else:
            raise AssertionError("a commit after a failed log write was acknowledged")
        self.power_loss()

    @rule(nth=st.integers(1, 6), kind=st.sampled_from(["write", "fsync"]))
    def crash_during_roll(self, nth: int, kind: str) -> None:
        """An I/O error at one step of a roll-over (fsync of the full generation, preparing
        E00tmp.log, the directory fsyncs between the renames), then a power loss."""
        self.io.faults.append(Fault(kind, self.io.counts[kind] + nth))
        try:
            self.sg.roll()
        except EseError as e:
            assert e.number == errors.LogWriteFail, e
        self.power_loss()

    # -- power loss and recovery -----------------------------------------------------------
    def power_loss(self) -> None:
        self.sg.crash()
        self.io.crash()
        self.io.faults.clear()
        self.crashes += 1
        self.sg = StorageGroup.open(self.cfg, io=self.io)
        self.dbs = [self.sg.mount(edb, stm) for edb, stm in self.paths]

    # -- the invariant ---------------------------------------------------------------------
    @invariant()
    def matches_model(self) -> None:
        if not self.dbs:
            return
        with self.sg.reader() as r:
            for i, db in enumerate(self.dbs):
                got = {row["k"]: row["v"] for row in r.scan(db, "t")}
                assert got == self.rows[i], f"database {i} after {self.crashes} crash(es)"
                ids = {sid for sid, *_ in db.streams(r._conn(db))}
                assert ids == set(self.streams[i]), f"streams of database {i}"
                for sid, data in self.streams[i].items():
                    with r.open_stream(db, sid) as s:
                        assert s.readall() == data, f"stream {sid} of database {i}"

    def teardown(self) -> None:
        try:
            self.sg.close()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


StorageModel.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TestStorageModel = StorageModel.TestCase
