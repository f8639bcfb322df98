"""D22 (DRILLS.md): a full-text index removed or damaged ("Repairing Full-Text Indexing").

The guide: full-text indexes are not stored with the databases; to repair one that is
corrupted or out of step, remove the full-text indexing information (Delete Full-Text Index,
then delete the contents of the Projects folder), re-create the index (Create Full-Text
Index), Start Full Population, and mark it "available for searching by clients".

Played against a running ``mailkeep serve`` with mail delivered over SMTP and searched over
IMAP: the index answers; its files are deleted by hand while the server runs and searches
still answer the same (by reading the messages), the loss is logged and ``fti status`` says
missing; delete, create and a full population make the index answer again. That the index
answers (and not the scan) is shown by its counter of searches answered, which only a
search the index answered increments.
"""

from __future__ import annotations

import base64
import imaplib
import json
import os
import quopri
import re
import smtplib
import subprocess
import sys
from pathlib import Path

from mailkeep.eventlog import EventLog
from tests.server.test_serve import data, free_port, start, stop  # noqa: F401 - data is a fixture

DB = "Mailbox Store (EX1)"


def mk(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(d), *args], capture_output=True,
                          text=True, timeout=120)


def _msg(n: int, subject: str, body: bytes, headers: str = "") -> bytes:
    return (f"From: sender@example.org\r\nTo: alice@contoso.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <d22.{n}@example.org>\r\n{headers}\r\n").encode() + body


MAIL = [
    _msg(1, "Quarterly report", b"the budget figures are attached\r\n"),
    _msg(2, "Greetings", quopri.encodestring("Grüße aus Köln, the budget is fine".encode()),
         "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
         "Content-Transfer-Encoding: quoted-printable\r\n"),
    _msg(3, "Invoice", b"--B\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
         b"Content-Transfer-Encoding: base64\r\n\r\n"
         + base64.encodebytes("Señor Müller, budget approved".encode("iso-8859-1"))
         + b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         + base64.encodebytes(b"\x00\x01meeting\x02") + b"--B--\r\n",
         'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n'),
    _msg(4, "=?utf-8?q?R=C3=A9union?=", b"meeting notes\r\n"),
    _msg(5, "Lunch", b"nothing special\r\n"),
]

# (search program, literal or None) -> the Message-IDs it must find
QUERIES: list[tuple[tuple[str, ...], bytes | None, set[int]]] = [
    (("TEXT", "budget"), None, {1, 2, 3}),
    (("BODY", "QUARTERLY"), None, set()),  # the subject is not the body
    (("TEXT", "quarterly"), None, {1}),
    (("CHARSET", "UTF-8", "BODY"), "köln".encode(), {2}),
    (("CHARSET", "UTF-8", "TEXT"), "RÉUNION".encode(), {4}),
    (("CHARSET", "UTF-8", "BODY"), "müller".encode(), {3}),
    (("TEXT", "meeting"), None, {4}),  # the binary attachment's bytes are not text
    (("OR", "BODY", "special", "TEXT", "quarterly"), None, {1, 5}),
    (("NOT", "TEXT", "budget"), None, {4, 5}),
]


def _search(c: imaplib.IMAP4, program: tuple[str, ...], lit: bytes | None) -> set[int]:
    """The Message-ID numbers (d22.N) a UID SEARCH finds."""
    if lit is not None:
        c.literal = lit  # type: ignore[attr-defined]
    typ, dat = c.uid("SEARCH", *program)
    assert typ == "OK", (program, dat)
    uids = b" ".join(d for d in dat if d).decode().split()
    if not uids:
        return set()
    typ, dat = c.uid("FETCH", ",".join(uids), "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", dat
    found = {int(m) for x in dat if isinstance(x, tuple) for m in re.findall(rb"<d22\.(\d+)@example\.org>", x[1])}
    assert len(found) == len(uids), (uids, dat)
    return found


def _all_queries(imap: int, extra: dict[tuple[str, ...], set[int]] | None = None) -> None:
    c = imaplib.IMAP4("127.0.0.1", imap, timeout=60)
    try:
        assert c.login("alice", "pw")[0] == "OK"
        assert c.select("INBOX")[0] == "OK"
        for program, lit, want in QUERIES:
            want = want | (extra or {}).get(program, set())
            assert _search(c, program, lit) == want, program
    finally:
        c.logout()


def _status(d: Path) -> dict[str, object]:
    p = mk(d, "fti", "status", "--db", DB, "--json")
    assert p.returncode == 0, p.stderr
    return dict(json.loads(p.stdout)[0])


def _ok(d: Path, *args: str) -> str:
    p = mk(d, *args)
    assert p.returncode == 0 and p.stderr == "", (args, p.stdout, p.stderr)
    return p.stdout


def test_d22_index_removed_by_hand_then_recreated(data: Path) -> None:  # noqa: F811
    smtp, imap = free_port(), free_port()
    p = start(data, smtp, "--imap", str(imap))
    try:
        with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as s:
            for m in MAIL:
                assert s.sendmail("sender@example.org", ["alice@contoso.com"], m) == {}
        _all_queries(imap)  # no index yet: scanning answers
    finally:
        assert stop(p)[0] == 0

    # the index, built offline as the administrator would before a start
    _ok(data, "fti", "create", "--db", DB, "--available", "on")
    out = _ok(data, "fti", "populate", "--db", DB, "--full")
    assert out.startswith(f"Full population of First Storage Group/{DB}: 5 message(s) in the index; 5 added or "
                          "changed, 0 removed; 5 content(s) read in ")
    st = _status(data)
    assert (st["state"], st["available"], st["messages"], st["searches"]) == ("ready", True, 5, 0)
    counter = data / "index" / f"{st['guid']}.searches"

    p = start(data, smtp, "--imap", str(imap))
    try:
        _all_queries(imap)
        assert counter.read_text() == f"{len(QUERIES)}\n"  # every search was answered from the index
        # mail after the population is found too (the index vouches only for what it holds)
        with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as s:
            s.sendmail("sender@example.org", ["alice@contoso.com"], _msg(6, "Late", b"late budget news\r\n"))
        late = {("TEXT", "budget"): {6}, ("NOT", "TEXT", "budget"): set()}
        _all_queries(imap, late)
        assert counter.read_text() == f"{2 * len(QUERIES)}\n"

        # "delete the contents of the Projects folder" while the server runs
        for name in os.listdir(data / "index"):
            os.unlink(data / "index" / name)
        _all_queries(imap, late)  # still the same answers, by reading the messages
        assert not counter.exists()  # and none was answered from an index
        lost = [e for e in EventLog(str(data / "events.jsonl")).read(source="Microsoft Search") if e.id == 7003]
        assert [(e.level, e.data["state"]) for e in lost] == [("error", "missing")]
        # the server holds the store: the commands go through its HTTP API
        st = _status(data)
        assert (st["state"], st["problem"]) == ("missing", f"the index file {st['path']} is missing")

        # the guide's repair, while users keep working: delete, re-create, full population,
        # available for searching
        _ok(data, "fti", "delete", "--db", DB)
        _ok(data, "fti", "create", "--db", DB)
        assert _ok(data, "fti", "populate", "--db", DB, "--full").startswith(
            f"Full population of First Storage Group/{DB}: 6 message(s) in the index; 6 added or changed, 0 removed; "
            "6 content(s) read in ")
        _ok(data, "fti", "set", "--db", DB, "--available", "on")
        assert (_status(data)["state"], _status(data)["searches"]) == ("ready", 0)
        _all_queries(imap, late)
        assert counter.read_text() == f"{len(QUERIES)}\n"  # answered from the new index again
    finally:
        assert stop(p)[0] == 0
    st = _status(data)  # and offline, on the files
    assert (st["state"], st["messages"], st["searches"]) == ("ready", 6, len(QUERIES))
