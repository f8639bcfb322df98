"""The system attendant mailbox: one per server, in the database its directory object names.

The guide's "Issues with the System Attendant Mailbox When Moving an Exchange Mailbox
Database", kept exactly:
- The system attendant's mailbox GUID and home (``homeMDB``) are on
  ``CN=Microsoft System Attendant,<server>``; the mailbox is created at the first logon or
  delivery (stage two), in that database only.
- A GUID in the database's tombstone table cannot be created there: each attempt logs event
  1022 (source "MSExchangeIS Mailbox Store", category Logons) with the guide's text and
  error 1292, and fails with ``ecMailboxInTransit``.
- The cleanup agent (``store/agents.py``) tombstones a system attendant mailbox that finds
  itself on another server, permanently; purging does not remove the tombstone.
"""

from __future__ import annotations

import io
import time
from typing import TYPE_CHECKING

from mailkeep.store import content, folders, mailboxes, schema
from mailkeep.store.delivery import special_fid
from mailkeep.store.errors import StoreError, ecLoginFailure, ecMailboxInTransit
from mailkeep.store.mailboxes import IS_SOURCE, Owner
from mailkeep.store.server import DatabaseInfo

if TYPE_CHECKING:
    from mailkeep.store.store import Store

LOGON_FAILURE = 1022


def home(store: Store) -> tuple[DatabaseInfo, str, Owner]:
    d = store.directory
    sa = d.get(store.server.system_attendant_dn)
    if sa is None:
        raise StoreError(ecLoginFailure, f"the directory has no system attendant for server {store.server.name}")
    home_dn = sa.text("homeMDB")
    info = store.server.database_by_dn(str(home_dn)) if home_dn else None
    if info is None:
        raise StoreError(ecLoginFailure, f"server {store.server.name} has no system attendant mailbox database")
    raw = sa.first("msExchMailboxGUID")
    if not isinstance(raw, bytes):
        raise StoreError(ecLoginFailure, f"{sa.dn} has no msExchMailboxGUID")
    owner = Owner.of(sa, kind=schema.SYSTEM_ATTENDANT, server_legacy=store.server.legacy_dn)
    return info, mailboxes.guid_text(raw), owner


def logon(store: Store) -> str:
    """The system attendant's logon to its mailbox (creating it when missing); its GUID."""
    info, guid, owner = home(store)
    try:
        with store.write(info) as (txn, db):
            mailboxes.ensure_mailbox(txn, db, guid, owner, store.clock(), logon=True, events=store.events, info=info)
    except StoreError as e:
        if e.code == ecMailboxInTransit:
            _log_failure(store, info)
        raise
    return guid


def _log_failure(store: Store, info: DatabaseInfo) -> None:
    store.events.error(
        IS_SOURCE, LOGON_FAILURE,
        f'Logon Failure on database "{info.sg.name}\\{info.name}" - Windows 2000 account NT AUTHORITY\\SYSTEM; '
        f"mailbox {store.server.system_attendant_legacy_dn}.\n\nError: {ecMailboxInTransit}",
        category="Logons", error=ecMailboxInTransit, database=info.path_name,
    )


def run_task(store: Store, subject: str = "Server monitor") -> int:
    """A system attendant task that needs delivery to its mailbox; the new message's UID."""
    info, guid, owner = home(store)
    now = store.clock()
    body = (
        f"From: System Attendant <{store.server.name}@{store.directory.domain}>\r\n"
        f"Subject: {subject}\r\nDate: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime(now))}\r\n"
        f"Message-ID: <sa.{int(now * 1e6)}@{store.server.name}>\r\n\r\n{subject}\r\n"
    ).encode()
    try:
        with store.write(info) as (txn, db):
            mailboxes.ensure_mailbox(txn, db, guid, owner, now, events=store.events, info=info)
            stored = content.store_message(txn, db, io.BytesIO(body))
            cid = folders.add_content(txn, db, stored.stream, stored.size, stored.sha256, 1, now)
            fid = special_fid(txn, db, guid, "inbox", now)
            # The system attendant consumes its task messages: the ones before this are done,
            # so its mailbox does not grow with every run of the periodic agents.
            for old in [dict(r) for r in txn.scan(db, "message", prefix=(guid, fid))]:
                if old["subject"] == subject:
                    folders.remove_message(txn, db, old, now=now, to_dumpster=False)
            return folders.insert_message(txn, db, guid, fid, cid, stored.meta, internal_date=now)
    except StoreError as e:
        if e.code == ecMailboxInTransit:
            _log_failure(store, info)
        raise
