"""Drills D17 (circular logging: incremental and differential refused, normal works) and the
backup half of D18 (three sets appended, on-disk catalog deleted and rebuilt from the media,
one damaged byte found by verify) through the real CLI. Restoring set 2 is issue 8."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mailkeep.backup.media import MediaReader
from tests.server.test_serve import data  # noqa: F401 - a fixture

SG = "EX1/Information Store/First Storage Group"


def mk(d: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(d), *args], capture_output=True,
                       input=stdin, timeout=300)
    return subprocess.CompletedProcess(p.args, p.returncode, p.stdout.decode(), p.stderr.decode())


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MAILKEEP_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def deliver(d: Path, n: int, start: int) -> None:
    for i in range(start, start + n):
        r = mk(d, "deliver", "alice@contoso.com", stdin=f"Message-ID: <{i}@d>\nSubject: {i}\n\nbody {i}\n".encode())
        assert r.returncode == 0, r.stderr


def test_d17_circular_logging(data: Path, tmp_path: Path) -> None:  # noqa: F811
    assert mk(data, "sg", "set", "First Storage Group", "--circular-logging", "on").returncode == 0
    deliver(data, 3, 0)
    media = str(tmp_path / "c.bkf")
    for kind in ("incremental", "differential"):
        r = mk(data, "backup", "run", "--media", media, "--type", kind, SG)
        assert (r.returncode, r.stdout) == (1, "")
        assert r.stderr.startswith("mailkeep backup run: nothing was backed up: First Storage Group: -526 "
                                   "(JET_errInvalidBackup): First Storage Group uses circular logging, so its logs "
                                   "are deleted as the checkpoint passes them: a")
        assert r.stderr.endswith("Run a normal backup, or turn circular logging off first.\n")
        assert not os.path.exists(media)  # the media were never touched
    r = mk(data, "backup", "run", "--media", media, "--json", SG)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["errors"] == []


def test_d18_three_sets_catalog_rebuilt_and_damage_found(data: Path, tmp_path: Path,  # noqa: F811
                                                         state: Path) -> None:
    media = tmp_path / "m.bkf"
    for n, kind in enumerate(("normal", "incremental", "incremental"), start=1):
        deliver(data, 2, 10 * n)
        r = mk(data, "backup", "run", "--media", str(media), "--type", kind, "--description", f"set {n}", SG)
        assert r.returncode == 0, r.stderr
        assert f"Backup set #{n} on media #1" in r.stdout
    listed = mk(data, "backup", "catalog", "list", "--media", str(media))
    assert listed.returncode == 0 and "[catalog rebuilt from the media]" not in listed.stdout
    rows = [line.split() for line in listed.stdout.splitlines()[2:]]
    assert [(r[0], r[1], r[-2], r[-1]) for r in rows] == [("1", "normal", "set", "1"), ("2", "incremental", "set", "2"),
                                                        ("3", "incremental", "set", "3")]
    # the on-disk catalog is lost: it is rebuilt from the media
    d = mk(data, "backup", "catalog", "delete", "--media", str(media))
    assert d.stdout == f"Deleted on-disk catalog of {media}; the media were not touched.\n"
    assert os.listdir(state / "catalogs") == []
    again = mk(data, "backup", "catalog", "list", "--media", str(media))
    assert "[catalog rebuilt from the media]" in again.stdout.splitlines()[0]
    assert again.stdout.splitlines()[1:] == listed.stdout.splitlines()[1:]
    show = mk(data, "backup", "catalog", "show", "--media", str(media), "--set", "2", "--json")
    s2 = json.loads(show.stdout)
    assert s2["number"] == 2 and s2["kind"] == "incremental" and all(e["role"] == "log" for e in s2["entries"])
    # one damaged byte: verify names the file
    rd = MediaReader(str(media))
    victim = rd.get_set(2).entries[0]
    m = rd.member(2, victim)
    with open(media, "r+b") as f:
        f.seek(m.offset_data + 100)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x01]))
    v = mk(data, "backup", "verify", "--media", str(media))
    assert v.returncode == 1
    assert v.stdout.count("Different: 0") == 2
    assert f"Different: 1\n  Different: {victim.name}\n" in v.stdout
