"""Restore and hard recovery at the library level: D3 (lost files: restore the last normal set,
roll forward with the storage group's own logs), D2 (normal + incrementals in order, Last
Restore Set), and the guide's guards, each refusing before anything is written."""

from __future__ import annotations

import os
from io import BytesIO
from pathlib import Path

import pytest

from mailkeep.backup.job import Options, run
from mailkeep.backup.restore import ENV, RestoreError, hard_recovery, restore
from mailkeep.engine.database import read_header
from mailkeep.engine.errors import EseError
from mailkeep.store import delivery
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.store import Store

ROOT = "EX1/Information Store"
SG = f"{ROOT}/First Storage Group"
DB = "Mailbox Store (EX1)"






def deliver(store: Store, ids: range) -> list[str]:
    out = []
    for i in ids:
        mid = f"<m{i}@x>"
        msg = f"Message-ID: {mid}\r\nSubject: {i}\r\n\r\n{'body ' * 300}\r\n".encode()
        assert delivery.deliver(store, BytesIO(msg), ["alice@contoso.com"]).outcomes[0].status == delivery.DELIVERED
        out.append(mid)
    return out


def inbox(store: Store) -> list[str]:
    return sorted(m.message_id for m in open_mailbox(store, "alice").messages("INBOX"))


def lose(store: Store) -> None:
    """The disaster: the mailbox database's files are gone (after a dismount)."""
    info = store.server.database(DB)
    store.dismount(info)
    for p in (info.edb, info.stm, info.edb + "-wal", info.edb + "-shm"):
        if os.path.exists(p):
            os.unlink(p)


def test_d3_restore_and_roll_forward_with_the_current_logs(store: Store, tmp_path: Path) -> None:
    before = deliver(store, range(0, 20))
    media = str(tmp_path / "m.bkf")
    assert run(store, media, [SG], Options()).ok
    after = deliver(store, range(20, 45))  # after the backup: only in the storage group's logs
    lose(store)
    temp = str(tmp_path / "temp")
    res = restore(store, media, 1, [f"{SG}/{DB}"], temp)
    folder = os.path.join(temp, "First Storage Group")
    assert res.folders == [folder] and os.path.exists(os.path.join(folder, ENV))
    info = store.server.database(DB)
    h, _ = read_header(info.edb)
    patch = h.backups["patch_current_full"]
    assert patch is not None and patch.high_gen == res.set.extra["storage_groups"][0]["high_gen"]
    with pytest.raises(EseError) as e:  # not recovered yet: mounting is refused
        store.mount(info)
    assert e.value.number == -544 and "eseutil /cc" in e.value.detail
    r = hard_recovery(store, temp)
    assert r.stopped == "" and r.rolled_to > r.restored_logs[1]
    assert not os.path.exists(os.path.join(folder, ENV))
    h, _ = read_header(info.edb)
    assert h.state.value == "Clean Shutdown" and h.backups["patch_current_full"] is None
    store.mount(info)
    assert inbox(store) == sorted(before + after)  # every message committed before the loss is back
    assert "Restore Status" in res.report and "Backup set #1 on media #1" in res.report


def test_d2_normal_then_incrementals_last_restore_set(store: Store, tmp_path: Path) -> None:
    media = str(tmp_path / "m.bkf")
    ids = deliver(store, range(0, 10))
    assert run(store, media, [SG], Options()).ok
    sg = store.group(store.server.storage_group("First Storage Group"))
    ids += deliver(store, range(10, 150))  # several generations of 64 KiB
    sg.checkpoint()  # as the server does periodically: the incremental can truncate all it covers
    assert run(store, media, [SG], Options(kind="incremental")).ok
    ids += deliver(store, range(150, 300))
    sg.checkpoint()
    assert run(store, media, [SG], Options(kind="incremental")).ok
    late = deliver(store, range(300, 305))  # after the last backup
    lose(store)
    # roll forward would also replay the late ones; /t-like restores only what the sets hold
    temp = str(tmp_path / "t")
    folder = os.path.join(temp, "First Storage Group")
    restore(store, media, 1, [f"{SG}/{DB}"], temp)
    import json

    env = json.loads(open(os.path.join(folder, ENV)).read())
    assert [x["set"] for x in env["sets"]] == [1] and env["recover_status"] == "recoverNotStarted"
    # out of order: set 3 before set 2
    with pytest.raises(RestoreError, match="generations .* are missing .*Restore the missing incremental set first"):
        restore(store, media, 3, [SG], temp)
    restore(store, media, 2, [SG], temp)
    env = json.loads(open(os.path.join(folder, ENV)).read())
    assert [x["set"] for x in env["sets"]] == [1, 2]
    with pytest.raises(RestoreError, match="already has .*sets restored out of order"):
        restore(store, media, 2, [SG], temp)
    res = restore(store, media, 3, [SG], temp, last=True, mount=True, roll_forward=False)
    assert res.mounted == [f"First Storage Group/{DB}"] and not os.path.exists(os.path.join(folder, ENV))
    assert inbox(store) == sorted(ids)  # everything delivered before the last backup
    assert not set(late) & set(inbox(store))


def test_guards_refuse_before_writing(store: Store, tmp_path: Path) -> None:
    media = str(tmp_path / "m.bkf")
    deliver(store, range(3))
    assert run(store, media, [SG], Options()).ok
    assert run(store, media, [SG], Options(kind="incremental")).ok
    other = str(tmp_path / "m2.bkf")
    assert run(store, other, [SG], Options(kind="copy")).ok
    temp = str(tmp_path / "t")
    info = store.server.database(DB)
    one = [f"{SG}/{DB}"]
    with pytest.raises(RestoreError, match=r"is mounted: dismount it first"):
        restore(store, media, 1, one, temp)
    store.dismount(info)
    with pytest.raises(RestoreError, match="there is no restore.env in .*Restore the normal set"):
        restore(store, media, 2, one, temp)
    with pytest.raises(RestoreError, match="holds First Storage Group's own log or database files"):
        restore(store, media, 1, one, os.path.dirname(info.edb))
    # names must match: rename the database on the target
    store.server.rename_database(DB, "Renamed Store")
    with pytest.raises(RestoreError, match=r"the media's database 'Mailbox Store \(EX1\)' does not exist .*"
                                           r"\(it has: Renamed Store, Public Folder Store \(EX1\)\)"):
        restore(store, media, 1, [f"{SG}/{DB}"], temp)
    store.server.rename_database("Renamed Store", DB)
    assert not os.path.exists(temp)  # nothing was written by the refused restores
    restore(store, media, 1, [f"{SG}/{DB}"], temp)
    with pytest.raises(RestoreError, match="belongs to another restore .*use a different temporary folder"):
        restore(store, other, 1, one, temp)  # a second normal/copy set into the same folder


def test_a_recreated_database_object_needs_the_overwrite_flag(store: Store, tmp_path: Path) -> None:
    """D7: the database object was deleted and created again (a new GUID)."""
    srv = store.server
    extra = srv.create_database("First Storage Group", "Extra Store")
    store.mount(extra)
    media = str(tmp_path / "m.bkf")
    assert run(store, media, [f"{SG}/Extra Store"], Options(kind="copy")).ok
    store.dismount(extra)
    os.unlink(extra.edb)
    os.unlink(extra.stm)
    srv.delete_database("Extra Store")
    again = srv.create_database("First Storage Group", "Extra Store", edb=extra.edb, stm=extra.stm)
    assert again.guid != extra.guid
    temp = str(tmp_path / "t")
    with pytest.raises(RestoreError, match=r"is not the database that was backed up .*--allow-restore-overwrite on"):
        restore(store, media, 1, [f"{SG}/Extra Store"], temp)
    assert not os.path.exists(extra.edb)
    srv.set_database("Extra Store", allow_restore_overwrite=True)
    res = restore(store, media, 1, [f"{SG}/Extra Store"], temp, last=True, mount=True)
    assert res.mounted == ["First Storage Group/Extra Store"]
    h, _ = read_header(extra.edb)
    assert h.directory_guid == str(again.guid)  # it now belongs to the object it was restored under


def test_to_server_names_the_receiving_server(store: Store, tmp_path: Path) -> None:
    from mailkeep.admin.registry import Context, invoke, load
    from mailkeep.admin.roles import SERVICE

    load()
    media = str(tmp_path / "m.bkf")
    deliver(store, range(2))
    assert run(store, media, [SG], Options()).ok
    ctx = Context(SERVICE, store.server.data, store=store, local=True)
    with pytest.raises(RestoreError, match="--to-server EX2: this is server EX1. Run the restore against EX2's data"):
        invoke(ctx, "backup.restore", {"media": media, "set": 1, "selection": [SG], "to_server": "EX2"})


def test_normal_then_differential(store: Store, tmp_path: Path) -> None:
    """The other chain of the guide: the last normal set and the last differential set."""
    media = str(tmp_path / "m.bkf")
    ids = deliver(store, range(0, 10))
    assert run(store, media, [SG], Options()).ok
    ids += deliver(store, range(10, 60))
    assert run(store, media, [SG], Options(kind="differential")).ok
    ids += deliver(store, range(60, 80))
    assert run(store, media, [SG], Options(kind="differential")).ok  # each holds all since the normal
    lose(store)
    temp = str(tmp_path / "t")
    restore(store, media, 1, [f"{SG}/{DB}"], temp)
    res = restore(store, media, 3, [SG], temp, last=True, mount=True, roll_forward=False)  # the last one only
    assert res.mounted and inbox(store) == sorted(ids)


# -- regressions from a review of the restore code --------------------------------------------------
def test_after_slash_t_a_later_soft_recovery_does_not_add_a_gapped_tail(store: Store, tmp_path: Path) -> None:
    """The old incarnation was attached in the logs from the checkpoint on (the server died with
    it mounted). After a restore recovered with /t, reopening the storage group must not replay
    that tail into the restored copy (it lacks everything between the backup and the checkpoint)."""
    data = store.server.data
    media = str(tmp_path / "m.bkf")
    kept = deliver(store, range(0, 10))
    assert run(store, media, [SG], Options()).ok
    sg = store.group(store.server.storage_group("First Storage Group"))
    deliver(store, range(10, 150))
    sg.checkpoint()
    deliver(store, range(150, 160))
    for g in store.groups.values():
        g.crash()  # killed with the mailbox store mounted
    store.groups.clear()
    store.mounted.clear()
    info = store.server.database(DB)
    for p in (info.edb, info.stm, info.edb + "-wal", info.edb + "-shm"):
        if os.path.exists(p):
            os.unlink(p)
    s2 = Store.open(data, log_file_size=64 * 1024, directory=store.directory)
    try:
        temp = str(tmp_path / "t")
        restore(s2, media, 1, [f"{SG}/{DB}"], temp)
        hard_recovery(s2, temp, roll_forward=False)  # /t: only the restored logs
    finally:
        s2.close()
    s3 = Store.open(data, log_file_size=64 * 1024, directory=store.directory)
    try:
        s3.mount(s3.server.database(DB))
        assert inbox(s3) == sorted(kept)  # what the backup held, no gapped tail
        assert any(e.id == 499 for e in s3.events.read(source="ESE"))
    finally:
        s3.close()


def test_the_same_set_restored_twice_keeps_both_databases(store: Store, tmp_path: Path) -> None:
    media = str(tmp_path / "m.bkf")
    deliver(store, range(3))
    assert run(store, media, [SG], Options()).ok
    for name in (DB, "Public Folder Store (EX1)"):
        store.dismount(store.server.database(name))
    temp = str(tmp_path / "t")
    restore(store, media, 1, [f"{SG}/{DB}"], temp)
    restore(store, media, 1, [f"{SG}/Public Folder Store (EX1)"], temp)
    r = hard_recovery(store, temp)
    assert sorted(r.databases) == [f"First Storage Group/{DB}", "First Storage Group/Public Folder Store (EX1)"]


def test_hard_recovery_follows_the_target_when_names_differ_in_case(store: Store, tmp_path: Path) -> None:
    media = str(tmp_path / "m.bkf")
    ids = deliver(store, range(3))
    assert run(store, media, [SG], Options()).ok
    lose(store)
    store.server.rename_database(DB, "Interim")  # (a rename that changes only case is refused by the DN rules)
    store.server.rename_database("Interim", DB.lower())
    temp = str(tmp_path / "t")
    res = restore(store, media, 1, [f"{SG}/{DB}"], temp, last=True, mount=True)
    assert res.mounted == [f"First Storage Group/{DB.lower()}"] and inbox(store) == sorted(ids)


def test_no_mount_while_restoring(store: Store, tmp_path: Path) -> None:
    media = str(tmp_path / "m.bkf")
    deliver(store, range(3))
    assert run(store, media, [SG], Options()).ok
    lose(store)
    info = store.server.database(DB)
    seen: list[str] = []

    def progress(name: str, n: int) -> None:
        if not seen:
            try:
                store.mount(info)
                seen.append("mounted")
            except Exception as e:  # noqa: BLE001 - what a concurrent mount gets
                seen.append(str(e))

    restore(store, media, 1, [f"{SG}/{DB}"], str(tmp_path / "t"), progress=progress)
    assert seen[0].endswith("is being restored (or hard-recovered); mount it when that has ended")
    assert not store.is_mounted(info)


def test_a_failure_on_a_later_database_leaves_every_target_as_it_was(store: Store, tmp_path: Path) -> None:
    import hashlib

    from mailkeep.backup.media import MediaError, MediaReader

    media = str(tmp_path / "m.bkf")
    deliver(store, range(3))
    assert run(store, media, [SG], Options()).ok
    for name in (DB, "Public Folder Store (EX1)"):
        store.dismount(store.server.database(name))
    rd = MediaReader(media)
    e = next(x for x in rd.get_set(1).entries if x.name.endswith("pub1.stm"))
    m = rd.member(1, e)
    with open(media, "r+b") as f:  # the second database's file is damaged on the media
        f.seek(m.offset_data + m.size - 1)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 1]))
    priv = store.server.database(DB).edb
    before = hashlib.sha256(open(priv, "rb").read()).hexdigest()
    with pytest.raises(MediaError, match="pub1.stm: its SHA-256 on the media differs"):
        restore(store, media, 1, [SG], str(tmp_path / "t"))
    assert hashlib.sha256(open(priv, "rb").read()).hexdigest() == before  # the first was not replaced
    assert not [n for n in os.listdir(os.path.dirname(priv)) if n.endswith(".restoring")]


def test_the_next_incremental_chains_to_the_restored_backup(store: Store, tmp_path: Path) -> None:
    media = str(tmp_path / "m.bkf")
    deliver(store, range(5))
    assert run(store, media, [SG], Options()).ok  # the database's first normal backup
    backed = read_header(store.server.database(DB).edb)[0].backups["previous_full"]
    deliver(store, range(5, 10))
    lose(store)
    restore(store, media, 1, [f"{SG}/{DB}"], str(tmp_path / "t"), last=True, mount=True)
    h = read_header(store.server.database(DB).edb)[0]
    pf = h.backups["previous_full"]
    assert pf is not None and backed is not None and (pf.low_gen, pf.high_gen) == (backed.low_gen, backed.high_gen)
    deliver(store, range(10, 15))
    r = run(store, media, [SG], Options(kind="incremental"))  # not refused with -560
    assert r.ok, r.errors
