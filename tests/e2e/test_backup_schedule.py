"""Scheduled backups run by the server's scheduler as the job's account; missed and failed
runs leave error events (8021, 8020)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailkeep.backup.media import MediaReader
from tests.server.test_serve import data, free_port, start, stop  # noqa: F401 - `data` is a fixture

SG = "EX1/Information Store/First Storage Group"


def mk(d: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(d), *args], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILKEEP_STATE_DIR", str(tmp_path / "state"))


def events(d: Path, event_id: int) -> list[dict[str, object]]:
    out = mk(d, "events", "--source", "NTBackup", "--id", str(event_id), "--json").stdout
    return [json.loads(line) for line in out.splitlines()]


def wait_for(cond: object, seconds: float = 30.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return True
        time.sleep(0.2)
    return False


def test_scheduled_job_runs_as_its_account(data: Path, tmp_path: Path) -> None:  # noqa: F811
    assert mk(data, "user", "add", "oper", "--password", "oper-pw").returncode == 0
    media = tmp_path / "sched.bkf"
    # the account must be a backup operator, and its password right
    r = mk(data, "backup", "schedule", "add", "nightly", SG, "--media", str(media), "--every", "3s",
           "--account", "oper", env={"MAILKEEP_JOB_PASSWORD": "oper-pw"})
    assert r.returncode == 1
    assert r.stderr == ("mailkeep backup schedule: running scheduled backups as oper needs the role backup operator "
                        "(group 'Backup Operators'); oper has: user (own mailbox only)\n")
    assert mk(data, "role", "grant", "oper", "backup-operator").returncode == 0
    r = mk(data, "backup", "schedule", "add", "nightly", SG, "--media", str(media), "--every", "3s",
           "--account", "oper", env={"MAILKEEP_JOB_PASSWORD": "wrong"})
    assert r.returncode == 1 and "the password for 'oper' is wrong" in r.stderr
    r = mk(data, "backup", "schedule", "add", "nightly", SG, "--media", str(media), "--every", "3s",
           "--account", "oper", env={"MAILKEEP_JOB_PASSWORD": "oper-pw"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"Scheduled backup job 'nightly': normal backup of {SG} to {media} every 3s, as oper\n")
    assert "oper-pw" not in (data / "schedules" / "nightly.json").read_text()  # never stored
    p = start(data, free_port(), "--http", str(free_port()))
    try:
        assert wait_for(lambda: media.exists() and len(MediaReader(str(media)).sets()) >= 2)
        listed = json.loads(mk(data, "backup", "schedule", "list", "--json").stdout)
        assert [(j["name"], j["account"], j["last_status"]) for j in listed] == [("nightly", "oper", "completed")]
        # the account loses its role: the next run fails with an error event naming it
        assert mk(data, "role", "revoke", "oper", "backup-operator").returncode == 0
        assert wait_for(lambda: bool(events(data, 8020)))
        ev = events(data, 8020)[0]
        assert ev["level"] == "error" and "needs the role backup operator" in str(ev["message"])
        assert mk(data, "backup", "schedule", "remove", "nightly").stdout == \
            "Removed the scheduled backup job 'nightly'\n"
    finally:
        assert stop(p)[0] == 0
    sets = MediaReader(str(media)).sets()
    assert all(s.user == "oper" and s.kind == "normal" and s.status == "complete" for s in sets)


def test_missed_run_is_reported(data: Path, tmp_path: Path) -> None:  # noqa: F811
    assert mk(data, "user", "add", "oper", "--password", "oper-pw").returncode == 0
    assert mk(data, "role", "grant", "oper", "backup-operator").returncode == 0
    r = mk(data, "backup", "schedule", "add", "often", SG, "--media", str(tmp_path / "m.bkf"), "--every", "1s",
           "--account", "oper", env={"MAILKEEP_JOB_PASSWORD": "oper-pw"})
    assert r.returncode == 0, r.stderr
    time.sleep(3)  # its time passes while no server runs
    p = start(data, free_port(), "--http", str(free_port()))
    try:
        assert wait_for(lambda: bool(events(data, 8021)))
        ev = events(data, 8021)[0]
        assert ev["level"] == "error" and "did not run at" in str(ev["message"])
        assert "the server was not running" in str(ev["message"])
        assert mk(data, "backup", "schedule", "remove", "often").returncode == 0
    finally:
        assert stop(p)[0] == 0


def test_schedule_validation(data: Path, tmp_path: Path) -> None:  # noqa: F811
    cases = [
        (["--at", "25:00"], "--at '25:00': give a time as HH:MM (24-hour)"),
        (["--at", "02:00", "--every", "1d"], "give either --at HH:MM (with --days) or --every INTERVAL"),
        (["--every", "soon"], "'soon': give an interval such as 30s, 15m, 6h or 1d"),
        (["--at", "02:00", "--days", "mon,funday"], "--days: use mon,tue,wed,thu,fri,sat,sun"),
    ]
    for extra, msg in cases:
        r = mk(data, "backup", "schedule", "add", "j", SG, "--media", str(tmp_path / "x.bkf"), "--account",
               "Administrator", *extra, env={"MAILKEEP_JOB_PASSWORD": "x"})
        assert r.returncode == 1 and msg in r.stderr, (extra, r.stderr)
