"""Restore throughput and replay rate, against the rate at which delivery produced the logs (issue 8).

The question: once a mailbox store's files are lost, how fast do restore and hard recovery
bring back what delivery wrote — and is replaying a log generation faster or slower than
producing it was?

- A server made by ``setup_server`` (the default configuration: 5 MiB log generations) in a
  temporary folder under bench/out/, one mailbox-enabled user, one warm-up delivery (it
  allocates the mailbox); then a normal backup of the First Storage Group (set 1), so that
  every generation delivery writes afterwards is one hard recovery must replay.
- Delivery, timed: ``deliver()`` in one thread of 5 KB and 100 KB messages taking turns (base64
  text, a unique Message-ID each) until the deliveries have closed ``TARGET`` bytes of log
  generations — the rate at which delivery produced those logs (generations/s, MB/s of log).
- A differential backup (set 2): the logs written since set 1, onto the same media. It holds the
  generations an incremental would; unlike an incremental it leaves them in the storage
  group's log folder, so that the roll-forward variant below replays the same logs.
- The loss: the mailbox store dismounted, its ``.edb`` and ``.stm`` deleted. Then, timed:
  ``restore`` of set 1 (database files and its logs) and of set 2 (the logs) into a temporary
  folder — restore throughput, MB/s written (every file is fsync'd); and ``hard_recovery``
  with ``roll_forward=False`` (``eseutil /cc /t``: the restored logs only) — the replay rate.
- The roll-forward variant (drill D3: the logs after the last normal backup are still on the
  server's disk): the store lost again, set 1 alone restored into another folder, and
  ``hard_recovery`` with ``roll_forward=True``: set 1's logs, then the storage group's own log
  folder up to its current generation, while the public folder store stays mounted.
- Correctness: after each recovery the store is mounted and its Inbox must hold exactly the
  delivered Message-IDs (each once, none missing, nothing else), and a sample of the messages
  must read back byte for byte: a benchmark that loses or damages mail fails.

Every timed step runs on files the page cache holds (just written by delivery or by the
restore), as they would be on a server restoring right away. Everything is removed at the end.

Run alone: ``.venv/bin/python bench/restore.py`` (prints the table).
"""

from __future__ import annotations

import base64
import io
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from typing import Any

from mailkeep.backup import job
from mailkeep.backup.restore import hard_recovery, restore
from mailkeep.directory import tasks
from mailkeep.directory.setup import open_directory
from mailkeep.engine.logformat import gen_file_name
from mailkeep.engine.logreader import layout
from mailkeep.store.delivery import DELIVERED, deliver
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.setup import setup_server
from mailkeep.store.store import Store

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
TARGET = 300_000_000  # bytes of closed log generations the deliveries produce
SIZES = (5_000, 100_000)  # message sizes, taking turns
MAX_MESSAGES = 20_000  # a bound on the delivery loop; TARGET is reached long before
SAMPLE = 20  # after recovery, every SAMPLE-th message and the last SAMPLE are read back whole
SERVER = "BENCH"
SG_NAME = "First Storage Group"
SG = f"{SERVER}/Information Store/{SG_NAME}"
DB = f"Mailbox Store ({SERVER})"
USER = "u"
ADDRESS = "u@bench.test"


def _message(size: int, n: int, body: bytes) -> tuple[str, bytes]:
    """(Message-ID, a message of exactly ``size`` bytes: base64 text in CRLF lines)."""
    mid = f"<{n:08d}.{size}@bench.invalid>"
    head = (f"From: Bench <bench@example.org>\r\nTo: {ADDRESS}\r\nSubject: restore bench {n}\r\n"
            f"Message-ID: {mid}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\n").encode()
    raw = head + body[:size - len(head) - 2] + b"\r\n"
    assert len(raw) == size, (len(raw), size)
    return mid, raw


def _body(rnd: random.Random) -> bytes:
    text = base64.b64encode(rnd.randbytes(max(SIZES) * 3 // 4 + 3))
    return b"".join(text[i:i + 76] + b"\r\n" for i in range(0, len(text), 76))


def _deliver(s: Store, mid: str, raw: bytes) -> None:
    rep = deliver(s, io.BytesIO(raw), [ADDRESS], sender="bench@example.org")
    if rep.outcomes[0].status != DELIVERED:
        raise RuntimeError(f"delivery of {mid} failed: {rep.outcomes[0]}")


def _check(s: Store, expected: list[str], what: str, body: bytes) -> int:
    """The mailbox must hold exactly the delivered Message-IDs, each once; and a sample of the
    messages (every ``SAMPLE``-th and the last ``SAMPLE`` delivered, which the last generations
    hold) must read back as delivered (the stream's SHA-256 is checked as it is read, and its
    bytes must end with the message sent: delivery adds a Received field at the top).
    Returns the number of messages read back."""
    mb = open_mailbox(s, USER)
    infos = mb.messages("INBOX")
    got = sorted(m.message_id for m in infos)
    if got != expected:
        missing = sorted(set(expected) - set(got))
        extra = sorted(set(got) - set(expected))
        dups = len(got) - len(set(got))
        raise RuntimeError(f"after {what} the Inbox holds {len(got)} messages where {len(expected)} were delivered: "
                           f"{len(missing)} missing (e.g. {missing[:3]}), {len(extra)} unexpected, {dups} duplicated. "
                           "Restore or hard recovery lost or invented mail.")
    by_n = sorted(infos, key=lambda m: m.message_id)  # Message-IDs sort by delivery number
    sample = by_n[::SAMPLE] + by_n[-SAMPLE:]
    for m in sample:
        n, size = (int(x) for x in m.message_id.strip("<").split("@")[0].split("."))
        _mid, raw = _message(size, n, body)
        content = mb.read_message("INBOX", m.uid)
        if not content.endswith(raw):
            raise RuntimeError(f"after {what} message {m.message_id} reads back as {len(content)} bytes that do not "
                               f"end with the {len(raw)} bytes delivered: restore or hard recovery damaged it.")
    return len(sample)


def _lose(s: Store) -> None:
    """The disaster: the mailbox store dismounted, its files deleted."""
    info = s.server.database(DB)
    s.dismount(info)
    for p in (info.edb, info.stm, info.edb + "-wal", info.edb + "-shm"):
        if os.path.exists(p):
            os.unlink(p)


def _log_bytes(folder: str, prefix: str, low: int, high: int) -> int:
    """Bytes of generations low..high in ``folder`` (the current ``E00.log`` for the one it holds)."""
    total = 0
    cur = os.path.join(folder, f"{prefix}.log")
    cur_gen = layout(folder, prefix).current_gen if os.path.exists(cur) else 0
    for g in range(low, high + 1):
        total += os.path.getsize(cur if g == cur_gen else os.path.join(folder, gen_file_name(prefix, g)))
    return total


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def measure(log: Callable[[str], None] = print) -> dict[str, Any]:
    os.makedirs(OUT, exist_ok=True)
    root = tempfile.mkdtemp(prefix="restore-", dir=OUT)
    os.environ["MAILKEEP_STATE_DIR"] = os.path.join(root, "state")
    try:
        data = os.path.join(root, "data")
        media = os.path.join(root, "m.bkf")
        res = setup_server(data, domain="bench.test", server=SERVER)
        d = open_directory(data)
        d.add_user(USER, password_text="x")
        tasks.mailbox_enable(d, USER, res.mailbox_store.dn)
        d.close()
        rnd = random.Random(8)
        body = _body(rnd)
        out: dict[str, Any] = {"target": TARGET, "sizes": list(SIZES)}
        with Store.open(data) as s:
            s.mount_intended()
            sg_info = s.server.storage_group(SG_NAME)
            prefix, log_path = sg_info.prefix, sg_info.log_path
            out["log_file_size"] = s.group(sg_info).config.log_file_size
            mid, raw = _message(SIZES[0], 0, body)
            _deliver(s, mid, raw)  # allocates the mailbox
            expected = [mid]
            r1 = job.run(s, media, [SG], job.Options(kind="normal", replace=True))
            if not r1.ok:
                raise RuntimeError(f"the normal backup failed: {r1.errors}")
            log("restore: delivering")
            sg = s.group(sg_info)
            gen0 = sg.current_generation
            # closed generations needed to reach TARGET bytes of log
            want = -(-TARGET // out["log_file_size"])
            n, msg_bytes = 0, 0
            t0 = time.perf_counter()
            while sg.current_generation - gen0 < want and n < MAX_MESSAGES:
                n += 1
                mid, raw = _message(SIZES[n % len(SIZES)], n, body)
                _deliver(s, mid, raw)
                expected.append(mid)
                msg_bytes += len(raw)
            t_deliver = time.perf_counter() - t0
            gen1 = sg.current_generation
            gens = gen1 - gen0
            out["delivery"] = {"seconds": t_deliver, "messages": n, "message_bytes": msg_bytes, "generations": gens,
                               "log_bytes": _log_bytes(log_path, prefix, gen0, gen1 - 1)}
            log(f"  {n:,} messages ({msg_bytes / 1e6:,.0f} MB) in {t_deliver:.1f} s closed {gens} generations")
            expected.sort()
            r2 = job.run(s, media, [SG], job.Options(kind="differential"))
            if not r2.ok:
                raise RuntimeError(f"the differential backup failed: {r2.errors}")

            # -- restore of both sets, then hard recovery of the restored logs only (/t)
            log("restore: the loss, restore of the normal and differential sets, hard recovery without roll-forward")
            _lose(s)
            temp = os.path.join(root, "temp")
            t_r1, a = _timed(lambda: restore(s, media, r1.set.number, [f"{SG}/{DB}"], temp))
            t_r2, b = _timed(lambda: restore(s, media, r2.set.number, [SG], temp))
            folder = a.folders[0]
            low = int(a.set.extra["storage_groups"][0]["low_gen"])
            high = int(b.set.extra["storage_groups"][0]["high_gen"])
            logs_restored = sum(1 for e in a.set.entries + b.set.entries if e.role == "log")
            out["restore"] = {"seconds": t_r1 + t_r2, "seconds_normal": t_r1, "seconds_differential": t_r2,
                              "bytes": a.bytes + b.bytes, "files": a.files + b.files, "logs": logs_restored}
            replay_bytes = _log_bytes(folder, prefix, low, high)
            t_hr, hr = _timed(lambda: hard_recovery(s, temp, roll_forward=False))
            out["replay"] = {"seconds": t_hr, "generations": high - low + 1, "log_bytes": replay_bytes,
                             "low": low, "high": high, "rolled_to": hr.rolled_to}
            log(f"  restore {t_r1 + t_r2:.1f} s, hard recovery of generations {low}-{high} {t_hr:.1f} s")
            s.mount(s.server.database(DB))
            out["read_back"] = _check(s, expected, "restore and hard recovery without roll-forward", body)
            out["checked"] = len(expected)

            # -- roll-forward variant: set 1 only, then the storage group's own logs
            log("restore: the loss again, restore of the normal set, hard recovery with roll-forward")
            _lose(s)
            temp2 = os.path.join(root, "temp2")
            t_r3, c = _timed(lambda: restore(s, media, r1.set.number, [f"{SG}/{DB}"], temp2))
            folder2 = c.folders[0]
            low2 = int(c.set.extra["storage_groups"][0]["low_gen"])
            high2 = int(c.set.extra["storage_groups"][0]["high_gen"])
            restored_bytes = _log_bytes(folder2, prefix, low2, high2)
            t_rf, rf = _timed(lambda: hard_recovery(s, temp2, roll_forward=True))
            if rf.stopped:
                raise RuntimeError(f"the roll-forward stopped early: {rf.stopped}")
            own_bytes = _log_bytes(log_path, prefix, high2 + 1, rf.rolled_to)
            out["roll_forward"] = {"seconds": t_rf, "restore_seconds": t_r3, "restore_bytes": c.bytes,
                                   "generations": rf.rolled_to - low2 + 1, "restored_generations": high2 - low2 + 1,
                                   "log_bytes": restored_bytes + own_bytes, "rolled_to": rf.rolled_to}
            log(f"  hard recovery of generations {low2}-{high2} and {high2 + 1}-{rf.rolled_to} {t_rf:.1f} s")
            s.mount(s.server.database(DB))
            _check(s, expected, "restore and hard recovery with roll-forward", body)
        return out
    finally:
        shutil.rmtree(root, ignore_errors=True)


def markdown(res: dict[str, Any]) -> str:
    """One row per step; the last column compares each step's generations/s with delivery's."""
    dv, rs, rp, rf = res["delivery"], res["restore"], res["replay"], res["roll_forward"]
    base = dv["generations"] / dv["seconds"]

    def row(label: str, seconds: float, nbytes: int, gens: int) -> str:
        return (f"| {label} | {seconds:.2f} | {nbytes / 1e6:,.0f} | {gens:,} | {nbytes / 1e6 / seconds:,.1f} | "
                f"{gens / seconds:,.1f} | {gens / seconds / base:.2f} |")

    size = res["log_file_size"] / (1 << 20)
    lines = [
        f"{dv['messages']:,} messages of {' and '.join(f'{x // 1000} KB' for x in res['sizes'])} taking turns "
        f"({dv['message_bytes'] / 1e6:,.0f} MB of mail) delivered in one thread with `deliver()` into "
        f"{size:g} MiB log generations, after a normal backup; then a differential backup, the mailbox store's "
        "files deleted, and the store restored. MB: bytes of log generations (delivery, replay) or bytes written "
        "(restore); *restore + replay* is the replayed log over the time of both steps.",
        "",
        "| step | seconds | MB | generations | MB/s | generations/s | ÷ delivery (generations/s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("delivery producing the logs", dv["seconds"], dv["log_bytes"], dv["generations"]),
        row("restore of the files (normal set: .edb, .stm, logs; differential set: logs)", rs["seconds"],
            rs["bytes"], rs["logs"]),
        row("replay in hard recovery (the restored logs only, `roll_forward=False`)", rp["seconds"],
            rp["log_bytes"], rp["generations"]),
        row("restore + replay (the mail is back)", rs["seconds"] + rp["seconds"], rp["log_bytes"],
            rp["generations"]),
        row("replay in hard recovery with roll-forward (normal set's logs, then the storage group's own)",
            rf["seconds"], rf["log_bytes"], rf["generations"]),
        "",
        f"Checked after each recovery, once mounted: the Inbox holds exactly the {res['checked']:,} delivered "
        "Message-IDs (warm-up message included), each once, and a sample of "
        f"{res['read_back']:,} of them (every {SAMPLE}th and the last {SAMPLE}) reads back byte for byte.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(measure()))
