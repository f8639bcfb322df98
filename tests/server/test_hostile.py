"""Hostile clients against a running server (limit 5 connections per address, 1 s command
deadline): floods are refused politely, dribblers and trickling data are cut off, garbage is
answered or dropped, and afterwards a normal client still delivers and reads everything.
Every loop is bounded in count and time; every socket has a timeout."""

from __future__ import annotations

import imaplib
import poplib
import random
import select
import smtplib
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.server.tcp import ConnectionLimiter, Limits
from tests.server.test_tls import Running, make_data, run_service

LIMIT = 5
FLOOD = 50


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = run_service(make_data(tmp_path / "data"), max_connections_per_address=LIMIT, command_timeout=1.0,
                    min_data_rate=1024.0)
    try:
        yield r
    finally:
        r.svc.stop()


def ports(r: Running) -> dict[str, int]:
    return {"smtp": r.options.smtp_port, "imap": r.options.imap_port, "pop3": r.options.pop3_port}


def connect(port: int) -> tuple[socket.socket, bytes]:
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    return s, s.makefile("rb").readline()


def read_to_eof(s: socket.socket, limit: float = 10.0) -> bytes:
    """Everything until the server closes (bounded by ``limit`` seconds)."""
    out = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        ready, _, _ = select.select([s], [], [], 0.2)
        if ready:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                return out
            if not chunk:
                return out
            out += chunk
    raise AssertionError(f"still open after {limit} s; got {out[-200:]!r}")


def wait_released(r: Running, limit: float = 10.0) -> None:
    """Until the servers have noticed every closed connection (their counts are back to 0)."""
    deadline = time.monotonic() + limit
    assert r.svc.smtp is not None and r.svc.imap is not None and r.svc.pop3 is not None
    limiters = [r.svc.smtp.limiter, r.svc.imap.limiter, r.svc.pop3.limiter]  # type: ignore[attr-defined]
    while any(lim.count() for lim in limiters):
        assert time.monotonic() < deadline, [lim.count() for lim in limiters]
        time.sleep(0.05)


REFUSED = {
    "smtp": b"421 4.7.0 EX1 too many connections from your address\r\n",
    "imap": b"* BYE too many connections from your address\r\n",
    "pop3": b"-ERR [SYS/TEMP] too many connections from your address\r\n",
}
GREETING = {"smtp": b"220 EX1 ", "imap": b"* OK [CAPABILITY ", "pop3": b"+OK EX1 POP3 server ready"}
TOO_SLOW = {
    "smtp": b"421 4.4.2 EX1 command line not completed within 1 seconds; closing\r\n",
    "imap": b"* BYE command line not completed within 1 seconds\r\n",
    "pop3": b"-ERR command line not completed within 1 seconds; goodbye\r\n",
}


def normal_client_delivers_and_reads(r: Running, n: int) -> None:
    """SMTP in (a 1 MiB message too), then IMAP (over TLS) and POP3 see every message."""
    big = b"Subject: big\r\nMessage-ID: <big@x>\r\n\r\n" + (b"y" * 998 + b"\r\n") * 1050
    with smtplib.SMTP("127.0.0.1", r.options.smtp_port, timeout=30) as c:
        for i in range(n):
            body = f"Subject: m{i}\r\nMessage-ID: <m{i}@x>\r\n\r\nmessage {i}\r\n".encode()
            assert c.sendmail("s@example.org", ["alice@contoso.com"], body) == {}
        assert c.sendmail("s@example.org", ["alice@contoso.com"], big) == {}
    i = imaplib.IMAP4("127.0.0.1", r.options.imap_port, timeout=30)
    i.starttls(ssl_context=r.context)
    i.login("alice", "pw")
    assert i.select("INBOX") == ("OK", [str(n + 1).encode()])
    typ, dat = i.fetch(str(n + 1), "(RFC822.SIZE)")
    assert typ == "OK" and dat[0] is not None
    i.logout()
    p = poplib.POP3("127.0.0.1", r.options.pop3_port, timeout=30)
    p.stls(context=r.context)
    p.user("alice")
    p.pass_("pw")
    assert p.stat()[0] == n + 1
    assert p.retr(n + 1)[1][-1] == b"y" * 998
    p.quit()


def test_a_flood_from_one_address_is_refused_politely(running: Running) -> None:
    for proto, port in ports(running).items():
        held = []
        replies = []
        for _ in range(FLOOD):
            s, first = connect(port)
            replies.append(first)
            if first == REFUSED[proto]:
                assert read_to_eof(s) == b""  # and closed
                s.close()
            else:
                held.append(s)
        assert [x.startswith(GREETING[proto]) for x in replies] == [True] * LIMIT + [False] * (FLOOD - LIMIT), proto
        assert replies[LIMIT:] == [REFUSED[proto]] * (FLOOD - LIMIT)
        for s in held:
            s.close()
    wait_released(running)
    normal_client_delivers_and_reads(running, 3)


def test_the_global_cap_counts_every_address() -> None:
    lim = ConnectionLimiter(Limits(per_address=2, total=3))
    assert [lim.admit(a) for a in ("10.0.0.1", "10.0.0.1", "10.0.0.1")] == [
        None, None, "too many connections from your address"]
    assert lim.admit("10.0.0.2") is None
    assert lim.admit("10.0.0.3") == "too many connections; try again later"
    lim.release("10.0.0.1")
    assert lim.admit("10.0.0.3") is None and lim.count() == 3 and lim.count("10.0.0.1") == 1


def test_a_command_line_dribbled_a_byte_at_a_time_is_cut_off(running: Running) -> None:
    for proto, port in ports(running).items():
        socks = [connect(port)[0] for _ in range(LIMIT)]
        started = time.monotonic()
        for _ in range(8):  # 8 bytes over ~1.6 s: more than the 1 s deadline
            for s in socks:
                try:
                    s.sendall(b"N")
                except OSError:
                    pass
            time.sleep(0.2)
        for s in socks:
            assert read_to_eof(s) == TOO_SLOW[proto], proto
            s.close()
        assert time.monotonic() - started < 6
    wait_released(running)
    normal_client_delivers_and_reads(running, 1)


def test_message_data_and_literals_trickling_in_are_cut_off(running: Running) -> None:
    with socket.create_connection(("127.0.0.1", running.options.smtp_port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"HELO x\r\nMAIL FROM:<s@example.org>\r\nRCPT TO:<alice@contoso.com>\r\nDATA\r\n")
        assert [f.readline() for _ in range(4)][3] == b"354 End data with <CR><LF>.<CR><LF>\r\n"
        for _ in range(30):  # 30 lines of 10 octets over ~3 s: far below 1024 octets/s
            try:
                s.sendall(b"trickle\r\n")
            except OSError:
                break
            time.sleep(0.1)
        assert read_to_eof(s) == b"421 4.4.2 EX1 message data arriving slower than 1024 octets per second; closing\r\n"
    with socket.create_connection(("127.0.0.1", running.options.imap_port), timeout=10) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"a LOGIN alice pw\r\n")
        assert f.readline().startswith(b"a OK")
        s.sendall(b"b APPEND INBOX {1000}\r\n")
        assert f.readline() == b"+ Ready for literal data\r\n"
        for _ in range(30):
            try:
                s.sendall(b"x" * 10)
            except OSError:
                break
            time.sleep(0.1)
        assert read_to_eof(s) == b"* BYE data arriving slower than 1024 octets per second\r\n"
    wait_released(running)
    # a literal that comes at speed is fine however large
    i = imaplib.IMAP4("127.0.0.1", running.options.imap_port, timeout=30)
    i.login("alice", "pw")
    big = b"Subject: fast\r\n\r\n" + b"z" * 2_000_000 + b"\r\n"
    assert i.create("Big")[0] == "OK"
    assert i.append("Big", None, None, big)[0] == "OK"
    i.logout()
    normal_client_delivers_and_reads(running, 0)


def test_garbage_is_answered_or_dropped_and_nothing_is_lost(running: Running) -> None:
    rng = random.Random(1234)
    normal_client_delivers_and_reads(running, 2)  # mail already there before the garbage
    for proto, port in ports(running).items():
        for kind in range(6):
            s, _ = connect(port)
            if kind == 0:  # binary noise with NULs and stray line ends
                junk = bytes(rng.randrange(256) for _ in range(20_000))
            elif kind == 1:  # printable nonsense lines
                junk = b"".join(bytes(rng.choice(b"ABCDEFG {}()*\"\\") for _ in range(rng.randrange(1, 80))) + b"\r\n"
                                for _ in range(200))
            elif kind == 2:  # an endless line
                junk = b"A" * 300_000
            elif kind == 3:  # literal and continuation abuse
                junk = b"x APPEND INBOX {99999999999}\r\n" + b"a AUTHENTICATE PLAIN\r\n{5}\r\n" + b"\r\n" * 50
            else:  # STARTTLS / STLS, then plaintext noise and leaving (4), or no handshake ever (5)
                junk = {"smtp": b"EHLO x\r\nSTARTTLS\r\n", "imap": b"t STARTTLS\r\n", "pop3": b"STLS\r\n"}[proto]
                if kind == 4:
                    junk += bytes(rng.randrange(256) for _ in range(5_000))
            try:
                s.sendall(junk)
                if kind != 5:
                    s.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server may close first
            read_to_eof(s, 15)  # whatever it answered, it closes
            s.close()
    wait_released(running)
    # the earlier two messages and the new ones are all there
    with smtplib.SMTP("127.0.0.1", running.options.smtp_port, timeout=30) as c:
        assert c.sendmail("s@example.org", ["alice@contoso.com"], b"Subject: after\r\n\r\nafter\r\n") == {}
    i = imaplib.IMAP4("127.0.0.1", running.options.imap_port, timeout=30)
    i.login("alice", "pw")
    assert i.select("INBOX") == ("OK", [b"4"])
    i.logout()
