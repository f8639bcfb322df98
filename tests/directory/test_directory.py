"""The directory API on the embedded backend: users, authentication, the configuration tree,
the Recipient Update Service and the mailbox GUID rule."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from mailkeep.directory import dn as dnmod
from mailkeep.directory import sid
from mailkeep.directory.backend import Backend, DirectoryError
from mailkeep.directory.directory import Directory
from mailkeep.directory.setup import initialize, open_directory

DB1 = ("CN=DB1,CN=SG1,CN=InformationStore,CN=Exchange1,CN=Servers,CN=AG1,CN=Administrative Groups,"
       "CN=Organization,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com")


def contoso(backend: Backend) -> Directory:
    d = Directory(backend, "contoso.com")
    d.ensure_base()
    server = d.add_server("Organization", "AG1", "Exchange1")
    sg = d.add_storage_group(server.dn, "SG1")
    d.add_database(sg.dn, "DB1")
    d.add_database(sg.dn, "DB1b")
    return d


@pytest.fixture
def d(backend: Backend) -> Directory:
    return contoso(backend)  # the backend fixture closes it


def test_configuration_tree_uses_the_guides_dn_forms(d: Directory) -> None:
    assert d.get(DB1) is not None
    server = d.get(d.server_dn("Organization", "AG1", "Exchange1"))
    assert server is not None
    assert server.text("legacyExchangeDN") == "/o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=Exchange1"
    assert d.get(f"CN=Microsoft MTA,{server.dn}") is not None
    assert [dnmod.normalize(e.dn) for e in d.databases_of_server(server.dn)] == [
        dnmod.normalize(DB1), dnmod.normalize(DB1.replace("CN=DB1,", "CN=DB1b,"))
    ]
    assert d.tombstone_lifetime_days == 60


def test_users_get_guid_sid_and_hashed_password(d: Directory) -> None:
    u = d.add_user("User1", password_text="s3cret!")
    guid = u.first("objectGUID")
    assert isinstance(guid, bytes) and len(guid) == 16
    assert d.get_by_guid(guid) is not None and d.get_by_guid(guid).dn == u.dn  # type: ignore[union-attr]
    user_sid = sid.to_text(u.first("objectSid"))  # type: ignore[arg-type]
    domain_sid = sid.to_text(d.get(d.domain_dn).first("objectSid"))  # type: ignore[union-attr,arg-type]
    assert user_sid.startswith(domain_sid + "-")
    stored = u.text("passwordHash")
    assert stored and stored.startswith("scrypt$") and "s3cret!" not in stored
    assert d.authenticate("User1", "s3cret!") is not None
    assert d.authenticate("user1@contoso.com", "s3cret!") is not None
    assert d.authenticate("User1", "wrong") is None
    assert d.authenticate("nobody", "s3cret!") is None
    d.set_disabled("User1", True)
    assert d.get(u.dn).first("userAccountControl") == 514  # type: ignore[union-attr]
    assert d.authenticate("User1", "s3cret!") is None
    d.set_disabled("User1", False)
    assert d.authenticate("User1", "s3cret!") is not None
    with pytest.raises(DirectoryError) as e:
        d.add_user("user1")
    assert e.value.result == "entryAlreadyExists"


def test_rus_completes_a_user_given_nickname_and_home_server(d: Directory) -> None:
    u = d.add_user("User2", password_text="x")
    server = d.server_dn("Organization", "AG1", "Exchange1")
    u = d.replace(u.dn, mailNickname="user2",
                  msExchHomeServerName="/o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=Exchange1")
    assert dnmod.normalize(str(u.text("homeMDB"))) == dnmod.normalize(DB1)  # the first database of the server
    assert u.text("homeMTA") == f"CN=Microsoft MTA,{server}"
    assert u.text("legacyExchangeDN") == "/o=Organization/ou=AG1/cn=Recipients/cn=user2"
    assert u.text("mail") == "user2@contoso.com"
    assert u.get("proxyAddresses") == ["SMTP:user2@contoso.com"]
    assert u.first("msExchUserAccountControl") == 0
    assert not u.has("msExchMailboxGUID")  # the store allocates the mailbox (second stage)


def test_rus_leaves_users_without_home_attributes_alone(d: Directory) -> None:
    u = d.replace(d.add_user("User3").dn, mailNickname="user3")
    assert not u.has("mail") and not u.has("homeMDB")


def test_two_accounts_with_one_mailbox_guid_are_refused(d: Directory) -> None:
    g = uuid.uuid4().bytes_le
    a = d.replace(d.add_user("A").dn, mailNickname="a", homeMDB=DB1, msExchMailboxGUID=g)
    assert d.check_mailbox_guid(g).dn == a.dn  # type: ignore[union-attr]
    d.replace(d.add_user("B").dn, mailNickname="b", homeMDB=DB1, msExchMailboxGUID=g)
    with pytest.raises(DirectoryError) as e:
        d.check_mailbox_guid(g)
    assert e.value.result == "constraintViolation" and "only one may be connected" in str(e.value)


def test_no_directory_yet(tmp_path: Path) -> None:
    with pytest.raises(DirectoryError) as e:
        open_directory(str(tmp_path / "data"))
    assert "mailkeep setup" in str(e.value)


def test_data_folder_setup_and_reopen(data_dir: Path) -> None:
    data = str(data_dir)
    d = initialize(data, "contoso.com", organization="Organization", admin_group="AG1", server="Exchange1")
    d.add_user("Alice", password_text="pw")
    d.close()
    d = open_directory(data)
    assert d.authenticate("alice", "pw") is not None
    assert d.get(d.server_dn("Organization", "AG1", "Exchange1")) is not None
    d.close()


def test_rus_takes_addresses_from_the_recipient_policy(d: Directory) -> None:
    policy = f"CN=Default Policy,CN=Recipient Policies,{d.org_dn('Organization')}"
    assert d.require(policy).get("gatewayProxy") == ["SMTP:@contoso.com"]
    d.replace(policy, gatewayProxy=["SMTP:@contoso.com", "smtp:@mail.contoso.com"])
    u = d.replace(d.add_user("Carol").dn, mailNickname="carol", homeMDB=DB1)
    assert u.text("mail") == "carol@contoso.com"
    assert u.get("proxyAddresses") == ["SMTP:carol@contoso.com", "smtp:carol@mail.contoso.com"]


def test_groups_get_a_sid_and_members(d: Directory) -> None:
    a = d.add_user("A1")
    g = d.add_group("Helpdesk", [a.dn])
    assert sid.to_text(g.first("objectSid")).startswith("S-1-5-21-")  # type: ignore[arg-type]
    assert [dnmod.normalize(str(m)) for m in g.get("member")] == [dnmod.normalize(a.dn)]
