"""The mailbox access API the protocols use (IMAP, POP3, the console's mail view).

A :class:`Mailbox` is one logged-on mailbox (or a public folder store's hierarchy). Folder
paths use ``/`` between levels, relative to the top of the mailbox; ``INBOX`` (any case)
names the Inbox, as IMAP requires.

Invariants:
- Every change is one engine transaction, durable when the method returns; reads see a
  snapshot of durable transactions. Sessions on one mailbox may run in parallel threads:
  the storage group serialises writers and each read is a consistent snapshot.
- UIDs grow within a folder and are never reused under one UIDVALIDITY; a folder keeps its
  UIDVALIDITY when renamed and a re-created folder gets a new one.
- Deleting or expunging puts messages in deleted item retention (``dumpster``), whence
  :meth:`recover_deleted` brings them back until the retention period ends.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from mailkeep.engine.database import StreamReader
from mailkeep.store import content, folders, schema
from mailkeep.store.errors import (
    MAPI_E_COLLISION,
    MAPI_E_NO_SUPPORT,
    MAPI_E_NOT_FOUND,
    StoreError,
    ecMailboxInTransit,
)
from mailkeep.store.server import DatabaseInfo

if TYPE_CHECKING:
    from mailkeep.store.store import Store


@dataclass(frozen=True)
class FolderInfo:
    fid: int
    parent: int
    name: str
    path: str
    special: str | None
    uidvalidity: int
    uidnext: int
    messages: int
    unread: int


@dataclass(frozen=True)
class MessageInfo:
    uid: int
    flags: frozenset[str]
    internal_date: float
    size: int
    message_id: str
    subject: str
    sender: str


@dataclass(frozen=True)
class DeletedItem:
    did: int
    fid: int
    message_id: str
    subject: str
    deleted_at: float


def _msg(row: dict[str, Any]) -> MessageInfo:
    return MessageInfo(int(row["uid"]), folders.flag_set(row["flags"]), float(row["internal_date"]),
                       int(row["size"]), row["message_id"] or "", row["subject"] or "", row["sender"] or "")


class Mailbox:
    def __init__(self, store: Store, info: DatabaseInfo, guid: str) -> None:
        self.store = store
        self.info = info
        self.guid = guid
        self._fids: dict[str, int] = {}  # normalised path -> folder id, checked at each use

    def _fid(self, r: Any, db: Any, path: str) -> int:
        """A folder's id for the hot paths (a FETCH per message): the cached id is used only
        after its row and every parent up to the root are read again and still spell the path
        (so a rename, move or delete elsewhere is never missed); otherwise the whole tree is
        read as :meth:`folder` does."""
        want = _normpath(path)
        fid = self._fids.get(want)
        if fid is not None and _spells(r, db, self.guid, fid, want):
            return fid
        self._fids.pop(want, None)
        fid = self.folder(path).fid
        if len(self._fids) > 256:
            self._fids.clear()
        self._fids[want] = fid
        return fid

    @contextmanager
    def _write(self) -> Iterator[tuple[Any, Any]]:
        """A write transaction on this mailbox; refused once the mailbox is in the
        tombstone table (moved, or being moved: a change now would not travel with it)."""
        with self.store.write(self.info) as (txn, db):
            t = txn.get(db, "tombstone", (self.guid,))
            if t is not None:
                raise StoreError(ecMailboxInTransit, f"mailbox {self.guid} has moved or is being moved "
                                 f"({t['reason']}); log on again", new_home=t["new_home"] or None)
            yield txn, db

    # -- folders -------------------------------------------------------------------------------
    def folders(self) -> list[FolderInfo]:
        with self.store.read(self.info) as (r, db):
            rows = [dict(x) for x in r.scan(db, "folder", prefix=(self.guid,))]
        if not rows:
            raise StoreError(MAPI_E_NOT_FOUND, f"mailbox {self.guid} does not exist in {self.info.path_name}")
        return _tree(rows)

    def folder(self, path: str) -> FolderInfo:
        want = _normpath(path)
        for f in self.folders():
            if _normpath(f.path) == want or (want == "inbox" and f.special == "inbox"):
                return f
        raise StoreError(MAPI_E_NOT_FOUND, f"no folder {path!r} in this mailbox")

    def uidvalidity(self, path: str) -> int:
        return self.folder(path).uidvalidity

    def create_folder(self, path: str) -> FolderInfo:
        parts = [p for p in path.strip("/").split("/") if p]
        if not parts:
            raise StoreError(MAPI_E_COLLISION, "a folder needs a name")
        with self._write() as (txn, db):
            parent = schema.ROOT_FID
            now = self.store.clock()
            for i, name in enumerate(parts):
                if i == 0 and name.lower() == "inbox":
                    parent = _special(txn, db, self.guid, "inbox")
                    if len(parts) == 1:
                        raise StoreError(MAPI_E_COLLISION, "INBOX always exists")
                    continue
                child = folders.find_child(txn, db, self.guid, parent, name)
                if child is not None:
                    if i == len(parts) - 1:
                        raise StoreError(MAPI_E_COLLISION, f"folder {path!r} already exists")
                    parent = int(child["fid"])
                    continue
                parent = folders.new_folder(txn, db, self.guid, parent, name, now)
        return self.folder(path)

    def rename_folder(self, old: str, new: str) -> FolderInfo:
        f = self.folder(old)
        if f.special is not None:
            raise StoreError(MAPI_E_NO_SUPPORT, f"{f.name} is a standard folder and cannot be renamed")
        parts = [p for p in new.strip("/").split("/") if p]
        if not parts:
            raise StoreError(MAPI_E_COLLISION, "a folder needs a name")
        parent_path = "/".join(parts[:-1])
        with self._write() as (txn, db):
            parent = self._fid_in(txn, db, parent_path) if parent_path else schema.ROOT_FID
            if _is_below(txn, db, self.guid, parent, f.fid):
                raise StoreError(MAPI_E_NO_SUPPORT, "a folder cannot be moved under itself")
            folders.check_folder_name(parts[-1])
            clash = folders.find_child(txn, db, self.guid, parent, parts[-1])
            if clash is not None and int(clash["fid"]) != f.fid:
                raise StoreError(MAPI_E_COLLISION, f"folder {new!r} already exists")
            txn.update(db, "folder", (self.guid, f.fid), {"parent": parent, "name": parts[-1]})
        return self.folder(new)

    def delete_folder(self, path: str) -> int:
        """Delete a folder and its subfolders; their messages go to deleted item retention.
        Returns the number of messages moved there."""
        f = self.folder(path)
        if f.special is not None:
            raise StoreError(MAPI_E_NO_SUPPORT, f"{f.name} is a standard folder and cannot be deleted")
        n = 0
        with self._write() as (txn, db):
            now = self.store.clock()
            for fid in _subtree(txn, db, self.guid, f.fid):
                for row in list(txn.scan(db, "message", prefix=(self.guid, fid))):
                    folders.remove_message(txn, db, dict(row), now=now)
                    n += 1
                txn.delete(db, "folder", (self.guid, fid))
        return n

    def _fid_in(self, txn: Any, db: Any, path: str) -> int:
        parent = schema.ROOT_FID
        for i, name in enumerate(p for p in path.strip("/").split("/") if p):
            if i == 0 and name.lower() == "inbox":
                parent = _special(txn, db, self.guid, "inbox")
                continue
            child = folders.find_child(txn, db, self.guid, parent, name)
            if child is None:
                raise StoreError(MAPI_E_NOT_FOUND, f"no folder {path!r} in this mailbox")
            parent = int(child["fid"])
        return parent

    # -- messages ------------------------------------------------------------------------------
    def messages(self, path: str = "INBOX") -> list[MessageInfo]:
        f = self.folder(path)
        with self.store.read(self.info) as (r, db):
            return [_msg(dict(x)) for x in r.scan(db, "message", prefix=(self.guid, f.fid))]

    @contextmanager
    def fetch(self, path: str, uid: int) -> Iterator[StreamReader]:
        """The message's bytes, streamed (and checked against their SHA-256 at the end)."""
        with self.store.read(self.info) as (r, db):
            fid = self._fid(r, db, path)
            row = r.get(db, "message", (self.guid, fid, uid))
            if row is None:
                raise StoreError(MAPI_E_NOT_FOUND, f"no message with UID {uid} in {path}")
            c = r.get(db, "content", (row["content"],))
            if c is None:
                raise StoreError(MAPI_E_NOT_FOUND, f"the content of UID {uid} is missing; run isinteg -fix")
            reader = r.open_stream(db, int(c["stream"]))
        try:
            yield reader
        finally:
            reader.close()

    def read_message(self, path: str, uid: int) -> bytes:
        with self.fetch(path, uid) as r:
            return r.readall()

    def _rows(self, txn: Any, db: Any, fid: int, uids: Iterable[int]) -> list[dict[str, Any]]:
        """The messages with these UIDs, each once (a UID named twice is one message)."""
        out = []
        for uid in dict.fromkeys(int(u) for u in uids):
            row = txn.get(db, "message", (self.guid, fid, int(uid)))
            if row is not None:
                out.append(dict(row))
        return out

    def set_flags(
        self, path: str, uids: Iterable[int], flags: Iterable[str], mode: str = "replace",
    ) -> dict[int, frozenset[str]]:
        """``mode``: replace, add or remove (IMAP STORE FLAGS, +FLAGS, -FLAGS)."""
        if mode not in ("replace", "add", "remove"):
            raise ValueError(f"mode must be replace, add or remove, not {mode!r}")
        f = self.folder(path)
        wanted = folders.flag_set(folders.flags_text(list(flags)))
        out: dict[int, frozenset[str]] = {}
        with self._write() as (txn, db):
            for row in self._rows(txn, db, f.fid, uids):
                have = folders.flag_set(row["flags"])
                new = wanted if mode == "replace" else have | wanted if mode == "add" else have - wanted
                folders.set_message_flags(txn, db, row, folders.flags_text(list(new)))
                out[int(row["uid"])] = frozenset(new)
        return out

    def copy(self, path: str, uids: Iterable[int], dest: str) -> dict[int, int]:
        """Copy messages (content shared, reference counted); old UID -> new UID."""
        return self._copy(path, uids, dest, move=False)

    def move(self, path: str, uids: Iterable[int], dest: str) -> dict[int, int]:
        return self._copy(path, uids, dest, move=True)

    def _copy(self, path: str, uids: Iterable[int], dest: str, *, move: bool) -> dict[int, int]:
        src, dst = self.folder(path), self.folder(dest)
        out: dict[int, int] = {}
        with self._write() as (txn, db):
            for row in self._rows(txn, db, src.fid, uids):
                folders.add_ref(txn, db, row["content"])
                new = folders.insert_message(txn, db, self.guid, dst.fid, row["content"], folders.meta_of(row),
                                             flags=row["flags"] or "", internal_date=row["internal_date"])
                out[int(row["uid"])] = new
                if move:  # the copy holds its own reference, so the content stays
                    folders.remove_message(txn, db, row, now=self.store.clock(), to_dumpster=False)
        return out

    def delete(self, path: str, uids: Iterable[int]) -> list[int]:
        """Remove messages now (into deleted item retention); returns the UIDs removed."""
        f = self.folder(path)
        with self._write() as (txn, db):
            rows = self._rows(txn, db, f.fid, uids)
            for row in rows:
                folders.remove_message(txn, db, row, now=self.store.clock())
        return [int(r["uid"]) for r in rows]

    def expunge(self, path: str, uids: Iterable[int] | None = None) -> list[int]:
        """Remove the messages flagged \\Deleted (only those in ``uids`` when given)."""
        f = self.folder(path)
        allowed = None if uids is None else {int(u) for u in uids}
        with self._write() as (txn, db):
            rows = [dict(r) for r in txn.scan(db, "message", prefix=(self.guid, f.fid))
                    if folders.DELETED in folders.flag_set(r["flags"]) and (allowed is None or r["uid"] in allowed)]
            for row in rows:
                folders.remove_message(txn, db, row, now=self.store.clock())
        return [int(r["uid"]) for r in rows]

    def append(
        self, path: str, source: BinaryIO | content.Readable, *, flags: Iterable[str] = (),
        internal_date: float | None = None,
    ) -> int:
        """A message from a client (IMAP APPEND, a saved draft): its UID in ``path``."""
        f = self.folder(path)
        with self._write() as (txn, db):
            now = self.store.clock()
            stored = content.store_message(txn, db, source)
            cid = folders.add_content(txn, db, stored.stream, stored.size, stored.sha256, 1, now)
            return folders.insert_message(txn, db, self.guid, f.fid, cid, stored.meta,
                                          flags=folders.flags_text(list(flags)),
                                          internal_date=now if internal_date is None else internal_date)

    # -- deleted item retention -----------------------------------------------------------------
    def deleted_items(self) -> list[DeletedItem]:
        with self.store.read(self.info) as (r, db):
            return [DeletedItem(int(x["did"]), int(x["fid"]), x["message_id"] or "", x["subject"] or "",
                                float(x["deleted_at"])) for x in r.scan(db, "dumpster", prefix=(self.guid,))]

    def recover_deleted(self, dids: Iterable[int] | None = None) -> int:
        """Put items from deleted item retention back in their folders (the Deleted Items
        folder when theirs is gone); returns how many."""
        wanted = None if dids is None else {int(d) for d in dids}
        n = 0
        with self._write() as (txn, db):
            now = self.store.clock()
            for row in [dict(r) for r in txn.scan(db, "dumpster", prefix=(self.guid,))]:
                if wanted is not None and row["did"] not in wanted:
                    continue
                fid = row["fid"] if txn.get(db, "folder", (self.guid, row["fid"])) else _special(
                    txn, db, self.guid, "deleted", now)
                txn.delete(db, "dumpster", (self.guid, row["did"]))
                folders.insert_message(txn, db, self.guid, fid, row["content"], folders.meta_of(row),
                                       flags=row["flags"] or "", internal_date=row["internal_date"])
                n += 1
        return n


def _special(txn: Any, db: Any, guid: str, special: str, now: float | None = None) -> int:
    from mailkeep.store.delivery import special_fid

    return special_fid(txn, db, guid, special, time.time() if now is None else now)


def _spells(r: Any, db: Any, guid: str, fid: int, want: str) -> bool:
    """Whether folder ``fid`` still has the normalised path ``want`` (read up to the root)."""
    names: list[str] = []
    seen: set[int] = set()
    cur = fid
    while cur != schema.ROOT_FID:
        if cur in seen or len(seen) > 64:
            return False
        seen.add(cur)
        row = r.get(db, "folder", (guid, cur))
        if row is None:
            return False
        names.append("inbox" if row["special"] == "inbox" else str(row["name"]).lower())
        cur = int(row["parent"])
    return "/".join(reversed(names)) == want


def _normpath(path: str) -> str:
    """Folder names are unique without regard to case within a parent (as in Exchange), so
    paths compare without case too."""
    return "/".join(x for x in path.strip("/").split("/") if x).lower()


def _tree(rows: list[dict[str, Any]]) -> list[FolderInfo]:
    by_id = {r["fid"]: r for r in rows}
    out = []

    def path_of(r: dict[str, Any]) -> str:
        names = []
        seen: set[int] = set()
        while r["fid"] != schema.ROOT_FID and r["fid"] not in seen:
            seen.add(r["fid"])
            names.append("INBOX" if r["special"] == "inbox" else r["name"])
            parent = by_id.get(r["parent"])
            if parent is None:
                break
            r = parent
        return "/".join(reversed(names))

    for r in rows:
        if r["fid"] == schema.ROOT_FID:
            continue
        out.append(FolderInfo(int(r["fid"]), int(r["parent"]), r["name"], path_of(r), r["special"],
                              int(r["uidvalidity"]), int(r["uidnext"]), int(r["messages"]), int(r["unread"])))
    return sorted(out, key=lambda f: (f.special != "inbox", f.path.lower()))


def _subtree(txn: Any, db: Any, guid: str, fid: int) -> list[int]:
    out, todo = [], [fid]
    while todo:
        cur = todo.pop()
        out.append(cur)
        todo.extend(int(r["fid"]) for r in txn.scan(db, "folder", index="children", prefix=(guid, cur)))
    return out


def _is_below(txn: Any, db: Any, guid: str, fid: int, ancestor: int) -> bool:
    seen: set[int] = set()
    while fid and fid not in seen:
        if fid == ancestor:
            return True
        seen.add(fid)
        row = txn.get(db, "folder", (guid, fid))
        fid = int(row["parent"]) if row else 0
    return False


def open_mailbox(store: Store, user: str) -> Mailbox:
    """Log on as ``user`` (an account name or address): the mailbox its directory
    attributes reach, created or reconnected as ``store/mailboxes.py`` says."""
    from mailkeep.store import mailboxes

    d = store.directory
    entry = d.find_user(user) or mailboxes.find_recipient(d, user)
    if entry is None:
        from mailkeep.store.errors import ecUnknownUser

        raise StoreError(ecUnknownUser, f"no account {user!r}")
    info, guid = mailboxes.home(store, entry)
    owner = mailboxes.Owner.of(entry)
    with store.write(info) as (txn, db):
        mailboxes.ensure_mailbox(txn, db, guid, owner, store.clock(), logon=True, events=store.events, info=info)
    return Mailbox(store, info, guid)
