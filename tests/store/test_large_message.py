"""A ~100 MB message passes through the store with flat memory (content.py: "A message passes
through memory one chunk at a time (64 KiB), whatever its size").

The delivery and the read-back run in a child process (this file run as a script), so the
peak resident set size it reports (VmHWM of /proc/self/status) is its own. The message comes
from a generator source whose ``read(n)`` makes bytes on the fly, in pieces of random length
(so a CRLF is often split between two reads), with LF-only lines, CRLF lines and lone CRs.
The child streams the stored message back with ``Mailbox.fetch`` and hashes it; the test
compares that digest with the digest of the normalised content (every line end CRLF, lone CR
kept), computed here independently, and checks that the peak grew far less than the message
size. Twice: to one mailbox, and to two mailboxes in two databases (the source, which cannot
seek, is then spooled to the data folder first).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

SIZE = 100 * 1024 * 1024  # raw bytes of the body, about
MAX_GROWTH_KB = 60 * 1024  # allowed growth of the peak RSS over the baseline
BLOCKS = 16
BLOCK_SIZE = 256 * 1024
MESSAGE_ID = "<large.100mb@example.org>"
HEADER_LINES = ["From: Big Sender <big@example.org>", "To: alice@contoso.com", "Subject: a very large message",
                f"Message-ID: {MESSAGE_ID}", "Date: Wed, 25 Nov 2026 10:00:00 +0000", "MIME-Version: 1.0"]
CHILD_TIMEOUT = 600.0


def _block(k: int) -> tuple[bytes, bytes]:
    """Block ``k``: (raw bytes, normalised bytes). Lines of 0-200 characters, some with a
    lone CR inside; each ends with LF or CRLF at random. Normalised, every line ends CRLF."""
    rng = random.Random(k)
    raw, norm = [], []
    size = 0
    while size < BLOCK_SIZE:
        n = rng.choice((0, rng.randint(1, 200), rng.randint(60, 78)))
        text = bytes(rng.randint(32, 126) for _ in range(n))
        if n > 2 and rng.random() < 0.05:
            at = rng.randint(0, n - 2)  # a lone CR, never last (CR LF would be a CRLF)
            text = text[:at] + b"\r" + text[at + 1:]
        end = b"\n" if rng.random() < 0.5 else b"\r\n"
        raw.append(text + end)
        norm.append(text + b"\r\n")
        size += len(text) + len(end)
    return b"".join(raw), b"".join(norm)


def _order() -> Iterator[int]:
    """Which block comes next; enough blocks for SIZE."""
    for j in range(-(-SIZE // BLOCK_SIZE)):
        yield (j * 7 + 3) % BLOCKS


def expected() -> tuple[int, str]:
    """Size and SHA-256 of the message as the store must keep it."""
    blocks = [_block(k)[1] for k in range(BLOCKS)]
    digest = hashlib.sha256(("\r\n".join(HEADER_LINES) + "\r\n\r\n").encode())
    size = len(("\r\n".join(HEADER_LINES) + "\r\n\r\n").encode())
    for k in _order():
        digest.update(blocks[k])
        size += len(blocks[k])
    return size, digest.hexdigest()


class Generated:
    """The message, made on the fly: only its 16 raw blocks are ever in memory."""

    def __init__(self, seed: int) -> None:
        self.blocks = [_block(k)[0] for k in range(BLOCKS)]
        self.rng = random.Random(seed)
        self.parts = self._parts()
        self.current = memoryview(("\n".join(HEADER_LINES) + "\n\n").encode())  # LF-only header
        self.produced = 0

    def _parts(self) -> Iterator[memoryview]:
        for k in _order():
            yield memoryview(self.blocks[k])

    def read(self, n: int = -1) -> bytes:
        while not self.current:
            nxt = next(self.parts, None)
            if nxt is None:
                return b""
            self.current = nxt
        want = len(self.current) if n is None or n < 0 else n
        take = min(want, len(self.current), self.rng.randint(1, 96 * 1024))  # short reads, any split
        out = bytes(self.current[:take])
        self.current = self.current[take:]
        self.produced += len(out)
        return out


def _status_kb(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/self/status")


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux 4.0+); False when not possible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def child(data: str, seed: int, users: list[str]) -> None:
    """Deliver the generated message to ``users``, stream it back from each mailbox; print
    a JSON report."""
    from mailkeep.store import delivery
    from mailkeep.store.mailbox import open_mailbox
    from mailkeep.store.store import Store

    with Store.open(data) as store:
        store.mount_intended()
        boxes = [open_mailbox(store, u) for u in users]
        source = Generated(seed)
        baseline = _status_kb("VmHWM")
        reset = _reset_peak()
        if reset:
            baseline = _status_kb("VmRSS")
        t0 = time.monotonic()
        rep = delivery.deliver(store, source, [f"{u}@contoso.com" for u in users], sender="big@example.org")
        t1 = time.monotonic()
        after_delivery = _status_kb("VmHWM")
        fetched = []
        for mb in boxes:
            msgs = mb.messages("INBOX")
            digest = hashlib.sha256()
            size = 0
            with mb.fetch("INBOX", msgs[0].uid) as r:
                while chunk := r.read(64 * 1024):
                    digest.update(chunk)
                    size += len(chunk)
            fetched.append({"database": mb.info.name, "size": size, "sha256": digest.hexdigest(),
                            "messages": [(m.message_id, m.size, m.subject) for m in msgs]})
        t2 = time.monotonic()
        spool = os.path.join(data, "tmp")
        print(json.dumps({
            "status": [o.status for o in rep.outcomes], "raw_size": source.produced, "fetched": fetched,
            "spool_left": sorted(os.listdir(spool)) if os.path.isdir(spool) else [],
            "baseline_kb": baseline, "reset": reset, "peak_after_delivery_kb": after_delivery,
            "peak_kb": _status_kb("VmHWM"), "deliver_s": round(t1 - t0, 2), "fetch_s": round(t2 - t1, 2),
        }), flush=True)


@pytest.mark.parametrize("databases", [1, 2], ids=["one-mailbox", "two-databases-spooled"])
def test_100mb_message_flat_memory(tmp_path: Path, databases: int) -> None:
    from mailkeep.directory import tasks
    from mailkeep.store.server import FIRST_SG
    from mailkeep.store.setup import setup_server
    from mailkeep.store.store import Store

    data = str(tmp_path / "data")
    r = setup_server(data, domain="contoso.com", organization="Organization", admin_group="AG1", server="Exchange1")
    users = ["alice", "bob"][:databases]
    with Store.open(data) as store:
        dbs = [r.mailbox_store]
        if databases == 2:
            dbs.append(store.server.create_database(FIRST_SG, "Mailbox Store 2"))
            store.mount(dbs[1])
        for u, db in zip(users, dbs, strict=True):
            store.directory.add_user(u, password_text="Passw0rd!")
            tasks.mailbox_enable(store.directory, u, db.dn)
    seed = int.from_bytes(os.urandom(4), "little")
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "child", data, str(seed), ",".join(users)],
            capture_output=True, timeout=CHILD_TIMEOUT, cwd=str(tmp_path),
        )
    finally:
        shutil.rmtree(data, ignore_errors=True)  # 200-500 MB of files: not kept for pytest's last runs
    elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    report = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    size, sha = expected()
    print(f"seed {seed}: {elapsed:.1f} s in the child; {report}")

    assert report["status"] == ["delivered"] * databases
    assert report["raw_size"] >= SIZE
    assert report["raw_size"] < size  # LF-only lines grew by one byte each
    assert [f["database"] for f in report["fetched"]] == [db.name for db in dbs]
    for f in report["fetched"]:
        assert f["messages"] == [[MESSAGE_ID, size, "a very large message"]]
        assert f["size"] == size
        assert f["sha256"] == sha, f"seed {seed}: the message stored in {f['database']} is not the normalised input"
    assert report["spool_left"] == []  # the spool file is gone
    growth = report["peak_kb"] - report["baseline_kb"]
    assert growth < MAX_GROWTH_KB, (
        f"seed {seed}: the peak RSS grew by {growth // 1024} MB for a {size // 2**20} MB message ({report})")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4].split(","))
    else:
        sys.exit("usage: test_large_message.py child DATA SEED USER[,USER]")
