"""The checkpoint rule (docs/decisions/0004): how far E00.chk may move, and when."""

from __future__ import annotations

from pathlib import Path

from mailkeep.engine import checkpoint as chkfile
from mailkeep.engine.logformat import lsn_gen
from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import StorageGroup
from tests.conftest import db_paths, make_config

T = TableSpec("m", ("id", "x"), ("id",))


def test_idle_database_does_not_hold_the_checkpoint(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, checkpoint_depth_max=4)
    sg = StorageGroup.create(cfg)
    busy = sg.create_database(*db_paths(tmp_path, "busy"))
    idle = sg.create_database(*db_paths(tmp_path, "idle"))
    with sg.begin() as t:
        t.declare_table(busy, T)
        t.declare_table(idle, T)
    with sg.begin() as t:
        t.put(idle, "m", {"id": 1, "x": "idle row"})
    for i in range(1500):
        with sg.begin() as t:
            t.put(busy, "m", {"id": i, "x": "y" * 100})
    assert sg.current_generation >= 10
    assert sg.checkpoint_depth <= 1
    assert {d.name for d in sg.databases} == {"busy", "idle"}  # depth limit never reached
    on_disk = chkfile.read(cfg.checkpoint_path)
    assert lsn_gen(on_disk.lsn) >= sg.current_generation - 1
    sg.crash()

    sg = StorageGroup.open(cfg)
    assert sg.last_recovery["generations"] <= 2
    idle = sg.mount(db_paths(tmp_path, "idle")[0])
    busy = sg.mount(db_paths(tmp_path, "busy")[0])
    with sg.reader() as r:
        assert [row["id"] for row in r.scan(idle, "m")] == [1]
        assert sum(1 for _ in r.scan(busy, "m")) == 1500
    sg.close()


def test_frozen_checkpoint_does_not_move_until_thawed(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    sg = StorageGroup.create(cfg)
    db = sg.create_database(*db_paths(tmp_path))
    with sg.begin() as t:
        t.declare_table(db, T)
    sg.checkpoint()
    frozen_at = chkfile.read(cfg.checkpoint_path).lsn
    sg.freeze_checkpoint()
    assert chkfile.read(cfg.checkpoint_path).frozen is True
    for i in range(600):
        with sg.begin() as t:
            t.put(db, "m", {"id": i, "x": "z" * 100})
    sg.roll()
    sg.checkpoint()
    assert chkfile.read(cfg.checkpoint_path).lsn == frozen_at
    assert sg.checkpoint_depth >= 3
    sg.thaw_checkpoint()
    after = chkfile.read(cfg.checkpoint_path)
    assert after.lsn > frozen_at and after.frozen is False
    assert sg.checkpoint_depth == 0
    sg.close()
