"""The tables of a mailbox or public folder database (docs/store.md describes them).

Invariants:
- A mailbox is keyed by its mailbox GUID (canonical text form of ``msExchMailboxGUID``);
  every folder, message and deleted item row carries that key first, so a mailbox's rows
  are one index range.
- ``content.refs`` equals the number of ``message`` plus ``dumpster`` rows that name the
  content; content with no reference is deleted in the transaction that drops the last one
  (isinteg's ``msgref`` and ``content`` tests check both).
- ``folder.messages``/``folder.unread`` equal the counts of the folder's message rows, and
  ``folder.uidnext`` is above every UID the folder has held (IMAP never reuses a UID under
  one UIDVALIDITY).
- A public folder store holds one mailbox row of kind ``public`` (key: the database's
  directory GUID) whose folder tree is the public folder hierarchy.
"""

from __future__ import annotations

from mailkeep.engine.schema import TableSpec

INFO = TableSpec("info", ("key", "value"), ("key",))
MAILBOX = TableSpec(
    "mailbox",
    (
        "guid", "kind", "state", "owner_dn", "legacy_dn", "display_name", "account", "owner_guid",
        "server_legacy", "created", "last_logon", "disconnected_at", "next_fid",
    ),
    ("guid",),
)
TOMBSTONE = TableSpec("tombstone", ("guid", "reason", "new_home", "server_legacy", "created"), ("guid",))
FOLDER = TableSpec(
    "folder",
    ("mailbox", "fid", "parent", "name", "special", "uidvalidity", "uidnext", "messages", "unread", "created"),
    ("mailbox", "fid"),
    {"children": ("mailbox", "parent", "name")},
)
MESSAGE = TableSpec(
    "message",
    (
        "mailbox", "fid", "uid", "content", "flags", "internal_date", "size", "message_id", "subject",
        "sender", "envelope_from",
    ),
    ("mailbox", "fid", "uid"),
    {"bycontent": ("content",), "bymsgid": ("mailbox", "message_id")},
)
CONTENT = TableSpec("content", ("cid", "stream", "size", "refs", "sha256", "created"), ("cid",))
DUMPSTER = TableSpec(
    "dumpster",
    (
        "mailbox", "did", "fid", "content", "flags", "internal_date", "size", "message_id", "subject",
        "sender", "envelope_from", "deleted_at",
    ),
    ("mailbox", "did"),
    {"bycontent": ("content",)},
)

TABLES = (INFO, MAILBOX, TOMBSTONE, FOLDER, MESSAGE, CONTENT, DUMPSTER)

# Mailbox kinds and states (the lifecycle of STYLE §6: allocated -> connected <-> disconnected
# -> purged; a tombstone is a separate table, so a purged mailbox can stay tombstoned).
USER, SYSTEM_ATTENDANT, PUBLIC = "user", "system-attendant", "public"
CONNECTED, DISCONNECTED = "connected", "disconnected"
TOMBSTONED = "tombstoned"  # only in listings: a tombstone whose mailbox row is gone

ROOT_FID = 1  # "Top of Information Store" (or the public folder root): never shown, never deleted
# The standard folders an Exchange mailbox is created with, in the order Outlook lists them.
STANDARD_FOLDERS = (
    ("inbox", "Inbox"),
    ("outbox", "Outbox"),
    ("sent", "Sent Items"),
    ("deleted", "Deleted Items"),
    ("drafts", "Drafts"),
    ("junk", "Junk E-mail"),
    ("calendar", "Calendar"),
    ("contacts", "Contacts"),
    ("journal", "Journal"),
    ("notes", "Notes"),
    ("tasks", "Tasks"),
)
