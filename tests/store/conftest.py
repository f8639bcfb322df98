"""Fixtures: a real server (embedded directory, real engine files) in a temporary folder."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator

import pytest

from mailkeep.directory import tasks
from mailkeep.store.setup import SetupResult, setup_server
from mailkeep.store.store import Store

LOG_SIZE = 256 * 1024  # small log generations keep the tests' files small


@pytest.fixture
def server(tmp_path: pytest.TempPathFactory) -> SetupResult:
    return setup_server(str(tmp_path / "data"), domain="contoso.com", organization="Organization",
                        admin_group="AG1", server="Exchange1", log_file_size=LOG_SIZE)


@pytest.fixture
def store(server: SetupResult) -> Iterator[Store]:
    s = Store.open(server.server.data, log_file_size=LOG_SIZE)
    s.mount_intended()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def add_mailbox_user(store: Store, server: SetupResult) -> Callable[..., str]:
    """Create a mailbox-enabled user (stage one); returns the primary SMTP address."""

    def make(name: str, db_dn: str | None = None, **kw: object) -> str:
        store.directory.add_user(name, password_text="Passw0rd!", **kw)  # type: ignore[arg-type]
        e = tasks.mailbox_enable(store.directory, name, db_dn or server.mailbox_store.dn)
        return str(e.text("mail"))

    return make


def message(message_id: str, subject: str = "test", body: str = "hello", sender: str = "sender@example.org") -> bytes:
    """A small RFC 5322 message with CRLF line ends."""
    return (f"From: {sender}\r\nTo: someone@contoso.com\r\nSubject: {subject}\r\n"
            f"Message-ID: {message_id}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\n{body}\r\n").encode()


def source(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
