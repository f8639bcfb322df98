"""Restore drills through the real CLI and real servers (mail in over SMTP, out over IMAP):

- D6: the media's names do not match the target (a database, then a storage group, renamed):
  the restore fails naming both names and writes nothing; renamed back, it succeeds.
- D18's restore half: three sets appended, the on-disk catalog deleted and rebuilt, set 1 and
  set 2 restored (Last Restore Set): exactly the mail delivered before set 2 is back.
- The guide's Method 1 for moving databases: restore to another server whose storage group
  and database carry the media's names ("This database can be overwritten by a restore" on);
  the roll-forward stops because the target's logs are another stream, and says so.
- SIGKILL during hard recovery (``eseutil /cc``): run again, it finishes, restore.env goes,
  and every message is there exactly once.
"""

from __future__ import annotations

import imaplib
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from mailkeep.backup.media import MediaReader
from mailkeep.directory import tasks
from mailkeep.directory.setup import open_directory
from mailkeep.engine.logformat import both_names, gen_file_name
from mailkeep.engine.logreader import list_generations
from mailkeep.engine.logreader import read_header as read_log_header
from mailkeep.store.setup import setup_server
from tests.server.test_serve import free_port, start, stop

SG_NAME = "First Storage Group"
SG = f"EX1/Information Store/{SG_NAME}"
DB = "Mailbox Store (EX1)"
LOG_SIZE = 64 * 1024  # small generations: many of them


def mk(d: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(d), *args], capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILKEEP_STATE_DIR", str(tmp_path / "state"))


def make_server(d: Path, name: str, mailbox_guid: uuid.UUID | None = None) -> Path:
    """A server with alice mailbox-enabled (with the given mailbox GUID)."""
    res = setup_server(str(d), domain="contoso.com", server=name, log_file_size=LOG_SIZE)
    directory = open_directory(str(d))
    directory.add_user("alice", password_text="alice-pw")
    tasks.mailbox_enable(directory, "alice", res.mailbox_store.dn, mailbox_guid=mailbox_guid)
    directory.close()
    return d


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return make_server(tmp_path / "data", "EX1")


def send(port: int, ids: range, tag: str = "r") -> list[str]:
    out = []
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as c:
        for i in ids:
            mid = f"<{tag}{i}@x>"
            c.sendmail("x@example.org", ["alice@contoso.com"],
                       f"Message-ID: {mid}\r\nSubject: {i}\r\n\r\n".encode() + b"line of text\r\n" * 60)
            out.append(mid)
    return out


def imap_ids(port: int) -> list[str]:
    """Every Message-ID of alice's Inbox, sorted, duplicates kept."""
    c = imaplib.IMAP4("127.0.0.1", port)
    try:
        c.login("alice", "alice-pw")
        typ, _ = c.select("INBOX", readonly=True)
        assert typ == "OK"
        typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        assert typ == "OK"
        return sorted(part[1].decode().split(":", 1)[1].strip() for part in data if isinstance(part, tuple))
    finally:
        c.logout()


def restore(d: Path, media: Path, n: int, temp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return mk(d, "backup", "restore", "--media", str(media), "--set", str(n), "--temp", str(temp), *args)


def lose(d: Path) -> None:
    """The disaster (the database dismounted first): its files are gone."""
    r = mk(d, "db", "dismount", DB)
    assert r.returncode == 0, r.stderr
    for f in ("priv1.edb", "priv1.stm"):
        os.unlink(d / "mdbdata" / f)


def test_d6_mismatched_names_refused_then_renamed_back(data: Path, tmp_path: Path) -> None:
    smtp, imap = free_port(), free_port()
    media, temp = tmp_path / "m.bkf", tmp_path / "temp"
    p = start(data, smtp, "--imap", str(imap))
    try:
        ids = send(smtp, range(0, 15))
        r = mk(data, "backup", "run", "--media", str(media), SG)
        assert r.returncode == 0, r.stderr
        ids += send(smtp, range(15, 25))  # after the backup: rolled forward from the storage group's logs
        lose(data)
        # the database was renamed on the target since the backup
        assert mk(data, "db", "rename", DB, "Sales Store").returncode == 0
        r = restore(data, media, 1, temp, "--last-restore-set", "--mount", f"{SG}/{DB}")
        assert (r.returncode, r.stdout) == (1, "")
        assert r.stderr == (
            f"mailkeep backup restore: the media's database '{DB}' does not exist in storage group {SG_NAME} of "
            "server EX1 (it has: Sales Store, Public Folder Store (EX1)). Rename a database or create one with this "
            "name, then restore again.\n")
        assert not temp.exists() and not (data / "mdbdata" / "priv1.edb").exists()  # nothing was written
        assert mk(data, "db", "rename", "Sales Store", DB).returncode == 0
        # and now the storage group
        r = mk(data, "sg", "rename", SG_NAME, "Sales Group")
        assert r.returncode == 0, r.stderr
        r = restore(data, media, 1, temp, "--last-restore-set", "--mount", f"{SG}/{DB}")
        assert (r.returncode, r.stdout) == (1, "")
        assert r.stderr == (
            f"mailkeep backup restore: the media's storage group '{SG_NAME}' does not exist on server EX1 (it has: "
            "Sales Group). The names must match: rename a storage group or create one with this name (the guide's "
            "\"Resolving Mismatched Names\"), then restore again.\n")
        assert not temp.exists() and not (data / "mdbdata" / "priv1.edb").exists()
        assert mk(data, "sg", "rename", "Sales Group", SG_NAME).returncode == 0
        r = restore(data, media, 1, temp, "--last-restore-set", "--mount", f"{SG}/{DB}")
        assert r.returncode == 0, r.stderr
        assert f"Mounted {SG_NAME}/{DB}." in r.stdout.splitlines()
        assert not (temp / SG_NAME / "restore.env").exists()
        assert imap_ids(imap) == sorted(ids)
    finally:
        assert stop(p)[0] == 0


def test_d18_catalog_rebuilt_then_sets_1_and_2_restored(data: Path, tmp_path: Path) -> None:
    smtp, imap = free_port(), free_port()
    media, temp = tmp_path / "m.bkf", tmp_path / "temp"
    p = start(data, smtp, "--imap", str(imap))
    try:
        before_set2: list[str] = []
        lows, highs = [], []
        for n, kind in enumerate(("normal", "incremental", "incremental"), start=1):
            sent = send(smtp, range(100 * n, 100 * n + 60))
            if n <= 2:
                before_set2 += sent
            r = mk(data, "backup", "run", "--media", str(media), "--type", kind, "--json", SG)
            assert r.returncode == 0, r.stderr
            rec = json.loads(r.stdout)["storage_groups"][0]
            lows.append(rec["low_gen"])
            highs.append(rec["high_gen"])
        send(smtp, range(900, 905))  # after the last set
        assert mk(data, "backup", "catalog", "delete", "--media", str(media)).returncode == 0
        r = mk(data, "backup", "catalog", "rebuild", "--media", str(media))
        name = MediaReader(str(media)).header.name
        assert r.stdout == f"Rebuilt the catalog of {media} (media \"{name}\", 3 set(s)) from the media.\n"
        listed = mk(data, "backup", "catalog", "list", "--media", str(media)).stdout
        assert "[catalog rebuilt from the media]" not in listed.splitlines()[0]
        assert [line.split()[:2] for line in listed.splitlines()[2:]] == [["1", "normal"], ["2", "incremental"],
                                                                          ["3", "incremental"]]
        lose(data)
        # set 3 truncated the generations after set 2: the roll-forward has nothing to continue with
        assert not (data / "mdbdata" / gen_file_name("E00", highs[1] + 1)).exists()
        r = restore(data, media, 1, temp, f"{SG}/{DB}")
        assert r.returncode == 0, r.stderr
        r = restore(data, media, 2, temp, "--last-restore-set", "--mount", SG)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert "Backup set #2 on media #1" in lines and f"Mounted {SG_NAME}/{DB}." in lines
        hard = next(line for line in lines if line.startswith("Hard recovery of "))
        lowest = min(list_generations(str(data / "mdbdata"), "E00"))
        assert hard == (f"Hard recovery of {SG_NAME}/{DB}: logs {lows[0]}-{highs[1]} from {temp / SG_NAME}, rolled "
                        f"forward to generation {highs[1]} ({SG_NAME}'s log folder does not hold generation "
                        f"{highs[1] + 1} ({both_names('E00', highs[1] + 1)}; it starts at {lowest}): the databases "
                        "hold what the restored logs hold).")
        assert imap_ids(imap) == sorted(before_set2)  # exactly the mail delivered before set 2
    finally:
        assert stop(p)[0] == 0


def test_restore_to_another_server(data: Path, tmp_path: Path) -> None:
    """The guide's Method 1: the target server's storage group and database carry the media's
    names; its database object is another one (another GUID), so it must allow overwriting."""
    d = open_directory(str(data))
    raw = d.require_user("alice").first("msExchMailboxGUID")
    d.close()
    assert isinstance(raw, bytes)
    other = make_server(tmp_path / "data2", "EX2", mailbox_guid=uuid.UUID(bytes_le=raw))
    media, temp = tmp_path / "m.bkf", tmp_path / "temp"
    smtp, imap = free_port(), free_port()
    p = start(data, smtp, "--imap", str(imap))
    try:
        ids = send(smtp, range(0, 20))
        r = mk(data, "backup", "run", "--media", str(media), "--json", SG)
        assert r.returncode == 0, r.stderr
        rec = json.loads(r.stdout)["storage_groups"][0]
        low, high = rec["low_gen"], rec["high_gen"]
        send(smtp, range(20, 25))  # after the backup: in EX1's logs only, never on EX2
    finally:
        assert stop(p)[0] == 0
    smtp2, imap2 = free_port(), free_port()
    p = start(other, smtp2, "--imap", str(imap2))
    try:
        assert send(smtp2, range(0, 3), "ex2-") == ["<ex2-0@x>", "<ex2-1@x>", "<ex2-2@x>"]
        r = mk(other, "db", "rename", "Mailbox Store (EX2)", DB)
        assert r.returncode == 0, r.stderr
        assert mk(other, "db", "dismount", DB).returncode == 0
        r = restore(other, media, 1, temp, "--last-restore-set", "--mount", f"{SG}/{DB}")
        assert r.returncode == 1 and "is not the database that was backed up" in r.stderr
        assert "--allow-restore-overwrite on" in r.stderr and not temp.exists()
        assert mk(other, "db", "set", DB, "--allow-restore-overwrite", "on").returncode == 0
        r = restore(other, media, 1, temp, "--last-restore-set", "--mount", f"{SG}/{DB}")
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        hard = next(line for line in lines if line.startswith("Hard recovery of "))
        theirs = read_log_header(str(other / "mdbdata" / "E00.log")).signature  # EX2's own log stream
        assert hard == (f"Hard recovery of {SG_NAME}/{DB}: logs {low}-{high} from {temp / SG_NAME}, rolled forward to "
                        f"generation {high} ({SG_NAME}'s logs belong to another log stream (signature {theirs}), so "
                        "none of them apply to the restored databases).")
        assert f"Mounted {SG_NAME}/{DB}." in lines
        assert imap_ids(imap2) == sorted(ids)  # EX1's mail as it was backed up; EX2's own is overwritten
        assert send(smtp2, range(3, 5), "ex2-") == ["<ex2-3@x>", "<ex2-4@x>"]  # and it works on
        assert imap_ids(imap2) == sorted(ids + ["<ex2-3@x>", "<ex2-4@x>"])
    finally:
        assert stop(p)[0] == 0


KILL_ATTEMPTS = 6
MID = 64 * 1024  # the kill comes once this much mail (of about 400 KB) was replayed into the .stm


def recover_status(env: Path) -> str | None:
    """restore.env's recover_status (None once it is deleted; it is replaced atomically)."""
    try:
        return str(json.loads(env.read_text())["recover_status"])
    except FileNotFoundError:
        return None


def test_sigkill_during_hard_recovery_then_run_again(data: Path, tmp_path: Path) -> None:
    """Hard recovery is idempotent (replay skips what a database holds; restore.env goes only
    when it succeeded), so a killed ``eseutil /cc`` is simply run again. The kill is timed by
    what the process does to its files, not by a clock; when the replay outran the polling,
    the sets are restored again into a new folder and the kill is tried again (bounded)."""
    smtp, imap = free_port(), free_port()
    media = tmp_path / "m.bkf"
    p = start(data, smtp, "--imap", str(imap))
    try:
        ids = send(smtp, range(0, 20))
        assert mk(data, "backup", "run", "--media", str(media), SG).returncode == 0
        ids += send(smtp, range(20, 420))  # many generations of 64 KiB
        r = mk(data, "backup", "run", "--media", str(media), "--type", "incremental", SG)
        assert r.returncode == 0, r.stderr
        ids += send(smtp, range(420, 520))  # rolled forward from the storage group's own logs
        lose(data)
    finally:
        assert stop(p)[0] == 0
    stm = data / "mdbdata" / "priv1.stm"
    for attempt in range(KILL_ATTEMPTS):
        temp = tmp_path / f"temp{attempt}"
        env = temp / SG_NAME / "restore.env"
        for n, sel in ((1, f"{SG}/{DB}"), (2, SG)):
            r = restore(data, media, n, temp, sel)
            assert r.returncode == 0, r.stderr
        restored = stm.stat().st_size
        cc = subprocess.Popen([sys.executable, "-m", "mailkeep", "--data", str(data), "eseutil", "/cc", str(temp)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # mid-way: hard recovery has begun (restore.env says so), has replayed part of the mail
        # into the restored files (the .stm grew by MID), and has not finished
        deadline = time.monotonic() + 30
        while cc.poll() is None and time.monotonic() < deadline:
            if stm.stat().st_size > restored + MID and recover_status(env) == "recoverStarted":
                cc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.001)
        out, err = cc.communicate(timeout=30)
        if cc.returncode == -signal.SIGKILL and env.exists():
            break
        assert cc.returncode in (0, -signal.SIGKILL), out + err  # it finished before the kill came: try again
    else:
        pytest.fail(f"hard recovery always finished before the kill ({KILL_ATTEMPTS} attempts)")
    assert recover_status(env) == "recoverStarted"
    r = mk(data, "db", "mount", DB)  # still waiting for hard recovery
    assert r.returncode == 1 and "-544 (JET_errSoftRecoveryOnBackupDatabase)" in r.stderr
    r = mk(data, "eseutil", "/cc", str(temp))
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[-1].startswith("Operation completed successfully")
    assert "    restore.env deleted" in r.stdout.splitlines() and not env.exists()
    assert "Clean Shutdown" in mk(data, "eseutil", "/mh", str(data / "mdbdata" / "priv1.edb")).stdout
    assert mk(data, "db", "mount", DB).returncode == 0
    p = start(data, free_port(), "--imap", str(imap))
    try:
        assert imap_ids(imap) == sorted(ids)  # every message once: none lost, none replayed twice
    finally:
        assert stop(p)[0] == 0
