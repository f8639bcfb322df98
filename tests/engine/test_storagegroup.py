"""storagegroup: one log stream, one checkpoint, up to five databases; attach rules."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from mailkeep.engine import checkpoint as chkfile
from mailkeep.engine import database as dbm
from mailkeep.engine import logformat as lf
from mailkeep.engine.database import Database
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.header import DatabaseHeader, DbState
from mailkeep.engine.logreader import list_generations, read_header
from mailkeep.engine.storagegroup import (
    MAX_DATABASES,
    RecoveryOptions,
    StorageGroup,
    StorageGroupConfig,
    generation_path,
)
from mailkeep.eventlog import EventLog
from tests.conftest import MESSAGES, db_paths, make_config


def ese(e: pytest.ExceptionInfo[EseError]) -> tuple[int, str]:
    return e.value.number, e.value.name


def event_ids(events: EventLog, **kw: object) -> list[int]:
    return [ev.id for ev in events.read(**kw)]  # type: ignore[arg-type]


def add_rows(sg: StorageGroup, db: Database, ids: range | list[int]) -> None:
    with sg.begin() as t:
        t.declare_table(db, MESSAGES)
        for i in ids:
            t.put(db, "messages", {"id": i, "folder": "inbox", "subject": f"s{i}", "size": i})


def row_ids(sg: StorageGroup, db: Database) -> list[int]:
    with sg.reader() as r:
        return [x["id"] for x in r.scan(db, "messages")]


def copy_db(src: Database | tuple[str, str], dst: tuple[str, str]) -> None:
    edb, stm = (src.edb_path, src.stm_path) if isinstance(src, Database) else src
    shutil.copy(edb, dst[0])
    shutil.copy(stm, dst[1])
    if os.path.exists(edb + "-wal"):
        shutil.copy(edb + "-wal", dst[0] + "-wal")


# -- configuration -----------------------------------------------------------------------------


def test_config_defaults_and_paths(tmp_path: Path) -> None:
    cfg = StorageGroupConfig(str(tmp_path / "l"), str(tmp_path / "s"))
    assert (cfg.prefix, cfg.name, cfg.log_file_size) == ("E00", "First Storage Group", 5 * 1024 * 1024)
    assert (cfg.circular_logging, cfg.checkpoint_depth_max, cfg.checkpoint_every) == (False, 1000, 1000)
    assert cfg.checkpoint_path == str(tmp_path / "s" / "E00.chk")
    assert StorageGroupConfig("l", "s", prefix="r00").prefix == "R00"


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"prefix": "E04"}, "log prefix must be one of E00, E01, E02, E03, R00"),
        ({"log_file_size": 60 * 1024}, "log file size must be a multiple of 4096 and at least 65536"),
        ({"log_file_size": 65536 + 512}, "log file size must be a multiple of 4096"),
        ({"checkpoint_depth_max": 1}, "checkpoint depth limit must be at least 2 generations"),
    ],
)
def test_config_validation(tmp_path: Path, kw: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **kw)


# -- create and open ---------------------------------------------------------------------------


def test_create_lays_out_the_files(sg: StorageGroup, sg_config: StorageGroupConfig, events: EventLog) -> None:
    logs = sorted(os.listdir(sg_config.log_path))
    assert logs == ["E00.log", "res1.log", "res2.log"]
    for name in logs:
        assert os.path.getsize(os.path.join(sg_config.log_path, name)) == 64 * 1024
    assert sorted(os.listdir(sg_config.system_path)) == ["E00.chk", "E00.lock"]
    h = read_header(os.path.join(sg_config.log_path, "E00.log"))
    assert (h.generation, h.signature, h.prefix, h.circular) == (1, sg.signature, "E00", False)
    assert h.log_path == os.path.abspath(sg_config.log_path)
    assert h.system_path == os.path.abspath(sg_config.system_path)
    chk = chkfile.read(sg_config.checkpoint_path)
    assert chk.signature == sg.signature
    assert chk.lsn == sg.checkpoint_lsn
    assert lf.lsn_gen(chk.lsn) == 1
    assert sg.current_generation == 1
    assert sg.checkpoint_depth == 0
    assert sg.databases == []
    assert event_ids(events) == [300, 302, 100]
    lock = os.path.join(sg_config.system_path, "E00.lock")
    assert open(lock).read() == str(os.getpid())


def test_create_refuses_an_existing_stream(sg: StorageGroup, sg_config: StorageGroupConfig) -> None:
    with pytest.raises(EseError) as e:
        StorageGroup.create(sg_config)
    assert ese(e) == (-1032, "JET_errFileAccessDenied")
    assert e.value.path == os.path.join(sg_config.log_path, "E00.log")


def test_create_refuses_closed_generations_without_current(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    os.makedirs(cfg.log_path)
    open(os.path.join(cfg.log_path, "E0000000003.log"), "wb").close()
    with pytest.raises(EseError) as e:
        StorageGroup.create(cfg)
    assert e.value.number == -1032


def test_open_without_a_stream(tmp_path: Path) -> None:
    with pytest.raises(EseError) as e:
        StorageGroup.open(make_config(tmp_path))
    assert ese(e) == (-528, "JET_errMissingLogFile")


def test_second_open_is_refused(sg: StorageGroup, sg_config: StorageGroupConfig) -> None:
    with pytest.raises(EseError) as e:
        StorageGroup.open(sg_config)
    assert e.value.number == -1032
    assert e.value.name == "JET_errFileAccessDenied"
    assert f"in use by process {os.getpid()}" in str(e.value)
    assert e.value.path == os.path.join(sg_config.system_path, "E00.lock")
    # the refused opener changed nothing: the first keeps working
    db = sg.create_database(*db_paths(Path(sg_config.log_path).parent))
    add_rows(sg, db, [1])
    assert row_ids(sg, db) == [1]


def test_open_after_close(sg: StorageGroup, sg_config: StorageGroupConfig) -> None:
    sig = sg.signature
    sg.close()
    sg2 = StorageGroup.open(sg_config)
    try:
        assert sg2.signature == sig
        assert sg2.current_generation == 1
        with pytest.raises(EseError) as e:
            StorageGroup.open(sg_config)
        assert e.value.number == -1032
    finally:
        sg2.close()


def test_two_storage_groups_side_by_side(tmp_path: Path) -> None:
    a = StorageGroup.create(make_config(tmp_path / "a"))
    b = StorageGroup.create(make_config(tmp_path / "b", prefix="E01"))
    try:
        assert a.signature != b.signature
        assert os.listdir(tmp_path / "b" / "logs").count("E01.log") == 1
    finally:
        a.close()
        b.close()


def test_closed_group_refuses_work(sg: StorageGroup, tmp_path: Path) -> None:
    sg.close()
    sg.close()  # idempotent
    for call in (sg.begin, sg.checkpoint, sg.roll, lambda: sg.mount(*db_paths(tmp_path))):
        with pytest.raises(EseError) as e:
            call()
        assert ese(e) == (-516, "JET_errLoggingDisabled")


def test_context_manager_closes(sg_config: StorageGroupConfig) -> None:
    with StorageGroup.create(sg_config) as sg:
        assert sg.current_generation == 1
    with StorageGroup.open(sg_config) as sg2:
        assert sg2.current_generation == 1


def test_checkpoint_of_another_stream_is_refused(tmp_path: Path) -> None:
    a_cfg, b_cfg = make_config(tmp_path / "a"), make_config(tmp_path / "b")
    StorageGroup.create(a_cfg).close()
    StorageGroup.create(b_cfg).close()
    shutil.copy(b_cfg.checkpoint_path, a_cfg.checkpoint_path)
    with pytest.raises(EseError) as e:
        StorageGroup.open(a_cfg)
    assert ese(e) == (-532, "JET_errBadCheckpointSignature")
    # the refused open released its lock
    os.unlink(a_cfg.checkpoint_path)
    StorageGroup.open(a_cfg).close()


def test_damaged_checkpoint_is_ignored_with_a_warning(sg_config: StorageGroupConfig, tmp_path: Path) -> None:
    StorageGroup.create(sg_config).close()
    with open(sg_config.checkpoint_path, "r+b") as f:
        f.write(b"garbage!")
    events = EventLog(str(tmp_path / "ev.jsonl"))
    with StorageGroup.open(sg_config, events=events) as sg:
        assert sg.current_generation == 1
    assert 533 in event_ids(events, level="warning")
    assert chkfile.read(sg_config.checkpoint_path).signature == sg.signature  # rewritten


def test_missing_checkpoint_replays_from_the_lowest_generation(sg_config: StorageGroupConfig,
                                                                 tmp_path: Path) -> None:
    sg = StorageGroup.create(sg_config)
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    add_rows(sg, db, [1])
    sg.roll()
    add_rows(sg, db, [2])
    sg.crash()
    os.unlink(sg_config.checkpoint_path)
    events = EventLog(str(tmp_path / "ev.jsonl"))
    with StorageGroup.open(sg_config, events=events) as sg2:
        assert "recovery begins at generation 1 (current 2)" in next(events.read(event_id=300)).message
        assert sg2.last_recovery["generations"] == 2
        assert row_ids(sg2, sg2.mount(edb, stm)) == [1, 2]
    assert os.path.exists(sg_config.checkpoint_path)


def test_missing_generation_at_the_checkpoint(sg_config: StorageGroupConfig, tmp_path: Path) -> None:
    sg = StorageGroup.create(sg_config)
    db = sg.create_database(*db_paths(tmp_path))
    add_rows(sg, db, [1])
    sg.roll()
    sg.roll()
    sg.crash()
    chk_gen = lf.lsn_gen(chkfile.read(sg_config.checkpoint_path).lsn)
    assert chk_gen < 3
    os.unlink(generation_path(sg_config, chk_gen))
    events = EventLog(str(tmp_path / "ev.jsonl"))
    with pytest.raises(EseError) as e:
        StorageGroup.open(sg_config, events=events)
    assert ese(e) == (-509, "JET_errMissingPreviousLogFile")
    failed = next(events.read(event_id=454))
    assert (failed.level, failed.data["error"]) == ("error", -509)


# -- mount and dismount ------------------------------------------------------------------------


def test_mount_and_dismount_header_states(sg: StorageGroup, tmp_path: Path, events: EventLog) -> None:
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    h, applied = dbm.read_header(edb)
    assert h.state is DbState.DIRTY
    assert h.log_signature == sg.signature
    assert h.log_required_low == sg.current_generation == 1
    assert h.dbid == db.dbid == 1
    assert h.last_attach is not None and h.last_attach.lsn == applied
    assert sg.databases == [db]
    add_rows(sg, db, [1, 2])
    sg.dismount(db)
    h, applied = dbm.read_header(edb)
    assert h.state is DbState.CLEAN
    assert h.log_required_low == 0
    assert h.log_signature == sg.signature
    assert h.last_detach is not None and h.last_consistent is not None
    assert h.last_detach.lsn == h.last_consistent.lsn == applied
    assert sg.databases == []
    ids = event_ids(events, source="ese")
    assert ids.count(326) == 1 and ids.count(327) == 1
    assert ids.index(326) < ids.index(327)
    # mount again: dirty again, same data
    db = sg.mount(edb, stm)
    assert dbm.read_header(edb)[0].state is DbState.DIRTY
    assert row_ids(sg, db) == [1, 2]


def test_create_database_files(sg: StorageGroup, tmp_path: Path) -> None:
    edb = str(tmp_path / "mdbdata" / "pub1.edb")
    db = sg.create_database(edb, directory_guid="guid-7", admin_group="AG")
    assert db.stm_path == str(tmp_path / "mdbdata" / "pub1.stm")
    assert os.path.exists(db.stm_path)
    h = dbm.read_header(edb)[0]
    assert (h.directory_guid, h.admin_group, h.organization) == ("guid-7", "AG", "")
    with pytest.raises(EseError) as e:
        sg.create_database(edb)
    assert e.value.number == -1032


def test_just_created_database_mounts(sg: StorageGroup, tmp_path: Path) -> None:
    # create_database stopped after making the files (Just Created, never attached):
    # nothing was logged for it, so it attaches as it is.
    edb, stm = db_paths(tmp_path)
    dbm.create_files(FileIO(), edb, stm, DatabaseHeader.new())
    assert dbm.read_header(edb)[0].state is DbState.JUST_CREATED
    db = sg.mount(edb, stm)
    h = dbm.read_header(edb)[0]
    assert (h.state, h.log_signature) == (DbState.DIRTY, sg.signature)
    add_rows(sg, db, [1])
    assert row_ids(sg, db) == [1]


def test_mount_of_a_missing_database(sg: StorageGroup, tmp_path: Path) -> None:
    with pytest.raises(EseError) as e:
        sg.mount(str(tmp_path / "none.edb"))
    assert ese(e) == (-1811, "JET_errFileNotFound")
    assert sg.databases == []


def test_mount_of_a_mounted_database_returns_it(sg: StorageGroup, tmp_path: Path) -> None:
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    assert sg.mount(edb, stm) is db
    assert sg.mount(os.path.relpath(edb)) is db
    assert sg.databases == [db]


def test_dismount_of_an_unmounted_database_does_nothing(sg: StorageGroup, tmp_path: Path) -> None:
    db = sg.create_database(*db_paths(tmp_path))
    sg.dismount(db)
    sg.dismount(db)
    assert sg.databases == []


def test_at_most_five_databases(sg: StorageGroup, tmp_path: Path) -> None:
    dbs = [sg.create_database(*db_paths(tmp_path, f"db{i}")) for i in range(MAX_DATABASES)]
    assert [d.dbid for d in dbs] == [1, 2, 3, 4, 5]
    with pytest.raises(EseError) as e:
        sg.create_database(*db_paths(tmp_path, "sixth"))
    assert ese(e) == (-107, "JET_errInternalError")
    assert not os.path.exists(db_paths(tmp_path, "sixth")[0])  # refused before any file was made
    sg.dismount(dbs[4])
    extra = sg.create_database(*db_paths(tmp_path, "extra"))
    assert extra.dbid == 5
    with pytest.raises(EseError) as e:
        sg.mount(dbs[4].edb_path)
    assert ese(e) == (-107, "JET_errInternalError")
    sg.dismount(dbs[2])
    again = sg.mount(dbs[4].edb_path)
    assert again.dbid == 3  # the lowest free id
    assert sorted(d.dbid for d in sg.databases) == [1, 2, 3, 4, 5]


def test_close_leaves_every_database_clean(sg: StorageGroup, tmp_path: Path, events: EventLog) -> None:
    a = sg.create_database(*db_paths(tmp_path, "a"))
    b = sg.create_database(*db_paths(tmp_path, "b"))
    add_rows(sg, a, [1])
    sg.close()
    for d in (a, b):
        h = dbm.read_header(d.edb_path)[0]
        assert (h.state, h.log_required_low) == (DbState.CLEAN, 0)
    assert event_ids(events)[-1] == 101


def test_copy_of_a_mounted_database_in_the_same_group(sg: StorageGroup, tmp_path: Path) -> None:
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    add_rows(sg, db, [1, 2, 3])
    sg.dismount(db)
    copy = db_paths(tmp_path, "copy")
    copy_db((edb, stm), copy)
    db = sg.mount(edb, stm)
    with pytest.raises(EseError) as e:
        sg.mount(*copy)
    assert e.value.number == -1222
    assert e.value.name == "JET_errDatabaseSignInUse"
    assert e.value.path == os.path.abspath(copy[0])
    assert sg.databases == [db]
    # the copy stays clean and mountable once the original is gone
    assert dbm.read_header(copy[0])[0].state is DbState.CLEAN
    sg.dismount(db)
    c = sg.mount(*copy)
    assert row_ids(sg, c) == [1, 2, 3]


def test_dirty_database_into_another_group(tmp_path: Path) -> None:
    a_cfg, b_cfg = make_config(tmp_path / "a"), make_config(tmp_path / "b")
    a = StorageGroup.create(a_cfg)
    edb, stm = db_paths(tmp_path)
    db = a.create_database(edb, stm)
    add_rows(a, db, [1, 2])
    a.crash()
    dirty = db_paths(tmp_path, "dirtycopy")
    copy_db((edb, stm), dirty)
    assert dbm.read_header(dirty[0])[0].state is DbState.DIRTY
    b = StorageGroup.create(b_cfg)
    try:
        with pytest.raises(EseError) as e:
            b.mount(*dirty)
        assert e.value.number == -550
        assert e.value.name == "JET_errDatabaseDirtyShutdown"
        assert e.value.path == os.path.abspath(dirty[0])
        assert a.signature in str(e.value)
        assert b.databases == []
        assert dbm.read_header(dirty[0])[0].state is DbState.DIRTY  # untouched
    finally:
        b.close()
    # its own stream recovers the original
    a2 = StorageGroup.open(a_cfg)
    try:
        assert dbm.read_header(edb)[0].state is DbState.CLEAN
        db = a2.mount(edb, stm)
        assert row_ids(a2, db) == [1, 2]
    finally:
        a2.close()


def test_clean_database_moves_to_another_group(tmp_path: Path) -> None:
    a = StorageGroup.create(make_config(tmp_path / "a"))
    edb, stm = db_paths(tmp_path)
    db = a.create_database(edb, stm)
    add_rows(a, db, [7])
    a.close()
    b = StorageGroup.create(make_config(tmp_path / "b"))
    try:
        db = b.mount(edb, stm)
        assert dbm.read_header(edb)[0].log_signature == b.signature
        assert row_ids(b, db) == [7]
    finally:
        b.close()


def test_database_of_another_organization(tmp_path: Path) -> None:
    a = StorageGroup.create(make_config(tmp_path / "a", organization="Contoso"))
    edb, stm = db_paths(tmp_path)
    a.create_database(edb, stm)
    a.close()
    assert dbm.read_header(edb)[0].organization == "Contoso"
    b = StorageGroup.create(make_config(tmp_path / "b", organization="Fabrikam"))
    try:
        with pytest.raises(EseError) as e:
            b.mount(edb, stm)
        assert e.value.number == -531
        assert e.value.name == "JET_errBadDbSignature"
        assert "'Contoso'" in str(e.value) and "'Fabrikam'" in str(e.value)
        assert b.databases == []
        assert dbm.read_header(edb)[0].state is DbState.CLEAN
    finally:
        b.close()
    # a group without an organization, or of the same one, takes it
    for cfg in (make_config(tmp_path / "c"), make_config(tmp_path / "d", organization="Contoso")):
        g = StorageGroup.create(cfg)
        try:
            assert g.mount(edb, stm).header.organization == "Contoso"
        finally:
            g.close()


def test_database_without_organization_mounts_anywhere(tmp_path: Path) -> None:
    a = StorageGroup.create(make_config(tmp_path / "a"))
    edb, stm = db_paths(tmp_path)
    a.create_database(edb, stm)
    a.close()
    b = StorageGroup.create(make_config(tmp_path / "b", organization="Fabrikam"))
    try:
        b.mount(edb, stm)
    finally:
        b.close()


def test_mismatched_streaming_file(sg: StorageGroup, tmp_path: Path) -> None:
    a = sg.create_database(*db_paths(tmp_path, "a"))
    b = sg.create_database(*db_paths(tmp_path, "b"))
    sg.dismount(a)
    sg.dismount(b)
    with pytest.raises(EseError) as e:
        sg.mount(a.edb_path, b.stm_path)
    assert ese(e) == (-540, "JET_errDatabaseStreamingFileMismatch")


# -- recovery ----------------------------------------------------------------------------------


def test_crash_then_open_recovers_every_attached_database(sg_config: StorageGroupConfig, tmp_path: Path) -> None:
    events = EventLog(str(tmp_path / "ev.jsonl"))
    sg = StorageGroup.create(sg_config, events=events)
    a = sg.create_database(*db_paths(tmp_path, "a"))
    b = sg.create_database(*db_paths(tmp_path, "b"))
    add_rows(sg, a, range(1, 30))
    add_rows(sg, b, [100])
    t = sg.begin()
    t.put(a, "messages", {"id": 999})  # not committed
    sg.crash()
    assert dbm.read_header(a.edb_path)[0].state is DbState.DIRTY
    since = time.time()
    sg2 = StorageGroup.open(sg_config, events=events)
    try:
        for d in (a, b):
            h = dbm.read_header(d.edb_path)[0]
            assert (h.state, h.log_required_low) == (DbState.CLEAN, 0)
        assert sg2.databases == []  # recovery leaves them clean, not mounted
        assert sorted(sg2.last_recovery["databases"]) == sorted([a.edb_path, b.edb_path])  # type: ignore[arg-type]
        assert event_ids(events, since=since) == [300, 327, 327, 302, 100]  # recovery detaches both
        a2 = sg2.mount(a.edb_path, a.stm_path)
        b2 = sg2.mount(b.edb_path, b.stm_path)
        assert row_ids(sg2, a2) == list(range(1, 30))
        assert row_ids(sg2, b2) == [100]
    finally:
        sg2.close()


def test_dirty_database_missing_at_open_is_recovered_at_mount(sg_config: StorageGroupConfig, tmp_path: Path) -> None:
    events = EventLog(str(tmp_path / "ev.jsonl"))
    sg = StorageGroup.create(sg_config, events=events)
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    add_rows(sg, db, range(10))
    sg.crash()
    away = db_paths(tmp_path, "away")
    os.rename(edb, away[0])
    os.rename(stm, away[1])
    if os.path.exists(edb + "-wal"):
        os.rename(edb + "-wal", away[0] + "-wal")
    sg2 = StorageGroup.open(sg_config, events=events)  # /i is the default: skipped with a warning
    try:
        assert 494 in event_ids(events, level="warning")
        os.rename(away[0], edb)
        os.rename(away[1], stm)
        if os.path.exists(away[0] + "-wal"):
            os.rename(away[0] + "-wal", edb + "-wal")
        assert dbm.read_header(edb)[0].state is DbState.DIRTY
        db = sg2.mount(edb, stm)  # soft recovery of the one database, then attach
        assert row_ids(sg2, db) == list(range(10))
        assert dbm.read_header(edb)[0].log_signature == sg2.signature
    finally:
        sg2.close()


def test_missing_database_fails_recovery_without_ignore(sg_config: StorageGroupConfig, tmp_path: Path) -> None:
    sg = StorageGroup.create(sg_config)
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    add_rows(sg, db, [1])
    sg.crash()
    os.rename(edb, edb + ".moved")
    with pytest.raises(EseError) as e:
        StorageGroup.open(sg_config, recovery=RecoveryOptions(ignore_missing=False))
    assert ese(e) == (-1216, "JET_errAttachedDatabaseMismatch")
    os.rename(edb + ".moved", edb)
    StorageGroup.open(sg_config).close()  # the failed open released the lock
    assert dbm.read_header(edb)[0].state is DbState.CLEAN


def test_interrupted_roll_over_is_completed(sg_config: StorageGroupConfig, tmp_path: Path) -> None:
    sg = StorageGroup.create(sg_config)
    sg.roll()
    sg.close()
    # a crash between the two renames of a roll-over: E00.log already renamed, E00tmp.log prepared
    cur = os.path.join(sg_config.log_path, "E00.log")
    old = read_header(cur)
    os.rename(cur, generation_path(sg_config, 2))
    new = lf.LogHeader(
        generation=3, signature=old.signature, created=old.created + 1, prev_created=old.created,
        file_size=old.file_size, prefix="E00", circular=False,
    )
    with open(os.path.join(sg_config.log_path, "E00tmp.log"), "wb") as f:
        f.write(new.encode() + bytes(old.file_size - lf.HEADER_SIZE))
    events = EventLog(str(tmp_path / "ev.jsonl"))
    with StorageGroup.open(sg_config, events=events) as sg2:
        assert sg2.current_generation == 3
        assert 470 in event_ids(events, level="warning")
    assert not os.path.exists(os.path.join(sg_config.log_path, "E00tmp.log"))


def test_unused_prepared_generation_is_removed(sg_config: StorageGroupConfig, tmp_path: Path) -> None:
    StorageGroup.create(sg_config).close()
    tmp = os.path.join(sg_config.log_path, "E00tmp.log")
    with open(tmp, "wb") as f:
        f.write(b"half prepared")
    events = EventLog(str(tmp_path / "ev.jsonl"))
    with StorageGroup.open(sg_config, events=events) as sg:
        assert sg.current_generation == 1
    assert not os.path.exists(tmp)
    assert 470 not in event_ids(events)


# -- checkpoint and roll-over ------------------------------------------------------------------


def test_roll_names_generations(sg: StorageGroup, sg_config: StorageGroupConfig) -> None:
    assert sg.roll() == 1
    assert sg.roll() == 2
    assert sg.current_generation == 3
    names = sorted(n for n in os.listdir(sg_config.log_path) if n.startswith("E00"))
    assert names == ["E00.log", "E0000000001.log", "E0000000002.log"]
    assert generation_path(sg_config, 2) == os.path.join(sg_config.log_path, "E0000000002.log")


def test_checkpoint_follows_mounted_databases(sg: StorageGroup, sg_config: StorageGroupConfig, tmp_path: Path) -> None:
    db = sg.create_database(*db_paths(tmp_path))
    add_rows(sg, db, [1])
    for _ in range(3):
        sg.roll()
    pos = sg.checkpoint()
    assert pos == sg.checkpoint_lsn
    assert lf.lsn_gen(pos) == sg.current_generation == 4
    assert chkfile.read(sg_config.checkpoint_path).lsn == pos
    h = dbm.read_header(db.edb_path)[0]
    assert h.log_required_low == 4
    assert h.log_committed == 4
    chk = chkfile.read(sg_config.checkpoint_path)
    assert chk.attached == [[db.dbid, db.edb_path, db.stm_path, db.header.signature]]
    # without circular logging the old generations stay
    assert sorted(list_generations(sg_config.log_path, "E00")) == [1, 2, 3]


def test_roll_then_commit_moves_the_checkpoint(sg: StorageGroup, tmp_path: Path) -> None:
    db = sg.create_database(*db_paths(tmp_path))
    add_rows(sg, db, [1])
    sg.roll()
    sg.roll()
    add_rows(sg, db, [2])  # the commit after a roll-over checkpoints
    assert lf.lsn_gen(sg.checkpoint_lsn) == 3
    assert sg.checkpoint_depth == 0


def test_automatic_checkpoint_every_n_commits(tmp_path: Path) -> None:
    sg = StorageGroup.create(make_config(tmp_path, checkpoint_every=5, log_file_size=1024 * 1024))
    try:
        db = sg.create_database(*db_paths(tmp_path))
        add_rows(sg, db, [0])
        start = sg.checkpoint_lsn
        for i in range(1, 4):
            add_rows(sg, db, [i])
        assert sg.checkpoint_lsn == start
        for i in range(4, 8):
            add_rows(sg, db, [i])
        assert sg.checkpoint_lsn > start
    finally:
        sg.close()


def test_frozen_checkpoint_does_not_move(sg: StorageGroup, sg_config: StorageGroupConfig, tmp_path: Path) -> None:
    db = sg.create_database(*db_paths(tmp_path))
    add_rows(sg, db, [1])
    sg.checkpoint()
    sg.freeze_checkpoint()
    assert sg.frozen is True
    assert chkfile.read(sg_config.checkpoint_path).frozen is True
    before = sg.checkpoint_lsn
    sg.roll()
    add_rows(sg, db, [2])
    assert sg.checkpoint() == before
    assert sg.checkpoint_depth == 1
    sg.freeze_checkpoint()  # nested freezes
    sg.thaw_checkpoint()
    assert sg.frozen is True
    assert sg.checkpoint_lsn == before
    sg.thaw_checkpoint()
    assert sg.frozen is False
    assert sg.checkpoint_lsn > before
    assert sg.checkpoint_depth == 0
    assert chkfile.read(sg_config.checkpoint_path).frozen is False


def test_thaw_without_new_records_clears_the_frozen_flag(sg: StorageGroup, sg_config: StorageGroupConfig,
                                                         tmp_path: Path) -> None:
    sg.create_database(*db_paths(tmp_path))
    sg.checkpoint()
    sg.freeze_checkpoint()
    assert chkfile.read(sg_config.checkpoint_path).frozen is True
    pos = sg.checkpoint_lsn
    sg.thaw_checkpoint()
    chk = chkfile.read(sg_config.checkpoint_path)
    assert (chk.frozen, chk.lsn) == (False, pos)


def test_circular_logging_deletes_generations_below_the_checkpoint(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, circular_logging=True)
    sg = StorageGroup.create(cfg)
    try:
        assert read_header(os.path.join(cfg.log_path, "E00.log")).circular is True
        db = sg.create_database(*db_paths(tmp_path))
        add_rows(sg, db, [0])
        for i in range(1, 5):
            sg.roll()
            add_rows(sg, db, [i])
            chk_gen = lf.lsn_gen(sg.checkpoint_lsn)
            assert chk_gen == sg.current_generation == i + 1
            assert [g for g in list_generations(cfg.log_path, "E00") if g < chk_gen] == []
        assert sorted(os.listdir(cfg.log_path)) == ["E00.log", "E00tmp.log", "res1.log", "res2.log"]
        assert chkfile.read(cfg.checkpoint_path).circular is True
        assert row_ids(sg, db) == [0, 1, 2, 3, 4]
    finally:
        sg.close()


def test_circular_logging_keeps_what_the_checkpoint_still_needs(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, circular_logging=True)
    sg = StorageGroup.create(cfg)
    try:
        db = sg.create_database(*db_paths(tmp_path))
        add_rows(sg, db, [0])
        sg.checkpoint()
        sg.freeze_checkpoint()
        for i in range(1, 4):
            sg.roll()
            add_rows(sg, db, [i])
        assert sorted(list_generations(cfg.log_path, "E00")) == [1, 2, 3]
        sg.thaw_checkpoint()
        assert list_generations(cfg.log_path, "E00") == {}
    finally:
        sg.close()


def test_circular_logging_survives_a_crash(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, circular_logging=True)
    sg = StorageGroup.create(cfg)
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    for i in range(6):
        add_rows(sg, db, [i])
        sg.roll()
    add_rows(sg, db, [6])
    sg.crash()
    with StorageGroup.open(cfg) as sg2:
        db2 = sg2.mount(edb, stm)
        assert row_ids(sg2, db2) == list(range(7))


def test_checkpoint_depth_limit(tmp_path: Path) -> None:
    events = EventLog(str(tmp_path / "ev.jsonl"))
    cfg = make_config(tmp_path, checkpoint_depth_max=6)
    sg = StorageGroup.create(cfg, events=events)
    try:
        edb, stm = db_paths(tmp_path)
        db = sg.create_database(edb, stm)
        add_rows(sg, db, [0])
        sg.freeze_checkpoint()
        seen: list[tuple[int, list[int]]] = []
        for i in range(1, 7):
            sg.roll()
            add_rows(sg, db, [i])
            seen.append((sg.checkpoint_depth, event_ids(events, source="ESE", level="warning")
                         + event_ids(events, level="error")))
        # warning at 80 % of the limit (depth 4), once; error at the limit (depth 6)
        assert seen == [
            (1, []),
            (2, []),
            (3, []),
            (4, [620]),
            (5, [620]),
            (6, [620, 621]),
        ]
        err = next(events.read(event_id=621))
        assert err.level == "error"
        assert err.data["error"] == -614
        assert err.data["depth"] == 6
        assert "JET_errCheckpointDepthTooDeep" in err.message
        assert next(events.read(event_id=620)).data["depth"] == 4
        # the database was dismounted cleanly
        assert sg.databases == []
        h = dbm.read_header(edb)[0]
        assert (h.state, h.log_required_low) == (DbState.CLEAN, 0)
        with pytest.raises(EseError) as e, sg.begin() as t:
            t.put(db, "messages", {"id": 99})
        assert ese(e) == (-1203, "JET_errDatabaseNotFound")
        # mounting is refused while the checkpoint is that deep
        with pytest.raises(EseError) as e:
            sg.mount(edb, stm)
        assert ese(e) == (-614, "JET_errCheckpointDepthTooDeep")
        # thawing lets it mount again, with every committed row
        sg.thaw_checkpoint()
        assert sg.checkpoint_depth == 0
        db = sg.mount(edb, stm)
        assert row_ids(sg, db) == [0, 1, 2, 3, 4, 5, 6]
        assert dbm.read_header(edb)[0].state is DbState.DIRTY
    finally:
        sg.close()


def test_checkpoint_depth_warning_rearms(tmp_path: Path) -> None:
    events = EventLog()
    sg = StorageGroup.create(make_config(tmp_path, checkpoint_depth_max=6), events=events)
    try:
        db = sg.create_database(*db_paths(tmp_path))
        add_rows(sg, db, [0])
        for _round in range(2):
            sg.freeze_checkpoint()
            for _ in range(4):
                sg.roll()
                add_rows(sg, db, [1])
            sg.thaw_checkpoint()
            assert sg.checkpoint_depth == 0
        assert event_ids(events, event_id=620) == [620, 620]
        assert event_ids(events, event_id=621) == []
        assert sg.databases == [db]
    finally:
        sg.close()


def test_io_is_the_given_one(sg_config: StorageGroupConfig) -> None:
    io = FileIO()
    with StorageGroup.create(sg_config, io=io) as sg:
        assert sg.io is io
        assert io.counts["fsync"] > 0
