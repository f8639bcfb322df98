"""Server configuration: setup defaults, storage groups and databases in the directory, limits,
rename/delete, database files, and mount intent across store restarts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from mailkeep.engine.errors import EseError
from mailkeep.eventlog import EventLog
from mailkeep.store import attendant, delivery, schema
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.mailboxes import guid_text
from mailkeep.store.server import ConfigError
from mailkeep.store.setup import SetupResult, setup_server
from mailkeep.store.store import Store
from tests.store.conftest import LOG_SIZE, message, source

DATA_FILES = ("priv1.edb", "priv1.stm", "pub1.edb", "pub1.stm")


def _tree(root: str) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (ns)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.stat(p)
            out[os.path.relpath(p, root)] = (st.st_size, st.st_mtime_ns)
    return out


def _mailbox_rows(store: Store, info: object) -> list[dict[str, object]]:
    with store.read(info) as (r, db):  # type: ignore[arg-type]
        return [dict(x) for x in r.scan(db, "mailbox")]


# -- setup ------------------------------------------------------------------------------------------
def test_setup_defaults(server: SetupResult, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    assert server.storage_group == "First Storage Group"
    assert server.mailbox_store.name == "Mailbox Store (Exchange1)"
    assert server.public_store.name == "Public Folder Store (Exchange1)"
    assert server.mailbox_store.public is False
    assert server.public_store.public is True
    assert server.mailbox_store.sg.prefix == "E00"
    assert server.mailbox_store.sg.circular is False
    mdb = os.path.join(data, "mdbdata")
    assert server.mailbox_store.edb == os.path.join(mdb, "priv1.edb")
    assert server.mailbox_store.stm == os.path.join(mdb, "priv1.stm")
    assert server.public_store.edb == os.path.join(mdb, "pub1.edb")
    assert server.public_store.stm == os.path.join(mdb, "pub1.stm")
    for name in DATA_FILES:
        assert os.path.isfile(os.path.join(mdb, name)), name
    assert os.path.isfile(os.path.join(mdb, "E00.chk"))
    assert os.path.isfile(os.path.join(data, "server.json"))
    assert server.mailbox_store.sg.log_path == mdb
    assert server.mailbox_store.sg.system_path == mdb


def test_setup_configuration_in_directory_and_events(server: SetupResult, store: Store, tmp_path: Path) -> None:
    srv = store.server
    assert srv.name == "Exchange1"
    assert srv.organization == "Organization"
    assert srv.admin_group == "AG1"
    assert [g.name for g in srv.storage_groups()] == ["First Storage Group"]
    assert [g.prefix for g in srv.storage_groups()] == ["E00"]
    assert [d.name for d in srv.databases()] == ["Mailbox Store (Exchange1)", "Public Folder Store (Exchange1)"]
    assert all(d.mount_at_startup and not d.allow_restore_overwrite for d in srv.databases())
    # both databases are meant to be mounted, and the store fixture mounted them
    assert all(srv.mount_intended(d) for d in srv.databases())
    assert all(store.is_mounted(d) for d in srv.databases())

    sa = store.directory.get(srv.system_attendant_dn)
    assert sa is not None
    assert srv.system_attendant_dn.startswith("CN=Microsoft System Attendant,CN=Exchange1,")
    assert sa.text("homeMDB") == server.mailbox_store.dn
    assert sa.text("legacyExchangeDN") == \
        "/o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=Exchange1/cn=Microsoft System Attendant"
    raw = sa.first("msExchMailboxGUID")
    assert isinstance(raw, bytes) and len(raw) == 16
    rows = _mailbox_rows(store, server.mailbox_store)
    assert [(r["guid"], r["kind"], r["state"]) for r in rows] == [
        (guid_text(raw), schema.SYSTEM_ATTENDANT, schema.CONNECTED)
    ]
    assert rows[0]["server_legacy"] == srv.legacy_dn
    # the public folder store holds its hierarchy row only
    assert [(r["guid"], r["kind"]) for r in _mailbox_rows(store, server.public_store)] == [
        (str(server.public_store.guid), schema.PUBLIC)
    ]
    # a system attendant logon reaches the same mailbox (it is not created twice)
    assert attendant.logon(store) == guid_text(raw)
    assert len(_mailbox_rows(store, server.mailbox_store)) == 1

    log = EventLog(str(tmp_path / "data" / "events.jsonl"))
    mounted = [e.message for e in log.read(source="MSExchangeIS", event_id=9523)]
    assert "mailbox store First Storage Group/Mailbox Store (Exchange1) mounted." in mounted
    assert "public folder store First Storage Group/Public Folder Store (Exchange1) mounted." in mounted
    sa_created = list(log.read(source="MSExchangeIS Mailbox Store", event_id=1005))
    assert len(sa_created) == 1
    assert guid_text(raw) in sa_created[0].message


def test_second_setup_refuses_and_changes_nothing(server: SetupResult, tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    before = _tree(data)
    with pytest.raises(ConfigError) as ei:
        setup_server(data, domain="contoso.com", organization="Organization", admin_group="AG1",
                     server="Exchange1", log_file_size=LOG_SIZE)
    msg = str(ei.value)
    assert "already holds a server" in msg
    assert os.path.join(data, "server.json") in msg
    with pytest.raises(ConfigError):
        setup_server(data, domain="fabrikam.com", server="Other", log_file_size=LOG_SIZE)
    assert _tree(data) == before
    # and the first server is intact
    with Store.open(data, log_file_size=LOG_SIZE) as s:
        assert [d.name for d in s.mount_intended()] == ["Mailbox Store (Exchange1)", "Public Folder Store (Exchange1)"]
        assert s.server.name == "Exchange1"


# -- storage groups ---------------------------------------------------------------------------------
def test_storage_group_prefixes_and_limit(store: Store) -> None:
    srv = store.server
    made = [srv.create_storage_group(f"SG{i}") for i in (2, 3, 4)]
    assert [g.prefix for g in made] == ["E01", "E02", "E03"]
    assert made[0].log_path == os.path.join(srv.data, "SG2")
    assert made[0].system_path == os.path.join(srv.data, "SG2")
    assert [g.prefix for g in srv.storage_groups()] == ["E00", "E01", "E02", "E03"]
    with pytest.raises(ConfigError) as ei:
        srv.create_storage_group("SG5")
    assert "4 storage groups" in str(ei.value)
    assert len(srv.storage_groups()) == 4
    # the recovery storage group is allowed beyond the four, once
    rsg = srv.create_storage_group("Recovery Storage Group", recovery=True)
    assert rsg.prefix == "R00"
    assert rsg.recovery is True
    assert [g.prefix for g in srv.storage_groups()] == ["E00", "E01", "E02", "E03", "R00"]
    with pytest.raises(ConfigError) as ei:
        srv.create_storage_group("Another Recovery", recovery=True)
    assert "recovery storage group" in str(ei.value)
    # duplicate names are refused, case-insensitively
    with pytest.raises(ConfigError):
        srv.create_storage_group("first storage group")
    assert len(srv.storage_groups()) == 5


def test_freed_prefix_is_reused(store: Store) -> None:
    srv = store.server
    srv.create_storage_group("SG2")
    srv.create_storage_group("SG3")
    srv.delete_storage_group("SG2")
    assert srv.create_storage_group("SG4").prefix == "E01"


def test_storage_group_path_clash_refused(store: Store) -> None:
    with pytest.raises(ConfigError) as ei:
        store.server.create_storage_group("SG2", log_path="mdbdata")
    assert "already holds the logs" in str(ei.value)
    assert len(store.server.storage_groups()) == 1


def test_databases_per_group_and_per_server(store: Store) -> None:
    srv = store.server
    for i in range(3):
        srv.create_database("First Storage Group", f"DB{i}")
    assert len(srv.databases(srv.storage_group("E00"))) == 5
    with pytest.raises(ConfigError) as ei:
        srv.create_database("First Storage Group", "DB5")
    assert "5 databases" in str(ei.value)
    assert len(srv.databases()) == 5
    for sg in ("SG2", "SG3", "SG4"):
        srv.create_storage_group(sg)
        for i in range(5):
            srv.create_database(sg, f"{sg} DB{i}")
    assert len(srv.databases()) == 20
    for sg in ("SG2", "SG3", "SG4"):
        with pytest.raises(ConfigError):
            srv.create_database(sg, "one too many")
    # databases of the recovery storage group are not counted in the 20
    srv.create_storage_group("Recovery Storage Group", recovery=True)
    r = srv.create_database("Recovery Storage Group", "Recovered")
    assert r.sg.prefix == "R00"
    assert len(srv.databases()) == 21
    # default file names come from the database name, in the group's system path
    d = srv.database("SG2/SG2 DB0")
    assert d.edb == os.path.join(srv.data, "SG2", "SG2 DB0.edb")
    assert d.stm == os.path.join(srv.data, "SG2", "SG2 DB0.stm")


def test_database_name_and_file_clashes(store: Store) -> None:
    srv = store.server
    with pytest.raises(ConfigError):
        srv.create_database("First Storage Group", "mailbox store (exchange1)")
    with pytest.raises(ConfigError) as ei:
        srv.create_database("First Storage Group", "Other", edb="mdbdata/priv1.edb")
    assert "already the file of another database" in str(ei.value)
    with pytest.raises(ConfigError):
        srv.create_database("First Storage Group", "bad\\name")
    assert len(srv.databases()) == 2


# -- rename -----------------------------------------------------------------------------------------
def test_rename_database_and_group_homes_follow(
    store: Store, server: SetupResult, add_mailbox_user: Callable[..., str],
) -> None:
    srv = store.server
    addr = add_mailbox_user("alice")
    assert delivery.deliver(store, source(message("<before@x>")), [addr]).delivered

    db = srv.rename_database("Mailbox Store (Exchange1)", "Mail One")
    assert db.name == "Mail One"
    assert db.guid == server.mailbox_store.guid
    assert db.dn.startswith("CN=Mail One,CN=First Storage Group,")
    alice = store.directory.require_user("alice")
    assert alice.text("homeMDB") == db.dn
    sa = store.directory.require(srv.system_attendant_dn)
    assert sa.text("homeMDB") == db.dn

    sg = srv.rename_storage_group("First Storage Group", "Main Group")
    assert sg.name == "Main Group"
    assert sg.prefix == "E00"
    db = srv.database("Mail One")
    assert db.sg.name == "Main Group"
    assert db.dn.startswith("CN=Mail One,CN=Main Group,CN=InformationStore,")
    alice = store.directory.require_user("alice")
    assert alice.text("homeMDB") == db.dn
    assert store.directory.require(srv.system_attendant_dn).text("homeMDB") == db.dn
    assert [u.dn for u in srv.users_homed_on(db.dn)] == [alice.dn]

    # the renamed database still serves its mailboxes
    rep = delivery.deliver(store, source(message("<after@x>")), [addr])
    assert [o.status for o in rep.outcomes] == ["delivered"]
    assert rep.outcomes[0].database == "Main Group/Mail One"
    mb = open_mailbox(store, "alice")
    assert {m.message_id for m in mb.messages()} == {"<before@x>", "<after@x>"}
    assert attendant.logon(store)

    srv.create_storage_group("SG2")
    with pytest.raises(ConfigError):
        srv.rename_storage_group("SG2", "main group")
    srv.create_database("Main Group", "Other")
    with pytest.raises(ConfigError):
        srv.rename_database("Other", "MAIL ONE")


# -- delete -----------------------------------------------------------------------------------------
def test_delete_refusals_and_files_kept(
    store: Store, server: SetupResult, add_mailbox_user: Callable[..., str],
) -> None:
    srv = store.server
    with pytest.raises(ConfigError) as ei:
        srv.delete_storage_group("First Storage Group")
    assert "still holds 2 database(s)" in str(ei.value)

    sg = srv.create_storage_group("SG2")
    db = srv.create_database("SG2", "DB2")
    store.mount(db)
    add_mailbox_user("bob", db.dn)
    bob_addr = str(store.directory.require_user("bob").text("mail"))
    assert delivery.deliver(store, source(message("<b@x>")), [bob_addr]).delivered

    with pytest.raises(ConfigError) as ei:
        srv.delete_database("DB2", mounted=store.is_mounted(db))
    assert "mounted" in str(ei.value)
    store.dismount(db)
    with pytest.raises(ConfigError) as ei:
        srv.delete_database("DB2", mounted=store.is_mounted(db))
    assert "holds the mailboxes of 1 user(s)" in str(ei.value)
    assert srv.database("DB2").guid == db.guid

    from mailkeep.directory import tasks

    tasks.remove_exchange_attributes(store.directory, "bob")
    gone = srv.delete_database("DB2")
    assert gone.guid == db.guid
    with pytest.raises(ConfigError):
        srv.database("DB2")
    assert str(db.guid) not in srv.state["databases"]
    assert os.path.isfile(db.edb) and os.path.isfile(db.stm)

    store.close_group(sg)
    deleted, folders = srv.delete_storage_group("SG2")
    assert deleted.prefix == "E01"
    assert folders == [os.path.join(srv.data, "SG2")]
    assert [g.prefix for g in srv.storage_groups()] == ["E00"]
    assert os.path.isfile(db.edb) and os.path.isfile(db.stm)
    assert os.path.isfile(os.path.join(srv.data, "SG2", "E01.chk"))


def test_delete_database_homes_system_attendant_elsewhere(store: Store, server: SetupResult) -> None:
    srv = store.server
    srv.create_storage_group("SG2")
    other = srv.create_database("SG2", "DB2")
    store.dismount(server.mailbox_store)
    srv.delete_database("Mailbox Store (Exchange1)")
    assert store.directory.require(srv.system_attendant_dn).text("homeMDB") == other.dn
    assert os.path.isfile(server.mailbox_store.edb)


# -- database settings and files -------------------------------------------------------------------
def test_database_flags_in_directory(store: Store, server: SetupResult) -> None:
    srv = store.server
    db = srv.set_database("Mailbox Store (Exchange1)", mount_at_startup=False, allow_restore_overwrite=True)
    assert db.mount_at_startup is False
    assert db.allow_restore_overwrite is True
    e = store.directory.require(db.dn)
    assert e.has("msExchEDBOffline")
    assert e.has("msExchPatchMDB")
    assert str(e.first("msExchEDBOffline")).upper() in ("TRUE", "1")
    assert str(e.first("msExchPatchMDB")).upper() in ("TRUE", "1")

    db = srv.set_database("Mailbox Store (Exchange1)", mount_at_startup=True, allow_restore_overwrite=False)
    assert db.mount_at_startup is True
    assert db.allow_restore_overwrite is False
    e = store.directory.require(db.dn)
    assert not e.has("msExchEDBOffline")
    assert not e.has("msExchPatchMDB")

    created = srv.create_database("First Storage Group", "Offline", mount_at_startup=False,
                                  allow_restore_overwrite=True)
    assert created.mount_at_startup is False and created.allow_restore_overwrite is True


def test_move_database_files(store: Store, server: SetupResult, add_mailbox_user: Callable[..., str]) -> None:
    srv = store.server
    addr = add_mailbox_user("alice")
    data = message("<moved@x>", body="still here")
    assert delivery.deliver(store, source(data), [addr]).delivered
    old = srv.database("Mailbox Store (Exchange1)")
    with pytest.raises(ConfigError) as ei:
        srv.set_database(old.name, edb="moved/priv1.edb", mounted=store.is_mounted(old))
    assert "dismount" in str(ei.value)
    assert os.path.isfile(old.edb)

    store.dismount(old)
    new = srv.set_database(old.name, edb="moved/priv1.edb", stm="moved/priv1.stm", mounted=store.is_mounted(old))
    assert new.edb == os.path.join(srv.data, "moved", "priv1.edb")
    assert new.stm == os.path.join(srv.data, "moved", "priv1.stm")
    assert os.path.isfile(new.edb) and os.path.isfile(new.stm)
    assert not os.path.exists(old.edb) and not os.path.exists(old.stm)
    assert store.directory.require(new.dn).text("msExchEDBFile") == "moved/priv1.edb"

    # a target that exists is refused and nothing moves
    with pytest.raises(ConfigError):
        srv.set_database(old.name, edb="mdbdata/pub1.edb")
    assert os.path.isfile(new.edb)

    store.mount(new)
    mb = open_mailbox(store, "alice")
    assert mb.read_message("INBOX", 1) == data
    store.close()
    with Store.open(srv.data, log_file_size=LOG_SIZE) as s2:
        s2.mount_intended()
        assert s2.is_mounted(s2.server.database(old.name))
        assert open_mailbox(s2, "alice").read_message("INBOX", 1) == data


# -- mount intent ------------------------------------------------------------------------------------
def test_mount_intent_persists_across_open(store: Store, server: SetupResult) -> None:
    data = store.server.data
    store.dismount(server.public_store)
    assert store.server.mount_intended(server.public_store) is False
    store.close()
    with Store.open(data, log_file_size=LOG_SIZE) as s2:
        assert [d.name for d in s2.mount_intended()] == ["Mailbox Store (Exchange1)"]
        assert not s2.is_mounted(server.public_store)
        s2.mount(server.public_store.name)
        assert s2.server.mount_intended(server.public_store) is True
    with Store.open(data, log_file_size=LOG_SIZE) as s3:
        got = s3.mount_intended()
        assert {d.guid for d in got} == {server.mailbox_store.guid, server.public_store.guid}
    # a service stop (close) keeps the intent
    with Store.open(data, log_file_size=LOG_SIZE) as s4:
        assert len(s4.mount_intended()) == 2


def test_new_database_waits_for_its_first_mount_and_startup_flag_applies(store: Store) -> None:
    """A database never mounted stays dismounted until an administrator mounts it (the guide:
    do not mount a new store before restoring into it); after that, a service start mounts it
    unless "do not mount at start-up" is set (decision 0005)."""
    srv = store.server
    srv.create_storage_group("SG2")
    on = srv.create_database("SG2", "Starts")
    off = srv.create_database("SG2", "Stays Down", mount_at_startup=False)
    assert srv.mount_intended(on) is False and srv.mount_intended(off) is False
    store.mount(on)
    store.mount(off)
    store.close()
    with Store.open(srv.data, log_file_size=LOG_SIZE) as s2:
        names = {d.name for d in s2.mount_intended(startup=True)}
        assert "Starts" in names and "Stays Down" not in names
        assert s2.server.mount_intended(s2.server.database("Stays Down")) is False
    with Store.open(srv.data, log_file_size=LOG_SIZE) as s3:
        assert "Stays Down" not in {d.name for d in s3.mount_intended()}


def test_vanished_files_refused_unless_create_new(
    store: Store, server: SetupResult, add_mailbox_user: Callable[..., str],
) -> None:
    srv = store.server
    srv.create_storage_group("SG2")
    db = srv.create_database("SG2", "DB2")
    store.mount(db)
    add_mailbox_user("carol", db.dn)
    assert delivery.deliver(store, source(message("<c@x>")), ["carol@contoso.com"]).delivered
    store.dismount(db)
    assert srv.files_created(db)
    os.remove(db.edb)
    os.remove(db.stm)
    with pytest.raises(ConfigError) as ei:
        store.mount(db)
    assert "--create-new" in str(ei.value)
    assert db.edb in str(ei.value)
    assert not store.is_mounted(db)
    assert not os.path.exists(db.edb)

    store.mount(db, create_new=True)
    assert store.is_mounted(db)
    with store.read(db) as (r, d):
        assert list(r.scan(d, "mailbox")) == []
        assert list(r.scan(d, "message")) == []
        assert list(r.scan(d, "content")) == []
    warn = list(store.events.read(event_id=9522))
    assert len(warn) == 1 and warn[0].level == "warning"
    # dial tone: carol gets a new, empty mailbox and mail flows again
    mb = open_mailbox(store, "carol")
    assert mb.messages() == []
    assert delivery.deliver(store, source(message("<c2@x>")), ["carol@contoso.com"]).delivered
    assert [m.message_id for m in mb.messages()] == ["<c2@x>"]
    # the storage group's older logs (of the vanished files) are not replayed into the new ones
    store.close()
    with Store.open(srv.data, log_file_size=LOG_SIZE) as s2:
        assert db.guid in {d.guid for d in s2.mount_intended()}
        assert [m.message_id for m in open_mailbox(s2, "carol").messages()] == ["<c2@x>"]


@pytest.mark.parametrize("missing", ["edb", "stm"])
def test_partner_file_missing_refused(store: Store, server: SetupResult, missing: str) -> None:
    info = server.mailbox_store
    store.dismount(info)
    path = info.edb if missing == "edb" else info.stm
    os.remove(path)
    with pytest.raises(EseError) as ei:
        store.mount(info)
    assert path in str(ei.value)
    assert not store.is_mounted(info)
    with pytest.raises(EseError):
        store.mount(info, create_new=True)
    assert not store.is_mounted(info)


def test_storage_group_paths_move_the_logs_and_keep_the_mail(
    store: Store, server: SetupResult, add_mailbox_user: Callable[..., str],
) -> None:
    """`sg set --log-path/--system-path/--circular-logging`: the log stream and checkpoint move
    with the setting, and the databases mount on the moved logs with their mail."""
    srv = store.server
    sg = srv.create_storage_group("SG2")
    db = srv.create_database("SG2", "DB2")
    store.mount(db)
    addr = add_mailbox_user("dora", db.dn)
    assert delivery.deliver(store, source(message("<d1@x>")), [addr]).delivered
    store.dismount(db)
    store.close_group(sg)
    old_logs = sorted(n for n in os.listdir(sg.log_path) if n.endswith(".log"))
    assert "E01.log" in old_logs and "res1.log" in old_logs
    moved = srv.set_storage_group("SG2", log_path="SG2-logs", system_path="SG2-system", circular=True)
    assert (moved.log_path, moved.system_path, moved.circular) == (
        os.path.join(srv.data, "SG2-logs"), os.path.join(srv.data, "SG2-system"), True)
    assert sorted(n for n in os.listdir(moved.log_path) if n.endswith(".log")) == old_logs
    assert [n for n in os.listdir(sg.log_path) if n.endswith((".log", ".chk"))] == []
    assert os.path.exists(os.path.join(moved.system_path, "E01.chk"))
    store.mount(srv.database("DB2"))
    assert [m.message_id for m in open_mailbox(store, "dora").messages("INBOX")] == ["<d1@x>"]
    assert delivery.deliver(store, source(message("<d2@x>")), [addr]).delivered


def test_storage_group_paths_refuse_an_occupied_target(store: Store) -> None:
    srv = store.server
    sg = srv.create_storage_group("SG2")
    db = srv.create_database("SG2", "DB2")
    store.mount(db)
    store.dismount(db)
    store.close_group(sg)
    target = os.path.join(srv.data, "busy")
    os.makedirs(target)
    open(os.path.join(target, "E01.log"), "wb").close()
    with pytest.raises(ConfigError, match="already holds E01.log"):
        srv.set_storage_group("SG2", log_path="busy")
    assert srv.storage_group("SG2").log_path == sg.log_path  # nothing changed
    assert os.path.exists(os.path.join(sg.log_path, "E01.log"))
