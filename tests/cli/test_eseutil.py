"""eseutil through the library (run) and through the real console script."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailkeep.cli import eseutil
from mailkeep.engine.database import read_header
from mailkeep.engine.errors import EseError
from mailkeep.engine.header import DbState
from mailkeep.engine.storagegroup import StorageGroup
from mailkeep.eventlog import EventLog
from tests.conftest import MESSAGES, db_paths, make_config


def build(root: Path, n: int = 300, crash: bool = True) -> tuple[str, str]:
    cfg = make_config(root)
    sg = StorageGroup.create(cfg)
    edb, stm = db_paths(root)
    db = sg.create_database(edb, stm)
    with sg.begin() as t:
        t.declare_table(db, MESSAGES)
    for i in range(n):
        with sg.begin() as t:
            t.insert(db, "messages", {"id": i, "folder": "Inbox", "subject": f"message {i}" * 4, "size": i})
    if crash:
        sg.crash()
    else:
        sg.close()
    return edb, stm


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mailkeep", "eseutil", *args],
        capture_output=True, text=True, cwd=cwd, timeout=60,
    )


def field(out: str, label: str) -> str:
    m = re.search(rf"^\s*{re.escape(label)}: (.*)$", out, flags=re.M)
    assert m, f"{label} not in output:\n{out}"
    return m.group(1).strip()


def test_mh_dirty_then_recovered(tmp_path: Path) -> None:
    edb, _ = build(tmp_path)
    p = cli("/MH", edb)
    assert p.returncode == 0, p.stdout
    assert field(p.stdout, "State") == "Dirty Shutdown"
    req = field(p.stdout, "Log Required")
    m = re.fullmatch(r"(\d+)-(\d+) \(0x([0-9A-F]+)-0x([0-9A-F]+)\)", req)
    assert m and int(m.group(1)) == int(m.group(3), 16) and int(m.group(2)) == int(m.group(4), 16)
    assert int(m.group(1)) >= 1
    assert p.stdout.rstrip().splitlines()[-1].startswith("Operation completed successfully in ")
    for section in ("Previous Full Backup:", "Previous Incremental Backup:", "Current Full Backup:"):
        assert section in p.stdout
    assert "Patch Current Full Backup:" not in p.stdout

    r = cli("/r", "E00", "/l", str(tmp_path / "logs"), f"/s{tmp_path / 'system'}")
    assert r.returncode == 0, r.stdout
    assert "Databases now in Clean Shutdown:" in r.stdout and edb in r.stdout
    p = cli("/mh", edb)
    assert field(p.stdout, "State") == "Clean Shutdown"
    assert field(p.stdout, "Log Required") == "0-0 (0x0-0x0)"
    h, _ = read_header(edb)
    assert h.state == DbState.CLEAN


def test_ml_and_mk(tmp_path: Path) -> None:
    build(tmp_path)
    p = cli("/ml", str(tmp_path / "logs" / "E0000000001.log"))
    assert p.returncode == 0, p.stdout
    assert field(p.stdout, "Base name") == "E00"
    assert field(p.stdout, "lGeneration") == "1 (0x1)"
    assert "Integrity check passed for log file: E0000000001.log" in p.stdout
    k = cli("/mk", str(tmp_path / "system" / "E00.chk"))
    assert k.returncode == 0
    assert re.fullmatch(r"\(0x[0-9A-F]+,[0-9A-F]+,[0-9A-F]+\)", field(k.stdout, "Checkpoint"))


def test_damaged_log_exits_with_ese_error(tmp_path: Path) -> None:
    build(tmp_path)
    path = tmp_path / "logs" / "E0000000001.log"
    data = bytearray(path.read_bytes())
    data[4096 + 30] ^= 0xFF
    path.write_bytes(bytes(data))
    p = cli("/ml", str(path))
    assert p.returncode == 1
    assert "Operation terminated with error -501 (JET_errLogFileCorrupt" in p.stdout
    assert str(path) in p.stdout


def test_move_database_with_d_and_i(tmp_path: Path) -> None:
    """The guide's moved-database procedure: databases and logs in one folder, /R E00 /D."""
    edb, stm = build(tmp_path)
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in os.listdir(tmp_path / "logs"):
        if name.startswith("E00"):
            shutil.copy(tmp_path / "logs" / name, moved / name)
    shutil.copy(edb, moved / "priv1.edb")
    shutil.copy(stm, moved / "priv1.stm")
    p = cli("/R", "E00", "/D", "/I", cwd=moved)
    assert p.returncode == 0, p.stdout
    assert str(moved / "priv1.edb") in p.stdout
    h, _ = read_header(str(moved / "priv1.edb"))
    assert h.state == DbState.CLEAN
    assert read_header(edb)[0].state == DbState.DIRTY  # the original was not touched
    sg = StorageGroup.open(make_config(moved, log_path=str(moved), system_path=str(moved)))
    db = sg.mount(str(moved / "priv1.edb"))
    with sg.reader() as r:
        assert [row["id"] for row in r.scan(db, "messages")] == list(range(300))
    sg.close()


def test_missing_database_without_i_is_1216(tmp_path: Path) -> None:
    edb, _ = build(tmp_path)
    os.rename(edb, edb + ".away")
    with pytest.raises(EseError) as e:
        list(eseutil.run(["/r", "E00", "/l", str(tmp_path / "logs"), "/s", str(tmp_path / "system")], EventLog()))
    assert e.value.number == -1216 and e.value.name == "JET_errAttachedDatabaseMismatch"
    assert edb in str(e.value)


def test_switches_are_case_insensitive_and_attached_values(tmp_path: Path) -> None:
    args = eseutil.parse_recover(["e01", "/LC:/logs", "/s", "sys", "/D", "/i"])
    assert (args.prefix, args.log_path, args.system_path, args.db_dir, args.ignore) == (
        "E01", "C:/logs", "sys", ".", True
    )
    with pytest.raises(eseutil.UsageError):
        eseutil.parse_recover(["X99"])
    with pytest.raises(eseutil.UsageError):
        eseutil.parse_recover(["E00", "/q"])


def test_wrong_switch_and_missing_file(tmp_path: Path) -> None:
    p = cli("/zz")
    assert p.returncode == 2 and "unknown or not yet available mode '/zz'" in p.stdout
    p = cli("/mh", str(tmp_path / "nope.edb"))
    assert p.returncode == 1 and "-1811 (JET_errFileNotFound" in p.stdout


def test_storage_group_in_use_is_1032(tmp_path: Path) -> None:
    cfg = make_config(tmp_path)
    sg = StorageGroup.create(cfg)
    try:
        p = cli("/r", "E00", "/l", cfg.log_path, "/s", cfg.system_path)
        assert p.returncode == 1
        assert "-1032 (JET_errFileAccessDenied" in p.stdout
    finally:
        sg.close()
