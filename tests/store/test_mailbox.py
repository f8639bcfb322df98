"""The mailbox access API: folders, messages, flags, copy/move/delete/expunge/append, deleted
item retention, UIDs, and parallel sessions on one mailbox."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest

from mailkeep.store import delivery
from mailkeep.store.errors import StoreError
from mailkeep.store.mailbox import Mailbox, open_mailbox
from mailkeep.store.setup import SetupResult
from mailkeep.store.store import Store
from tests.store.conftest import message, source

STANDARD = ["Inbox", "Outbox", "Sent Items", "Deleted Items", "Drafts", "Junk E-mail", "Calendar", "Contacts",
            "Journal", "Notes", "Tasks"]
COLLISION, NO_SUPPORT, NOT_FOUND = 0x80040604, 0x80040102, 0x8004010F


@pytest.fixture
def mb(store: Store, add_mailbox_user: Callable[..., str]) -> Mailbox:
    add_mailbox_user("alice")
    return open_mailbox(store, "alice")


def contents(store: Store, mb: Mailbox) -> dict[int, int]:
    """cid -> refs of the mailbox's database."""
    with store.read(mb.info) as (r, db):
        return {int(c["cid"]): int(c["refs"]) for c in r.scan(db, "content")}


def content_of(store: Store, mb: Mailbox, path: str, uid: int) -> int:
    fid = mb.folder(path).fid
    with store.read(mb.info) as (r, db):
        row = r.get(db, "message", (mb.guid, fid, uid))
        assert row is not None
        return int(row["content"])


def put(mb: Mailbox, path: str, mid: str, **kw: Any) -> int:
    return mb.append(path, source(message(mid, subject=mid)), **kw)


# -- folders -----------------------------------------------------------------------------------------
def test_standard_folders(mb: Mailbox) -> None:
    fl = mb.folders()
    assert sorted(f.name for f in fl) == sorted(STANDARD)
    assert fl[0].path == "INBOX" and fl[0].name == "Inbox" and fl[0].special == "inbox"
    assert [f.path for f in fl] == ["INBOX", "Calendar", "Contacts", "Deleted Items", "Drafts", "Journal",
                                    "Junk E-mail", "Notes", "Outbox", "Sent Items", "Tasks"]
    specials = {f.name: f.special for f in fl}
    assert specials == {"Inbox": "inbox", "Outbox": "outbox", "Sent Items": "sent", "Deleted Items": "deleted",
                        "Drafts": "drafts", "Junk E-mail": "junk", "Calendar": "calendar",
                        "Contacts": "contacts", "Journal": "journal", "Notes": "notes", "Tasks": "tasks"}
    for f in fl:
        assert (f.messages, f.unread, f.uidnext) == (0, 0, 1)
        assert 1 <= f.uidvalidity < 2**31
    assert mb.folder("inbox") == mb.folder("INBOX") == mb.folder("Inbox")
    with pytest.raises(StoreError) as ei:
        mb.folder("No Such Folder")
    assert ei.value.code == NOT_FOUND and ei.value.name == "MAPI_E_NOT_FOUND"


def test_create_nested_folders(mb: Mailbox) -> None:
    f = mb.create_folder("Projects/2026/Q1")
    assert (f.name, f.path, f.special) == ("Q1", "Projects/2026/Q1", None)
    paths = {x.path for x in mb.folders()}
    assert {"Projects", "Projects/2026", "Projects/2026/Q1"} <= paths
    assert mb.folder("Projects/2026/Q1").parent == mb.folder("Projects/2026").fid
    sub = mb.create_folder("INBOX/Receipts")
    assert sub.path == "INBOX/Receipts"
    assert sub.parent == mb.folder("INBOX").fid
    assert mb.folder("inbox/Receipts") == sub
    assert len(mb.folders()) == len(STANDARD) + 4


def test_create_collisions(mb: Mailbox) -> None:
    mb.create_folder("Projects")
    for path in ("Projects", "projects", "INBOX", "inbox", "Sent Items", "/Projects/"):
        with pytest.raises(StoreError) as ei:
            mb.create_folder(path)
        assert ei.value.code == COLLISION, path
        assert ei.value.name == "MAPI_E_COLLISION"
    with pytest.raises(StoreError) as ei:
        mb.create_folder("")
    assert ei.value.code == COLLISION
    assert len(mb.folders()) == len(STANDARD) + 1


def test_rename_keeps_uidvalidity_and_messages(mb: Mailbox) -> None:
    f = mb.create_folder("Old")
    mb.create_folder("Old/Child")
    uid = put(mb, "Old", "<r1@x>")
    r = mb.rename_folder("Old", "New")
    assert (r.fid, r.uidvalidity, r.uidnext, r.messages) == (f.fid, f.uidvalidity, 2, 1)
    assert r.path == "New"
    assert mb.folder("New/Child").parent == f.fid
    paths = {x.path for x in mb.folders()}
    assert "Old" not in paths and "Old/Child" not in paths
    assert [m.message_id for m in mb.messages("New")] == ["<r1@x>"]
    assert mb.read_message("New", uid) == message("<r1@x>", subject="<r1@x>")
    # moved under another parent
    mb.create_folder("Archive")
    moved = mb.rename_folder("New", "Archive/New")
    assert (moved.fid, moved.uidvalidity, moved.path) == (f.fid, f.uidvalidity, "Archive/New")
    assert moved.parent == mb.folder("Archive").fid
    under_inbox = mb.rename_folder("Archive/New", "INBOX/New")
    assert under_inbox.parent == mb.folder("INBOX").fid
    assert under_inbox.uidvalidity == f.uidvalidity


def test_rename_refusals(mb: Mailbox) -> None:
    mb.create_folder("A/B")
    mb.create_folder("C")
    with pytest.raises(StoreError) as ei:
        mb.rename_folder("A", "C")
    assert ei.value.code == COLLISION
    with pytest.raises(StoreError) as ei:
        mb.rename_folder("A", "A/B/A")
    assert ei.value.code == NO_SUPPORT
    with pytest.raises(StoreError) as ei:
        mb.rename_folder("A", "Nowhere/A")
    assert ei.value.code == NOT_FOUND
    with pytest.raises(StoreError) as ei:
        mb.rename_folder("Missing", "X")
    assert ei.value.code == NOT_FOUND
    for std in ("INBOX", "Sent Items", "Deleted Items", "Calendar", "Tasks"):
        with pytest.raises(StoreError) as ei:
            mb.rename_folder(std, "Renamed")
        assert ei.value.code == NO_SUPPORT, std
        assert ei.value.name == "MAPI_E_NO_SUPPORT"
        with pytest.raises(StoreError) as ei:
            mb.delete_folder(std)
        assert ei.value.code == NO_SUPPORT, std
    assert sorted(f.name for f in mb.folders() if f.special) == sorted(STANDARD)
    assert {"A", "A/B", "C"} <= {f.path for f in mb.folders()}


def test_delete_folder_to_retention_and_recover(store: Store, mb: Mailbox) -> None:
    first = mb.create_folder("Trip")
    mb.create_folder("Trip/Photos")
    put(mb, "Trip", "<t1@x>")
    put(mb, "Trip", "<t2@x>")
    put(mb, "Trip/Photos", "<p1@x>")
    refs_before = contents(store, mb)
    assert mb.delete_folder("Trip") == 3
    paths = {f.path for f in mb.folders()}
    assert "Trip" not in paths and "Trip/Photos" not in paths
    deleted = mb.deleted_items()
    assert sorted(d.message_id for d in deleted) == ["<p1@x>", "<t1@x>", "<t2@x>"]
    assert [d.did for d in deleted] == [1, 2, 3]
    assert contents(store, mb) == refs_before  # the dumpster keeps the references
    again = mb.create_folder("Trip")
    assert again.fid != first.fid
    assert again.uidvalidity != first.uidvalidity
    assert mb.messages("Trip") == []
    # their folders are gone: recovered items land in Deleted Items
    assert mb.recover_deleted() == 3
    assert mb.deleted_items() == []
    assert sorted(m.message_id for m in mb.messages("Deleted Items")) == ["<p1@x>", "<t1@x>", "<t2@x>"]
    assert contents(store, mb) == refs_before


# -- messages ----------------------------------------------------------------------------------------
def test_messages_uids_and_fetch(store: Store, mb: Mailbox, add_mailbox_user: Callable[..., str]) -> None:
    sent = [message(f"<m{i}@x>", body="b" * (i * 100)) for i in range(6)]
    for data in sent:
        delivery.deliver(store, source(data), ["alice@contoso.com"])
    msgs = mb.messages("INBOX")
    assert [m.uid for m in msgs] == [1, 2, 3, 4, 5, 6]
    assert [m.message_id for m in msgs] == [f"<m{i}@x>" for i in range(6)]
    assert [m.size for m in msgs] == [len(d) for d in sent]
    for m, data in zip(msgs, sent, strict=True):
        with mb.fetch("INBOX", m.uid) as r:
            got = b""
            for _ in range(len(data) + 1):
                chunk = r.read(17)
                if not chunk:
                    break
                got += chunk
        assert got == data
    with pytest.raises(StoreError) as ei:
        mb.read_message("INBOX", 99)
    assert ei.value.code == NOT_FOUND


def test_set_flags_modes_and_unread(mb: Mailbox) -> None:
    uids = [put(mb, "INBOX", f"<f{i}@x>") for i in range(4)]
    assert uids == [1, 2, 3, 4]
    assert mb.folder("INBOX").unread == 4
    out = mb.set_flags("INBOX", [1, 2], ["\\seen", "\\FLAGGED"], "replace")
    assert out == {1: frozenset({"\\Seen", "\\Flagged"}), 2: frozenset({"\\Seen", "\\Flagged"})}
    assert mb.folder("INBOX").unread == 2
    out = mb.set_flags("INBOX", [2, 3], ["\\Answered", "$Label1"], "add")
    assert out == {2: frozenset({"\\Seen", "\\Flagged", "\\Answered", "$Label1"}),
                   3: frozenset({"\\Answered", "$Label1"})}
    assert mb.folder("INBOX").unread == 2
    out = mb.set_flags("INBOX", [1, 2], ["\\Seen"], "remove")
    assert out == {1: frozenset({"\\Flagged"}), 2: frozenset({"\\Flagged", "\\Answered", "$Label1"})}
    assert mb.folder("INBOX").unread == 4
    mb.set_flags("INBOX", [1, 2, 3, 4, 77], ["\\Seen"], "add")
    f = mb.folder("INBOX")
    assert (f.messages, f.unread) == (4, 0)
    assert {m.uid: m.flags for m in mb.messages()} == {
        1: frozenset({"\\Flagged", "\\Seen"}),
        2: frozenset({"\\Flagged", "\\Answered", "$Label1", "\\Seen"}),
        3: frozenset({"\\Answered", "$Label1", "\\Seen"}),
        4: frozenset({"\\Seen"}),
    }
    mb.set_flags("INBOX", [4], [], "replace")
    assert mb.messages()[3].flags == frozenset()
    assert mb.folder("INBOX").unread == 1
    with pytest.raises(ValueError):
        mb.set_flags("INBOX", [1], ["\\Seen"], "toggle")


def test_copy_shares_content(store: Store, mb: Mailbox) -> None:
    mb.create_folder("Keep")
    u1 = put(mb, "INBOX", "<c1@x>", flags=["\\Seen"])
    u2 = put(mb, "INBOX", "<c2@x>")
    put(mb, "Keep", "<k0@x>")
    c1 = content_of(store, mb, "INBOX", u1)
    c2 = content_of(store, mb, "INBOX", u2)
    before = contents(store, mb)
    assert before[c1] == 1 and before[c2] == 1
    m = mb.copy("INBOX", [u1, u2, 999], "Keep")
    assert m == {u1: 2, u2: 3}  # COPYUID: old UID -> new UID
    after = contents(store, mb)
    assert after[c1] == 2 and after[c2] == 2
    assert len(after) == len(before)
    assert [x.message_id for x in mb.messages("INBOX")] == ["<c1@x>", "<c2@x>"]
    keep = mb.messages("Keep")
    assert [(x.uid, x.message_id, x.flags) for x in keep] == [
        (1, "<k0@x>", frozenset()), (2, "<c1@x>", frozenset({"\\Seen"})), (3, "<c2@x>", frozenset())]
    f = mb.folder("Keep")
    assert (f.messages, f.unread, f.uidnext) == (3, 2, 4)
    assert mb.read_message("Keep", 2) == mb.read_message("INBOX", u1)
    assert content_of(store, mb, "Keep", 2) == c1


def test_move(store: Store, mb: Mailbox) -> None:
    mb.create_folder("Dest")
    u1 = put(mb, "INBOX", "<mv1@x>", flags=["\\Flagged"])
    u2 = put(mb, "INBOX", "<mv2@x>")
    c1 = content_of(store, mb, "INBOX", u1)
    before = contents(store, mb)
    assert mb.move("INBOX", [u1], "Dest") == {u1: 1}
    assert [x.message_id for x in mb.messages("INBOX")] == ["<mv2@x>"]
    assert [(x.uid, x.message_id, x.flags) for x in mb.messages("Dest")] == [
        (1, "<mv1@x>", frozenset({"\\Flagged"}))]
    assert contents(store, mb) == before
    assert content_of(store, mb, "Dest", 1) == c1
    assert mb.deleted_items() == []  # a move is not a deletion
    inbox, dest = mb.folder("INBOX"), mb.folder("Dest")
    assert (inbox.messages, inbox.unread, inbox.uidnext) == (1, 1, 3)
    assert (dest.messages, dest.unread, dest.uidnext) == (1, 1, 2)
    assert mb.move("INBOX", [u2], "Dest") == {u2: 2}
    assert mb.messages("INBOX") == []


def test_delete_expunge_and_recover(store: Store, mb: Mailbox) -> None:
    uids = [put(mb, "INBOX", f"<d{i}@x>") for i in range(5)]
    refs = contents(store, mb)
    assert mb.delete("INBOX", [uids[0], 42]) == [uids[0]]
    assert [d.message_id for d in mb.deleted_items()] == ["<d0@x>"]
    assert contents(store, mb) == refs

    mb.set_flags("INBOX", [uids[1], uids[2], uids[3]], ["\\Deleted"], "add")
    assert mb.expunge("INBOX", [uids[1], uids[4]]) == [uids[1]]  # only flagged ones among those given
    assert mb.expunge("INBOX") == [uids[2], uids[3]]
    assert [m.uid for m in mb.messages()] == [uids[4]]
    assert mb.expunge("INBOX") == []
    assert sorted(d.message_id for d in mb.deleted_items()) == ["<d0@x>", "<d1@x>", "<d2@x>", "<d3@x>"]
    f = mb.folder("INBOX")
    assert (f.messages, f.unread, f.uidnext) == (1, 1, 6)
    assert contents(store, mb) == refs

    first = next(d for d in mb.deleted_items() if d.message_id == "<d0@x>")
    assert first.deleted_at == pytest.approx(store.clock(), abs=60)
    assert mb.recover_deleted([first.did]) == 1
    back = mb.messages()
    assert [(m.uid, m.message_id) for m in back] == [(uids[4], "<d4@x>"), (6, "<d0@x>")]
    assert mb.recover_deleted() == 3
    assert mb.deleted_items() == []
    assert [m.uid for m in mb.messages()] == [5, 6, 7, 8, 9]
    assert sorted(m.message_id for m in mb.messages()) == [f"<d{i}@x>" for i in range(5)]
    f = mb.folder("INBOX")
    assert (f.messages, f.uidnext) == (5, 10)
    assert contents(store, mb) == refs


def test_uids_never_reused(mb: Mailbox) -> None:
    validity = mb.folder("INBOX").uidvalidity
    for _ in range(3):
        put(mb, "INBOX", "<u@x>")
    mb.set_flags("INBOX", [1, 2, 3], ["\\Deleted"], "add")
    assert mb.expunge("INBOX") == [1, 2, 3]
    assert put(mb, "INBOX", "<u4@x>") == 4
    mb.delete("INBOX", [4])
    assert put(mb, "INBOX", "<u5@x>") == 5
    assert mb.folder("INBOX").uidnext == 6
    assert mb.folder("INBOX").uidvalidity == validity


def test_append_flags_and_internal_date(mb: Mailbox) -> None:
    when = 1_700_000_000.5
    data = message("<ap@x>", subject="draft")
    uid = mb.append("Drafts", source(data), flags=["\\draft", "\\SEEN", "custom"], internal_date=when)
    assert uid == 1
    (m,) = mb.messages("Drafts")
    assert (m.uid, m.flags, m.internal_date, m.subject, m.size) == (
        1, frozenset({"\\Draft", "\\Seen", "custom"}), when, "draft", len(data))
    assert mb.read_message("Drafts", 1) == data
    f = mb.folder("Drafts")
    assert (f.messages, f.unread) == (1, 0)
    u2 = mb.append("Drafts", source(b"Subject: lf\n\nx\n"))
    assert u2 == 2
    assert mb.read_message("Drafts", 2) == b"Subject: lf\r\n\r\nx\r\n"
    assert mb.folder("Drafts").unread == 1
    with pytest.raises(StoreError) as ei:
        mb.append("Nowhere", source(data))
    assert ei.value.code == NOT_FOUND
    with pytest.raises(StoreError) as ei:
        mb.append("Drafts", source(b""))
    assert ei.value.code == 0x80070057
    assert len(mb.messages("Drafts")) == 2


def test_open_mailbox_unknown_and_not_enabled(store: Store, server: SetupResult) -> None:
    with pytest.raises(StoreError) as ei:
        open_mailbox(store, "nobody")
    assert (ei.value.code, ei.value.name) == (0x3EB, "ecUnknownUser")
    store.directory.add_user("plain", password_text="Passw0rd!")
    with pytest.raises(StoreError) as ei:
        open_mailbox(store, "plain")
    assert ei.value.code == 0x3EB


def test_open_mailbox_dismounted(store: Store, server: SetupResult, add_mailbox_user: Callable[..., str]) -> None:
    add_mailbox_user("alice")
    store.dismount(server.mailbox_store)
    with pytest.raises(StoreError) as ei:
        open_mailbox(store, "alice")
    assert (ei.value.code, ei.value.name) == (0x8004011D, "MAPI_E_FAILONEPROVIDER")
    assert ei.value.temporary is True


# -- parallel sessions -------------------------------------------------------------------------------
def test_parallel_sessions(store: Store, mb: Mailbox) -> None:
    threads, per = 4, 25
    errors: list[BaseException] = []
    mine: dict[int, list[int]] = {}

    def session(t: int) -> None:
        try:
            s = open_mailbox(store, "alice")
            got = []
            for i in range(per):
                uid = s.append("INBOX", source(message(f"<t{t}.{i}@x>", subject=f"t{t}")))
                got.append(uid)
                if i % 2 == 0:
                    s.set_flags("INBOX", [uid], ["\\Seen"], "add")
                if i % 5 == 0:
                    s.set_flags("INBOX", [uid], ["\\Flagged"], "add")
                s.messages("INBOX")
            mine[t] = got
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    ts = [threading.Thread(target=session, args=(t,), daemon=True) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts), "a session did not finish"
    assert errors == []
    msgs = mb.messages("INBOX")
    total = threads * per
    assert len(msgs) == total
    assert sorted(m.uid for m in msgs) == list(range(1, total + 1))
    assert sorted(u for got in mine.values() for u in got) == list(range(1, total + 1))
    for t, got in mine.items():
        assert got == sorted(got)
        assert {m.message_id for m in msgs if m.uid in got} == {f"<t{t}.{i}@x>" for i in range(per)}
    seen = sum(1 for m in msgs if "\\Seen" in m.flags)
    flagged = sum(1 for m in msgs if "\\Flagged" in m.flags)
    assert seen == threads * 13
    assert flagged == threads * 5
    f = mb.folder("INBOX")
    assert (f.messages, f.unread, f.uidnext) == (total, total - seen, total + 1)
    with store.read(mb.info) as (r, db):
        assert sorted(int(c["refs"]) for c in r.scan(db, "content")) == [1] * total
