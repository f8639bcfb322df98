"""A full disk (ARCHITECTURE.md section 3, "Disk full"; reliability.md, method 4).

When the next log generation cannot be created, a reserve log (res1.log, then res2.log,
pre-allocated at full size) becomes that generation and takes the records that shut every
database down cleanly; the databases dismount with error event 429; nothing committed is lost;
mounting is refused (-529) while the disk is still full and works again once space is freed.

The tmpfs tests mount a real 8 MiB tmpfs (root only; CI runs as root) and fill it with a
filler file: with only the log folder on it, with the database files there too, and with only
the database files there (a database write then fails first: -1808, never a bare OSError, and
nothing acknowledged is lost). One test, run by anyone, injects ENOSPC with FileIO at the
write that prepares the next generation.
"""

from __future__ import annotations

import errno
import hashlib
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailkeep.engine import logformat as lf
from mailkeep.engine import logreader as lr
from mailkeep.engine.database import Database, read_header
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import Fault, FileIO
from mailkeep.engine.header import DbState
from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import StorageGroup, StorageGroupConfig
from mailkeep.eventlog import EventLog
from tests.conftest import MESSAGES, SMALL_LOG, db_paths, make_config

TMPFS_LOG = 256 * 1024
MAX_TXNS = 5000
TIME_BUDGET = 120.0  # seconds for one commit loop
PAD = TableSpec("pad", ("id", "value"), ("id",))


def stream_body(i: int, size: int) -> bytes:
    seed = hashlib.sha256(f"content-{i}".encode()).digest()
    return (seed * (size // len(seed) + 1))[:size]


@dataclass
class Workload:
    """Transactions with known content; ``acked`` are those whose commit() returned."""

    stream_every: int = 2
    stream_size: int = 12_000
    pad_puts: int = 0  # extra logged updates of one row: log-heavy, database-light
    acked: list[int] = field(default_factory=list)
    streams: dict[int, int] = field(default_factory=dict)  # txn -> stream size
    next: int = 0

    def commit(self, sg: StorageGroup, db: Database, *, stream_size: int | None = None) -> int:
        i = self.next
        self.next += 1
        size = stream_size if stream_size is not None else self.stream_size if i % self.stream_every == 0 else 0
        with sg.begin() as t:
            sid = -1
            if size:
                w = t.create_stream(db)
                w.write(stream_body(i, size))
                sid = w.close()
            t.put(db, "messages", {"id": i, "folder": "inbox", "subject": f"message {i}", "size": sid})
            for k in range(self.pad_puts):
                t.put(db, "pad", {"id": 0, "value": f"{i}-{k}-" + "p" * 2000})
            end = t.commit()
        self.acked.append(i)
        if size:
            self.streams[i] = size
        return end

    def commit_until_failure(self, sg: StorageGroup, db: Database) -> EseError:
        deadline = time.monotonic() + TIME_BUDGET
        for _ in range(MAX_TXNS):
            assert time.monotonic() < deadline, "commits never failed within the time budget"
            try:
                self.commit(sg, db)
            except EseError as e:
                return e
        raise AssertionError(f"commits never failed in {MAX_TXNS} transactions")

    def check(self, sg: StorageGroup, db: Database) -> None:
        """Exactly the acknowledged transactions are there, byte for byte."""
        with sg.reader() as r:
            rows = {row["id"]: row for row in r.scan(db, "messages")}
            assert sorted(rows) == self.acked
            for i in self.acked:
                row = rows[i]
                assert (row["folder"], row["subject"]) == ("inbox", f"message {i}")
                if i in self.streams:
                    with r.open_stream(db, row["size"]) as s:
                        assert s.readall() == stream_body(i, self.streams[i])
                else:
                    assert row["size"] == -1


def new_group(
    log_path: Path, db_dir: Path, root: Path, log_size: int, io: FileIO, n_dbs: int = 1
) -> tuple[StorageGroup, list[Database]]:
    config = make_config(root, log_path=str(log_path), log_file_size=log_size)
    sg = StorageGroup.create(config, io=io, events=EventLog(str(root / "events.jsonl")))
    dbs = [sg.create_database(*db_paths(db_dir, f"priv{j + 1}")) for j in range(n_dbs)]
    with sg.begin() as t:
        for db in dbs:
            t.declare_table(db, MESSAGES)
            t.declare_table(db, PAD)
    return sg, dbs


def events(sg: StorageGroup, event_id: int) -> list[str]:
    return [f"{e.level}: {e.message}" for e in sg.events.read(source="ESE", event_id=event_id)]


def assert_reserve_shutdown(
    sg: StorageGroup, dbs: list[Database], failure: EseError, gen_before: int, rolls: int,
    tmp_may_remain: bool = False,
) -> None:
    """The state right after commits stopped: a reserve log is the current generation, every
    database was dismounted cleanly, error 429 names them, the next commit was refused."""
    cfg: StorageGroupConfig = sg.config
    log_dir = cfg.log_path
    assert (failure.number, failure.name) == (-1203, "JET_errDatabaseNotFound"), str(failure)
    assert sg.databases == []
    assert sorted(n for n in os.listdir(log_dir) if n.startswith("res")) == ["res2.log"]  # res1.log was used
    cur = lr.read_header(os.path.join(log_dir, "E00.log"))
    assert (cur.generation, cur.reserve) == (gen_before + rolls, True)
    assert sorted(lr.list_generations(log_dir, "E00")) == list(range(1, gen_before + rolls))
    if not tmp_may_remain:  # a full disk: the failed preparation removed its partial file
        assert not os.path.exists(os.path.join(log_dir, "E00tmp.log"))
    full = events(sg, 429)
    assert len(full) == 1 and full[0].startswith("error: "), full
    for db in dbs:
        assert db.edb_path in full[0]
        h, _ = read_header(db.edb_path)
        assert (h.state, h.log_required_low) == (DbState.CLEAN, 0)


def assert_recovers(
    sg: StorageGroup, dbs: list[Database], works: list[Workload], free_space: Callable[[], None]
) -> None:
    """Mounting is refused while the disk is full and works once space is freed; then every
    acknowledged transaction is there, also after a restart (soft recovery)."""
    paths = [(db.edb_path, db.stm_path) for db in dbs]
    with pytest.raises(EseError) as e:
        sg.mount(*paths[0])
    assert (e.value.number, e.value.name) == (-529, "JET_errLogDiskFull"), str(e.value)
    assert sg.config.log_path in str(e.value)
    free_space()
    dbs = [sg.mount(*p) for p in paths]
    assert len(events(sg, 430)) == 1
    assert os.path.getsize(os.path.join(sg.config.log_path, "res1.log")) == sg.config.log_file_size
    for db, work in zip(dbs, works, strict=True):
        work.check(sg, db)
        work.commit(sg, db)  # the group works again
    io, config, ev = sg.io, sg.config, sg.events
    sg.close()
    sg = StorageGroup.open(config, io=io, events=ev)
    try:
        for p, work in zip(paths, works, strict=True):
            work.check(sg, sg.mount(*p))
    finally:
        sg.close()


# -- a real full disk (tmpfs) --------------------------------------------------------------------


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)]).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=True)
            pytest.fail(f"{mnt} was still busy (a file left open); unmounted lazily")


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(path: Path, leave: int) -> None:
    """A filler file that leaves ``leave`` bytes free on the file system of ``path``."""
    size = free_bytes(path.parent) - leave
    assert size > 0
    chunk = bytes(1 << 20)
    with open(path, "wb") as f:
        while size > 0:
            size -= f.write(chunk[: min(len(chunk), size)])
        f.flush()
        os.fsync(f.fileno())
    assert abs(free_bytes(path.parent) - leave) < 64 * 1024


@pytest.mark.root
def test_log_disk_full_uses_reserve_log_and_dismounts_cleanly(tmpfs: Path, tmp_path: Path) -> None:
    sg, (db, db2) = new_group(tmpfs / "logs", tmp_path / "data", tmp_path, TMPFS_LOG, FileIO(), n_dbs=2)
    try:
        work, work2 = Workload(), Workload(stream_every=3)
        while sg.current_generation < 3:
            work.commit(sg, db)
            work2.commit(sg, db2)
        gen_before = sg.current_generation
        filler = tmpfs / "filler"
        fill(filler, 2 * TMPFS_LOG + 100 * 1024)  # room for two more prepared generations (one is ready)
        failure = work.commit_until_failure(sg, db)
        assert_reserve_shutdown(sg, [db, db2], failure, gen_before, rolls=4)
        assert_recovers(sg, [db, db2], [work, work2], lambda: os.unlink(filler))
    finally:
        sg.close()


@pytest.mark.root
def test_disk_full_with_databases_on_the_same_disk(tmpfs: Path, tmp_path: Path) -> None:
    """The database files share the full disk: the space left when the next generation
    cannot be created is enough for their clean shutdown (a header write each). The workload
    is log-heavy (each transaction updates one row many times), so the log needs a new
    generation long before the databases run out of room."""
    sg, (db, db2) = new_group(tmpfs / "logs", tmpfs / "data", tmp_path, TMPFS_LOG, FileIO(), n_dbs=2)
    try:
        work, work2 = Workload(stream_every=3, stream_size=3000, pad_puts=25), Workload(stream_every=3)
        while sg.current_generation < 3:
            work.commit(sg, db)
            work2.commit(sg, db2)
        gen_before = sg.current_generation
        filler = tmpfs / "filler"
        fill(filler, 200 * 1024)  # less than a generation (the next one is already prepared)
        failure = work.commit_until_failure(sg, db)
        assert_reserve_shutdown(sg, [db, db2], failure, gen_before, rolls=2)
        assert_recovers(sg, [db, db2], [work, work2], lambda: os.unlink(filler))
    finally:
        sg.close()


@pytest.mark.root
def test_database_disk_full_fails_the_stream_write_with_1808(tmpfs: Path, tmp_path: Path) -> None:
    """Only the database files are on the full disk, so the log never needs a reserve log:
    the transaction whose stream cannot be written fails with -1808 naming the .stm (an ESE
    error, never a bare OSError) and is rolled back; the database stays mounted, and once
    space is freed the group goes on with every acknowledged transaction."""
    sg, (db,) = new_group(tmp_path / "logs", tmpfs / "data", tmp_path, TMPFS_LOG, FileIO())
    try:
        work = Workload()
        while sg.current_generation < 2:
            work.commit(sg, db)
        filler = tmpfs / "filler"
        fill(filler, 100 * 1024)
        with pytest.raises(EseError) as e:
            work.commit(sg, db, stream_size=200 * 1024)
        assert (e.value.number, e.value.name) == (-1808, "JET_errDiskFull"), str(e.value)
        assert e.value.path == db.stm_path and db.stm_path in str(e.value)
        assert sg.databases == [db] and events(sg, 429) == [] and events(sg, 482) == []
        os.unlink(filler)
        work.commit(sg, db, stream_size=200 * 1024)
        work.check(sg, db)
        edb, stm, config, ev = db.edb_path, db.stm_path, sg.config, sg.events
        sg.crash()
        sg = StorageGroup.open(config, events=ev)
        db = sg.mount(edb, stm)
        work.check(sg, db)
    finally:
        sg.close()


@pytest.mark.root
def test_database_disk_full_at_commit_dismounts_for_replay(tmpfs: Path, tmp_path: Path) -> None:
    """The table file cannot grow when a transaction commits (its commit record is already
    in the log): the commit fails with -1808, the database is dismounted (error 482) in Dirty
    Shutdown, and mounting it once space is freed replays the log. The failed commit's
    outcome is unknown (it may be replayed, whole), nothing acknowledged is lost."""
    sg, (db,) = new_group(tmp_path / "logs", tmpfs / "data", tmp_path, TMPFS_LOG, FileIO())
    try:
        work = Workload(stream_every=10**9)
        while sg.current_generation < 2:
            work.commit(sg, db)
        sg.checkpoint()  # the WAL is empty: the next commit must grow it
        filler = tmpfs / "filler"
        fill(filler, 0)
        with pytest.raises(EseError) as e:
            work.commit(sg, db)
        assert (e.value.number, e.value.name) == (-1808, "JET_errDiskFull"), str(e.value)
        assert db.edb_path in str(e.value)
        assert sg.databases == []
        failed = events(sg, 482)
        assert len(failed) == 1 and failed[0].startswith("error: ") and db.edb_path in failed[0]
        assert read_header(db.edb_path)[0].state == DbState.DIRTY
        os.unlink(filler)
        db = sg.mount(db.edb_path, db.stm_path)
        with sg.reader() as r:
            ids = sorted(row["id"] for row in r.scan(db, "messages"))
        assert ids in (work.acked, [*work.acked, work.next - 1])  # the unknown outcome, whole or not at all
        if len(ids) > len(work.acked):
            work.acked.append(work.next - 1)
        work.check(sg, db)
    finally:
        sg.close()


@pytest.mark.root
def test_close_with_database_disk_full_leaves_it_dirty_for_replay(tmpfs: Path, tmp_path: Path) -> None:
    """close() cannot write the Clean Shutdown header of a database on a full disk: it
    raises -1808 naming the table file, lets go of the files (the tmpfs fixture then unmounts
    it: no descriptor left open), and leaves the database Dirty Shutdown, which mounting
    replays once space is freed."""
    sg, (db,) = new_group(tmp_path / "logs", tmpfs / "data", tmp_path, TMPFS_LOG, FileIO())
    work = Workload()
    while sg.current_generation < 2:
        work.commit(sg, db)
    sg.checkpoint()  # the WAL is empty: the header write must grow it
    filler = tmpfs / "filler"
    fill(filler, 0)
    with pytest.raises(EseError) as e:
        sg.close()
    assert (e.value.number, e.value.name) == (-1808, "JET_errDiskFull"), str(e.value)
    assert db.edb_path in str(e.value)
    assert read_header(db.edb_path)[0].state == DbState.DIRTY
    os.unlink(filler)
    sg = StorageGroup.open(sg.config, events=sg.events)
    try:
        db = sg.mount(db.edb_path, db.stm_path)
        work.check(sg, db)
    finally:
        sg.close()


# -- injected ENOSPC (no root needed) ------------------------------------------------------------


def test_enospc_preparing_next_generation_uses_reserve_log(tmp_path: Path) -> None:
    """Fault("write", N, ENOSPC) where N is the write that makes the next generation
    (E00tmp.log): the commit that needed it goes into res1.log, which becomes the generation;
    the database is shut down cleanly into it."""
    io = FileIO()
    sg, (db, db2) = new_group(tmp_path / "logs", tmp_path / "data", tmp_path, SMALL_LOG, io, n_dbs=2)
    try:
        work, work2 = Workload(stream_every=3, stream_size=2000), Workload(stream_every=3, stream_size=2000)
        for _ in range(5):
            work2.commit(sg, db2)
        end = 0
        while sg.current_generation < 3 or lf.lsn_off(end) < 40 * 1024:
            end = work.commit(sg, db)
            assert work.next < MAX_TXNS
        gen_before = sg.current_generation
        # A stream of one full log record: its first append cannot fit in the current
        # generation, so the next write is the one preparing the next generation.
        chunk = (SMALL_LOG - lf.HEADER_SIZE) // 2 - lf.RECORD.size - lf.SECTOR - lf.STREAM_HEAD.size
        fault = Fault("write", io.counts["write"] + 1, errno.ENOSPC)
        io.faults.append(fault)
        work.commit(sg, db, stream_size=chunk)
        assert fault.fired == 1
        failure = work.commit_until_failure(sg, db)
        assert work.acked[-1] == work.next - 2  # the transaction in the reserve log was acknowledged
        # the one-shot fault is gone, so the next generation was prepared again afterwards
        assert_reserve_shutdown(sg, [db, db2], failure, gen_before, rolls=1, tmp_may_remain=True)

        def free_space() -> None:
            io.faults.clear()

        # "still full": every write fails while mount tries to re-create the reserve logs
        io.faults.append(Fault("write", io.counts["write"] + 1, errno.ENOSPC, persistent=True))
        assert_recovers(sg, [db, db2], [work, work2], free_space)
    finally:
        sg.close()
