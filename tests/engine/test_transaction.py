"""transaction: the only way the layers above change or read a database."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from mailkeep.engine import codec
from mailkeep.engine import logformat as lf
from mailkeep.engine.database import Database
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.logreader import iter_generations, layout
from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import StorageGroup, StorageGroupConfig
from tests.conftest import MESSAGES, db_paths, make_config

FOLDERS = ["inbox", "sent", "drafts"]


def msg(i: int, folder: str | None = None, size: int | None = None) -> dict[str, object]:
    return {
        "id": i,
        "folder": folder if folder is not None else FOLDERS[i % 3],
        "subject": f"subject {i}",
        "size": size if size is not None else i * 10,
    }


@pytest.fixture
def db(sg: StorageGroup, tmp_path: Path) -> Database:
    d = sg.create_database(*db_paths(tmp_path))
    with sg.begin() as t:
        t.declare_table(d, MESSAGES)
    return d


@pytest.fixture
def filled(sg: StorageGroup, db: Database) -> Database:
    with sg.begin() as t:
        for i in range(1, 13):
            t.insert(db, "messages", msg(i))
    return db


def ids(rows: object) -> list[int]:
    return [r["id"] for r in rows]  # type: ignore[attr-defined]


def committed(sg: StorageGroup, db: Database) -> list[dict[str, object]]:
    with sg.reader() as r:
        return list(r.scan(db, "messages"))


def log_records(sg: StorageGroup, cfg: StorageGroupConfig) -> list[lf.Record]:
    w = sg._log_writer()
    w.flush()
    lay = layout(cfg.log_path, cfg.prefix)
    return [rec for d in iter_generations(lay, lay.lowest) for rec in d.records]


# -- rows --------------------------------------------------------------------------------------


def test_insert_and_get(sg: StorageGroup, db: Database) -> None:
    with sg.begin() as t:
        t.insert(db, "messages", msg(1))
        t.insert(db, "messages", {"id": 2})
    with sg.reader() as r:
        assert r.get(db, "messages", (1,)) == msg(1)
        assert r.get(db, "messages", (2,)) == {"id": 2, "folder": None, "subject": None, "size": None}
        assert r.get(db, "messages", (3,)) is None


def test_insert_refuses_an_existing_key(sg: StorageGroup, db: Database) -> None:
    with sg.begin() as t:
        t.insert(db, "messages", msg(1))
    with pytest.raises(KeyError, match=r"table messages already has a row with key \(1,\)"), sg.begin() as t:
        t.insert(db, "messages", msg(2))
        t.insert(db, "messages", msg(1, folder="other"))
    assert committed(sg, db) == [msg(1)]  # the whole transaction rolled back


def test_put_inserts_or_replaces_whole_rows(sg: StorageGroup, db: Database) -> None:
    with sg.begin() as t:
        t.put(db, "messages", msg(1))
        t.put(db, "messages", {"id": 1, "subject": "replaced"})
        t.put(db, "messages", msg(2))
    assert committed(sg, db) == [{"id": 1, "folder": None, "subject": "replaced", "size": None}, msg(2)]


def test_unknown_column_refused(sg: StorageGroup, db: Database) -> None:
    with sg.begin() as t:
        with pytest.raises(KeyError, match=r"table messages has no column\(s\) \['color', 'weight'\]"):
            t.put(db, "messages", {"id": 1, "color": "red", "weight": 3})
        with pytest.raises(KeyError, match=r"has no column\(s\) \['color'\]"):
            t.insert(db, "messages", {"id": 1, "color": "red"})
        t.insert(db, "messages", msg(1))
        with pytest.raises(KeyError, match=r"has no column\(s\) \['color'\]"):
            t.update(db, "messages", (1,), {"color": "red"})
    assert committed(sg, db) == [msg(1)]


def test_unknown_table_refused(sg: StorageGroup, db: Database) -> None:
    with sg.begin() as t:
        with pytest.raises(KeyError, match="table 'nope' is not declared in database priv1"):
            t.put(db, "nope", {"id": 1})
        with pytest.raises(KeyError, match="table 'nope' is not declared"):
            t.get(db, "nope", (1,))


def test_update(sg: StorageGroup, filled: Database) -> None:
    db = filled
    with sg.begin() as t:
        new = t.update(db, "messages", (4,), {"subject": "re: 4", "size": 1})
        assert new == {"id": 4, "folder": "sent", "subject": "re: 4", "size": 1}
    with sg.reader() as r:
        assert r.get(db, "messages", (4,)) == new


def test_update_of_a_missing_row(sg: StorageGroup, db: Database) -> None:
    with sg.begin() as t, pytest.raises(KeyError, match=r"table messages has no row with key \(9,\)"):
        t.update(db, "messages", (9,), {"size": 1})


def test_update_that_changes_the_key_moves_the_row(sg: StorageGroup, filled: Database) -> None:
    db = filled
    with sg.begin() as t:
        new = t.update(db, "messages", [5], {"id": 500})
        assert new == {**msg(5), "id": 500}
        assert t.get(db, "messages", (5,)) is None
    with sg.reader() as r:
        assert r.get(db, "messages", (5,)) is None
        assert r.get(db, "messages", (500,)) == {**msg(5), "id": 500}
        assert len(list(r.scan(db, "messages"))) == 12


def test_delete(sg: StorageGroup, filled: Database) -> None:
    db = filled
    with sg.begin() as t:
        assert t.delete(db, "messages", (3,)) is True
        assert t.delete(db, "messages", (3,)) is False
        assert t.delete(db, "messages", (99,)) is False
    assert ids(committed(sg, db)) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12]


def test_composite_primary_key(sg: StorageGroup, db: Database) -> None:
    spec = TableSpec("rules", ("mailbox", "seq", "rule"), ("mailbox", "seq"))
    with sg.begin() as t:
        t.declare_table(db, spec)
        t.insert(db, "rules", {"mailbox": "bob", "seq": 2, "rule": "b2"})
        t.insert(db, "rules", {"mailbox": "amy", "seq": 1, "rule": "a1"})
        t.insert(db, "rules", {"mailbox": "bob", "seq": 1, "rule": "b1"})
        t.insert(db, "rules", {"mailbox": "bob", "seq": None, "rule": "bn"})
        assert t.get(db, "rules", ("bob", None))["rule"] == "bn"  # type: ignore[index]
        assert t.delete(db, "rules", ("bob", 2)) is True
    with sg.reader() as r:
        assert [x["rule"] for x in r.scan(db, "rules")] == ["a1", "bn", "b1"]
        assert [x["rule"] for x in r.scan(db, "rules", prefix=("bob",))] == ["bn", "b1"]


def test_values_of_every_kind(sg: StorageGroup, db: Database) -> None:
    row = {"id": 1, "folder": b"\x00\xffbytes", "subject": "ünïcode ✓", "size": 2.5}
    with sg.begin() as t:
        t.insert(db, "messages", row)
        t.insert(db, "messages", {"id": 2**62, "size": -(2**62)})
    with sg.reader() as r:
        assert r.get(db, "messages", (1,)) == row
        assert r.get(db, "messages", (2**62,))["size"] == -(2**62)  # type: ignore[index]


# -- reads -------------------------------------------------------------------------------------


def test_reads_see_own_writes(sg: StorageGroup, filled: Database) -> None:
    db = filled
    with sg.begin() as t:
        t.insert(db, "messages", msg(13))
        t.update(db, "messages", (1,), {"subject": "changed"})
        t.delete(db, "messages", (2,))
        assert t.get(db, "messages", (13,)) == msg(13)
        assert t.get(db, "messages", (1,))["subject"] == "changed"  # type: ignore[index]
        assert t.get(db, "messages", (2,)) is None
        assert ids(t.scan(db, "messages")) == [1, *range(3, 14)]
        assert ids(t.scan(db, "messages", index="by_folder", prefix=("inbox",))) == [3, 6, 9, 12]
        # a reader sees only what is committed
        with sg.reader() as r:
            assert r.get(db, "messages", (13,)) is None
            assert r.get(db, "messages", (2,)) == msg(2)
            assert r.get(db, "messages", (1,)) == msg(1)
    with sg.reader() as r:
        assert r.get(db, "messages", (13,)) == msg(13)
        assert r.get(db, "messages", (2,)) is None


def test_read_transaction_is_a_snapshot(sg: StorageGroup, filled: Database) -> None:
    db = filled
    with sg.reader() as r:
        assert len(list(r.scan(db, "messages"))) == 12
        with sg.begin() as t:
            t.insert(db, "messages", msg(13))
            t.delete(db, "messages", (1,))
        assert len(list(r.scan(db, "messages"))) == 12
        assert r.get(db, "messages", (1,)) == msg(1)
        assert r.get(db, "messages", (13,)) is None
    with sg.reader() as r:
        assert r.get(db, "messages", (13,)) == msg(13)
        assert r.get(db, "messages", (1,)) is None


# -- scans -------------------------------------------------------------------------------------
# filled: ids 1..12; folder = FOLDERS[id % 3]: inbox 3,6,9,12; sent 1,4,7,10; drafts 2,5,8,11


def scan(sg: StorageGroup, db: Database, **kw: object) -> list[int]:
    with sg.reader() as r:
        return ids(r.scan(db, "messages", **kw))


def test_scan_primary_key_order(sg: StorageGroup, filled: Database) -> None:
    assert scan(sg, filled) == list(range(1, 13))
    assert scan(sg, filled, reverse=True) == list(range(12, 0, -1))


def test_scan_limit(sg: StorageGroup, filled: Database) -> None:
    assert scan(sg, filled, limit=3) == [1, 2, 3]
    assert scan(sg, filled, limit=3, reverse=True) == [12, 11, 10]
    assert scan(sg, filled, limit=0) == []
    assert scan(sg, filled, limit=100) == list(range(1, 13))


def test_scan_lo_hi_on_primary_key(sg: StorageGroup, filled: Database) -> None:
    assert scan(sg, filled, lo=(5,)) == [5, 6, 7, 8, 9, 10, 11, 12]  # lo inclusive
    assert scan(sg, filled, hi=(5,)) == [1, 2, 3, 4]  # hi exclusive
    assert scan(sg, filled, lo=(5,), hi=(8,)) == [5, 6, 7]
    assert scan(sg, filled, lo=(5,), hi=(8,), reverse=True) == [7, 6, 5]
    assert scan(sg, filled, lo=(8,), hi=(5,)) == []
    assert scan(sg, filled, lo=(5,), hi=(12,), limit=2) == [5, 6]


def test_scan_index_order(sg: StorageGroup, filled: Database) -> None:
    # folder order: drafts < inbox < sent, then id
    assert scan(sg, filled, index="by_folder") == [2, 5, 8, 11, 3, 6, 9, 12, 1, 4, 7, 10]
    assert scan(sg, filled, index="by_folder", reverse=True) == [10, 7, 4, 1, 12, 9, 6, 3, 11, 8, 5, 2]


def test_scan_index_prefix(sg: StorageGroup, filled: Database) -> None:
    assert scan(sg, filled, index="by_folder", prefix=("inbox",)) == [3, 6, 9, 12]
    assert scan(sg, filled, index="by_folder", prefix=("sent",), reverse=True) == [10, 7, 4, 1]
    assert scan(sg, filled, index="by_folder", prefix=("sent",), limit=2) == [1, 4]
    assert scan(sg, filled, index="by_folder", prefix=("inbox", 6)) == [6]
    assert scan(sg, filled, index="by_folder", prefix=("junk",)) == []
    assert scan(sg, filled, prefix=(7,)) == [7]


def test_scan_index_prefix_with_bounds(sg: StorageGroup, filled: Database) -> None:
    assert scan(sg, filled, index="by_folder", prefix=("inbox",), lo=("inbox", 6)) == [6, 9, 12]
    assert scan(sg, filled, index="by_folder", prefix=("inbox",), hi=("inbox", 9)) == [3, 6]
    assert scan(sg, filled, index="by_folder", prefix=("inbox",), lo=("inbox", 4), hi=("inbox", 12),
                reverse=True, limit=2) == [9, 6]


def test_scan_index_bounds_on_a_leading_column(sg: StorageGroup, filled: Database) -> None:
    # lo/hi may name fewer columns than the index: a range of folders
    assert scan(sg, filled, index="by_folder", lo=("inbox",)) == [3, 6, 9, 12, 1, 4, 7, 10]
    assert scan(sg, filled, index="by_folder", hi=("inbox",)) == [2, 5, 8, 11]
    assert scan(sg, filled, index="by_folder", lo=("e",), hi=("s",)) == [3, 6, 9, 12]


def test_scan_null_prefix(sg: StorageGroup, filled: Database) -> None:
    with sg.begin() as t:
        t.insert(db=filled, table="messages", row={"id": 50})
    assert scan(sg, filled, index="by_folder", prefix=(None,)) == [50]


def test_scan_refuses_bad_arguments(sg: StorageGroup, filled: Database) -> None:
    with sg.reader() as r:
        with pytest.raises(ValueError, match="prefix longer than the index"):
            list(r.scan(filled, "messages", prefix=(1, 2)))
        with pytest.raises(KeyError):
            list(r.scan(filled, "messages", index="by_nothing"))


def test_scan_of_many_rows_in_batches(sg: StorageGroup, db: Database) -> None:
    with sg.begin() as t:
        for i in range(1000):
            t.put(db, "messages", msg(i))
    assert scan(sg, db) == list(range(1000))
    assert scan(sg, db, index="by_folder", prefix=("sent",), lo=("sent", 900)) == list(range(901, 1000, 3))


# -- rollback ----------------------------------------------------------------------------------


def test_rollback_discards(sg: StorageGroup, filled: Database) -> None:
    db = filled
    t = sg.begin()
    t.insert(db, "messages", msg(13))
    t.update(db, "messages", (1,), {"subject": "x"})
    t.delete(db, "messages", (2,))
    t.rollback()
    assert t.active is False
    assert committed(sg, db) == [msg(i) for i in range(1, 13)]
    t.rollback()  # harmless twice


def test_exception_inside_with_rolls_back(sg: StorageGroup, filled: Database) -> None:
    db = filled

    class Boom(Exception):
        pass

    with pytest.raises(Boom), sg.begin() as t:
        t.insert(db, "messages", msg(13))
        t.delete(db, "messages", (1,))
        raise Boom
    assert t.active is False
    assert committed(sg, db) == [msg(i) for i in range(1, 13)]
    # the write lock was released: another thread can write
    done: list[bool] = []

    def other() -> None:
        with sg.begin() as t2:
            t2.insert(db, "messages", msg(14))
        done.append(True)

    th = threading.Thread(target=other)
    th.start()
    th.join(5)
    assert done == [True]
    assert ids(committed(sg, db))[-1] == 14


def test_rolled_back_declaration_is_forgotten(sg: StorageGroup, db: Database) -> None:
    folders = TableSpec("folders", ("name",), ("name",))
    t = sg.begin()
    t.declare_table(db, folders)
    t.insert(db, "folders", {"name": "inbox"})
    t.rollback()
    assert "folders" not in db.specs
    with sg.begin() as t, pytest.raises(KeyError):
        t.put(db, "folders", {"name": "x"})


def test_rollback_writes_no_log_records(sg: StorageGroup, db: Database) -> None:
    before = sg._log_writer().appended()
    t = sg.begin()
    t.insert(db, "messages", msg(1))
    t.rollback()
    assert sg._log_writer().appended() == before


# -- commit ------------------------------------------------------------------------------------


def test_commit_is_durable_and_logged(sg: StorageGroup, sg_config: StorageGroupConfig, db: Database) -> None:
    t = sg.begin()
    t.insert(db, "messages", msg(1))
    t.insert(db, "messages", msg(2))
    end = t.commit()
    assert t.active is False
    assert sg._log_writer().durable() >= end
    assert db.applied_lsn == end
    recs = log_records(sg, sg_config)
    commit = next(r for r in recs if r.end == end)
    assert commit.type == lf.COMMIT
    assert codec.decode(commit.payload) == [t.txn_id, [db.dbid]]
    ops = [r for r in recs if r.type == lf.OPS and codec.decode(r.payload)[0] == t.txn_id]
    assert len(ops) == 1
    assert ops[0].dbid == db.dbid
    assert codec.decode(ops[0].payload)[1] == [["p", "messages", msg(1)], ["p", "messages", msg(2)]]


def test_big_transactions_are_logged_in_chunks(sg: StorageGroup, sg_config: StorageGroupConfig, db: Database) -> None:
    with sg.begin() as t:
        for i in range(300):
            t.put(db, "messages", {"id": i, "subject": "x" * 400})
        txn = t.txn_id
    chunks = [r for r in log_records(sg, sg_config) if r.type == lf.OPS and codec.decode(r.payload)[0] == txn]
    assert len(chunks) > 1
    assert all(len(r.payload) <= sg._log_writer().max_payload for r in chunks)
    assert sum(len(codec.decode(r.payload)[1]) for r in chunks) == 300
    assert scan(sg, db) == list(range(300))


def test_row_too_big_for_one_log_record_is_refused(sg: StorageGroup, db: Database) -> None:
    limit = sg._log_writer().max_payload
    with pytest.raises(ValueError, match=f"exceeds {limit}"), sg.begin() as t:
        t.insert(db, "messages", msg(1))
        t.put(db, "messages", {"id": 2, "subject": "x" * limit})
    assert committed(sg, db) == []  # rolled back whole
    with sg.begin() as t:
        t.insert(db, "messages", msg(3))
    assert ids(committed(sg, db)) == [3]


def test_transaction_ids_increase(sg: StorageGroup, db: Database) -> None:
    seen = []
    for _ in range(3):
        with sg.begin() as t:
            seen.append(t.txn_id)
    assert seen == sorted(set(seen))


def test_empty_commit_logs_nothing(sg: StorageGroup, filled: Database) -> None:
    w = sg._log_writer()
    before = w.appended()
    t = sg.begin()
    assert t.get(filled, "messages", (1,)) == msg(1)
    assert t.commit() == before
    assert w.appended() == before
    assert t.active is False


def test_ended_transaction_refuses_work(sg: StorageGroup, db: Database) -> None:
    t = sg.begin()
    t.insert(db, "messages", msg(1))
    t.commit()
    with pytest.raises(RuntimeError, match="transaction already ended"):
        t.commit()
    with pytest.raises(RuntimeError, match="transaction already ended"):
        t.insert(db, "messages", msg(2))
    t.rollback()  # no-op
    assert ids(committed(sg, db)) == [1]


def test_transaction_over_two_databases(sg: StorageGroup, sg_config: StorageGroupConfig, db: Database,
                                        tmp_path: Path) -> None:
    db2 = sg.create_database(*db_paths(tmp_path, "pub1"))
    with sg.begin() as t:
        t.declare_table(db2, MESSAGES)
    with sg.begin() as t:
        t.insert(db, "messages", msg(1))
        t.insert(db2, "messages", msg(2))
        txn = t.txn_id
    commit = [r for r in log_records(sg, sg_config) if r.type == lf.COMMIT][-1]
    assert codec.decode(commit.payload) == [txn, [db.dbid, db2.dbid]]
    assert db.applied_lsn == db2.applied_lsn == commit.end
    assert ids(committed(sg, db)) == [1]
    assert ids(committed(sg, db2)) == [2]


def test_unmounted_database_refused(sg: StorageGroup, db: Database) -> None:
    sg.dismount(db)
    with pytest.raises(EseError) as e, sg.begin() as t:
        t.insert(db, "messages", msg(1))
    assert (e.value.number, e.value.name) == (-1203, "JET_errDatabaseNotFound")
    with pytest.raises(EseError) as e, sg.reader() as r:
        r.get(db, "messages", (1,))
    assert e.value.number == -1203


def test_closed_storage_group_refuses_transactions(sg: StorageGroup, db: Database) -> None:
    sg.close()
    with pytest.raises(EseError) as e:
        sg.begin()
    assert (e.value.number, e.value.name) == (-516, "JET_errLoggingDisabled")


def test_committed_rows_survive_reopen(sg: StorageGroup, sg_config: StorageGroupConfig, filled: Database) -> None:
    edb, stm = filled.edb_path, filled.stm_path
    sg.close()
    sg2 = StorageGroup.open(sg_config)
    try:
        db = sg2.mount(edb, stm)
        assert committed(sg2, db) == [msg(i) for i in range(1, 13)]
    finally:
        sg2.close()


def test_committed_rows_survive_a_crash(sg: StorageGroup, sg_config: StorageGroupConfig, filled: Database) -> None:
    edb, stm = filled.edb_path, filled.stm_path
    with sg.begin() as t:
        t.delete(filled, "messages", (1,))
        t.insert(filled, "messages", msg(13))
    t = sg.begin()
    t.insert(filled, "messages", msg(14))  # never committed
    sg.crash()
    sg2 = StorageGroup.open(sg_config)
    try:
        db = sg2.mount(edb, stm)
        assert ids(committed(sg2, db)) == list(range(2, 14))
    finally:
        sg2.close()


# -- streams -----------------------------------------------------------------------------------


def write_stream(sg: StorageGroup, db: Database, data: bytes, chunk: int = 100_000) -> int:
    with sg.begin() as t, t.create_stream(db) as s:
        for i in range(0, len(data), chunk):
            s.write(data[i : i + chunk])
    return s.stream_id


def read_chunks(sg: StorageGroup, db: Database, sid: int, chunk: int = 50_000) -> bytes:
    parts = []
    with sg.reader() as r, r.open_stream(db, sid) as rd:
        while piece := rd.read(chunk):
            assert len(piece) <= chunk
            parts.append(piece)
    return b"".join(parts)


def test_stream_of_several_megabytes(sg: StorageGroup, db: Database) -> None:
    data = os.urandom(3 * 1024 * 1024 + 12345)
    gen = sg.current_generation
    sid = write_stream(sg, db, data)
    assert sid == 1
    assert sg.current_generation > gen  # the stream went through the log (64 KiB generations)
    back = read_chunks(sg, db, sid)
    assert len(back) == len(data)
    assert hashlib.sha256(back).digest() == hashlib.sha256(data).digest()
    with sg.reader() as r:
        off, length, digest = db.stream_info(db.reader(), sid)
        assert (length, digest) == (len(data), hashlib.sha256(data).digest())
        assert r.open_stream(db, sid).readall() == data


def test_several_streams_in_one_transaction(sg: StorageGroup, db: Database) -> None:
    a, b = os.urandom(300_000), os.urandom(70_000)
    with sg.begin() as t:
        with t.create_stream(db) as s1:
            s1.write(a)
        with t.create_stream(db) as s2:
            s2.write(b[:1000])
            s2.write(b[1000:])
        t.insert(db, "messages", {"id": 1, "size": s1.stream_id})
        # the transaction reads its own streams
        with t.open_stream(db, s2.stream_id) as rd:
            assert rd.readall() == b
    assert (s1.stream_id, s2.stream_id) == (1, 2)
    assert read_chunks(sg, db, 1) == a
    assert read_chunks(sg, db, 2) == b
    with sg.reader() as r:
        assert r.get(db, "messages", (1,))["size"] == 1  # type: ignore[index]


def test_empty_stream(sg: StorageGroup, db: Database) -> None:
    sid = write_stream(sg, db, b"")
    assert read_chunks(sg, db, sid) == b""


def test_one_open_stream_per_database(sg: StorageGroup, db: Database) -> None:
    with sg.begin() as t:
        s = t.create_stream(db)
        with pytest.raises(RuntimeError, match="close the open stream of this database before starting another"):
            t.create_stream(db)
        with pytest.raises(RuntimeError, match="a stream of this transaction is still open"):
            t.commit()
        s.write(b"x")
        s.close()


def test_rolled_back_stream_is_not_referenced(sg: StorageGroup, db: Database) -> None:
    first = os.urandom(10_000)
    sid1 = write_stream(sg, db, first)
    t = sg.begin()
    with t.create_stream(db) as s:
        s.write(b"aborted" * 1000)
    t.rollback()
    with sg.reader() as r, pytest.raises(KeyError, match="no stream 2"):
        r.open_stream(db, 2)
    second = os.urandom(20_000)
    sid2 = write_stream(sg, db, second)
    assert sid2 == 2
    assert read_chunks(sg, db, sid1) == first
    assert read_chunks(sg, db, sid2) == second
    # the new stream did not reuse the aborted bytes' space
    with sg.reader():
        off1, len1, _ = db.stream_info(db.reader(), sid1)
        off2, _l, _ = db.stream_info(db.reader(), sid2)
    assert off2 >= off1 + len1 + 7000


def test_exception_inside_a_stream_rolls_back(sg: StorageGroup, db: Database) -> None:
    with pytest.raises(OSError, match="disk went away"), sg.begin() as t, t.create_stream(db) as s:
        s.write(b"partial")
        raise OSError("disk went away")
    with sg.reader() as r, pytest.raises(KeyError):
        r.open_stream(db, 1)


def test_delete_stream(sg: StorageGroup, db: Database) -> None:
    sid = write_stream(sg, db, b"to be deleted")
    with sg.begin() as t:
        t.delete_stream(db, sid)
        with pytest.raises(KeyError, match=f"no stream {sid}"):
            t.open_stream(db, sid)
    with sg.reader() as r, pytest.raises(KeyError):
        r.open_stream(db, sid)
    with sg.begin() as t, pytest.raises(KeyError, match="no stream 77"):
        t.delete_stream(db, 77)


def test_damaged_stream_is_refused(sg: StorageGroup, db: Database) -> None:
    data = os.urandom(200_000)
    sid = write_stream(sg, db, data)
    with sg.reader():
        off, _n, _d = db.stream_info(db.reader(), sid)
    with open(db.stm_path, "r+b") as f:
        f.seek(off + 150_000)
        f.write(b"\x00\x01\x02")
    with sg.reader() as r, r.open_stream(db, sid) as rd, pytest.raises(EseError) as e:
        while rd.read(40_000):
            pass
    assert (e.value.number, e.value.name) == (-1018, "JET_errReadVerifyFailure")


def test_streams_survive_a_crash(sg: StorageGroup, sg_config: StorageGroupConfig, db: Database) -> None:
    data = os.urandom(500_000)
    sid = write_stream(sg, db, data)
    edb, stm = db.edb_path, db.stm_path
    sg.crash()
    sg2 = StorageGroup.open(sg_config)
    try:
        d = sg2.mount(edb, stm)
        assert read_chunks(sg2, d, sid) == data
    finally:
        sg2.close()


class GatedFsyncIO(FileIO):
    """A real FileIO whose next fsync, once armed, waits until the test opens the gate."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.entered = threading.Event()
        self.gate = threading.Event()

    def fsync(self, fd: int) -> None:
        if self.armed:
            self.armed = False
            self.entered.set()
            self.gate.wait(5)
        super().fsync(fd)


def test_readers_never_see_a_commit_before_it_is_durable(tmp_path: Path) -> None:
    io = GatedFsyncIO()
    sg = StorageGroup.create(make_config(tmp_path), io=io)
    try:
        db = sg.create_database(*db_paths(tmp_path))
        with sg.begin() as t:
            t.declare_table(db, MESSAGES)
        r = sg.reader()  # begun before the commit; its snapshot starts at its first read
        io.armed = True

        def commit_one() -> None:
            with sg.begin() as t:
                t.insert(db, "messages", msg(1))

        writer = threading.Thread(target=commit_one)
        writer.start()
        assert io.entered.wait(5)  # the commit is applied to the database, its fsync is stuck
        seen: list[object] = []
        reader = threading.Thread(target=lambda: seen.append(r.get(db, "messages", (1,))))
        reader.start()
        reader.join(0.3)
        assert seen == []  # the reader waits for the fsync rather than show an unacknowledged row
        io.gate.set()
        writer.join(5)
        reader.join(5)
        assert seen == [msg(1)]
        assert sg._log_writer().durable() >= db.applied_lsn
        r.close()
    finally:
        io.gate.set()
        sg.close()
