"""Drills D2 (normal + incrementals restored in order into one folder, Last Restore Set) and
D3 (a database's files lost: restore the last normal set and roll forward with the storage
group's current logs) through the real CLI, with mail sent over SMTP and read back over IMAP,
and D20's other half: a backup operator may not restore, a full administrator may."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailkeep.directory import tasks
from mailkeep.directory.setup import open_directory
from mailkeep.store.setup import setup_server
from tests.e2e.test_restore_more import imap_ids, send
from tests.server.test_serve import free_port, start, stop

SG = "EX1/Information Store/First Storage Group"
DB = "Mailbox Store (EX1)"


def mk(d: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(d), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILKEEP_STATE_DIR", str(tmp_path / "state"))


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    res = setup_server(str(d), domain="contoso.com", server="EX1", log_file_size=64 * 1024)
    directory = open_directory(str(d))
    for name in ("alice", "oper", "admin"):
        directory.add_user(name, password_text=f"{name}-pw")
    tasks.mailbox_enable(directory, "alice", res.mailbox_store.dn)
    directory.close()
    assert mk(d, "role", "grant", "oper", "backup-operator").returncode == 0
    assert mk(d, "role", "grant", "admin", "full-administrator").returncode == 0
    return d


def test_d3_lost_files_restored_and_rolled_forward(data: Path, tmp_path: Path) -> None:
    smtp, imap, http = free_port(), free_port(), free_port()
    p = start(data, smtp, "--imap", str(imap), "--http", str(http))
    media = tmp_path / "m.bkf"
    try:
        ids = send(smtp, range(0, 30))
        assert mk(data, "backup", "run", "--media", str(media), SG).returncode == 0
        ids += send(smtp, range(30, 60))  # after the backup: only in the storage group's logs
        assert mk(data, "db", "dismount", DB).returncode == 0
        for f in ("priv1.edb", "priv1.stm"):
            os.unlink(data / "mdbdata" / f)  # the disaster
        # D20: a backup operator may back up, never restore
        r = mk(data, "--user", "oper", "backup", "restore", "--media", str(media), "--set", "1",
               f"{SG}/{DB}", env={"MAILKEEP_PASSWORD": "oper-pw"})
        assert r.returncode == 1
        assert r.stderr.startswith("mailkeep backup restore: restore databases from backup media (backup.restore) "
                                   "needs the role full Exchange administrator")
        r = mk(data, "--user", "admin", "backup", "restore", "--media", str(media), "--set", "1",
               "--last-restore-set", "--mount", f"{SG}/{DB}", env={"MAILKEEP_PASSWORD": "admin-pw"})
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[1:4] == ["Restore Status", "Operation: Restore", f'Backup of "{SG}"']
        assert "Backup set #1 on media #1" in lines and f"Mounted First Storage Group/{DB}." in lines
        assert not (data / "restore" / "First Storage Group" / "restore.env").exists()
        assert imap_ids(imap) == sorted(ids)  # every message committed before the loss is back
        ids += send(smtp, range(60, 65))  # and the database works on
        assert imap_ids(imap) == sorted(ids)
    finally:
        assert stop(p)[0] == 0


def test_d2_normal_then_incrementals_with_eseutil_cc(data: Path, tmp_path: Path) -> None:
    smtp, imap, http = free_port(), free_port(), free_port()
    media = tmp_path / "m.bkf"
    temp = tmp_path / "temp"
    p = start(data, smtp, "--imap", str(imap), "--http", str(http))
    try:
        ids = send(smtp, range(0, 20))
        assert mk(data, "backup", "run", "--media", str(media), SG).returncode == 0
        for n in (1, 2):
            ids += send(smtp, range(100 * n, 100 * n + 20))
            r = mk(data, "backup", "run", "--media", str(media), "--type", "incremental", SG)
            assert r.returncode == 0, r.stderr
        assert mk(data, "db", "dismount", DB).returncode == 0
    finally:
        assert stop(p)[0] == 0
    for f in ("priv1.edb", "priv1.stm"):
        os.unlink(data / "mdbdata" / f)
    # offline now: normal, then the incrementals in order into the same folder
    folder = temp / "First Storage Group"
    r = mk(data, "backup", "restore", "--media", str(media), "--set", "1", "--temp", str(temp), f"{SG}/{DB}")
    assert r.returncode == 0, r.stderr
    env = json.loads((folder / "restore.env").read_text())
    assert env["sets"][0]["set"] == 1 and env["recover_status"] == "recoverNotStarted"
    mh = mk(data, "eseutil", "/mh", str(data / "mdbdata" / "priv1.edb")).stdout
    assert "Patch Current Full Backup:" in mh.replace("\r", "")
    assert "Log Gen: (none)" not in mh.split("Patch Current Full Backup:", 1)[1].splitlines()[1]
    for n in (2, 3):
        r = mk(data, "backup", "restore", "--media", str(media), "--set", str(n), "--temp", str(temp), SG)
        assert r.returncode == 0, r.stderr
    env = json.loads((folder / "restore.env").read_text())
    assert [s["set"] for s in env["sets"]] == [1, 2, 3]
    r = mk(data, "db", "mount", DB)  # not before hard recovery
    assert r.returncode == 1 and "-544 (JET_errSoftRecoveryOnBackupDatabase)" in r.stderr
    r = mk(data, "eseutil", "/cc", str(temp))
    assert r.returncode == 0, r.stdout
    assert r.stdout.splitlines()[-1].startswith("Operation completed successfully")
    assert "restore.env deleted" in r.stdout and not (folder / "restore.env").exists()
    assert "Clean Shutdown" in mk(data, "eseutil", "/mh", str(data / "mdbdata" / "priv1.edb")).stdout
    assert mk(data, "db", "mount", DB).returncode == 0
    p = start(data, free_port(), "--imap", str(imap), "--http", str(free_port()))
    try:
        assert imap_ids(imap) == sorted(ids)  # every message delivered before the last backup
    finally:
        assert stop(p)[0] == 0
