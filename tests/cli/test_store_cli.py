"""`mailkeep setup`, `sg`, `db`, `mailbox` and `deliver` as an administrator and an MTA run them:
real subprocesses on a real data folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.store import Store


def mk(data: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(data), *args],
                       capture_output=True, input=stdin, timeout=120)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(), p.stderr.decode())


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    p = mk(d, "setup", "--domain", "contoso.com", "--server", "EX1")
    assert p.returncode == 0, p.stdout + p.stderr
    for user in ("alice", "bob"):
        assert mk(d, "user", "add", user, "--password", "pw").returncode == 0
        assert mk(d, "user", "mailbox-enable", user, "--db", "Mailbox Store (EX1)").returncode == 0
    return d


def msg(mid: str, body: str = "hello\n") -> bytes:
    return f"From: sender@example.org\nSubject: t {mid}\nMessage-ID: {mid}\n\n{body}".encode()


def inbox_ids(data: Path, user: str) -> list[str]:
    with Store.open(str(data)) as s:
        s.mount_intended()
        return [m.message_id for m in open_mailbox(s, user).messages("INBOX")]


def test_setup_prints_what_it_made_and_refuses_twice(tmp_path: Path) -> None:
    d = tmp_path / "d"
    p = mk(d, "setup", "--domain", "contoso.com", "--server", "EX1")
    assert p.returncode == 0
    lines = p.stdout.splitlines()
    assert lines[0] == f"Server EX1 set up in {d}"
    assert f"  storage group:       First Storage Group (E00, logs in {d}/mdbdata)" in lines
    assert f"  mailbox store:       Mailbox Store (EX1) ({d}/mdbdata/priv1.edb, {d}/mdbdata/priv1.stm) mounted" in lines
    assert (f"  public folder store: Public Folder Store (EX1) ({d}/mdbdata/pub1.edb, {d}/mdbdata/pub1.stm) mounted"
            in lines)
    before = sorted(os.listdir(d / "mdbdata"))
    again = mk(d, "setup", "--domain", "contoso.com", "--server", "EX1")
    assert again.returncode == 1
    assert again.stderr.startswith(f"mailkeep setup: {d} already holds a server")
    assert sorted(os.listdir(d / "mdbdata")) == before


def test_deliver_exit_codes_follow_sysexits(data: Path) -> None:
    ok = mk(data, "deliver", "-f", "sender@example.org", "alice@contoso.com", stdin=msg("<1@x>"))
    assert (ok.returncode, ok.stderr) == (0, "")
    unknown = mk(data, "deliver", "nobody@contoso.com", stdin=msg("<2@x>"))
    assert unknown.returncode == 67
    assert "nobody@contoso.com: no mailbox-enabled account has the address" in unknown.stderr
    assert "ecUnknownUser 0x3eb" in unknown.stderr
    usage = mk(data, "deliver", stdin=msg("<3@x>"))
    assert usage.returncode == 64 and "no recipient given" in usage.stderr
    assert mk(data, "deliver", "-x", "alice", stdin=b"x").returncode == 64
    empty = mk(data, "deliver", "alice", stdin=b"")
    assert empty.returncode == 65 and "the message is empty" in empty.stderr
    assert mk(data, "db", "dismount", "Mailbox Store (EX1)").returncode == 0
    temp = mk(data, "deliver", "alice@contoso.com", stdin=msg("<4@x>"))
    assert temp.returncode == 75 and "MAPI_E_FAILONEPROVIDER 0x8004011d" in temp.stderr
    assert mk(data, "db", "mount", "Mailbox Store (EX1)").returncode == 0
    both = mk(data, "deliver", "alice@contoso.com", "bob@contoso.com", stdin=msg("<5@x>"))
    assert both.returncode == 0
    assert inbox_ids(data, "alice") == ["<1@x>", "<5@x>"]
    assert inbox_ids(data, "bob") == ["<5@x>"]
    nothing = mk(data.parent / "empty", "deliver", "alice@contoso.com", stdin=msg("<6@x>"))
    assert nothing.returncode == 78 and "run 'mailkeep setup" in nothing.stderr


def test_deliver_stores_crlf_and_the_envelope_sender(data: Path) -> None:
    p = mk(data, "deliver", "-f", "<bounce@example.org>", "alice", stdin=msg("<7@x>", "line1\nline2\n"))
    assert p.returncode == 0
    with Store.open(str(data)) as s:
        s.mount_intended()
        mb = open_mailbox(s, "alice")
        raw = mb.read_message("INBOX", 1)
        assert raw == (b"From: sender@example.org\r\nSubject: t <7@x>\r\nMessage-ID: <7@x>\r\n\r\n"
                       b"line1\r\nline2\r\n")
        with s.read(mb.info) as (r, db):
            row = r.get(db, "message", (mb.guid, mb.folder("INBOX").fid, 1))
        assert row is not None and row["envelope_from"] == "bounce@example.org"


def test_sg_and_db_administration(data: Path) -> None:
    p = mk(data, "sg", "create", "SG2")
    assert p.stdout.strip() == f"Created storage group SG2 (E01); logs in {data}/SG2, system files in {data}/SG2"
    p = mk(data, "db", "create", "SG2", "DB2")
    assert p.returncode == 0 and "Not mounted" in p.stdout
    listed = json.loads(mk(data, "db", "list", "--json").stdout)
    assert [(x["name"], x["storage_group"], x["state"]) for x in listed] == [
        ("Mailbox Store (EX1)", "First Storage Group", "mounted"),
        ("Public Folder Store (EX1)", "First Storage Group", "mounted"),
        ("DB2", "SG2", "dismounted"),
    ]
    p = mk(data, "db", "set", "DB2", "--allow-restore-overwrite", "on", "--mount-at-startup", "off")
    assert p.returncode == 0 and "overwritten by a restore: on" in p.stdout
    row = next(x for x in json.loads(mk(data, "db", "list", "--json").stdout) if x["name"] == "DB2")
    assert (row["allow_restore_overwrite"], row["mount_at_startup"]) == (True, False)
    assert mk(data, "db", "mount", "DB2").returncode == 0
    assert os.path.exists(data / "SG2" / "DB2.edb") and os.path.exists(data / "SG2" / "DB2.stm")
    refused = mk(data, "db", "delete", "DB2")
    assert refused.returncode == 1 and "is mounted: dismount it first" in refused.stderr
    assert mk(data, "db", "dismount", "DB2").returncode == 0
    gone = mk(data, "db", "delete", "DB2")
    assert gone.returncode == 0 and "Its files were kept" in gone.stdout
    assert os.path.exists(data / "SG2" / "DB2.edb")  # never deleted silently
    assert mk(data, "sg", "rename", "SG2", "Second Storage Group").returncode == 0
    assert "Second Storage Group" in mk(data, "sg", "list").stdout
    for name in ("SG3", "SG4"):
        assert mk(data, "sg", "create", name).returncode == 0
    fifth = mk(data, "sg", "create", "SG5")
    assert fifth.returncode == 1 and "already has 4 storage groups, the limit" in fifth.stderr
    assert mk(data, "sg", "create", "Recovery Storage Group", "--recovery").returncode == 0
    wrong = mk(data, "sg", "create", "X", "--circular-logging", "maybe")
    assert wrong.returncode == 2 and "use on or off" in wrong.stderr


def test_mailbox_commands(data: Path) -> None:
    assert mk(data, "deliver", "alice", stdin=msg("<a1@x>")).returncode == 0
    rows = json.loads(mk(data, "mailbox", "list", "--json").stdout)
    alice = next(r for r in rows if r["account"] == "alice")
    assert (alice["state"], alice["messages"]) == ("connected", 1)
    assert mk(data, "user", "remove-exchange-attributes", "alice").returncode == 0
    p = mk(data, "mailbox", "cleanup")
    assert p.returncode == 0 and f"  disconnected {alice['guid']}" in p.stdout.splitlines()
    listed = mk(data, "mailbox", "list", "--disconnected").stdout
    assert alice["guid"] in listed and "disconnected" in listed
    rec = mk(data, "mailbox", "recover", "--apply")
    assert rec.returncode == 0 and "CN=alice,CN=Users,DC=contoso,DC=com" in rec.stdout
    assert "Reconnected 1 mailbox(es)" in rec.stdout
    assert inbox_ids(data, "alice") == ["<a1@x>"]
    bad = mk(data, "mailbox", "purge", alice["guid"])
    assert bad.returncode == 1 and "only a disconnected mailbox can be purged" in bad.stderr
    assert mk(data, "sg", "create", "SG2").returncode == 0
    assert mk(data, "db", "create", "SG2", "DB2", "--mount").returncode == 0
    moved = mk(data, "mailbox", "move", "alice", "--to", "DB2")
    assert moved.returncode == 0 and moved.stdout.strip() == "Moved the mailbox of alice to SG2/DB2"
    assert inbox_ids(data, "alice") == ["<a1@x>"]


def test_concurrent_deliver_processes_take_turns(data: Path) -> None:
    """An MTA runs several `mailkeep deliver` at once: each waits for the storage group and
    directory locks instead of failing (bounded by deliver's 30 s lock wait)."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "mailkeep", "--data", str(data), "deliver", "bob"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(6)
    ]
    for i, p in enumerate(procs):
        assert p.stdin is not None
        p.stdin.write(msg(f"<par{i}@x>"))
        p.stdin.close()
    results = [(p.wait(timeout=120), p.stderr.read().decode() if p.stderr else "") for p in procs]
    for p in procs:
        for f in (p.stdout, p.stderr):
            if f:
                f.close()
    assert results == [(0, "")] * 6
    assert sorted(inbox_ids(data, "bob")) == sorted(f"<par{i}@x>" for i in range(6))
