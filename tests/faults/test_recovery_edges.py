"""Recovery edge cases: stream bytes lost behind a durable commit, a failed database under
circular logging, a crash inside a roll-over into a reserve log, and a crash in an unsealed
flush followed by a power loss during recovery's first fsync."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

from mailkeep.engine import errors
from mailkeep.engine import logformat as lf
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import CrashSimIO, FileIO
from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import StorageGroup
from tests.conftest import db_paths, make_config
from tests.faults.test_damage import flushes

T = TableSpec("m", ("id", "x"), ("id",))


def test_stream_bytes_lost_behind_a_durable_commit_are_replayed(tmp_path: Path) -> None:
    """A power loss can keep SQLite's WAL (the commit, applied_lsn past it) and lose the
    .stm write (neither is fsync'd at commit): replay must rewrite the stream bytes."""
    cfg = make_config(tmp_path)
    io = CrashSimIO()
    sg = StorageGroup.create(cfg, io=io)
    db = sg.create_database(*db_paths(tmp_path))
    with sg.begin() as t:
        t.declare_table(db, T)
    sg.checkpoint()
    body = os.urandom(10000)
    with sg.begin() as t:
        w = t.create_stream(db)
        w.write(body)
        sid = w.close()
    stm = os.path.abspath(db.stm_path)
    io.pending = {stm: io.pending[stm]}  # only the .stm writes are lost
    io.shadows.clear()  # the .edb and its -wal survive as they are
    sg.crash()
    io.crash()
    sg = StorageGroup.open(cfg)
    try:
        db = sg.mount(db_paths(tmp_path)[0])
        with sg.reader() as r:
            assert r.open_stream(db, sid).readall() == body
    finally:
        sg.close()


def _failing_commit(*_a: Any, **_k: Any) -> None:
    raise EseError(errors.DiskIO, "injected: writing the table file failed")


def test_failed_database_holds_circular_logs(tmp_path: Path) -> None:
    """A database dismounted by a failed commit (482) is Dirty Shutdown: circular logging
    must not delete the generations it needs, power loss or not."""
    for power_loss in (False, True):
        root = tmp_path / str(power_loss)
        cfg = make_config(root, circular_logging=True)
        io = CrashSimIO()
        sg = StorageGroup.create(cfg, io=io)
        a = sg.create_database(*db_paths(root, "a"))
        b = sg.create_database(*db_paths(root, "b"))
        with sg.begin() as t:
            t.declare_table(a, T)
            t.declare_table(b, T)
        sg.checkpoint()
        for i in range(20):
            with sg.begin() as t:
                t.put(a, "m", {"id": i, "x": "acked"})
        a.commit = _failing_commit  # type: ignore[method-assign]
        try:
            with sg.begin() as t:
                t.put(a, "m", {"id": 999, "x": "unknown outcome"})
        except EseError:
            pass
        assert [d.name for d in sg.databases] == ["b"]
        for i in range(600):
            with sg.begin() as t:
                t.put(b, "m", {"id": i, "x": "y" * 100})
        sg.checkpoint()
        assert sg.current_generation >= 4
        if power_loss:
            sg.crash()
            io.crash()
            sg = StorageGroup.open(cfg)
        try:
            a = sg.mount(db_paths(root, "a")[0])
            with sg.reader() as r:
                acked = [row["id"] for row in r.scan(a, "m") if row["x"] == "acked"]
            assert acked == list(range(20))
            sg.checkpoint()  # mounted again: it no longer holds the checkpoint
            assert sg.checkpoint_depth == 0
        finally:
            sg.close()


class _DiesBetweenRenames(FileIO):
    full = False

    def fill_zeros(self, fd: int, start: int, end: int) -> None:
        if self.full and self._paths.get(fd, "").endswith("E00tmp.log"):
            raise OSError(errno.ENOSPC, "No space left on device")
        super().fill_zeros(fd, start, end)

    def rename(self, src: str, dst: str) -> None:
        if os.path.basename(src) == "res1.log":
            raise KeyboardInterrupt  # the process dies between the roll-over's two renames
        super().rename(src, dst)


def test_crash_inside_roll_over_into_a_reserve_log_is_completed(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    io = _DiesBetweenRenames()
    sg = StorageGroup.create(cfg, io=io)
    db = sg.create_database(*db_paths(tmp_path))
    with sg.begin() as t:
        t.declare_table(db, T)
    for i in range(5):
        with sg.begin() as t:
            t.put(db, "m", {"id": i, "x": "acked"})
    tmp = os.path.join(cfg.log_path, "E00tmp.log")
    if os.path.exists(tmp):
        os.unlink(tmp)
        sg._writer._prepared = False  # type: ignore[union-attr]
    io.full = True
    try:
        sg.roll()
        raise AssertionError("the roll-over should have died")
    except KeyboardInterrupt:
        pass
    sg.crash()
    assert not os.path.exists(os.path.join(cfg.log_path, "E00.log"))
    sg = StorageGroup.open(cfg)
    try:
        assert sg.current_generation == 2
        db = sg.mount(db_paths(tmp_path)[0])
        with sg.reader() as r:
            assert [row["id"] for row in r.scan(db, "m")] == list(range(5))
    finally:
        sg.close()


def test_recovery_continues_an_unsealed_flush(tmp_path: Path) -> None:
    """A kill in the middle of a flush (never sealed, never fsync'd), then a power loss
    during recovery's first fsync that loses a sector of that flush: a torn tail, not -501
    (recovery must not seal a *new* flush after one that was never made durable)."""
    cfg = make_config(tmp_path)
    sg = StorageGroup.create(cfg)
    db = sg.create_database(*db_paths(tmp_path))
    with sg.begin() as t:
        t.declare_table(db, T)
    with sg.begin() as t:
        t.put(db, "m", {"id": 1, "x": "acked"})
    t = sg.begin()
    w = t.create_stream(db)
    w.write(b"s" * (3 * lf.SECTOR - lf.RECORD.size - lf.STREAM_HEAD.size))  # ends on a sector
    sg.crash()
    sg = StorageGroup.open(cfg)  # recovery writes DETACH, then TERM
    sg.crash()
    log = os.path.join(cfg.log_path, "E00.log")
    groups = flushes(log)
    stream = next(g for g in groups if g[0].type == lf.STREAM)
    term = groups[-1]
    assert term[0].type == lf.TERM
    with open(log, "r+b") as f:  # power loss in the fsync of the DETACH: TERM never written,
        f.seek((lf.lsn_off(stream[0].pos) // lf.SECTOR + 1) * lf.SECTOR)  # a stream sector lost
        f.write(bytes(lf.SECTOR))
        f.seek(lf.lsn_off(term[0].pos))
        f.write(bytes(lf.lsn_off(term[-1].end) - lf.lsn_off(term[0].pos)))
    sg = StorageGroup.open(cfg)
    try:
        db = sg.mount(db_paths(tmp_path)[0])
        with sg.reader() as r:
            assert [row["id"] for row in r.scan(db, "m")] == [1]
    finally:
        sg.close()


def test_a_failed_checkpoint_after_a_durable_commit_does_not_unacknowledge_it(tmp_path: Path) -> None:
    """The commit record is fsync'd before the checkpoint that follows it runs: a failure of
    that checkpoint is reported (event 484, then -510 on the next commit), never raised from
    the commit() that already succeeded."""
    import errno as errno_mod

    from mailkeep.engine.fileio import Fault, FileIO
    from mailkeep.engine.schema import TableSpec
    from mailkeep.engine.storagegroup import StorageGroup
    from mailkeep.eventlog import EventLog
    from tests.conftest import db_paths, make_config

    io = FileIO()
    events = EventLog()
    sg = StorageGroup.create(make_config(tmp_path, checkpoint_every=2), io=io, events=events)
    db = sg.create_database(*db_paths(tmp_path))
    with sg.begin() as t:  # commit 1
        t.declare_table(db, TableSpec("m", ("id",), ("id",)))
    t2 = sg.begin()
    t2.put(db, "m", {"id": 1})
    # commit 2 triggers a checkpoint; fail the first fsync after the log's (the database's)
    io.faults.append(Fault("fsync", io.counts["fsync"] + 2, errno_mod.EIO))
    t2.commit()  # must not raise: the commit is durable
    assert [e.id for e in events.recent if e.level == "error"] == [484]
    sg.crash()
    sg = StorageGroup.open(make_config(tmp_path))
    db = sg.mount(db_paths(tmp_path)[0])
    with sg.reader() as r:
        assert [row["id"] for row in r.scan(db, "m")] == [1]
    sg.close()


def test_dismount_with_another_reader_of_the_file_still_makes_the_wal_durable(tmp_path: Path) -> None:
    """An outside reader (say, an administrator's sqlite3 shell) holds a snapshot, so SQLite
    cannot fold its WAL into the .edb at dismount: the WAL itself is fsync'd."""
    import sqlite3

    from mailkeep.engine.fileio import FileIO
    from mailkeep.engine.schema import TableSpec
    from mailkeep.engine.storagegroup import StorageGroup
    from tests.conftest import db_paths, make_config

    class Counting(FileIO):
        def __init__(self) -> None:
            super().__init__()
            self.synced: list[str] = []

        def fsync_path(self, path: str) -> None:
            self.synced.append(path)
            super().fsync_path(path)

    io = Counting()
    sg = StorageGroup.create(make_config(tmp_path), io=io)
    edb, _stm = db_paths(tmp_path)
    db = sg.create_database(edb)
    with sg.begin() as t:
        t.declare_table(db, TableSpec("m", ("id",), ("id",)))
        t.put(db, "m", {"id": 7})
    outside = sqlite3.connect(edb)
    outside.execute("BEGIN")
    outside.execute("SELECT count(*) FROM _header").fetchone()
    try:
        sg.dismount(db)
    finally:
        outside.close()
    assert edb + "-wal" in io.synced
    sg.close()


def test_a_database_missing_at_open_keeps_its_logs_under_circular_logging(tmp_path: Path) -> None:
    """A dirty database whose volume is not there when the group opens is skipped (494), but
    the generations it needs are kept until it comes back, so mounting it then replays every
    acknowledged transaction; forget_database releases them."""
    import os

    from mailkeep.engine.logreader import list_generations
    from mailkeep.engine.schema import TableSpec
    from mailkeep.engine.storagegroup import StorageGroup
    from mailkeep.eventlog import EventLog
    from tests.conftest import db_paths, make_config

    cfg = make_config(tmp_path, circular_logging=True)
    sg = StorageGroup.create(cfg)
    edb, stm = db_paths(tmp_path, "away")
    db = sg.create_database(edb, stm)
    other = sg.create_database(*db_paths(tmp_path, "here"))
    with sg.begin() as t:
        t.declare_table(db, TableSpec("m", ("id", "x"), ("id",)))
        t.declare_table(other, TableSpec("m", ("id", "x"), ("id",)))
    for i in range(30):
        with sg.begin() as t:
            t.put(db, "m", {"id": i, "x": "v" * 200})
    sg.crash()
    os.rename(edb, edb + ".offline")  # the volume is not mounted yet
    events = EventLog()
    sg = StorageGroup.open(cfg, events=events)
    assert 494 in [e.id for e in events.recent]
    assert os.path.abspath(edb) in sg.held_databases
    other = sg.mount(db_paths(tmp_path, "here")[0])
    for i in range(400):  # many generations pass; circular logging may not delete the held ones
        with sg.begin() as t:
            t.put(other, "m", {"id": i, "x": "w" * 200})
    assert min(list_generations(cfg.log_path, "E00")) <= 2
    os.rename(edb + ".offline", edb)
    db = sg.mount(edb, stm)
    with sg.reader() as r:
        assert [row["id"] for row in r.scan(db, "m")] == list(range(30))
    assert sg.held_databases == {}
    sg.close()


def test_forget_database_releases_the_held_logs(tmp_path: Path) -> None:
    import os

    from mailkeep.engine.logreader import list_generations
    from mailkeep.engine.schema import TableSpec
    from mailkeep.engine.storagegroup import StorageGroup
    from tests.conftest import db_paths, make_config

    cfg = make_config(tmp_path, circular_logging=True)
    sg = StorageGroup.create(cfg)
    edb, stm = db_paths(tmp_path, "gone")
    db = sg.create_database(edb, stm)
    with sg.begin() as t:
        t.declare_table(db, TableSpec("m", ("id",), ("id",)))
        t.put(db, "m", {"id": 1})
    sg.crash()
    os.unlink(edb)
    sg = StorageGroup.open(cfg)
    other = sg.create_database(*db_paths(tmp_path, "new"))
    with sg.begin() as t:
        t.declare_table(other, TableSpec("m", ("id", "x"), ("id",)))
    for i in range(300):
        with sg.begin() as t:
            t.put(other, "m", {"id": i, "x": "w" * 200})
    assert min(list_generations(cfg.log_path, "E00")) == 1
    assert sg.forget_database(edb) is True
    sg.checkpoint()
    assert min(list_generations(cfg.log_path, "E00"), default=sg.current_generation) >= sg.current_generation - 1
    sg.close()


def test_a_database_detached_in_the_log_but_dirty_on_disk_is_made_clean_at_open(tmp_path: Path) -> None:
    """A crash between a dismount's DETACH record and its Clean Shutdown header: opening the
    group replays the database up to the DETACH and marks it Clean, so it mounts anywhere."""
    from mailkeep.engine.database import read_header
    from mailkeep.engine.header import DbState
    from mailkeep.engine.logformat import DETACH
    from mailkeep.engine.schema import TableSpec
    from mailkeep.engine.storagegroup import StorageGroup
    from tests.conftest import db_paths, make_config

    cfg = make_config(tmp_path)
    sg = StorageGroup.create(cfg)
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    with sg.begin() as t:
        t.declare_table(db, TableSpec("m", ("id",), ("id",)))
    for i in range(5):
        with sg.begin() as t:
            t.put(db, "m", {"id": i})
    w = sg._log_writer()
    w.wait_durable(w.append(DETACH, db.dbid, b"")[1])  # the dismount's first step, then a kill
    sg.crash()
    assert read_header(edb)[0].state == DbState.DIRTY
    sg = StorageGroup.open(cfg)
    assert read_header(edb)[0].state == DbState.CLEAN
    sg.close()
    other = StorageGroup.create(make_config(tmp_path / "elsewhere"))  # a clean database moves freely
    db = other.mount(edb, stm)
    with other.reader() as r:
        assert [row["id"] for row in r.scan(db, "m")] == [0, 1, 2, 3, 4]
    other.close()
