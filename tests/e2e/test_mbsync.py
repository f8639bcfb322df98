"""A real third-party IMAP client, mbsync (isync), against `mailkeep serve`: pull a whole mailbox
(several folders, one nested, about 30 messages with multiparts) into a Maildir, then push a new
message and a flag change back.

Black-box: the server is started as a process in a temporary data folder, mail arrives over
SMTP, mbsync talks IMAP on a loopback port, and the results are read from the Maildir files and
over imaplib. The test installs isync with apt-get when it is missing and it runs as root (CI
does); otherwise it is skipped with the reason.
"""

from __future__ import annotations

import base64
import email
import email.parser
import email.policy
import imaplib
import os
import re
import shutil
import smtplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.test_serve import data, free_port, start, stop  # noqa: F401 - data is a fixture

MBSYNC_TIMEOUT = 120


@pytest.fixture(scope="session")
def mbsync() -> str:
    """The mbsync binary, installed from Debian (package isync) when missing and we are root."""
    found = shutil.which("mbsync")
    if found:
        return found
    if os.geteuid() != 0:
        pytest.skip("mbsync is not installed and installing it needs root: run `apt-get install isync` as root")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "isync"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{' '.join(cmd)} failed; install isync by hand: {done.stderr[-2000:]}"
    found = shutil.which("mbsync")
    assert found, "apt-get installed isync but there is no mbsync on PATH"
    return found


@pytest.fixture
def serve(data: Path) -> Iterator[tuple[int, int]]:  # noqa: F811
    smtp, imap = free_port(), free_port()
    p = start(data, smtp, "--imap", str(imap))
    try:
        yield smtp, imap
    finally:
        if p.poll() is None:
            stop(p)


def plain(n: int) -> bytes:
    return (f"From: Sender {n} <s{n}@example.org>\r\nTo: alice@contoso.com\r\nSubject: message {n}\r\n"
            f"Date: Wed, 25 Nov 2026 10:{n:02d}:00 +0000\r\nMessage-ID: <{n}@mbsync.test>\r\n\r\n"
            f"body of message {n}\r\n-- \r\nsignature\r\n").encode()


def multipart(n: int) -> bytes:
    blob = base64.encodebytes(bytes(range(256)) * (40 * n)).replace(b"\n", b"\r\n")
    return (f"From: s@example.org\r\nTo: alice@contoso.com\r\nSubject: multipart {n}\r\n"
            f"Message-ID: <{n}@mbsync.test>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: multipart/mixed; boundary=\"outer\"\r\n\r\npreamble\r\n"
            "--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
            "--inner\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
            "caf\u00e9 \u2014 text part\r\n"
            "--inner\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html part</p>\r\n--inner--\r\n"
            "--outer\r\nContent-Type: message/rfc822\r\n\r\nSubject: forwarded\r\nFrom: c@example.org\r\n\r\n"
            "inner text\r\n"
            "--outer\r\nContent-Type: application/octet-stream; name=\"blob.bin\"\r\n"
            "Content-Disposition: attachment; filename=\"blob.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            ).encode() + blob + b"--outer--\r\nepilogue\r\n"


# Message-ID number -> folder it ends up in (delivered to INBOX over SMTP, then moved)
FOLDERS = {"INBOX": range(1, 13), "Projects": range(13, 21), "Projects/2026": range(21, 26), "Archive": range(26, 31)}
MULTIPART = {5, 14, 22, 27}


def sent(n: int) -> bytes:
    return multipart(n) if n in MULTIPART else plain(n)


def message_id(raw: bytes) -> str:
    return str(email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)["Message-ID"])


def without_tuid(raw: bytes) -> bytes:
    """The message without the ``X-TUID:`` field mbsync puts last in the header of each message it
    copies (its transaction id, to find the copy again after an interruption)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    head, n = re.subn(rb"\r\nX-TUID: [A-Za-z0-9+/]{12}$", b"", head)
    assert n <= 1, raw[:2000]
    return head + sep + rest


def maildir(root: Path, folder: str) -> dict[str, tuple[bytes, str]]:
    """Message-ID -> (the message as the server would serve it, Maildir flags) of one Maildir folder:
    mbsync writes files with LF line ends and one ``X-TUID:`` field last in the header."""
    out = {}
    base = root / folder
    for sub in ("cur", "new"):
        for f in sorted((base / sub).iterdir()):
            raw = f.read_bytes()
            assert b"\r" not in raw, f  # Maildir files have LF line ends: served with CRLF
            raw = without_tuid(raw.replace(b"\n", b"\r\n"))
            flags = f.name.split(":2,", 1)[1] if ":2," in f.name else ""
            mid = message_id(raw)
            assert mid not in out, f"{mid} twice in {folder}"
            out[mid] = (raw, flags)
    return out


def config(home: Path, port: int, mail: Path) -> Path:
    rc = home / "mbsyncrc"
    rc.write_text(f"""IMAPAccount mailkeep
Host 127.0.0.1
Port {port}
User alice
Pass pw
SSLType None
AuthMechs LOGIN
Timeout 60

IMAPStore server
Account mailkeep

MaildirStore local
Path {mail}/
Inbox {mail}/INBOX
SubFolders Verbatim

Channel everything
Far :server:
Near :local:
Patterns *
Create Both
Expunge None
Sync All
SyncState *
CopyArrivalDate yes
""")
    return rc


def run_mbsync(binary: str, rc: Path, home: Path, *options: str) -> str:
    done = subprocess.run([binary, "-c", str(rc), "-D", *options, "everything"], capture_output=True, text=True,
                          timeout=MBSYNC_TIMEOUT, env={**os.environ, "HOME": str(home)})
    log = done.stdout + done.stderr
    with open(home / "mbsync.log", "a") as f:  # the whole protocol dialogue, for a failure's post-mortem
        f.write(log)
    assert done.returncode == 0, f"mbsync failed ({done.returncode}), see {home}/mbsync.log:\n{log[-8000:]}"
    assert not re.search(r"^[0-9]+ (BAD|NO) ", log, re.M), f"the server refused a command; see {home}/mbsync.log"
    return log


def server_folder(c: imaplib.IMAP4, folder: str) -> dict[str, tuple[bytes, set[str]]]:
    """Message-ID -> (BODY[], flags) of one server folder."""
    typ, _ = c.select(f'"{folder}"', readonly=True)
    assert typ == "OK", folder
    typ, dat = c.fetch("1:*", "(FLAGS BODY.PEEK[])")
    out: dict[str, tuple[bytes, set[str]]] = {}
    if dat == [None]:
        return out
    for item in dat:
        if isinstance(item, tuple):
            flags = set(re.search(rb"FLAGS \(([^)]*)\)", item[0]).group(1).decode().split())  # type: ignore[union-attr]
            out[message_id(item[1])] = (item[1], flags)
    return out


def test_mbsync_pulls_the_mailbox_and_pushes_changes_back(
    mbsync: str, serve: tuple[int, int], tmp_path: Path,
) -> None:
    smtp, port = serve
    with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as s:
        for n in range(1, 31):
            assert s.sendmail("s@example.org", ["alice@contoso.com"], sent(n)) == {}
    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    assert c.login("alice", "pw")[0] == "OK"
    for folder in ("Projects", "Projects/2026", "Archive"):
        assert c.create(f'"{folder}"')[0] == "OK"
    c.select("INBOX")
    for folder, numbers in FOLDERS.items():
        if folder != "INBOX":
            assert c.uid("MOVE", ",".join(str(n) for n in numbers), f'"{folder}"')[0] == "OK"
    c.logout()

    home, mail = tmp_path / "home", tmp_path / "mail"
    home.mkdir()
    mail.mkdir()
    rc = config(home, port, mail)
    run_mbsync(mbsync, rc, home)

    c = imaplib.IMAP4("127.0.0.1", port, timeout=30)
    assert c.login("alice", "pw")[0] == "OK"
    for folder, numbers in FOLDERS.items():
        local = maildir(mail, folder)
        remote = server_folder(c, folder)
        assert set(local) == {f"<{n}@mbsync.test>" for n in numbers}, folder
        assert set(remote) == set(local), folder
        for n in numbers:
            raw, flags = local[f"<{n}@mbsync.test>"]
            assert raw == remote[f"<{n}@mbsync.test>"][0], f"<{n}@mbsync.test> differs in {folder}"
            assert raw.endswith(sent(n)) and raw.startswith(b"Received: from "), n  # the server adds Received:
            assert flags == ""
    assert (mail / "Sent Items" / "cur").is_dir() and not maildir(mail, "Sent Items")  # empty folders come too

    # push: a new message written into the Maildir, and a flag set on one pulled message
    new = (b"From: alice@contoso.com\r\nTo: bob@contoso.com\r\nSubject: written offline\r\n"
           b"Date: Wed, 25 Nov 2026 12:00:00 +0000\r\nMessage-ID: <offline@mbsync.test>\r\n\r\ndraft text\r\n")
    (mail / "Projects" / "cur" / "1764072000.offline.host:2,S").write_bytes(new.replace(b"\r\n", b"\n"))
    flagged = next(f for f in (mail / "INBOX" / "new").iterdir() if message_id(f.read_bytes()) == "<3@mbsync.test>")
    flagged.rename(mail / "INBOX" / "cur" / (flagged.name.split(":2,")[0] + ":2,FS"))
    run_mbsync(mbsync, rc, home)

    projects = server_folder(c, "Projects")
    assert set(projects) == {f"<{n}@mbsync.test>" for n in FOLDERS["Projects"]} | {"<offline@mbsync.test>"}
    copy, copy_flags = projects["<offline@mbsync.test>"]
    assert (without_tuid(copy), copy_flags) == (new, {"\\Seen"}) and copy != new  # the copy carries its X-TUID
    inbox = server_folder(c, "INBOX")
    assert {mid: flags for mid, (_raw, flags) in inbox.items() if flags} == {"<3@mbsync.test>": {"\\Flagged", "\\Seen"}}
    assert set(inbox) == {f"<{n}@mbsync.test>" for n in FOLDERS["INBOX"]}

    assert set(maildir(mail, "Projects")) == set(projects)
    assert maildir(mail, "Projects")["<offline@mbsync.test>"][0] == new

    # both sides change: new mail, a flag and an expunge on the server; a deletion in the Maildir (-X: expunge)
    with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as s:
        assert s.sendmail("s@example.org", ["alice@contoso.com"], sent(31)) == {}
    c.select("INBOX")
    assert c.uid("STORE", "4", "+FLAGS", "(\\Answered)")[0] == "OK"
    assert c.uid("STORE", "7", "+FLAGS", "(\\Deleted)")[0] == "OK" and c.expunge()[0] == "OK"
    trashed = next(f for f in (mail / "INBOX" / "new").iterdir() if message_id(f.read_bytes()) == "<6@mbsync.test>")
    trashed.rename(mail / "INBOX" / "cur" / (trashed.name.split(":2,")[0] + ":2,T"))
    run_mbsync(mbsync, rc, home, "-X")

    want = {f"<{n}@mbsync.test>" for n in [*FOLDERS["INBOX"], 31] if n not in (6, 7)}
    inbox = server_folder(c, "INBOX")
    assert set(inbox) == want
    assert {mid: flags for mid, (_raw, flags) in inbox.items() if flags} == {
        "<3@mbsync.test>": {"\\Flagged", "\\Seen"}, "<4@mbsync.test>": {"\\Answered"}}
    local = maildir(mail, "INBOX")
    assert set(local) == want
    assert {mid: flags for mid, (_raw, flags) in local.items() if flags} == {"<3@mbsync.test>": "FS",
                                                                              "<4@mbsync.test>": "R"}
    assert local["<31@mbsync.test>"][0] == inbox["<31@mbsync.test>"][0]
    c.logout()

    log = run_mbsync(mbsync, rc, home)  # nothing left to do: another run changes nothing on either side
    assert not re.search(r">>> \d+ (APPEND|UID STORE|EXPUNGE|UID EXPUNGE) ", log), log[-4000:]
    assert set(maildir(mail, "INBOX")) == want
