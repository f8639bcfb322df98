"""Delivery: raw RFC 5322 bytes and envelope recipients into mailboxes.

Invariants:
- A delivery to the recipients of one database is one engine transaction: the content is
  streamed once into that database's ``.stm`` (single instance: one content row whose
  reference count is the number of recipients there) and every recipient's Inbox row is
  written; :func:`deliver` returns only after that transaction is durable, so "delivered"
  in its report may be acknowledged to a sender (SMTP 250, exit 0 of ``mailkeep deliver``).
- Each recipient gets its own outcome: delivered, unknown (permanent), rejected (the message
  itself can never be stored, e.g. empty), or a temporary failure (dismounted database,
  mailbox in transit that cannot be rerouted here, ...).
- A recipient whose mailbox is in the tombstone table is rerouted once to the home the
  directory names now (the guide: "the server then tries to reroute the message").
- A message already in a recipient's mailbox (same Message-ID, same bytes: an MTA's retry)
  is not stored twice; the outcome says "delivered" (duplicate suppressed).
- A source that cannot seek is spooled (to the data folder, in chunks) when more than one
  database needs it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

from mailkeep.directory.backend import DirectoryError
from mailkeep.engine.errors import EseError
from mailkeep.store import content, folders, mailboxes
from mailkeep.store.errors import (
    MAPI_E_CALL_FAILED,
    StoreError,
    ecMailboxInTransit,
    ecUnknownUser,
)
from mailkeep.store.mailboxes import IS_SOURCE, Owner
from mailkeep.store.server import DatabaseInfo

if TYPE_CHECKING:
    from mailkeep.store.store import Store

DELIVERED, UNKNOWN, TEMPORARY, REJECTED = "delivered", "unknown", "temporary", "rejected"


@dataclass
class Outcome:
    recipient: str
    status: str
    code: int = 0
    message: str = ""
    database: str = ""
    mailbox: str = ""
    uid: int = 0
    new_home: str | None = None

    @property
    def code_name(self) -> str:
        from mailkeep.store.errors import CODES

        return CODES.get(self.code, "") if self.code else ""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def delivered(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == DELIVERED]

    def of(self, recipient: str) -> Outcome:
        return next(o for o in self.outcomes if o.recipient == recipient)


@dataclass
class Target:
    """A recipient resolved to a mailbox of a database of this server."""

    recipient: str
    info: DatabaseInfo
    guid: str
    owner: Owner


def deliver(store: Store, source: IO[bytes] | content.Readable, recipients: list[str], *, sender: str = "") -> Report:
    report = Report()
    targets: dict[str, list[Target]] = {}
    for rcpt in recipients:
        try:
            t = resolve(store, rcpt)
        except StoreError as e:
            report.outcomes.append(_failed(rcpt, e))
            continue
        except DirectoryError as e:
            report.outcomes.append(Outcome(rcpt, TEMPORARY, MAPI_E_CALL_FAILED, f"directory unavailable: {e}"))
            continue
        targets.setdefault(str(t.info.guid), []).append(t)
    many = len(targets) > 1 or sum(len(g) for g in targets.values()) > 1  # a reroute may need it again
    with _Spool(source, store.server.data, many) as spool:
        pending = list(targets.values())
        rerouted: set[str] = set()
        while pending:
            group = pending.pop(0)
            src = spool.open()
            if src is None:
                err = StoreError(MAPI_E_CALL_FAILED, "the message could not be read again to reroute it; resend it")
                report.outcomes.extend(_failed(t.recipient, err) for t in group)
                continue
            done = deliver_to_database(store, group[0].info, src, group, sender=sender)
            for o in done:
                t = next(x for x in group if x.recipient == o.recipient)
                if o.code == ecMailboxInTransit and t.recipient not in rerouted:
                    again = _reroute(store, t)
                    if again is not None:
                        rerouted.add(t.recipient)
                        pending.append([again])
                        continue
                report.outcomes.append(o)
    order = {r: i for i, r in enumerate(recipients)}
    report.outcomes.sort(key=lambda o: order.get(o.recipient, 0))
    return report


def resolve(store: Store, rcpt: str) -> Target:
    user = mailboxes.find_recipient(store.directory, rcpt)
    if user is None:
        raise StoreError(ecUnknownUser, f"no mailbox-enabled account has the address {rcpt}")
    info, guid = mailboxes.home(store, user)
    return Target(rcpt, info, guid, Owner.of(user))


def _reroute(store: Store, t: Target) -> Target | None:
    """After ecMailboxInTransit: the home the directory names now, if it is elsewhere here."""
    try:
        again = resolve(store, t.recipient)
    except (StoreError, DirectoryError):
        return None
    return again if again.info.guid != t.info.guid else None


def deliver_to_database(
    store: Store, info: DatabaseInfo, source: content.Readable, targets: list[Target], *, sender: str = "",
) -> list[Outcome]:
    """One durable transaction for every target in ``info``. A tombstoned mailbox gets
    ecMailboxInTransit with its new home; nothing is rerouted here."""
    out: list[Outcome] = []
    try:
        store.handle(info)
    except StoreError as e:
        return [_failed(t.recipient, e) for t in targets]
    now = store.clock()
    placed: list[tuple[Target, int]] = []
    dups: set[str] = set()
    try:
        with store.write(info) as (txn, db):
            ok: dict[str, Target] = {}
            firsts: list[Target] = []
            for t in targets:
                if t.guid in ok:
                    firsts.append(t)  # the same mailbox twice: one copy
                    continue
                try:
                    mailboxes.ensure_mailbox(txn, db, t.guid, t.owner, now, events=store.events, info=info)
                except StoreError as e:
                    out.append(_failed(t.recipient, e))
                    continue
                ok[t.guid] = t
            if ok:
                stored = content.store_message(txn, db, source, envelope_from=sender)
                uids = {g: uid for g in ok if (uid := _already_there(txn, db, g, stored))}
                fresh = [g for g in ok if g not in uids]
                if fresh:
                    cid = folders.add_content(txn, db, stored.stream, stored.size, stored.sha256, len(fresh), now)
                    for guid in fresh:
                        fid = special_fid(txn, db, guid, "inbox", now)
                        uids[guid] = folders.insert_message(txn, db, guid, fid, cid, stored.meta, internal_date=now)
                else:
                    txn.delete_stream(db, stored.stream)  # every copy is there already
                dups = set(ok) - set(fresh)
                placed = [(t, uids[t.guid]) for t in [*ok.values(), *firsts] if t.guid in uids]
    except Exception as e:  # noqa: BLE001 - rolled back: nobody in this database got it; say so per recipient
        if isinstance(e, StoreError):
            err = e
        else:
            err = StoreError(MAPI_E_CALL_FAILED, f"{info.path_name}: {e}" + (
                "" if isinstance(e, EseError) else
                f"; check the database: mailkeep isinteg -db \"{info.name}\" -test alltests"))
            store.events.error(IS_SOURCE, 9542, f"Delivery to {info.path_name} failed and was rolled back "
                               f"(the sender will retry): {type(e).__name__}: {e}")
        done = {o.recipient for o in out}
        return out + [_failed(t.recipient, err) for t in targets if t.recipient not in done]
    for t, uid in placed:
        note = "already delivered (duplicate suppressed)" if t.guid in dups else "delivered"
        out.append(Outcome(t.recipient, DELIVERED, 0, note, info.path_name, t.guid, uid))
    return out


def _already_there(txn: Any, db: Any, guid: str, stored: content.Stored) -> int:
    """The UID of this very message (same Message-ID, same bytes) already in the mailbox, or 0.
    An MTA that retries after a failure reported for another recipient must not make a
    second copy (duplicate delivery suppression, as Exchange's store does by Message-ID)."""
    mid = stored.meta.message_id
    if not mid:
        return 0
    for row in txn.scan(db, "message", index="bymsgid", prefix=(guid, mid)):
        c = txn.get(db, "content", (row["content"],))
        if c is not None and c["sha256"] == stored.sha256 and int(c["size"]) == stored.size:
            return int(row["uid"])
    return 0


def special_fid(txn: Any, db: Any, guid: str, special: str, now: float) -> int:
    """The folder with this role; a missing standard folder is created again (never lose mail)."""
    for row in txn.scan(db, "folder", prefix=(guid,)):
        if row["special"] == special:
            return int(row["fid"])
    from mailkeep.store.schema import ROOT_FID, STANDARD_FOLDERS

    name = dict(STANDARD_FOLDERS)[special]
    existing = folders.find_child(txn, db, guid, ROOT_FID, name)
    if existing is not None:
        txn.update(db, "folder", (guid, existing["fid"]), {"special": special})
        return int(existing["fid"])
    return folders.new_folder(txn, db, guid, ROOT_FID, name, now, special=special)


def _failed(rcpt: str, e: StoreError) -> Outcome:
    status = UNKNOWN if e.code == ecUnknownUser else TEMPORARY if e.temporary else REJECTED
    return Outcome(rcpt, status, e.code, e.message, new_home=e.new_home)


class _Tracked:
    """A source that knows whether anything was read from it yet."""

    def __init__(self, source: Any) -> None:
        self.source = source
        self.touched = False

    def read(self, size: int = -1, /) -> bytes:
        self.touched = True
        return bytes(self.source.read(size))


class _Spool:
    """The message source, readable once per database: seeked back when it can seek,
    spooled to ``<data>/tmp`` (in chunks) when it cannot and may be needed twice."""

    def __init__(self, source: Any, data: str, reuse: bool) -> None:
        self.data = data
        self.file: IO[bytes] | None = None
        self.start = 0
        seekable = getattr(source, "seekable", None)
        self.seekable = bool(callable(seekable) and seekable())
        if self.seekable:
            self.start = source.tell()
        self.source = _Tracked(source)
        if reuse and not self.seekable:
            tmp = os.path.join(self.data, "tmp")
            os.makedirs(tmp, exist_ok=True)
            self.file = tempfile.TemporaryFile(dir=tmp)  # noqa: SIM115 - closed in __exit__
            shutil.copyfileobj(source, self.file, content.CHUNK)

    def open(self) -> Any:
        """The source from its start, or None when it was consumed and cannot be reread."""
        if self.file is not None:
            self.file.seek(0)
            return self.file
        if self.source.touched:
            if not self.seekable:
                return None
            self.source.source.seek(self.start)
        return self.source

    def __enter__(self) -> _Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.file is not None:
            self.file.close()
