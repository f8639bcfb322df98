"""Which mailbox a directory account reaches, and stage two of mailbox creation.

The rules of "Understanding Mailbox GUIDs" and "Move Mailbox Operations and the Mailbox
Tombstone Table", applied at every logon and delivery:

- The mailbox is found by the account's ``msExchMailboxGUID`` in the database its
  ``homeMDB`` names. Swapping two accounts' GUIDs swaps their mailboxes; a GUID changed by
  one character reaches a new, empty mailbox; the old GUID put back reaches the old one.
- An account with ``homeMDB`` but no mailbox GUID gets a new GUID from the store (written to
  the directory): the guide's "new mailbox GUIDs will be generated".
- Two accounts connected to one GUID are refused (``Directory.check_mailbox_guid``).
- A GUID listed in the database's tombstone table is never created or reconnected there:
  ``ecMailboxInTransit`` (0x50c = 1292), with the new home when it is known.
- A disconnected mailbox whose GUID an account names again is reconnected to it, and the
  mailbox keeps the identity of its latest owner (what the Mailbox Recovery Center reads).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mailkeep.directory.backend import DirectoryError, Entry
from mailkeep.directory.directory import Directory, escape_filter_value
from mailkeep.engine.database import Database
from mailkeep.engine.transaction import Transaction
from mailkeep.store import folders, schema
from mailkeep.store.errors import (
    StoreError,
    ecLoginFailure,
    ecMailboxInTransit,
    ecUnknownUser,
    ecWrongServer,
)
from mailkeep.store.server import DatabaseInfo

if TYPE_CHECKING:
    from mailkeep.store.store import Store

IS_SOURCE = "MSExchangeIS Mailbox Store"


@dataclass(frozen=True)
class Owner:
    """The identity a mailbox keeps of the account connected to it."""

    dn: str
    legacy_dn: str
    display_name: str
    account: str
    object_guid: str
    kind: str = schema.USER
    server_legacy: str = ""

    @classmethod
    def of(cls, e: Entry, *, kind: str = schema.USER, server_legacy: str = "") -> Owner:
        og = e.first("objectGUID")
        return cls(
            e.dn, str(e.text("legacyExchangeDN") or ""), str(e.text("displayName") or e.text("cn") or ""),
            str(e.text("sAMAccountName") or ""), str(uuid.UUID(bytes_le=og)) if isinstance(og, bytes) else "",
            kind, server_legacy,
        )

    def row(self) -> dict[str, Any]:
        return {"owner_dn": self.dn, "legacy_dn": self.legacy_dn, "display_name": self.display_name,
                "account": self.account, "owner_guid": self.object_guid}


def guid_text(raw: bytes) -> str:
    return str(uuid.UUID(bytes_le=raw))


def guid_bytes(text: str) -> bytes:
    return uuid.UUID(text).bytes_le


def find_recipient(d: Directory, address: str) -> Entry | None:
    """The account an SMTP address belongs to (proxyAddresses, mail; a bare name or an
    address in the directory's own domain also matches the account name)."""
    addr = address.strip().strip("<>")
    if not addr:
        return None
    v = escape_filter_value(addr)
    flt = f"(&(objectCategory=user)(|(proxyAddresses=smtp:{v})(mail={v})))"
    found = list(d.search(d.domain_dn, flt))
    if not found:  # a bare local part (an MTA's ${user}) or a local account name
        local, at, domain = addr.rpartition("@")
        if not at or domain.lower() == d.domain:
            found = [e for e in [d.find_user(local if at else addr)] if e is not None]
    if len(found) > 1:
        raise StoreError(ecLoginFailure, f"{addr} belongs to {len(found)} accounts; make it unique in the directory")
    return found[0] if found else None


def home(store: Store, user: Entry) -> tuple[DatabaseInfo, str]:
    """The database and mailbox GUID an account reaches (stage one must be done)."""
    home_dn = user.text("homeMDB")
    if not home_dn:
        raise StoreError(ecUnknownUser, f"{user.dn} has no mailbox (not mailbox-enabled)")
    info = store.server.database_by_dn(str(home_dn))
    if info is None:
        raise StoreError(
            ecWrongServer, f"{user.dn} is homed on {home_dn}, not on a database of server {store.server.name}",
            new_home=str(home_dn),
        )
    if info.public:
        raise StoreError(ecUnknownUser, f"{user.dn}: homeMDB {home_dn} is a public folder store")
    raw = user.first("msExchMailboxGUID")
    if not isinstance(raw, bytes) or len(raw) != 16:
        raw = uuid.uuid4().bytes_le
        store.directory.replace(user.dn, msExchMailboxGUID=raw)
        store.events.info(IS_SOURCE, 1000, f"New mailbox GUID {guid_text(raw)} generated for {user.dn}.")
    try:
        store.directory.check_mailbox_guid(raw)
    except DirectoryError as e:
        raise StoreError(ecLoginFailure, str(e)) from e
    return info, guid_text(raw)


def ensure_mailbox(
    txn: Transaction, db: Database, guid: str, owner: Owner, now: float, *, logon: bool = False,
    events: Any = None, info: DatabaseInfo | None = None,
) -> dict[str, Any]:
    """Inside the caller's transaction: the mailbox row for ``guid``, created (stage two) or
    reconnected as the rules above say. Raises ecMailboxInTransit for a tombstoned GUID."""
    tomb = txn.get(db, "tombstone", (guid,))
    if tomb is not None:
        raise StoreError(
            ecMailboxInTransit,
            f"mailbox {guid} is in the mailbox tombstone table of {info.path_name if info else 'this database'}"
            f" ({tomb['reason']}); it cannot be created or reconnected here",
            new_home=tomb["new_home"] or None,
        )
    mb = txn.get(db, "mailbox", (guid,))
    if mb is None:
        folders.create_mailbox_rows(
            txn, db, guid, kind=owner.kind, owner_dn=owner.dn, legacy_dn=owner.legacy_dn,
            display_name=owner.display_name, now=now, account=owner.account, owner_guid=owner.object_guid,
            server_legacy=owner.server_legacy,
        )
        if logon:
            txn.update(db, "mailbox", (guid,), {"last_logon": now})
        if events is not None:
            events.info(IS_SOURCE, 1004 if owner.kind == schema.USER else 1005,
                        f"Mailbox {guid} created for {owner.dn} in {info.path_name if info else 'the database'}.")
        return dict(txn.get(db, "mailbox", (guid,)) or {})
    changes: dict[str, Any] = {}
    if mb["state"] != schema.CONNECTED:
        changes.update(state=schema.CONNECTED, disconnected_at=None)
        if events is not None:
            events.info(IS_SOURCE, 1006, f"Disconnected mailbox {guid} reconnected to {owner.dn}.")
    if mb["owner_dn"] != owner.dn or mb["legacy_dn"] != owner.legacy_dn or mb["owner_guid"] != owner.object_guid:
        changes.update(owner.row())
    if logon:
        changes["last_logon"] = now
    if changes:
        return txn.update(db, "mailbox", (guid,), changes)
    return dict(mb)


def inbox_fid(txn: Any, db: Database, guid: str) -> int:
    for row in txn.scan(db, "folder", prefix=(guid,)):
        if row["special"] == "inbox":
            return int(row["fid"])
    raise StoreError(ecLoginFailure, f"mailbox {guid} has no Inbox; run 'mailkeep isinteg -fix -test alltests'")
