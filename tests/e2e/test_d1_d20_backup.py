"""Drills D1 (normal backup while SMTP delivery runs) and D20 (remote backup as a backup
operator), an agent that disconnects mid-stream, and SIGKILL of the backup process and of the
server during a backup — over real sockets and real processes.

The media are checked the way a restore will use them: the set's database image and logs are
extracted with plain ``tarfile`` and the logs replayed into the image (what hard recovery
does, issue 8), then the messages in it are compared by Message-ID with what SMTP
acknowledged.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import pytest

from mailkeep.backup.media import MediaReader, verify
from mailkeep.directory import tasks
from mailkeep.directory.setup import open_directory
from mailkeep.engine.database import Database
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.logreader import StreamLayout
from mailkeep.engine.recovery import replay
from mailkeep.store.setup import setup_server
from tests.server.test_serve import data, free_port, start, stop  # noqa: F401 - `data` is a fixture

SG = "EX1/Information Store/First Storage Group"
DB = f"{SG}/Mailbox Store (EX1)"


def mk(data_dir: Path, *args: str, env: dict[str, str] | None = None,
       timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(data_dir), *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """A server whose log generations are 64 KiB, so a short drill spans many of them."""
    d = tmp_path / "small"
    res = setup_server(str(d), domain="contoso.com", server="EX1", log_file_size=64 * 1024)
    directory = open_directory(str(d))
    directory.add_user("alice", password_text="pw")
    tasks.mailbox_enable(directory, "alice", res.mailbox_store.dn)
    directory.close()
    return d


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAILKEEP_STATE_DIR", str(tmp_path / "state"))


def message_ids_in_set(media: Path, set_no: int, work: Path) -> set[str]:
    """Extract the set with plain tar, replay its logs into its mailbox image, list Message-IDs."""
    rd = MediaReader(str(media))
    s = rd.get_set(set_no)
    rec = s.extra["storage_groups"][0]
    work.mkdir(parents=True)
    prefix = f"set-{set_no:04d}/{SG}/"
    with tarfile.open(media) as t:
        for m in t.getmembers():
            if m.name.startswith(prefix) and m.name.rsplit("/", 1)[-1] in ("priv1.edb", "priv1.stm") \
                    or m.name.startswith(prefix) and m.name.endswith(".log"):
                f = t.extractfile(m)
                assert f is not None
                (work / m.name.rsplit("/", 1)[-1]).write_bytes(f.read())
    db = Database(FileIO(), str(work / "priv1.edb"), str(work / "priv1.stm"))
    db.open()
    try:
        low, high = rec["low_gen"], rec["high_gen"]
        logs = {g: str(work / f"E00{g:08X}.log") for g in range(low, high + 1)}
        lay = StreamLayout(str(work), "E00", {g: p for g, p in logs.items() if g < high}, logs[high], high,
                           rec["log_signature"])
        replay(lay, low, lambda a: db)
        conn = db.reader()
        try:
            return {str(r["message_id"]) for r in db.scan(conn, "message")}
        finally:
            db.release_reader(conn)
    finally:
        db.close()


class Sender(threading.Thread):
    """Delivers numbered messages until stopped; remembers which got 250 (and when)."""

    def __init__(self, port: int, tag: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.tag = tag
        self.acked: list[tuple[float, str]] = []
        self.halt = threading.Event()
        self.failures = 0
        self.errors: list[str] = []

    def run(self) -> None:
        i = 0
        deadline = time.monotonic() + 120
        while not self.halt.is_set() and time.monotonic() < deadline and i < 5000:
            mid = f"<{self.tag}-{i}@d1>"
            try:
                with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as c:
                    c.sendmail("x@example.org", ["alice@contoso.com"],
                               f"Message-ID: {mid}\r\nSubject: {i}\r\n\r\n".encode() + (b"x" * 100 + b"\r\n") * 20)
                self.acked.append((time.time(), mid))
            except (OSError, smtplib.SMTPException) as e:
                self.failures += 1
                self.errors.append(repr(e))
            i += 1


def test_d1_normal_backup_while_smtp_delivery_runs(small: Path, tmp_path: Path) -> None:
    smtp = free_port()
    p = start(small, smtp, "--http", str(free_port()))
    senders = [Sender(smtp, f"s{k}") for k in range(2)]
    try:
        for s in senders:
            s.start()
        time.sleep(1.5)
        started = time.time()
        r = mk(small, "backup", "run", "--media", str(tmp_path / "d1.bkf"), "--verify", "--json", SG)
        ended = time.time()
        time.sleep(0.5)
    finally:
        for s in senders:
            s.halt.set()
        for s in senders:
            s.join(60)
        code, _ = stop(p)
    assert code == 0
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["errors"] == [] and out["verify"]["different"] == []
    acked = [(t, m) for s in senders for t, m in s.acked]
    assert sum(s.failures for s in senders) == 0, senders[0].errors[:3]
    assert any(t > ended for t, _ in acked) and any(started < t < ended for t, _ in acked)  # mail kept flowing
    in_backup = message_ids_in_set(tmp_path / "d1.bkf", 1, tmp_path / "x")
    before = {m for t, m in acked if t < started}
    assert before <= in_backup  # everything acknowledged before the backup began is in it
    assert in_backup <= {m for _, m in acked}  # and nothing that was never acknowledged
    assert verify(MediaReader(str(tmp_path / "d1.bkf")), 1).different == []
    # generations below the checkpoint were truncated
    rec = out["storage_groups"][0]
    gone = out["truncated"]["First Storage Group"]
    assert gone and gone == list(range(1, gone[-1] + 1)) and gone[-1] < rec["low_gen"]
    logs = sorted(os.listdir(small / "mdbdata"))
    assert all(f"E00{g:08X}.log" not in logs for g in gone)
    # the report's Backup Status lines
    rep = mk(small, "backup", "report", "--last").stdout.splitlines()
    assert rep[1:4] == ["Backup Status", "Operation: Backup", "Active backup destination: File"]
    assert f'Backup of "{SG}"' in rep and "Backup Type: Normal" in rep and "Different: 0" in rep
    assert f"Files: {len(MediaReader(str(tmp_path / 'd1.bkf')).get_set(1).entries)}" in rep
    # events 8000 and 8019
    ev = mk(small, "events", "--source", "NTBackup", "--json").stdout.splitlines()
    assert [(json.loads(e)["id"], json.loads(e)["level"]) for e in ev] == [(8000, "information"),
                                                                           (8019, "information")]
    # Previous Full Backup in eseutil /mh
    mh = mk(small, "eseutil", "/mh", str(small / "mdbdata" / "priv1.edb")).stdout
    section = mh.split("Previous Full Backup:", 1)[1].splitlines()
    lo, hi = rec["low_gen"], rec["high_gen"]
    assert section[1].strip() == f"Log Gen: {lo}-{hi} (0x{lo:X}-0x{hi:X})"


def test_d20_remote_backup_as_backup_operator(data: Path, tmp_path: Path) -> None:  # noqa: F811
    for name, role in (("oper", "backup-operator"), ("carol", None)):
        assert mk(data, "user", "add", name, "--password", f"{name}-pw").returncode == 0
        if role:
            assert mk(data, "role", "grant", name, role).returncode == 0
    http = free_port()
    p = start(data, free_port(), "--http", str(http))
    url = f"http://127.0.0.1:{http}"
    elsewhere = tmp_path / "agent"  # the agent has no data folder of its own
    try:
        r = mk(elsewhere, "--user", "oper", "backup", "run", "--server", url, "--media", str(tmp_path / "r.bkf"),
               "--json", "EX1/Information Store", env={"MAILKEEP_PASSWORD": "oper-pw"})
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out["set"] == 1 and out["errors"] == [] and out["storage_groups"][0]["status"] == "complete"
        r = mk(elsewhere, "--user", "carol", "backup", "run", "--server", url, "--media", str(tmp_path / "c.bkf"),
               "EX1/Information Store", env={"MAILKEEP_PASSWORD": "carol-pw"})
        assert r.returncode == 1
        assert r.stderr == ("mailkeep backup run: stream a backup (backup.stream) needs the role backup operator "
                            "(group 'Backup Operators'); carol has: user (own mailbox only)\n")
        assert not (tmp_path / "c.bkf").exists()
        # the operator may back up, never mount, dismount or configure (restore comes with issue 8)
        r = mk(data, "--user", "oper", "db", "dismount", "Mailbox Store (EX1)", env={"MAILKEEP_PASSWORD": "oper-pw"})
        assert r.returncode == 1 and "needs the role full Exchange administrator" in r.stderr
        r = mk(elsewhere, "--user", "oper", "backup", "run", "--server", url, "--media", str(tmp_path / "r.bkf"),
               "EX1/Information Store/Second Storage Group", env={"MAILKEEP_PASSWORD": "oper-pw"})
        assert r.returncode == 1 and "this server has no storage group 'Second Storage Group'" in r.stderr
    finally:
        assert stop(p)[0] == 0
    assert [s.number for s in MediaReader(str(tmp_path / "r.bkf")).sets()] == [1]


def test_agent_that_disconnects_ends_the_backup(data: Path, tmp_path: Path) -> None:  # noqa: F811
    import base64
    import http.client

    big = b"Message-ID: <big@x>\r\nSubject: big\r\n\r\n" + (b"y" * 998 + b"\r\n") * 8000
    http_port, smtp = free_port(), free_port()
    p = start(data, smtp, "--http", str(http_port))
    try:
        with smtplib.SMTP("127.0.0.1", smtp, timeout=30) as c:
            c.sendmail("x@example.org", ["alice@contoso.com"], big)
        token = (data / "serve.token").read_text()
        conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=30)
        conn.request("POST", "/api/v1/backup/stream", body=json.dumps({"selection": [DB], "type": "normal"}),
                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.read(200_000)
        conn.sock.close()  # the agent dies mid-stream
        conn.close()
        ok = False
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            evs = [json.loads(line) for line in (data / "events.jsonl").read_text().splitlines()]
            if any(e["source"] == "ESE" and e["id"] == 214 for e in evs) and \
                    any(e["source"] == "NTBackup" and e["id"] == 8019 and e["level"] == "error" for e in evs):
                ok = True
                break
            time.sleep(0.2)
        assert ok, "the abandoned backup was not ended"
        # the next backup works (the checkpoint is no longer frozen, no backup is in progress)
        r = mk(data, "backup", "run", "--media", str(tmp_path / "next.bkf"), "--json", DB)
        assert r.returncode == 0, r.stderr
        auth = "Basic " + base64.b64encode(b"x:y").decode()
        assert auth  # (credentials are exercised in tests/server/test_http.py)
    finally:
        assert stop(p)[0] == 0


def _kill_when_media_grows(proc: subprocess.Popen[bytes], media: Path, over: int) -> bool:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if media.exists() and media.stat().st_size > over:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return True
        time.sleep(0.005)
    return False


def test_sigkill_of_the_backup_process(data: Path, tmp_path: Path) -> None:  # noqa: F811
    """Offline backup killed mid-set: the store recovers, the next backup works, the media's
    earlier set stays readable and the broken set is cut off."""
    media = tmp_path / "k.bkf"
    big = b"From: x@example.org\nMessage-ID: <big@x>\nSubject: big\n\n" + (b"z" * 998 + b"\n") * 30000
    r = subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(data), "deliver", "alice@contoso.com"],
                       input=big, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert mk(data, "backup", "run", "--media", str(media), DB).returncode == 0
    first = media.stat().st_size
    proc = subprocess.Popen([sys.executable, "-m", "mailkeep", "--data", str(data), "backup", "run", "--media",
                             str(media), DB], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ})
    killed = _kill_when_media_grows(proc, media, first + 1_000_000)
    assert killed, "the backup finished before it could be killed"
    rd = MediaReader(str(media))
    assert [(s.number, s.status) for s in rd.sets()] == [(1, "complete"), (2, "incomplete")]
    assert verify(rd, 1).different == []
    r = mk(data, "backup", "run", "--media", str(media), "--json", DB)  # the store recovers; this works
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["set"] == 2 and out["removed_incomplete_sets"] == [2]
    assert [(s.number, s.status) for s in MediaReader(str(media)).sets()] == [(1, "complete"), (2, "complete")]
    ids = message_ids_in_set(media, 2, tmp_path / "w")
    assert "<big@x>" in ids


def test_sigkill_of_the_server_during_a_backup(data: Path, tmp_path: Path) -> None:  # noqa: F811
    media = tmp_path / "s.bkf"
    big = b"Message-ID: <big2@x>\r\nSubject: big\r\n\r\n" + (b"q" * 998 + b"\r\n") * 30000
    smtp, http_port = free_port(), free_port()
    p = start(data, smtp, "--http", str(http_port))
    try:
        with smtplib.SMTP("127.0.0.1", smtp, timeout=60) as c:
            c.sendmail("x@example.org", ["alice@contoso.com"], big)
        assert mk(data, "backup", "run", "--media", str(media), DB).returncode == 0
        first = media.stat().st_size
        agent = subprocess.Popen([sys.executable, "-m", "mailkeep", "--data", str(data), "backup", "run", "--media",
                                  str(media), DB], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (media.stat().st_size > first + 500_000) and agent.poll() is None:
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
        p.wait(30)
        _out, err = agent.communicate(timeout=60)
        assert agent.returncode == 1, err
        assert b"the set is incomplete" in err or b"does not answer" in err or b"ended" in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
    (data / "serve.json").unlink(missing_ok=True)
    p = start(data, free_port(), "--http", str(free_port()))  # soft recovery at start
    try:
        r = mk(data, "backup", "run", "--media", str(media), "--json", DB)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["set"] == 2
    finally:
        assert stop(p)[0] == 0
    rd = MediaReader(str(media))
    assert [(s.number, s.status) for s in rd.sets()] == [(1, "complete"), (2, "complete")]
    assert all(verify(rd, n).different == [] for n in (1, 2))
    assert "<big2@x>" in message_ids_in_set(media, 2, tmp_path / "w2")
