"""database: the .edb (SQLite) and .stm files of one database, checked on every read."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from mailkeep.engine import database as dbm
from mailkeep.engine.database import Database, StreamReader
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.header import DatabaseHeader, DbState
from mailkeep.engine.schema import TableSpec
from tests.conftest import MESSAGES, db_paths


@pytest.fixture
def paths(tmp_path: Path) -> tuple[str, str]:
    return db_paths(tmp_path)


@pytest.fixture
def created(paths: tuple[str, str]) -> DatabaseHeader:
    h = DatabaseHeader.new(organization="Org")
    dbm.create_files(FileIO(), *paths, h)
    return h


@pytest.fixture
def db(paths: tuple[str, str], created: DatabaseHeader) -> Iterator[Database]:
    d = Database(FileIO(), *paths)
    d.open()
    d.begin()
    d.apply(["T", MESSAGES.to_dict()])
    d.commit(100)
    yield d
    d.close()


def row(i: int, folder: str = "inbox") -> dict[str, object]:
    return {"id": i, "folder": folder, "subject": f"subject {i}", "size": i * 100}


def put_rows(d: Database, rows: list[dict[str, object]], at: int) -> None:
    d.begin()
    for r in rows:
        d.apply(["p", "messages", r])
    d.commit(at)


def raw(path: str) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


# -- files -------------------------------------------------------------------------------------


def test_create_files(paths: tuple[str, str], created: DatabaseHeader) -> None:
    edb, stm = paths
    h, applied = dbm.read_header(edb)
    assert h == created
    assert applied == 0
    assert os.path.getsize(stm) == dbm.STM_HEADER == 4096
    with open(stm, "rb") as f:
        assert f.read(8) == dbm.STM_MAGIC == b"MKSTM\x00\x01\x00"
    assert dbm.read_stm_signature(stm) == created.signature
    c = raw(edb)
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA page_size").fetchone()[0] == 4096
    tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert tables == {"_header", "_tables", "_streams"}
    c.close()


def test_create_files_refuses_to_overwrite(paths: tuple[str, str], created: DatabaseHeader, tmp_path: Path) -> None:
    edb, stm = paths
    before = open(edb, "rb").read()
    with pytest.raises(EseError) as e:
        dbm.create_files(FileIO(), edb, stm, DatabaseHeader.new())
    assert (e.value.number, e.value.name) == (-1032, "JET_errFileAccessDenied")
    assert e.value.path == edb
    assert open(edb, "rb").read() == before
    # only the .stm exists: refused too, and no .edb is made
    other_edb = str(tmp_path / "other.edb")
    with pytest.raises(EseError) as e:
        dbm.create_files(FileIO(), other_edb, stm, DatabaseHeader.new())
    assert e.value.number == -1032
    assert e.value.path == stm
    assert not os.path.exists(other_edb)


def test_read_header_of_missing_file(tmp_path: Path) -> None:
    p = str(tmp_path / "none.edb")
    with pytest.raises(EseError) as e:
        dbm.read_header(p)
    assert (e.value.number, e.value.name, e.value.path) == (-1811, "JET_errFileNotFound", p)


def test_read_header_of_a_non_database(tmp_path: Path) -> None:
    p = tmp_path / "junk.edb"
    p.write_bytes(b"this is not a database at all" * 200)
    with pytest.raises(EseError) as e:
        dbm.read_header(str(p))
    assert (e.value.number, e.value.name) == (-1206, "JET_errDatabaseCorrupted")


def test_read_header_of_a_database_without_header_row(paths: tuple[str, str], created: DatabaseHeader) -> None:
    c = raw(paths[0])
    c.execute("DELETE FROM _header")
    c.close()
    with pytest.raises(EseError) as e:
        dbm.read_header(paths[0])
    assert e.value.number == -1206
    assert "has no database header" in str(e.value)


def test_read_header_of_another_sqlite_file(tmp_path: Path) -> None:
    p = str(tmp_path / "plain.edb")
    c = raw(p)
    c.execute("CREATE TABLE t (x)")
    c.close()
    with pytest.raises(EseError) as e:
        dbm.read_header(p)
    assert (e.value.number, e.value.name) == (-1206, "JET_errDatabaseCorrupted")
    assert "is not a Mailkeep database" in str(e.value)


def test_read_header_of_an_empty_file(tmp_path: Path) -> None:
    p = tmp_path / "empty.edb"
    p.write_bytes(b"")
    with pytest.raises(EseError) as e:
        dbm.read_header(str(p))
    assert (e.value.number, e.value.name) == (-1206, "JET_errDatabaseCorrupted")


def test_damaged_header_is_read_verify_failure(paths: tuple[str, str], created: DatabaseHeader) -> None:
    c = raw(paths[0])
    blob = bytearray(c.execute("SELECT data FROM _header").fetchone()[0])
    blob[10] ^= 0x01
    c.execute("UPDATE _header SET data = ?", (bytes(blob),))
    c.close()
    with pytest.raises(EseError) as e:
        dbm.read_header(paths[0])
    assert (e.value.number, e.value.name) == (-1018, "JET_errReadVerifyFailure")
    assert "header checksum mismatch" in str(e.value)


def test_header_encoding_checks_crc() -> None:
    h = DatabaseHeader.new()
    blob = dbm.encode_header(h)
    assert dbm.decode_header(blob, "x.edb") == h
    with pytest.raises(EseError) as e:
        dbm.decode_header(blob[:2], "x.edb")
    assert e.value.number == -1018
    assert e.value.path == "x.edb"


def test_missing_streaming_file(paths: tuple[str, str], created: DatabaseHeader) -> None:
    os.unlink(paths[1])
    d = Database(FileIO(), *paths)
    with pytest.raises(EseError) as e:
        d.open()
    assert (e.value.number, e.value.name) == (-2204, "JET_errSLVStreamingFileMissing")
    assert e.value.path == paths[1]


def test_damaged_streaming_file_header(paths: tuple[str, str], created: DatabaseHeader) -> None:
    with open(paths[1], "r+b") as f:
        f.seek(20)
        f.write(b"\xff")
    with pytest.raises(EseError) as e:
        dbm.read_stm_signature(paths[1])
    assert (e.value.number, e.value.name) == (-1018, "JET_errReadVerifyFailure")
    with open(paths[1], "r+b") as f:
        f.write(b"BADMAGIC")
    with pytest.raises(EseError) as e:
        dbm.read_stm_signature(paths[1])
    assert "bad magic" in str(e.value)


def test_streaming_file_of_another_database(tmp_path: Path, paths: tuple[str, str], created: DatabaseHeader) -> None:
    other = db_paths(tmp_path, "other")
    dbm.create_files(FileIO(), *other, DatabaseHeader.new())
    d = Database(FileIO(), paths[0], other[1])
    with pytest.raises(EseError) as e:
        d.open()
    assert (e.value.number, e.value.name) == (-540, "JET_errDatabaseStreamingFileMismatch")
    assert e.value.path == other[1]


# -- open database -----------------------------------------------------------------------------


def test_open_reads_header_specs_and_stream_end(paths: tuple[str, str], db: Database) -> None:
    assert db.name == "priv1"
    assert db.edb_path == os.path.abspath(paths[0])
    assert db.specs == {"messages": MESSAGES}
    assert db.applied_lsn == 100
    assert db.stm_end == 4096
    db.write_stream_data(8192, b"abc")
    assert db.stm_end == 8195
    db.close()
    d2 = Database(FileIO(), *paths)
    d2.open()
    try:
        assert d2.specs == {"messages": MESSAGES}
        assert d2.applied_lsn == 100
        assert d2.stm_end == 8195
    finally:
        d2.close()


def test_closed_database_refuses_work(db: Database) -> None:
    db.close()
    with pytest.raises(EseError) as e:
        db.writer  # noqa: B018
    assert (e.value.number, e.value.name) == (-1203, "JET_errDatabaseNotFound")
    with pytest.raises(EseError) as e:
        db.reader()
    assert e.value.number == -1203
    db.close()  # idempotent


def test_apply_put_get_delete(db: Database) -> None:
    put_rows(db, [row(1), row(2)], 200)
    assert db.get(db.writer, "messages", (1,)) == row(1)
    assert db.get(db.writer, "messages", (3,)) is None
    db.begin()
    db.apply(["d", "messages", [1]])
    db.apply(["d", "messages", [99]])  # deleting nothing is fine (idempotent replay)
    db.commit(300)
    assert db.get(db.writer, "messages", (1,)) is None
    assert [r["id"] for r in db.scan(db.writer, "messages")] == [2]


def test_apply_is_idempotent(db: Database) -> None:
    ops = [
        ["p", "messages", row(1)],
        ["p", "messages", row(1, "sent")],
        ["d", "messages", [2]],
        ["T", MESSAGES.to_dict()],
    ]
    for at in (200, 300):
        db.begin()
        for op in ops:
            db.apply(op)
        db.commit(at)
    assert list(db.scan(db.writer, "messages")) == [row(1, "sent")]


def test_apply_unknown_op(db: Database) -> None:
    with pytest.raises(ValueError, match="unknown logged operation 'z'"):
        db.apply(["z"])


def test_unknown_table(db: Database) -> None:
    with pytest.raises(KeyError, match="table 'nope' is not declared in database priv1"):
        db.spec("nope")


def test_commit_persists_applied_lsn_with_the_rows(paths: tuple[str, str], db: Database) -> None:
    put_rows(db, [row(1)], 12345)
    assert db.applied_lsn == 12345
    assert dbm.read_header(paths[0])[1] == 12345


def test_commit_with_header(paths: tuple[str, str], db: Database) -> None:
    h = replace(db.header)
    h.transition(DbState.DIRTY)
    h.log_signature = "sig"
    db.begin()
    db.apply(["p", "messages", row(5)])
    db.commit(777, h)
    assert db.header == h
    assert dbm.read_header(paths[0]) == (h, 777)


def test_write_header_keeps_applied_lsn_unless_given(paths: tuple[str, str], db: Database) -> None:
    h = replace(db.header, repair_count=1)
    db.write_header(h)
    assert dbm.read_header(paths[0]) == (h, 100)
    db.write_header(h, applied_lsn=555)
    assert dbm.read_header(paths[0])[1] == 555


def test_rollback_discards_rows_and_tables(db: Database) -> None:
    put_rows(db, [row(1)], 200)
    other = TableSpec("folders", ("name",), ("name",))
    db.begin()
    db.apply(["p", "messages", row(2)])
    db.apply(["T", other.to_dict()])
    assert "folders" in db.specs
    db.rollback()
    assert db.in_write is False
    assert set(db.specs) == {"messages"}
    assert [r["id"] for r in db.scan(db.writer, "messages")] == [1]
    assert db.applied_lsn == 200


def test_damaged_row_is_read_verify_failure(paths: tuple[str, str], db: Database) -> None:
    put_rows(db, [row(1), row(2)], 200)
    c = raw(paths[0])
    c.execute('UPDATE "t_messages" SET subject = ? WHERE id = 2', ("tampered",))
    c.close()
    assert db.get(db.writer, "messages", (1,)) == row(1)
    with pytest.raises(EseError) as e:
        db.get(db.writer, "messages", (2,))
    assert (e.value.number, e.value.name) == (-1018, "JET_errReadVerifyFailure")
    assert "record (2,) of table messages" in str(e.value)
    with pytest.raises(EseError) as e:
        list(db.scan(db.writer, "messages"))
    assert e.value.number == -1018


def test_row_check_covers_every_column() -> None:
    base = row(1)
    ck = dbm.row_check(MESSAGES, base)
    for c in MESSAGES.columns:
        assert dbm.row_check(MESSAGES, {**base, c: "other"}) != ck
    assert dbm.row_check(MESSAGES, {**base, "extra": 1}) == ck  # only declared columns count


def test_checkpoint_truncates_the_wal(paths: tuple[str, str], db: Database) -> None:
    put_rows(db, [row(i) for i in range(50)], 200)
    assert os.path.getsize(paths[0] + "-wal") > 0
    assert db.checkpoint() is True
    assert os.path.getsize(paths[0] + "-wal") == 0


def test_checkpoint_busy_while_a_reader_holds_a_snapshot(db: Database) -> None:
    put_rows(db, [row(1)], 200)
    r = db.reader()
    r.execute("BEGIN")
    assert db.get(r, "messages", (1,)) == row(1)
    put_rows(db, [row(2)], 300)
    assert db.checkpoint() is False
    assert db.get(r, "messages", (2,)) is None  # the snapshot is stable
    r.execute("COMMIT")
    assert db.checkpoint() is True


def test_checkpoint_fsyncs_both_files(paths: tuple[str, str], created: DatabaseHeader) -> None:
    io = FileIO()
    d = Database(io, *paths)
    d.open()
    try:
        n = io.counts["fsync"]
        assert d.checkpoint() is True
        assert io.counts["fsync"] == n + 2
    finally:
        d.close()


def test_readers_come_from_a_pool(db: Database) -> None:
    """Each read transaction gets a connection of its own (nested reads in one thread and
    reads in many threads work); a released connection is reused."""
    mine = db.reader()
    nested = db.reader()
    assert nested is not mine
    other: list[sqlite3.Connection] = []
    t = threading.Thread(target=lambda: other.append(db.reader()))
    t.start()
    t.join()
    assert other[0] is not mine and other[0] is not nested
    db.release_reader(nested)
    assert db.reader() is nested
    with pytest.raises(sqlite3.OperationalError):
        mine.execute("CREATE TABLE x (y)")  # read-only


def test_streams_table_and_ids(db: Database) -> None:
    assert db.next_stream_id(db.writer) == 1
    db.begin()
    db.apply(["s", 1, 4096, 3, b"d1"])
    db.apply(["s", 5, 4099, 2, b"d5"])
    db.commit(200)
    assert db.next_stream_id(db.writer) == 6
    assert db.stream_info(db.writer, 5) == (4099, 2, b"d5")
    assert list(db.streams(db.writer)) == [(1, 4096, 3, b"d1"), (5, 4099, 2, b"d5")]
    db.begin()
    db.apply(["x", 1])
    db.commit(300)
    with pytest.raises(KeyError, match="no stream 1 in database priv1"):
        db.stream_info(db.writer, 1)


# -- stream reader -----------------------------------------------------------------------------


def test_stream_reader_reads_in_chunks_and_verifies(db: Database) -> None:
    data = os.urandom(200_000)
    db.write_stream_data(4096, data)
    with StreamReader(db, 4096, len(data), hashlib.sha256(data).digest()) as r:
        assert r.length == len(data)
        parts = []
        while chunk := r.read(7000):
            assert len(chunk) <= 7000
            parts.append(chunk)
        assert b"".join(parts) == data
        assert r.read() == b""
    with StreamReader(db, 4096, len(data), hashlib.sha256(data).digest()) as r:
        assert r.readall() == data


def test_stream_reader_refuses_damaged_data(db: Database) -> None:
    data = b"message body " * 1000
    db.write_stream_data(4096, data)
    digest = hashlib.sha256(data).digest()
    db.write_stream_data(4096 + 500, b"X")
    r = StreamReader(db, 4096, len(data), digest)
    first = r.read(100)
    assert first == data[:100]  # damage is found when the end is reached
    with pytest.raises(EseError) as e:
        r.readall()
    assert (e.value.number, e.value.name) == (-1018, "JET_errReadVerifyFailure")
    assert e.value.path == db.stm_path
    r.close()
    r.close()


def test_stream_reader_past_end_of_file_reads_zeros_and_fails(db: Database) -> None:
    data = b"abc"
    r = StreamReader(db, 1 << 20, 3, hashlib.sha256(data).digest())
    with pytest.raises(EseError) as e:
        r.read()
    assert e.value.number == -1018
    r.close()


def test_empty_stream(db: Database) -> None:
    with StreamReader(db, 4096, 0, hashlib.sha256(b"").digest()) as r:
        assert r.readall() == b""


# -- sqlite errors -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "number"),
    [
        (sqlite3.DatabaseError("file is not a database"), -1206),
        (sqlite3.OperationalError("database or disk is full"), -1808),
        (sqlite3.OperationalError("disk I/O error"), -1022),
        (sqlite3.OperationalError("unable to open database file"), -1811),
        (sqlite3.IntegrityError("UNIQUE constraint failed"), -1018),
        (sqlite3.DatabaseError("database disk image is malformed"), -1018),
    ],
)
def test_sqlite_error_mapping(exc: sqlite3.Error, number: int) -> None:
    e = dbm.sqlite_error(exc, "/d/priv1.edb")
    assert e.number == number
    assert e.path == "/d/priv1.edb"
    assert str(exc) in str(e)
