"""Full online backup throughput against ``cp`` and ``tar`` of the same files, in the same run.

A server made by ``setup_server`` gets about 1 GB of mail (``deliver()``: 4 MB messages of
base64 text, which compresses the way real attachments in mail do), so its databases and
logs together exceed 1 GB. Then, alternating the order, each of these copies the same data to
a fresh folder on the same disk and makes it durable (``sync -f`` for cp and tar; Mailkeep
fsyncs its media when a set is complete):

- Mailkeep: ``backup.job.run`` — a copy backup (a normal one without truncation, so every
  copy in the run sees the same logs) of the whole information store through the engine's
  streaming API (every record and stream verified on the way, logs verified whole,
  SHA-256 per file), into new media; with and without ``--compress`` (zstandard level 3).
- ``cp``: ``cp`` of the ``.edb``, ``.stm`` and log files (taken while the server is stopped —
  the offline copy an online backup must compete with).
- ``tar``: ``tar -cf`` of the same files; and ``tar --zstd`` (the same zstd level).

The figure is the ratio of Mailkeep's MB/s to cp's (aim: at least 0.8). Everything goes to a
temporary folder under bench/out/ and is removed at the end.

Run alone: ``.venv/bin/python bench/backup.py`` (prints the table).
"""

from __future__ import annotations

import base64
import io
import os
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from typing import Any

from mailkeep.backup import job
from mailkeep.directory import tasks
from mailkeep.store.delivery import DELIVERED, deliver
from mailkeep.store.setup import setup_server
from mailkeep.store.store import Store

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
TARGET = 1_100_000_000  # bytes of databases + logs to reach
MESSAGE = 4_000_000
ROUNDS = 2


def _fill(data: str, log: Callable[[str], None]) -> list[str]:
    res = setup_server(data, domain="bench.test", server="BENCH")
    from mailkeep.directory.setup import open_directory

    d = open_directory(data)
    d.add_user("u", password_text="x")
    tasks.mailbox_enable(d, "u", res.mailbox_store.dn)
    d.close()
    rnd = random.Random(7)
    with Store.open(data) as s:
        s.mount_intended()
        i = 0
        while _size(_files(s)) < TARGET and i < 2000:
            body = base64.encodebytes(rnd.randbytes(MESSAGE * 3 // 4))
            raw = f"From: a@x\r\nMessage-ID: <{i}@bench>\r\nSubject: {i}\r\n\r\n".encode() + body
            rep = deliver(s, io.BytesIO(raw), ["u@bench.test"], sender="a@x")
            assert rep.outcomes[0].status == DELIVERED
            i += 1
        files = _files(s)
    log(f"  {i} messages, {_size(files) / 1e6:,.0f} MB in {len(files)} database and log files")
    return files


def _files(s: Store) -> list[str]:
    out = []
    for d in s.server.databases():
        out += [d.edb, d.stm]
    for g in s.server.storage_groups():
        out += sorted(os.path.join(g.log_path, n) for n in os.listdir(g.log_path) if n.endswith(".log")
                      and not n.startswith("res") and n != f"{g.prefix}tmp.log")
    return [p for p in out if os.path.exists(p)]


def _size(files: list[str]) -> int:
    return sum(os.path.getsize(p) for p in files)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(log: Callable[[str], None] = print) -> dict[str, Any]:
    os.makedirs(OUT, exist_ok=True)
    root = tempfile.mkdtemp(prefix="backup-", dir=OUT)
    os.environ["MAILKEEP_STATE_DIR"] = os.path.join(root, "state")
    try:
        data = os.path.join(root, "data")
        log("backup: filling a store")
        files = _fill(data, log)
        size = _size(files)
        results: dict[str, list[tuple[float, int, int]]] = {k: [] for k in
                                                       ("mailkeep", "mailkeep_zstd", "cp", "tar", "tar_zstd")}

        def mailkeep(compress: bool) -> int:
            media = os.path.join(root, "m.bkf")
            with Store.open(data) as s:
                s.mount_intended()
                # a copy backup: the same bytes as a normal one, without truncating the logs the
                # other copies in this run take too
                got: list[job.JobResult] = []
                t = _timed(lambda: got.append(job.run(s, media, ["BENCH/Information Store"],
                                                      job.Options(kind="copy", compress=compress, replace=True))))
            out = os.path.getsize(media)
            os.unlink(media)
            results["mailkeep_zstd" if compress else "mailkeep"].append((t, got[0].set.bytes, out))
            return out

        def current() -> list[str]:
            with Store.open(data) as s:
                return _files(s)

        def cp() -> None:
            files = current()
            dest = os.path.join(root, "cp")
            os.makedirs(dest)
            t = _timed(lambda: (subprocess.run(["cp", *files, dest], check=True),
                                subprocess.run(["sync", "-f", dest], check=True)))
            results["cp"].append((t, _size(files), _size(files)))
            shutil.rmtree(dest)

        def tar(zstd: bool) -> None:
            files = current()
            dest = os.path.join(root, "t.tar" + (".zst" if zstd else ""))
            cmd = ["tar", "-cf", dest, *(["--zstd"] if zstd else []), "-P", *files]
            t = _timed(lambda: (subprocess.run(cmd, check=True), subprocess.run(["sync", "-f", dest], check=True)))
            results["tar_zstd" if zstd else "tar"].append((t, _size(files), os.path.getsize(dest)))
            os.unlink(dest)

        steps: list[tuple[str, Callable[[], Any]]] = [
            ("mailkeep", lambda: mailkeep(False)), ("cp", cp), ("tar", lambda: tar(False)),
            ("mailkeep --compress", lambda: mailkeep(True)), ("tar --zstd", lambda: tar(True))]
        for r in range(ROUNDS):
            for name, fn in (steps if r % 2 == 0 else list(reversed(steps))):
                log(f"  round {r + 1}: {name}")
                fn()
        return {"bytes": size, "files": len(files), "results": results}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def markdown(res: dict[str, Any]) -> str:
    """MB/s is of the bytes each copy read: an online backup takes only the logs from the
    checkpoint on (older generations are not needed to restore), so it reads less than cp."""

    def best(key: str) -> tuple[float, int, int]:
        return min((t, inp, out) for t, inp, out in res["results"][key])

    t_cp, in_cp, _ = best("cp")
    cp_rate = in_cp / t_cp / 1e6
    rows = [("Mailkeep online backup (copy type; every record, stream and log verified; SHA-256 per file)",
             "mailkeep"), ("cp + sync", "cp"), ("tar -cf + sync", "tar"),
            ("Mailkeep online backup --compress (zstd 3)", "mailkeep_zstd"), ("tar --zstd + sync", "tar_zstd")]
    lines = [f"The store: {res['files']} database and log files, {res['bytes'] / 1e6:,.0f} MB; best of {ROUNDS} "
             "runs each, order alternated; the files were in the page cache for every copy.", "",
             "| copy | seconds | MB read | MB/s read | ÷ cp | MB written |", "|---|---:|---:|---:|---:|---:|"]
    for label, key in rows:
        t, inp, out = best(key)
        rate = inp / t / 1e6
        lines.append(f"| {label} | {t:.2f} | {inp / 1e6:,.0f} | {rate:,.0f} | {rate / cp_rate:.2f} | "
                     f"{out / 1e6:,.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(measure()))
