"""schema: table declarations, checked names, and the SQL they become."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from mailkeep.engine import schema
from mailkeep.engine.schema import TableSpec, check_name
from mailkeep.engine.storagegroup import StorageGroup
from tests.conftest import MESSAGES, db_paths


@pytest.mark.parametrize("name", ["a", "A", "messages", "t_1", "x" * 63, "Folder2", "a_"])
def test_valid_names(name: str) -> None:
    assert check_name("table", name) == name


@pytest.mark.parametrize(
    "name",
    ["", "_header", "1abc", "x" * 64, "a-b", "a b", 'a"b', "a;DROP TABLE x", "é", "a.b", "a\n", "t\x00"],
)
def test_invalid_names(name: str) -> None:
    with pytest.raises(ValueError, match=r"invalid column name .*: use letters, digits and _"):
        check_name("column", name)


def test_name_pattern() -> None:
    assert schema.NAME.pattern == r"[A-Za-z][A-Za-z0-9_]{0,62}"


def test_spec_checks_every_name() -> None:
    with pytest.raises(ValueError, match="invalid table name '_t'"):
        TableSpec("_t", ("a",), ("a",))
    with pytest.raises(ValueError, match="invalid column name 'b c'"):
        TableSpec("t", ("a", "b c"), ("a",))
    with pytest.raises(ValueError, match="invalid index name 'by-a'"):
        TableSpec("t", ("a",), ("a",), {"by-a": ("a",)})


def test_spec_checks_structure() -> None:
    with pytest.raises(ValueError, match="table t: duplicate column"):
        TableSpec("t", ("a", "a"), ("a",))
    with pytest.raises(ValueError, match="table t: primary key must name its columns"):
        TableSpec("t", ("a",), ())
    with pytest.raises(ValueError, match="table t: primary key must name its columns"):
        TableSpec("t", ("a",), ("b",))
    with pytest.raises(ValueError, match="table t: index i must name its columns"):
        TableSpec("t", ("a",), ("a",), {"i": ()})
    with pytest.raises(ValueError, match="table t: index i must name its columns"):
        TableSpec("t", ("a",), ("a",), {"i": ("a", "z")})


def test_sql_name_keeps_user_tables_apart() -> None:
    assert MESSAGES.sql_name == '"t_messages"'


def test_create_sql() -> None:
    assert MESSAGES.create_sql() == [
        'CREATE TABLE IF NOT EXISTS "t_messages" ("id", "folder", "subject", "size", PRIMARY KEY ("id"))',
        'CREATE INDEX IF NOT EXISTS "i_messages_by_folder" ON "t_messages" ("folder", "id")',
    ]
    spec = TableSpec("rules", ("mailbox", "seq", "rule"), ("mailbox", "seq"))
    assert spec.create_sql() == [
        'CREATE TABLE IF NOT EXISTS "t_rules" ("mailbox", "seq", "rule", PRIMARY KEY ("mailbox", "seq"))'
    ]


def test_create_sql_runs_in_sqlite() -> None:
    c = sqlite3.connect(":memory:")
    for sql in MESSAGES.create_sql():
        c.execute(sql)
        c.execute(sql)  # IF NOT EXISTS
    names = {r[0] for r in c.execute("SELECT name FROM sqlite_master")}
    assert {"t_messages", "i_messages_by_folder"} <= names


def test_dict_round_trip() -> None:
    d = MESSAGES.to_dict()
    assert d == {
        "name": "messages",
        "columns": ["id", "folder", "subject", "size"],
        "primary_key": ["id"],
        "indexes": {"by_folder": ["folder", "id"]},
    }
    assert TableSpec.from_dict(d) == MESSAGES


def test_from_dict_validates() -> None:
    d = MESSAGES.to_dict()
    d["name"] = 'x"; DROP TABLE _header; --'
    with pytest.raises(ValueError, match="invalid table name"):
        TableSpec.from_dict(d)


def test_key_of() -> None:
    spec = TableSpec("t", ("a", "b", "c"), ("b", "a"))
    assert spec.key_of({"a": 1, "b": 2, "c": 3}) == (2, 1)
    assert spec.key_of({"c": 3}) == (None, None)


def test_spec_is_immutable() -> None:
    with pytest.raises(AttributeError):
        MESSAGES.name = "other"  # type: ignore[misc]


# -- declarations in a database ----------------------------------------------------------------


def test_declared_table_exists_in_sqlite_with_row_check(sg: StorageGroup, tmp_path: Path) -> None:
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    with sg.begin() as t:
        t.declare_table(db, MESSAGES)
    c = sqlite3.connect(edb)
    cols = [r[1] for r in c.execute('PRAGMA table_info("t_messages")')]
    idx = [r[1] for r in c.execute('PRAGMA index_list("t_messages")')]
    c.close()
    assert cols == ["id", "folder", "subject", "size", "_ck"]
    assert "i_messages_by_folder" in idx
    assert db.specs == {"messages": MESSAGES}


def test_declarations_survive_remount(sg: StorageGroup, tmp_path: Path) -> None:
    edb, stm = db_paths(tmp_path)
    db = sg.create_database(edb, stm)
    folders = TableSpec("folders", ("mailbox", "name"), ("mailbox", "name"))
    with sg.begin() as t:
        t.declare_table(db, MESSAGES)
        t.declare_table(db, folders)
    sg.dismount(db)
    db = sg.mount(edb, stm)
    assert db.specs == {"messages": MESSAGES, "folders": folders}


def test_redeclaring_the_same_table_logs_nothing(sg: StorageGroup, tmp_path: Path) -> None:
    db = sg.create_database(*db_paths(tmp_path))
    with sg.begin() as t:
        t.declare_table(db, MESSAGES)
    t = sg.begin()
    t.declare_table(db, MESSAGES)
    assert t.ops[db.dbid] == []
    t.commit()


def test_adding_an_index_to_a_declared_table(sg: StorageGroup, tmp_path: Path) -> None:
    db = sg.create_database(*db_paths(tmp_path))
    with sg.begin() as t:
        t.declare_table(db, MESSAGES)
        t.insert(db, "messages", {"id": 1, "folder": "inbox", "subject": "b", "size": 10})
        t.insert(db, "messages", {"id": 2, "folder": "inbox", "subject": "a", "size": 20})
    more = TableSpec(MESSAGES.name, MESSAGES.columns, MESSAGES.primary_key,
                     {**MESSAGES.indexes, "by_subject": ("subject",)})
    with sg.begin() as t:
        t.declare_table(db, more)
    assert db.specs["messages"] == more
    with sg.reader() as r:
        assert [x["id"] for x in r.scan(db, "messages", index="by_subject")] == [2, 1]


@pytest.mark.parametrize(
    "other",
    [
        TableSpec("messages", ("id", "folder", "subject"), ("id",)),
        TableSpec("messages", ("id", "folder", "subject", "size"), ("folder",)),
        TableSpec("messages", ("id", "folder", "subject", "size"), ("id",), {"by_folder": ("folder",)}),
        TableSpec("messages", ("id", "folder", "subject", "size"), ("id",)),  # drops an index
    ],
)
def test_conflicting_declaration_refused(sg: StorageGroup, tmp_path: Path, other: TableSpec) -> None:
    db = sg.create_database(*db_paths(tmp_path))
    with sg.begin() as t:
        t.declare_table(db, MESSAGES)
    with pytest.raises(ValueError, match="table messages exists with another declaration"), sg.begin() as t:
        t.declare_table(db, other)
    assert db.specs["messages"] == MESSAGES
