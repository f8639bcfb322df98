"""Row-level operations on mailboxes, folders, messages and content inside one transaction.

Every function takes the caller's engine transaction and keeps the invariants of
``store/schema.py`` within it: folder counters follow message rows, content reference
counts follow the rows that name the content, and content whose last reference goes is
deleted (row and stream) in the same transaction. Callers decide when to commit.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from mailkeep.engine.database import Database
from mailkeep.engine.transaction import Transaction
from mailkeep.store import schema
from mailkeep.store.errors import MAPI_E_COLLISION, MAPI_E_INVALID_PARAMETER, MAPI_E_NOT_FOUND, StoreError

SEEN = "\\Seen"
DELETED = "\\Deleted"
SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")


@dataclass(frozen=True)
class MessageMeta:
    """What the store keeps about a message besides its content."""

    size: int
    message_id: str
    subject: str
    sender: str
    envelope_from: str = ""


def flags_text(flags: set[str] | frozenset[str] | list[str] | tuple[str, ...]) -> str:
    """Flags are stored as one space-separated string, system flags in their IMAP spelling."""
    canon = {f.lower(): f for f in SYSTEM_FLAGS}
    return " ".join(sorted({canon.get(f.lower(), f) for f in flags if f}))


def flag_set(text: str | None) -> frozenset[str]:
    return frozenset((text or "").split())


def new_uidvalidity() -> int:
    return secrets.randbelow(2**31 - 2) + 1


# -- mailboxes -------------------------------------------------------------------------------------
def create_mailbox_rows(
    txn: Transaction, db: Database, guid: str, *, kind: str, owner_dn: str, legacy_dn: str,
    display_name: str, now: float, standard: bool = True, account: str = "", owner_guid: str = "",
    server_legacy: str = "",
) -> None:
    """Stage two of mailbox creation: allocate the mailbox and its standard folders."""
    txn.insert(db, "mailbox", {
        "guid": guid, "kind": kind, "state": schema.CONNECTED, "owner_dn": owner_dn, "legacy_dn": legacy_dn,
        "display_name": display_name, "account": account, "owner_guid": owner_guid,
        "server_legacy": server_legacy, "created": now, "last_logon": None, "disconnected_at": None,
        "next_fid": schema.ROOT_FID + 1,
    })
    root_name = "Public Folders" if kind == schema.PUBLIC else "Top of Information Store"
    txn.insert(db, "folder", _folder_row(guid, schema.ROOT_FID, 0, root_name, "root", now))
    if standard:
        for special, name in schema.STANDARD_FOLDERS:
            new_folder(txn, db, guid, schema.ROOT_FID, name, now, special=special)


def _folder_row(mailbox: str, fid: int, parent: int, name: str, special: str | None, now: float) -> dict[str, Any]:
    return {
        "mailbox": mailbox, "fid": fid, "parent": parent, "name": name, "special": special,
        "uidvalidity": new_uidvalidity(), "uidnext": 1, "messages": 0, "unread": 0, "created": now,
    }


def delete_mailbox_rows(txn: Transaction, db: Database, guid: str) -> int:
    """Remove a mailbox with its folders, messages and deleted items; returns messages removed."""
    n = 0
    for table in ("message", "dumpster"):
        for row in list(txn.scan(db, table, prefix=(guid,))):
            key = (guid, row["fid"], row["uid"]) if table == "message" else (guid, row["did"])
            txn.delete(db, table, key)
            drop_ref(txn, db, row["content"])
            n += table == "message"
    for row in list(txn.scan(db, "folder", prefix=(guid,))):
        txn.delete(db, "folder", (guid, row["fid"]))
    txn.delete(db, "mailbox", (guid,))
    return n


# -- folders ---------------------------------------------------------------------------------------
def new_folder(
    txn: Transaction, db: Database, mailbox: str, parent: int, name: str, now: float, *, special: str | None = None,
) -> int:
    check_folder_name(name)
    if find_child(txn, db, mailbox, parent, name) is not None:
        raise StoreError(MAPI_E_COLLISION, f"a folder named {name!r} already exists there")
    mb = txn.get(db, "mailbox", (mailbox,))
    if mb is None:
        raise StoreError(MAPI_E_NOT_FOUND, f"mailbox {mailbox} does not exist in this database")
    fid = int(mb["next_fid"])
    txn.update(db, "mailbox", (mailbox,), {"next_fid": fid + 1})
    txn.insert(db, "folder", _folder_row(mailbox, fid, parent, name, special, now))
    return fid


def check_folder_name(name: str) -> None:
    if not name or "/" in name or any(ord(c) < 32 or ord(c) == 127 for c in name) or name != name.strip() \
            or len(name) > 255:
        raise StoreError(MAPI_E_INVALID_PARAMETER, f"invalid folder name {name!r}: 1-255 characters, no '/', "
                         "no control characters, no leading or trailing spaces")


def find_child(txn: Any, db: Database, mailbox: str, parent: int, name: str) -> dict[str, Any] | None:
    for row in txn.scan(db, "folder", index="children", prefix=(mailbox, parent)):
        if row["name"].lower() == name.lower():
            return dict(row)
    return None


# -- content ---------------------------------------------------------------------------------------
def add_content(
    txn: Transaction, db: Database, stream: int, size: int, sha256: str, refs: int, now: float,
) -> int:
    row = txn.get(db, "info", ("next_cid",))
    cid = int(row["value"]) if row else 1
    txn.put(db, "info", {"key": "next_cid", "value": cid + 1})
    txn.insert(db, "content", {"cid": cid, "stream": stream, "size": size, "refs": refs, "sha256": sha256,
                               "created": now})
    return cid


def add_ref(txn: Transaction, db: Database, cid: int, n: int = 1) -> None:
    row = txn.get(db, "content", (cid,))
    if row is None:
        raise StoreError(MAPI_E_NOT_FOUND, f"content {cid} is missing; run isinteg -fix -test alltests")
    txn.update(db, "content", (cid,), {"refs": int(row["refs"]) + n})


def drop_ref(txn: Transaction, db: Database, cid: int) -> None:
    """One reference fewer; the last one deletes the content row and its stream."""
    row = txn.get(db, "content", (cid,))
    if row is None:
        return
    refs = int(row["refs"]) - 1
    if refs > 0:
        txn.update(db, "content", (cid,), {"refs": refs})
        return
    txn.delete(db, "content", (cid,))
    try:
        txn.delete_stream(db, int(row["stream"]))
    except Exception:  # noqa: BLE001 - a stream already gone (damage): the row is what matters
        pass


# -- messages --------------------------------------------------------------------------------------
def insert_message(
    txn: Transaction, db: Database, mailbox: str, fid: int, cid: int, meta: MessageMeta, *,
    flags: str = "", internal_date: float,
) -> int:
    """A message row in a folder (the caller has counted its reference to ``cid``)."""
    folder = txn.get(db, "folder", (mailbox, fid))
    if folder is None:
        raise StoreError(MAPI_E_NOT_FOUND, f"folder {fid} of mailbox {mailbox} does not exist")
    uid = int(folder["uidnext"])
    while txn.get(db, "message", (mailbox, fid, uid)) is not None:
        uid += 1  # a damaged counter (isinteg's folder test repairs it): never refuse mail for it
    txn.insert(db, "message", {
        "mailbox": mailbox, "fid": fid, "uid": uid, "content": cid, "flags": flags,
        "internal_date": internal_date, "size": meta.size, "message_id": meta.message_id,
        "subject": meta.subject, "sender": meta.sender, "envelope_from": meta.envelope_from,
    })
    unread = SEEN not in flag_set(flags)
    txn.update(db, "folder", (mailbox, fid), {
        "uidnext": uid + 1, "messages": int(folder["messages"]) + 1, "unread": int(folder["unread"]) + unread,
    })
    return uid


def remove_message(
    txn: Transaction, db: Database, row: dict[str, Any], *, now: float, to_dumpster: bool = True,
) -> None:
    """Take a message out of its folder: into deleted item retention, or gone (its content
    reference dropped)."""
    key = (row["mailbox"], row["fid"], row["uid"])
    if not txn.delete(db, "message", key):
        return
    folder = txn.get(db, "folder", (row["mailbox"], row["fid"]))
    if folder is not None:
        unread = SEEN not in flag_set(row["flags"])
        txn.update(db, "folder", (row["mailbox"], row["fid"]), {
            "messages": max(0, int(folder["messages"]) - 1), "unread": max(0, int(folder["unread"]) - unread),
        })
    if not to_dumpster:
        drop_ref(txn, db, row["content"])
        return
    last = list(txn.scan(db, "dumpster", prefix=(row["mailbox"],), reverse=True, limit=1))
    did = int(last[0]["did"]) + 1 if last else 1
    txn.insert(db, "dumpster", {
        "mailbox": row["mailbox"], "did": did, "fid": row["fid"], "content": row["content"],
        "flags": row["flags"], "internal_date": row["internal_date"], "size": row["size"],
        "message_id": row["message_id"], "subject": row["subject"], "sender": row["sender"],
        "envelope_from": row["envelope_from"], "deleted_at": now,
    })


def set_message_flags(txn: Transaction, db: Database, row: dict[str, Any], flags: str) -> None:
    if flags == (row["flags"] or ""):
        return
    key = (row["mailbox"], row["fid"], row["uid"])
    txn.update(db, "message", key, {"flags": flags})
    was_unread = SEEN not in flag_set(row["flags"])
    now_unread = SEEN not in flag_set(flags)
    if was_unread != now_unread:
        folder = txn.get(db, "folder", (row["mailbox"], row["fid"]))
        if folder is not None:
            txn.update(db, "folder", (row["mailbox"], row["fid"]),
                       {"unread": max(0, int(folder["unread"]) + (1 if now_unread else -1))})


def meta_of(row: dict[str, Any]) -> MessageMeta:
    return MessageMeta(int(row["size"]), row["message_id"] or "", row["subject"] or "", row["sender"] or "",
                       row["envelope_from"] or "")
