"""The streaming online backup API: the guide's step lists for normal, copy, incremental and
differential backups, truncation rules, verification, and abandoned backups."""

from __future__ import annotations

import hashlib
import os
import sqlite3
from pathlib import Path

import pytest

from mailkeep.engine import codec, errors
from mailkeep.engine.backup import BackupFile, OnlineBackup
from mailkeep.engine.database import Database
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.logformat import gen_file_name, lsn_gen
from mailkeep.engine.logreader import StreamLayout, list_generations
from mailkeep.engine.recovery import replay
from mailkeep.engine.storagegroup import StorageGroup, StorageGroupConfig
from mailkeep.eventlog import EventLog
from tests.conftest import MESSAGES, db_paths, make_config


def ese(e: pytest.ExceptionInfo[EseError]) -> tuple[int, str]:
    return e.value.number, e.value.name


def add_rows(sg: StorageGroup, db: Database, ids: range | list[int], *, blob: bool = False) -> None:
    with sg.begin() as t:
        t.declare_table(db, MESSAGES)
        for i in ids:
            size = 0
            if blob:
                with t.create_stream(db) as w:
                    w.write(f"body {i} ".encode() * 300)
                    size = w.stream_id
            t.put(db, "messages", {"id": i, "folder": "inbox", "subject": f"s{i}", "size": size})


def fill_logs(sg: StorageGroup, db: Database, start: int, generations: int) -> int:
    """Commit until ``generations`` more generations are closed; returns the next free id."""
    target = sg.current_generation + generations
    i = start
    while sg.current_generation < target and i < start + 100_000:
        add_rows(sg, db, range(i, i + 20))
        i += 20
    return i


def copy_out(b: OnlineBackup, f: BackupFile, dest: Path) -> str:
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f.name
    with b.open(f) as r, open(out, "wb") as o:
        while chunk := r.read(7000):
            o.write(chunk)
    return str(out)


def restore_and_replay(files: dict[str, str], logs: list[str], signature: str, low: int, high: int) -> Database:
    """What hard recovery will do (issue 8), by hand: open the restored image, replay the
    backed-up generations into it."""
    db = Database(FileIO(), files["edb"], files["stm"])
    db.open()
    numbered = {lsn_gen_of(p): p for p in logs}
    lay = StreamLayout(os.path.dirname(logs[0]), "E00", {g: p for g, p in numbered.items() if g < high},
                       numbered[high], high, signature)
    replay(lay, low, lambda a: db)
    return db


def lsn_gen_of(path: str) -> int:
    return int(os.path.basename(path)[3:11], 16)


@pytest.fixture
def group(tmp_path: Path, events: EventLog) -> StorageGroup:
    g = StorageGroup.create(make_config(tmp_path), io=FileIO(), events=events)
    yield g
    g.close()


def ids(db: Database) -> list[int]:
    conn = db.reader()
    try:
        return sorted(r["id"] for r in db.scan(conn, "messages"))
    finally:
        db.release_reader(conn)


# -- normal -------------------------------------------------------------------------------------
def test_normal_backup_is_a_consistent_image_plus_logs(group: StorageGroup, tmp_path: Path,
                                                       events: EventLog) -> None:
    edb, stm = db_paths(tmp_path)
    db = group.create_database(edb, stm)
    add_rows(group, db, range(0, 100), blob=True)
    fill_logs(group, db, 100_000, 2)
    chk_before = group.checkpoint_lsn
    b = group.begin_backup("normal")
    assert group.frozen
    cf = db.header.backups["current_full"]
    assert cf is not None and cf.low_gen == lsn_gen(chk_before) == b.low_gen
    files = b.database_files()
    assert [(f.role, f.path) for f in files] == [("edb", db.edb_path), ("stm", db.stm_path)]
    out: dict[str, str] = {}
    for f in files:
        # mail keeps flowing while the files are copied (and the log rolls over under it)
        add_rows(group, db, range(100 + 50 * len(out), 150 + 50 * len(out)), blob=True)
        fill_logs(group, db, 200_000 + 10_000 * len(out), 1)
        out[f.role] = copy_out(b, f, tmp_path / "media")
    assert group.checkpoint_lsn == chk_before  # frozen all along
    cur_before = group.current_generation
    logs = b.log_files()
    assert b.high_gen == cur_before and group.current_generation == cur_before + 1  # forced roll-over
    assert [f.generation for f in logs] == list(range(b.low_gen, b.high_gen + 1))
    assert all(not f.path.endswith("E00.log") for f in logs)
    log_copies = [copy_out(b, f, tmp_path / "media" / "logs") for f in logs]
    patch = codec.decode(b.patch(db))
    assert (patch["low_gen"], patch["high_gen"], patch["log_signature"]) == (b.low_gen, b.high_gen, group.signature)
    add_rows(group, db, range(900, 910))  # after the roll-over: not in this backup
    doomed = b.truncate()
    b.end()
    assert not group.frozen
    h = db.header.backups
    assert h["current_full"] is None
    pf = h["previous_full"]
    assert pf is not None and (pf.low_gen, pf.high_gen) == (b.low_gen, b.high_gen)
    # truncation: below the frozen checkpoint only (this database's backup covers up to high)
    assert doomed == [g for g in range(1, lsn_gen(chk_before))]
    assert min(list_generations(group.config.log_path, "E00")) == lsn_gen(chk_before)
    assert [e.id for e in events.read(source="ESE") if e.id in (210, 223, 224, 213)] == [210, 223, 224, 213]
    # the image + the backed-up logs give exactly what was committed before the roll-over
    restored = restore_and_replay(out, log_copies, group.signature, b.low_gen, b.high_gen)
    try:
        want = ids(db)
        assert ids(restored) == [i for i in want if not 900 <= i < 910]
        conn = restored.reader()
        try:
            for row in restored.scan(conn, "messages"):
                if row["size"]:
                    off, length, sha = restored.stream_info(conn, row["size"])
                    with open(out["stm"], "rb") as f:
                        f.seek(off)
                        assert hashlib.sha256(f.read(length)).digest() == sha
        finally:
            restored.release_reader(conn)
    finally:
        restored.close()


def test_copy_backup_truncates_nothing_and_keeps_the_header(group: StorageGroup, tmp_path: Path) -> None:
    db = group.create_database(*db_paths(tmp_path))
    fill_logs(group, db, 0, 3)
    before = dict(list_generations(group.config.log_path, "E00"))
    b = group.begin_backup("copy")
    for f in b.database_files():
        copy_out(b, f, tmp_path / "m")
    for f in b.log_files():
        copy_out(b, f, tmp_path / "m")
    with pytest.raises(EseError) as e:
        b.truncate()
    assert ese(e) == (errors.InvalidBackupSequence, "JET_errInvalidBackupSequence")
    b.end()
    assert set(before) <= set(list_generations(group.config.log_path, "E00"))
    assert db.header.backups["previous_full"] is None and db.header.backups["current_full"] is None


# -- incremental and differential -----------------------------------------------------------------
def full(group: StorageGroup, dbs: list[Database] | None = None, dest: Path | None = None,
         group_databases: list[str] | None = None) -> OnlineBackup:
    b = group.begin_backup("normal", dbs, group_databases=group_databases)
    for f in b.database_files():
        copy_out(b, f, dest or Path(group.config.log_path).parent / "media")
    for f in b.log_files():
        copy_out(b, f, dest or Path(group.config.log_path).parent / "media")
    b.truncate()
    b.end()
    return b


def test_incremental_refused_without_normal_and_under_circular_logging(tmp_path: Path, events: EventLog) -> None:
    g = StorageGroup.create(make_config(tmp_path / "a"), io=FileIO(), events=events)
    try:
        g.create_database(*db_paths(tmp_path / "a"))
        for kind in ("incremental", "differential"):
            with pytest.raises(EseError) as e:
                g.begin_backup(kind)
            assert ese(e) == (errors.MissingFullBackup, "JET_errMissingFullBackup")
            assert "never had a normal backup" in e.value.detail
        assert not g.frozen and g.backup is None
    finally:
        g.close()
    c = StorageGroup.create(make_config(tmp_path / "c", circular_logging=True), io=FileIO(), events=events)
    try:
        c.create_database(*db_paths(tmp_path / "c"))
        full(c)
        with pytest.raises(EseError) as e:
            c.begin_backup("incremental")
        assert ese(e) == (errors.InvalidBackup, "JET_errInvalidBackup")
        assert "circular logging" in e.value.detail
    finally:
        c.close()


def test_incremental_rolls_first_copies_all_logs_and_truncates(group: StorageGroup, tmp_path: Path) -> None:
    db = group.create_database(*db_paths(tmp_path))
    fill_logs(group, db, 0, 2)
    f = full(group)
    fill_logs(group, db, 10_000, 3)
    cur = group.current_generation
    b = group.begin_backup("incremental")
    assert group.current_generation == cur + 1  # rolled at the very beginning
    assert b.database_files() == []
    logs = b.log_files()
    on_disk = sorted(g for g in list_generations(group.config.log_path, "E00") if g <= cur)
    assert [x.generation for x in logs] == on_disk and logs[-1].generation == cur
    for x in logs:
        copy_out(b, x, tmp_path / "inc")
    b.truncate()
    b.end()
    pi = db.header.backups["previous_incremental"]
    assert pi is not None and (pi.low_gen, pi.high_gen) == (on_disk[0], cur)
    pf = db.header.backups["previous_full"]
    assert pf is not None and pf.high_gen == f.high_gen
    # differential: same logs, nothing truncated, header untouched
    fill_logs(group, db, 20_000, 2)
    before = sorted(list_generations(group.config.log_path, "E00"))
    d = group.begin_backup("differential")
    got = [x.generation for x in d.log_files()]
    assert got == sorted(g for g in list_generations(group.config.log_path, "E00") if g <= d.high_gen)
    d.end()
    assert set(before) <= set(list_generations(group.config.log_path, "E00"))
    assert db.header.backups["previous_incremental"] == pi


# -- truncation: the least recently backed-up database decides ----------------------------------
def test_two_databases_backed_up_on_different_days(group: StorageGroup, tmp_path: Path, events: EventLog) -> None:
    a = group.create_database(*db_paths(tmp_path, "a"))
    b_db = group.create_database(*db_paths(tmp_path, "b"))
    fill_logs(group, a, 0, 3)
    tuesday = full(group, [a])  # only a: b was never backed up, so nothing may go
    assert tuesday.truncated == []
    assert [e.id for e in events.read(source="ESE")][-2:] == [225, 213]
    fill_logs(group, b_db, 10_000, 3)
    thursday = full(group, [b_db])  # b now; a's backup (Tuesday) decides
    assert thursday.truncated == list(range(1, tuesday.high_gen + 1))
    fill_logs(group, a, 20_000, 3)
    friday = full(group, [a])  # a again: up to Thursday now
    assert friday.truncated == list(range(tuesday.high_gen + 1, thursday.high_gen + 1))


def test_nothing_truncated_while_a_database_of_the_group_is_dismounted(group: StorageGroup, tmp_path: Path,
                                                                       events: EventLog) -> None:
    a = group.create_database(*db_paths(tmp_path, "a"))
    other = group.create_database(*db_paths(tmp_path, "b"))
    group.dismount(other)
    fill_logs(group, a, 0, 3)
    b = full(group, [a], group_databases=[a.edb_path, other.edb_path])
    assert b.truncated == []
    ev = [e for e in events.read(source="ESE", event_id=225)][-1]
    assert "is dismounted" in ev.message and other.edb_path in ev.message


# -- sequence, exclusivity, abandon ---------------------------------------------------------------
def test_one_backup_at_a_time_and_abandon(group: StorageGroup, tmp_path: Path, events: EventLog) -> None:
    db = group.create_database(*db_paths(tmp_path))
    fill_logs(group, db, 0, 1)
    b = group.begin_backup("normal")
    with pytest.raises(EseError) as e:
        group.begin_backup("copy")
    assert ese(e) == (errors.BackupInProgress, "JET_errBackupInProgress")
    with pytest.raises(EseError) as e:
        b.end()
    assert ese(e) == (errors.InvalidBackupSequence, "JET_errInvalidBackupSequence")
    f = b.database_files()[0]
    r = b.open(f)
    r.read(100)
    b.end(ok=False)  # the agent went away
    assert not group.frozen and group.backup is None
    assert db.header.backups["current_full"] is None and db.header.backups["previous_full"] is None
    with pytest.raises(EseError) as e:
        r.read(100)
    assert ese(e) == (errors.BackupAbortByServer, "JET_errBackupAbortByServer")
    assert events.read(source="ESE", event_id=214).__next__().level == "error"
    chk = group.checkpoint_lsn
    fill_logs(group, db, 1000, 2)
    assert group.checkpoint_lsn > chk  # unfrozen: it moves again
    full(group)  # and the next backup works


def test_dismounting_a_database_ends_its_backup(group: StorageGroup, tmp_path: Path) -> None:
    db = group.create_database(*db_paths(tmp_path))
    b = group.begin_backup("normal")
    r = b.open(b.database_files()[0])
    group.dismount(db)
    assert b.state == "aborted" and not group.frozen
    with pytest.raises(EseError) as e:
        r.read()
    assert e.value.number == errors.BackupAbortByServer and "was dismounted during the backup" in str(e.value)


# -- verification on the way ----------------------------------------------------------------------
def test_a_damaged_record_stops_the_backup(tmp_path: Path, events: EventLog) -> None:
    cfg = make_config(tmp_path)
    g = StorageGroup.create(cfg, io=FileIO(), events=events)
    edb, stm = db_paths(tmp_path)
    db = g.create_database(edb, stm)
    add_rows(g, db, range(10))
    g.close()
    c = sqlite3.connect(edb, isolation_level=None)  # one record's checksum no longer matches its values
    c.execute('UPDATE "t_messages" SET subject = ? WHERE id = 5', ("tampered",))
    c.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    c.close()
    g = StorageGroup.open(cfg, io=FileIO(), events=events)
    try:
        db = g.mount(edb, stm)
        b = g.begin_backup("normal")
        with pytest.raises(EseError) as e:
            b.open(b.database_files()[0])
        assert ese(e) == (errors.ReadVerifyFailure, "JET_errReadVerifyFailure")
        assert "table messages" in e.value.detail and edb in e.value.detail
        ev = next(events.read(source="ESE", event_id=474))
        assert ev.level == "error" and edb in ev.message
        assert b.state == "aborted" and not g.frozen
    finally:
        g.close()


def test_damaged_stream_bytes_stop_the_backup(group: StorageGroup, tmp_path: Path) -> None:
    db = group.create_database(*db_paths(tmp_path))
    add_rows(group, db, range(5), blob=True)
    group.checkpoint()
    conn = db.reader()
    off, _length, _sha = db.stream_info(conn, 3)
    db.release_reader(conn)
    with open(db.stm_path, "r+b") as f:
        f.seek(off + 10)
        f.write(b"\xff\xfe")
    b = group.begin_backup("normal")
    stm_file = b.database_files()[1]
    r = b.open(stm_file)
    with pytest.raises(EseError) as e:
        while r.read(4096):
            pass
    assert e.value.number == errors.ReadVerifyFailure
    assert f"stream 3 at offset {off}" in e.value.detail
    assert b.state == "aborted"


def test_a_damaged_log_stops_the_backup(group: StorageGroup, tmp_path: Path) -> None:
    db = group.create_database(*db_paths(tmp_path))
    fill_logs(group, db, 0, 3)
    b = group.begin_backup("copy")
    for f in b.database_files():
        copy_out(b, f, tmp_path / "m")
    logs = b.log_files()
    victim = logs[-1].path
    with open(victim, "r+b") as f:
        f.seek(9000)
        f.write(b"\x13" * 64)
    with pytest.raises(EseError) as e:
        b.open(logs[-1])
    assert ese(e) == (errors.LogReadVerifyFailure, "JET_errLogReadVerifyFailure")
    assert victim in e.value.detail and b.state == "aborted" and not group.frozen
    assert victim.endswith(gen_file_name("E00", logs[-1].generation))


def test_config_is_unchanged(sg_config: StorageGroupConfig) -> None:
    assert sg_config.checkpoint_depth_max == 1000


def test_d16_a_backup_that_never_finishes(tmp_path: Path, events: EventLog) -> None:
    """Drill D16 at the engine (the server's limit is 1,000 generations; here 10): the
    checkpoint stays frozen, a warning comes well before the limit, and at the limit the
    databases dismount with an error event, which ends the backup."""
    g = StorageGroup.create(make_config(tmp_path, checkpoint_depth_max=10), io=FileIO(), events=events)
    try:
        db = g.create_database(*db_paths(tmp_path))
        b = g.begin_backup("normal")
        chk = g.checkpoint_lsn
        i = 0
        warned_at = None
        while db in g.databases and i < 200_000:
            add_rows(g, db, range(i, i + 20))
            i += 20
            if warned_at is None and any(True for _ in events.read(source="ESE", event_id=620)):
                warned_at = g.checkpoint_depth
                assert g.checkpoint_lsn == chk  # still frozen
        assert warned_at == 8  # 80 % of the limit
        assert db not in g.databases
        err = next(events.read(source="ESE", event_id=621))
        assert err.level == "error" and err.data["error"] == errors.CheckpointDepthTooDeep
        assert b.state == "aborted" and not g.frozen
        assert next(events.read(source="ESE", event_id=214)).level == "error"
    finally:
        g.close()


def test_dismount_while_the_agent_ends_its_backup_does_not_deadlock(tmp_path: Path, events: EventLog) -> None:
    """The backup and a dismount take the same lock: one waits for the other, neither hangs
    (review finding: a lock of the backup's own, taken in the other order, deadlocked)."""
    import threading

    g = StorageGroup.create(make_config(tmp_path), io=FileIO(), events=events)
    try:
        db = g.create_database(*db_paths(tmp_path))
        calls = {"n": 0}

        def slow_clock() -> float:
            calls["n"] += 1
            if calls["n"] > 1:  # the stamp in end(): hold the lock a while
                import time as _t

                _t.sleep(0.5)
            return 1.0

        b = g.begin_backup("copy", clock=slow_clock)
        for f in b.database_files():
            copy_out(b, f, tmp_path / "m")
        for f in b.log_files():
            copy_out(b, f, tmp_path / "m")
        done: list[str] = []
        t = threading.Thread(target=lambda: (b.end(), done.append("end")))
        t.start()
        import time as _t

        _t.sleep(0.1)
        g.dismount(db)
        done.append("dismount")
        t.join(10)
        assert not t.is_alive() and sorted(done) == ["dismount", "end"]
        assert b.state == "ended" and not g.frozen
    finally:
        g.close()


def test_two_readers_of_one_file(group: StorageGroup, tmp_path: Path) -> None:
    db = group.create_database(*db_paths(tmp_path))
    add_rows(group, db, range(10))
    b = group.begin_backup("copy")
    edb = b.database_files()[0]
    r1, r2 = b.open(edb), b.open(edb)
    r1.close()
    with pytest.raises(EseError) as e:
        b.log_files()  # the other reader is still copying: the image must stay held
    assert e.value.number == errors.InvalidBackupSequence
    r2.close()
    b.log_files()
    b.end()
