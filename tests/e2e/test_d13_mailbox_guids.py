"""D13 (DRILLS.md): the mailbox GUID is the mailbox's primary key ("Understanding Mailbox
GUIDs").

- "If you were to switch the values of the msExchMailboxGUID attributes between the user
  accounts ... they would see each others' mailbox contents."
- "If you edit the msExchMailboxGUID value, altering it by even a single character, the next
  time the affected user logs on, a completely new mailbox will be generated ... the user's
  original mailbox will afterward display as disconnected."
- "Suppose you were to then return the msExchMailboxGUID to its original value. The next time
  the user logged on, the original mailbox would again be available, and the new mailbox
  would become disconnected."
"""

from __future__ import annotations

import uuid

import pytest

from mailkeep.store import agents, schema
from mailkeep.store.errors import StoreError, ecLoginFailure
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.setup import SetupResult
from mailkeep.store.store import Store
from tests.e2e.conftest import deliver_one, enable, inbox, mailbox_guid


def _with_mail(store: Store, server: SetupResult, users: tuple[str, ...]) -> dict[str, tuple[str, dict[str, bytes]]]:
    out = {}
    for u in users:
        address = enable(store, u, server.mailbox_store.dn)
        for i in range(3):
            deliver_one(store, f"<d13.{u}.{i}@example.org>", address)
        out[u] = inbox(store, u)
        assert set(out[u][1]) == {f"<d13.{u}.{i}@example.org>" for i in range(3)}
    return out


def _set_guid(store: Store, user: str, guid: str) -> None:
    store.directory.replace(store.directory.require_user(user).dn, msExchMailboxGUID=uuid.UUID(guid).bytes_le)


def _one_char_changed(guid: str) -> str:
    last = guid[-1]
    return guid[:-1] + ("0" if last != "0" else "1")


def test_d13_swapping_guids_swaps_mailboxes(store: Store, server: SetupResult) -> None:
    before = _with_mail(store, server, ("alice", "bob"))
    ga, gb = before["alice"][0], before["bob"][0]

    _set_guid(store, "alice", gb)
    # the transient duplicate: two accounts name one GUID; neither may log on meanwhile
    for u in ("alice", "bob"):
        with pytest.raises(StoreError) as ei:
            open_mailbox(store, u)
        assert ei.value.code == ecLoginFailure
    _set_guid(store, "bob", ga)

    alice_guid, alice_msgs = inbox(store, "alice")
    bob_guid, bob_msgs = inbox(store, "bob")
    assert (alice_guid, bob_guid) == (gb, ga)
    assert alice_msgs == before["bob"][1] and bob_msgs == before["alice"][1]
    # mail follows the GUID the account names now
    assert deliver_one(store, "<d13.to-alice@example.org>", "alice@contoso.com").mailbox == gb
    assert set(inbox(store, "alice")[1]) == set(before["bob"][1]) | {"<d13.to-alice@example.org>"}
    assert set(inbox(store, "bob")[1]) == set(before["alice"][1])
    # both mailboxes are owned and homed here: the cleanup agent disconnects neither
    assert agents.cleanup(store).disconnected == []
    owners = {m.guid: m.owner_dn for m in agents.list_mailboxes(store) if m.kind == schema.USER}
    d = store.directory
    assert owners == {gb: d.require_user("alice").dn, ga: d.require_user("bob").dn}

    # swapping back gives each their own mailbox again
    _set_guid(store, "alice", ga)
    _set_guid(store, "bob", gb)
    assert inbox(store, "alice") == before["alice"]
    assert inbox(store, "bob")[0] == gb
    assert set(inbox(store, "bob")[1]) == set(before["bob"][1]) | {"<d13.to-alice@example.org>"}


def test_d13_one_character_makes_a_new_mailbox_and_back(store: Store, server: SetupResult) -> None:
    before = _with_mail(store, server, ("alice", "bob"))
    ga, gb = before["alice"][0], before["bob"][0]
    alice_dn = store.directory.require_user("alice").dn
    g_new = _one_char_changed(ga)
    assert sum(a != b for a, b in zip(ga, g_new, strict=True)) == 1

    _set_guid(store, "alice", g_new)
    guid, msgs = inbox(store, "alice")
    assert guid == g_new == mailbox_guid(store, "alice")
    assert msgs == {}  # a completely new mailbox
    mine = {m.guid: m.state for m in agents.list_mailboxes(store) if m.owner_dn == alice_dn}
    assert mine == {ga: schema.CONNECTED, g_new: schema.CONNECTED}  # "as now having two mailboxes"

    rep = agents.cleanup(store)
    assert rep.disconnected == [ga] and rep.tombstoned == [] and rep.purged == []
    states = {m.guid: (m.state, m.messages) for m in agents.list_mailboxes(store) if m.kind == schema.USER}
    assert states == {ga: (schema.DISCONNECTED, 3), g_new: (schema.CONNECTED, 0), gb: (schema.CONNECTED, 3)}
    assert deliver_one(store, "<d13.while-new@example.org>", "alice@contoso.com").mailbox == g_new

    # the original value again: the original mailbox is back, the new one is disconnected
    _set_guid(store, "alice", ga)
    assert inbox(store, "alice") == before["alice"]
    rep = agents.cleanup(store)
    assert rep.disconnected == [g_new] and rep.tombstoned == [] and rep.purged == []
    states = {m.guid: (m.state, m.messages) for m in agents.list_mailboxes(store) if m.kind == schema.USER}
    assert states == {ga: (schema.CONNECTED, 3), g_new: (schema.DISCONNECTED, 1), gb: (schema.CONNECTED, 3)}
    assert deliver_one(store, "<d13.back@example.org>", "alice@contoso.com").mailbox == ga
    assert set(inbox(store, "alice")[1]) == set(before["alice"][1]) | {"<d13.back@example.org>"}
    assert inbox(store, "bob") == before["bob"]  # the other user never noticed
