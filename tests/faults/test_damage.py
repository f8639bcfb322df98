"""Damaged, missing and foreign files (reliability.md, method 7; ARCHITECTURE.md section 3).

Each test builds a real storage group with committed transactions across several 64 KiB log
generations, stops it (``crash()`` or ``close()``), damages files on disk, and checks the exact
outcome: the ESE error number and name, the file named in the message, or, where damage is
allowed (a torn tail of the newest generation, a damaged checkpoint), that recovery succeeds
and the databases hold exactly what they should, never a half transaction and never wrong data.

Where recovery must read a closed generation, the checkpoint is frozen at generation 2 before
the group crashes (as an online backup freezes it): soft recovery starts at the checkpoint, so
generations below it are not read, and damage there cannot be seen by ``open()``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailkeep.engine import logformat as lf
from mailkeep.engine import logreader as lr
from mailkeep.engine.database import Database, read_header
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import CrashSimIO, FileIO
from mailkeep.engine.header import DbState
from mailkeep.engine.storagegroup import RecoveryOptions, StorageGroup, StorageGroupConfig, generation_path
from mailkeep.eventlog import EventLog
from tests.conftest import MESSAGES, db_paths, make_config

ROWS = 3  # rows each transaction writes in each database
STREAM_EVERY = 4  # every 4th transaction also writes a stream in the first database
MAX_TXNS = 3000  # bound on every build loop


def stream_body(i: int) -> bytes:
    seed = hashlib.sha256(f"body-{i}".encode()).digest()
    return (seed * 200)[: 3000 + 37 * (i % 50)]


@dataclass
class Built:
    root: Path
    config: StorageGroupConfig
    events: EventLog
    dbs: list[tuple[str, str]]
    committed: int = 0  # transactions 0 .. committed-1 returned from commit()
    ends: list[int] = field(default_factory=list)  # commit position of each

    def open(self, io: FileIO | None = None, recovery: RecoveryOptions | None = None) -> StorageGroup:
        return StorageGroup.open(self.config, io=io or FileIO(), events=self.events, recovery=recovery)

    def event_ids(self, level: str | None = None) -> list[int]:
        return [e.id for e in self.events.read(source="ESE", level=level)]


def commit_txn(sg: StorageGroup, dbs: list[Database], i: int) -> int:
    t = sg.begin()
    try:
        sid = -1
        if i % STREAM_EVERY == 0:
            w = t.create_stream(dbs[0])
            w.write(stream_body(i))
            sid = w.close()
        for j, db in enumerate(dbs):
            for k in range(ROWS):
                t.put(
                    db,
                    "messages",
                    {"id": i * ROWS + k, "folder": f"f{j}", "subject": f"txn {i} row {k}",
                     "size": sid if k == 0 else k},
                )
        return t.commit()
    except BaseException:
        t.rollback()
        raise


def build(
    root: Path,
    *,
    gens: int = 4,
    extra: int = 5,
    n_dbs: int = 1,
    io: FileIO | None = None,
    freeze_gen: int | None = None,
    directory_guid: str = "",
) -> tuple[StorageGroup, Built]:
    """A storage group whose log reached generation ``gens``, then ``extra`` more commits.
    With ``freeze_gen`` the checkpoint is frozen once it reaches that generation."""
    config = make_config(root)
    events = EventLog(str(root / "events.jsonl"))
    sg = StorageGroup.create(config, io=io or FileIO(), events=events)
    paths = [db_paths(root, f"priv{j + 1}") for j in range(n_dbs)]
    dbs = [sg.create_database(e, s, directory_guid=directory_guid) for e, s in paths]
    with sg.begin() as t:
        for db in dbs:
            t.declare_table(db, MESSAGES)
    b = Built(root, config, events, paths)
    left = extra
    while left > 0:
        assert b.committed < MAX_TXNS, "the log did not reach the wanted generation"
        b.ends.append(commit_txn(sg, dbs, b.committed))
        b.committed += 1
        if freeze_gen is not None and not sg.frozen and lf.lsn_gen(sg.checkpoint_lsn) == freeze_gen:
            sg.freeze_checkpoint()
        if sg.current_generation >= gens:
            left -= 1
    if freeze_gen is not None:
        assert sg.frozen and lf.lsn_gen(sg.checkpoint_lsn) == freeze_gen
    return sg, b


def mount_all(sg: StorageGroup, b: Built) -> list[Database]:
    return [sg.mount(e, s) for e, s in b.dbs]


def present_txns(sg: StorageGroup, b: Built) -> list[int]:
    """Transactions found in the databases, each checked whole and byte for byte."""
    dbs = mount_all(sg, b)
    found: list[int] = []
    with sg.reader() as r:
        rows = [{row["id"]: row for row in r.scan(db, "messages")} for db in dbs]
        for i in range(b.committed + 1):
            parts = [rows[j].get(i * ROWS + k) for j in range(len(dbs)) for k in range(ROWS)]
            have = [p for p in parts if p is not None]
            assert len(have) in (0, len(parts)), f"transaction {i} is half applied: {have}"
            if not have:
                continue
            for j in range(len(dbs)):
                for k in range(ROWS):
                    row = rows[j][i * ROWS + k]
                    assert (row["folder"], row["subject"]) == (f"f{j}", f"txn {i} row {k}")
            sid = rows[0][i * ROWS]["size"]
            if i % STREAM_EVERY == 0:
                with r.open_stream(dbs[0], sid) as s:
                    assert s.readall() == stream_body(i)
            else:
                assert sid == -1
            found.append(i)
        assert sum(len(x) for x in rows) == len(found) * ROWS * len(dbs)
    return found


# -- raw file helpers ----------------------------------------------------------------------------


def flip(path: str | Path, offset: int, count: int = 2, mask: int = 0xFF) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        data = f.read(count)
        assert len(data) == count
        f.seek(offset)
        f.write(bytes(x ^ mask for x in data))


def log_records(path: str) -> list[lf.Record]:
    gen = lr.read_header(path).generation
    with open(path, "rb") as f:
        buf = f.read()
    out = []
    pos = lf.HEADER_SIZE
    while (rec := lf.decode_record(buf, pos, gen)) is not None:
        out.append(rec)
        pos = lf.lsn_off(rec.end)
    return out


def flushes(path: str) -> list[list[lf.Record]]:
    """Records of a generation grouped by flush, in order."""
    groups: list[list[lf.Record]] = []
    for rec in log_records(path):
        if groups and groups[-1][0].flush == rec.flush:
            groups[-1].append(rec)
        else:
            groups.append([rec])
    return groups


def payload_offset(rec: lf.Record) -> int:
    """A file offset in the middle of a record's payload (its checksum then fails)."""
    return lf.lsn_off(rec.pos) + lf.RECORD.size + len(rec.payload) // 2


def find_once(path: str, needle: bytes) -> int:
    with open(path, "rb") as f:
        data = f.read()
    assert data.count(needle) == 1, f"{needle!r} occurs {data.count(needle)} times in {path}"
    return data.index(needle)


def current_log(b: Built) -> str:
    return os.path.join(b.config.log_path, "E00.log")


def expect(exc: pytest.ExceptionInfo[EseError], number: int, name: str, path: str) -> None:
    assert (exc.value.number, exc.value.name) == (number, name), str(exc.value)
    assert path in str(exc.value), f"{path} not named in: {exc.value}"


@pytest.fixture
def crashed_frozen(tmp_path: Path) -> Iterator[Built]:
    """Crashed with the checkpoint frozen at generation 2 and the log at generation 5."""
    sg, b = build(tmp_path, gens=5, freeze_gen=2)
    sg.crash()
    assert sorted(lr.list_generations(b.config.log_path, "E00")) == [1, 2, 3, 4]
    yield b


# -- log records and headers ---------------------------------------------------------------------


def test_flipped_record_in_closed_generation_is_501(crashed_frozen: Built) -> None:
    b = crashed_frozen
    path = generation_path(b.config, 2)
    recs = [r for r in log_records(path) if r.type == lf.OPS]
    flip(path, payload_offset(recs[len(recs) // 2]))
    with pytest.raises(EseError) as e:
        b.open()
    expect(e, -501, "JET_errLogFileCorrupt", path)
    assert e.value.path == path
    assert 454 in b.event_ids("error")


@pytest.mark.parametrize("gen", [2, "current"])
def test_flipped_log_header_is_501(crashed_frozen: Built, gen: int | str) -> None:
    b = crashed_frozen
    path = current_log(b) if gen == "current" else generation_path(b.config, int(gen))
    flip(path, 40)  # inside the header body, covered by its checksum
    with pytest.raises(EseError) as e:
        b.open()
    expect(e, -501, "JET_errLogFileCorrupt", path)
    assert "damaged header" in str(e.value)


def crashed_with_power_loss(root: Path) -> Built:
    """Two databases, crashed as by a power loss: the databases fall back to their last
    checkpointed image, so the log alone decides what they get back."""
    io = CrashSimIO()
    sg, b = build(root, gens=3, extra=8, n_dbs=2, io=io)
    assert sg.checkpoint_lsn < b.ends[-2], "the last commits must need replay"
    sg.crash()
    io.crash()
    return b


@pytest.mark.parametrize("where", ["first", "commit", "fill"])
def test_flipped_tail_of_current_generation_is_torn_tail(tmp_path: Path, where: str) -> None:
    """Damage in the last flush of E00.log is a torn tail: recovery ends the log before it
    (event 462) and the databases hold exactly the transactions before the damage."""
    b = crashed_with_power_loss(tmp_path)
    last = flushes(current_log(b))[-1]
    kinds = [r.type for r in last]
    assert kinds[-2:] == [lf.COMMIT, lf.FILL] and kinds.count(lf.OPS) == 2  # the last transaction
    rec = {"first": last[0], "commit": last[-2], "fill": last[-1]}[where]
    # a FILL's payload is zeros: damage its header (the generation field) instead
    flip(current_log(b), payload_offset(rec) if rec.type != lf.FILL else lf.lsn_off(rec.pos) + 8)
    sg = b.open()
    try:
        assert 462 in b.event_ids("warning")
        # the damaged flush held the last transaction; a damaged FILL leaves it complete
        expected = b.committed if where == "fill" else b.committed - 1
        assert present_txns(sg, b) == list(range(expected))
    finally:
        sg.close()
    # the torn tail was zeroed: the next recovery sees a clean log
    sg = b.open()
    sg.close()


@pytest.mark.parametrize("later", [1, 3])
@pytest.mark.parametrize("where", ["first", "commit"])
def test_flipped_earlier_flush_of_current_generation_is_501(tmp_path: Path, where: str, later: int) -> None:
    """Damage followed by a valid record of a later flush is not a torn tail: the later flush
    was acknowledged, so committed data was damaged (-501), whether the damage hits the first
    record of its flush or one in the middle (here the commit record)."""
    b = crashed_with_power_loss(tmp_path)
    groups = flushes(current_log(b))
    assert len(groups) >= 5
    damaged = groups[-1 - later]
    rec = damaged[0] if where == "first" else next(r for r in damaged if r.type == lf.COMMIT)
    if where == "commit":
        assert rec is not damaged[0]  # damage in the middle of the flush
    flip(current_log(b), payload_offset(rec))
    with pytest.raises(EseError) as e:
        b.open()
    expect(e, -501, "JET_errLogFileCorrupt", current_log(b))
    assert f"a valid record of flush {damaged[0].flush + 1} at" in str(e.value)


def test_torn_first_flush_of_a_new_generation_is_torn_tail(tmp_path: Path) -> None:
    """A power loss while the first flush of a fresh E00.log was being fsync'd: its first
    sector never reached the disk, a later sector of the same flush did (its commit would not
    have returned). Only that flush is lost; records of the torn flush itself beyond the
    damage prove nothing."""
    io = CrashSimIO()
    sg, b = build(tmp_path, gens=2, extra=2, io=io)
    sg.roll()
    sg.checkpoint()
    db = sg.databases[0]
    # a stream record of exactly two sectors, so the next record of the flush starts a sector
    head = lf.RECORD.size + lf.STREAM_HEAD.size
    with sg.begin() as t:
        w = t.create_stream(db)
        w.write(b"s" * (2 * lf.SECTOR - head))
        w.close()
        t.put(db, "messages", {"id": 10**6, "folder": "f0", "subject": "lost", "size": 0})
    sg.crash()
    io.crash()
    (only,) = flushes(current_log(b))
    assert [r.type for r in only] == [lf.STREAM, lf.OPS, lf.COMMIT, lf.FILL]
    assert lf.lsn_off(only[1].pos) == lf.HEADER_SIZE + 2 * lf.SECTOR
    with open(current_log(b), "r+b") as f:
        f.seek(lf.HEADER_SIZE)
        f.write(bytes(lf.SECTOR))
    sg = b.open()
    try:
        assert 462 in b.event_ids("warning")
        assert present_txns(sg, b) == list(range(b.committed))
        with sg.reader() as r:
            assert r.get(sg.databases[0], "messages", (10**6,)) is None
    finally:
        sg.close()


# -- checkpoint ----------------------------------------------------------------------------------


def test_flipped_checkpoint_recovers_from_lowest_generation(tmp_path: Path) -> None:
    io = CrashSimIO()
    sg, b = build(tmp_path, gens=4, extra=3, io=io)
    assert lf.lsn_gen(sg.checkpoint_lsn) == 4
    sg.crash()
    io.crash()
    flip(b.config.checkpoint_path, 30)
    sg = b.open()
    try:
        warnings = [e for e in b.events.read(event_id=533) if e.level == "warning"]
        assert len(warnings) == 1 and b.config.checkpoint_path in warnings[0].message
        begin = [e.message for e in b.events.read(event_id=300)][-1]
        assert "recovery begins at generation 1 (current 4)" in begin
        assert sg.last_recovery["generations"] == 4
        assert present_txns(sg, b) == list(range(b.committed))
    finally:
        sg.close()


# -- missing generations -------------------------------------------------------------------------


def test_missing_middle_generation_is_528(crashed_frozen: Built) -> None:
    b = crashed_frozen
    os.unlink(generation_path(b.config, 3))
    with pytest.raises(EseError) as e:
        b.open()
    expect(e, -528, "JET_errMissingLogFile", "E0000000003.log")
    assert "E0000003.log" in str(e.value)  # the Exchange 2003 5-digit name


def test_missing_checkpoint_generation_is_509(crashed_frozen: Built) -> None:
    b = crashed_frozen
    os.unlink(generation_path(b.config, 2))
    with pytest.raises(EseError) as e:
        b.open()
    expect(e, -509, "JET_errMissingPreviousLogFile", "E0000000002.log")
    assert "E0000002.log" in str(e.value)


def test_generation_below_checkpoint_is_not_needed(crashed_frozen: Built) -> None:
    b = crashed_frozen
    os.unlink(generation_path(b.config, 1))
    sg = b.open()
    try:
        assert present_txns(sg, b) == list(range(b.committed))
    finally:
        sg.close()


def test_missing_current_log_is_528(crashed_frozen: Built) -> None:
    b = crashed_frozen
    os.unlink(current_log(b))
    with pytest.raises(EseError) as e:
        b.open()
    expect(e, -528, "JET_errMissingLogFile", current_log(b))


# -- generations of another stream ---------------------------------------------------------------


@pytest.mark.parametrize("source_gen, number, name", [(3, -530, "JET_errBadLogSignature"),
                                                      (4, -513, "JET_errLogGenerationMismatch")])
def test_generation_from_another_stream(
    tmp_path: Path, source_gen: int, number: int, name: str
) -> None:
    """Generation 3 of another stream under our name E0000000003.log is -530; its generation
    4 renamed to E0000000003.log is -513 (the header's number differs from the name)."""
    other_sg, other = build(tmp_path / "other", gens=5, extra=1)
    other_sg.close()
    sg, b = build(tmp_path / "ours", gens=5, freeze_gen=2)
    sg.crash()
    ours = generation_path(b.config, 3)
    shutil.copyfile(generation_path(other.config, source_gen), ours)
    with pytest.raises(EseError) as e:
        b.open()
    expect(e, number, name, ours)


# -- database files ------------------------------------------------------------------------------


@pytest.fixture
def clean_group(tmp_path: Path) -> Iterator[tuple[StorageGroup, Built]]:
    """An open group whose database was dismounted cleanly after a few transactions."""
    sg, b = build(tmp_path, gens=2, extra=3, directory_guid=f"guid-{uuid.uuid4()}")
    for db in sg.databases:
        sg.dismount(db)
    assert read_header(b.dbs[0][0])[0].state == DbState.CLEAN
    yield sg, b
    sg.close()


def test_flipped_database_header_row_is_1018(clean_group: tuple[StorageGroup, Built]) -> None:
    sg, b = clean_group
    edb, stm = b.dbs[0]
    guid = read_header(edb)[0].directory_guid
    at = find_once(edb, guid.encode())
    flip(edb, at + 10, 1, mask=0x01)  # one character of the GUID: still a valid string, wrong value
    with pytest.raises(EseError) as e:
        read_header(edb)
    expect(e, -1018, "JET_errReadVerifyFailure", edb)
    with pytest.raises(EseError) as e:
        sg.mount(edb, stm)
    expect(e, -1018, "JET_errReadVerifyFailure", edb)
    assert sg.databases == []


@pytest.mark.parametrize("mask", [0x01, 0xFF])
def test_flipped_table_row_is_1018(clean_group: tuple[StorageGroup, Built], mask: int) -> None:
    """0x01 keeps the text valid (only the row checksum sees it); 0xFF makes it invalid UTF-8."""
    sg, b = clean_group
    edb, stm = b.dbs[0]
    db = sg.mount(edb, stm)
    marker = f"unique-{uuid.uuid4()}"
    with sg.begin() as t:
        t.put(db, "messages", {"id": 10**6, "folder": "f0", "subject": marker, "size": 1})
    sg.dismount(db)
    at = find_once(edb, marker.encode())
    flip(edb, at + 8, 1, mask=mask)
    db = sg.mount(edb, stm)
    with sg.reader() as r:
        with pytest.raises(EseError) as e:
            r.get(db, "messages", (10**6,))
        expect(e, -1018, "JET_errReadVerifyFailure", edb)
        if mask == 0x01:
            assert "record (1000000,) of table messages" in str(e.value) and "checksum" in str(e.value)
        with pytest.raises(EseError) as e:
            list(r.scan(db, "messages"))
        expect(e, -1018, "JET_errReadVerifyFailure", edb)
        assert r.get(db, "messages", (3,)) == {"id": 3, "folder": "f0", "subject": "txn 1 row 0", "size": -1}
    with sg.begin() as t, pytest.raises(EseError) as e:
        t.get(db, "messages", (10**6,))
    expect(e, -1018, "JET_errReadVerifyFailure", edb)


def test_flipped_stream_data_is_1018(clean_group: tuple[StorageGroup, Built]) -> None:
    sg, b = clean_group
    edb, stm = b.dbs[0]
    db = sg.mount(edb, stm)
    marker = f"unique-stream-{uuid.uuid4()}".encode()
    body = marker + hashlib.sha256(marker).digest() * 400
    with sg.begin() as t:
        w = t.create_stream(db)
        w.write(body)
        sid = w.close()
    sg.dismount(db)
    at = find_once(stm, marker)
    flip(stm, at + 5000, 1)
    db = sg.mount(edb, stm)
    with sg.reader() as r, r.open_stream(db, sid) as s, pytest.raises(EseError) as e:
        s.readall()
    expect(e, -1018, "JET_errReadVerifyFailure", stm)
    with sg.reader() as r, r.open_stream(db, 1) as s:
        assert s.readall() == stream_body(0)  # other streams are intact


def test_streaming_file_of_another_database_is_540(clean_group: tuple[StorageGroup, Built], tmp_path: Path) -> None:
    sg, b = clean_group
    edb, stm = b.dbs[0]
    other = sg.create_database(*db_paths(tmp_path, "other"))
    sg.dismount(other)
    shutil.copyfile(other.stm_path, stm)
    with pytest.raises(EseError) as e:
        sg.mount(edb, stm)
    expect(e, -540, "JET_errDatabaseStreamingFileMismatch", stm)


def test_missing_streaming_file_is_2204(clean_group: tuple[StorageGroup, Built]) -> None:
    sg, b = clean_group
    edb, stm = b.dbs[0]
    os.unlink(stm)
    with pytest.raises(EseError) as e:
        sg.mount(edb, stm)
    expect(e, -2204, "JET_errSLVStreamingFileMissing", stm)


# -- attach rules --------------------------------------------------------------------------------


def test_two_copies_of_one_database_is_1222(clean_group: tuple[StorageGroup, Built], tmp_path: Path) -> None:
    sg, b = clean_group
    edb, stm = b.dbs[0]
    copy_edb, copy_stm = db_paths(tmp_path, "copy")
    shutil.copyfile(edb, copy_edb)
    shutil.copyfile(stm, copy_stm)
    sg.mount(edb, stm)
    with pytest.raises(EseError) as e:
        sg.mount(copy_edb, copy_stm)
    expect(e, -1222, "JET_errDatabaseSignInUse", copy_edb)
    assert [d.edb_path for d in sg.databases] == [os.path.abspath(edb)]


def test_dirty_database_on_another_stream_is_550(tmp_path: Path) -> None:
    sg, b = build(tmp_path / "a", gens=2, extra=3)
    sg.crash()
    edb, stm = b.dbs[0]
    assert read_header(edb)[0].state == DbState.DIRTY
    copy_edb, copy_stm = db_paths(tmp_path / "b", "priv1")
    shutil.copyfile(edb, copy_edb)
    shutil.copyfile(stm, copy_stm)
    other = StorageGroup.create(make_config(tmp_path / "b"), events=b.events)
    try:
        with pytest.raises(EseError) as e:
            other.mount(copy_edb, copy_stm)
        expect(e, -550, "JET_errDatabaseDirtyShutdown", copy_edb)
        assert other.databases == []
    finally:
        other.close()
    assert read_header(copy_edb)[0].state == DbState.DIRTY  # refused, not changed


@pytest.mark.parametrize("how", ["replaced", "missing"])
def test_logged_database_replaced_is_1216_or_skipped_with_494(tmp_path: Path, how: str) -> None:
    sg, b = build(tmp_path / "a", gens=2, extra=3)
    sg.crash()
    edb, stm = b.dbs[0]
    if how == "replaced":
        other_sg = StorageGroup.create(make_config(tmp_path / "b"))
        other = other_sg.create_database(*db_paths(tmp_path / "b"))
        other_sig = other.header.signature
        other_sg.close()
        shutil.copyfile(other.edb_path, edb)
        shutil.copyfile(other.stm_path, stm)
    else:
        os.unlink(edb)
        os.unlink(stm)
    with pytest.raises(EseError) as e:
        b.open(recovery=RecoveryOptions(ignore_missing=False))
    expect(e, -1216, "JET_errAttachedDatabaseMismatch", edb)
    sg = b.open(recovery=RecoveryOptions(ignore_missing=True))
    try:
        skipped = [ev for ev in b.events.read(event_id=494) if ev.level == "warning"]
        assert skipped and all(edb in ev.message for ev in skipped)
        assert sg.databases == []
    finally:
        sg.close()
    if how == "replaced":
        h, _ = read_header(edb)
        assert (h.signature, h.state) == (other_sig, DbState.CLEAN)  # the stranger was left alone

