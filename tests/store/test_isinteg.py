"""isinteg: each test finds exactly the damage injected (through engine transactions), changes
nothing without -fix, repairs it with -fix, and a second run finds nothing; the mailbox data
is checked afterwards. Also the run's rules (dismounted only, mount intent kept) and the CLI."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from mailkeep.cli import isinteg as cli
from mailkeep.directory import tasks
from mailkeep.engine.database import Database
from mailkeep.engine.transaction import Transaction
from mailkeep.store import folders, isinteg, schema
from mailkeep.store.delivery import deliver
from mailkeep.store.mailbox import Mailbox, open_mailbox
from mailkeep.store.public import open_public
from mailkeep.store.server import DatabaseInfo
from mailkeep.store.setup import SetupResult
from mailkeep.store.store import Store
from tests.store.conftest import message, source

Counts = dict[str, tuple[int, int, int]]  # test -> (errors, warnings, fixes)


@dataclass
class World:
    """alice: <a1@x> and <shared@x>; bob: <shared@x> (one content row, two references)."""

    info: DatabaseInfo
    alice: str
    bob: str
    alice_addr: str
    bob_addr: str


@pytest.fixture(autouse=True)
def fixed_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isinteg, "_now", lambda: 0.0)


@pytest.fixture
def world(store: Store, server: SetupResult, add_mailbox_user: Callable[..., str]) -> World:
    a, b = add_mailbox_user("alice"), add_mailbox_user("bob")
    alice = deliver(store, source(message("<a1@x>")), [a]).of(a).mailbox
    rep = deliver(store, source(message("<shared@x>", subject="shared")), [a, b])
    return World(server.mailbox_store, alice, rep.of(b).mailbox, a, b)


@contextmanager
def mounted(store: Store, info: DatabaseInfo) -> Iterator[None]:
    store.mount(info)
    try:
        yield
    finally:
        store.dismount(info)


@contextmanager
def inject(store: Store, info: DatabaseInfo) -> Iterator[tuple[Transaction, Database]]:
    """One engine transaction on the (otherwise dismounted) database."""
    with mounted(store, info), store.write(info) as (txn, db):
        yield txn, db


def tables(store: Store, info: DatabaseInfo) -> dict[str, list[dict[str, Any]]]:
    with mounted(store, info), store.read(info) as (r, db):
        return {t.name: [dict(x) for x in r.scan(db, t.name)] for t in schema.TABLES}


def found(report: isinteg.IsintegReport) -> Counts:
    return {r.name: (r.errors, r.warnings, r.fixes) for r in report.results if r.errors or r.warnings or r.fixes}


def check_and_fix(store: Store, info: DatabaseInfo, expected: Counts, fixing: Counts | None = None,
                  ) -> isinteg.IsintegReport:
    """Without -fix: exactly ``expected`` (no fixes) and not a row changed; with -fix: the same
    findings (or ``fixing``, when an earlier test's repair removes a later finding), repaired;
    then a clean run. Returns the -fix report."""
    before = tables(store, info)
    checked = isinteg.run(store, info.name, ["alltests"], fix=False)
    assert found(checked) == {k: (e, w, 0) for k, (e, w, _f) in expected.items()}
    assert checked.unfixed == checked.errors
    assert tables(store, info) == before
    fixed = isinteg.run(store, info.name, ["alltests"], fix=True)
    assert found(fixed) == (expected if fixing is None else fixing)
    assert fixed.unfixed == 0
    again = isinteg.run(store, info.name, ["alltests"], fix=False)
    assert found(again) == {}
    assert not store.is_mounted(info) and not store.server.mount_intended(info)
    return fixed


def findings(report: isinteg.IsintegReport, test: str) -> list[str]:
    return report.result(test).findings


def user_mailbox(store: Store, user: str) -> Mailbox:
    return open_mailbox(store, user)


def message_ids(mb: Mailbox, path: str) -> list[str]:
    return [m.message_id for m in mb.messages(path)]


# -- the run -----------------------------------------------------------------------------------------
def test_clean_database_reports_zero_everywhere(store: Store, world: World, server: SetupResult) -> None:
    store.dismount(world.info)
    rep = isinteg.run(store, world.info.name, ["alltests"], fix=False)
    assert [(r.name, r.errors, r.warnings, r.fixes, r.rows) for r in rep.results] == [
        ("tombstone", 0, 0, 0, 0), ("mailbox", 0, 0, 0, 3), ("fldsub", 0, 0, 0, 36), ("message", 0, 0, 0, 3),
        ("dumpster", 0, 0, 0, 0), ("content", 0, 0, 0, 2), ("msgref", 0, 0, 0, 2), ("folder", 0, 0, 0, 36),
    ]
    assert rep.lines(verbose=True) == [
        "Isinteg of First Storage Group/Mailbox Store (Exchange1) (mailbox store) on server Exchange1: check only",
        "Test Mailbox Tombstone result: 0 error(s); 0 warning(s); 0 fix(es); 0 row(s); time: 0h:0m:0s",
        "Test Mailbox result: 0 error(s); 0 warning(s); 0 fix(es); 3 row(s); time: 0h:0m:0s",
        "Test Sub-folders result: 0 error(s); 0 warning(s); 0 fix(es); 36 row(s); time: 0h:0m:0s",
        "Test Message result: 0 error(s); 0 warning(s); 0 fix(es); 3 row(s); time: 0h:0m:0s",
        "Test Deleted Messages result: 0 error(s); 0 warning(s); 0 fix(es); 0 row(s); time: 0h:0m:0s",
        "Test Message Content result: 0 error(s); 0 warning(s); 0 fix(es); 2 row(s); time: 0h:0m:0s",
        "Test Message Reference Count result: 0 error(s); 0 warning(s); 0 fix(es); 2 row(s); time: 0h:0m:0s",
        "Test Folder result: 0 error(s); 0 warning(s); 0 fix(es); 36 row(s); time: 0h:0m:0s",
        ". . . . . SUMMARY . . . . .",
        "Total number of tests : 8",
        "Total number of warnings : 0",
        "Total number of errors : 0",
        "Total number of fixes : 0",
        "Total time : 0h:0m:0s",
    ]
    pub = server.public_store
    store.dismount(pub)
    rep = isinteg.run(store, str(pub.guid), ["alltests"], fix=True)
    assert (rep.errors, rep.warnings, rep.fixes, rep.kind) == (0, 0, 0, "public folder store")
    assert rep.result("mailbox").rows == 1 and rep.result("folder").rows == 1


def test_mounted_database_is_refused(store: Store, world: World, server: SetupResult) -> None:
    with pytest.raises(isinteg.IsintegError) as e:
        isinteg.run(store, world.info.name, ["alltests"], fix=False)
    assert str(e.value) == (
        "mailbox store First Storage Group/Mailbox Store (Exchange1) is mounted; isinteg needs it dismounted. "
        "Dismount it first: mailkeep db dismount Mailbox Store (Exchange1)")
    assert not e.value.usage and store.is_mounted(world.info)
    store.close()  # a service stop: not mounted now, but meant to be
    with Store.open(server.server.data) as again:
        with pytest.raises(isinteg.IsintegError, match=r"is mounted \(the store mounts it whenever it runs\); "
                           r"isinteg needs it dismounted\. Dismount it first: mailkeep db dismount"):
            isinteg.run(again, "Mailbox Store (Exchange1)", ["folder"], fix=False)
        assert again.server.mount_intended(world.info)


def test_private_mount_leaves_the_database_dismounted(store: Store, world: World) -> None:
    store.dismount(world.info)
    assert not store.server.mount_intended(world.info)
    isinteg.run(store, f"First Storage Group/{world.info.name}", ["folder"], fix=True)
    assert not store.is_mounted(world.info) and not store.server.mount_intended(world.info)
    store.close()
    with Store.open(store.server.data) as again:  # a service start mounts only the public store
        assert [d.name for d in again.mount_intended()] == ["Public Folder Store (Exchange1)"]


def test_unknown_test_name_and_database(store: Store, world: World) -> None:
    store.dismount(world.info)
    with pytest.raises(isinteg.IsintegError) as e:
        isinteg.run(store, world.info.name, ["folder", "aclitemref"], fix=False)
    assert e.value.usage
    assert str(e.value) == ("unknown test 'aclitemref'; valid tests: alltests, allfoldertests, tombstone, mailbox, "
                            "fldsub, message, dumpster, content, msgref, folder")
    with pytest.raises(isinteg.IsintegError, match="no database 'Nope' on server Exchange1") as e:
        isinteg.run(store, "Nope", ["alltests"], fix=False)
    assert e.value.usage


def test_test_selection_runs_in_order_and_case_insensitive(store: Store, world: World) -> None:
    store.dismount(world.info)
    rep = isinteg.run(store, world.info.name, ["FOLDER", "Fldsub", "msgref"], fix=False)
    assert [r.name for r in rep.results] == ["fldsub", "msgref", "folder"]
    assert isinteg.expand_tests(["allfoldertests"]) == ["fldsub", "folder"]


# -- folder ------------------------------------------------------------------------------------------
def test_folder_counters(store: Store, world: World) -> None:
    mb = user_mailbox(store, "alice")
    inbox = mb.folder("INBOX")
    mb.set_flags("INBOX", [1], ["\\Seen"], "add")
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.update(db, "folder", (world.alice, inbox.fid), {"messages": 7, "unread": 0, "uidnext": 2})
    fixed = check_and_fix(store, world.info, {"folder": (3, 0, 3)})
    prefix = f"    ERROR: folder {inbox.fid} 'Inbox' of mailbox {world.alice}: "
    assert findings(fixed, "folder") == [
        prefix + "message count 7, but it holds 2 message(s) -- FIXED: set to 2",
        prefix + "unread count 0, but 1 of its messages are unread -- FIXED: set to 1",
        prefix + "next UID 2 is not above its highest UID 2 -- FIXED: set to 3",
    ]
    with mounted(store, world.info):
        f = user_mailbox(store, "alice").folder("INBOX")
        assert (f.messages, f.unread, f.uidnext, f.uidvalidity) == (2, 1, 3, inbox.uidvalidity)


# -- fldsub ------------------------------------------------------------------------------------------
def test_fldsub_orphaned_folder_goes_to_lost_and_found(store: Store, world: World) -> None:
    mb = user_mailbox(store, "alice")
    sub = mb.create_folder("Projects/2026")
    mb.move("INBOX", [1], "Projects/2026")
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.update(db, "folder", (world.alice, sub.fid), {"parent": 99})
    fixed = check_and_fix(store, world.info, {"fldsub": (1, 0, 1)})
    assert findings(fixed, "fldsub") == [
        f"    ERROR: folder {sub.fid} '2026' of mailbox {world.alice}: its parent folder 99 does not exist -- "
        f"FIXED: folder {sub.fid} moved under 'Lost and Found' (folder {sub.fid + 1})"
    ]
    with mounted(store, world.info):
        mb = user_mailbox(store, "alice")
        assert mb.folder("Lost and Found/2026").fid == sub.fid
        assert message_ids(mb, "Lost and Found/2026") == ["<a1@x>"]
        assert b"Message-ID: <a1@x>" in mb.read_message("Lost and Found/2026", 1)


def test_fldsub_cycle(store: Store, world: World) -> None:
    mb = user_mailbox(store, "alice")
    a, b = mb.create_folder("A"), mb.create_folder("A/B")
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.update(db, "folder", (world.alice, a.fid), {"parent": b.fid})
    fixed = check_and_fix(store, world.info, {"fldsub": (1, 0, 1)})
    assert findings(fixed, "fldsub") == [
        f"    ERROR: folders {a.fid}, {b.fid} of mailbox {world.alice} form a cycle (not reachable from the root)"
        f" -- FIXED: folder {a.fid} moved under 'Lost and Found' (folder {b.fid + 1})"
    ]
    with mounted(store, world.info):
        paths = [f.path for f in user_mailbox(store, "alice").folders()]
        assert "Lost and Found/A/B" in paths and "A" not in paths


def test_fldsub_sibling_folders_with_one_name(store: Store, world: World) -> None:
    mb = user_mailbox(store, "alice")
    mb.create_folder("Work")
    other = mb.create_folder("Play")
    mb.copy("INBOX", [1], "Play")
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.update(db, "folder", (world.alice, other.fid), {"name": "WORK"})
    fixed = check_and_fix(store, world.info, {"fldsub": (1, 0, 1)})
    assert findings(fixed, "fldsub") == [
        f"    ERROR: folders {other.fid - 1} and {other.fid} of mailbox {world.alice} are both named 'WORK' under "
        f"folder 1 -- FIXED: folder {other.fid} renamed 'WORK ({other.fid})'"
    ]
    with mounted(store, world.info):
        assert message_ids(user_mailbox(store, "alice"), f"WORK ({other.fid})") == ["<a1@x>"]


# -- message -----------------------------------------------------------------------------------------
def test_message_whose_folder_is_gone_moves_to_lost_and_found(store: Store, world: World) -> None:
    mb = user_mailbox(store, "alice")
    projects = mb.create_folder("Projects")
    mb.move("INBOX", [2], "Projects")  # <shared@x>, whose content bob's copy shares
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.delete(db, "folder", (world.alice, projects.fid))
    fixed = check_and_fix(store, world.info, {"message": (1, 0, 1)})
    assert findings(fixed, "message") == [
        f"    ERROR: message UID 1 in folder {projects.fid} of mailbox {world.alice} (Message-ID <shared@x>): "
        f"the folder does not exist -- FIXED: moved to 'Lost and Found' (folder {projects.fid + 1}) as UID 1"
    ]
    with mounted(store, world.info):
        mb = user_mailbox(store, "alice")
        assert message_ids(mb, "Lost and Found") == ["<shared@x>"]
        assert mb.read_message("Lost and Found", 1) == message("<shared@x>", subject="shared")
        assert message_ids(user_mailbox(store, "bob"), "INBOX") == ["<shared@x>"]
        with store.read(world.info) as (r, db):
            assert [(c["cid"], c["refs"]) for c in r.scan(db, "content")] == [(1, 1), (2, 2)]


def test_rows_of_a_mailbox_gone_from_database_and_directory_are_removed(store: Store, world: World) -> None:
    mb = user_mailbox(store, "bob")
    deliver(store, source(message("<bob-only@x>")), [world.bob_addr])
    mb.delete("INBOX", [2])  # into deleted item retention
    tasks.delete_mailbox(store.directory, "bob")
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.delete(db, "mailbox", (world.bob,))
    fixed = check_and_fix(store, world.info, {"fldsub": (12, 0, 12), "message": (1, 0, 1), "dumpster": (1, 0, 1)})
    assert findings(fixed, "message") == [
        f"    ERROR: message UID 1 in folder 2 of mailbox {world.bob} (Message-ID <shared@x>): the mailbox does not "
        "exist -- FIXED: deleted; content 2 kept (still referred to)"
    ]
    assert findings(fixed, "dumpster") == [
        f"    ERROR: deleted item 1 of mailbox {world.bob} (Message-ID <bob-only@x>): the mailbox does not exist -- "
        "FIXED: deleted; content 3 deleted (nothing else refers to it)"
    ]
    after = tables(store, world.info)
    assert {r["mailbox"] for t in ("folder", "message", "dumpster") for r in after[t]} == {
        world.alice, *{m["guid"] for m in after["mailbox"]}}
    assert [(c["cid"], c["refs"]) for c in after["content"]] == [(1, 1), (2, 1)]
    with mounted(store, world.info):
        mb = user_mailbox(store, "alice")
        assert mb.read_message("INBOX", 2) == message("<shared@x>", subject="shared")


# -- mailbox -----------------------------------------------------------------------------------------
def test_mailbox_row_missing_while_the_directory_homes_it_here_is_recreated(store: Store, world: World) -> None:
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.delete(db, "mailbox", (world.alice,))
    fixed = check_and_fix(store, world.info, {"mailbox": (1, 0, 1)})
    assert findings(fixed, "mailbox") == [
        f"    ERROR: mailbox {world.alice} has 14 folder, message or deleted item row(s) but no mailbox row; "
        "CN=alice,CN=Users,DC=contoso,DC=com is homed here with that mailbox GUID -- FIXED: mailbox row re-created "
        "for CN=alice,CN=Users,DC=contoso,DC=com"
    ]
    with mounted(store, world.info):
        mb = user_mailbox(store, "alice")
        assert mb.guid == world.alice and message_ids(mb, "INBOX") == ["<a1@x>", "<shared@x>"]
        assert mb.create_folder("New").fid == 13
        with store.read(world.info) as (r, db):
            row = r.get(db, "mailbox", (world.alice,))
            assert row is not None and (row["state"], row["kind"], row["account"]) == ("connected", "user", "alice")


def test_mailbox_standard_folder_missing_or_unmarked(store: Store, world: World) -> None:
    mb = user_mailbox(store, "alice")
    deleted = mb.folder("Deleted Items")
    inbox = mb.folder("INBOX")
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.delete(db, "folder", (world.alice, deleted.fid))
        txn.update(db, "folder", (world.alice, inbox.fid), {"special": None})
    fixed = check_and_fix(store, world.info, {"mailbox": (2, 0, 2)})
    assert findings(fixed, "mailbox") == [
        f"    ERROR: mailbox {world.alice} (alice) has no Inbox folder -- FIXED: folder {inbox.fid} 'Inbox' is the "
        "Inbox folder again",
        f"    ERROR: mailbox {world.alice} (alice) has no Deleted Items folder -- FIXED: re-created as folder 13",
    ]
    with mounted(store, world.info):
        mb = user_mailbox(store, "alice")
        assert mb.folder("INBOX").fid == inbox.fid and message_ids(mb, "INBOX") == ["<a1@x>", "<shared@x>"]
        assert mb.folder("Deleted Items").special == "deleted"


def test_mailbox_root_missing(store: Store, world: World) -> None:
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.delete(db, "folder", (world.bob, schema.ROOT_FID))
    checked = isinteg.run(store, world.info.name, ["mailbox", "fldsub"], fix=False)
    assert findings(checked, "fldsub") == [
        f"    WARNING: mailbox {world.bob} has no root folder (the mailbox test re-creates it)"]
    # with -fix the mailbox test re-creates the root before fldsub runs
    fixed = check_and_fix(store, world.info, {"mailbox": (1, 0, 1), "fldsub": (0, 1, 0)}, {"mailbox": (1, 0, 1)})
    assert findings(fixed, "mailbox") == [
        f"    ERROR: mailbox {world.bob} (bob) has no root folder -- FIXED: root folder 'Top of Information Store' "
        "re-created"]
    with mounted(store, world.info):
        assert len(user_mailbox(store, "bob").folders()) == 11


def test_mailbox_next_folder_id(store: Store, world: World) -> None:
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.update(db, "mailbox", (world.alice,), {"next_fid": 5})
    fixed = check_and_fix(store, world.info, {"mailbox": (1, 0, 1)})
    assert findings(fixed, "mailbox") == [
        f"    ERROR: mailbox {world.alice}: next folder id 5 is not above the highest folder id 12 -- FIXED: set to 13"]
    with mounted(store, world.info):
        assert user_mailbox(store, "alice").create_folder("X").fid == 13


def test_mailbox_two_connected_mailboxes_of_one_owner(store: Store, world: World) -> None:
    new = uuid.uuid4()
    store.directory.replace("CN=alice,CN=Users,DC=contoso,DC=com", msExchMailboxGUID=new.bytes_le)
    assert deliver(store, source(message("<a2@x>")), [world.alice_addr]).of(world.alice_addr).mailbox == str(new)
    store.dismount(world.info)
    fixed = check_and_fix(store, world.info, {"mailbox": (0, 1, 1)})
    both = ", ".join(sorted([world.alice, str(new)]))
    assert findings(fixed, "mailbox") == [
        f"    WARNING: mailboxes {both} are all connected to CN=alice,CN=Users,DC=contoso,DC=com; its "
        f"mailbox GUID is {new}, not {world.alice} -- FIXED: mailbox {world.alice} marked disconnected"
    ]
    states = {m["guid"]: m["state"] for m in tables(store, world.info)["mailbox"]}
    assert (states[world.alice], states[str(new)]) == ("disconnected", "connected")


def test_public_store_post_whose_folder_is_gone(store: Store, server: SetupResult) -> None:
    pf = open_public(store)
    folder = pf.create_folder("Marketing/Campaigns")
    pf.post("Marketing/Campaigns", source(message("<post@x>", subject="launch")))
    pub = server.public_store
    store.dismount(pub)
    with inject(store, pub) as (txn, db):
        txn.delete(db, "folder", (pf.guid, folder.fid - 1))  # Marketing: Campaigns loses its parent
        txn.update(db, "folder", (pf.guid, folder.fid), {"messages": 0})
    fixed = check_and_fix(store, pub, {"fldsub": (1, 0, 1), "folder": (1, 0, 1)})
    assert fixed.lines()[0] == ("Isinteg of First Storage Group/Public Folder Store (Exchange1) (public folder store) "
                                "on server Exchange1: check and fix")
    assert findings(fixed, "fldsub") == [
        f"    ERROR: folder {folder.fid} 'Campaigns' of mailbox {pf.guid}: its parent folder {folder.fid - 1} does "
        f"not exist -- FIXED: folder {folder.fid} moved under 'Lost and Found' (folder {folder.fid + 1})"]
    with mounted(store, pub):
        pf = open_public(store)
        assert [f.path for f in pf.folders()] == ["Lost and Found", "Lost and Found/Campaigns"]
        assert pf.read_message("Lost and Found/Campaigns", 1) == message("<post@x>", subject="launch")


# -- tombstone ---------------------------------------------------------------------------------------
def test_tombstoned_mailbox_still_connected(store: Store, world: World) -> None:
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.insert(db, "tombstone", {"guid": world.bob, "reason": "moved", "new_home": "CN=DB2", "server_legacy": "",
                                     "created": 0.0})
    fixed = check_and_fix(store, world.info, {"tombstone": (1, 0, 1)})
    assert findings(fixed, "tombstone") == [
        f"    ERROR: mailbox {world.bob} is in the tombstone table (moved, new home CN=DB2) but is connected -- FIXED: "
        f"mailbox {world.bob} marked disconnected"]
    after = tables(store, world.info)
    assert [m["state"] for m in after["mailbox"] if m["guid"] == world.bob] == ["disconnected"]
    assert [m["message_id"] for m in after["message"] if m["mailbox"] == world.bob] == ["<shared@x>"]


# -- dumpster ----------------------------------------------------------------------------------------
def test_deleted_item_whose_content_is_missing(store: Store, world: World) -> None:
    deliver(store, source(message("<gone@x>")), [world.bob_addr])
    user_mailbox(store, "bob").delete("INBOX", [2])
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        row = txn.get(db, "content", (3,))
        assert row is not None
        txn.delete(db, "content", (3,))
        txn.delete_stream(db, int(row["stream"]))
    fixed = check_and_fix(store, world.info, {"dumpster": (1, 0, 1)})
    assert findings(fixed, "dumpster") == [
        f"    ERROR: deleted item 1 of mailbox {world.bob} (Message-ID <gone@x>): its content 3 does not exist -- "
        "FIXED: deleted; its content 3 was already gone"]
    assert tables(store, world.info)["dumpster"] == []


# -- msgref ------------------------------------------------------------------------------------------
def test_msgref_reference_count(store: Store, world: World) -> None:
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.update(db, "content", (2,), {"refs": 1})
    fixed = check_and_fix(store, world.info, {"msgref": (1, 0, 1)})
    assert findings(fixed, "msgref") == [
        "    ERROR: content 2: reference count 1, but 2 message(s) and deleted item(s) refer to it -- FIXED: set to 2"]
    assert [(c["cid"], c["refs"]) for c in tables(store, world.info)["content"]] == [(1, 1), (2, 2)]
    with mounted(store, world.info):
        user_mailbox(store, "alice").delete("INBOX", [2])
        user_mailbox(store, "bob").delete("INBOX", [1])
        with store.read(world.info) as (r, db):  # both copies in deleted item retention: still 2
            assert [(c["cid"], c["refs"]) for c in r.scan(db, "content")] == [(1, 1), (2, 2)]


# -- content -----------------------------------------------------------------------------------------
def test_content_nothing_refers_to(store: Store, world: World) -> None:
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        with txn.create_stream(db) as w:
            w.write(b"leaked bytes")
            stream = w.stream_id
        cid = folders.add_content(txn, db, stream, 12, "", 1, 0.0)
    fixed = check_and_fix(store, world.info, {"content": (1, 0, 1)})
    assert findings(fixed, "content") == [
        f"    ERROR: content {cid} (12 bytes): no message or deleted item refers to it -- FIXED: row and stream "
        "deleted"]
    with mounted(store, world.info), store.read(world.info) as (r, db):
        assert [c["cid"] for c in r.scan(db, "content")] == [1, 2]
        with pytest.raises(KeyError):
            r.open_stream(db, stream)
        assert r.open_stream(db, 2).readall() == message("<shared@x>", subject="shared")


def test_message_naming_missing_content(store: Store, world: World) -> None:
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        row = txn.get(db, "content", (1,))
        assert row is not None
        txn.delete(db, "content", (1,))
        txn.delete_stream(db, int(row["stream"]))
    fixed = check_and_fix(store, world.info, {"content": (1, 0, 1)})
    assert findings(fixed, "content") == [
        f"    ERROR: message UID 1 in folder 2 of mailbox {world.alice} (Message-ID <a1@x>): its content 1 does not "
        "exist -- FIXED: message row deleted"]
    with mounted(store, world.info):
        mb = user_mailbox(store, "alice")
        assert message_ids(mb, "INBOX") == ["<shared@x>"]
        f = mb.folder("INBOX")
        assert (f.messages, f.unread, f.uidnext) == (1, 1, 3)


def test_content_whose_stream_is_missing(store: Store, world: World) -> None:
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        row = txn.get(db, "content", (2,))
        assert row is not None
        txn.delete_stream(db, int(row["stream"]))
    fixed = check_and_fix(store, world.info, {"content": (1, 0, 1)})
    assert findings(fixed, "content") == [
        "    ERROR: content 2: its stream 2 is missing from the .stm -- FIXED: content row deleted with the 2 "
        "message(s) and 0 deleted item(s) naming it"]
    with mounted(store, world.info):
        assert message_ids(user_mailbox(store, "alice"), "INBOX") == ["<a1@x>"]
        assert message_ids(user_mailbox(store, "bob"), "INBOX") == []
        assert user_mailbox(store, "alice").read_message("INBOX", 1) == message("<a1@x>")


def test_next_content_id(store: Store, world: World) -> None:
    store.dismount(world.info)
    with inject(store, world.info) as (txn, db):
        txn.put(db, "info", {"key": "next_cid", "value": 2})
    fixed = check_and_fix(store, world.info, {"content": (1, 0, 1)})
    assert findings(fixed, "content") == [
        "    ERROR: next content id 2 is not above the highest content id 2 -- FIXED: set to 3"]
    with mounted(store, world.info):
        assert deliver(store, source(message("<a3@x>")), [world.alice_addr]).of(world.alice_addr).uid == 3


# -- CLI ---------------------------------------------------------------------------------------------
def run_cli(argv: list[str], data: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str], str]:
    code = cli.main(argv, data=data)
    cap = capsys.readouterr()
    return code, cap.out.splitlines(), cap.err


@pytest.fixture
def offline(store: Store, world: World, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> str:
    """The mailbox store dismounted and the store closed (as between two commands); the
    current folder is a temporary one (isinteg writes its log there)."""
    store.dismount(world.info)
    store.close()
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return store.server.data


def test_cli_clean_run_output_and_default_log(offline: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["-S", "exchange1", "-DB", "Mailbox Store (Exchange1)", "-Test", "folder,msgref"],
                             offline, capsys)
    assert (code, err) == (0, "")
    assert out == [
        "Isinteg of First Storage Group/Mailbox Store (Exchange1) (mailbox store) on server Exchange1: check only",
        "Test Message Reference Count result: 0 error(s); 0 warning(s); 0 fix(es); 2 row(s); time: 0h:0m:0s",
        "Test Folder result: 0 error(s); 0 warning(s); 0 fix(es); 36 row(s); time: 0h:0m:0s",
        ". . . . . SUMMARY . . . . .",
        "Total number of tests : 2",
        "Total number of warnings : 0",
        "Total number of errors : 0",
        "Total number of fixes : 0",
        "Total time : 0h:0m:0s",
    ]
    log = open("isinteg.pri", encoding="utf-8").read().splitlines()
    assert re.fullmatch(r"---- \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d mailkeep isinteg -s exchange1 -db Mailbox Store "
                        r"\(Exchange1\) -test folder,msgref", log[0])
    assert log[1:] == [*out, ""]


def test_cli_errors_then_fix(store: Store, world: World, offline: str, capsys: pytest.CaptureFixture[str]) -> None:
    with Store.open(offline) as s, inject(s, world.info) as (txn, db):
        txn.update(db, "content", (1,), {"refs": 4})
    code, out, err = run_cli(["-db", "Mailbox Store (Exchange1)", "-test", "msgref", "-verbose", "-l", "my.log"],
                             offline, capsys)
    assert (code, err) == (1, "")
    assert out[1:3] == [
        "    ERROR: content 1: reference count 4, but 1 message(s) and deleted item(s) refer to it",
        "Test Message Reference Count result: 1 error(s); 0 warning(s); 0 fix(es); 2 row(s); time: 0h:0m:0s",
    ]
    code, out, err = run_cli(["-db", "Mailbox Store (Exchange1)", "-fix", "-test", "alltests"], offline, capsys)
    assert (code, err) == (0, "")
    assert "Test Message Reference Count result: 1 error(s); 0 warning(s); 1 fix(es); 2 row(s); time: 0h:0m:0s" in out
    assert out[-5:-1] == ["Total number of tests : 8", "Total number of warnings : 0", "Total number of errors : 1",
                          "Total number of fixes : 1"]
    assert not any(line.startswith("    ") for line in out)  # findings only with -verbose (and in the log)
    code, out, err = run_cli(["-db", "Mailbox Store (Exchange1)", "-test", "alltests"], offline, capsys)
    assert (code, out[-3]) == (0, "Total number of errors : 0")
    assert os.path.exists("my.log")
    pri = open("isinteg.pri", encoding="utf-8").read()
    assert ("    ERROR: content 1: reference count 4, but 1 message(s) and deleted item(s) refer to it -- FIXED: set "
            "to 1") in pri
    assert pri.count("---- ") == 2


def test_cli_public_store_logs_to_isinteg_pub(store: Store, server: SetupResult, offline: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    with Store.open(offline) as s:
        s.dismount(server.public_store)
    code, out, _ = run_cli(["-db", "Public Folder Store (Exchange1)", "-test", "alltests"], offline, capsys)
    assert code == 0 and out[0].endswith("(public folder store) on server Exchange1: check only")
    assert os.path.exists("isinteg.pub") and not os.path.exists("isinteg.pri")


@pytest.mark.parametrize(("argv", "message"), [
    (["-s", "Exchange2", "-db", "Mailbox Store (Exchange1)", "-test", "alltests"],
     "mailkeep isinteg: -s Exchange2: this data folder is server Exchange1, not Exchange2\n"),
    (["-db", "Mailbox Store (Exchange1)", "-test", "folder,bogus"],
     "mailkeep isinteg: unknown test 'bogus'; valid tests: alltests, allfoldertests, tombstone, mailbox, fldsub, "
     f"message, dumpster, content, msgref, folder\n{cli.USAGE}\n"),
    (["-db", "Mailbox Store (Exchange1)"],
     f"mailkeep isinteg: give the tests to run: -test alltests or -test TEST[,TEST...]\n{cli.USAGE}\n"),
    (["-db", "Mailbox Store (Exchange1)", "-test", "alltests", "-t", "/tmp"],
     f"mailkeep isinteg: unknown switch '-t'\n{cli.USAGE}\n"),
    (["-test", "alltests"],
     "mailkeep isinteg: choose the database with -db NAME (databases of Exchange1: First Storage Group/Mailbox "
     "Store (Exchange1); First Storage Group/Public Folder Store (Exchange1))\n"),
    (["-db", "Nope", "-test", "alltests"],
     "mailkeep isinteg: no database 'Nope' on server Exchange1 (databases: First Storage Group/Mailbox Store "
     "(Exchange1), First Storage Group/Public Folder Store (Exchange1))\n"),
])
def test_cli_usage_errors(offline: str, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, out, err = run_cli(argv, offline, capsys)
    assert (code, out, err) == (2, [], message)
    assert not os.path.exists("isinteg.pri")


def test_cli_refuses_a_mounted_database(store: Store, world: World, offline: str,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["-db", "Public Folder Store (Exchange1)", "-test", "alltests"], offline, capsys)
    assert (code, out) == (1, [])
    assert err == ("mailkeep isinteg: public folder store First Storage Group/Public Folder Store (Exchange1) is "
                   "mounted (the store mounts it whenever it runs); isinteg needs it dismounted. Dismount it first: "
                   "mailkeep db dismount Public Folder Store (Exchange1)\n")


def test_storage_group_held_by_another_store(store: Store, world: World) -> None:
    store.dismount(world.info)  # the public store stays mounted: this store holds the storage group
    other = Store.open(store.server.data, directory=store.directory)
    with pytest.raises(isinteg.IsintegError) as e:
        isinteg.run(other, world.info.name, ["alltests"], fix=False)
    assert str(e.value).startswith("storage group First Storage Group is in use by another running Mailkeep process "
                                   "(for example 'mailkeep serve'): storage group E00 in ")
    assert str(e.value).endswith("stop that process and run isinteg again")
    assert not e.value.usage and not store.server.mount_intended(world.info)
    other.close()


def test_cli_data_folder_held_by_a_running_process(store: Store, world: World, monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    store.dismount(world.info)  # the fixture's store stays open, as a running server would
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(["-db", "Mailbox Store (Exchange1)", "-test", "alltests"], store.server.data, capsys)
    assert (code, out) == (1, [])
    assert err == (f"mailkeep isinteg: the data folder {store.server.data} is in use by another running Mailkeep "
                   "process (for example 'mailkeep serve'); isinteg needs the database dismounted and its storage "
                   "group free: stop that process (or dismount the database through it and stop it) and run isinteg "
                   "again\n")


def test_mailkeep_command_runs_isinteg(offline: str, capsys: pytest.CaptureFixture[str]) -> None:
    from mailkeep.cli import main

    code = main.main(["--data", offline, "isinteg", "-db", "Mailbox Store (Exchange1)", "-test", "alltests"])
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[-4:-1] == ["Total number of warnings : 0", "Total number of errors : 0",
                                        "Total number of fixes : 0"]
