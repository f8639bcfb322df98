"""log: the log writer (append, group commit, roll-over, reserve logs, failure)."""

from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from mailkeep.engine import logformat as lf
from mailkeep.engine import logreader as lr
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import Fault, FileIO
from mailkeep.engine.log import (
    MAX_GENERATION,
    RESERVE_NAMES,
    LogWriter,
    create_first_generation,
    create_reserve_logs,
    tmp_name,
)
from mailkeep.engine.storagegroup import StorageGroup
from mailkeep.eventlog import EventLog
from tests.conftest import MESSAGES, db_paths, make_config

SIZE = lf.MIN_LOG_SIZE


def first_header(generation: int = 1, size: int = SIZE) -> lf.LogHeader:
    created = time.time()
    return lf.LogHeader(
        generation=generation,
        signature=lf.new_signature(created),
        created=created,
        prev_created=0.0,
        file_size=size,
        prefix="E00",
        circular=False,
        log_path="/logs",
        system_path="/sys",
    )


def open_writer(
    log_dir: Path, io: FileIO | None = None, *, generation: int = 1, size: int = SIZE,
    attached: list[lf.AttachedDb] | None = None,
) -> LogWriter:
    io = io or FileIO()
    os.makedirs(log_dir, exist_ok=True)
    h = first_header(generation, size)
    create_first_generation(io, str(log_dir), h)
    return LogWriter(io, str(log_dir), h, offset=lf.HEADER_SIZE, flush=0, attached=lambda: list(attached or []))


def records(path: Path, gen: int, *, newest: bool = True) -> list[lf.Record]:
    return lr.scan_generation(str(path), gen, newest=newest).records


def test_tmp_name_and_reserve_names() -> None:
    assert tmp_name("E00") == "E00tmp.log"
    assert RESERVE_NAMES == ("res1.log", "res2.log")


# -- creation ----------------------------------------------------------------------------------


def test_create_first_generation(tmp_path: Path) -> None:
    io = FileIO()
    h = first_header()
    create_first_generation(io, str(tmp_path), h)
    p = tmp_path / "E00.log"
    assert p.stat().st_size == SIZE
    assert lr.read_header(str(p)) == h
    assert p.read_bytes()[lf.HEADER_SIZE :] == bytes(SIZE - lf.HEADER_SIZE)
    with pytest.raises(FileExistsError):
        create_first_generation(io, str(tmp_path), h)


def test_create_reserve_logs(tmp_path: Path) -> None:
    io = FileIO()
    create_reserve_logs(io, str(tmp_path), SIZE)
    for name in RESERVE_NAMES:
        assert (tmp_path / name).stat().st_size == SIZE
        assert (tmp_path / name).read_bytes() == bytes(SIZE)
    # existing full-size ones are kept; a short one is re-made
    (tmp_path / "res1.log").write_bytes(b"keep" + bytes(SIZE - 4))
    (tmp_path / "res2.log").write_bytes(b"short")
    writes = io.counts["write"]
    create_reserve_logs(io, str(tmp_path), SIZE)
    assert (tmp_path / "res1.log").read_bytes()[:4] == b"keep"
    assert (tmp_path / "res2.log").stat().st_size == SIZE
    assert io.counts["write"] == writes + 1  # one 64 KiB chunk of zeros, for res2 only


# -- append and flush --------------------------------------------------------------------------


def test_max_payload(tmp_path: Path) -> None:
    w = open_writer(tmp_path)
    assert w.max_payload == (SIZE - lf.HEADER_SIZE) // 2 - lf.RECORD.size - lf.SECTOR == 30188
    with pytest.raises(ValueError, match="exceeds 30188"):
        w.append(lf.OPS, 1, bytes(30189))
    w.append(lf.OPS, 1, bytes(30188))
    w.close()
    big = open_writer(tmp_path / "big", size=8 * 1024 * 1024)
    assert big.max_payload == 1 << 20
    big.close()


def test_append_writes_at_once_but_is_not_durable(tmp_path: Path) -> None:
    io = FileIO()
    w = open_writer(tmp_path, io)
    start, end = w.append(lf.OPS, 3, b"hello")
    assert start == lf.lsn(1, lf.HEADER_SIZE)
    assert end == lf.lsn(1, lf.HEADER_SIZE + lf.RECORD.size + 5)
    assert w.appended() == end
    assert w.durable() == start  # nothing fsync'd yet
    fsyncs = io.counts["fsync"]
    # already in the file: a killed process loses nothing that was appended
    recs = records(tmp_path / "E00.log", 1)
    assert [(r.type, r.dbid, r.payload, r.flush) for r in recs] == [(lf.OPS, 3, b"hello", 1)]
    assert io.counts["fsync"] == fsyncs
    w.close()


def test_flush_seals_to_a_sector_and_fsyncs_once(tmp_path: Path) -> None:
    io = FileIO()
    w = open_writer(tmp_path, io)
    w.append(lf.OPS, 1, b"a")
    w.append(lf.COMMIT, 0, b"b")
    before = io.counts["fsync"]
    end = w.flush()
    assert io.counts["fsync"] == before + 1
    assert end == lf.lsn(1, lf.HEADER_SIZE + lf.RECORD.size * 2 + 2)
    assert w.durable() == lf.lsn(1, lf.HEADER_SIZE + lf.SECTOR)
    assert w.appended() == w.durable()
    recs = records(tmp_path / "E00.log", 1)
    assert [(r.type, r.flush) for r in recs] == [(lf.OPS, 1), (lf.COMMIT, 1), (lf.FILL, 1)]
    # nothing new: no fsync
    w.flush()
    w.wait_durable(end)
    assert io.counts["fsync"] == before + 1
    w.close()


def test_each_flush_starts_on_a_sector_boundary(tmp_path: Path) -> None:
    w = open_writer(tmp_path)
    for i in range(5):
        w.append(lf.OPS, 1, b"x" * (i * 200))
        w.flush()
    recs = records(tmp_path / "E00.log", 1)
    firsts = [r for r in recs if r.type == lf.OPS]
    assert [r.flush for r in firsts] == [1, 2, 3, 4, 5]
    assert all(lf.lsn_off(r.pos) % lf.SECTOR == 0 for r in firsts)
    assert all(lf.lsn_off(r.end) % lf.SECTOR == 0 for r in recs if r.type == lf.FILL)
    w.close()


def test_writer_continues_an_existing_generation(tmp_path: Path) -> None:
    io = FileIO()
    w = open_writer(tmp_path, io)
    w.append(lf.OPS, 1, b"first")
    w.flush()
    w.close()
    data = lr.scan_generation(str(tmp_path / "E00.log"), 1, newest=True)
    w2 = LogWriter(io, str(tmp_path), data.header, offset=lf.lsn_off(data.end), flush=data.last_flush, attached=list)
    w2.append(lf.OPS, 1, b"second")
    w2.flush()
    w2.close()
    recs = [r for r in records(tmp_path / "E00.log", 1) if r.type == lf.OPS]
    assert [(r.payload, r.flush) for r in recs] == [(b"first", 1), (b"second", 2)]


def test_wait_durable_for_an_earlier_generation_returns_at_once(tmp_path: Path) -> None:
    io = FileIO()
    w = open_writer(tmp_path, io)
    _s, end = w.append(lf.OPS, 1, b"x")
    w.roll()
    n = io.counts["fsync"]
    w.wait_durable(end)
    assert io.counts["fsync"] == n
    w.close()


def test_close_is_idempotent(tmp_path: Path) -> None:
    w = open_writer(tmp_path)
    w.close()
    w.close()


# -- group commit ------------------------------------------------------------------------------


def test_concurrent_waiters_share_one_fsync(tmp_path: Path) -> None:
    io = FileIO()
    w = open_writer(tmp_path, io)
    n = 8
    appended = threading.Barrier(n)
    ends: list[int] = []
    lock = threading.Lock()
    errs: list[BaseException] = []

    def committer(i: int) -> None:
        try:
            _s, end = w.append(lf.COMMIT, 0, b"txn%d" % i)
            with lock:
                ends.append(end)
            appended.wait()  # every record is appended before anyone waits
            w.wait_durable(end)
            assert w.durable() >= end
        except BaseException as e:  # noqa: BLE001
            errs.append(e)

    before = io.counts["fsync"]
    threads = [threading.Thread(target=committer, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert errs == []
    assert io.counts["fsync"] - before == 1
    assert w.durable() >= max(ends)
    commits = [r for r in records(tmp_path / "E00.log", 1) if r.type == lf.COMMIT]
    assert sorted(r.payload for r in commits) == sorted(b"txn%d" % i for i in range(n))
    assert {r.flush for r in commits} == {1}
    w.close()


class SlowDiskIO(FileIO):
    """A real FileIO on a disk whose fsync takes a few milliseconds."""

    def fsync(self, fd: int) -> None:
        time.sleep(0.005)
        super().fsync(fd)


def test_storage_group_commits_share_fsyncs(tmp_path: Path) -> None:
    io = SlowDiskIO()
    cfg = make_config(tmp_path, log_file_size=4 * 1024 * 1024)
    sg = StorageGroup.create(cfg, io=io, events=EventLog())
    try:
        db = sg.create_database(*db_paths(tmp_path))
        with sg.begin() as t:
            t.declare_table(db, MESSAGES)
        threads_n, per_thread = 6, 5
        start = threading.Barrier(threads_n)
        errs: list[BaseException] = []

        def worker(k: int) -> None:
            try:
                start.wait()
                for i in range(per_thread):
                    with sg.begin() as t:
                        t.insert(db, "messages", {"id": k * 100 + i, "folder": "inbox"})
            except BaseException as e:  # noqa: BLE001
                errs.append(e)

        gen = sg.current_generation
        before = io.counts["fsync"]
        threads = [threading.Thread(target=worker, args=(k,)) for k in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        fsyncs = io.counts["fsync"] - before
        assert errs == []
        assert sg.current_generation == gen  # no roll-over, no checkpoint: only commit fsyncs
        commits = threads_n * per_thread
        assert 1 <= fsyncs < commits
        with sg.reader() as r:
            ids = [row["id"] for row in r.scan(db, "messages")]
        assert ids == sorted(k * 100 + i for k in range(threads_n) for i in range(per_thread))
    finally:
        sg.close()


# -- roll-over ---------------------------------------------------------------------------------


def test_roll_renames_and_starts_the_next_generation(tmp_path: Path) -> None:
    att = [lf.AttachedDb(1, "/d/priv1.edb", "/d/priv1.stm", "1@2.0")]
    w = open_writer(tmp_path, attached=att)
    rolled: list[int] = []
    w.on_roll = rolled.append
    old = w.header
    w.append(lf.OPS, 1, b"in gen 1")
    assert w.roll() == 1
    assert rolled == [2]
    assert w.generation == 2
    assert w.appended() == lf.lsn(2, lf.HEADER_SIZE)
    assert w.durable() == lf.lsn(2, lf.HEADER_SIZE)
    names = sorted(os.listdir(tmp_path))
    assert names == ["E00.log", "E0000000001.log"]
    closed = lr.read_header(str(tmp_path / "E0000000001.log"))
    assert closed.generation == 1
    new = lr.read_header(str(tmp_path / "E00.log"))
    assert new.generation == 2
    assert new.signature == old.signature
    assert new.prev_created == old.created
    assert new.created > old.created
    assert new.attached == att
    assert (new.log_path, new.system_path, new.file_size, new.prefix) == ("/logs", "/sys", SIZE, "E00")
    assert (tmp_path / "E00.log").stat().st_size == SIZE
    # the closed generation was sealed and is complete
    recs = records(tmp_path / "E0000000001.log", 1, newest=False)
    assert [r.type for r in recs] == [lf.OPS, lf.FILL]
    w.append(lf.OPS, 1, b"in gen 2")
    w.flush()
    assert [r.payload for r in records(tmp_path / "E00.log", 2) if r.type == lf.OPS] == [b"in gen 2"]
    w.close()


def test_roll_of_an_empty_generation(tmp_path: Path) -> None:
    w = open_writer(tmp_path)
    assert w.roll() == 1
    assert w.roll() == 2
    assert sorted(os.listdir(tmp_path)) == ["E00.log", "E0000000001.log", "E0000000002.log"]
    assert lr.read_header(str(tmp_path / "E00.log")).generation == 3
    w.close()


def test_full_generation_rolls_over_by_itself(tmp_path: Path) -> None:
    w = open_writer(tmp_path)
    payload = bytes(20000)
    positions = [w.append(lf.OPS, 1, payload) for _ in range(7)]
    gens = [lf.lsn_gen(s) for s, _e in positions]
    assert gens == [1, 1, 1, 2, 2, 2, 3]  # three records of 20 KB fit in 60 KB of records
    assert all(lf.lsn_off(e) <= SIZE for _s, e in positions)
    w.flush()
    assert sorted(os.listdir(tmp_path)) == ["E00.log", "E0000000001.log", "E0000000002.log"]
    lay = lr.layout(str(tmp_path), "E00")
    datas = list(lr.iter_generations(lay, 1))
    assert [sum(r.type == lf.OPS for r in d.records) for d in datas] == [3, 3, 1]
    w.close()


def test_last_generation_refuses_to_roll(tmp_path: Path) -> None:
    w = open_writer(tmp_path, generation=MAX_GENERATION)
    with pytest.raises(EseError) as e:
        w.roll()
    assert (e.value.number, e.value.name) == (-519, "JET_errLogSequenceEnd")
    assert os.listdir(tmp_path) == ["E00.log"]
    w.close()


def test_roll_uses_reserve_logs_when_the_disk_is_full(tmp_path: Path) -> None:
    io = FileIO()
    w = open_writer(tmp_path, io)
    create_reserve_logs(io, str(tmp_path), SIZE)
    # the next write (filling E00tmp.log with zeros) fails with ENOSPC
    io.faults.append(Fault("write", at=io.counts["write"] + 1, errno=errno.ENOSPC))
    assert w.roll() == 1
    assert w.disk_full is True
    h = lr.read_header(str(tmp_path / "E00.log"))
    assert (h.generation, h.reserve) == (2, True)
    assert sorted(os.listdir(tmp_path)) == ["E00.log", "E0000000001.log", "res2.log"]
    w.append(lf.OPS, 1, b"shutdown record")
    w.flush()
    # second time: res2.log
    io.faults.append(Fault("write", at=io.counts["write"] + 1, errno=errno.ENOSPC))
    assert w.roll() == 2
    assert sorted(os.listdir(tmp_path)) == ["E00.log", "E0000000001.log", "E0000000002.log"]
    assert lr.read_header(str(tmp_path / "E00.log")).reserve is True
    # third time: no reserve left
    io.faults.append(Fault("write", at=io.counts["write"] + 1, errno=errno.ENOSPC))
    with pytest.raises(EseError) as e:
        w.roll()
    assert (e.value.number, e.value.name) == (-529, "JET_errLogDiskFull")
    assert w.failed is e.value
    with pytest.raises(EseError) as e2:
        w.append(lf.OPS, 1, b"x")
    assert e2.value.number == -529
    assert not (tmp_path / "E00tmp.log").exists()
    lay = lr.layout(str(tmp_path), "E00")
    assert [d.header.generation for d in lr.iter_generations(lay, 1)] == [1, 2, 3]
    w.close()


def test_other_errors_creating_the_next_generation_fail_the_writer(tmp_path: Path) -> None:
    io = FileIO()
    w = open_writer(tmp_path, io)
    io.faults.append(Fault("write", at=io.counts["write"] + 1, errno=errno.EIO))
    with pytest.raises(EseError) as e:
        w.roll()
    assert (e.value.number, e.value.name) == (-510, "JET_errLogWriteFail")
    assert "creating the next generation after log file" in str(e.value)
    assert not (tmp_path / "E00tmp.log").exists()
    w.close()


# -- failures ----------------------------------------------------------------------------------


def test_failed_fsync_fails_the_writer_for_good(tmp_path: Path) -> None:
    io = FileIO()
    w = open_writer(tmp_path, io)
    _s, end = w.append(lf.COMMIT, 0, b"t1")
    io.faults.append(Fault("fsync", at=io.counts["fsync"] + 1))
    with pytest.raises(EseError) as e:
        w.wait_durable(end)
    assert (e.value.number, e.value.name) == (-510, "JET_errLogWriteFail")
    assert e.value.path == str(tmp_path / "E00.log")
    assert w.failed is e.value
    assert w.durable() < end  # never reported durable
    io.faults.clear()
    with pytest.raises(EseError) as e2:
        w.wait_durable(end)  # a later fsync that would succeed is not trusted
    assert e2.value is e.value
    with pytest.raises(EseError):
        w.append(lf.OPS, 1, b"more")
    with pytest.raises(EseError):
        w.roll()
    w.close()


def test_failed_write_fails_the_writer(tmp_path: Path) -> None:
    io = FileIO()
    w = open_writer(tmp_path, io)
    io.faults.append(Fault("write", at=io.counts["write"] + 1, errno=errno.EIO))
    with pytest.raises(EseError) as e:
        w.append(lf.OPS, 1, b"x")
    assert e.value.number == -510
    assert "writing log file" in str(e.value)
    io.faults.clear()
    with pytest.raises(EseError):
        w.append(lf.OPS, 1, b"y")
    w.close()


def test_waiters_blocked_behind_a_failed_fsync_get_the_error(tmp_path: Path) -> None:
    class FailingSlowIO(FileIO):
        def fsync(self, fd: int) -> None:
            time.sleep(0.05)
            super().fsync(fd)

    io = FailingSlowIO()
    w = open_writer(tmp_path, io)
    io.faults.append(Fault("fsync", at=io.counts["fsync"] + 1))
    _s, e1 = w.append(lf.COMMIT, 0, b"1")
    results: dict[str, object] = {}

    def first() -> None:
        try:
            w.wait_durable(e1)
        except EseError as e:
            results["first"] = e.number

    t = threading.Thread(target=first)
    t.start()
    time.sleep(0.01)
    _s, e2 = w.append(lf.COMMIT, 0, b"2")  # while the first fsync is running
    try:
        w.wait_durable(e2)
    except EseError as e:
        results["second"] = e.number
    t.join(5)
    assert results == {"first": -510, "second": -510}
    w.close()
