"""IMAP4rev1 (RFC 3501 with UIDPLUS, MOVE, NAMESPACE): Python's imaplib and a raw socket against `mailkeep serve`.

Black-box tests: only the wire is used. Delivered messages carry the server's ``Received:`` lines on top, so
message contents are compared by their tail (what was sent) and, once read whole, byte-exactly.
"""

from __future__ import annotations

import imaplib
import re
import smtplib
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.test_serve import data, free_port, start, stop  # noqa: F401 - data is a fixture

STANDARD = {"INBOX", "Sent Items", "Deleted Items", "Drafts", "Junk E-mail", "Outbox", "Calendar", "Contacts",
            "Journal", "Notes", "Tasks"}
SYSTEM_FLAGS = {"\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"}


def body(i: int) -> bytes:
    return (f"From: Sender {i} <s{i}@example.org>\r\nTo: alice@contoso.com\r\nSubject: subject number {i}\r\n"
            f"Message-ID: <m{i}@x>\r\nX-Extra: {i}\r\n\r\nbody line {i} needle{i}\r\nsecond line\r\n").encode()


HEAD_1, TEXT_1 = body(1).split(b"\r\n\r\n", 1)


@pytest.fixture
def imap_server(data: Path) -> Iterator[tuple[subprocess.Popen[str], int, int]]:  # noqa: F811
    smtp, imap = free_port(), free_port()
    p = start(data, smtp, "--imap", str(imap))
    try:
        yield p, smtp, imap
    finally:
        if p.poll() is None:
            stop(p)


def deliver(smtp: int, *bodies: bytes, to: str = "alice@contoso.com") -> None:
    with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as c:
        for b in bodies:
            assert c.sendmail("s@example.org", [to], b) == {}


def login(port: int, user: str = "alice") -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    typ, _ = c.login(user, "pw")
    assert typ == "OK"
    return c


def literal(dat: list) -> bytes:
    """The (single) literal of a FETCH answer."""
    lits = [x[1] for x in dat if isinstance(x, tuple)]
    assert len(lits) == 1, dat
    return lits[0]


def fetch_line(dat: list) -> bytes:
    return b"".join(x[0] if isinstance(x, tuple) else x for x in dat if x is not None)


def flags_of(dat: list) -> dict[int, set[str]]:
    """{msn: flags} from FETCH answers carrying FLAGS."""
    out = {}
    for x in dat:
        line = x[0] if isinstance(x, tuple) else x
        if line is None:
            continue
        m = re.match(rb"(\d+) \(.*FLAGS \(([^)]*)\)", line)
        if m:
            out[int(m.group(1))] = set(m.group(2).decode().split()) - {"\\Recent"}  # \Recent is session state
    return out


def uids_of(dat: list) -> dict[int, int]:
    out = {}
    for x in dat:
        line = x[0] if isinstance(x, tuple) else x
        if line is None:
            continue
        m = re.match(rb"(\d+) \(.*UID (\d+)", line)
        if m:
            out[int(m.group(1))] = int(m.group(2))
    return out


def expand(s: str) -> list[int]:
    out: list[int] = []
    for part in s.split(","):
        if ":" in part:
            a, b = (int(x) for x in part.split(":"))
            out.extend(range(min(a, b), max(a, b) + 1))
        else:
            out.append(int(part))
    return out


def refused(fn: object, *args: str) -> bool:
    """NO, or BAD (which imaplib raises)."""
    try:
        typ, _dat = fn(*args)  # type: ignore[operator]
    except imaplib.IMAP4.error:
        return True
    return typ == "NO"


def code(dat: list, name: str) -> list[str]:
    """The words of a response code [NAME ...] in a response text."""
    text = b" ".join(x for x in dat if isinstance(x, bytes)).decode()
    m = re.search(r"\[" + name + r" ([^\]]*)\]", text)
    assert m, (name, dat)
    return m.group(1).split()


def listing(dat: list) -> dict[str, tuple[set[str], str]]:
    """{name: (attributes, delimiter)} from LIST/LSUB answers."""
    out = {}
    for x in dat:
        if x is None:
            continue
        if isinstance(x, tuple):  # name sent as a literal
            m = re.match(rb'\(([^)]*)\) ("[^"]*"|NIL) \{\d+\}$', x[0])
            assert m, x
            name = x[1]
        else:
            m = re.match(rb'\(([^)]*)\) ("[^"]*"|NIL) (.*)$', x)
            assert m, x
            name = m.group(3)
            if name.startswith(b'"'):
                name = re.sub(rb'\\(.)', rb"\1", name[1:-1])
        out[name.decode()] = (set(m.group(1).decode().split()), m.group(2).decode())
    return out


def status(c: imaplib.IMAP4, mailbox: str) -> dict[str, int]:
    typ, dat = c.status(mailbox, "(MESSAGES UIDNEXT UIDVALIDITY UNSEEN RECENT)")
    assert typ == "OK", dat
    m = re.search(rb"\(([^)]*)\)\s*$", dat[-1])
    assert m, dat
    words = m.group(1).decode().split()
    return {words[i]: int(words[i + 1]) for i in range(0, len(words), 2)}


def apply_expunges(uids: list[int], numbers: list[bytes]) -> list[int]:
    """What remains of a mailbox (by UID) after the given untagged EXPUNGE sequence numbers."""
    uids = list(uids)
    removed = []
    for n in numbers:
        removed.append(uids.pop(int(n) - 1))
    return removed


class Raw:
    """A bare IMAP client: send a tagged line, read to the tagged reply (literals read as counted)."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.f = self.s.makefile("rb")
        self.greeting = self.f.readline()

    def line(self) -> bytes:
        line = self.f.readline()
        m = re.search(rb"\{(\d+)\}\r\n$", line)
        while m:
            line += self.f.read(int(m.group(1)))
            more = self.f.readline()
            line += more
            m = re.search(rb"\{(\d+)\}\r\n$", more)
        return line

    def until(self, tag: bytes) -> list[bytes]:
        out = []
        while True:
            line = self.line()
            if not line:
                raise EOFError(out)
            out.append(line)
            if line.startswith(tag + b" "):
                return out

    def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        self.s.sendall(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def login(self) -> None:
        assert self.cmd(b"L", b"LOGIN alice pw")[-1].startswith(b"L OK")

    def close(self) -> None:
        self.f.close()
        self.s.close()


# --- connection, capabilities, login -------------------------------------------------------------------------


def test_greeting_capability_noop_logout(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, _smtp, port = imap_server
    r = Raw(port)
    assert r.greeting.startswith(b"* OK") and r.greeting.endswith(b"\r\n")
    reply = r.cmd(b"a1", b"CAPABILITY")
    assert len(reply) == 2 and reply[0].startswith(b"* CAPABILITY ") and reply[1].startswith(b"a1 OK")
    caps = set(reply[0].split()[2:])
    assert {b"IMAP4rev1", b"UIDPLUS", b"MOVE", b"NAMESPACE"} <= caps
    assert b"LOGINDISABLED" not in caps  # plain LOGIN is allowed on loopback
    assert r.cmd(b"a2", b"NOOP")[-1].startswith(b"a2 OK")
    bye = r.cmd(b"a3", b"LOGOUT")
    assert bye[0].startswith(b"* BYE") and bye[-1].startswith(b"a3 OK")
    assert r.f.read() == b""  # the server closes after LOGOUT
    r.close()


def test_login(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, _smtp, port = imap_server
    r = Raw(port)
    reply = r.cmd(b"a1", b"LOGIN alice wrong")
    assert reply[-1].startswith(b"a1 NO [AUTHENTICATIONFAILED]"), reply
    reply = r.cmd(b"a2", b'LOGIN "nobody" "pw"')
    assert reply[-1].startswith(b"a2 NO [AUTHENTICATIONFAILED]"), reply
    reply = r.cmd(b"a3", b'LOGIN "alice" "pw"')
    assert reply[-1].startswith(b"a3 OK"), reply
    reply = r.cmd(b"a4", b"LOGIN alice pw")  # only once: now in the authenticated state
    assert reply[-1].startswith((b"a4 BAD", b"a4 NO")), reply
    r.close()
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login("alice", "nope")
    assert c.login("alice", "pw")[0] == "OK"
    assert c.noop()[0] == "OK"
    assert c.logout()[0] == "BYE"


# --- mailboxes ---------------------------------------------------------------------------------------------


def test_list_namespace_and_subscriptions(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, _smtp, port = imap_server
    c = login(port)
    typ, dat = c.list('""', "*")
    assert typ == "OK"
    names = listing(dat)
    assert set(names) == STANDARD
    assert {d for _a, d in names.values()} == {'"/"'}
    typ, dat = c.list('""', "%")
    assert typ == "OK" and set(listing(dat)) == STANDARD
    typ, dat = c.list('""', '""')  # the hierarchy delimiter and root
    assert typ == "OK" and len(dat) == 1 and re.match(rb'\(.*\) "/" ""$', dat[0]), dat
    typ, dat = c.list('""', "INBOX")
    assert typ == "OK" and set(listing(dat)) == {"INBOX"}
    typ, dat = c.namespace()
    assert typ == "OK" and dat == [b'(("" "/")) NIL NIL'], dat
    assert c.subscribe('"Sent Items"')[0] == "OK"
    assert c.subscribe("Drafts")[0] == "OK"
    typ, dat = c.lsub('""', "*")
    assert typ == "OK"
    subs = set(listing(dat))
    assert {"Sent Items", "Drafts"} <= subs <= STANDARD
    assert c.unsubscribe("Drafts")[0] == "OK"
    typ, dat = c.lsub('""', "*")
    assert typ == "OK" and set(listing(dat)) <= STANDARD
    c.logout()


def test_create_rename_delete_nested(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, _smtp, port = imap_server
    c = login(port)
    assert c.create("A/B")[0] == "OK"  # creates the parent too
    names = set(listing(c.list('""', "*")[1]))
    assert names == STANDARD | {"A", "A/B"}
    assert set(listing(c.list('""', "%")[1])) == STANDARD | {"A"}
    assert set(listing(c.list('""', "A/%")[1])) == {"A/B"}
    assert c.create("A/B")[0] == "NO"  # exists
    assert c.create("INBOX")[0] == "NO"
    assert c.create('"Project X"')[0] == "OK"
    assert c.rename("A", "C")[0] == "OK"  # inferiors follow
    assert set(listing(c.list('""', "*")[1])) == STANDARD | {"C", "C/B", "Project X"}
    assert c.select("C/B")[0] == "OK"
    assert c.select("A/B")[0] == "NO"
    assert c.rename("Nope", "D")[0] == "NO"
    assert c.rename("C", '"Project X"')[0] == "NO"  # target exists
    assert c.delete("C/B")[0] == "OK"
    assert c.delete("C")[0] == "OK"
    assert c.delete('"Project X"')[0] == "OK"
    assert c.delete("INBOX")[0] == "NO"
    assert c.delete("Nope")[0] == "NO"
    assert set(listing(c.list('""', "*")[1])) == STANDARD
    c.logout()


def test_select_examine_and_status(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1), body(2))
    c = login(port)
    st = status(c, "INBOX")
    assert set(st) == {"MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "RECENT"}
    assert (st["MESSAGES"], st["UIDNEXT"], st["UNSEEN"]) == (2, 3, 2)
    assert st["UIDVALIDITY"] > 0 and 0 <= st["RECENT"] <= 2
    empty = status(c, '"Sent Items"')
    assert (empty["MESSAGES"], empty["UIDNEXT"], empty["UNSEEN"], empty["RECENT"]) == (0, 1, 0, 0)
    assert empty["UIDVALIDITY"] > 0
    assert c.status("Nope", "(MESSAGES)")[0] == "NO"

    typ, dat = c.select("INBOX")
    assert (typ, dat) == ("OK", [b"2"])
    u = c.untagged_responses
    assert u["UIDVALIDITY"] == [str(st["UIDVALIDITY"]).encode()]
    assert u["UIDNEXT"] == [b"3"]
    assert len(u["RECENT"]) == 1 and 0 <= int(u["RECENT"][0]) <= 2
    flags = re.match(rb"\((.*)\)$", u["FLAGS"][0])
    assert flags and set(flags.group(1).decode().split()) >= SYSTEM_FLAGS
    perm = re.match(rb"\((.*)\)", u["PERMANENTFLAGS"][0])
    assert perm and set(perm.group(1).decode().split()) >= SYSTEM_FLAGS
    assert "READ-WRITE" in u and "READ-ONLY" not in u

    typ, dat = c.select("inbox", readonly=True)  # INBOX is case-insensitive
    assert (typ, dat) == ("OK", [b"2"])
    assert "READ-ONLY" in c.untagged_responses and "READ-WRITE" not in c.untagged_responses
    assert c.untagged_responses["UIDNEXT"] == [b"3"]
    typ, dat = c.store("1", "+FLAGS", "(\\Flagged)")
    assert typ == "NO", dat  # read-only
    typ, dat = c.fetch("1", "(BODY[])")  # EXAMINE: no implicit \Seen
    assert typ == "OK"
    assert flags_of(c.fetch("1", "(FLAGS)")[1]) == {1: set()}
    assert c.select("Nope")[0] == "NO"
    assert status(c, "INBOX")["UNSEEN"] == 2
    c.logout()


# --- append, fetch --------------------------------------------------------------------------------------------


def test_append_with_flags_date_and_literal(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, _smtp, port = imap_server
    c = login(port)
    st = status(c, "Drafts")
    msg = b"From: alice@contoso.com\r\nSubject: draft\r\n\r\nunfinished\r\nline two\r\n"
    typ, dat = c.append("Drafts", "(\\Draft \\Seen)", '"01-Jan-2020 10:00:00 +0000"', msg)
    assert typ == "OK", dat
    assert code(dat, "APPENDUID") == [str(st["UIDVALIDITY"]), str(st["UIDNEXT"])]
    typ, dat = c.append("Drafts", None, None, body(7))
    assert typ == "OK" and code(dat, "APPENDUID") == [str(st["UIDVALIDITY"]), str(st["UIDNEXT"] + 1)]
    assert c.append("Nope", None, None, msg)[0] == "NO"  # [TRYCREATE] expected by RFC 3501 6.3.11
    assert c.select("Drafts")[1] == [b"2"]
    typ, dat = c.fetch("1", "(UID FLAGS INTERNALDATE RFC822.SIZE)")
    assert typ == "OK"
    line = fetch_line(dat)
    assert uids_of(dat) == {1: st["UIDNEXT"]}
    assert flags_of(dat) == {1: {"\\Draft", "\\Seen"}}
    assert re.search(rb"RFC822\.SIZE (\d+)", line).group(1) == str(len(msg)).encode()
    date = imaplib.Internaldate2tuple(line)
    assert date is not None and time.mktime(date) == 1577872800  # 2020-01-01 10:00:00 UTC
    assert literal(c.fetch("1", "(BODY.PEEK[])")[1]) == msg  # stored byte-exact: APPEND adds no Received:
    assert literal(c.fetch("2", "(BODY.PEEK[])")[1]) == body(7)
    assert flags_of(c.fetch("2", "(FLAGS)")[1]) == {2: set()}
    now = imaplib.Internaldate2tuple(fetch_line(c.fetch("2", "(INTERNALDATE)")[1]))
    assert now is not None and abs(time.mktime(now) - time.time()) < 300
    c.logout()


def test_fetch_items(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1), body(2))
    c = login(port)
    c.select("INBOX")
    full = literal(c.fetch("1", "(BODY.PEEK[])")[1])
    assert full.endswith(body(1)) and full.startswith(b"Received: ")
    received = full[:-len(body(1))]
    assert received.endswith(b"\r\n") and all(ln.startswith((b"Received:", b"\t", b" "))
                                              for ln in received.split(b"\r\n")[:-1])
    header = received + HEAD_1 + b"\r\n\r\n"
    assert flags_of(c.fetch("1", "(FLAGS)")[1]) == {1: set()}  # PEEK leaves \Seen alone

    typ, dat = c.fetch("1", "(UID RFC822.SIZE)")
    assert typ == "OK" and uids_of(dat) == {1: 1}
    assert re.search(rb"RFC822\.SIZE (\d+)", fetch_line(dat)).group(1) == str(len(full)).encode()
    assert literal(c.fetch("1", "(RFC822.HEADER)")[1]) == header
    assert literal(c.fetch("1", "(BODY.PEEK[HEADER])")[1]) == header
    assert literal(c.fetch("1", "(BODY.PEEK[TEXT])")[1]) == TEXT_1
    typ, dat = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT MESSAGE-ID)])")
    assert typ == "OK" and literal(dat) == b"Subject: subject number 1\r\nMessage-ID: <m1@x>\r\n\r\n"
    assert b"BODY[HEADER.FIELDS (SUBJECT MESSAGE-ID)]" in fetch_line(dat).upper()
    typ, dat = c.fetch("1", "(BODY.PEEK[]<0.10>)")
    assert typ == "OK" and literal(dat) == full[:10] and b"BODY[]<0>" in fetch_line(dat)
    typ, dat = c.fetch("1", "(BODY.PEEK[]<5.3>)")
    assert literal(dat) == full[5:8] and b"BODY[]<5>" in fetch_line(dat)
    assert flags_of(c.fetch("1", "(FLAGS)")[1]) == {1: set()}

    typ, dat = c.fetch("1", "FAST")  # FLAGS INTERNALDATE RFC822.SIZE
    line = fetch_line(dat)
    assert typ == "OK" and flags_of(dat) == {1: set()} and b"INTERNALDATE \"" in line
    assert re.search(rb"RFC822\.SIZE (\d+)", line).group(1) == str(len(full)).encode()

    typ, dat = c.fetch("1", "(BODY[])")  # no PEEK: sets \Seen, and says so
    assert typ == "OK" and literal(dat) == full
    assert flags_of(c.fetch("1", "(FLAGS)")[1]) == {1: {"\\Seen"}}
    typ, dat = c.fetch("2", "(RFC822)")
    full2 = literal(dat)
    assert typ == "OK" and full2.endswith(body(2))
    assert flags_of(c.fetch("2", "(FLAGS)")[1]) == {2: {"\\Seen"}}
    assert status(c, "INBOX")["UNSEEN"] == 0
    c.store("1:2", "-FLAGS", "(\\Seen)")
    assert literal(c.fetch("1", "(RFC822.HEADER)")[1]) == header  # = BODY.PEEK[HEADER]
    assert flags_of(c.fetch("1", "(FLAGS)")[1]) == {1: set()}
    assert literal(c.fetch("1", "(RFC822.TEXT)")[1]) == TEXT_1  # = BODY[TEXT]: sets \Seen
    assert flags_of(c.fetch("1", "(FLAGS)")[1]) == {1: {"\\Seen"}}
    typ, dat = c.fetch("2", "(BODY[HEADER])")  # any BODY[section] without PEEK
    assert literal(dat) == full2[:-len(body(2).split(b"\r\n\r\n", 1)[1])]
    assert flags_of(c.fetch("2", "(FLAGS)")[1]) == {2: {"\\Seen"}}

    typ, dat = c.uid("FETCH", "2", "(BODY.PEEK[TEXT])")  # UID FETCH always answers the UID too
    assert typ == "OK" and literal(dat) == body(2).split(b"\r\n\r\n", 1)[1]
    assert re.match(rb"2 \(.*UID 2", dat[0][0])
    typ, dat = c.fetch("1:*", "(UID)")
    assert typ == "OK" and uids_of(dat) == {1: 1, 2: 2}
    typ, dat = c.uid("FETCH", "1:*", "(FLAGS)")
    assert typ == "OK" and flags_of(dat) == {1: {"\\Seen"}, 2: {"\\Seen"}}
    typ, dat = c.uid("FETCH", "99", "(FLAGS)")  # no such UID: OK with nothing
    assert typ == "OK" and dat in ([None], [])
    c.logout()


def test_a_message_number_past_the_end_is_bad(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    """A message number past the end names no message (RFC 3501 9, seq-number): an error, not a silent OK. The RFC's
    author (imap-protocol list, 2007-11-16): "A001 BAD Invalid sequence number". UIDs differ: a missing UID is
    ignored (tested in test_fetch_items)."""
    _p, smtp, port = imap_server
    deliver(smtp, body(1), body(2))
    r = Raw(port)
    r.login()
    r.cmd(b"s", b"SELECT INBOX")
    reply = r.cmd(b"f1", b"FETCH 3 (FLAGS)")
    assert reply[-1].startswith((b"f1 BAD", b"f1 NO")), reply
    reply = r.cmd(b"f2", b"STORE 3 +FLAGS (\\Seen)")
    assert reply[-1].startswith((b"f2 BAD", b"f2 NO")), reply
    r.close()


# --- flags, search --------------------------------------------------------------------------------------------


def test_store_flags(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1), body(2), body(3))
    c = login(port)
    c.select("INBOX")
    typ, dat = c.store("1", "FLAGS", "(\\Seen \\Flagged)")
    assert typ == "OK" and flags_of(dat) == {1: {"\\Seen", "\\Flagged"}}
    typ, dat = c.store("1:2", "+FLAGS", "(\\Answered)")
    assert typ == "OK" and flags_of(dat) == {1: {"\\Seen", "\\Flagged", "\\Answered"}, 2: {"\\Answered"}}
    typ, dat = c.store("1", "-FLAGS", "(\\Flagged \\Seen)")
    assert typ == "OK" and flags_of(dat) == {1: {"\\Answered"}}
    typ, dat = c.store("3", "+FLAGS.SILENT", "(\\Draft)")
    assert typ == "OK" and flags_of(dat) == {}  # .SILENT: no untagged FETCH
    typ, dat = c.uid("STORE", "2", "FLAGS", "(\\Deleted)")
    assert typ == "OK" and flags_of(dat) == {2: {"\\Deleted"}} and uids_of(dat) == {2: 2}
    typ, dat = c.uid("STORE", "1,3", "-FLAGS.SILENT", "(\\Answered \\Draft)")
    assert typ == "OK" and flags_of(dat) == {}
    typ, dat = c.fetch("1:3", "(FLAGS)")
    assert flags_of(dat) == {1: set(), 2: {"\\Deleted"}, 3: set()}
    c.logout()
    c = login(port)  # flags are stored, not per session
    c.select("INBOX", readonly=True)
    assert flags_of(c.fetch("1:3", "(FLAGS)")[1]) == {1: set(), 2: {"\\Deleted"}, 3: set()}
    c.logout()


def test_search(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1), body(2), body(3), body(4))
    c = login(port)
    c.select("INBOX")
    c.store("1", "+FLAGS", "(\\Seen \\Flagged)")
    c.store("2", "+FLAGS", "(\\Answered \\Deleted)")
    c.store("3", "+FLAGS", "(\\Draft \\Seen)")

    def search(*criteria: str) -> list[int]:
        typ, dat = c.search(None, *criteria)
        assert typ == "OK", (criteria, dat)
        return [int(x) for x in b" ".join(d for d in dat if d).split()]

    def usearch(*criteria: str) -> list[int]:
        typ, dat = c.uid("SEARCH", *criteria)
        assert typ == "OK", (criteria, dat)
        return [int(x) for x in b" ".join(d for d in dat if d).split()]

    assert search("ALL") == [1, 2, 3, 4]
    assert search("SEEN") == [1, 3]
    assert search("UNSEEN") == [2, 4]
    assert search("DELETED") == [2]
    assert search("UNDELETED") == [1, 3, 4]
    assert search("FLAGGED") == [1]
    assert search("UNFLAGGED") == [2, 3, 4]
    assert search("ANSWERED") == [2]
    assert search("DRAFT") == [3]
    assert search("2:3") == [2, 3]
    assert search("2:*") == [2, 3, 4]
    assert search("UID", "1,4") == [1, 4]
    assert search("SUBJECT", '"number 3"') == [3]
    assert search("SUBJECT", "NUMBER") == [1, 2, 3, 4]  # substring, case-insensitive
    assert search("FROM", "s2@example.org") == [2]
    assert search("FROM", '"Sender 4"') == [4]
    assert search("HEADER", "MESSAGE-ID", "<m3@x>") == [3]
    assert search("TEXT", "needle4") == [4]
    assert search("TEXT", "X-Extra") == [1, 2, 3, 4]  # TEXT covers the header too
    assert search("BODY", "needle1") == [1]
    assert search("SUBJECT", "nothing-like-this") == []
    assert search("SEEN", "UNFLAGGED") == [3]  # criteria are ANDed

    c.store("1", "+FLAGS", "(\\Deleted)")
    typ, dat = c.expunge()
    assert typ == "OK"
    assert sorted(apply_expunges([1, 2, 3, 4], dat)) == [1, 2], dat
    # now message numbers 1, 2 are UIDs 3, 4
    assert search("ALL") == [1, 2]
    assert usearch("ALL") == [3, 4]
    assert usearch("SEEN") == [3]
    assert usearch("UID", "4") == [4]
    assert search("UID", "4") == [2]
    assert usearch("1") == [3]  # a sequence set in UID SEARCH is still message numbers
    assert usearch("TEXT", "needle4") == [4]
    assert usearch("HEADER", "MESSAGE-ID", "<m3@x>") == [3]
    assert search("BODY", "Subject") == []  # BODY is the text only (RFC 3501 6.4.4), not the header
    assert search("BODY", "X-Extra") == []
    c.logout()


# --- copy, move, expunge, close --------------------------------------------------------------------------------


def test_copy_move_and_uid_expunge(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1), body(2), body(3), body(4))
    c = login(port)
    assert c.create("Archive")[0] == "OK"
    arch = status(c, "Archive")
    inbox_v = status(c, "INBOX")["UIDVALIDITY"]
    c.select("INBOX")
    c.store("1", "+FLAGS", "(\\Flagged)")
    original = literal(c.fetch("1", "(BODY.PEEK[])")[1])

    typ, dat = c.copy("1:2", "Archive")
    assert typ == "OK", dat
    v, src, dst = code(dat, "COPYUID")
    assert int(v) == arch["UIDVALIDITY"] and expand(src) == [1, 2] and expand(dst) == [1, 2]
    c.untagged_responses.clear()
    typ, dat = c.uid("COPY", "3", "Archive")  # imaplib files the tagged [COPYUID] under untagged_responses
    assert typ == "OK" and c.untagged_responses.get("COPYUID", [b""])[-1].split() == [
        str(arch["UIDVALIDITY"]).encode(), b"3", b"3"], c.untagged_responses
    assert c.copy("1", "Nope")[0] == "NO"  # [TRYCREATE]
    assert status(c, "INBOX")["MESSAGES"] == 4  # COPY leaves the source alone

    c.untagged_responses.clear()
    typ, dat = c.xatom("MOVE", "4", "Archive")
    assert typ == "OK", dat
    moved = c.untagged_responses.get("COPYUID", [])
    assert moved and moved[-1].split() == [str(arch["UIDVALIDITY"]).encode(), b"4", b"4"], c.untagged_responses
    assert c.untagged_responses.get("EXPUNGE") == [b"4"]
    c.untagged_responses.clear()
    typ, dat = c.uid("MOVE", "2", "Archive")
    assert typ == "OK", dat
    assert c.untagged_responses.get("COPYUID", [b""])[-1].split() == [str(arch["UIDVALIDITY"]).encode(),
                                                                        b"2", b"5"]
    assert c.untagged_responses.get("EXPUNGE") == [b"2"]
    typ, dat = c.fetch("1:*", "(UID)")
    assert uids_of(dat) == {1: 1, 2: 3}
    assert status(c, "INBOX")["UIDVALIDITY"] == inbox_v

    c.store("1:2", "+FLAGS", "(\\Deleted)")
    c.untagged_responses.clear()
    typ, dat = c.uid("EXPUNGE", "3")  # only UID 3 goes, although UID 1 is \Deleted too
    assert typ == "OK", dat
    assert c.untagged_responses.get("EXPUNGE") == [b"2"], c.untagged_responses
    typ, dat = c.fetch("1:*", "(UID FLAGS)")
    assert uids_of(dat) == {1: 1} and flags_of(dat) == {1: {"\\Flagged", "\\Deleted"}}

    c.select("Archive")
    typ, dat = c.fetch("1:*", "(UID FLAGS)")
    assert uids_of(dat) == {1: 1, 2: 2, 3: 3, 4: 4, 5: 5}
    assert flags_of(dat)[1] == {"\\Flagged"}  # flags are copied
    assert literal(c.fetch("1", "(BODY.PEEK[])")[1]) == original  # byte-exact copy
    assert literal(c.uid("FETCH", "4", "(BODY.PEEK[])")[1]).endswith(body(4))
    assert literal(c.uid("FETCH", "5", "(BODY.PEEK[])")[1]).endswith(body(2))
    c.logout()


def test_expunge_and_close(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1), body(2), body(3), body(4), body(5))
    c = login(port)
    c.select("INBOX")
    c.store("1,3", "+FLAGS", "(\\Deleted)")
    assert c.check()[0] == "OK"
    typ, dat = c.expunge()
    assert typ == "OK" and sorted(apply_expunges([1, 2, 3, 4, 5], dat)) == [1, 3], dat
    assert uids_of(c.fetch("1:*", "(UID)")[1]) == {1: 2, 2: 4, 3: 5}
    assert c.expunge() == ("OK", [None])  # nothing more to remove

    c.store("1", "+FLAGS", "(\\Deleted)")  # UID 2
    c.select("INBOX", readonly=True)
    c.close()  # read-only: CLOSE expunges nothing
    assert status(c, "INBOX")["MESSAGES"] == 3
    c.select("INBOX")
    typ, _ = c.close()  # read-write: CLOSE expunges silently
    assert typ == "OK"
    assert c.state == "AUTH"
    assert status(c, "INBOX") | {"UIDVALIDITY": 0, "RECENT": 0} == {
        "MESSAGES": 2, "UIDNEXT": 6, "UNSEEN": 2, "UIDVALIDITY": 0, "RECENT": 0}
    c.select("INBOX")
    assert uids_of(c.fetch("1:*", "(UID)")[1]) == {1: 4, 2: 5}
    c.logout()


def test_new_mail_shows_in_a_selected_session(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1))
    c = login(port)
    assert c.select("INBOX")[1] == [b"1"]
    deliver(smtp, body(2))
    c.untagged_responses.clear()
    assert c.noop()[0] == "OK"
    assert c.untagged_responses.get("EXISTS") == [b"2"]
    assert uids_of(c.fetch("1:*", "(UID)")[1]) == {1: 1, 2: 2}
    c.logout()


# --- what is not supported, and protocol robustness ------------------------------------------------------------


def test_unsupported_items_and_commands_are_refused(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1))
    r = Raw(port)
    r.login()
    assert r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    for i, text in enumerate([b"STARTTLS", b"AUTHENTICATE PLAIN"]):  # BODYSTRUCTURE: test_imap_mime.py
        tag = b"u%d" % i
        reply = r.cmd(tag, text)
        assert reply[-1].startswith((tag + b" BAD", tag + b" NO")), (text, reply)
        assert r.cmd(b"n%d" % i, b"NOOP")[-1].startswith(b"n%d OK" % i), text  # still usable
    r.close()


def test_unknown_commands_and_commands_before_login(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, _smtp, port = imap_server
    r = Raw(port)
    assert r.cmd(b"x1", b"FROB")[-1].startswith(b"x1 BAD")
    assert r.cmd(b"x2", b"FETCH 1 (FLAGS)")[-1].startswith((b"x2 BAD", b"x2 NO"))  # needs SELECTED
    for i, text in enumerate([b"SELECT INBOX", b"LIST \"\" *", b"STATUS INBOX (MESSAGES)", b"CREATE X",
                              b"NAMESPACE", b"EXPUNGE"]):
        tag = b"b%d" % i
        reply = r.cmd(tag, text)
        assert reply[-1].startswith((tag + b" BAD", tag + b" NO")), (text, reply)
    assert r.cmd(b"x3", b"CAPABILITY")[-1].startswith(b"x3 OK")
    assert r.cmd(b"x4", b"LOGIN alice")[-1].startswith(b"x4 BAD")  # missing argument
    r.login()
    assert r.cmd(b"x5", b"FETCH 1 (FLAGS)")[-1].startswith((b"x5 BAD", b"x5 NO"))  # nothing selected
    assert r.cmd(b"x6", b"SELECT")[-1].startswith(b"x6 BAD")
    assert r.cmd(b"x7", b'SELECT "INBOX')[-1].startswith(b"x7 BAD")  # unterminated quoted string
    assert r.cmd(b"x8", b"FROB")[-1].startswith(b"x8 BAD")
    assert r.cmd(b"x9", b"NOOP")[-1].startswith(b"x9 OK")
    r.close()


def test_an_overlong_line(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, _smtp, port = imap_server
    r = Raw(port)
    r.login()
    try:
        r.s.sendall(b"o1 NOOP " + b"x" * 200_000 + b"\r\n")
    except OSError:
        pass  # the server may close while we are still sending: acceptable if it said BAD first
    lines = []
    try:
        while True:
            line = r.f.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith(b"o1 ") or line.startswith(b"* BYE"):
                break
    except OSError:
        pass
    assert lines and any(b"BAD" in ln or ln.startswith(b"* BYE") for ln in lines), lines
    assert not any(ln.startswith(b"o1 OK") for ln in lines)
    if lines[-1].startswith(b"* BYE"):
        return  # closed cleanly
    assert r.cmd(b"o2", b"NOOP")[-1].startswith(b"o2 OK")  # still usable
    r.close()


def test_a_literal_over_the_limit_is_refused_unread(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, _smtp, port = imap_server
    r = Raw(port)
    r.login()
    r.s.sendall(b"g1 APPEND INBOX {4000000000}\r\n")  # 4 GB: not read, no "+" continuation
    line = r.f.readline()
    assert line.startswith((b"g1 NO", b"g1 BAD", b"* BYE")), line
    if not line.startswith(b"* BYE"):
        assert r.cmd(b"g2", b"NOOP")[-1].startswith(b"g2 OK")
    r.close()
    r = Raw(port)
    r.login()
    r.s.sendall(b"g3 APPEND INBOX {14}\r\n")  # a literal within the limit gets its continuation
    assert r.f.readline().startswith(b"+")
    r.s.sendall(b"Subject: x\r\n\r\n\r\n")  # the literal, then the end of the command line
    reply = r.until(b"g3")
    assert reply[-1].startswith(b"g3 OK [APPENDUID "), reply
    r.close()


# --- further RFC 3501 details ----------------------------------------------------------------------------------


def test_literals_in_arguments(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1), body(2))
    r = Raw(port)
    r.s.sendall(b"l1 LOGIN {5}\r\n")
    assert r.f.readline().startswith(b"+")
    r.s.sendall(b"alice {2}\r\n")
    assert r.f.readline().startswith(b"+")
    r.s.sendall(b"pw\r\n")
    assert r.until(b"l1")[-1].startswith(b"l1 OK")
    assert r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    r.s.sendall(b"l2 SEARCH SUBJECT {8}\r\n")
    assert r.f.readline().startswith(b"+")
    r.s.sendall(b"number 2\r\n")
    reply = r.until(b"l2")
    assert reply[0] == b"* SEARCH 2\r\n" and reply[-1].startswith(b"l2 OK"), reply
    r.close()


def test_missing_destination_says_trycreate(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    """RFC 3501 6.3.11 / 6.4.7: unless it is certain the mailbox cannot be created, NO [TRYCREATE]."""
    _p, smtp, port = imap_server
    deliver(smtp, body(1))
    r = Raw(port)
    r.login()
    r.s.sendall(b"t1 APPEND Nope {14}\r\n")
    first = r.f.readline()
    if first.startswith(b"+"):
        r.s.sendall(b"Subject: x\r\n\r\n\r\n")
        first = r.until(b"t1")[-1]
    assert first.startswith(b"t1 NO [TRYCREATE]"), first
    r.cmd(b"s", b"SELECT INBOX")
    reply = r.cmd(b"t2", b"COPY 1 Nope")
    assert reply[-1].startswith(b"t2 NO [TRYCREATE]"), reply
    reply = r.cmd(b"t3", b"MOVE 1 Nope")
    assert reply[-1].startswith(b"t3 NO [TRYCREATE]"), reply
    r.close()


def test_uid_ranges_with_star(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    """RFC 3501 6.4.8: "*" is the largest UID in use, so "UID FETCH 99:*" still answers the last message."""
    _p, smtp, port = imap_server
    deliver(smtp, body(1), body(2), body(3))
    c = login(port)
    c.select("INBOX")
    typ, dat = c.uid("FETCH", "99:*", "(UID)")
    assert typ == "OK" and uids_of(dat) == {3: 3}, dat
    typ, dat = c.uid("FETCH", "2:*", "(UID)")
    assert typ == "OK" and uids_of(dat) == {2: 2, 3: 3}, dat
    typ, dat = c.uid("FETCH", "3:1", "(UID)")  # ranges may be given backwards
    assert typ == "OK" and uids_of(dat) == {1: 1, 2: 2, 3: 3}, dat
    typ, dat = c.uid("SEARCH", "UID", "99:*")
    assert typ == "OK" and dat == [b"3"], dat
    typ, dat = c.fetch("*", "(UID)")
    assert typ == "OK" and uids_of(dat) == {3: 3}, dat
    c.logout()


def test_two_sessions_see_each_others_changes(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1), body(2), body(3))
    a, b = login(port), login(port)
    a.select("INBOX")
    b.select("INBOX")
    a.store("2", "+FLAGS", "(\\Deleted)")
    a.expunge()
    b.untagged_responses.clear()
    assert b.noop()[0] == "OK"
    assert b.untagged_responses.get("EXPUNGE") == [b"2"], b.untagged_responses
    assert uids_of(b.fetch("1:*", "(UID)")[1]) == {1: 1, 2: 3}
    a.store("1", "+FLAGS", "(\\Flagged)")
    b.untagged_responses.clear()
    typ, dat = b.noop()
    assert typ == "OK"
    assert flags_of(b.untagged_responses.get("FETCH", [])) in ({1: {"\\Flagged"}}, {}), b.untagged_responses
    assert flags_of(b.fetch("1", "(FLAGS)")[1]) == {1: {"\\Flagged"}}
    a.logout()
    b.logout()


def test_read_only_selection_refuses_changes(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1))
    r = Raw(port)
    r.login()
    r.cmd(b"s", b"SELECT INBOX")
    assert r.cmd(b"d", b"STORE 1 +FLAGS (\\Deleted)")[-1].startswith(b"d OK")
    assert r.cmd(b"e", b"EXAMINE INBOX")[-1].startswith(b"e OK [READ-ONLY]")
    assert r.cmd(b"x1", b"EXPUNGE")[-1].startswith(b"x1 NO"), "EXPUNGE in a read-only selection"
    assert r.cmd(b"x2", b"UID EXPUNGE 1")[-1].startswith(b"x2 NO")
    assert r.cmd(b"x3", b"MOVE 1 Drafts")[-1].startswith(b"x3 NO")
    assert r.cmd(b"x4", b"STATUS INBOX (MESSAGES)")[0] in (b"* STATUS INBOX (MESSAGES 1)\r\n",
                                                           b'* STATUS "INBOX" (MESSAGES 1)\r\n')
    assert r.cmd(b"c", b"COPY 1 Drafts")[-1].startswith(b"c OK [COPYUID ")  # copying out is reading
    r.close()


def test_other_users_and_names(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1))
    c = login(port, "bob")
    assert c.select("INBOX") == ("OK", [b"0"])  # alice's mail is alice's
    assert c.create("INBOX/Sub")[0] == "OK"
    assert c.create("Entw&APw-rfe")[0] == "OK"  # modified UTF-7 (RFC 3501 5.1.3), kept as sent
    names = set(listing(c.list('""', "*")[1]))
    assert names == STANDARD | {"INBOX/Sub", "Entw&APw-rfe"}
    assert set(listing(c.list('""', "INBOX/%")[1])) == {"INBOX/Sub"}
    assert c.select("INBOX/Sub") == ("OK", [b"0"])
    assert c.select('"Junk E-mail"')[0] == "OK"
    assert c.select('"junk e-mail"')[0] in ("OK", "NO")  # only INBOX is case-insensitive by RFC
    c.logout()


def test_state_survives_a_restart(data: Path) -> None:  # noqa: F811
    smtp, imap = free_port(), free_port()
    p = start(data, smtp, "--imap", str(imap))
    try:
        deliver(smtp, body(1), body(2))
        c = login(imap)
        c.select("INBOX")
        c.store("1", "+FLAGS", "(\\Flagged \\Seen)")
        before = status(c, "INBOX")
        c.logout()
    finally:
        assert stop(p)[0] == 0
    p = start(data, smtp, "--imap", str(imap))
    try:
        c = login(imap)
        after = status(c, "INBOX")
        assert {k: after[k] for k in ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN")} == {
            k: before[k] for k in ("MESSAGES", "UIDNEXT", "UIDVALIDITY", "UNSEEN")}
        c.select("INBOX")
        assert flags_of(c.fetch("1:2", "(FLAGS)")[1]) == {1: {"\\Flagged", "\\Seen"}, 2: set()}
        c.logout()
    finally:
        assert stop(p)[0] == 0


def test_before_login_a_literal_may_hold_a_password_not_a_message(
    imap_server: tuple[subprocess.Popen[str], int, int],
) -> None:
    _p, _smtp, port = imap_server
    r = Raw(port)
    r.s.sendall(b"h1 LOGIN {100000}\r\n")  # unauthenticated: no 32 MiB buffers for strangers
    assert r.f.readline() == b"h1 NO [TOOBIG] literal larger than 4096 octets\r\n"
    r.s.sendall(b"h2 LOGIN {5}\r\n")
    assert r.f.readline().startswith(b"+ ")
    r.s.sendall(b"alice pw\r\n")
    assert r.until(b"h2")[-1].startswith(b"h2 OK ")
    r.close()


def test_envelope(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1), b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nFrom: \"Bob B\" <bob@example.org>\r\n"
            b"To: alice@contoso.com,\r\n Carol <carol@contoso.com>\r\nCc: dave@contoso.com\r\n"
            b"Reply-To: list@example.org\r\nSubject: hi \"there\"\r\nIn-Reply-To: <m1@x>\r\n"
            b"Message-ID: <m2@x>\r\n\r\nbody\r\n")
    c = login(port)
    c.select("INBOX")
    typ, dat = c.fetch("1:2", "(ENVELOPE)")
    assert typ == "OK"
    assert dat == [
        b'1 (ENVELOPE (NIL "subject number 1" (("Sender 1" NIL "s1" "example.org")) (("Sender 1" NIL "s1" '
        b'"example.org")) (("Sender 1" NIL "s1" "example.org")) ((NIL NIL "alice" "contoso.com")) NIL NIL NIL '
        b'"<m1@x>"))',
        b'2 (ENVELOPE ("Wed, 25 Nov 2026 10:00:00 +0000" "hi \\"there\\"" (("Bob B" NIL "bob" "example.org")) '
        b'(("Bob B" NIL "bob" "example.org")) ((NIL NIL "list" "example.org")) ((NIL NIL "alice" "contoso.com")'
        b'("Carol" NIL "carol" "contoso.com")) ((NIL NIL "dave" "contoso.com")) NIL "<m1@x>" "<m2@x>"))',
    ]
    typ, dat = c.fetch("2", "ALL")
    assert typ == "OK" and b"ENVELOPE (" in fetch_line(dat) and b"RFC822.SIZE" in fetch_line(dat)
    assert flags_of(c.fetch("2", "(FLAGS)")[1]) == {2: set()}  # ENVELOPE does not set \\Seen
    c.logout()


def test_idle_reports_new_mail_and_ends_with_done(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:
    _p, smtp, port = imap_server
    deliver(smtp, body(1))
    r = Raw(port)
    r.login()
    assert b" IDLE" in r.cmd(b"c", b"CAPABILITY")[0]
    assert r.cmd(b"s", b"SELECT INBOX")[-1].startswith(b"s OK")
    r.s.sendall(b"i1 IDLE\r\n")
    assert r.f.readline() == b"+ idling\r\n"
    deliver(smtp, body(2))
    assert r.f.readline() == b"* 2 EXISTS\r\n"  # within the server's poll interval (the socket timeout bounds it)
    r.s.sendall(b"DONE\r\n")
    assert r.f.readline() == b"i1 OK IDLE terminated\r\n"
    r.s.sendall(b"i2 IDLE\r\n")
    assert r.f.readline() == b"+ idling\r\n"
    r.s.sendall(b"NOPE\r\n")
    assert r.f.readline() == b"i2 BAD expected DONE to end IDLE\r\n"
    assert r.cmd(b"n", b"NOOP")[-1] == b"n OK NOOP completed\r\n"
    r.close()
