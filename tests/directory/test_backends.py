"""One suite, two backends: the embedded directory and the LDAP backend against a real slapd.

Every test runs on both with the same assertions, from an empty tree (the LDAP one is wiped
below and including DC=contoso,DC=com first). Results are compared by normalized DN.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.directory import dn as dnmod
from mailkeep.directory import filters, schema, sid
from mailkeep.directory.backend import Backend, Change, DirectoryError, Entry, Value
from mailkeep.directory.directory import Directory
from mailkeep.directory.ldap import LdapBackend, ad_classes, server_filter, stored_classes
from tests.directory.slapd import SlapdInfo

ROOT = "DC=contoso,DC=com"
USERS = f"CN=Users,{ROOT}"
CONFIG = f"CN=Configuration,{ROOT}"
EXCHANGE = f"CN=Microsoft Exchange,CN=Services,{CONFIG}"
ORG = f"CN=Organization,{EXCHANGE}"
AG = f"CN=AG1,CN=Administrative Groups,{ORG}"
SERVER = f"CN=Exchange1,CN=Servers,{AG}"
SG = f"CN=SG1,CN=InformationStore,{SERVER}"
DB1 = f"CN=DB1,{SG}"
DB2 = f"CN=DB2,{SG}"
MTA = f"CN=Microsoft MTA,{SERVER}"
LEGACY = "/o=Organization/ou=AG1/cn=Configuration/cn=Servers/cn=Exchange1"
GUIDE_DB1_FILTER = (
    "(homeMDB=CN=DB1,CN=SG1,CN=InformationStore,CN=Exchange1,CN=Servers,CN=AG1,CN=Administrative Groups,"
    "CN=Organization,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com)"
)
BAD_ENABLED = "(&(objectCategory=user)(msExchUserAccountControl=0)(msExchMasterAccountSid=*))"
DISABLED_WITHOUT_SID = (
    "(&(objectCategory=user)(userAccountControl:1.2.840.113556.1.4.803:=2)(!(msExchMasterAccountSid=*))"
    "(msExchHomeServerName=*)(homeMDB=*))"
)
DOMAIN_SID = "S-1-5-21-1004336348-1177238915-682003330"
# a GUID with every byte a filter or a DN could trip over: NUL, ( ) * \ and non-UTF-8
AWKWARD_GUID = b"\x00()*\\\xff\xfe\x80" + bytes(range(0xF8, 0x100))
SIDS = {n: sid.to_bytes(f"{DOMAIN_SID}-{1100 + n}") for n in range(1, 9)}


# The two backends: the `backend` fixture in tests/directory/conftest.py.


def container(b: Backend, dn: str, *classes: str, **attrs: Value) -> None:
    values: dict[str, list[Value]] = {"objectClass": ["top", *(classes or ("container",))], "cn": [dnmod.rdn(dn)[1]]}
    values.update({k: [v] for k, v in attrs.items()})
    b.add(dn, values)


def user(b: Backend, name: str, *, parent: str = USERS, uac: int = 512, **attrs: Value | list[Value]) -> str:
    dn = dnmod.child(parent, "CN", name)
    values: dict[str, list[Value]] = {
        "objectClass": ["top", "person", "organizationalPerson", "user"],  # no sn: AD's person needs none
        "objectCategory": ["user"],
        "cn": [name],
        "name": [name],
        "sAMAccountName": [name.lower()],
        "userAccountControl": [uac],
    }
    for k, v in attrs.items():
        values[k] = v if isinstance(v, list) else [v]
    b.add(dn, values)
    return dn


def mailbox(n: int, db: str = DB1, **extra: Value) -> dict[str, Value]:
    return {"mailNickname": f"user{n}", "homeMDB": db, "homeMTA": MTA, "msExchHomeServerName": LEGACY,
            "msExchMailboxGUID": uuid.UUID(int=n).bytes_le, **extra}


def build_contoso(b: Backend) -> None:
    """The domain, the guide's configuration tree and users for the guide's filters."""
    b.add(ROOT, {"objectClass": ["top", "domain", "domainDNS"], "dc": ["contoso"],
                 "objectSid": [sid.to_bytes(DOMAIN_SID)]})
    for dn in (USERS, CONFIG, f"CN=Services,{CONFIG}", EXCHANGE):
        container(b, dn)
    container(b, ORG, "msExchOrganizationContainer", objectCategory="msExchOrganizationContainer")
    container(b, f"CN=Administrative Groups,{ORG}", "msExchAdminGroupContainer")
    container(b, AG, "msExchAdminGroup", objectCategory="msExchAdminGroup")
    container(b, f"CN=Servers,{AG}", "msExchServersContainer")
    container(b, SERVER, "server", "msExchExchangeServer", objectCategory="msExchExchangeServer",
              legacyExchangeDN=LEGACY)
    container(b, f"CN=InformationStore,{SERVER}", "msExchInformationStore", objectCategory="msExchInformationStore")
    container(b, MTA, "mTA", objectCategory="mTA")
    container(b, SG, "msExchStorageGroup", objectCategory="msExchStorageGroup", msExchESEParamBaseName="E00",
              msExchESEParamCircularLog=0)
    for db in (DB1, DB2):
        b.add(db, {"objectClass": ["top", "msExchMDB", "msExchPrivateMDB"], "objectCategory": ["msExchPrivateMDB"],
                   "cn": [dnmod.rdn(db)[1]], "msExchOwningServer": [SERVER]})
    # enabled, mailbox on DB1, with a master account SID: the guide's "bad enabled account"
    user(b, "User1", objectSid=SIDS[1], msExchUserAccountControl=0, msExchMasterAccountSid=SIDS[1], **mailbox(1))
    # disabled, mailbox on DB1, no master SID: what the guide's fix script looks for
    user(b, "User2", uac=514, objectSid=SIDS[2], msExchUserAccountControl=2, **mailbox(2))
    # disabled with a master SID (already fixed)
    user(b, "User3", uac=514, objectSid=SIDS[3], msExchUserAccountControl=2, msExchMasterAccountSid=sid.to_bytes(
        "S-1-5-10"), **mailbox(3))
    # enabled, no mailbox
    user(b, "User4", objectSid=SIDS[4])
    # disabled (514|32), mailbox on DB2 written in another case and spacing
    user(b, "User5", uac=546, objectSid=SIDS[5], **mailbox(5, db=DB2.lower().replace(",", ", ")))
    # enabled, mailbox on DB1 written in lower case; no master SID
    user(b, "User6", objectSid=SIDS[6], msExchUserAccountControl=0, **mailbox(6, db=DB1.lower()))
    # imported from AD: objectCategory is the schema DN; disabled, on DB1, no master SID
    user(b, "User7", uac=514, objectSid=SIDS[7], objectCategory=f"CN=Person,CN=Schema,{CONFIG}", **mailbox(7))
    # a group and an OU (core structural class) with Mailkeep attributes
    b.add(f"CN=Staff,{USERS}", {"objectClass": ["top", "group"], "objectCategory": ["group"], "cn": ["Staff"],
                                "member": [f"CN=User1,{USERS}", f"CN=User2,{USERS}"], "objectSid": [SIDS[8]]})
    b.add(f"OU=Sales,{ROOT}", {"objectClass": ["top", "organizationalUnit"], "ou": ["Sales"],
                               "objectCategory": ["organizationalUnit"], "description": ["Sales people"]})


def dns(entries: Iterator[Entry] | list[Entry]) -> set[str]:
    return {dnmod.normalize(e.dn) for e in entries}


def names(*dns_: str) -> set[str]:
    return {dnmod.normalize(d) for d in dns_}


def search(b: Backend, text: str, base: str = ROOT, scope: str = "subtree",
           attrs: list[str] | None = None) -> list[Entry]:
    return list(b.search(base, scope, filters.parse(text), attrs))  # type: ignore[arg-type]


def error_of(fn: object, *args: object, **kwargs: object) -> str:
    with pytest.raises(DirectoryError) as e:
        fn(*args, **kwargs)  # type: ignore[operator]
    return e.value.result


@pytest.fixture
def contoso(backend: Backend) -> Backend:
    build_contoso(backend)
    return backend


def u(n: int) -> str:
    return f"CN=User{n},{USERS}"


# -- add and get --------------------------------------------------------------------------------

def test_add_and_get_typed_values_canonical_names(backend: Backend) -> None:
    backend.add(ROOT, {"objectClass": ["top", "domain", "domainDNS"], "dc": ["contoso"]})
    container(backend, USERS)
    guid = uuid.uuid4().bytes_le
    backend.add(u(1), {"objectclass": ["top", "person", "organizationalPerson", "user"], "CN": ["User1"],
                       "samaccountname": ["user1"], "USERACCOUNTCONTROL": ["514"], "objectGUID": [guid],
                       "objectSid": [SIDS[1]], "proxyAddresses": ["SMTP:user1@contoso.com", "smtp:u1@contoso.com"],
                       "isDeleted": [False]})
    e = backend.get(u(1))
    assert e is not None and e.dn == u(1)
    assert e.attrs["objectClass"] == ["top", "person", "organizationalPerson", "user"]
    assert e.attrs["cn"] == ["User1"] and e.attrs["sAMAccountName"] == ["user1"]
    assert e.attrs["userAccountControl"] == [514] and isinstance(e.first("userAccountControl"), int)
    assert e.attrs["objectGUID"] == [guid] and e.attrs["objectSid"] == [SIDS[1]]
    assert e.attrs["proxyAddresses"] == ["SMTP:user1@contoso.com", "smtp:u1@contoso.com"]
    assert e.attrs["isDeleted"] == ["FALSE"]
    assert e.attrs["distinguishedName"] == [u(1)]
    assert set(e.attrs) == {"objectClass", "cn", "sAMAccountName", "userAccountControl", "objectGUID", "objectSid",
                            "proxyAddresses", "isDeleted", "distinguishedName"}
    assert backend.get(u(2)) is None
    assert backend.get(f"CN=Nobody,CN=Nowhere,{ROOT}") is None


def test_add_gives_an_object_guid(backend: Backend) -> None:
    backend.add(ROOT, {"objectClass": ["top", "domain", "domainDNS"], "dc": ["contoso"]})
    container(backend, USERS)
    guid = backend.get(USERS).first("objectGUID")  # type: ignore[union-attr]
    assert isinstance(guid, bytes) and len(guid) == 16
    err = error_of(backend.add, f"CN=Other,{ROOT}", {"objectClass": ["container"], "cn": ["Other"],
                                                     "objectGUID": [guid]})
    assert err == "entryAlreadyExists"


def test_add_needs_the_parent_and_a_new_name(contoso: Backend) -> None:
    assert error_of(contoso.add, f"CN=X,CN=Nowhere,{ROOT}", {"objectClass": ["container"], "cn": ["X"]}) \
        == "noSuchObject"
    assert error_of(user, contoso, "User1") == "entryAlreadyExists"
    assert error_of(user, contoso, "USER1") == "entryAlreadyExists"  # DNs compare case-insensitively


def test_add_checks_single_valued_and_duplicate_values(contoso: Backend) -> None:
    assert error_of(user, contoso, "Two", userAccountControl=[512, 514]) == "constraintViolation"
    assert error_of(user, contoso, "Two", displayName=["a", "b"]) == "constraintViolation"
    # cn is multi-valued in OpenLDAP's core schema, single-valued in Mailkeep's (as in AD)
    assert error_of(contoso.add, f"CN=Two,{USERS}", {"objectClass": ["container"], "cn": ["Two", "Deux"]}) \
        == "constraintViolation"
    assert error_of(user, contoso, "Two", proxyAddresses=["smtp:a@contoso.com", "SMTP:A@contoso.com"]) \
        == "attributeOrValueExists"
    assert contoso.get(f"CN=Two,{USERS}") is None


# -- modify -------------------------------------------------------------------------------------

def test_modify_add_replace_delete(contoso: Backend) -> None:
    dn = u(4)
    contoso.modify(dn, [Change("add", "proxyAddresses", ("SMTP:user4@contoso.com",)),
                        Change("add", "proxyAddresses", ("smtp:u4@contoso.com",)),
                        Change("replace", "userAccountControl", (514,)),
                        Change("replace", "homeMDB", (DB1,))])
    e = contoso.get(dn)
    assert e is not None
    assert e.get("proxyAddresses") == ["SMTP:user4@contoso.com", "smtp:u4@contoso.com"]
    assert e.get("userAccountControl") == [514] and e.get("homeMDB") == [DB1]
    contoso.modify(dn, [Change("delete", "proxyAddresses", ("SMTP:U4@CONTOSO.COM",))])  # the equality rule
    assert contoso.get(dn).get("proxyAddresses") == ["SMTP:user4@contoso.com"]  # type: ignore[union-attr]
    contoso.modify(dn, [Change("delete", "homeMDB", ())])
    assert not contoso.get(dn).has("homeMDB")  # type: ignore[union-attr]
    contoso.modify(dn, [Change("replace", "msExchMasterAccountSid", ())])  # replace with nothing: no-op if absent
    contoso.modify(dn, [Change("replace", "proxyAddresses", ("smtp:a@contoso.com", "SMTP:b@contoso.com"))])
    assert contoso.get(dn).get("proxyAddresses") == ["smtp:a@contoso.com", "SMTP:b@contoso.com"]  # type: ignore


@pytest.mark.parametrize("changes, result", [
    ([Change("add", "sAMAccountName", ("user4",))], "attributeOrValueExists"),
    ([Change("add", "proxyAddresses", ("smtp:x@contoso.com", "SMTP:X@contoso.com"))], "attributeOrValueExists"),
    ([Change("add", "userAccountControl", (514,))], "constraintViolation"),
    ([Change("replace", "userAccountControl", (512, 514))], "constraintViolation"),
    ([Change("add", "cn", ("Another",))], "constraintViolation"),
    ([Change("delete", "homeMDB", ())], "noSuchAttribute"),
    ([Change("delete", "sAMAccountName", ("someoneelse",))], "noSuchAttribute"),
    ([Change("replace", "objectGUID", (b"\x01" * 16,))], "constraintViolation"),
    ([Change("replace", "cn", ("Renamed",))], "notAllowedOnRDN"),
    # the first change is fine, the second fails: nothing is applied
    ([Change("replace", "displayName", ("Changed",)), Change("delete", "mail", ())], "noSuchAttribute"),
])
def test_modify_errors_leave_the_entry_alone(contoso: Backend, changes: list[Change], result: str) -> None:
    before = contoso.get(u(4))
    assert error_of(contoso.modify, u(4), changes) == result
    assert contoso.get(u(4)) == before


def test_modify_of_a_missing_entry(contoso: Backend) -> None:
    assert error_of(contoso.modify, u(99), [Change("replace", "displayName", ("x",))]) == "noSuchObject"


def test_modify_of_the_object_classes_keeps_the_ad_names(contoso: Backend) -> None:
    contoso.modify(u(4), [Change("replace", "description", ("a person without sn",))])
    e = contoso.get(u(4))
    assert e is not None and e.get("objectClass") == ["top", "person", "organizationalPerson", "user"]
    contoso.modify(u(4), [Change("replace", "objectClass", ("top", "user", "organizationalPerson", "person"))])
    e = contoso.get(u(4))
    assert e is not None and e.get("objectClass") == ["top", "user", "organizationalPerson", "person"]
    assert dns(search(contoso, "(&(objectClass=person)(sAMAccountName=user4))")) == names(u(4))


# -- delete and rename --------------------------------------------------------------------------

def test_delete(contoso: Backend) -> None:
    assert error_of(contoso.delete, USERS) == "notAllowedOnNonLeaf"
    assert error_of(contoso.delete, u(99)) == "noSuchObject"
    contoso.delete(u(4).upper())
    assert contoso.get(u(4)) is None
    assert contoso.get(USERS) is not None


def test_rename_within_the_parent(contoso: Backend) -> None:
    guid = contoso.get(u(4)).first("objectGUID")  # type: ignore[union-attr]
    new = contoso.rename(u(4), "CN=User4b")
    assert dnmod.normalize(new) == dnmod.normalize(f"CN=User4b,{USERS}")
    assert contoso.get(u(4)) is None
    e = contoso.get(new)
    assert e is not None and e.dn == f"CN=User4b,{USERS}"
    assert e.get("cn") == ["User4b"] and e.get("name") == ["User4b"]
    assert e.first("objectGUID") == guid and e.get("distinguishedName") == [f"CN=User4b,{USERS}"]
    assert dns(search(contoso, "(sAMAccountName=user4)")) == names(f"CN=User4b,{USERS}")


def test_rename_across_parents_moves_the_children(contoso: Backend) -> None:
    container(contoso, f"CN=Old,{USERS}")
    user(contoso, "Kid1", parent=f"CN=Old,{USERS}")
    user(contoso, "Kid2", parent=f"CN=Old,{USERS}")
    new = contoso.rename(f"CN=Old,{USERS}", "CN=New", f"OU=Sales,{ROOT}")
    assert dnmod.normalize(new) == dnmod.normalize(f"CN=New,OU=Sales,{ROOT}")
    assert contoso.get(f"CN=Kid1,CN=Old,{USERS}") is None
    kid = contoso.get(f"CN=Kid1,CN=New,OU=Sales,{ROOT}")
    assert kid is not None and kid.dn == f"CN=Kid1,CN=New,OU=Sales,{ROOT}"
    assert kid.get("distinguishedName") == [f"CN=Kid1,CN=New,OU=Sales,{ROOT}"]
    assert dns(search(contoso, "(objectClass=*)", f"OU=Sales,{ROOT}", "one")) == names(f"CN=New,OU=Sales,{ROOT}")
    assert dns(search(contoso, "(sAMAccountName=kid*)")) == names(
        f"CN=Kid1,CN=New,OU=Sales,{ROOT}", f"CN=Kid2,CN=New,OU=Sales,{ROOT}")
    assert error_of(lambda: list(search(contoso, "(objectClass=*)", f"CN=Old,{USERS}"))) == "noSuchObject"


def test_rename_errors(contoso: Backend) -> None:
    assert error_of(contoso.rename, u(99), "CN=User99b") == "noSuchObject"
    assert error_of(contoso.rename, u(4), "CN=User1") == "entryAlreadyExists"
    assert error_of(contoso.rename, u(4), "CN=User4", f"CN=Nowhere,{ROOT}") == "noSuchObject"
    assert contoso.get(u(4)) is not None


# -- search -------------------------------------------------------------------------------------

def test_scopes(contoso: Backend) -> None:
    assert dns(search(contoso, "(objectClass=*)", SG, "base")) == names(SG)
    assert dns(search(contoso, "(objectClass=*)", SG, "one")) == names(DB1, DB2)
    assert dns(search(contoso, "(objectClass=*)", SERVER, "subtree")) == names(
        SERVER, f"CN=InformationStore,{SERVER}", MTA, SG, DB1, DB2)
    assert dns(search(contoso, "(objectClass=*)", USERS, "one")) == names(*(u(n) for n in range(1, 8)),
                                                                         f"CN=Staff,{USERS}")
    assert len(search(contoso, "(objectClass=*)")) == 15 + 7 + 2
    assert len(search(contoso, "(objectClass=*)", "", "subtree")) == 15 + 7 + 2  # the root: everything
    assert search(contoso, "(objectClass=*)", "", "one") == search(contoso, "(objectClass=*)", "", "base") == []
    assert error_of(lambda: list(search(contoso, "(objectClass=*)", f"CN=Nowhere,{ROOT}"))) == "noSuchObject"


@pytest.mark.parametrize("text, expected", [
    # the guide's audit of enabled accounts that have a master account SID
    (BAD_ENABLED, {1}),
    # the guide's fix script: disabled mailbox accounts without a master account SID
    (DISABLED_WITHOUT_SID, {2, 5, 7}),
    # the guide's re-home script, any case and spacing of the stored homeMDB
    (GUIDE_DB1_FILTER, {1, 2, 3, 6, 7}),
    (GUIDE_DB1_FILTER.lower(), {1, 2, 3, 6, 7}),
    # as AD writes it, without the outer parentheses rule: ! directly before an item
    ("(&(objectCategory=user)(!userAccountControl:1.2.840.113556.1.4.803:=2)((msExchMasterAccountSid=*))"
     "(msExchHomeServerName=*)(homeMDB=*))", {1}),
    ("(&(objectCategory=person)(objectClass=user)(homeMDB=*))", {7}),  # only User7's category is a DN
    ("(objectClass=person)", {1, 2, 3, 4, 5, 6, 7}),
    ("(objectClass=organizationalPerson)", {1, 2, 3, 4, 5, 6, 7}),
    ("(&(objectClass=user)(!(objectClass=person)))", set()),
    ("(objectCategory=user)", {1, 2, 3, 4, 5, 6, 7}),
    ("(!(objectCategory=user))", "others"),
    ("(userAccountControl:1.2.840.113556.1.4.804:=34)", {2, 3, 5, 7}),
    ("(userAccountControl:1.2.840.113556.1.4.803:=34)", {5}),
    ("(&(objectCategory=user)(!(userAccountControl:1.2.840.113556.1.4.803:=2)))", {1, 4, 6}),
    ("(&(userAccountControl>=514)(userAccountControl<=520))", {2, 3, 7}),
    ("(userAccountControl=0514)", {2, 3, 7}),
    ("(msExchUserAccountControl=2)", {2, 3}),
    ("(!(msExchUserAccountControl=2))", "others+1,4,5,6,7"),
    ("(|(sAMAccountName=user1)(sAMAccountName=USER4))", {1, 4}),
    ("(sAMAccountName=user*)", {1, 2, 3, 4, 5, 6, 7}),
    ("(sAMAccountName=*er6)", {6}),
    ("(&(objectCategory=user)(!(homeMDB=CN=DB1,CN=SG1,CN=InformationStore,CN=Exchange1,CN=Servers,CN=AG1,"
     "CN=Administrative Groups,CN=Organization,CN=Microsoft Exchange,CN=Services,CN=Configuration,"
     "DC=contoso,DC=com)))", {4, 5}),
    ("(&(objectCategory=user)(!(sAMAccountName=user1)))", {2, 3, 4, 5, 6, 7}),
    ("(homeMDB=cn=db2, cn=sg1,cn=informationstore,cn=exchange1,cn=servers,cn=ag1,cn=administrative groups,"
     "cn=organization,cn=microsoft exchange,cn=services,cn=configuration,dc=contoso,dc=com)", {5}),
    ("(homeMDB=*SG1*)", {1, 2, 3, 5, 6, 7}),
    ("(msExchHomeServerName=/O=ORGANIZATION/OU=AG1/cn=Configuration/cn=Servers/cn=Exchange1)", {1, 2, 3, 5, 6, 7}),
    ("(distinguishedName=cn=user3,cn=users,dc=contoso,dc=com)", {3}),
    ("(name=User2)", {2}),
    ("(&(objectCategory=user)(!(name=User2)))", {1, 3, 4, 5, 6, 7}),
    ("(cn:dn:=Users)", "under-users"),
    ("(mailNickname~=USER3)", {3}),
    ("(member=CN=user2,CN=users,DC=contoso,DC=com)", "staff"),
    ("(nosuchattribute=*)", set()),
    ("(&(objectCategory=user)(!(nosuchattribute=x)))", {1, 2, 3, 4, 5, 6, 7}),
])
def test_filters(contoso: Backend, text: str, expected: set[int] | str) -> None:
    everything = dns(search(contoso, "(objectClass=*)"))
    users = names(*(u(n) for n in range(1, 8)))
    want: set[str]
    if expected == "others":
        want = everything - users
    elif isinstance(expected, str) and expected.startswith("others+"):
        want = (everything - users) | names(*(u(int(n)) for n in expected[7:].split(",")))
    elif expected == "under-users":
        want = {d for d in everything if d.endswith(dnmod.normalize(USERS))}
    elif expected == "staff":
        want = names(f"CN=Staff,{USERS}")
    else:
        assert isinstance(expected, set)
        want = names(*(u(n) for n in expected))
    assert dns(search(contoso, text)) == want


def test_search_by_binary_values(contoso: Backend) -> None:
    def esc(data: bytes) -> str:
        return "".join(f"\\{b:02x}" for b in data)

    assert dns(search(contoso, f"(objectSid={esc(SIDS[2])})")) == names(u(2))
    assert dns(search(contoso, f"(msExchMailboxGUID={esc(uuid.UUID(int=6).bytes_le)})")) == names(u(6))
    contoso.modify(u(4), [Change("replace", "msExchMailboxGUID", (AWKWARD_GUID,))])
    assert dns(search(contoso, f"(msExchMailboxGUID={esc(AWKWARD_GUID)})")) == names(u(4))
    assert dns(search(contoso, f"(msExchMailboxGUID={esc(AWKWARD_GUID[:4])}*)")) == names(u(4))
    assert dns(search(contoso, f"(&(objectCategory=user)(!(objectSid={esc(SIDS[2])})))")) == names(
        *(u(n) for n in (1, 3, 4, 5, 6, 7)))


def test_attribute_selection(contoso: Backend) -> None:
    [e] = search(contoso, "(sAMAccountName=user1)", attrs=["sAMAccountName", "HOMEMDB", "msExchMailboxGUID"])
    assert e.attrs == {"sAMAccountName": ["user1"], "homeMDB": [DB1], "msExchMailboxGUID": [uuid.UUID(int=1).bytes_le]}
    [e] = search(contoso, "(homeMDB=*)", base=u(2), scope="base", attrs=[])
    assert e.attrs == {} and e.dn == u(2)
    [e] = search(contoso, "(objectClass=*)", base=u(2), scope="base", attrs=["name", "distinguishedName"])
    assert e.attrs == {"name": ["User2"], "distinguishedName": [u(2)]}  # name does not bring cn along
    [full] = search(contoso, "(objectClass=*)", base=u(2), scope="base", attrs=["*"])
    assert full == contoso.get(u(2))
    assert full.attrs["homeMTA"] == [MTA]
    # the filter's attributes need not be among those returned
    got = search(contoso, "(&(userAccountControl:1.2.840.113556.1.4.803:=2)(homeMDB=*))", attrs=["cn"])
    assert {str(e.first("cn")) for e in got} == {"User2", "User3", "User5", "User7"}
    assert all(set(e.attrs) == {"cn"} for e in got)


def test_binary_and_integer_values_round_trip(contoso: Backend) -> None:
    big = 2**31 + 5
    contoso.modify(u(4), [Change("replace", "objectSid", (AWKWARD_GUID,)),
                          Change("replace", "msExchMasterAccountSid", (sid.to_bytes("S-1-5-10"),)),
                          Change("replace", "msExchMailboxGUID", (b"\x00" * 16,)),
                          Change("replace", "userAccountControl", (big,)),
                          Change("replace", "msExchUserAccountControl", ("-1",))])
    e = contoso.get(u(4))
    assert e is not None
    assert e.get("objectSid") == [AWKWARD_GUID]
    assert e.get("msExchMasterAccountSid") == [sid.to_bytes("S-1-5-10")]
    assert e.get("msExchMailboxGUID") == [b"\x00" * 16]
    assert e.get("userAccountControl") == [big] and e.get("msExchUserAccountControl") == [-1]
    root = contoso.get(ROOT)
    assert root is not None and sid.to_text(root.first("objectSid")) == DOMAIN_SID  # type: ignore[arg-type]
    sg = contoso.get(SG)
    assert sg is not None and sg.first("msExchESEParamCircularLog") == 0
    assert type(sg.first("msExchESEParamCircularLog")) is int
    for e in search(contoso, "(objectCategory=user)"):
        assert all(isinstance(v, int) for v in e.get("userAccountControl"))
        assert all(isinstance(v, bytes) and len(v) == 16 for v in e.get("objectGUID"))


def test_dns_match_case_insensitively(contoso: Backend) -> None:
    lower = u(1).lower()
    e = contoso.get(lower)
    assert e is not None and e.dn == u(1)  # written back as it was added
    assert contoso.get(u(1).upper().replace(",", ", ")) is not None
    assert dns(search(contoso, "(objectClass=*)", SG.lower(), "one")) == names(DB1, DB2)
    contoso.modify(u(1).upper(), [Change("replace", "displayName", ("One",))])
    assert contoso.get(u(1)).text("displayName") == "One"  # type: ignore[union-attr]
    # a DN value comes back as the same name (OpenLDAP rewrites it in AD's form: CN=, no spaces
    # after the commas); one written in AD's form comes back exactly
    assert [dnmod.normalize(str(v)) for v in contoso.get(u(6)).get("homeMDB")] == [  # type: ignore[union-attr]
        dnmod.normalize(DB1)]
    assert contoso.get(u(1)).get("homeMDB") == [DB1]  # type: ignore[union-attr]


def test_names_with_special_characters(contoso: Backend) -> None:
    name = 'Smith, John (Sales) * "Q" + #1 \\ é'
    dn = dnmod.child(USERS, "CN", name)
    user(contoso, name)
    e = contoso.get(dn)
    assert e is not None and e.dn == dn and e.get("cn") == [name]
    assert dns(search(contoso, r"(cn=Smith, John \28Sales\29 \2a*)")) == names(dn)
    assert dns(search(contoso, f"(cn={filters.to_string(filters.Equal('cn', name))[4:-1]})")) == names(dn)
    assert dns(search(contoso, "(cn=*é)")) == names(dn)
    new = contoso.rename(dn, "CN=" + dnmod.escape_value(name + " 2"))
    assert contoso.get(new) is not None and contoso.get(new).get("name") == [name + " 2"]  # type: ignore[union-attr]


def test_many_results_and_changes_while_iterating(contoso: Backend) -> None:
    container(contoso, f"CN=Bulk,{ROOT}")
    for i in range(30):
        contoso.add(f"CN=Item{i:02},CN=Bulk,{ROOT}", {"objectClass": ["top", "container"], "cn": [f"Item{i:02}"],
                                                       "userAccountControl": [i]})
    seen = []
    for e in contoso.search(f"CN=Bulk,{ROOT}", "one", filters.parse("(userAccountControl>=5)")):
        seen.append(e.dn)
        contoso.modify(e.dn, [Change("replace", "description", ("seen",))])  # the backend, mid-search
        assert contoso.get(e.dn) is not None
    assert len(seen) == 25
    assert len(search(contoso, "(description=seen)", f"CN=Bulk,{ROOT}")) == 25
    # a search left unfinished does not disturb the next ones
    it = contoso.search(f"CN=Bulk,{ROOT}", "one", filters.parse("(objectClass=*)"))
    next(it)
    del it
    assert len(search(contoso, "(objectClass=*)", f"CN=Bulk,{ROOT}", "one")) == 30


def test_directory_api_runs_on_the_backend(backend: Backend) -> None:
    """Mailkeep's own objects (users without sn, the configuration tree) fit both backends."""
    d = Directory(backend, "contoso.com")
    d.ensure_base()
    server = d.add_server("Organization", "AG1", "Exchange1")
    sg = d.add_storage_group(server.dn, "SG1")
    d.add_database(sg.dn, "DB1")
    user1 = d.add_user("User1", password_text="pw", mailNickname="user1", homeMDB=DB1)
    assert user1.get("homeMTA") == [MTA] and user1.first("msExchUserAccountControl") == 0
    assert d.authenticate("user1", "pw") is not None
    assert [e.dn for e in d.users()] == [user1.dn]
    assert d.get_by_guid(user1.first("objectGUID")).dn == user1.dn  # type: ignore[arg-type,union-attr]
    assert d.tombstone_lifetime_days == 60


# -- the LDAP side in particular -----------------------------------------------------------------

def test_server_filter_translation() -> None:
    def tr(text: str) -> str:
        return filters.to_string(server_filter(filters.parse(text)))

    assert tr(DISABLED_WITHOUT_SID) == (
        "(&(|(objectCategory=user)(objectCategory=*=*))(userAccountControl=*)(!(msExchMasterAccountSid=*))"
        "(msExchHomeServerName=*)(homeMDB=*))")
    assert tr(BAD_ENABLED) == (
        "(&(|(objectCategory=user)(objectCategory=*=*))(msExchUserAccountControl=0)(msExchMasterAccountSid=*))")
    assert tr(GUIDE_DB1_FILTER) == GUIDE_DB1_FILTER
    assert tr("(!(userAccountControl:1.2.840.113556.1.4.803:=2))") == "(objectClass=*)"
    assert tr("(!(sAMAccountName=x))") == "(objectClass=*)"
    assert tr("(userAccountControl=007)") == "(userAccountControl=7)"
    assert tr("(userAccountControl=abc)") == "(!(objectClass=*))"
    assert tr("(objectClass=person)") == "(|(objectClass=person)(objectClass=mailkeepPerson))"
    assert tr("(isDeleted=true)") == "(isDeleted=TRUE)"


def test_object_class_translation() -> None:
    ad = ["top", "person", "organizationalPerson", "user"]
    assert stored_classes(ad) == ["top", "mailkeepPerson", "mailkeepOrganizationalPerson", "user", "mailkeepObject"]
    assert ad_classes(stored_classes(ad)) == ad
    assert stored_classes(["top", "organizationalUnit"]) == ["top", "organizationalUnit", "mailkeepObject"]
    inet = ["top", "person", "organizationalPerson", "inetOrgPerson"]  # not an AD person: left as it is
    assert stored_classes(inet) == [*inet, "mailkeepObject"]


def test_schema_file_declares_every_mailkeep_attribute() -> None:
    text = (Path(schema.__file__).parent / "schema" / "mailkeep.ldif").read_text(encoding="utf-8")
    declared = {}
    for m in re.finditer(r"olcAttributeTypes: \( (\S+) NAME '(\w+)'(.*?)\)\n(?=olc|\Z)", text, re.S):
        declared[m.group(2).lower()] = " ".join(m.group(3).split())
    assert "1.3.6.1.4.1.99999" in text
    in_core = {"objectclass", "cn", "name", "distinguishedname", "displayname", "givenname", "sn", "description",
               "member", "dc", "ou", "mail"}
    syntaxes = {schema.STRING: "1.3.6.1.4.1.1466.115.121.1.15", schema.INTEGER: "1.3.6.1.4.1.1466.115.121.1.27",
                schema.BINARY: "1.3.6.1.4.1.1466.115.121.1.40", schema.BOOLEAN: "1.3.6.1.4.1.1466.115.121.1.7",
                schema.DN: "1.3.6.1.4.1.1466.115.121.1.12"}
    for a in schema.ATTRIBUTES.values():
        if a.name.lower() in in_core:
            assert a.name.lower() not in declared
            continue
        spec = declared[a.name.lower()]
        assert f"SYNTAX {syntaxes[a.syntax]}" in spec, a.name
        assert ("SINGLE-VALUE" in spec) == a.single, a.name
        if a.syntax == schema.INTEGER:
            assert "EQUALITY integerMatch ORDERING integerOrderingMatch" in spec
        if a.syntax == schema.BINARY:
            assert "EQUALITY octetStringMatch" in spec
    assert set(declared) <= set(schema.ATTRIBUTES)


def test_ldap_backend_reports_an_unreachable_server() -> None:
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.monotonic()
    with pytest.raises(DirectoryError) as e:
        LdapBackend(f"ldap://127.0.0.1:{port}", "CN=admin,DC=contoso,DC=com", "x", base_dn=ROOT, timeout=2)
    assert e.value.result == "unavailable" and f"127.0.0.1:{port}" in str(e.value)
    assert time.monotonic() - start < 10


def test_ldap_backend_reports_a_wrong_password(slapd: SlapdInfo) -> None:
    url, bind_dn, _password, base_dn = slapd
    with pytest.raises(DirectoryError) as e:
        LdapBackend(url, bind_dn, "wrong", base_dn=base_dn)
    assert e.value.result == "invalidCredentials" and "password" in str(e.value)


def test_ldap_backend_finds_its_naming_context(slapd: SlapdInfo) -> None:
    url, bind_dn, password, _base_dn = slapd
    b = LdapBackend(url, bind_dn, password)
    try:
        assert b.base_dn == ROOT
    finally:
        b.close()
