"""Writer process for the SIGKILL test (tests/faults/test_sigkill.py).

Usage: python writer_proc.py ROOT SEED

Prints ``opening``, opens the storage group under ROOT (soft recovery), mounts its two
databases, prints ``ready`` and then commits transactions until it is killed. Transaction
``id`` writes a message row in ``msgs`` of the first database (with, for some ids, a 20-60 KB stream) and an
index row in ``idx`` of the second database: two tables in two databases, so all-or-nothing
is the log's promise, not SQLite's. After ``commit()`` returns it prints the id and flushes
stdout; a printed id is an acknowledged transaction.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
from typing import Any

from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import StorageGroup, StorageGroupConfig

LOG_SIZE = 128 * 1024  # small generations: roll-overs (and their renames) happen all the time
MSGS = TableSpec("msgs", ("id", "subject", "stream", "size", "sha"), ("id",))
IDX = TableSpec("idx", ("id", "folder", "subject_sha"), ("id",), {"by_folder": ("folder", "id")})


def config(root: str) -> StorageGroupConfig:
    return StorageGroupConfig(
        log_path=os.path.join(root, "logs"),
        system_path=os.path.join(root, "system"),
        log_file_size=LOG_SIZE,
        circular_logging=True,  # generations below the checkpoint are deleted: bounded disk use
        checkpoint_every=50,
    )


def db_files(root: str) -> list[tuple[str, str]]:
    d = os.path.join(root, "mdbdata")
    return [(os.path.join(d, f"{n}.edb"), os.path.join(d, f"{n}.stm")) for n in ("priv1", "pub1")]


def subject(i: int) -> str:
    return f"message {i} " + "s" * (i % 97)


def stream_size(i: int) -> int:
    """Every third transaction carries a 20-60 KB stream."""
    return 0 if i % 3 else 20_000 + (i * 7919) % 40_001


def stream_bytes(i: int) -> bytes:
    return random.Random(i).randbytes(stream_size(i))


def expected_idx(i: int) -> dict[str, Any]:
    return {"id": i, "folder": f"f{i % 5}", "subject_sha": hashlib.sha256(subject(i).encode()).hexdigest()}


def setup(root: str) -> None:
    """Create the group, both databases and their tables; leave everything clean."""
    sg = StorageGroup.create(config(root))
    try:
        (e1, s1), (e2, s2) = db_files(root)
        d1 = sg.create_database(e1, s1)
        d2 = sg.create_database(e2, s2)
        with sg.begin() as t:
            t.declare_table(d1, MSGS)
            t.declare_table(d2, IDX)
    finally:
        sg.close()


def main() -> None:
    root, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    print("opening", flush=True)  # soft recovery starts now
    sg = StorageGroup.open(config(root))
    (e1, s1), (e2, s2) = db_files(root)
    d1 = sg.mount(e1, s1)
    d2 = sg.mount(e2, s2)
    with sg.reader() as r:
        last = next(r.scan(d1, "msgs", reverse=True, limit=1), None)
    i = 0 if last is None else int(last["id"]) + 1
    print("ready", flush=True)
    while True:
        with sg.begin() as t:
            sid = None
            if stream_size(i):
                data = stream_bytes(i)
                with t.create_stream(d1) as s:
                    pos = 0
                    while pos < len(data):  # several writes, several log records
                        n = rng.randint(4096, 32768)
                        s.write(data[pos : pos + n])
                        pos += n
                sid = s.stream_id
                sha = hashlib.sha256(data).hexdigest()
            else:
                sha = None
            t.insert(d1, "msgs", {"id": i, "subject": subject(i), "stream": sid,
                                  "size": stream_size(i), "sha": sha})
            t.insert(d2, "idx", expected_idx(i))
        print(i, flush=True)
        i += 1


if __name__ == "__main__":
    main()
