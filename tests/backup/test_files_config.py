"""File sets (normal/copy/incremental/differential/daily with the archive-attribute equivalent,
the guide's exclusions) and the configuration set (directory through the streaming API, the
TLS key encrypted), through the real CLI."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailkeep.backup import config
from mailkeep.backup.media import MediaReader
from mailkeep.server import tls
from tests.server.test_serve import data, free_port, start, stop  # noqa: F401 - `data` is a fixture

HOST = socket.gethostname().split(".")[0]


def mk(d: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(d), *args], capture_output=True,
                          text=True, timeout=300, env={**os.environ, **(env or {})})


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILKEEP_STATE_DIR", str(tmp_path / "state"))


def files_in(media: Path, set_no: int) -> list[str]:
    return [e.meta["path"] for e in MediaReader(str(media)).get_set(set_no).entries if e.role == "file"]


def test_file_set_types(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    for n in ("a.txt", "b.txt", "sub/c.txt"):
        (tree / n).write_text(n)
    os.symlink(tree / "a.txt", tree / "link")
    media = tmp_path / "f.bkf"
    nodata = tmp_path / "nodata"

    def run(kind: str) -> list[str]:
        r = mk(nodata, "backup", "run", "--media", str(media), "--type", kind, "--json", str(tree))
        assert r.returncode == 0, r.stderr
        return sorted(files_in(media, json.loads(r.stdout)["set"]))

    everything = sorted(str(tree / n) for n in ("a.txt", "b.txt", "sub/c.txt"))
    assert run("normal") == everything  # the symbolic link is skipped, not followed
    s1 = MediaReader(str(media)).get_set(1)
    assert [e.name for e in s1.entries] == [f"{HOST}/File System{p}" for p in everything]
    assert "link (not a regular file)" in " ".join(s1.extra["files"]["skipped"])
    assert run("incremental") == []  # nothing changed since the normal backup
    time.sleep(0.01)
    (tree / "b.txt").write_text("changed")
    (tree / "sub" / "d.txt").write_text("new")
    changed = sorted([str(tree / "b.txt"), str(tree / "sub" / "d.txt")])
    assert run("copy") == sorted([*everything, str(tree / "sub" / "d.txt")])  # copy marks nothing
    assert run("differential") == changed  # differential marks nothing either
    assert run("differential") == changed
    assert run("incremental") == changed  # incremental marks them
    assert run("differential") == []
    old = time.time() - 3 * 86400
    os.utime(tree / "a.txt", (old, old))
    assert run("daily") == sorted(p for p in [*everything, str(tree / "sub" / "d.txt")] if not p.endswith("a.txt"))
    r = mk(nodata, "backup", "run", "--media", str(media), "--type", "daily", "EX1/Information Store")
    assert r.returncode == 1 and "--type daily applies to file sets only" in r.stderr


def test_file_set_of_the_data_folder_leaves_out_databases_and_logs(data: Path, tmp_path: Path) -> None:  # noqa: F811
    media = tmp_path / "d.bkf"
    r = mk(data, "backup", "run", "--media", str(media), "--json", str(data))
    assert r.returncode == 0, r.stderr
    got = files_in(media, 1)
    assert str(data / "server.json") in got and str(data / "directory.json") in got
    assert not [p for p in got if "/mdbdata/" in p or p.endswith((".edb", ".stm", ".log", ".chk"))]
    assert not [p for p in got if p.startswith(str(data / "directory") + "/")]


def test_configuration_set(data: Path, tmp_path: Path) -> None:  # noqa: F811
    tls.load(str(data), "EX1")  # the certificate made at first start
    media = tmp_path / "c.bkf"
    r = mk(data, "backup", "run", "--media", str(media), "EX1/Configuration")
    assert r.returncode == 1 and "give a password to encrypt it with" in r.stderr and not media.exists()
    r = mk(data, "backup", "run", "--media", str(media), "--json", "EX1/Configuration",
           env={"MAILKEEP_KEY_PASSWORD": "k3y-pw"})
    assert r.returncode == 0, r.stderr
    rd = MediaReader(str(media))
    s = rd.get_set(1)
    names = [e.name for e in s.entries]
    base = "EX1/Configuration"
    assert names[:4] == [f"{base}/server.json", f"{base}/directory.json", f"{base}/tls/cert.pem",
                         f"{base}/tls/key.pem.enc"]
    assert f"{base}/Directory/ntds.edb" in names and f"{base}/Directory/ntds.stm" in names
    assert f"{base}/Directory/ntds.pat" in names and any(n.endswith(".log") for n in names)
    assert s.extra["config"]["tombstone_lifetime_days"] == 60 and s.extra["config"]["domain"] == "contoso.com"
    enc = next(e for e in s.entries if e.name.endswith("key.pem.enc"))
    blob = b"".join(rd.read_entry(1, enc))
    key = (data / "tls" / "key.pem").read_bytes()
    assert key not in blob and b"PRIVATE KEY" not in blob  # never in the clear on the media
    assert config.decrypt(blob, "k3y-pw") == key
    with pytest.raises(config.ConfigSetError, match="the key password is wrong"):
        config.decrypt(blob, "nope")
    # through a running server (it holds the directory's files)
    p = start(data, free_port(), "--http", str(free_port()))
    try:
        r = mk(data, "backup", "run", "--media", str(media), "--json", "EX1/Configuration", "EX1/Information Store",
               env={"MAILKEEP_KEY_PASSWORD": "k3y-pw"})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["set"] == 2 and out["errors"] == []
    finally:
        assert stop(p)[0] == 0
    s2 = MediaReader(str(media)).get_set(2)
    assert {e.name.split("/")[1] for e in s2.entries} == {"Information Store", "Configuration"}
