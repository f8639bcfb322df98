"""Durable commits per second: Mailkeep's group commit against plain SQLite with full sync.

Both systems run in the same process, on the same disk (a folder under bench/out/), with the
same payloads, alternating run by run so that drift of a shared machine hits both alike:

- Mailkeep: a storage group with the default 5 MiB log generations and one database; each
  commit is one transaction, and ``commit()`` returns only after its log record is fsync'd
  (concurrent committers share one fsync: group commit).
- SQLite: one database in WAL mode with ``synchronous=FULL`` (the WAL is fsync'd at every
  commit), one connection per thread; each commit is ``BEGIN IMMEDIATE; INSERT; COMMIT``.

Payloads: ``small`` inserts one ~200 B row; ``stream`` writes 50 KB of content -- in Mailkeep as
a stream (``txn.create_stream``) plus a row naming it, in SQLite as a 50 KB blob in the row.

Each measurement runs N writer threads for SECONDS (or until CAP commits), is repeated
REPEATS times, and reports the median. The number of log fsyncs comes from the FileIO the
storage group writes through (``FileIO.counts``, split by file so that only fsyncs of the
current log ``E00.log`` count as log fsyncs), giving the commits each log fsync made durable.

A last, separate measurement adds a 2 ms sleep after every log fsync (a disk without a write
cache), to show how group commit batches when the fsync, not the CPU, is the bottleneck.

Run alone: ``.venv/bin/python bench/commit.py``.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from driver import drive, sqlite_full

from mailkeep.engine.fileio import FileIO
from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import StorageGroup, StorageGroupConfig

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out", "commit")

THREADS = (1, 4, 16)
PAYLOADS = ("small", "stream")
SECONDS = 3.0
REPEATS = 5
CAP = {"small": 100_000, "stream": 20_000}  # commits; a guard, the time bound ends runs first
CONTENT_SIZE = 50_000
SLOW_FSYNC = 0.002  # seconds added to each log fsync in the simulated slow-disk run

MESSAGES = TableSpec("messages", ("id", "folder", "body", "stream"), ("id",))
SQLITE_TABLE = "CREATE TABLE messages (id TEXT PRIMARY KEY, folder TEXT, body BLOB)"
BODY = "x" * 180  # with id and folder, a row of about 200 bytes


@dataclass
class Run:
    system: str
    payload: str
    threads: int
    commits: int
    seconds: float
    log_fsyncs: int = 0
    all_fsyncs: int = 0

    @property
    def rate(self) -> float:
        return self.commits / self.seconds


class CountingIO(FileIO):
    """FileIO that also counts fsyncs of the current log file (the group-commit fsyncs)."""

    def __init__(self, prefix: str = "E00") -> None:
        super().__init__()
        self.log_name = f"{prefix}.log"
        self.log_fsyncs = 0

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        if os.path.basename(self._paths.get(fd, "")) == self.log_name:
            self.log_fsyncs += 1  # log fsyncs are serialized by the log writer


class SlowLogIO(CountingIO):
    """A disk whose log fsync takes SLOW_FSYNC longer (time.sleep releases the GIL, as a
    real fsync does)."""

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        if os.path.basename(self._paths.get(fd, "")) == self.log_name:
            time.sleep(SLOW_FSYNC)


def mailkeep_run(root: str, payload: str, threads: int, *, io: CountingIO | None = None,
                 seconds: float = SECONDS) -> Run:
    io = io or CountingIO()
    cfg = StorageGroupConfig(log_path=os.path.join(root, "logs"), system_path=os.path.join(root, "system"))
    sg = StorageGroup.create(cfg, io=io)
    try:
        db = sg.create_database(os.path.join(root, "db", "priv1.edb"))
        with sg.begin() as txn:
            txn.declare_table(db, MESSAGES)
        content = os.urandom(CONTENT_SIZE)

        def one_commit(_ctx: Any, i: int, n: int) -> None:
            with sg.begin() as txn:
                if payload == "stream":
                    with txn.create_stream(db) as s:
                        s.write(content)
                    txn.insert(db, "messages", {"id": f"{i}-{n}", "folder": "inbox", "stream": s.stream_id})
                else:
                    txn.insert(db, "messages", {"id": f"{i}-{n}", "folder": "inbox", "body": BODY})

        log0, all0 = io.log_fsyncs, io.counts["fsync"]
        r = drive(threads, CAP[payload], seconds, lambda i: i, one_commit)
        commits, elapsed = int(r["operations"]), r["seconds"]
        return Run("mailkeep", payload, threads, commits, elapsed,
                   io.log_fsyncs - log0, io.counts["fsync"] - all0)
    finally:
        sg.close()


def sqlite_run(root: str, payload: str, threads: int, *, seconds: float = SECONDS) -> Run:
    os.makedirs(root, exist_ok=True)
    path = os.path.join(root, "bench.db")

    def connect() -> sqlite3.Connection:
        return sqlite_full(path)

    conn = connect()
    conn.execute(SQLITE_TABLE)
    conn.close()
    content = os.urandom(CONTENT_SIZE)
    value: str | bytes = content if payload == "stream" else BODY

    def one_commit(c: sqlite3.Connection, i: int, n: int) -> None:
        c.execute("BEGIN IMMEDIATE")
        c.execute("INSERT INTO messages (id, folder, body) VALUES (?, ?, ?)", (f"{i}-{n}", "inbox", value))
        c.execute("COMMIT")

    r = drive(threads, CAP[payload], seconds, lambda i: connect(), one_commit, lambda c: c.close())
    commits, elapsed = int(r["operations"]), r["seconds"]
    return Run("sqlite", payload, threads, commits, elapsed)


def fresh(path: str) -> str:
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path)
    return path


def measure(repeats: int = REPEATS, seconds: float = SECONDS, log: Callable[[str], None] = print) -> dict[str, Any]:
    runs: list[Run] = []
    for payload in PAYLOADS:
        for threads in THREADS:
            for rep in range(repeats):
                order = ("sqlite", "mailkeep") if rep % 2 == 0 else ("mailkeep", "sqlite")
                for system in order:
                    root = fresh(os.path.join(OUT, system))
                    if system == "mailkeep":
                        r = mailkeep_run(root, payload, threads, seconds=seconds)
                    else:
                        r = sqlite_run(root, payload, threads, seconds=seconds)
                    shutil.rmtree(root, ignore_errors=True)
                    runs.append(r)
                    extra = ""
                    if system == "mailkeep":
                        extra = f", {r.commits / max(1, r.log_fsyncs):.2f} commits/log fsync"
                    log(f"  {system:<8} {payload:<6} {threads:>2} threads #{rep + 1}: {r.rate:8.0f} commits/s{extra}")
    slow: list[Run] = []
    for threads in THREADS:
        root = fresh(os.path.join(OUT, "slow"))
        r = mailkeep_run(root, "small", threads, io=SlowLogIO(), seconds=seconds)
        shutil.rmtree(root, ignore_errors=True)
        slow.append(r)
        log(f"  mailkeep small  {threads:>2} threads, log fsync +{SLOW_FSYNC * 1000:.0f} ms: {r.rate:8.0f} commits/s, "
            f"{r.commits / max(1, r.log_fsyncs):.2f} commits/log fsync")
    shutil.rmtree(OUT, ignore_errors=True)
    return {"runs": [asdict(r) | {"rate": r.rate} for r in runs], "slow": [asdict(r) | {"rate": r.rate} for r in slow],
            "table": summarize(runs), "slow_table": [_slow_row(r) for r in slow]}


def summarize(runs: list[Run]) -> list[dict[str, Any]]:
    rows = []
    for payload in PAYLOADS:
        for threads in THREADS:
            mk = [r for r in runs if (r.system, r.payload, r.threads) == ("mailkeep", payload, threads)]
            sq = [r for r in runs if (r.system, r.payload, r.threads) == ("sqlite", payload, threads)]
            if not mk or not sq:
                continue
            mk_rate = statistics.median(r.rate for r in mk)
            sq_rate = statistics.median(r.rate for r in sq)
            commits = sum(r.commits for r in mk)
            rows.append({
                "payload": payload,
                "threads": threads,
                "mailkeep": mk_rate,
                "sqlite": sq_rate,
                "ratio": mk_rate / sq_rate,
                "mailkeep_spread": (min(r.rate for r in mk), max(r.rate for r in mk)),
                "sqlite_spread": (min(r.rate for r in sq), max(r.rate for r in sq)),
                "per_log_fsync": commits / max(1, sum(r.log_fsyncs for r in mk)),
                "per_fsync": commits / max(1, sum(r.all_fsyncs for r in mk)),
            })
    return rows


def _slow_row(r: Run) -> dict[str, Any]:
    return {"threads": r.threads, "mailkeep": r.rate, "per_log_fsync": r.commits / max(1, r.log_fsyncs)}


PAYLOAD_LABEL = {"small": "small row (~200 B)", "stream": f"{CONTENT_SIZE // 1000} KB content"}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| payload | writer threads | Mailkeep commits/s | SQLite commits/s | Mailkeep/SQLite "
        "| commits per log fsync | commits per fsync (all) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["table"]:
        lines.append(
            f"| {PAYLOAD_LABEL[row['payload']]} | {row['threads']} | {row['mailkeep']:,.0f} "
            f"({row['mailkeep_spread'][0]:,.0f}–{row['mailkeep_spread'][1]:,.0f}) | {row['sqlite']:,.0f} "
            f"({row['sqlite_spread'][0]:,.0f}–{row['sqlite_spread'][1]:,.0f}) | {row['ratio']:.2f} "
            f"| {row['per_log_fsync']:.2f} | {row['per_fsync']:.2f} |"
        )
    lines += [
        "",
        f"Group commit on a slower disk (Mailkeep only, small rows, {SLOW_FSYNC * 1000:.0f} ms added to every log "
        "fsync by a FileIO subclass):",
        "",
        "| writer threads | Mailkeep commits/s | commits per log fsync |",
        "|---:|---:|---:|",
    ]
    for row in result["slow_table"]:
        lines.append(f"| {row['threads']} | {row['mailkeep']:,.0f} | {row['per_log_fsync']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(measure()))
