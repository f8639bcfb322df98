"""The directory API the rest of Mailkeep uses: one class over any backend.

Invariants:
- Objects are found by DN (case-insensitive) or by objectGUID; every object gets an
  objectGUID when it is added, every user and group an objectSid in the domain's SID space.
- Passwords are stored only as scrypt hashes; an account whose userAccountControl has the
  ACCOUNTDISABLE bit (2) cannot authenticate.
- After every add or modify of a user, the Recipient Update Service completes a user that
  has mailNickname plus any of homeMDB / homeMTA / msExchHomeServerName (rus.py).
- The configuration tree uses the DN forms of the guide's homeMDB examples:
  ``CN=DB1,CN=SG1,CN=InformationStore,CN=Exchange1,CN=Servers,CN=AG1,CN=Administrative Groups,
  CN=Organization,CN=Microsoft Exchange,CN=Services,CN=Configuration,DC=contoso,DC=com``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mailkeep.directory import dn as dnmod
from mailkeep.directory import filters, password, sid
from mailkeep.directory.backend import Backend, Change, DirectoryError, Entry, Scope, Value

UF_ACCOUNTDISABLE = 0x2
UF_NORMAL_ACCOUNT = 0x200
TOMBSTONE_LIFETIME_DAYS = 60


def escape_filter_value(value: str | bytes) -> str:
    if isinstance(value, bytes):
        return "".join(f"\\{b:02x}" for b in value)
    out = []
    for ch in value:
        out.append(f"\\{ord(ch):02x}" if ch in "*()\\\0" else ch)
    return "".join(out)


class Directory:
    def __init__(self, backend: Backend, domain: str) -> None:
        self.backend = backend
        self.domain = domain.lower().strip(".")
        self.domain_dn = dnmod.domain_to_dn(self.domain)
        self.users_dn = f"CN=Users,{self.domain_dn}"
        self.config_dn = f"CN=Configuration,{self.domain_dn}"
        self.services_dn = f"CN=Services,{self.config_dn}"
        self.exchange_dn = f"CN=Microsoft Exchange,{self.services_dn}"
        self.ds_dn = f"CN=Directory Service,CN=Windows NT,{self.services_dn}"
        self.rus_enabled = True

    # -- set-up ----------------------------------------------------------------------------
    def ensure_base(self) -> None:
        """The domain root, CN=Users and the configuration containers (idempotent)."""
        root = self.backend.get(self.domain_dn)
        if root is None:
            label = self.domain.split(".")[0]
            self.backend.add(self.domain_dn, {
                "objectClass": ["top", "domain", "domainDNS"],
                "dc": [label],
                "objectSid": [sid.to_bytes(sid.new_domain_sid())],
            })
        elif not root.has("objectSid"):  # a root made by an LDAP server's own set-up
            self.backend.modify(self.domain_dn, [Change("replace", "objectSid", (sid.to_bytes(sid.new_domain_sid()),))])
        for d in (self.users_dn, self.config_dn, self.services_dn,
                  f"CN=Windows NT,{self.services_dn}", self.ds_dn, self.exchange_dn):
            if self.backend.get(d) is None:
                extra: dict[str, list[Value]] = {}
                if d == self.ds_dn:
                    extra["tombstoneLifetime"] = [TOMBSTONE_LIFETIME_DAYS]
                self.backend.add(d, {"objectClass": ["top", "container"], "cn": [dnmod.rdn(d)[1]], **extra})

    @property
    def tombstone_lifetime_days(self) -> int:
        e = self.backend.get(self.ds_dn)
        v = e.first("tombstoneLifetime") if e else None
        return int(v) if isinstance(v, int) else TOMBSTONE_LIFETIME_DAYS

    # -- generic ---------------------------------------------------------------------------
    def get(self, dn: str) -> Entry | None:
        return self.backend.get(dn)

    def require(self, dn: str) -> Entry:
        e = self.backend.get(dn)
        if e is None:
            raise DirectoryError("noSuchObject", f"{dn} does not exist")
        return e

    def get_by_guid(self, guid: bytes | uuid.UUID) -> Entry | None:
        raw = guid.bytes_le if isinstance(guid, uuid.UUID) else guid
        found = list(self.search(self.domain_dn, f"(objectGUID={escape_filter_value(raw)})"))
        return found[0] if found else None

    def search(
        self, base: str | None, flt: str | filters.Filter = "(objectClass=*)",
        scope: Scope = "subtree", attrs: Sequence[str] | None = None,
    ) -> Iterator[Entry]:
        f = filters.parse(flt) if isinstance(flt, str) else flt
        return self.backend.search(base if base is not None else self.domain_dn, scope, f, attrs)

    def add(self, dn: str, attrs: Mapping[str, Sequence[Value]]) -> Entry:
        attrs = dict(attrs)
        attrs.setdefault("objectGUID", [uuid.uuid4().bytes_le])
        classes = {str(c).lower() for c in attrs.get("objectClass", [])}
        if classes & {"user", "group"} and "objectSid" not in attrs:
            attrs["objectSid"] = [self._new_sid()]
        self.backend.add(dn, attrs)
        return self._after_change(dn)

    def modify(self, dn: str, changes: Sequence[Change]) -> Entry:
        self.backend.modify(dn, changes)
        return self._after_change(dn)

    def replace(self, dn: str, **attrs: Any) -> Entry:
        """Replace (or, with None / [], remove) attributes: ``replace(dn, homeMDB=...)``."""
        changes = []
        for name, value in attrs.items():
            values = [] if value is None else list(value) if isinstance(value, (list, tuple)) else [value]
            changes.append(Change("replace", name, tuple(values)))
        return self.modify(dn, changes)

    def delete(self, dn: str) -> None:
        self.backend.delete(dn)

    def rename(self, dn: str, new_rdn: str, new_parent: str | None = None) -> str:
        return self.backend.rename(dn, new_rdn, new_parent)

    def _after_change(self, dn: str) -> Entry:
        e = self.require(dn)
        if self.rus_enabled and "user" in {str(c).lower() for c in e.get("objectClass")}:
            from mailkeep.directory import rus

            changes = rus.completion(self, e)
            if changes:
                self.backend.modify(dn, changes)
                e = self.require(dn)
        return e

    def _new_sid(self) -> bytes:
        root = self.require(self.domain_dn)
        dom = root.first("objectSid")
        if not isinstance(dom, bytes):
            raise DirectoryError("unwillingToPerform", f"{self.domain_dn} has no domain SID")
        base = sid.to_text(dom)
        for _ in range(20):
            rid = 1000 + int.from_bytes(os.urandom(4), "little") % 0x7FFF0000
            candidate = sid.to_bytes(f"{base}-{rid}")
            if not list(self.search(self.domain_dn, f"(objectSid={escape_filter_value(candidate)})")):
                return candidate
        raise DirectoryError("other", "could not allocate a unique SID")

    # -- users -----------------------------------------------------------------------------
    def add_user(
        self, name: str, *, password_text: str | None = None, display_name: str | None = None,
        container: str | None = None, disabled: bool = False, **attrs: Any,
    ) -> Entry:
        if self.find_user(name) is not None:
            raise DirectoryError("entryAlreadyExists", f"a user named {name!r} already exists")
        values: dict[str, list[Value]] = {
            "objectClass": ["top", "person", "organizationalPerson", "user"],
            "objectCategory": ["user"],
            "cn": [name],
            "name": [name],
            "sAMAccountName": [name],
            "userPrincipalName": [f"{name}@{self.domain}"],
            "displayName": [display_name or name],
            "userAccountControl": [UF_NORMAL_ACCOUNT | (UF_ACCOUNTDISABLE if disabled else 0)],
        }
        if password_text is not None:
            values["passwordHash"] = [password.hash_password(password_text)]
        for k, v in attrs.items():
            if v is not None:
                values[k] = list(v) if isinstance(v, (list, tuple)) else [v]
        return self.add(dnmod.child(container or self.users_dn, "CN", name), values)

    def find_user(self, name: str) -> Entry | None:
        """A user by DN, sAMAccountName, userPrincipalName, mail or mailNickname."""
        if "=" in name:
            try:
                e = self.backend.get(name)
            except (DirectoryError, dnmod.DnError):  # not a DN after all: look it up as a name
                e = None
            if e is not None and "user" in {str(c).lower() for c in e.get("objectClass")}:
                return e
        v = escape_filter_value(name)
        flt = (f"(&(objectCategory=user)(|(sAMAccountName={v})(userPrincipalName={v})(mail={v})"
               f"(mailNickname={v})))")
        found = list(self.search(self.domain_dn, flt))
        if len(found) > 1:
            raise DirectoryError("other", f"{name!r} names {len(found)} users; use the DN")
        return found[0] if found else None

    def require_user(self, name: str) -> Entry:
        e = self.find_user(name)
        if e is None:
            raise DirectoryError("noSuchObject", f"no user {name!r}: check the name (mailkeep user list)")
        return e

    def users(self) -> Iterator[Entry]:
        return self.search(self.domain_dn, "(objectCategory=user)")

    def set_password(self, name: str, password_text: str) -> None:
        u = self.require_user(name)
        self.backend.modify(u.dn, [Change("replace", "passwordHash", (password.hash_password(password_text),))])

    def set_disabled(self, name: str, disabled: bool) -> Entry:
        u = self.require_user(name)
        uac = u.first("userAccountControl")
        flags = uac if isinstance(uac, int) else UF_NORMAL_ACCOUNT
        flags = flags | UF_ACCOUNTDISABLE if disabled else flags & ~UF_ACCOUNTDISABLE
        return self.modify(u.dn, [Change("replace", "userAccountControl", (flags,))])

    @staticmethod
    def is_disabled(user: Entry) -> bool:
        uac = user.first("userAccountControl")
        return isinstance(uac, int) and bool(uac & UF_ACCOUNTDISABLE)

    def authenticate(self, name: str, password_text: str) -> Entry | None:
        """The user if the password is right and the account is enabled, else None."""
        try:
            u = self.find_user(name)
        except DirectoryError:
            return None
        if u is None:
            password.verify_password(password_text, password.hash_password("x"))  # same cost either way
            return None
        stored = u.text("passwordHash")
        if not stored or not password.verify_password(password_text, stored):
            return None
        return None if self.is_disabled(u) else u

    def mailbox_owners(self, mailbox_guid: bytes) -> list[Entry]:
        """Mailbox-enabled users whose msExchMailboxGUID is ``mailbox_guid``."""
        flt = f"(&(objectCategory=user)(msExchMailboxGUID={escape_filter_value(mailbox_guid)})(homeMDB=*))"
        return list(self.search(self.domain_dn, flt))

    def check_mailbox_guid(self, mailbox_guid: bytes) -> Entry | None:
        """The one account connected to a mailbox GUID; two accounts with one GUID are
        refused (the guide: only one mailbox with a GUID can be connected at a time)."""
        owners = self.mailbox_owners(mailbox_guid)
        if len(owners) > 1:
            raise DirectoryError(
                "constraintViolation",
                f"mailbox GUID {uuid.UUID(bytes_le=mailbox_guid)} is set on {len(owners)} accounts "
                f"({', '.join(o.dn for o in owners)}); only one may be connected. Change or remove "
                "msExchMailboxGUID on all but one.",
            )
        return owners[0] if owners else None

    # -- configuration tree ------------------------------------------------------------------
    def org_dn(self, org: str) -> str:
        return f"CN={dnmod.escape_value(org)},{self.exchange_dn}"

    def admin_group_dn(self, org: str, admin_group: str) -> str:
        return f"CN={dnmod.escape_value(admin_group)},CN=Administrative Groups,{self.org_dn(org)}"

    def server_dn(self, org: str, admin_group: str, server: str) -> str:
        return f"CN={dnmod.escape_value(server)},CN=Servers,{self.admin_group_dn(org, admin_group)}"

    def _ensure(self, dn: str, classes: list[str], **attrs: Any) -> Entry:
        e = self.backend.get(dn)
        if e is not None:
            return e
        values: dict[str, list[Value]] = {"objectClass": ["top", *classes], "cn": [dnmod.rdn(dn)[1]]}
        for k, v in attrs.items():
            values[k] = list(v) if isinstance(v, (list, tuple)) else [v]
        return self.add(dn, values)

    def add_organization(self, org: str) -> Entry:
        self.ensure_base()
        e = self._ensure(
            self.org_dn(org), ["msExchOrganizationContainer"], objectCategory="msExchOrganizationContainer"
        )
        self._ensure(f"CN=Administrative Groups,{e.dn}", ["msExchAdminGroupContainer"])
        policies = self._ensure(f"CN=Recipient Policies,{e.dn}", ["msExchRecipientPolicyContainer"])
        self._ensure(
            f"CN=Default Policy,{policies.dn}", ["msExchRecipientPolicy"], objectCategory="msExchRecipientPolicy",
            gatewayProxy=[f"SMTP:@{self.domain}"],
        )
        return e

    def recipient_policy_addresses(self, org: str | None, nickname: str) -> list[str]:
        """proxyAddresses from the organization's Default Policy (``SMTP:@contoso.com``
        makes ``SMTP:nick@contoso.com``; lower-case ``smtp:`` entries become secondary
        addresses). Without a policy: ``SMTP:nick@<domain>``."""
        templates: list[str] = []
        if org:
            policy = self.get(f"CN=Default Policy,CN=Recipient Policies,{self.org_dn(org)}")
            templates = [str(v) for v in policy.get("gatewayProxy")] if policy else []
        out = []
        for t in templates or [f"SMTP:@{self.domain}"]:
            kind, _, template = t.partition(":")
            if kind.upper() == "SMTP" and template.startswith("@"):
                out.append(f"{kind}:{nickname}{template}")
        primary = [a for a in out if a.startswith("SMTP:")]
        return primary[:1] + [a for a in out if not a.startswith("SMTP:")] if primary else out

    def add_group(self, name: str, members: Sequence[str] = (), *, container: str | None = None) -> Entry:
        """A security group (it gets an objectSid); members are DNs."""
        return self.add(dnmod.child(container or self.users_dn, "CN", name), {
            "objectClass": ["top", "group"],
            "objectCategory": ["group"],
            "cn": [name],
            "sAMAccountName": [name],
            "member": list(members),
        })

    def add_admin_group(self, org: str, admin_group: str) -> Entry:
        self.add_organization(org)
        e = self._ensure(
            self.admin_group_dn(org, admin_group), ["msExchAdminGroup"], objectCategory="msExchAdminGroup"
        )
        self._ensure(f"CN=Servers,{e.dn}", ["msExchServersContainer"])
        return e

    def add_server(self, org: str, admin_group: str, server: str) -> Entry:
        self.add_admin_group(org, admin_group)
        legacy = f"/o={org}/ou={admin_group}/cn=Configuration/cn=Servers/cn={server}"
        e = self._ensure(
            self.server_dn(org, admin_group, server), ["server", "msExchExchangeServer"],
            objectCategory="msExchExchangeServer", legacyExchangeDN=legacy,
        )
        self._ensure(
            f"CN=InformationStore,{e.dn}", ["msExchInformationStore"], objectCategory="msExchInformationStore"
        )
        self._ensure(f"CN=Microsoft MTA,{e.dn}", ["mTA"], objectCategory="mTA")
        return e

    def add_storage_group(
        self, server_dn: str, name: str, *, log_path: str = "", system_path: str = "", prefix: str = "E00",
        circular: bool = False,
    ) -> Entry:
        return self.add(f"CN={dnmod.escape_value(name)},CN=InformationStore,{server_dn}", {
            "objectClass": ["top", "msExchStorageGroup"],
            "objectCategory": ["msExchStorageGroup"],
            "cn": [name],
            "msExchESEParamLogFilePath": [log_path] if log_path else [],
            "msExchESEParamSystemPath": [system_path] if system_path else [],
            "msExchESEParamBaseName": [prefix],
            "msExchESEParamCircularLog": [1 if circular else 0],
        })

    def add_database(
        self, sg_dn: str, name: str, *, public: bool = False, edb: str = "", stm: str = "",
        guid: uuid.UUID | None = None,
    ) -> Entry:
        cls = "msExchPublicMDB" if public else "msExchPrivateMDB"
        return self.add(f"CN={dnmod.escape_value(name)},{sg_dn}", {
            "objectClass": ["top", "msExchMDB", cls],
            "objectCategory": [cls],
            "cn": [name],
            "objectGUID": [(guid or uuid.uuid4()).bytes_le],
            "msExchEDBFile": [edb] if edb else [],
            "msExchSLVFile": [stm] if stm else [],
            "msExchOwningServer": [dnmod.parent(dnmod.parent(sg_dn))],
        })

    def server_of_database(self, db_dn: str) -> str:
        """CN=DB,CN=SG,CN=InformationStore,CN=Server,... -> CN=Server,..."""
        return dnmod.parent(dnmod.parent(dnmod.parent(db_dn)))

    def databases_of_server(self, server_dn: str, *, public: bool = False) -> list[Entry]:
        cls = "msExchPublicMDB" if public else "msExchPrivateMDB"
        found = list(self.search(f"CN=InformationStore,{server_dn}", f"(objectCategory={cls})"))
        return sorted(found, key=lambda e: (dnmod.normalize(dnmod.parent(e.dn)), dnmod.normalize(e.dn)))

    def server_by_legacy_dn(self, legacy: str) -> Entry | None:
        flt = f"(&(objectCategory=msExchExchangeServer)(legacyExchangeDN={escape_filter_value(legacy)}))"
        found = list(self.search(self.exchange_dn, flt))
        return found[0] if found else None

    def close(self) -> None:
        self.backend.close()
