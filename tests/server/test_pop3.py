"""POP3: the session alone (no sockets), then Python's poplib against `mailkeep serve`."""

from __future__ import annotations

import json
import poplib
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.server.pop3 import MAX_BAD, InUse, Item, Pop3Session, dot_stuffed
from tests.server.test_serve import data, free_port, inbox, start, stop  # noqa: F401 - data is a fixture


class FakeDrop:
    """A maildrop of fixed messages: lets the session be tested without a store."""

    uidvalidity = 77

    def __init__(self, messages: dict[int, bytes]) -> None:
        self.messages = messages
        self.deleted: list[int] = []
        self.released = False

    def items(self) -> list[Item]:
        return [Item(uid, len(body)) for uid, body in self.messages.items()]

    def content(self, uid: int) -> Iterator[bytes]:
        body = self.messages[uid]
        for i in range(0, len(body), 7):  # small chunks: lines cross chunk boundaries
            yield body[i:i + 7]

    def delete(self, uids: list[int]) -> None:
        self.deleted.extend(uids)

    def release(self) -> None:
        self.released = True


def flat(replies: list[bytes | Iterator[bytes]]) -> bytes:
    return b"".join(r if isinstance(r, bytes) else b"".join(r) for r in replies)


M1 = b"Subject: one\r\n\r\nfirst line\r\n.starts with a dot\r\nlast\r\n"
M2 = b"Subject: two\r\n\r\nx\r\n"


def session(drop: FakeDrop) -> Pop3Session:
    def auth(user: str, password: str) -> FakeDrop | None:
        if user == "busy":
            raise InUse()
        return drop if (user, password) == ("alice", "pw") else None

    return Pop3Session(auth, server_name="EX1")


def test_session_transaction_and_update() -> None:
    drop = FakeDrop({5: M1, 9: M2})
    s = session(drop)
    assert s.greeting() == b"+OK EX1 POP3 server ready\r\n"
    assert flat(s.handle(b"STAT\r\n")) == b"-ERR STAT is not valid in the AUTHORIZATION state\r\n"
    assert flat(s.handle(b"USER alice\r\n")) == b"+OK send PASS\r\n"
    assert flat(s.handle(b"PASS wrong\r\n")) == b"-ERR [AUTH] invalid user name or password\r\n"
    s.handle(b"USER alice\r\n")
    assert flat(s.handle(b"PASS pw\r\n")) == b"+OK 2 message(s)\r\n"
    assert flat(s.handle(b"STAT")) == f"+OK 2 {len(M1) + len(M2)}\r\n".encode()
    assert flat(s.handle(b"LIST")) == f"+OK\r\n1 {len(M1)}\r\n2 {len(M2)}\r\n.\r\n".encode()
    assert flat(s.handle(b"UIDL")) == b"+OK\r\n1 77.5\r\n2 77.9\r\n.\r\n"
    assert flat(s.handle(b"UIDL 2")) == b"+OK 2 77.9\r\n"
    assert flat(s.handle(b"RETR 1")) == (f"+OK {len(M1)} octets\r\n".encode()
                                         + b"Subject: one\r\n\r\nfirst line\r\n..starts with a dot\r\nlast\r\n.\r\n")
    assert flat(s.handle(b"TOP 1 1")) == b"+OK\r\nSubject: one\r\n\r\nfirst line\r\n.\r\n"
    assert flat(s.handle(b"TOP 1 0")) == b"+OK\r\nSubject: one\r\n\r\n.\r\n"
    assert flat(s.handle(b"DELE 1")) == b"+OK message 1 deleted\r\n"
    assert flat(s.handle(b"RETR 1")) == b"-ERR no such message\r\n"
    assert flat(s.handle(b"LIST")) == f"+OK\r\n2 {len(M2)}\r\n.\r\n".encode()
    assert flat(s.handle(b"RSET")) == b"+OK 2 message(s)\r\n"
    s.handle(b"DELE 2")
    assert drop.deleted == []  # nothing goes before QUIT
    assert flat(s.handle(b"QUIT")) == b"+OK EX1 POP3 server signing off\r\n"
    assert (drop.deleted, drop.released, s.closed) == ([9], True, True)


def test_dropped_connection_deletes_nothing_and_releases() -> None:
    drop = FakeDrop({1: M2})
    s = session(drop)
    s.handle(b"USER alice")
    s.handle(b"PASS pw")
    s.handle(b"DELE 1")
    s.connection_lost()
    assert (drop.deleted, drop.released) == ([], True)


def test_in_use_bad_commands_and_long_lines() -> None:
    s = session(FakeDrop({}))
    s.handle(b"USER busy")
    assert flat(s.handle(b"PASS x")) == b"-ERR [IN-USE] the maildrop is in use by another session\r\n"
    assert flat(s.handle(b"X" * 600)) == b"-ERR line too long\r\n"
    assert flat(s.handle(b"FROB")) == b"-ERR unknown command\r\n"
    for _ in range(MAX_BAD - 3):
        s.handle(b"FROB")
    assert flat(s.handle(b"FROB")) == b"-ERR too many bad commands; goodbye\r\n" and s.closed


def test_dot_stuffing_without_a_final_crlf() -> None:
    assert b"".join(dot_stuffed(iter([b"a\r\n.b"]), None)) == b"a\r\n..b\r\n.\r\n"


@pytest.fixture
def pop_server(data: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:  # noqa: F811
    smtp, pop = free_port(), free_port()
    p = start(data, smtp, pop3=pop)
    try:
        yield p, smtp, pop
    finally:
        if p.poll() is None:
            stop(p)


def test_poplib_retrieves_and_deletes_at_quit(data: Path, pop_server: tuple[subprocess.Popen[str], int, int]) -> None:  # noqa: F811
    p, smtp, pop = pop_server
    assert json.loads((data / "serve.json").read_text())["pop3"] == pop
    body = b"Subject: pop\r\nMessage-ID: <p1@x>\r\n\r\n.dot line\r\nend\r\n"
    with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as c:
        c.sendmail("s@example.org", ["alice@contoso.com"], body)
        c.sendmail("s@example.org", ["alice@contoso.com"], body.replace(b"<p1@x>", b"<p2@x>"))
    c1 = poplib.POP3("127.0.0.1", pop, timeout=30)
    assert c1.getwelcome() == b"+OK EX1 POP3 server ready"
    with pytest.raises(poplib.error_proto, match="AUTH"):
        c1.user("alice")
        c1.pass_("wrong")
    c1.user("alice")
    assert c1.pass_("pw") == b"+OK 2 message(s)"
    c2 = poplib.POP3("127.0.0.1", pop, timeout=30)
    c2.user("alice")
    with pytest.raises(poplib.error_proto, match="IN-USE"):
        c2.pass_("pw")
    c2.quit()
    count, _size = c1.stat()
    assert count == 2
    _resp, lines, _octets = c1.retr(1)
    assert lines[-3:] == [b"Message-ID: <p1@x>", b"", b".dot line", b"end"][-3:]
    assert lines[0].startswith(b"Received: from ")
    uidl = c1.uidl()[1]
    assert [u.split()[0] for u in uidl] == [b"1", b"2"]
    c1.dele(1)
    c1.quit()
    assert stop(p)[0] == 0
    assert inbox(data, "alice") == ["<p2@x>"]
