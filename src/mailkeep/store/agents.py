"""Mailbox lifecycle: the Mailbox Cleanup Agent, purge, reconnect, the Mailbox Recovery
Center, and Move Mailbox.

Invariants (the guide's, kept exactly):
- The cleanup agent marks a mailbox Disconnected when no account with its GUID is homed on
  its database; the mailbox keeps its last owner's identity. A system attendant mailbox on
  a server other than its own is also put in the tombstone table, for good.
- Purge removes a disconnected mailbox only (after the retention period, or on demand);
  tombstones stay.
- Reconnect links a disconnected mailbox to an account that is not mailbox-enabled; a
  tombstoned GUID is never reconnected.
- Move Mailbox copies everything (folders with their UIDs and UIDVALIDITY, messages, flags,
  deleted items) before the directory changes, and the source is tombstoned and emptied
  only after both are durable; moving back clears the target's tombstone. The system
  attendant mailbox is never moved.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailkeep.directory import dn as dnmod
from mailkeep.directory import tasks
from mailkeep.directory.backend import Entry
from mailkeep.store import content, folders, mailboxes, schema
from mailkeep.store.errors import (
    MAPI_E_COLLISION,
    MAPI_E_INVALID_PARAMETER,
    MAPI_E_NO_SUPPORT,
    MAPI_E_NOT_FOUND,
    StoreError,
    ecMailboxInTransit,
)
from mailkeep.store.mailboxes import IS_SOURCE, Owner
from mailkeep.store.server import DatabaseInfo

if TYPE_CHECKING:
    from mailkeep.store.store import Store

DAY = 86400.0
MAILBOX_RETENTION_DAYS = 30
DELETED_ITEM_RETENTION_DAYS = 7


@dataclass(frozen=True)
class MailboxEntry:
    guid: str
    database: str
    kind: str
    state: str
    display_name: str
    owner_dn: str
    legacy_dn: str
    account: str
    owner_guid: str
    messages: int
    size: int
    last_logon: float | None
    disconnected_at: float | None
    tombstoned: bool = False


@dataclass
class CleanupReport:
    disconnected: list[str] = field(default_factory=list)
    tombstoned: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    deleted_items_purged: int = 0


def _mailbox_dbs(store: Store, db: str | None) -> list[DatabaseInfo]:
    if db:
        return [store.server.database(db)]
    return [info for info in store.mounted_databases() if not info.public]


def list_mailboxes(store: Store, db: str | None = None, *, disconnected: bool = False) -> list[MailboxEntry]:
    out = []
    for info in _mailbox_dbs(store, db):
        with store.read(info) as (r, d):
            tombs = {t["guid"] for t in r.scan(d, "tombstone")}
            for mb in r.scan(d, "mailbox"):
                if mb["kind"] == schema.PUBLIC or (disconnected and mb["state"] != schema.DISCONNECTED):
                    continue
                n = size = 0
                for m in r.scan(d, "message", prefix=(mb["guid"],)):
                    n += 1
                    size += int(m["size"])
                out.append(MailboxEntry(
                    mb["guid"], info.path_name, mb["kind"], mb["state"], mb["display_name"] or "",
                    mb["owner_dn"] or "", mb["legacy_dn"] or "", mb["account"] or "", mb["owner_guid"] or "",
                    n, size, mb["last_logon"], mb["disconnected_at"], mb["guid"] in tombs,
                ))
            if not disconnected:  # tombstones whose mailbox is gone (moved away, or purged)
                listed = {m.guid for m in out if m.database == info.path_name}
                for t in r.scan(d, "tombstone"):
                    if t["guid"] not in listed:
                        where = f"(moved to {dnmod.rdn(t['new_home'])[1]})" if t["new_home"] else "(system attendant)"
                        out.append(MailboxEntry(t["guid"], info.path_name, t["reason"], schema.TOMBSTONED, where,
                                                "", "", "", "", 0, 0, None, None, True))
    return sorted(out, key=lambda m: (m.database, m.display_name.lower(), m.guid))


def _retention_days(store: Store, info: DatabaseInfo) -> float:
    e = store.directory.get(info.dn)
    secs = e.first("msExchMailboxRetentionPeriod") if e else None
    return int(secs) / DAY if isinstance(secs, int) and secs > 0 else MAILBOX_RETENTION_DAYS


def cleanup(store: Store, db: str | None = None, *, purge_expired: bool = True) -> CleanupReport:
    """One run of the Mailbox Cleanup Agent over the mounted mailbox databases."""
    rep = CleanupReport()
    now = store.clock()
    sa_entry = store.directory.get(store.server.system_attendant_dn)
    for info in _mailbox_dbs(store, db):
        decisions: list[tuple[str, bool]] = []  # (guid, tombstone too)
        with store.read(info) as (r, d):
            rows = [dict(x) for x in r.scan(d, "mailbox")]
        for mb in rows:
            if mb["kind"] == schema.PUBLIC or mb["state"] != schema.CONNECTED:
                continue
            if mb["kind"] == schema.SYSTEM_ATTENDANT:
                if mb["server_legacy"] and mb["server_legacy"].lower() != store.server.legacy_dn.lower():
                    decisions.append((mb["guid"], True))  # another server's system attendant
                elif not _is_sa_home(store, sa_entry, info, mb["guid"]):
                    decisions.append((mb["guid"], False))  # this server's, but not in its place
                continue
            owners = [o for o in store.directory.mailbox_owners(mailboxes.guid_bytes(mb["guid"]))
                      if _same_dn(str(o.text("homeMDB") or ""), info.dn)]
            if not owners:
                decisions.append((mb["guid"], False))
        expired_after = _retention_days(store, info) * DAY
        with store.write(info) as (txn, d):
            for guid, tomb in decisions:
                txn.update(d, "mailbox", (guid,), {"state": schema.DISCONNECTED, "disconnected_at": now})
                rep.disconnected.append(guid)
                if tomb and txn.get(d, "tombstone", (guid,)) is None:
                    row = txn.get(d, "mailbox", (guid,)) or {}
                    txn.insert(d, "tombstone", {"guid": guid, "reason": "system-attendant", "new_home": "",
                                                "server_legacy": row.get("server_legacy", ""), "created": now})
                    rep.tombstoned.append(guid)
            if purge_expired:
                for mb in [dict(x) for x in txn.scan(d, "mailbox")]:
                    if mb["state"] == schema.DISCONNECTED and mb["disconnected_at"] is not None \
                            and now - float(mb["disconnected_at"]) >= expired_after:
                        folders.delete_mailbox_rows(txn, d, mb["guid"])
                        rep.purged.append(mb["guid"])
                for item in [dict(x) for x in txn.scan(d, "dumpster")]:
                    if now - float(item["deleted_at"]) >= DELETED_ITEM_RETENTION_DAYS * DAY:
                        txn.delete(d, "dumpster", (item["mailbox"], item["did"]))
                        folders.drop_ref(txn, d, item["content"])
                        rep.deleted_items_purged += 1
        for guid in [g for g, _ in decisions]:
            store.events.info(IS_SOURCE, 9535, f"Mailbox Cleanup Agent: mailbox {guid} in {info.path_name} "
                              "marked Disconnected (no matching directory owner).")
        for guid in [g for g, tomb in decisions if tomb]:
            store.events.warning(IS_SOURCE, 9536, f"System attendant mailbox {guid} in {info.path_name} belongs "
                                 "to another server: added to the mailbox tombstone table.")
    return rep


def _is_sa_home(store: Store, sa: Entry | None, info: DatabaseInfo, guid: str) -> bool:
    if sa is None:
        return False
    raw = sa.first("msExchMailboxGUID")
    return _same_dn(str(sa.text("homeMDB") or ""), info.dn) and isinstance(raw, bytes) \
        and mailboxes.guid_text(raw) == guid


def _same_dn(a: str, b: str) -> bool:
    try:
        return bool(a) and dnmod.normalize(a) == dnmod.normalize(b)
    except (dnmod.DnError, ValueError):
        return a.lower() == b.lower()


def _find(store: Store, guid: str) -> tuple[DatabaseInfo, dict[str, Any]]:
    try:
        guid = str(uuid.UUID(guid))
    except ValueError as e:
        raise StoreError(MAPI_E_INVALID_PARAMETER, f"{guid!r} is not a mailbox GUID") from e
    for info in _mailbox_dbs(store, None):
        with store.read(info) as (r, d):
            row = r.get(d, "mailbox", (guid,))
        if row is not None:
            return info, dict(row)
    raise StoreError(MAPI_E_NOT_FOUND, f"no mailbox {guid} in the mounted mailbox databases of {store.server.name}")


def purge(store: Store, guid: str) -> MailboxEntry:
    info, row = _find(store, guid)
    if row["state"] != schema.DISCONNECTED:
        raise StoreError(MAPI_E_NO_SUPPORT, f"mailbox {row['guid']} is connected to {row['owner_dn']}; only a "
                         "disconnected mailbox can be purged (remove the account's mailbox first)")
    entry = next(m for m in list_mailboxes(store, str(info.guid)) if m.guid == row["guid"])
    with store.write(info) as (txn, d):
        folders.delete_mailbox_rows(txn, d, row["guid"])
    store.events.info(IS_SOURCE, 9537, f"Mailbox {row['guid']} purged from {info.path_name}.")
    return entry


def reconnect(store: Store, guid: str, user: str) -> Entry:
    """Reconnect a disconnected mailbox to an account that has no mailbox."""
    info, row = _find(store, guid)
    if row["kind"] != schema.USER:
        raise StoreError(MAPI_E_NO_SUPPORT, "a system attendant mailbox cannot be reconnected to a user")
    if row["state"] != schema.DISCONNECTED:
        raise StoreError(MAPI_E_NO_SUPPORT, f"mailbox {row['guid']} is connected to {row['owner_dn']}; run "
                         "'mailkeep mailbox cleanup' first if that account no longer owns it")
    entry = store.directory.require_user(user)
    if entry.has("homeMDB"):
        raise StoreError(MAPI_E_COLLISION, f"{entry.dn} is already mailbox-enabled (homeMDB {entry.text('homeMDB')});"
                         " choose an account that is not")
    with store.read(info) as (r, d):
        tomb = r.get(d, "tombstone", (row["guid"],))
    if tomb is not None:
        raise StoreError(ecMailboxInTransit, f"mailbox {row['guid']} is in the tombstone table of {info.path_name}; "
                         "it cannot be reconnected here", new_home=tomb["new_home"] or None)
    raw = mailboxes.guid_bytes(row["guid"])
    if store.directory.mailbox_owners(raw):
        raise StoreError(MAPI_E_COLLISION, f"another account is connected to mailbox GUID {row['guid']}")
    entry = tasks.mailbox_enable(store.directory, entry.dn, info.dn, mailbox_guid=uuid.UUID(bytes_le=raw))
    with store.write(info) as (txn, d):
        mailboxes.ensure_mailbox(txn, d, row["guid"], Owner.of(entry), store.clock(), events=store.events, info=info)
    return entry


@dataclass(frozen=True)
class Suggestion:
    guid: str
    database: str
    display_name: str
    previous_owner: str
    match: str | None  # the account DN suggested, None when no account matches
    reason: str


def recover(store: Store, db: str | None = None, *, apply: bool = False) -> tuple[list[Suggestion], list[str]]:
    """The Mailbox Recovery Center: for each disconnected mailbox, the account that most
    likely owned it; with ``apply`` reconnect all that have one. Returns (suggestions,
    problems met while applying)."""
    out: list[Suggestion] = []
    problems: list[str] = []
    for m in list_mailboxes(store, db, disconnected=True):
        if m.kind != schema.USER or m.tombstoned:
            continue
        match, reason = _likely_owner(store, m)
        out.append(Suggestion(m.guid, m.database, m.display_name, m.owner_dn, match, reason))
    if apply:
        claimed: set[str] = set()
        for s in out:
            if s.match is None or s.match.lower() in claimed:
                continue
            claimed.add(s.match.lower())
            try:
                reconnect(store, s.guid, s.match)
            except StoreError as e:
                problems.append(f"{s.guid}: {e}")
    return out, problems


def _likely_owner(store: Store, m: MailboxEntry) -> tuple[str | None, str]:
    d = store.directory
    if m.owner_guid:
        e = d.get_by_guid(uuid.UUID(m.owner_guid))
        if e is not None:
            return _usable(e, "same account (objectGUID)")
    keys = (("legacyExchangeDN", m.legacy_dn), ("sAMAccountName", m.account), ("displayName", m.display_name))
    for attr, value in keys:
        if not value:
            continue
        from mailkeep.directory.directory import escape_filter_value

        found = list(d.search(d.domain_dn, f"(&(objectCategory=user)({attr}={escape_filter_value(value)}))"))
        if len(found) == 1:
            return _usable(found[0], f"same {attr}")
    e = d.get(m.owner_dn) if m.owner_dn else None
    if e is not None:
        return _usable(e, "same DN")
    return None, "no account matches the mailbox's last owner"


def _usable(e: Entry, why: str) -> tuple[str | None, str]:
    if e.has("homeMDB"):
        return None, f"{e.dn} ({why}) already has a mailbox"
    return e.dn, why


# -- Move Mailbox ------------------------------------------------------------------------------------
def move(store: Store, user: str, target: str, *, target_store: Store | None = None) -> DatabaseInfo:
    tstore = target_store or store
    sa_names = {store.server.system_attendant_dn.lower(), "system attendant", "microsoft system attendant",
                store.server.system_attendant_legacy_dn.lower()}
    if user.strip().lower() in sa_names:
        raise StoreError(MAPI_E_NO_SUPPORT, "Move Mailbox does not apply to system attendant mailboxes")
    entry = store.directory.require_user(user)
    src, guid = mailboxes.home(store, entry)
    dst = tstore.server.database(target)
    if dst.public:
        raise StoreError(MAPI_E_NO_SUPPORT, f"{dst.path_name} is a public folder store")
    if dst.guid == src.guid:
        raise StoreError(MAPI_E_NO_SUPPORT, f"{entry.dn} is already homed on {dst.path_name}")
    tstore.handle(dst)
    with store.read(src) as (r, sd):
        mb = r.get(sd, "mailbox", (guid,))
        if mb is None:  # never logged on: nothing to copy, the directory change is the move
            mb = None
        elif mb["kind"] != schema.USER:
            raise StoreError(MAPI_E_NO_SUPPORT, "Move Mailbox does not apply to system attendant mailboxes")
        if mb is not None:
            fl = [dict(x) for x in r.scan(sd, "folder", prefix=(guid,))]
            msgs = [dict(x) for x in r.scan(sd, "message", prefix=(guid,))]
            dump = [dict(x) for x in r.scan(sd, "dumpster", prefix=(guid,))]
            cids = {x["content"] for x in msgs + dump}
            cinfo = {c: dict(r.get(sd, "content", (c,)) or {}) for c in cids}
            missing = [c for c, v in cinfo.items() if not v]
            if missing:
                raise StoreError(MAPI_E_NOT_FOUND, f"mailbox {guid} refers to missing content {missing[:3]}; run "
                                 "'mailkeep isinteg -fix -test alltests' on the source first")
            with tstore.write(dst) as (txn, d):
                now = tstore.clock()
                if txn.get(d, "tombstone", (guid,)) is not None:
                    txn.delete(d, "tombstone", (guid,))  # moving back: clear the tombstone
                if txn.get(d, "mailbox", (guid,)) is not None:
                    raise StoreError(MAPI_E_COLLISION, f"{dst.path_name} already holds a mailbox {guid}; purge "
                                     "that copy first")
                txn.insert(d, "mailbox", {**mb, "state": schema.CONNECTED, "disconnected_at": None})
                for f in fl:
                    txn.insert(d, "folder", f)
                cmap: dict[int, int] = {}
                for c, ci in cinfo.items():
                    reader = r.open_stream(sd, int(ci["stream"]))
                    try:
                        stream, size, sha = content.copy_stream(txn, d, reader)
                    finally:
                        reader.close()
                    refs = sum(1 for x in msgs + dump if x["content"] == c)
                    cmap[c] = folders.add_content(txn, d, stream, size, sha, refs, now)
                for x in msgs:
                    txn.insert(d, "message", {**x, "content": cmap[x["content"]]})
                for x in dump:
                    txn.insert(d, "dumpster", {**x, "content": cmap[x["content"]]})
    server = tstore.server
    store.directory.replace(
        entry.dn, homeMDB=dst.dn, homeMTA=f"CN=Microsoft MTA,{server.dn}", msExchHomeServerName=server.legacy_dn,
    )
    with store.write(src) as (txn, sd):
        now = store.clock()
        if txn.get(sd, "mailbox", (guid,)) is not None:
            folders.delete_mailbox_rows(txn, sd, guid)
        txn.put(sd, "tombstone", {"guid": guid, "reason": "moved", "new_home": dst.dn, "server_legacy": "",
                                  "created": now})
    store.events.info(IS_SOURCE, 9538, f"Mailbox {guid} of {entry.dn} moved from {src.path_name} to {dst.path_name}.")
    return dst
