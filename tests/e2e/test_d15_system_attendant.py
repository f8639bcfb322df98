"""D15 (DRILLS.md): move the system attendant database between servers and back — the
guide's "Issues with the System Attendant Mailbox When Moving an Exchange Mailbox Database",
Scenarios 1-3, and its notes on purging and on moving within one server.

Two servers, Exchange1 and Exchange2, of one organization share one directory. Database1 is
Exchange1's "Mailbox Store (Exchange1)", Database2 Exchange2's "Mailbox Store (Exchange2)";
each holds its server's system attendant mailbox and one user's mail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailkeep.directory.directory import Directory
from mailkeep.directory.setup import open_directory
from mailkeep.eventlog import Event
from mailkeep.store import agents, attendant, schema
from mailkeep.store.errors import StoreError, ecMailboxInTransit
from mailkeep.store.server import FIRST_SG, ConfigError, DatabaseInfo
from mailkeep.store.setup import SetupResult, setup_server
from mailkeep.store.store import Store
from tests.e2e.conftest import ADMIN_GROUP, DOMAIN, LOG_SIZE, ORG, deliver_one, enable, inbox

IS_SOURCE = "MSExchangeIS Mailbox Store"
TOMBSTONE_ONLY = "tombstoned"  # list_mailboxes' state of a tombstone whose mailbox is gone


@dataclass
class Pair:
    directory: Directory
    r1: SetupResult
    r2: SetupResult
    s1: Store
    s2: Store
    db1: DatabaseInfo  # "Database1": Exchange1's system attendant database location
    db2: DatabaseInfo
    sa1: str  # the system attendant mailbox GUIDs
    sa2: str
    mail: dict[str, tuple[str, dict[str, bytes]]]  # user -> (mailbox GUID, Message-ID -> bytes)


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[Pair]:
    data1, data2 = str(tmp_path / "exchange1"), str(tmp_path / "exchange2")
    r1 = setup_server(data1, domain=DOMAIN, organization=ORG, admin_group=ADMIN_GROUP, server="Exchange1",
                      log_file_size=LOG_SIZE)
    d = open_directory(data1)
    stores: list[Store] = []
    try:
        r2 = setup_server(data2, organization=ORG, admin_group=ADMIN_GROUP, server="Exchange2", directory=d,
                          log_file_size=LOG_SIZE)
        for data in (data1, data2):
            s = Store.open(data, directory=d, log_file_size=LOG_SIZE)
            stores.append(s)
            s.mount_intended()
        s1, s2 = stores
        a = enable(s1, "alice", r1.mailbox_store.dn)
        b = enable(s2, "bob", r2.mailbox_store.dn)
        for i in range(3):
            deliver_one(s1, f"<d15.alice.{i}@example.org>", a)
            deliver_one(s2, f"<d15.bob.{i}@example.org>", b)
        mail = {"alice": inbox(s1, "alice"), "bob": inbox(s2, "bob")}
        sa1, sa2 = attendant.home(s1)[1], attendant.home(s2)[1]
        assert sa1 != sa2
        p = Pair(d, r1, r2, s1, s2, r1.mailbox_store, r2.mailbox_store, sa1, sa2, mail)
        assert _mailboxes(s1, p.db1) == {sa1: (schema.SYSTEM_ATTENDANT, schema.CONNECTED, False),
                                         mail["alice"][0]: (schema.USER, schema.CONNECTED, False)}
        assert _mailboxes(s2, p.db2) == {sa2: (schema.SYSTEM_ATTENDANT, schema.CONNECTED, False),
                                         mail["bob"][0]: (schema.USER, schema.CONNECTED, False)}
        yield p
    finally:
        for s in stores:
            s.close()
        d.close()


def _mailboxes(store: Store, info: DatabaseInfo) -> dict[str, tuple[str, str, bool]]:
    """guid -> (kind, state, tombstoned) of the mailboxes in one database."""
    return {m.guid: (m.kind, m.state, m.tombstoned) for m in agents.list_mailboxes(store, str(info.guid))}


def _tombstones(store: Store, info: DatabaseInfo) -> set[str]:
    with store.read(info) as (r, d):
        return {t["guid"] for t in r.scan(d, "tombstone")}


def _swap_files(s1: Store, s2: Store, a: DatabaseInfo, b: DatabaseInfo) -> None:
    """Dismount both (clean shutdown), swap their .edb/.stm files, mount both again."""
    s1.dismount(a)
    s2.dismount(b)
    for x, y in ((a.edb, b.edb), (a.stm, b.stm)):
        tmp = x + ".swap"
        os.replace(x, tmp)
        os.replace(y, x)
        os.replace(tmp, y)
    s1.mount(a)
    s2.mount(b)


def _logon_failures(store: Store) -> list[Event]:
    return list(store.events.read(event_id=attendant.LOGON_FAILURE))


def _check_1022(ev: Event, server: str, database: str) -> None:
    """The guide's event 1022, exactly."""
    assert (ev.source, ev.id, ev.level) == (IS_SOURCE, 1022, "error")
    assert ev.data.get("category") == "Logons"
    lines = [x for x in ev.message.splitlines() if x.strip()]
    assert lines == [
        f'Logon Failure on database "{database}" - Windows 2000 account NT AUTHORITY\\SYSTEM; mailbox '
        f"/o={ORG}/ou={ADMIN_GROUP}/cn=Configuration/cn=Servers/cn={server}/cn=Microsoft System Attendant.",
        "Error: 1292",
    ], ev.message


def _fails_in_transit(store: Store, server: str, database: str, *, logon: bool = False) -> None:
    """One attempt to reach the system attendant mailbox: ecMailboxInTransit and one more
    event 1022."""
    n = len(_logon_failures(store))
    with pytest.raises(StoreError) as ei:
        if logon:
            attendant.logon(store)
        else:
            attendant.run_task(store)
    assert ei.value.code == ecMailboxInTransit == 0x50C
    events = _logon_failures(store)
    assert len(events) == n + 1
    _check_1022(events[-1], server, database)


def _scenario1(p: Pair) -> None:
    """Swap the database files between Exchange1 and Exchange2."""
    alice, bob = p.mail["alice"][0], p.mail["bob"][0]
    _swap_files(p.s1, p.s2, p.db1, p.db2)
    # Exchange1 now runs Database2's files, Exchange2 Database1's
    rep1 = agents.cleanup(p.s1)
    assert sorted(rep1.disconnected) == sorted([p.sa2, bob]) and rep1.tombstoned == [p.sa2]
    rep2 = agents.cleanup(p.s2)
    assert sorted(rep2.disconnected) == sorted([p.sa1, alice]) and rep2.tombstoned == [p.sa1]
    assert _tombstones(p.s1, p.db1) == {p.sa2}
    assert _tombstones(p.s2, p.db2) == {p.sa1}
    assert _mailboxes(p.s1, p.db1) == {p.sa2: (schema.SYSTEM_ATTENDANT, schema.DISCONNECTED, True),
                                       bob: (schema.USER, schema.DISCONNECTED, False)}
    assert _mailboxes(p.s2, p.db2) == {p.sa1: (schema.SYSTEM_ATTENDANT, schema.DISCONNECTED, True),
                                       alice: (schema.USER, schema.DISCONNECTED, False)}
    # docs/events.md: 9536 (warning) when a system attendant mailbox is tombstoned
    for s, db, sa in ((p.s1, p.db1, p.sa2), (p.s2, p.db2, p.sa1)):
        tomb_events = list(s.events.read(source=IS_SOURCE, event_id=9536))
        assert [(e.level, sa in e.message, db.path_name in e.message) for e in tomb_events] == [
            ("warning", True, True)]

    # a system attendant task creates each server's own mailbox: neither database ever
    # hosted it
    assert attendant.run_task(p.s1) == 1
    assert attendant.run_task(p.s2) == 1
    assert _mailboxes(p.s1, p.db1)[p.sa1] == (schema.SYSTEM_ATTENDANT, schema.CONNECTED, False)
    assert _mailboxes(p.s2, p.db2)[p.sa2] == (schema.SYSTEM_ATTENDANT, schema.CONNECTED, False)
    assert attendant.logon(p.s1) == p.sa1 and attendant.logon(p.s2) == p.sa2
    assert _logon_failures(p.s1) == [] and _logon_failures(p.s2) == []
    rep1, rep2 = agents.cleanup(p.s1), agents.cleanup(p.s2)
    assert (rep1.disconnected, rep2.disconnected) == ([], [])


def _scenario2(p: Pair) -> None:
    """Swap the files back: two system attendant tombstones in each database, and each
    server's system attendant can no longer have a mailbox there."""
    _swap_files(p.s1, p.s2, p.db1, p.db2)
    rep1 = agents.cleanup(p.s1)
    assert rep1.disconnected == [p.sa2] and rep1.tombstoned == [p.sa2]
    rep2 = agents.cleanup(p.s2)
    assert rep2.disconnected == [p.sa1] and rep2.tombstoned == [p.sa1]
    assert _tombstones(p.s1, p.db1) == {p.sa1, p.sa2}
    assert _tombstones(p.s2, p.db2) == {p.sa1, p.sa2}
    for s, db in ((p.s1, p.db1), (p.s2, p.db2)):
        sas = {g: v for g, v in _mailboxes(s, db).items() if v[0] == schema.SYSTEM_ATTENDANT}
        assert sas == {p.sa1: (schema.SYSTEM_ATTENDANT, schema.DISCONNECTED, True),
                       p.sa2: (schema.SYSTEM_ATTENDANT, schema.DISCONNECTED, True)}

    # delivery to the system attendant mailbox fails, with event 1022, each attempt
    db1_name = f"{FIRST_SG}\\Mailbox Store (Exchange1)"
    db2_name = f"{FIRST_SG}\\Mailbox Store (Exchange2)"
    for _ in range(3):
        _fails_in_transit(p.s1, "Exchange1", db1_name)
    _fails_in_transit(p.s1, "Exchange1", db1_name, logon=True)
    _fails_in_transit(p.s2, "Exchange2", db2_name)
    assert len(_logon_failures(p.s1)) == 4 and len(_logon_failures(p.s2)) == 1  # each server's own log

    # purging the disconnected system attendant mailbox leaves its tombstone
    purged = agents.purge(p.s1, p.sa1)
    assert purged.guid == p.sa1 and purged.tombstoned
    # the mailbox is gone; what the listing still shows is the tombstone alone
    assert _mailboxes(p.s1, p.db1)[p.sa1] == (schema.SYSTEM_ATTENDANT, TOMBSTONE_ONLY, True)
    with p.s1.read(p.db1) as (r, d):
        assert r.get(d, "mailbox", (p.sa1,)) is None
    assert _tombstones(p.s1, p.db1) == {p.sa1, p.sa2}
    _fails_in_transit(p.s1, "Exchange1", db1_name)
    assert _tombstones(p.s1, p.db1) == {p.sa1, p.sa2}

    # users' mailboxes are not tombstoned: back home, they reconnect at the next logon
    assert inbox(p.s1, "alice") == p.mail["alice"]
    assert inbox(p.s2, "bob") == p.mail["bob"]


def test_d15_scenario1_swap_between_servers(pair: Pair) -> None:
    _scenario1(pair)


def test_d15_scenario2_swap_back_tombstones(pair: Pair) -> None:
    _scenario1(pair)
    _scenario2(pair)


def test_d15_scenario3_relocate_and_mount_empty(pair: Pair) -> None:
    _scenario1(pair)
    _scenario2(pair)
    p = pair
    s1 = p.s1
    alice = p.mail["alice"][0]

    # relocate the tombstoned database to a second database location of Exchange1
    ms2 = s1.server.create_database(FIRST_SG, "Mailbox Store 2 (Exchange1)")
    assert not os.path.exists(ms2.edb) and not os.path.exists(ms2.stm)
    s1.dismount(p.db1)
    os.replace(p.db1.edb, ms2.edb)
    os.replace(p.db1.stm, ms2.stm)
    s1.mount(ms2)
    assert _tombstones(s1, ms2) == {p.sa1, p.sa2}  # tombstones travel with the files

    # the system attendant's database location, mounted with no files: refused unless asked
    with pytest.raises(ConfigError):
        s1.mount(p.db1)
    assert not s1.is_mounted(p.db1)
    s1.mount(p.db1, create_new=True)
    assert os.path.exists(p.db1.edb) and os.path.exists(p.db1.stm)
    assert _mailboxes(s1, p.db1) == {} and _tombstones(s1, p.db1) == set()

    n = len(_logon_failures(s1))
    assert attendant.run_task(s1) == 1  # created at the first delivery attempt
    assert _mailboxes(s1, p.db1) == {p.sa1: (schema.SYSTEM_ATTENDANT, schema.CONNECTED, False)}
    assert attendant.logon(s1) == p.sa1
    assert attendant.run_task(s1) == 2
    assert len(_logon_failures(s1)) == n

    # the relocated database runs fine elsewhere; alice's mail is there
    rep = agents.cleanup(s1)
    assert rep.disconnected == [alice] and rep.tombstoned == []
    assert _mailboxes(s1, ms2) == {
        alice: (schema.USER, schema.DISCONNECTED, False),
        p.sa1: (schema.SYSTEM_ATTENDANT, TOMBSTONE_ONLY, True),  # purged in Scenario 2
        p.sa2: (schema.SYSTEM_ATTENDANT, schema.DISCONNECTED, True),
    }
    s1.directory.replace(s1.directory.require_user("alice").dn, homeMDB=ms2.dn)
    assert inbox(s1, "alice") == p.mail["alice"]
    assert deliver_one(s1, "<d15.alice.after@example.org>", "alice@contoso.com").database == ms2.path_name
    guid, msgs = inbox(s1, "alice")
    assert guid == alice and set(msgs) == set(p.mail["alice"][1]) | {"<d15.alice.after@example.org>"}
    assert agents.cleanup(s1).disconnected == []
    assert _mailboxes(s1, p.db1) == {p.sa1: (schema.SYSTEM_ATTENDANT, schema.CONNECTED, False)}

    # a service restart keeps it all: both mailbox databases mount, nothing else changes
    s1.close()
    with Store.open(p.r1.server.data, directory=p.directory, log_file_size=LOG_SIZE) as again:
        mounted = {d.guid for d in again.mount_intended()}
        assert {p.db1.guid, ms2.guid, p.r1.public_store.guid} == mounted
        assert _mailboxes(again, p.db1) == {p.sa1: (schema.SYSTEM_ATTENDANT, schema.CONNECTED, False)}
        assert _tombstones(again, p.db1) == set() and _tombstones(again, ms2) == {p.sa1, p.sa2}
        assert attendant.run_task(again) == 3
        assert inbox(again, "alice") == (guid, msgs)
        assert agents.cleanup(again).disconnected == []


@pytest.mark.parametrize("purge", [False, True], ids=["disconnected", "purged"])
def test_d15_move_within_one_server_does_not_tombstone(store: Store, server: SetupResult, purge: bool) -> None:
    """The guide: moved to another database location on the same server, the system
    attendant mailbox is disconnected (perhaps purged) but not tombstoned; moved back, it is
    re-created or reconnected automatically."""
    sa = attendant.home(store)[1]
    db1 = server.mailbox_store
    assert attendant.run_task(store) == 1
    ms2 = store.server.create_database(FIRST_SG, "Mailbox Store 2 (Exchange1)")
    store.dismount(db1)
    os.replace(db1.edb, ms2.edb)
    os.replace(db1.stm, ms2.stm)
    store.mount(ms2)

    rep = agents.cleanup(store)
    assert rep.disconnected == [sa] and rep.tombstoned == []
    assert _mailboxes(store, ms2) == {sa: (schema.SYSTEM_ATTENDANT, schema.DISCONNECTED, False)}
    assert _tombstones(store, ms2) == set()
    if purge:
        assert agents.purge(store, sa).guid == sa
        assert _mailboxes(store, ms2) == {}

    store.dismount(ms2)
    os.replace(ms2.edb, db1.edb)
    os.replace(ms2.stm, db1.stm)
    store.mount(db1)
    assert attendant.run_task(store) == (1 if purge else 2)
    entries = [m for m in agents.list_mailboxes(store, str(db1.guid))]
    assert [(m.guid, m.kind, m.state, m.tombstoned, m.messages) for m in entries] == [
        (sa, schema.SYSTEM_ATTENDANT, schema.CONNECTED, False, 1)]  # the attendant consumes earlier task mail
    assert _tombstones(store, db1) == set()
    assert list(store.events.read(event_id=attendant.LOGON_FAILURE)) == []
    assert agents.cleanup(store).disconnected == []
