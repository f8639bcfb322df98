"""D12 (DRILLS.md): Remove Exchange Attributes from users; the Mailbox Cleanup Agent
disconnects their mailboxes; the Mailbox Recovery Center reconnects them to their previous
owners with their contents intact.

The guide, "Using the Exchange Mailbox Recovery Center": "For each disconnected mailbox ...
the Mailbox Recovery Wizard suggests a matching Active Directory user account that is the
most likely previous owner of the mailbox"; and its Important note: "Using the Create Mailbox
task does not re-link an existing mailbox ... a new mailbox will be generated and the
previous mailbox will remain in a disconnected state."
"""

from __future__ import annotations

import io

from mailkeep.directory import tasks
from mailkeep.store import agents, attendant, delivery, schema
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.setup import SetupResult
from mailkeep.store.store import Store
from tests.e2e.conftest import DOMAIN, deliver_one, enable, inbox, mailbox_guid, message, snapshot

STRIPPED = ("alice", "bob", "carol")
CONTROL = "dave"  # keeps its mailbox throughout


def _populate(store: Store, server: SetupResult) -> dict[str, str]:
    """Four users with mail (three messages each, one message to three of them);
    returns user -> address."""
    addr = {u: enable(store, u, server.mailbox_store.dn) for u in (*STRIPPED, CONTROL)}
    for u in addr:
        for i in range(3):
            deliver_one(store, f"<d12.{u}.{i}@example.org>", addr[u])
    rep = delivery.deliver(store, io.BytesIO(message("<d12.shared@example.org>", body="to three")),
                           [addr["alice"], addr["bob"], addr[CONTROL]])
    assert [o.status for o in rep.outcomes] == [delivery.DELIVERED] * 3, rep.outcomes
    # more than an Inbox: a folder of alice's own, a message moved there, flags
    mb = open_mailbox(store, "alice")
    mb.create_folder("Projects/2026")
    uids = {m.message_id: m.uid for m in mb.messages("INBOX")}
    mb.move("INBOX", [uids["<d12.alice.0@example.org>"]], "Projects/2026")
    mb.set_flags("INBOX", [uids["<d12.alice.1@example.org>"]], ["\\Seen", "\\Flagged"])
    return addr


def _expected_ids(user: str) -> set[str]:
    """The Message-IDs in ``user``'s Inbox."""
    ids = {f"<d12.{user}.{i}@example.org>" for i in range(1 if user == "alice" else 0, 3)}
    if user in ("alice", "bob", CONTROL):
        ids.add("<d12.shared@example.org>")
    return ids


def test_d12_cleanup_disconnects_and_recovery_center_reconnects(store: Store, server: SetupResult) -> None:
    addr = _populate(store, server)
    sa_guid = attendant.home(store)[1]
    before: dict[str, tuple[str, dict[str, bytes]]] = {u: inbox(store, u) for u in addr}
    for u, (guid, msgs) in before.items():
        assert guid == mailbox_guid(store, u)
        assert set(msgs) == _expected_ids(u)
    guids = {u: before[u][0] for u in addr}
    trees = {u: snapshot(store, u) for u in addr}
    assert [m.message_id for m in open_mailbox(store, "alice").messages("Projects/2026")] == [
        "<d12.alice.0@example.org>"]
    dns = {u: store.directory.require_user(u).dn for u in addr}
    sizes = {m.guid: (m.messages, m.size) for m in agents.list_mailboxes(store)}
    assert set(sizes) == {*guids.values(), sa_guid}

    # Remove Exchange Attributes never contacts the store: nothing is disconnected yet
    for u in STRIPPED:
        tasks.remove_exchange_attributes(store.directory, u)
        e = store.directory.require_user(u)
        for a in ("homeMDB", "msExchMailboxGUID", "mail", "legacyExchangeDN", "proxyAddresses"):
            assert not e.has(a), f"{u} still has {a}"
    assert agents.list_mailboxes(store, disconnected=True) == []
    # the addresses are gone with the attributes: mail to them is refused, permanently
    rep = delivery.deliver(store, io.BytesIO(message("<d12.late@example.org>")), [addr["alice"]])
    assert [o.status for o in rep.outcomes] == [delivery.UNKNOWN], rep.outcomes

    # the Mailbox Cleanup Agent marks exactly the stripped users' mailboxes Disconnected
    rep_c = agents.cleanup(store)
    assert sorted(rep_c.disconnected) == sorted(guids[u] for u in STRIPPED)
    assert rep_c.tombstoned == [] and rep_c.purged == []
    disc = {m.guid: m for m in agents.list_mailboxes(store, disconnected=True)}
    assert set(disc) == {guids[u] for u in STRIPPED}
    for u in STRIPPED:
        m = disc[guids[u]]
        assert m.state == schema.DISCONNECTED and m.kind == schema.USER and not m.tombstoned
        assert m.owner_dn == dns[u] and m.account == u  # the last owner's identity is kept
        assert (m.messages, m.size) == sizes[guids[u]]  # contents untouched
    connected = {m.guid for m in agents.list_mailboxes(store) if m.state == schema.CONNECTED}
    assert connected == {guids[CONTROL], sa_guid}
    assert agents.cleanup(store).disconnected == []  # a second run finds nothing new

    # the Mailbox Recovery Center suggests exactly each previous owner (and changes nothing)
    suggestions, problems = agents.recover(store)
    assert problems == []
    assert {s.guid: s.match for s in suggestions} == {guids[u]: dns[u] for u in STRIPPED}
    assert {s.guid: s.previous_owner for s in suggestions} == {guids[u]: dns[u] for u in STRIPPED}
    assert {m.guid for m in agents.list_mailboxes(store, disconnected=True)} == {guids[u] for u in STRIPPED}
    for u in STRIPPED:
        assert not store.directory.require_user(u).has("homeMDB")

    # applied: each mailbox is reconnected to its previous owner
    suggestions, problems = agents.recover(store, apply=True)
    assert problems == []
    assert len(suggestions) == len(STRIPPED)
    assert agents.list_mailboxes(store, disconnected=True) == []
    for u in STRIPPED:
        e = store.directory.require_user(u)
        assert str(e.text("homeMDB")) == server.mailbox_store.dn
        assert mailbox_guid(store, u) == guids[u]  # the original mailbox GUID, not a new one
        assert str(e.text("mail")) == addr[u]  # reconnecting mailbox-enables the account again
    for u in addr:
        guid, msgs = inbox(store, u)
        assert guid == guids[u]
        assert msgs == before[u][1], f"{u}'s mail differs after reconnection"
        assert snapshot(store, u) == trees[u], f"{u}'s folders, UIDs or flags differ after reconnection"

    # later deliveries reach the reconnected mailboxes
    for u in addr:
        out = deliver_one(store, f"<d12.after.{u}@example.org>", addr[u])
        assert out.mailbox == guids[u]
    for u in addr:
        guid, msgs = inbox(store, u)
        assert guid == guids[u]
        assert set(msgs) == _expected_ids(u) | {f"<d12.after.{u}@example.org>"}
    assert agents.cleanup(store).disconnected == []
    assert {m.guid for m in agents.list_mailboxes(store)} == {*guids.values(), sa_guid}


def test_d12_create_mailbox_does_not_relink(store: Store, server: SetupResult) -> None:
    """The guide's Important note: Create Mailbox makes a new mailbox; the old one stays
    Disconnected, and the Recovery Center then has no usable owner for it."""
    address = enable(store, "erin", server.mailbox_store.dn)
    for i in range(2):
        deliver_one(store, f"<d12.erin.{i}@example.org>", address)
    old_guid, old_msgs = inbox(store, "erin")
    dn = store.directory.require_user("erin").dn

    tasks.remove_exchange_attributes(store.directory, "erin")
    assert agents.cleanup(store).disconnected == [old_guid]
    tasks.mailbox_enable(store.directory, "erin", server.mailbox_store.dn)  # "Create Mailbox"
    new_guid, new_msgs = inbox(store, "erin")
    assert new_guid != old_guid and new_guid == mailbox_guid(store, "erin")
    assert new_msgs == {}

    entries = {m.guid: m for m in agents.list_mailboxes(store) if m.kind == schema.USER}
    assert set(entries) == {old_guid, new_guid}  # the user appears to have two mailboxes
    assert entries[old_guid].state == schema.DISCONNECTED and entries[old_guid].messages == 2
    assert entries[new_guid].state == schema.CONNECTED and entries[new_guid].messages == 0
    suggestions, problems = agents.recover(store, apply=True)
    assert problems == []
    assert [(s.guid, s.match, s.previous_owner) for s in suggestions] == [(old_guid, None, dn)]
    assert "already has a mailbox" in suggestions[0].reason
    assert {m.guid for m in agents.list_mailboxes(store, disconnected=True)} == {old_guid}

    # mail now reaches the new mailbox only; the old contents stay intact in the old one
    deliver_one(store, "<d12.erin.new@example.org>", f"erin@{DOMAIN}")
    guid, msgs = inbox(store, "erin")
    assert guid == new_guid and set(msgs) == {"<d12.erin.new@example.org>"}
    assert {m.guid: m.messages for m in agents.list_mailboxes(store, disconnected=True)} == {old_guid: 2}
    assert set(old_msgs) == {"<d12.erin.0@example.org>", "<d12.erin.1@example.org>"}
