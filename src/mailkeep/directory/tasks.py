"""The guide's directory tasks: mailbox-enable, Delete Mailbox, Remove Exchange Attributes,
re-home (the sample ADSI script's logic), and the msExchMasterAccountSid audit and fix.

Invariants: these functions change only directory attributes — never the store (the
Mailbox Cleanup Agent notices disconnected mailboxes later, as in Exchange); trial modes
change nothing; every change made is reported with its before and after values.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import TextIO

from mailkeep.directory import dn as dnmod
from mailkeep.directory import sid
from mailkeep.directory.backend import Change, DirectoryError, Entry
from mailkeep.directory.directory import Directory, escape_filter_value

FULL_MAILBOX_ACCESS = "FullMailboxAccess"
READ_PERMISSIONS = "ReadPermissions"
ASSOCIATED_EXTERNAL_ACCOUNT = "AssociatedExternalAccount"
RIGHTS = (FULL_MAILBOX_ACCESS, READ_PERMISSIONS, ASSOCIATED_EXTERNAL_ACCOUNT)

MAILBOX_ATTRS = (
    "homeMDB", "homeMTA", "msExchHomeServerName", "mailNickname", "mail", "proxyAddresses",
    "msExchMailboxGUID", "msExchMailboxSecurityDescriptor", "msExchUserAccountControl",
    "msExchMasterAccountSid", "showInAddressBook", "msExchPoliciesIncluded",
)
SYSTEM_MAILBOX_MARKERS = ("SMTP", "SystemMailbox", "System Attendant")


# -- mailbox rights (msExchMailboxSecurityDescriptor: "SID:Right,Right") ----------------------
def mailbox_rights(user: Entry) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for v in user.get("msExchMailboxSecurityDescriptor"):
        who, _, rights = str(v).partition(":")
        out[who] = {r for r in rights.split(",") if r}
    return out


def _rights_values(rights: dict[str, set[str]]) -> tuple[str, ...]:
    return tuple(f"{who}:{','.join(r for r in RIGHTS if r in granted)}" for who, granted in sorted(rights.items())
                 if granted)


def set_associated_external_account(d: Directory, user: Entry, account_sid: str | None) -> Entry:
    """Set (or with None, remove) the Associated External Account: as in the Mailbox Rights
    dialog, this also sets (or clears) msExchMasterAccountSid. The account must hold Full
    Mailbox Access and Read Permissions first; they are granted with it."""
    rights = mailbox_rights(user)
    for granted in rights.values():
        granted.discard(ASSOCIATED_EXTERNAL_ACCOUNT)
    changes = []
    if account_sid is None:
        changes.append(Change("replace", "msExchMasterAccountSid", ()))
    else:
        rights.setdefault(account_sid, set()).update(RIGHTS)
        changes.append(Change("replace", "msExchMasterAccountSid", (sid.to_bytes(account_sid),)))
    changes.append(Change("replace", "msExchMailboxSecurityDescriptor", _rights_values(rights)))
    return d.modify(user.dn, changes)


# -- mailbox-enable and removal -------------------------------------------------------------
def mailbox_enable(
    d: Directory, name: str, database_dn: str, *, nickname: str | None = None,
    mailbox_guid: uuid.UUID | None = None,
) -> Entry:
    """Stage one of mailbox creation (the Exchange Task Wizard's part): the core attributes;
    the Recipient Update Service completes the rest, the store allocates the mailbox at
    first logon or delivery."""
    user = d.require_user(name)
    if user.has("homeMDB"):
        raise DirectoryError("entryAlreadyExists", f"{user.dn} already has a mailbox (homeMDB {user.text('homeMDB')})")
    db = d.get(database_dn)
    if db is None or "msexchprivatemdb" not in {str(c).lower() for c in db.get("objectClass")}:
        raise DirectoryError("noSuchObject", f"{database_dn} is not a mailbox database; see 'mailkeep db list'")
    guid = (mailbox_guid or uuid.uuid4()).bytes_le
    if d.mailbox_owners(guid):
        raise DirectoryError("constraintViolation", f"mailbox GUID {uuid.UUID(bytes_le=guid)} is already connected")
    server = d.get(d.server_of_database(db.dn))
    changes = [
        Change("replace", "mailNickname", (nickname or str(user.text("sAMAccountName")),)),
        Change("replace", "homeMDB", (db.dn,)),
        Change("replace", "msExchMailboxGUID", (guid,)),
        Change("replace", "msExchMailboxSecurityDescriptor", (f"{sid.SELF}:{FULL_MAILBOX_ACCESS},{READ_PERMISSIONS}",)),
    ]
    if server is not None:
        changes.append(Change("replace", "homeMTA", (f"CN=Microsoft MTA,{server.dn}",)))
        legacy = server.text("legacyExchangeDN")
        if legacy:
            changes.append(Change("replace", "msExchHomeServerName", (legacy,)))
    user = d.modify(user.dn, changes)
    if d.is_disabled(user):  # ESM sets Self as the Associated External Account of a disabled account
        user = set_associated_external_account(d, user, sid.SELF)
    return user


def delete_mailbox(d: Directory, name: str) -> Entry:
    """Exchange Task Wizard "Delete Mailbox": strip the mailbox attributes; legacyExchangeDN
    becomes ADCDisabledMail. The mailbox itself is marked Disconnected by the cleanup agent."""
    user = d.require_user(name)
    changes = [Change("replace", a, ()) for a in MAILBOX_ATTRS if user.has(a)]
    changes.append(Change("replace", "legacyExchangeDN", ("ADCDisabledMail",)))
    return _without_rus(d, user.dn, changes)


def remove_exchange_attributes(d: Directory, name: str) -> Entry:
    """"Remove Exchange Attributes": strip every Exchange attribute, legacyExchangeDN too.
    Never contacts the store."""
    user = d.require_user(name)
    attrs = [a for a in (*MAILBOX_ATTRS, "legacyExchangeDN") if user.has(a)]
    return _without_rus(d, user.dn, [Change("replace", a, ()) for a in attrs])


def _without_rus(d: Directory, dn: str, changes: list[Change]) -> Entry:
    d.backend.modify(dn, changes)
    return d.require(dn)


# -- re-home (the guide's sample ADSI script) ---------------------------------------------------
@dataclass(frozen=True)
class Location:
    organization: str
    admin_group: str
    server: str
    storage_group: str
    database: str

    def database_dn(self, d: Directory) -> str:
        server = d.server_dn(self.organization, self.admin_group, self.server)
        db, sg = dnmod.escape_value(self.database), dnmod.escape_value(self.storage_group)
        return f"CN={db},CN={sg},CN=InformationStore,{server}"

    def home_server_name(self) -> str:
        return f"/o={self.organization}/ou={self.admin_group}/cn=Configuration/cn=Servers/cn={self.server}"


@dataclass
class RehomeReport:
    trial: bool
    filter: str
    changed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    matched: int = 0


def rehome(
    d: Directory, old: Location, new: Location, *, mta_server: str | None = None, trial: bool = False,
) -> RehomeReport:
    old_db = old.database_dn(d)
    new_db = new.database_dn(d)
    flt = f"(&(objectClass=user)(homeMDB={escape_filter_value(old_db)}))"
    rep = RehomeReport(trial, flt)
    trace = rep.log.append
    if trial:
        trace("*** You are running in Trial Mode only: the directory will not be updated ***")
    trace(f"Targeted Domain: {d.domain_dn}")
    trace(f"Configuration Naming Context: {d.config_dn}")
    for label, a, b in (
        ("Organization Name", old.organization, new.organization),
        ("AdminGroup Name", old.admin_group, new.admin_group),
        ("Server Name", old.server, new.server),
        ("Storage Group Name", old.storage_group, new.storage_group),
        ("Base Name", old.database, new.database),
    ):
        trace(f"Old {label}: {a}")
        trace(f"New {label}: {b}")
    trace(f"LDAP Filter = {flt}")
    new_mta = (f"CN=Microsoft MTA,CN={dnmod.escape_value(mta_server or new.server)},CN=Servers,"
               f"CN={dnmod.escape_value(new.admin_group)},CN=Administrative Groups,"
               f"CN={dnmod.escape_value(new.organization)},{d.exchange_dn}")
    users = list(d.search(d.domain_dn, flt))
    rep.matched = len(users)
    if not users:
        trace("No Matching Users. Program Aborted")
        return rep
    for u in users:
        name = str(u.text("name") or u.text("cn") or u.dn)
        trace(f"Work to : {name}\t{u.dn}")
        if any(m.lower() in (name + " " + u.dn).lower() for m in SYSTEM_MAILBOX_MARKERS):
            trace(f"WARNING: {name} is a system mailbox (SMTP, SystemMailbox or System Attendant): not re-homed")
            rep.skipped.append(u.dn)
            continue
        new_values = {"msExchHomeServerName": new.home_server_name(), "homeMDB": new_db, "homeMTA": new_mta}
        for attr, value in new_values.items():
            trace(f"OLD {attr} = {u.text(attr)}")
            trace(f"NEW {attr} = {value}")
        if trial:
            continue
        try:
            d.modify(u.dn, [Change("replace", a, (v,)) for a, v in new_values.items()])
            rep.changed.append(u.dn)
        except DirectoryError as e:
            trace(f"Error Updating User: {name}    Reason: {e}")
            rep.failed.append((u.dn, str(e)))
    trace(f"{len(rep.changed)} user(s) updated, {len(rep.failed)} failed, {len(rep.skipped)} skipped"
          + (" (trial: nothing written)" if trial else ""))
    return rep


# -- msExchMasterAccountSid audit (the guide's NoMAS script) ----------------------------------
ENABLED_WITH_SID = (
    "(&(objectCategory=user)(!userAccountControl:1.2.840.113556.1.4.803:=2)((msExchMasterAccountSid=*))"
    "(msExchHomeServerName=*)(homeMDB=*))"
)
DISABLED_WITHOUT_SID = (
    "(&(objectCategory=user)(userAccountControl:1.2.840.113556.1.4.803:=2)(!(msExchMasterAccountSid=*))"
    "(msExchHomeServerName=*)(homeMDB=*))"
)


@dataclass
class AuditReport:
    enabled_with_sid: list[str] = field(default_factory=list)
    disabled_without_sid: list[str] = field(default_factory=list)
    fixed: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def _external_account(user: Entry) -> str | None:
    """The SID the user's mailbox rights name as Associated External Account, if any."""
    return next((who for who, granted in sorted(mailbox_rights(user).items())
                 if ASSOCIATED_EXTERNAL_ACCOUNT in granted), None)


def audit_master_sid(d: Directory, *, fix: bool = False, log_path: str | None = None) -> AuditReport:
    """The guide's NoMAS script. The log file is opened (appended to) before anything is
    looked at or changed, so an unusable log path fails with nothing changed."""
    log_file = open(log_path, "a", encoding="utf-8") if log_path else None
    try:
        return _audit_master_sid(d, fix, log_file)
    finally:
        if log_file is not None:
            log_file.close()


def _audit_master_sid(d: Directory, fix: bool, log_file: TextIO | None) -> AuditReport:
    rep = AuditReport()

    def trace(line: str) -> None:  # written as it happens: a failure part-way still leaves the log of changes
        rep.log.append(line)
        if log_file is not None:
            log_file.write(line + "\n")
            log_file.flush()

    trace(f"msExchMasterAccountSid audit of {d.domain_dn} started {time.strftime('%Y-%m-%d %H:%M:%S')}"
          + (" (fix mode)" if fix else " (report only)"))
    for u in d.search(d.domain_dn, ENABLED_WITH_SID):
        rep.enabled_with_sid.append(u.dn)
        trace(f"ENABLED account with msExchMasterAccountSid: {u.dn}")
        if fix:
            set_associated_external_account(d, u, None)
            rep.fixed.append(u.dn)
            trace(f"  removed the Associated External Account and msExchMasterAccountSid from {u.dn}")
    for u in d.search(d.domain_dn, DISABLED_WITHOUT_SID):
        rep.disabled_without_sid.append(u.dn)
        trace(f"DISABLED mailbox account without msExchMasterAccountSid: {u.dn}")
        if fix:
            # the script adds a SELF entry only when no Associated External Account is set;
            # an existing one is kept, and msExchMasterAccountSid follows it
            external = _external_account(u)
            set_associated_external_account(d, u, external or sid.SELF)
            rep.fixed.append(u.dn)
            if external:
                trace(f"  set msExchMasterAccountSid to the Associated External Account ({external}) on {u.dn}")
            else:
                trace(f"  set the Associated External Account and msExchMasterAccountSid to SELF ({sid.SELF}) "
                      f"on {u.dn}")
    trace(f"{len(rep.enabled_with_sid)} enabled account(s) with the SID, {len(rep.disabled_without_sid)} disabled "
          f"account(s) without it; {len(rep.fixed)} fixed")
    return rep

