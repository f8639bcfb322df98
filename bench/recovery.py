"""Soft-recovery time against the number of log generations to replay.

For each depth N, a storage group with small (64 KiB) generations is filled with committed
transactions until N generations have closed behind a checkpoint that cannot move
(``checkpoint_every`` is huge and ``freeze_checkpoint()`` holds E00.chk at the start, as an
unfinished online backup does). Then the process "dies" (``sg.crash()``: nothing more is
written) and ``StorageGroup.open()`` runs soft recovery over N + 1 generations (N closed ones
plus the current ``E00.log``). Each transaction is one message: 4 rows of ~200 B and an 8 KiB
stream.

Two cases, from one filled log:

- ``databases current``: the database files as the crash left them. The storage group
  checkpointed its SQLite files at every roll-over, so replay reads every record and skips
  nearly all of them (a process kill).
- ``databases behind``: the database files replaced by the copy taken before the fill (a power
  loss that kept the log but not the database writes, or a restored backup): replay applies
  every transaction, rows and stream data.

Before each open every file of the storage group is fsync'd and dropped from the page cache
(``posix_fadvise(DONTNEED)``), so the log is read from disk, as after a reboot. Reported:
the time of ``open()`` and, from ``sg.last_recovery``, the replay time and bytes, as MB/s.

Run alone: ``.venv/bin/python bench/recovery.py``.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import RecoveryOptions, StorageGroup, StorageGroupConfig

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out", "recovery")

DEPTHS = (10, 100, 1000)
LOG_SIZE = 64 * 1024
ROWS_PER_TXN = 4
STREAM_SIZE = 8 * 1024
ROW = TableSpec("messages", ("id", "folder", "body"), ("id",))
BODY = "x" * 180
MODES = ("current", "behind")


def config(root: str) -> StorageGroupConfig:
    return StorageGroupConfig(
        log_path=os.path.join(root, "logs"),
        system_path=os.path.join(root, "system"),
        log_file_size=LOG_SIZE,
        checkpoint_every=1 << 60,
        checkpoint_depth_max=1 << 30,  # the default (1,000) would dismount at the deepest run
    )


def fill(root: str, generations: int) -> dict[str, Any]:
    """Fill ``generations`` generations behind a frozen checkpoint, then crash."""
    shutil.rmtree(root, ignore_errors=True)
    sg = StorageGroup.create(config(root))
    try:
        db = sg.create_database(os.path.join(root, "db", "priv1.edb"))
        with sg.begin() as txn:
            txn.declare_table(db, ROW)
        sg.checkpoint()
        sg.freeze_checkpoint()
        snapshot = os.path.join(root, "before")
        os.makedirs(snapshot)
        for path in (db.edb_path, db.stm_path):
            shutil.copy2(path, snapshot)
        content = os.urandom(STREAM_SIZE)
        start = sg.current_generation
        txns = 0
        t0 = time.perf_counter()
        while sg.current_generation < start + generations:
            with sg.begin() as txn:
                for k in range(ROWS_PER_TXN):
                    txn.insert(db, "messages", {"id": f"{txns}-{k}", "folder": "inbox", "body": BODY})
                with txn.create_stream(db) as s:
                    s.write(content)
            txns += 1
        seconds = time.perf_counter() - t0
        if sg.checkpoint_lsn >> 32 != start:
            raise RuntimeError("the checkpoint moved during the fill; the benchmark would replay less")
    finally:
        sg.crash()
    return {"transactions": txns, "rows": txns * ROWS_PER_TXN, "fill_seconds": seconds}


def evict(root: str) -> None:
    """fsync every file, then drop it from the page cache: the next reads go to the disk."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def prepare(base: str, mode: str) -> str:
    """A copy of the crashed storage group for one recovery run."""
    root = base + "-" + mode
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(base, root)
    if mode == "behind":
        dbdir = os.path.join(root, "db")
        for name in os.listdir(dbdir):
            os.unlink(os.path.join(dbdir, name))  # .edb, .stm, -wal, -shm
        for name in os.listdir(os.path.join(root, "before")):
            shutil.copy2(os.path.join(root, "before", name), dbdir)
    return root


def recover(root: str, expected_rows: int) -> dict[str, Any]:
    evict(root)
    # The log names the database by the path it had in `base`; /d points replay at this copy.
    opts = RecoveryOptions(db_dir=os.path.join(root, "db"), ignore_missing=False)
    t0 = time.perf_counter()
    sg = StorageGroup.open(config(root), recovery=opts)
    seconds = time.perf_counter() - t0
    try:
        rec = dict(sg.last_recovery)
        db = sg.mount(os.path.join(root, "db", "priv1.edb"))
        with sg.reader() as r:
            rows = sum(1 for _ in r.scan(db, "messages"))
        if rows != expected_rows:
            raise RuntimeError(f"recovery left {rows} rows, expected {expected_rows}")
    finally:
        sg.close()
    replay = float(rec["seconds"])
    return {
        "open_seconds": seconds,
        "replay_seconds": replay,
        "generations": rec["generations"],
        "transactions": rec["transactions"],
        "bytes": rec["bytes"],
        "mb_per_s": float(str(rec["bytes"])) / replay / 1e6,
    }


def measure(log: Callable[[str], None] = print) -> dict[str, Any]:
    rows = []
    for depth in DEPTHS:
        base = os.path.join(OUT, f"depth{depth}")
        filled = fill(base, depth)
        log(f"  filled {depth} generations: {filled['transactions']} transactions in {filled['fill_seconds']:.1f} s")
        row: dict[str, Any] = {"depth": depth, **filled}
        for mode in MODES:
            root = prepare(base, mode)
            r = recover(root, filled["rows"])
            shutil.rmtree(root, ignore_errors=True)
            row[mode] = r
            log(f"  recovery, databases {mode:<7}: {r['generations']} generations, {r['bytes'] / 1e6:.1f} MB, "
                f"open() {r['open_seconds']:.3f} s, replay {r['replay_seconds']:.3f} s = {r['mb_per_s']:.0f} MB/s")
        shutil.rmtree(base, ignore_errors=True)
        rows.append(row)
    shutil.rmtree(OUT, ignore_errors=True)
    return {"table": rows}


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| generations behind the checkpoint | generations replayed | log read | transactions "
        "| databases current: open() | replay rate | databases behind: open() | replay rate |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["table"]:
        cur, beh = row["current"], row["behind"]
        lines.append(
            f"| {row['depth']:,} | {cur['generations']:,} | {cur['bytes'] / 1e6:.1f} MB | {cur['transactions']:,} "
            f"| {cur['open_seconds']:.3f} s | {cur['mb_per_s']:.0f} MB/s "
            f"| {beh['open_seconds']:.3f} s | {beh['mb_per_s']:.0f} MB/s |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(measure()))
