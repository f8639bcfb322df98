"""Mailbox lifecycle: the cleanup agent, purge and retention, reconnect, the Mailbox Recovery
Center, mailbox GUID rules (swap, edit, put back), and Move Mailbox with the tombstone table."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from mailkeep.directory import tasks
from mailkeep.store import agents, attendant, delivery, folders, mailboxes, schema
from mailkeep.store.errors import StoreError
from mailkeep.store.mailbox import Mailbox, open_mailbox
from mailkeep.store.mailboxes import Owner, guid_bytes, guid_text
from mailkeep.store.server import DatabaseInfo
from mailkeep.store.setup import SetupResult
from mailkeep.store.store import Store
from tests.store.conftest import message, source

DAY = 86400.0
T0 = 1_800_000_000.0
FIRST = "First Storage Group/Mailbox Store (Exchange1)"
SECOND = "Second Storage Group/Mailbox Store 2"
COLLISION, NO_SUPPORT, NOT_FOUND, INVALID = 0x80040604, 0x80040102, 0x8004010F, 0x80070057
TOMBSTONED = "tombstoned"  # list_mailboxes' state for a tombstone whose mailbox is gone


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class OnlyRead:
    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, size: int = -1, /) -> bytes:
        return self._buf.read(size)


@pytest.fixture
def clock(store: Store) -> Clock:
    c = Clock()
    store.clock = c
    return c


@pytest.fixture
def second_db(store: Store) -> DatabaseInfo:
    store.server.create_storage_group("Second Storage Group")
    info = store.server.create_database("Second Storage Group", "Mailbox Store 2")
    store.mount(info)
    return info


def guid_of(store: Store, user: str) -> str:
    raw = store.directory.require_user(user).first("msExchMailboxGUID")
    assert isinstance(raw, bytes)
    return guid_text(raw)


def deliver(store: Store, addr: str, mid: str, **kw: Any) -> delivery.Report:
    rep = delivery.deliver(store, source(message(mid, subject=mid, **kw)), [addr])
    return rep


def ids(mb: Mailbox, path: str = "INBOX") -> list[str]:
    return [m.message_id for m in mb.messages(path)]


def entry(store: Store, guid: str) -> agents.MailboxEntry:
    """The mailbox row's entry (not a tombstone entry of the same GUID)."""
    return next(m for m in agents.list_mailboxes(store) if m.guid == guid and m.state != TOMBSTONED)


def table(store: Store, info: DatabaseInfo, name: str) -> list[dict[str, Any]]:
    with store.read(info) as (r, db):
        return [dict(x) for x in r.scan(db, name)]


# -- the cleanup agent -------------------------------------------------------------------------------
def test_cleanup_after_remove_exchange_attributes(
    store: Store, server: SetupResult, clock: Clock, add_mailbox_user: Callable[..., str],
) -> None:
    addr = add_mailbox_user("alice", display_name="Alice Adams")
    deliver(store, addr, "<a1@x>")
    deliver(store, addr, "<a2@x>")
    user = store.directory.require_user("alice")
    guid = guid_of(store, "alice")
    legacy = str(user.text("legacyExchangeDN"))
    assert legacy
    og = user.first("objectGUID")
    assert isinstance(og, bytes)

    tasks.remove_exchange_attributes(store.directory, "alice")
    # the task never contacts the store: still connected until the agent runs
    assert entry(store, guid).state == schema.CONNECTED
    clock.t = T0 + 100
    rep = agents.cleanup(store)
    assert rep.disconnected == [guid]
    assert rep.tombstoned == [] and rep.purged == []
    e = entry(store, guid)
    assert e.state == schema.DISCONNECTED
    assert e.disconnected_at == T0 + 100
    assert (e.display_name, e.owner_dn, e.legacy_dn, e.account) == ("Alice Adams", user.dn, legacy, "alice")
    assert e.owner_guid == str(uuid.UUID(bytes_le=og))
    assert (e.messages, e.database, e.kind, e.tombstoned) == (2, FIRST, schema.USER, False)
    assert [m.guid for m in agents.list_mailboxes(store, disconnected=True)] == [guid]
    # the system attendant mailbox is left alone
    sa = [m for m in agents.list_mailboxes(store) if m.kind == schema.SYSTEM_ATTENDANT]
    assert [m.state for m in sa] == [schema.CONNECTED]
    events = list(store.events.read(source="MSExchangeIS Mailbox Store", event_id=9535))
    assert len(events) == 1 and guid in events[0].message
    # a second run changes nothing
    rep = agents.cleanup(store)
    assert (rep.disconnected, rep.purged) == ([], [])
    # mail to the old address is refused now
    o = deliver(store, addr, "<late@x>").outcomes[0]
    assert (o.status, o.code) == ("unknown", 0x3EB)


def test_cleanup_events_name_each_database(
    store: Store, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
) -> None:
    add_mailbox_user("alice")
    add_mailbox_user("carol", second_db.dn)
    ga = guid_of(store, "alice")
    gc = guid_of(store, "carol")
    open_mailbox(store, "alice")
    open_mailbox(store, "carol")
    tasks.remove_exchange_attributes(store.directory, "alice")
    tasks.remove_exchange_attributes(store.directory, "carol")
    rep = agents.cleanup(store)
    assert sorted(rep.disconnected) == sorted([ga, gc])
    events = list(store.events.read(source="MSExchangeIS Mailbox Store", event_id=9535))
    assert len(events) == 2
    by_guid = {g: [e.message for e in events if g in e.message] for g in (ga, gc)}
    assert len(by_guid[ga]) == 1 and FIRST in by_guid[ga][0]
    assert len(by_guid[gc]) == 1 and SECOND in by_guid[gc][0]


def test_cleanup_after_renaming_mounted_database_and_group(
    store: Store, server: SetupResult, add_mailbox_user: Callable[..., str],
) -> None:
    """Renaming keeps every homeMDB pointing at the database: nobody is disconnected."""
    addr = add_mailbox_user("alice")
    deliver(store, addr, "<kept@x>")
    guid = guid_of(store, "alice")
    sa_guid = attendant.logon(store)
    assert store.is_mounted(server.mailbox_store)
    store.server.rename_database("Mailbox Store (Exchange1)", "Renamed Store")
    rep = agents.cleanup(store)
    assert rep.disconnected == []
    store.server.rename_storage_group("First Storage Group", "Main Group")
    rep = agents.cleanup(store)
    assert rep.disconnected == []
    listed = {m.guid: (m.database, m.state) for m in agents.list_mailboxes(store)}
    assert listed == {guid: ("Main Group/Renamed Store", schema.CONNECTED),
                      sa_guid: ("Main Group/Renamed Store", schema.CONNECTED)}


# -- purge and retention -----------------------------------------------------------------------------
def test_purge_after_retention(
    store: Store, server: SetupResult, clock: Clock, add_mailbox_user: Callable[..., str],
) -> None:
    addr = add_mailbox_user("alice")
    keep = add_mailbox_user("bob")
    rep = delivery.deliver(store, source(message("<shared@x>")), [addr, keep])
    assert len(rep.delivered) == 2
    guid = guid_of(store, "alice")
    tasks.remove_exchange_attributes(store.directory, "alice")
    assert agents.cleanup(store).disconnected == [guid]

    clock.t = T0 + 30 * DAY - 1
    rep = agents.cleanup(store)
    assert rep.purged == []
    assert entry(store, guid).state == schema.DISCONNECTED
    assert [c["refs"] for c in table(store, server.mailbox_store, "content")] == [2]

    clock.t = T0 + 30 * DAY
    rep = agents.cleanup(store)
    assert rep.purged == [guid]
    assert guid not in {m.guid for m in agents.list_mailboxes(store)}
    assert [r for r in table(store, server.mailbox_store, "folder") if r["mailbox"] == guid] == []
    assert [r for r in table(store, server.mailbox_store, "message") if r["mailbox"] == guid] == []
    assert [c["refs"] for c in table(store, server.mailbox_store, "content")] == [1]
    assert ids(open_mailbox(store, "bob")) == ["<shared@x>"]


def test_retention_period_from_database(
    store: Store, server: SetupResult, clock: Clock, add_mailbox_user: Callable[..., str],
) -> None:
    store.directory.replace(server.mailbox_store.dn, msExchMailboxRetentionPeriod=int(2 * DAY))
    addr = add_mailbox_user("alice")
    deliver(store, addr, "<r@x>")
    guid = guid_of(store, "alice")
    tasks.remove_exchange_attributes(store.directory, "alice")
    agents.cleanup(store)
    clock.t = T0 + 2 * DAY - 1
    assert agents.cleanup(store).purged == []
    clock.t = T0 + 2 * DAY
    assert agents.cleanup(store).purged == [guid]
    assert table(store, server.mailbox_store, "content") == []


def test_purge_on_demand_only_disconnected(
    store: Store, server: SetupResult, clock: Clock, add_mailbox_user: Callable[..., str],
) -> None:
    addr = add_mailbox_user("alice")
    deliver(store, addr, "<p@x>")
    guid = guid_of(store, "alice")
    with pytest.raises(StoreError) as ei:
        agents.purge(store, guid)
    assert ei.value.code == NO_SUPPORT
    assert entry(store, guid).messages == 1
    sa_guid = attendant.logon(store)
    with pytest.raises(StoreError) as ei:
        agents.purge(store, sa_guid)
    assert ei.value.code == NO_SUPPORT
    with pytest.raises(StoreError) as ei:
        agents.purge(store, str(uuid.uuid4()))
    assert ei.value.code == NOT_FOUND
    with pytest.raises(StoreError) as ei:
        agents.purge(store, "not-a-guid")
    assert ei.value.code == INVALID

    tasks.remove_exchange_attributes(store.directory, "alice")
    agents.cleanup(store, purge_expired=False)
    gone = agents.purge(store, guid.upper())
    assert (gone.guid, gone.messages, gone.state) == (guid, 1, schema.DISCONNECTED)
    assert guid not in {m.guid for m in agents.list_mailboxes(store)}
    assert table(store, server.mailbox_store, "content") == []
    assert [e.id for e in store.events.read(event_id=9537)] == [9537]


def test_deleted_items_purged_after_seven_days(
    store: Store, server: SetupResult, clock: Clock, add_mailbox_user: Callable[..., str],
) -> None:
    add_mailbox_user("alice")
    mb = open_mailbox(store, "alice")
    u1 = mb.append("INBOX", source(message("<gone@x>")))
    u2 = mb.append("INBOX", source(message("<copied@x>")))
    mb.copy("INBOX", [u2], "Drafts")
    mb.delete("INBOX", [u1, u2])
    assert sorted(d.message_id for d in mb.deleted_items()) == ["<copied@x>", "<gone@x>"]
    assert sorted(c["refs"] for c in table(store, server.mailbox_store, "content")) == [1, 2]

    clock.t = T0 + 7 * DAY - 1
    rep = agents.cleanup(store)
    assert rep.deleted_items_purged == 0
    assert len(mb.deleted_items()) == 2

    clock.t = T0 + 7 * DAY
    rep = agents.cleanup(store)
    assert rep.deleted_items_purged == 2
    assert rep.disconnected == []
    assert mb.deleted_items() == []
    assert [c["refs"] for c in table(store, server.mailbox_store, "content")] == [1]
    assert ids(mb, "Drafts") == ["<copied@x>"]
    assert mb.read_message("Drafts", 1) == message("<copied@x>")
    assert entry(store, mb.guid).state == schema.CONNECTED


# -- reconnect ---------------------------------------------------------------------------------------
def test_reconnect_to_another_account(
    store: Store, server: SetupResult, add_mailbox_user: Callable[..., str],
) -> None:
    addr = add_mailbox_user("alice")
    add_mailbox_user("bob")
    deliver(store, addr, "<keep1@x>")
    deliver(store, addr, "<keep2@x>")
    before = open_mailbox(store, "alice")
    data = before.read_message("INBOX", 2)
    guid = before.guid
    with pytest.raises(StoreError) as ei:
        agents.reconnect(store, guid, "bob")
    assert ei.value.code == NO_SUPPORT  # still connected
    tasks.remove_exchange_attributes(store.directory, "alice")
    agents.cleanup(store)
    store.directory.add_user("newbie", password_text="Passw0rd!", display_name="New Owner")

    with pytest.raises(StoreError) as ei:
        agents.reconnect(store, guid, "bob")
    assert (ei.value.code, ei.value.name) == (COLLISION, "MAPI_E_COLLISION")
    assert entry(store, guid).state == schema.DISCONNECTED
    assert guid_of(store, "bob") != guid

    e = agents.reconnect(store, guid, "newbie")
    assert e.text("homeMDB") == server.mailbox_store.dn
    assert guid_of(store, "newbie") == guid
    got = entry(store, guid)
    assert (got.state, got.owner_dn, got.display_name, got.messages) == (schema.CONNECTED, e.dn, "New Owner", 2)
    mb = open_mailbox(store, "newbie")
    assert mb.guid == guid
    assert [(m.uid, m.message_id) for m in mb.messages()] == [(1, "<keep1@x>"), (2, "<keep2@x>")]
    assert mb.read_message("INBOX", 2) == data
    new_addr = str(e.text("mail"))
    rep = deliver(store, new_addr, "<keep3@x>")
    assert (rep.outcomes[0].status, rep.outcomes[0].mailbox, rep.outcomes[0].uid) == ("delivered", guid, 3)
    # a connected mailbox cannot be reconnected again
    store.directory.add_user("other", password_text="Passw0rd!")
    with pytest.raises(StoreError) as ei:
        agents.reconnect(store, guid, "other")
    assert ei.value.code == NO_SUPPORT


# -- the Mailbox Recovery Center ---------------------------------------------------------------------
def test_recovery_center(store: Store, server: SetupResult, add_mailbox_user: Callable[..., str]) -> None:
    for n in ("alice", "bob", "carol", "dave"):
        deliver(store, add_mailbox_user(n), f"<{n}@x>")
    g = {n: guid_of(store, n) for n in ("alice", "bob", "carol", "dave")}
    dns = {n: store.directory.require_user(n).dn for n in ("alice", "bob", "carol", "dave")}
    for n in ("alice", "bob", "carol", "dave"):
        tasks.remove_exchange_attributes(store.directory, n)
    store.directory.delete(dns["carol"])  # the account is gone
    tasks.mailbox_enable(store.directory, "dave", server.mailbox_store.dn)  # Create Mailbox: a new GUID
    assert guid_of(store, "dave") != g["dave"]
    agents.cleanup(store)

    suggestions, problems = agents.recover(store)
    assert problems == []
    by = {s.guid: s for s in suggestions}
    assert set(by) == set(g.values())
    assert (by[g["alice"]].match, by[g["alice"]].reason) == (dns["alice"], "same account (objectGUID)")
    assert (by[g["bob"]].match, by[g["bob"]].reason) == (dns["bob"], "same account (objectGUID)")
    assert by[g["carol"]].match is None
    assert by[g["carol"]].previous_owner == dns["carol"]
    assert by[g["dave"]].match is None
    assert "already has a mailbox" in by[g["dave"]].reason
    assert {s.database for s in suggestions} == {FIRST}
    # suggestions alone change nothing
    assert all(entry(store, x).state == schema.DISCONNECTED for x in g.values())

    suggestions, problems = agents.recover(store, apply=True)
    assert problems == []
    assert guid_of(store, "alice") == g["alice"]
    assert guid_of(store, "bob") == g["bob"]
    assert ids(open_mailbox(store, "alice")) == ["<alice@x>"]
    assert ids(open_mailbox(store, "bob")) == ["<bob@x>"]
    assert entry(store, g["alice"]).state == schema.CONNECTED
    assert entry(store, g["carol"]).state == schema.DISCONNECTED
    assert entry(store, g["dave"]).state == schema.DISCONNECTED
    left, _ = agents.recover(store)
    assert {s.guid for s in left} == {g["carol"], g["dave"]}


def test_recovery_center_one_account_two_mailboxes(
    store: Store, server: SetupResult, add_mailbox_user: Callable[..., str],
) -> None:
    """Two disconnected mailboxes point at one account: only one is reconnected to it."""
    addr = add_mailbox_user("alice")
    deliver(store, addr, "<first-life@x>")
    first = guid_of(store, "alice")
    tasks.remove_exchange_attributes(store.directory, "alice")
    tasks.mailbox_enable(store.directory, "alice", server.mailbox_store.dn)
    second = guid_of(store, "alice")
    assert second != first
    open_mailbox(store, "alice")
    tasks.remove_exchange_attributes(store.directory, "alice")
    assert sorted(agents.cleanup(store).disconnected) == sorted([first, second])

    suggestions, problems = agents.recover(store, apply=True)
    dn = store.directory.require_user("alice").dn
    assert sorted(s.guid for s in suggestions) == sorted([first, second])
    assert all(s.match == dn for s in suggestions)
    # the mailbox used last (the second: logged on) is reconnected; the other is reported
    assert {g: entry(store, g).state for g in (first, second)} == {
        first: schema.DISCONNECTED, second: schema.CONNECTED}
    assert guid_of(store, "alice") == second
    assert problems == [f"{first}: not reconnected: {dn} was given mailbox {second}, used more recently "
                        "(reconnect this one to another account with 'mailkeep mailbox reconnect')"]


# -- mailbox GUID rules --------------------------------------------------------------------------------
def test_guid_swap_swaps_mailboxes(store: Store, add_mailbox_user: Callable[..., str]) -> None:
    a = add_mailbox_user("alice")
    b = add_mailbox_user("bob")
    deliver(store, a, "<for-alice@x>")
    deliver(store, b, "<for-bob@x>")
    ga, gb = guid_of(store, "alice"), guid_of(store, "bob")
    d = store.directory
    alice, bob = d.require_user("alice"), d.require_user("bob")
    d.replace(alice.dn, msExchMailboxGUID=uuid.uuid4().bytes_le)
    d.replace(bob.dn, msExchMailboxGUID=guid_bytes(ga))
    d.replace(alice.dn, msExchMailboxGUID=guid_bytes(gb))

    ma, mbx = open_mailbox(store, "alice"), open_mailbox(store, "bob")
    assert (ma.guid, mbx.guid) == (gb, ga)
    assert ids(ma) == ["<for-bob@x>"]
    assert ids(mbx) == ["<for-alice@x>"]
    assert entry(store, gb).owner_dn == alice.dn
    assert entry(store, ga).owner_dn == bob.dn
    deliver(store, a, "<after-swap@x>")
    assert ids(open_mailbox(store, "alice")) == ["<for-bob@x>", "<after-swap@x>"]
    assert agents.cleanup(store).disconnected == []


def test_guid_edited_by_one_character(
    store: Store, clock: Clock, add_mailbox_user: Callable[..., str],
) -> None:
    a = add_mailbox_user("alice")
    deliver(store, a, "<original@x>")
    old = guid_of(store, "alice")
    edited = old[:-1] + ("0" if old[-1] != "0" else "1")
    assert edited != old and len(edited) == len(old)
    dn = store.directory.require_user("alice").dn
    store.directory.replace(dn, msExchMailboxGUID=guid_bytes(edited))

    fresh = open_mailbox(store, "alice")
    assert fresh.guid == edited
    assert fresh.messages() == []
    assert sorted(f.name for f in fresh.folders()) == sorted(
        ["Inbox", "Outbox", "Sent Items", "Deleted Items", "Drafts", "Junk E-mail", "Calendar", "Contacts",
         "Journal", "Notes", "Tasks"])
    mine = [m for m in agents.list_mailboxes(store) if m.owner_dn == dn]
    assert sorted((m.guid, m.state) for m in mine) == sorted(
        [(old, schema.CONNECTED), (edited, schema.CONNECTED)])
    deliver(store, a, "<to-new@x>")
    assert ids(open_mailbox(store, "alice")) == ["<to-new@x>"]

    assert agents.cleanup(store).disconnected == [old]
    assert entry(store, old).state == schema.DISCONNECTED
    assert entry(store, edited).state == schema.CONNECTED

    store.directory.replace(dn, msExchMailboxGUID=guid_bytes(old))
    back = open_mailbox(store, "alice")
    assert back.guid == old
    assert ids(back) == ["<original@x>"]
    assert entry(store, old).state == schema.CONNECTED
    assert agents.cleanup(store).disconnected == [edited]
    assert entry(store, edited).state == schema.DISCONNECTED
    assert entry(store, edited).messages == 1


def test_two_accounts_one_guid_refused(store: Store, add_mailbox_user: Callable[..., str]) -> None:
    a = add_mailbox_user("alice")
    add_mailbox_user("bob")
    deliver(store, a, "<x@x>")
    ga = guid_of(store, "alice")
    store.directory.replace(store.directory.require_user("bob").dn, msExchMailboxGUID=guid_bytes(ga))
    with pytest.raises(StoreError) as ei:
        open_mailbox(store, "bob")
    assert (ei.value.code, ei.value.name) == (0x3F2, "ecLoginFailure")
    o = deliver(store, a, "<y@x>").outcomes[0]
    assert (o.status, o.code) == ("temporary", 0x3F2)


def test_other_servers_system_attendant_tombstoned(store: Store, server: SetupResult) -> None:
    """The cleanup agent tombstones a system attendant mailbox of another server, for good."""
    foreign = str(uuid.uuid4())
    other = "/o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=OLDSERVER"
    with store.write(server.mailbox_store) as (txn, db):
        folders.create_mailbox_rows(txn, db, foreign, kind=schema.SYSTEM_ATTENDANT, owner_dn="", legacy_dn="",
                                    display_name="System Attendant", now=store.clock(), server_legacy=other)
    rep = agents.cleanup(store)
    assert rep.disconnected == [foreign]
    assert rep.tombstoned == [foreign]
    assert entry(store, foreign).tombstoned is True
    agents.purge(store, foreign)
    tombs = table(store, server.mailbox_store, "tombstone")
    assert [(t["guid"], t["reason"]) for t in tombs] == [(foreign, "system-attendant")]
    # the purged mailbox is listed by its tombstone only; this server's own system attendant
    # mailbox is untouched
    own = guid_text(store.directory.require(store.server.system_attendant_dn).first("msExchMailboxGUID"))
    listed = {(m.guid, m.state, m.tombstoned) for m in agents.list_mailboxes(store)}
    assert listed == {(foreign, TOMBSTONED, True), (own, schema.CONNECTED, False)}
    with pytest.raises(StoreError) as ei:
        agents.purge(store, foreign)
    assert ei.value.code == NOT_FOUND


# -- Move Mailbox ------------------------------------------------------------------------------------
def _snapshot(mb: Mailbox) -> dict[str, Any]:
    fl = {f.path: (f.fid, f.uidvalidity, f.uidnext, f.messages, f.unread, f.special) for f in mb.folders()}
    msgs = {p: [(m.uid, m.flags, m.message_id, m.size, m.internal_date) for m in mb.messages(p)] for p in fl}
    body = {(p, m.uid): mb.read_message(p, m.uid) for p in fl for m in mb.messages(p)}
    dumpster = [(d.did, d.fid, d.message_id, d.deleted_at) for d in mb.deleted_items()]
    return {"folders": fl, "messages": msgs, "bodies": body, "deleted": dumpster}


def test_move_mailbox(
    store: Store, server: SetupResult, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
) -> None:
    addr = add_mailbox_user("alice")
    bob = add_mailbox_user("bob")
    for i in range(3):
        delivery.deliver(store, source(message(f"<in{i}@x>", body="q" * (i * 700))), [addr, bob])
    mb = open_mailbox(store, "alice")
    mb.set_flags("INBOX", [1], ["\\Seen", "\\Flagged"], "add")
    mb.create_folder("Projects/Alpha")
    mb.copy("INBOX", [2], "Projects/Alpha")
    mb.append("Projects", source(message("<proj@x>")), flags=["\\Seen"], internal_date=1234.5)
    mb.delete("INBOX", [3])
    guid = mb.guid
    before = _snapshot(mb)
    assert len(before["deleted"]) == 1

    dst = agents.move(store, "alice", "Mailbox Store 2")
    assert dst.guid == second_db.guid
    user = store.directory.require_user("alice")
    assert user.text("homeMDB") == second_db.dn
    assert user.text("homeMTA") == f"CN=Microsoft MTA,{store.server.dn}"
    assert user.text("msExchHomeServerName") == store.server.legacy_dn
    assert guid_of(store, "alice") == guid

    moved = open_mailbox(store, "alice")
    assert (moved.guid, moved.info.guid) == (guid, second_db.guid)
    assert _snapshot(moved) == before
    # content is single-instance in the target too: the copied message shares its content
    refs = sorted(c["refs"] for c in table(store, second_db, "content"))
    assert refs == [1, 1, 1, 2]

    # the source: rows gone, content of alice's messages released, tombstone written
    src = server.mailbox_store
    assert [r for r in table(store, src, "mailbox") if r["guid"] == guid] == []
    assert [r for r in table(store, src, "message") if r["mailbox"] == guid] == []
    assert [r for r in table(store, src, "dumpster") if r["mailbox"] == guid] == []
    assert sorted(c["refs"] for c in table(store, src, "content")) == [1, 1, 1]  # bob's only
    tombs = table(store, src, "tombstone")
    assert [(t["guid"], t["reason"], t["new_home"]) for t in tombs] == [(guid, "moved", second_db.dn)]
    listed = [(m.database, m.state, m.kind, m.tombstoned) for m in agents.list_mailboxes(store) if m.guid == guid]
    assert listed == [(FIRST, TOMBSTONED, "moved", True), (SECOND, schema.CONNECTED, schema.USER, False)]
    assert ids(open_mailbox(store, "bob")) == ["<in0@x>", "<in1@x>", "<in2@x>"]

    # a delivery attempt with stale directory data at the source: ecMailboxInTransit, new home named
    stale = delivery.Target(addr, src, guid, Owner.of(user))
    out = delivery.deliver_to_database(store, src, source(message("<stale@x>")), [stale])
    assert len(out) == 1
    assert (out[0].status, out[0].code, out[0].code_name) == ("temporary", 0x50C, "ecMailboxInTransit")
    assert out[0].new_home == second_db.dn
    assert [r for r in table(store, src, "mailbox") if r["guid"] == guid] == []
    with pytest.raises(StoreError) as ei, store.write(src) as (txn, db):
        mailboxes.ensure_mailbox(txn, db, guid, Owner.of(user), store.clock(), info=src)
    assert (ei.value.code, ei.value.name, ei.value.new_home) == (0x50C, "ecMailboxInTransit", second_db.dn)

    # the top-level deliver follows the directory to the new home
    rep = delivery.deliver(store, source(message("<after-move@x>")), [addr])
    o = rep.outcomes[0]
    assert (o.status, o.database, o.mailbox) == ("delivered", SECOND, guid)
    assert o.uid == before["folders"]["INBOX"][2]  # the next UID of the moved Inbox
    assert ids(open_mailbox(store, "alice"))[-1] == "<after-move@x>"


def _stale_resolve(monkeypatch: pytest.MonkeyPatch, stale: delivery.Target) -> list[str]:
    """The first lookup returns the pre-move home (a directory server not yet replicated)."""
    real = delivery.resolve
    calls: list[str] = []

    def fake(store: Store, rcpt: str) -> delivery.Target:
        calls.append(rcpt)
        return stale if len(calls) == 1 else real(store, rcpt)

    monkeypatch.setattr(delivery, "resolve", fake)
    return calls


def test_deliver_reroutes_from_tombstone(
    store: Store, server: SetupResult, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    addr = add_mailbox_user("alice")
    deliver(store, addr, "<pre@x>")
    stale = delivery.resolve(store, addr)
    assert stale.info.guid == server.mailbox_store.guid
    agents.move(store, "alice", "Mailbox Store 2")
    calls = _stale_resolve(monkeypatch, stale)
    data = message("<rerouted@x>")
    rep = delivery.deliver(store, source(data), [addr])
    assert len(calls) == 2
    assert [(o.status, o.code, o.database) for o in rep.outcomes] == [("delivered", 0, SECOND)]
    mb = open_mailbox(store, "alice")
    assert ids(mb) == ["<pre@x>", "<rerouted@x>"]
    assert mb.read_message("INBOX", 2) == data
    assert [r for r in table(store, server.mailbox_store, "mailbox") if r["guid"] == stale.guid] == []


def test_deliver_reroutes_non_seekable_source(
    store: Store, server: SetupResult, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A piped message (no seek) to a moved mailbox is still rerouted, not an exception."""
    addr = add_mailbox_user("alice")
    open_mailbox(store, "alice")
    stale = delivery.resolve(store, addr)
    agents.move(store, "alice", "Mailbox Store 2")
    _stale_resolve(monkeypatch, stale)
    data = message("<piped@x>")
    rep = delivery.deliver(store, OnlyRead(data), [addr])
    assert [(o.status, o.database) for o in rep.outcomes] == [("delivered", SECOND)]
    assert open_mailbox(store, "alice").read_message("INBOX", 1) == data


def test_move_back_clears_tombstone(
    store: Store, server: SetupResult, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
) -> None:
    addr = add_mailbox_user("alice")
    deliver(store, addr, "<one@x>")
    guid = guid_of(store, "alice")
    validity = open_mailbox(store, "alice").uidvalidity("INBOX")
    agents.move(store, "alice", "Mailbox Store 2")
    deliver(store, addr, "<two@x>")
    assert [t["guid"] for t in table(store, server.mailbox_store, "tombstone")] == [guid]

    dst = agents.move(store, "alice", "Mailbox Store (Exchange1)")
    assert dst.guid == server.mailbox_store.guid
    assert table(store, server.mailbox_store, "tombstone") == []
    assert [(t["guid"], t["new_home"]) for t in table(store, second_db, "tombstone")] == [
        (guid, server.mailbox_store.dn)]
    assert store.directory.require_user("alice").text("homeMDB") == server.mailbox_store.dn
    mb = open_mailbox(store, "alice")
    assert (mb.guid, mb.info.guid) == (guid, server.mailbox_store.guid)
    assert [(m.uid, m.message_id) for m in mb.messages()] == [(1, "<one@x>"), (2, "<two@x>")]
    assert mb.uidvalidity("INBOX") == validity
    rep = deliver(store, addr, "<three@x>")
    assert (rep.outcomes[0].status, rep.outcomes[0].database, rep.outcomes[0].uid) == ("delivered", FIRST, 3)
    assert table(store, second_db, "content") == []


def test_move_refusals(
    store: Store, server: SetupResult, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
) -> None:
    add_mailbox_user("alice")
    open_mailbox(store, "alice")
    with pytest.raises(StoreError) as ei:
        agents.move(store, "alice", "Mailbox Store (Exchange1)")
    assert ei.value.code == NO_SUPPORT
    with pytest.raises(StoreError) as ei:
        agents.move(store, "alice", "Public Folder Store (Exchange1)")
    assert ei.value.code == NO_SUPPORT
    store.dismount(second_db)
    with pytest.raises(StoreError) as ei:
        agents.move(store, "alice", "Mailbox Store 2")
    assert ei.value.code == 0x8004011D
    assert store.directory.require_user("alice").text("homeMDB") == server.mailbox_store.dn
    assert table(store, server.mailbox_store, "tombstone") == []


def test_move_system_attendant_refused(
    store: Store, server: SetupResult, second_db: DatabaseInfo,
) -> None:
    sa_guid = attendant.logon(store)
    sa_dn = store.server.system_attendant_dn
    # refused for the guide's reason ("Move Mailbox does not apply to system attendant
    # mailboxes"), not as an unknown user
    with pytest.raises(StoreError) as ei:
        agents.move(store, sa_dn, "Mailbox Store 2")
    assert (ei.value.code, ei.value.name) == (NO_SUPPORT, "MAPI_E_NO_SUPPORT")
    assert "system attendant" in ei.value.message
    assert store.directory.require(sa_dn).text("homeMDB") == server.mailbox_store.dn
    assert table(store, server.mailbox_store, "tombstone") == []
    assert table(store, second_db, "mailbox") == []
    assert entry(store, sa_guid).database == FIRST
    assert attendant.logon(store) == sa_guid
    assert attendant.run_task(store) == 1
