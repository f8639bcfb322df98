"""In-process deliveries per second with a durable commit: Mailkeep's ``deliver()`` against
plain SQLite with full sync, on the same disk.

- Mailkeep: a server made by ``setup_server`` (default configuration: 5 MiB log generations,
  checkpoint every 1,000 commits) in a fresh data folder per cell, its databases mounted
  (``Store.open`` + ``mount_intended``), five mailbox-enabled users in "Mailbox Store (BENCH)".
  Each delivery is ``deliver(store, BytesIO(raw), recipients, sender=...)``: recipient
  resolution in the embedded directory, then one engine transaction (content streamed once
  into the ``.stm``, one content row, one Inbox row per recipient), returning once that
  transaction is durable. Every outcome must be "delivered".
- SQLite: one database, ``journal_mode=WAL``, ``synchronous=FULL``; each delivery is one
  transaction ``BEGIN IMMEDIATE``, the message bytes as a BLOB row, one index row per
  recipient, ``COMMIT`` (the same promise: durable when the call returns). One connection
  per thread.

Matrix: message sizes 1 KB, 50 KB, 1 MB (decimal) x 1 and 5 recipients (all in the one
database: single-instance content), one delivering thread; and 1 KB x 1 recipient with 4
threads (each thread delivers to its own mailbox; Mailkeep's group commit shares log
fsyncs, SQLite holds its write lock through its fsync). Each cell runs once, until SECONDS
pass or CAP deliveries are taken; Mailkeep and SQLite alternate which goes first.

Reported per cell: deliveries/s, recipients/s (deliveries x recipients) and MB/s (message
bytes delivered, each message counted once); and, to say where the time goes, wall and CPU
time per delivery (CPU: process time of all threads, so the rest is waiting, mostly for
fsync) and Mailkeep's fsyncs per delivery. Recipient resolution alone (the directory lookups
``deliver`` does per recipient) is timed separately.

Everything is written to a temporary folder under bench/out/ (the working tree's disk; the
run refuses a tmpfs, where fsync costs nothing) and removed at the end.

Run alone: ``.venv/bin/python bench/delivery.py``.
"""

from __future__ import annotations

import base64
import io
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from typing import Any

from driver import drive as _drive
from driver import sqlite_full

from mailkeep.directory import tasks
from mailkeep.engine.fileio import FileIO
from mailkeep.store.delivery import DELIVERED, deliver, resolve
from mailkeep.store.setup import setup_server
from mailkeep.store.store import Store

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")

SIZES = (1_000, 50_000, 1_000_000)  # bytes of the whole message, headers included
RECIPIENTS = (1, 5)
THREADED = (1_000, 1, 4)  # (size, recipients, threads): the group-commit cell
SECONDS = 10.0
CAP = {1_000: 2_000, 50_000: 2_000, 1_000_000: 200}  # deliveries per cell
RESOLVE_SECONDS = 1.0
SENDER = "bench@example.org"
SIZE_LABEL = {1_000: "1 KB", 50_000: "50 KB", 1_000_000: "1 MB"}


# -- the disk ----------------------------------------------------------------------------------
def filesystem_of(path: str) -> str:
    """Type of the file system holding ``path`` (longest mount point in /proc/mounts)."""
    path = os.path.realpath(path)
    best, fstype = "", "?"
    try:
        with open("/proc/mounts") as f:
            lines = f.read().splitlines()
    except OSError:
        return fstype
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        mnt = parts[1]
        if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
            best, fstype = mnt, parts[2]
    return fstype


class CountingIO(FileIO):
    """FileIO that also counts fsyncs of the current log file (the group-commit fsyncs)."""

    def __init__(self) -> None:
        super().__init__()
        self.log_fsyncs = 0

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        if os.path.basename(self._paths.get(fd, "")) == "E00.log":
            self.log_fsyncs += 1


# -- messages ----------------------------------------------------------------------------------
def body_of(size: int) -> bytes:
    """Base64 text in 76-character CRLF lines, long enough for any header: deliver() keeps
    CRLF content as it is, so the stored size is the size sent."""
    raw = random.Random(size).randbytes(size)
    text = base64.b64encode(raw)
    return b"".join(text[i:i + 76] + b"\r\n" for i in range(0, len(text), 76))


def drive(*args: Any, **kw: Any) -> dict[str, float]:
    r = _drive(*args, **kw)
    r["deliveries"] = r.pop("operations")
    return r


def message(size: int, body: bytes, thread: int, n: int) -> bytes:
    """A message of exactly ``size`` bytes; the Message-ID differs for every delivery."""
    head = (
        f"From: Bench <{SENDER}>\r\nTo: user{thread}@contoso.com\r\nSubject: bench {size} bytes\r\n"
        f"Message-ID: <{thread:02d}.{n:08d}@bench.invalid>\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\n"
    ).encode()
    out = head + body[:size - len(head) - 2] + b"\r\n"
    assert len(out) == size, (len(out), size)
    return out




def _rates(r: dict[str, Any], size: int, rcpts: int) -> dict[str, Any]:
    n, s = r["deliveries"], r["seconds"]
    return r | {
        "deliveries_s": n / s, "recipients_s": n * rcpts / s, "mb_s": n * size / s / 1e6,
        "wall_ms": s / n * 1e3 if n else 0.0, "cpu_ms": r["cpu_seconds"] / n * 1e3 if n else 0.0,
    }


def _recipients(rcpts: int, threads: int, i: int) -> list[str]:
    return [f"user{i}@contoso.com"] if threads > 1 else [f"user{k}@contoso.com" for k in range(rcpts)]


# -- Mailkeep ----------------------------------------------------------------------------------
def mailkeep_cell(root: str, size: int, rcpts: int, threads: int, *, seconds: float = SECONDS,
                  resolve_seconds: float = 0.0) -> dict[str, Any]:
    data = os.path.join(root, "data")
    result = setup_server(data, domain="contoso.com", server="BENCH")
    cio = CountingIO()
    store = Store.open(data, io=cio)
    try:
        store.mount_intended()
        users = max(rcpts, threads)
        for k in range(users):
            store.directory.add_user(f"user{k}", password_text="x")
            tasks.mailbox_enable(store.directory, f"user{k}", result.mailbox_store.dn)
        addrs = [f"user{k}@contoso.com" for k in range(users)]
        body = body_of(size)

        def one(_ctx: Any, i: int, n: int) -> None:
            want = _recipients(rcpts, threads, i)
            report = deliver(store, io.BytesIO(message(size, body, i, n)), want, sender=SENDER)
            bad = [(o.recipient, o.status, o.message) for o in report.outcomes if o.status != DELIVERED]
            if bad or len(report.outcomes) != len(want):
                raise AssertionError(f"delivery {i}.{n} not delivered to every recipient: {bad or report.outcomes}")

        # warm-up, outside the clock: the first delivery allocates each mailbox (stage two)
        report = deliver(store, io.BytesIO(message(size, body, 99, 0)), addrs, sender=SENDER)
        assert all(o.status == DELIVERED for o in report.outcomes), report.outcomes
        log0, all0 = cio.log_fsyncs, cio.counts["fsync"]
        r = drive(threads, CAP[size], seconds, lambda i: i, one)
        r["log_fsyncs"], r["all_fsyncs"] = cio.log_fsyncs - log0, cio.counts["fsync"] - all0
        # the store holds what was acknowledged: one content row per delivery (single
        # instance), one Inbox row per recipient, every content of the size sent
        with store.read(result.mailbox_store) as (rd, db):
            contents = [row["size"] for row in rd.scan(db, "content")]
            messages = sum(1 for _ in rd.scan(db, "message"))
        want_contents = r["deliveries"] + 1
        want_messages = r["deliveries"] * (1 if threads > 1 else rcpts) + users
        if len(contents) != want_contents or messages != want_messages or set(contents) != {size}:
            raise AssertionError(f"store holds {len(contents)} contents (sizes {sorted(set(contents))}), "
                                 f"{messages} messages; expected {want_contents} of {size} B, {want_messages}")
        if resolve_seconds:
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < resolve_seconds:
                resolve(store, addrs[n % users])
                n += 1
            r["resolve_ms"] = (time.perf_counter() - t0) / n * 1e3
        return _rates(r, size, rcpts)
    finally:
        store.close()


# -- SQLite ------------------------------------------------------------------------------------
def sqlite_cell(root: str, size: int, rcpts: int, threads: int, *, seconds: float = SECONDS) -> dict[str, Any]:
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "bench.db")

    def connect(_i: int = 0) -> sqlite3.Connection:
        return sqlite_full(path)

    conn = connect()
    conn.execute("CREATE TABLE content (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
    conn.execute("CREATE TABLE inbox (rcpt TEXT NOT NULL, uid INTEGER NOT NULL, content INTEGER NOT NULL, "
                 "PRIMARY KEY (rcpt, uid))")
    body = body_of(size)

    def one(c: sqlite3.Connection, i: int, n: int) -> None:
        raw = message(size, body, i, n)
        c.execute("BEGIN IMMEDIATE")
        cid = c.execute("INSERT INTO content (body) VALUES (?)", (raw,)).lastrowid
        c.executemany("INSERT INTO inbox (rcpt, uid, content) VALUES (?, ?, ?)",
                      [(a, n + 1, cid) for a in _recipients(rcpts, threads, i)])
        c.execute("COMMIT")

    one(conn, 99, -1)  # warm-up, as for Mailkeep (uid 0: the measured deliveries start at 1)
    r = drive(threads, CAP[size], seconds, connect, one, lambda c: c.close())
    contents = conn.execute("SELECT count(*), min(length(body)), max(length(body)) FROM content").fetchone()
    messages = conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
    conn.close()
    want_messages = r["deliveries"] * (1 if threads > 1 else rcpts) + rcpts
    if contents != (r["deliveries"] + 1, size, size) or messages != want_messages:
        raise AssertionError(f"SQLite holds {contents} contents, {messages} index rows; expected "
                             f"{r['deliveries'] + 1} of {size} B, {want_messages}")
    return _rates(r, size, rcpts)


# -- the run -----------------------------------------------------------------------------------
def cells() -> list[tuple[int, int, int]]:
    return [(size, rcpts, 1) for size in SIZES for rcpts in RECIPIENTS] + [THREADED]


def measure(seconds: float = SECONDS, log: Callable[[str], None] = print) -> dict[str, Any]:
    os.makedirs(OUT, exist_ok=True)
    fstype = filesystem_of(OUT)
    if fstype == "tmpfs":
        raise SystemExit("bench/out/ is on a tmpfs: fsync would cost nothing there; run from a working tree "
                         "on a real disk.")
    work = tempfile.mkdtemp(prefix="delivery-", dir=OUT)
    rows: list[dict[str, Any]] = []
    try:
        for k, (size, rcpts, threads) in enumerate(cells()):
            row: dict[str, Any] = {"size": size, "recipients": rcpts, "threads": threads}
            for system in ("sqlite", "mailkeep") if k % 2 == 0 else ("mailkeep", "sqlite"):
                root = os.path.join(work, f"{system}-{k}")
                if system == "mailkeep":
                    first = (size, rcpts, threads) == (SIZES[0], 1, 1)
                    r = mailkeep_cell(root, size, rcpts, threads, seconds=seconds,
                                      resolve_seconds=RESOLVE_SECONDS if first else 0.0)
                else:
                    r = sqlite_cell(root, size, rcpts, threads, seconds=seconds)
                shutil.rmtree(root, ignore_errors=True)
                row[system] = r
                extra = ""
                if system == "mailkeep":
                    extra = f", {r['deliveries'] / max(1, r['log_fsyncs']):.2f} deliveries/log fsync"
                log(f"  {system:<8} {SIZE_LABEL[size]:>5} x {rcpts} rcpt, {threads} thread(s): "
                    f"{r['deliveries_s']:8.1f} deliveries/s, {r['mb_s']:6.1f} MB/s, CPU {r['cpu_ms']:.2f} of "
                    f"{r['wall_ms']:.2f} ms/delivery ({r['deliveries']} in {r['seconds']:.1f} s){extra}")
            rows.append(row)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    resolve_ms = next((r["mailkeep"]["resolve_ms"] for r in rows if "resolve_ms" in r["mailkeep"]), None)
    return {"rows": rows, "resolve_ms": resolve_ms, "filesystem": fstype}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| message | recipients | threads | Mailkeep deliveries/s | recipients/s | MB/s "
        "| SQLite deliveries/s | recipients/s | MB/s | Mailkeep/SQLite |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        m, s = row["mailkeep"], row["sqlite"]
        lines.append(
            f"| {SIZE_LABEL[row['size']]} | {row['recipients']} | {row['threads']} "
            f"| {m['deliveries_s']:,.0f} | {m['recipients_s']:,.0f} | {m['mb_s']:,.1f} "
            f"| {s['deliveries_s']:,.0f} | {s['recipients_s']:,.0f} | {s['mb_s']:,.1f} "
            f"| {m['deliveries_s'] / s['deliveries_s']:.2f} |"
        )
    lines += [
        "",
        "Where the time goes (per delivery; CPU = process time of all threads, the rest of the wall time is "
        "waiting, mostly for fsync):",
        "",
        "| message | recipients | threads | Mailkeep wall ms | CPU ms | CPU share | log fsyncs | fsyncs (all) "
        "| SQLite wall ms | CPU ms | CPU share | deliveries measured (Mailkeep / SQLite) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        m, s = row["mailkeep"], row["sqlite"]
        n = max(1, m["deliveries"])
        # with several threads, wall ms per delivery is the inverse of the throughput
        lines.append(
            f"| {SIZE_LABEL[row['size']]} | {row['recipients']} | {row['threads']} "
            f"| {m['wall_ms']:.2f} | {m['cpu_ms']:.2f} | {m['cpu_seconds'] / m['seconds'] * 100:.0f}% "
            f"| {m['log_fsyncs'] / n:.2f} | {m['all_fsyncs'] / n:.2f} "
            f"| {s['wall_ms']:.2f} | {s['cpu_ms']:.2f} | {s['cpu_seconds'] / s['seconds'] * 100:.0f}% "
            f"| {m['deliveries']:,} / {s['deliveries']:,} |"
        )
    if result.get("resolve_ms") is not None:
        lines += ["", f"Recipient resolution alone (`delivery.resolve`: the directory lookups `deliver` makes for "
                      f"each recipient), timed apart: {result['resolve_ms']:.2f} ms per recipient."]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(measure()))
