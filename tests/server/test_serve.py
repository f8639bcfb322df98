"""`mailkeep serve` over real sockets: first start, SMTP replies, durability, clean stop."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.directory import tasks
from mailkeep.directory.setup import open_directory
from mailkeep.engine.database import read_header
from mailkeep.engine.header import DbState
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.setup import setup_server
from mailkeep.store.store import Store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(data: Path, port: int, *extra: str, pop3: int | None = None) -> subprocess.Popen[str]:
    args = ["serve", "--smtp", str(port), "--pop3", str(pop3 or free_port()), *extra]
    for opt in ("--imap", "--http"):
        if opt not in extra:
            args += [opt, str(free_port())]
    p = subprocess.Popen([sys.executable, "-m", "mailkeep", "--data", str(data), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while not (data / "serve.json").exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            raise AssertionError(f"serve did not start: {p.communicate(timeout=10)}")
        time.sleep(0.05)
    return p


def stop(p: subprocess.Popen[str]) -> tuple[int, str]:
    p.send_signal(signal.SIGTERM)
    out, _err = p.communicate(timeout=60)
    return p.returncode, out


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    res = setup_server(str(d), domain="contoso.com", server="EX1")
    directory = open_directory(str(d))
    for name in ("alice", "bob"):
        directory.add_user(name, password_text="pw")
        tasks.mailbox_enable(directory, name, res.mailbox_store.dn)
    directory.close()
    return d


@pytest.fixture
def server(data: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    port = free_port()
    p = start(data, port)
    try:
        yield p, port
    finally:
        if p.poll() is None:
            stop(p)


def inbox(data: Path, user: str) -> list[str]:
    with Store.open(str(data)) as s:
        s.mount_intended()
        return [m.message_id for m in open_mailbox(s, user).messages("INBOX")]


def msg(mid: str) -> bytes:
    return f"From: sender@example.org\r\nSubject: {mid}\r\nMessage-ID: {mid}\r\n\r\nhello\r\n".encode()


def test_smtp_replies_and_durable_delivery(data: Path, server: tuple[subprocess.Popen[str], int]) -> None:
    p, port = server
    state = json.loads((data / "serve.json").read_text())
    assert {k: state[k] for k in ("pid", "bind", "smtp")} == {"pid": p.pid, "bind": "127.0.0.1", "smtp": port}
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        code, caps = c.ehlo("client.example.org")
        assert code == 250 and b"SIZE 33554432" in caps and b"8BITMIME" in caps
        assert c.sendmail("sender@example.org", ["alice@contoso.com", "bob@contoso.com"], msg("<1@x>")) == {}
        assert c.docmd("MAIL FROM:<sender@example.org>")[0] == 250
        assert c.docmd("RCPT TO:<nobody@contoso.com>") == (550, b"5.1.1 <nobody@contoso.com>: no such mailbox here")
        code, text = c.docmd("RCPT TO:<someone@elsewhere.org>")
        assert (code, text) == (550, b"5.7.1 <someone@elsewhere.org>: relaying denied (this server accepts mail "
                                     b"for contoso.com)")
        assert c.docmd("RCPT TO:<alice@contoso.com>") == (250, b"2.1.5 OK")
        assert c.docmd("DATA")[0] == 354
        c.send(msg("<2@x>") + b".\r\n")
        assert c.getreply() == (250, b"2.0.0 OK: delivered")
    code, out = stop(p)
    assert code == 0 and "databases dismounted (Clean Shutdown)" in out
    assert not (data / "serve.json").exists()
    assert read_header(str(data / "mdbdata" / "priv1.edb"))[0].state == DbState.CLEAN
    assert inbox(data, "alice") == ["<1@x>", "<2@x>"]
    assert inbox(data, "bob") == ["<1@x>"]
    raw_first = None
    with Store.open(str(data)) as s:
        s.mount_intended()
        raw_first = open_mailbox(s, "alice").read_message("INBOX", 1)
    assert raw_first.startswith(b"Received: from client.example.org ([127.0.0.1])\r\n\tby EX1 (Mailkeep) with ESMTP;")
    assert raw_first.endswith(b"Message-ID: <1@x>\r\n\r\nhello\r\n")


def test_a_dismounted_database_is_a_temporary_failure(data: Path) -> None:
    with Store.open(str(data)) as s:
        s.dismount("Mailbox Store (EX1)")
    port = free_port()
    p = start(data, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
            c.ehlo()
            assert c.docmd("MAIL FROM:<sender@example.org>")[0] == 250
            code, text = c.docmd("RCPT TO:<alice@contoso.com>")
            assert code == 451 and text == b"4.2.1 <alice@contoso.com>: mailbox temporarily unavailable " \
                                           b"(MAPI_E_FAILONEPROVIDER)"
    finally:
        assert stop(p)[0] == 0


def test_first_start_sets_up_the_server_and_prints_the_password_once(tmp_path: Path) -> None:
    data = tmp_path / "fresh"
    port = free_port()
    p = start(data, port, "--domain", "example.test")
    code, out = stop(p)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("First start: server ")
    assert lines[0].endswith(f"set up in {data} (domain example.test).")
    assert lines[1].startswith("Administrator password (shown this once, stored hashed): ")
    password = lines[1].rsplit(" ", 1)[1]
    assert f"  SMTP  127.0.0.1:{port}  (mail for @example.test)" in lines
    d = open_directory(str(data))
    try:
        assert d.authenticate("Administrator", password) is not None
        assert password not in json.dumps(d.require_user("Administrator").attrs, default=str)
    finally:
        d.close()
    events = (data / "events.jsonl").read_text()
    assert password not in events
    p = start(data, port)
    code, out = stop(p)
    assert code == 0 and "password" not in out
    assert os.path.exists(data / "mdbdata" / "priv1.edb")
