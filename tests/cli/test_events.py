"""`mailkeep events` reads the persistent event log of a data folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from mailkeep.engine.storagegroup import StorageGroup
from mailkeep.eventlog import EventLog
from tests.conftest import db_paths, make_config


def run(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailkeep", "--data", str(data), "events", *args],
        capture_output=True, text=True, timeout=60,
    )


def test_engine_events_are_persistent_and_filterable(tmp_path: Path) -> None:
    data = tmp_path / "data"
    log = EventLog(str(data / "events.jsonl"))
    sg = StorageGroup.create(make_config(tmp_path), events=log)
    db = sg.create_database(*db_paths(tmp_path))
    sg.dismount(db)
    sg.close()

    p = run(data, "--json")
    assert p.returncode == 0
    ids = [json.loads(line)["id"] for line in p.stdout.splitlines()]
    assert ids == [300, 302, 100, 326, 327, 101]
    p = run(data, "--id", "327")
    lines = p.stdout.splitlines()
    assert len(lines) == 1 and "detached" in lines[0] and "Clean Shutdown" in lines[0]
    assert run(data, "--level", "error").stdout == ""
    assert run(data, "--source", "nosuch").stdout == ""
    p = run(data, "--since", "not-a-time")
    assert p.returncode == 2 and "--since" in p.stdout


def test_damaged_event_lines_are_skipped(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    log = EventLog(str(path))
    log.info("ESE", 100, "one")
    with open(path, "ab") as f:
        f.write(b"{not json\n")
    log.error("ESE", 454, "two", error=-501)
    got = [(e.id, e.level, e.data) for e in EventLog(str(path)).read()]
    assert got == [(100, "information", {}), (454, "error", {"error": -501})]
