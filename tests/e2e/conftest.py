"""Fixtures and helpers for the store-level drills (DRILLS.md): real servers (embedded
directory, real engine files) in temporary folders, mail delivered with the delivery API and
read back with the mailbox API.

The helpers are plain functions, importable as ``tests.e2e.conftest``.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator

import pytest

from mailkeep.directory import tasks
from mailkeep.store import delivery
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.setup import SetupResult, setup_server
from mailkeep.store.store import Store

DOMAIN = "contoso.com"
ORG = "Organization"
ADMIN_GROUP = "AG1"
LOG_SIZE = 256 * 1024  # small log generations keep the files small


def message(message_id: str, subject: str = "test", body: str = "hello") -> bytes:
    """A small RFC 5322 message with CRLF line ends (stored as it is)."""
    return (f"From: sender@example.org\r\nTo: someone@{DOMAIN}\r\nSubject: {subject}\r\n"
            f"Message-ID: {message_id}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n").encode()


def deliver_one(store: Store, message_id: str, address: str, *, body: str | None = None) -> delivery.Outcome:
    """Deliver one message to one address; it must be delivered."""
    data = message(message_id, body=body or f"body of {message_id}")
    rep = delivery.deliver(store, io.BytesIO(data), [address], sender="sender@example.org")
    assert [o.status for o in rep.outcomes] == [delivery.DELIVERED], rep.outcomes
    return rep.outcomes[0]


def inbox(store: Store, user: str) -> tuple[str, dict[str, bytes]]:
    """Log on as ``user``: (mailbox GUID, Message-ID -> stored bytes) of the Inbox. Every
    Message-ID must occur once."""
    mb = open_mailbox(store, user)
    msgs = mb.messages("INBOX")
    ids = [m.message_id for m in msgs]
    assert len(ids) == len(set(ids)), f"a Message-ID occurs twice in {user}'s Inbox: {sorted(ids)}"
    return mb.guid, {m.message_id: mb.read_message("INBOX", m.uid) for m in msgs}


def snapshot(store: Store, user: str) -> tuple[str, dict[str, tuple[int, int, list[tuple[int, str, list[str], int]]]]]:
    """Log on as ``user``: (mailbox GUID, folder path -> (UIDVALIDITY, UIDNEXT, [(UID,
    Message-ID, flags, size)])) of every folder."""
    mb = open_mailbox(store, user)
    out = {}
    for f in mb.folders():
        msgs = [(m.uid, m.message_id, sorted(m.flags), m.size) for m in mb.messages(f.path)]
        out[f.path] = (f.uidvalidity, f.uidnext, sorted(msgs))
    return mb.guid, out


def mailbox_guid(store: Store, user: str) -> str:
    """The mailbox GUID the directory gives ``user`` (text form)."""
    raw = store.directory.require_user(user).first("msExchMailboxGUID")
    assert isinstance(raw, bytes) and len(raw) == 16, f"{user} has no msExchMailboxGUID"
    return str(uuid.UUID(bytes_le=raw))


def enable(store: Store, name: str, database_dn: str) -> str:
    """A new mailbox-enabled user (stage one); returns the primary SMTP address."""
    store.directory.add_user(name, password_text="Passw0rd!")
    e = tasks.mailbox_enable(store.directory, name, database_dn)
    address = str(e.text("mail"))
    assert address == f"{name}@{DOMAIN}"
    return address


@pytest.fixture
def server(tmp_path: pytest.TempPathFactory) -> SetupResult:
    return setup_server(str(tmp_path / "data"), domain=DOMAIN, organization=ORG, admin_group=ADMIN_GROUP,
                        server="Exchange1", log_file_size=LOG_SIZE)


@pytest.fixture
def store(server: SetupResult) -> Iterator[Store]:
    s = Store.open(server.server.data, log_file_size=LOG_SIZE)
    s.mount_intended()
    try:
        yield s
    finally:
        s.close()
