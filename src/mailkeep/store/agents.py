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
from mailkeep.directory.backend import DirectoryError, Entry
from mailkeep.engine.errors import EseError
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
MOVING, MOVED = "moving", "moved"  # tombstone reasons (and MOVING: a target copy's state) of Move Mailbox
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
    latest_item: float | None = None  # internal date of its newest message


@dataclass
class CleanupReport:
    disconnected: list[str] = field(default_factory=list)
    tombstoned: list[str] = field(default_factory=list)
    purged: list[str] = field(default_factory=list)
    deleted_items_purged: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (database, why)


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
                latest: float | None = None
                for m in r.scan(d, "message", prefix=(mb["guid"],)):
                    n += 1
                    size += int(m["size"])
                    latest = max(latest or 0.0, float(m["internal_date"] or 0.0))
                out.append(MailboxEntry(
                    mb["guid"], info.path_name, mb["kind"], mb["state"], mb["display_name"] or "",
                    mb["owner_dn"] or "", mb["legacy_dn"] or "", mb["account"] or "", mb["owner_guid"] or "",
                    n, size, mb["last_logon"], mb["disconnected_at"], mb["guid"] in tombs, latest,
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
    """One run of the Mailbox Cleanup Agent over the mounted mailbox databases. A database
    that fails is reported (event 9540, ``failed``) and the others are still processed."""
    rep = CleanupReport()
    for info in _mailbox_dbs(store, db):
        try:
            _cleanup_database(store, info, rep, purge_expired)
        except (StoreError, EseError, DirectoryError, KeyError, ValueError) as e:
            rep.failed.append((info.path_name, str(e)))
            store.events.error(IS_SOURCE, 9540, f"Mailbox Cleanup Agent could not process {info.path_name}: {e}")
    return rep


def _orphaned(store: Store, info: DatabaseInfo, mb: dict[str, Any], sa: Entry | None) -> tuple[bool, bool]:
    """(disconnect it, tombstone it too), from the directory as it is now."""
    if mb["kind"] == schema.SYSTEM_ATTENDANT:
        if mb["server_legacy"] and mb["server_legacy"].lower() != store.server.legacy_dn.lower():
            return True, True  # another server's system attendant: never to be connected here
        return not _is_sa_home(store, sa, info, mb["guid"]), False
    return not _homed_owners(store, info, mb["guid"]), False


def _homed_owners(store: Store, info: DatabaseInfo, guid: str) -> list[Entry]:
    return [o for o in store.directory.mailbox_owners(mailboxes.guid_bytes(guid))
            if _same_dn(str(o.text("homeMDB") or ""), info.dn)]


def _cleanup_database(store: Store, info: DatabaseInfo, rep: CleanupReport, purge_expired: bool) -> None:
    now = store.clock()
    disconnected: list[str] = []
    tombstoned: list[str] = []
    finished: list[str] = []
    expired_after = _retention_days(store, info) * DAY
    # Decisions are taken inside the write transaction, from the rows and the directory as
    # they are then: no delivery or reconnection can slip between a check and its change.
    with store.write(info) as (txn, d):
        sa = store.directory.get(store.server.system_attendant_dn)
        tombs = {t["guid"]: dict(t) for t in txn.scan(d, "tombstone")}
        for mb in [dict(x) for x in txn.scan(d, "mailbox")]:
            guid = mb["guid"]
            t = tombs.get(guid)
            moved_on = t is not None and t["reason"] == MOVING and bool(t["new_home"])
            if moved_on and _homed_elsewhere(store, guid, str(t["new_home"])):  # type: ignore[index]
                folders.delete_mailbox_rows(txn, d, guid)  # an interrupted move, finished at the target
                txn.update(d, "tombstone", (guid,), {"reason": MOVED})
                finished.append(guid)
                continue
            if mb["state"] == MOVING and mb["kind"] == schema.USER and _homed_owners(store, info, guid):
                txn.update(d, "mailbox", (guid,), {"state": schema.CONNECTED})  # a move's copy, now the mailbox
                continue
            if mb["kind"] == schema.PUBLIC or mb["state"] not in (schema.CONNECTED, MOVING):
                continue
            off, tomb = _orphaned(store, info, mb, sa)
            if not off:
                continue
            txn.update(d, "mailbox", (guid,), {"state": schema.DISCONNECTED, "disconnected_at": now})
            disconnected.append(guid)
            if tomb and guid not in tombs:
                txn.insert(d, "tombstone", {"guid": guid, "reason": "system-attendant", "new_home": "",
                                            "server_legacy": mb["server_legacy"] or "", "created": now})
                tombstoned.append(guid)
        if purge_expired:
            for mb in [dict(x) for x in txn.scan(d, "mailbox")]:
                if mb["state"] == schema.DISCONNECTED and mb["disconnected_at"] is not None \
                        and now - float(mb["disconnected_at"]) >= expired_after \
                        and not (mb["kind"] == schema.USER and _homed_owners(store, info, mb["guid"])):
                    folders.delete_mailbox_rows(txn, d, mb["guid"])
                    rep.purged.append(mb["guid"])
            for item in [dict(x) for x in txn.scan(d, "dumpster")]:
                if now - float(item["deleted_at"]) >= DELETED_ITEM_RETENTION_DAYS * DAY:
                    txn.delete(d, "dumpster", (item["mailbox"], item["did"]))
                    folders.drop_ref(txn, d, item["content"])
                    rep.deleted_items_purged += 1
    rep.disconnected.extend(disconnected)
    rep.tombstoned.extend(tombstoned)
    for guid in disconnected:
        store.events.info(IS_SOURCE, 9535, f"Mailbox Cleanup Agent: mailbox {guid} in {info.path_name} "
                          "marked Disconnected (no matching directory owner).")
    for guid in tombstoned:
        store.events.warning(IS_SOURCE, 9536, f"System attendant mailbox {guid} in {info.path_name} belongs "
                             "to another server: added to the mailbox tombstone table.")
    for guid in finished:
        for other in _mailbox_dbs(store, None):
            if other.guid != info.guid and _homed_owners(store, other, guid):
                _connect_copy(store, other, guid)
        store.events.info(IS_SOURCE, 9538, f"Mailbox Cleanup Agent: the interrupted move of mailbox {guid} "
                          f"finished; its copy in {info.path_name} was removed (the directory homes it elsewhere).")


def _homed_elsewhere(store: Store, guid: str, new_home: str) -> bool:
    return any(_same_dn(str(o.text("homeMDB") or ""), new_home)
               for o in store.directory.mailbox_owners(mailboxes.guid_bytes(guid)))


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


def _find(store: Store, guid: str, db: str | None = None) -> tuple[DatabaseInfo, dict[str, Any]]:
    """The mailbox with this GUID in the mounted databases (``db``: only there). The guide
    allows one GUID in several databases (dial tone, moves): a disconnected copy wins."""
    try:
        guid = str(uuid.UUID(guid))
    except ValueError as e:
        raise StoreError(MAPI_E_INVALID_PARAMETER, f"{guid!r} is not a mailbox GUID (like "
                         "0f8fad5b-d9cb-469f-a165-70867728950e; see 'mailkeep mailbox list')") from e
    found: list[tuple[DatabaseInfo, dict[str, Any]]] = []
    for info in _mailbox_dbs(store, db):
        with store.read(info) as (r, d):
            row = r.get(d, "mailbox", (guid,))
        if row is not None:
            found.append((info, dict(row)))
    if not found:
        raise StoreError(MAPI_E_NOT_FOUND, f"no mailbox {guid} in the mounted mailbox databases of "
                         f"{store.server.name}")
    found.sort(key=lambda f: f[1]["state"] != schema.DISCONNECTED)
    return found[0]


def purge(store: Store, guid: str, db: str | None = None) -> MailboxEntry:
    """Remove a disconnected mailbox (its tombstone, if any, stays)."""
    info, row = _find(store, guid, db)
    entry = next(m for m in list_mailboxes(store, str(info.guid)) if m.guid == row["guid"])
    with store.write(info) as (txn, d):
        now_row = txn.get(d, "mailbox", (row["guid"],))  # checked again where it is changed
        if now_row is None:
            raise StoreError(MAPI_E_NOT_FOUND, f"mailbox {row['guid']} is no longer in {info.path_name}")
        if now_row["state"] != schema.DISCONNECTED:
            raise StoreError(MAPI_E_NO_SUPPORT, f"mailbox {row['guid']} is {now_row['state']} "
                             f"({now_row['owner_dn']}); only a disconnected mailbox can be purged. If that "
                             "account no longer owns it, run 'mailkeep mailbox cleanup' first.")
        if now_row["kind"] == schema.USER and _homed_owners(store, info, row["guid"]):
            raise StoreError(MAPI_E_NO_SUPPORT, f"an account is homed on {info.path_name} with mailbox GUID "
                             f"{row['guid']} again; it will reconnect at its next logon, so it is not purged")
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
    likely owned it; with ``apply`` reconnect all that have one. When several mailboxes point
    at one account, the most recently used one is reconnected and the others are reported.
    Returns (suggestions, problems: every suggestion not applied, with the reason)."""
    out: list[Suggestion] = []
    used: dict[str, tuple[float, float, float]] = {}
    problems: list[str] = []
    for m in list_mailboxes(store, db, disconnected=True):
        if m.kind != schema.USER or m.tombstoned:
            continue
        match, reason = _likely_owner(store, m)
        out.append(Suggestion(m.guid, m.database, m.display_name, m.owner_dn, match, reason))
        used[m.guid] = (m.last_logon or 0.0, m.latest_item or 0.0, m.disconnected_at or 0.0)
    if apply:
        claimed: dict[str, str] = {}
        for s in sorted(out, key=lambda x: used[x.guid], reverse=True):
            if s.match is None:
                continue
            key = s.match.lower()
            if key in claimed:
                problems.append(f"{s.guid}: not reconnected: {s.match} was given mailbox {claimed[key]}, used "
                                "more recently (reconnect this one to another account with 'mailkeep mailbox "
                                "reconnect')")
                continue
            try:
                reconnect(store, s.guid, s.match)
                claimed[key] = s.guid
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
    """Move Mailbox, in four durable steps, each safe to interrupt and to run again:

    1. the source lists the mailbox in its tombstone table as *moving* (deliveries and logons
       get ecMailboxInTransit, a temporary failure, so nothing lands there from now on);
    2. the target receives a copy (state *moving*) from a snapshot taken after step 1;
    3. the directory homes the account on the target;
    4. the source drops its rows and the tombstone says *moved*; the target copy is connected.

    A failure before step 3 removes the mark (the source stays the mailbox). Running the
    same move again after a crash resumes it; the Mailbox Cleanup Agent also finishes step 4
    once the directory names the target.
    """
    tstore = target_store or store
    sa_names = {store.server.system_attendant_dn.lower(), "system attendant", "microsoft system attendant",
                store.server.system_attendant_legacy_dn.lower()}
    if user.strip().lower() in sa_names:
        raise StoreError(MAPI_E_NO_SUPPORT, "Move Mailbox does not apply to system attendant mailboxes")
    entry = store.directory.require_user(user)
    dst = tstore.server.database(target)
    if dst.public:
        raise StoreError(MAPI_E_NO_SUPPORT, f"{dst.path_name} is a public folder store")
    home_dn = str(entry.text("homeMDB") or "")
    raw = entry.first("msExchMailboxGUID")
    if home_dn and _same_dn(home_dn, dst.dn) and isinstance(raw, bytes):
        guid = mailboxes.guid_text(raw)
        if _finish_moves(store, guid, dst):  # an interrupted move past its directory step
            _connect_copy(tstore, dst, guid)
            return dst
        if _cancel_move(tstore, dst, guid):  # an interrupted move before it: the mailbox stays here
            return dst
        raise StoreError(MAPI_E_NO_SUPPORT, f"{entry.dn} is already homed on {dst.path_name}")
    src, guid = mailboxes.home(store, entry)
    tstore.handle(dst)
    # 1. in transit
    with store.write(src) as (txn, sd):
        row = txn.get(sd, "mailbox", (guid,))
        if row is not None and row["kind"] != schema.USER:
            raise StoreError(MAPI_E_NO_SUPPORT, "Move Mailbox does not apply to system attendant mailboxes")
        txn.put(sd, "tombstone", {"guid": guid, "reason": MOVING, "new_home": dst.dn, "server_legacy": "",
                                  "created": store.clock()})
    try:
        _copy_mailbox(store, src, tstore, dst, guid)
        server = tstore.server
        store.directory.replace(  # 3. the directory
            entry.dn, homeMDB=dst.dn, homeMTA=f"CN=Microsoft MTA,{server.dn}", msExchHomeServerName=server.legacy_dn,
        )
    except BaseException:
        with store.write(src) as (txn, sd):
            t = txn.get(sd, "tombstone", (guid,))
            if t is not None and t["reason"] == MOVING:
                txn.delete(sd, "tombstone", (guid,))  # the source is still the mailbox
        raise
    _finish_moves(store, guid, dst)  # 4.
    _connect_copy(tstore, dst, guid)
    store.events.info(IS_SOURCE, 9538, f"Mailbox {guid} of {entry.dn} moved from {src.path_name} to {dst.path_name}.")
    return dst


def _copy_mailbox(store: Store, src: DatabaseInfo, tstore: Store, dst: DatabaseInfo, guid: str) -> None:
    """Step 2: the target gets everything (folders with their UIDs and UIDVALIDITY, messages,
    flags, deleted items) in one transaction; a copy left by an interrupted move is replaced."""
    with store.read(src) as (r, sd):
        mb = r.get(sd, "mailbox", (guid,))
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
            there = txn.get(d, "mailbox", (guid,))
            if there is not None:
                if there["state"] != MOVING:
                    raise StoreError(MAPI_E_COLLISION, f"{dst.path_name} already holds a {there['state']} mailbox "
                                     f"{guid}; purge it there first (mailkeep mailbox purge {guid} --db "
                                     f'"{dst.name}") or move to another database')
                folders.delete_mailbox_rows(txn, d, guid)
            if mb is None:
                return  # never logged on: the directory change is the whole move
            txn.insert(d, "mailbox", {**dict(mb), "state": MOVING, "disconnected_at": None})
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


def _finish_moves(store: Store, guid: str, dst: DatabaseInfo) -> bool:
    """Step 4 on every mounted database of ``store`` marked as moving ``guid`` to ``dst``."""
    done = False
    for info in _mailbox_dbs(store, None):
        if info.guid == dst.guid:
            continue
        with store.write(info) as (txn, sd):
            t = txn.get(sd, "tombstone", (guid,))
            if t is None or t["reason"] != MOVING or not _same_dn(str(t["new_home"]), dst.dn):
                continue
            if txn.get(sd, "mailbox", (guid,)) is not None:
                folders.delete_mailbox_rows(txn, sd, guid)
            txn.update(sd, "tombstone", (guid,), {"reason": MOVED})
            done = True
    return done


def _cancel_move(store: Store, info: DatabaseInfo, guid: str) -> bool:
    """Moving a mailbox "to" the database that still holds it cancels an interrupted move
    that never reached the directory: the in-transit mark goes (a copy left in the other
    database is not connected; the cleanup agent disconnects it)."""
    with store.write(info) as (txn, d):
        t = txn.get(d, "tombstone", (guid,))
        if t is None or t["reason"] != MOVING or txn.get(d, "mailbox", (guid,)) is None:
            return False
        txn.delete(d, "tombstone", (guid,))
    store.events.warning(IS_SOURCE, 9538, f"The interrupted move of mailbox {guid} was cancelled; it stays in "
                         f"{info.path_name}.")
    return True


def _connect_copy(tstore: Store, dst: DatabaseInfo, guid: str) -> None:
    with tstore.write(dst) as (txn, d):
        row = txn.get(d, "mailbox", (guid,))
        if row is not None and row["state"] == MOVING:
            txn.update(d, "mailbox", (guid,), {"state": schema.CONNECTED})
