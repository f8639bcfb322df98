"""D4 (DRILLS.md): SIGKILL the server during delivery; start it again (soft recovery).

Each round starts ``mailkeep serve`` as a subprocess on the same data folder (a free loopback
port per round), waits for its ``serve.json``, and runs three SMTP client threads sending
messages with unique Message-IDs to alice, bob or both. A Message-ID counts as acknowledged
for a recipient only when ``sendmail`` returned (250 after DATA) and did not refuse that
recipient. After a short random delay the test SIGKILLs the server (its pid only) and joins
the clients, which see connection errors. The next round starts the server again: soft
recovery of the killed one.

At the end the server is stopped with SIGTERM (exit code 0, ``serve.json`` removed), the
databases must be Clean Shutdown, and the store must hold:

- every acknowledged Message-ID in each of its recipients' Inbox exactly once;
- no Message-ID that was never sent, none in an Inbox of a user it was not sent to, and none
  twice (the clients never retry, so nothing may be delivered twice);
- nothing unacknowledged but the one message each client had in flight when the kill came.

The seed is in every failure message; ``MAILKEEP_KILL_SEED=N`` runs that seed again.
"""

from __future__ import annotations

import json
import os
import random
import signal
import smtplib
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mailkeep.directory import tasks
from mailkeep.directory.setup import open_directory
from mailkeep.engine.database import read_header
from mailkeep.engine.header import DbState
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.setup import setup_server
from mailkeep.store.store import Store

DOMAIN = "contoso.com"
USERS = ("alice", "bob")
ROUNDS = 20
CLIENTS = 3
START_TIMEOUT = 20.0  # start-up with soft recovery, until serve.json names our process
STOP_TIMEOUT = 20.0  # SIGTERM until exit; SIGKILL until reaped
SOCKET_TIMEOUT = 10.0  # every SMTP call of a client
JOIN_TIMEOUT = SOCKET_TIMEOUT + 5.0
LOAD_MIN, LOAD_MAX = 0.1, 1.0  # seconds of SMTP load before the kill
TOTAL_BUDGET = 90.0  # the whole drill (about 20 s on a quiet machine)
STATE = "serve.json"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def message(mid: str, rcpts: list[str]) -> bytes:
    return (f"From: sender@example.org\r\nTo: {', '.join(rcpts)}\r\nSubject: d4 {mid}\r\n"
            f"Message-ID: {mid}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\n\r\nbody of {mid}\r\n").encode()


class Server:
    """One ``mailkeep serve`` process we started; only its own pid is ever signalled."""

    def __init__(self, data: str, logdir: Path, name: str) -> None:
        self.data = data
        self.port = free_port()
        self.out = open(logdir / f"{name}.out", "wb")  # noqa: SIM115 - closed in close()
        self.err_path = logdir / f"{name}.err"
        self.err = open(self.err_path, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailkeep", "--data", data, "serve", "--smtp", str(self.port),
             "--pop3", str(free_port()), "--imap", str(free_port()), "--http", str(free_port())],
            stdin=subprocess.DEVNULL, stdout=self.out, stderr=self.err, cwd=data,
        )

    def stderr(self) -> str:
        self.err.flush()
        return self.err_path.read_text(errors="replace")[-4000:]

    def wait_listening(self, tag: str) -> None:
        """Wait for serve.json naming this process (a killed predecessor leaves its own behind)."""
        path = os.path.join(self.data, STATE)
        end = time.monotonic() + START_TIMEOUT
        while time.monotonic() < end:
            rc = self.proc.poll()
            assert rc is None, f"{tag}: serve exited with {rc} before listening:\n{self.stderr()}"
            try:
                with open(path, encoding="utf-8") as f:
                    st = json.load(f)
            except (FileNotFoundError, json.JSONDecodeError):
                st = None
            if st and st.get("pid") == self.proc.pid:
                assert st.get("smtp") == self.port and st.get("bind") == "127.0.0.1", (tag, st)
                return
            time.sleep(0.02)
        pytest.fail(f"{tag}: serve did not write {STATE} within {START_TIMEOUT}s:\n{self.stderr()}")

    def sigkill(self, tag: str) -> None:
        rc = self.proc.poll()
        assert rc is None, f"{tag}: serve ended by itself with {rc} before the kill:\n{self.stderr()}"
        os.kill(self.proc.pid, signal.SIGKILL)
        assert self.proc.wait(timeout=STOP_TIMEOUT) == -signal.SIGKILL, tag

    def sigterm(self, tag: str) -> int:
        os.kill(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout=STOP_TIMEOUT)

    def close(self) -> None:
        """Never leave our own process running (only when a check failed)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT)
        self.out.close()
        self.err.close()


@dataclass
class Ledger:
    """What the clients sent and what the server acknowledged (shared by the threads)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sent: dict[str, set[str]] = field(default_factory=dict)  # Message-ID -> users addressed
    acked: dict[str, set[str]] = field(default_factory=dict)  # Message-ID -> users acknowledged
    last: dict[tuple[int, int], str] = field(default_factory=dict)  # (round, client) -> last Message-ID sent
    refused: set[str] = field(default_factory=set)  # Message-IDs the server answered with 4xx/5xx
    refusals: Counter[str] = field(default_factory=Counter)  # SMTP refusals while the server ran
    ends: Counter[str] = field(default_factory=Counter)  # how each client session ended


def client(port: int, round_no: int, no: int, seed: int, stop: threading.Event, ledger: Ledger) -> None:
    rng = random.Random(f"{seed}.{round_no}.{no}")
    try:
        smtp = smtplib.SMTP("127.0.0.1", port, timeout=SOCKET_TIMEOUT)
    except OSError as e:
        with ledger.lock:
            ledger.ends[f"connect: {type(e).__name__}"] += 1
        return
    i = 0
    try:
        while not stop.is_set():
            users = rng.choice([["alice"], ["bob"], ["alice", "bob"]])
            mid = f"<d4.{round_no}.{no}.{i}@example.org>"
            i += 1
            rcpts = [f"{u}@{DOMAIN}" for u in users]
            with ledger.lock:
                ledger.sent[mid] = set(users)
                ledger.last[(round_no, no)] = mid
            try:
                refused = smtp.sendmail("sender@example.org", rcpts, message(mid, rcpts))
            except (smtplib.SMTPRecipientsRefused, smtplib.SMTPDataError, smtplib.SMTPSenderRefused) as e:
                with ledger.lock:  # the server answered (4xx/5xx): nothing acknowledged
                    ledger.refusals[type(e).__name__] += 1
                    ledger.refused.add(mid)
                continue
            ok = {u for u, a in zip(users, rcpts, strict=True) if a not in refused}
            with ledger.lock:
                if refused:
                    ledger.refusals["partly refused"] += 1
                    ledger.refused.add(mid)
                if ok:
                    ledger.acked[mid] = ok
        with ledger.lock:
            ledger.ends["stopped"] += 1
    except (smtplib.SMTPException, OSError) as e:  # the kill: the connection is gone
        with ledger.lock:
            ledger.ends[type(e).__name__] += 1
    finally:
        try:
            smtp.close()
        except OSError:
            pass


def run_round(data: str, logdir: Path, round_no: int, rng: random.Random, seed: int, ledger: Ledger) -> int:
    """One round of load and a kill; returns the number acknowledged in it."""
    tag = f"seed {seed}, round {round_no}"
    srv = Server(data, logdir, f"round{round_no}")
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        srv.wait_listening(tag)
        with ledger.lock:
            before = len(ledger.acked)
        threads = [threading.Thread(target=client, args=(srv.port, round_no, n, seed, stop, ledger), daemon=True)
                   for n in range(CLIENTS)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(LOAD_MIN, LOAD_MAX))
        srv.sigkill(tag)
        stop.set()
        for t in threads:
            t.join(JOIN_TIMEOUT)
            assert not t.is_alive(), f"{tag}: a client did not finish within {JOIN_TIMEOUT}s"
        with ledger.lock:
            return len(ledger.acked) - before
    finally:
        stop.set()
        srv.close()


def test_d4_sigkill_server_under_smtp_load(tmp_path: Path) -> None:
    started = time.monotonic()
    seed = int(os.environ.get("MAILKEEP_KILL_SEED") or int.from_bytes(os.urandom(4), "little"))
    rng = random.Random(seed)
    data = str(tmp_path / "data")
    logdir = tmp_path / "logs"
    logdir.mkdir()
    res = setup_server(data, domain=DOMAIN, server="EX1")
    d = open_directory(data)
    try:
        for u in USERS:
            d.add_user(u, password_text="Passw0rd!")
            tasks.mailbox_enable(d, u, res.mailbox_store.dn)
    finally:
        d.close()

    ledger = Ledger()
    per_round = [run_round(data, logdir, r, rng, seed, ledger) for r in range(ROUNDS)]

    # soft recovery of the last kill, then a clean stop
    tag = f"seed {seed}, final start"
    srv = Server(data, logdir, "final")
    try:
        srv.wait_listening(tag)
        mid = "<d4.final@example.org>"
        with smtplib.SMTP("127.0.0.1", srv.port, timeout=SOCKET_TIMEOUT) as smtp:
            rcpts = [f"{u}@{DOMAIN}" for u in USERS]
            ledger.sent[mid] = set(USERS)
            assert smtp.sendmail("sender@example.org", rcpts, message(mid, rcpts)) == {}, tag
            ledger.acked[mid] = set(USERS)
        rc = srv.sigterm(tag)
        assert rc == 0, f"{tag}: serve exited with {rc} on SIGTERM:\n{srv.stderr()}"
    finally:
        srv.close()
    assert not os.path.exists(os.path.join(data, STATE)), f"{tag}: {STATE} left behind after a clean stop"

    # eseutil /mh: every database file Clean Shutdown after the clean stop
    mdb = os.path.join(data, "mdbdata")
    edbs = sorted(os.path.join(mdb, n) for n in os.listdir(mdb) if n.endswith(".edb"))
    assert os.path.join(mdb, "priv1.edb") in edbs, edbs
    for edb in edbs:
        state = read_header(edb)[0].state
        assert state == DbState.CLEAN, f"seed {seed}: {edb} is {state} after a clean stop"

    store = Store.open(data)
    try:
        store.mount_intended()
        present: dict[str, Counter[str]] = {}
        for u in USERS:
            mb = open_mailbox(store, u)
            present[u] = Counter(m.message_id for m in mb.messages("INBOX"))
    finally:
        store.close()

    for u in USERS:
        twice = sorted(x for x, n in present[u].items() if n > 1)
        assert not twice, f"seed {seed}, {u}: delivered more than once: {twice[:10]}"
        unknown = sorted(x for x in present[u] if x not in ledger.sent)
        assert not unknown, f"seed {seed}, {u}: never sent: {unknown[:10]}"
        stray = sorted(x for x in present[u] if u not in ledger.sent[x])
        assert not stray, f"seed {seed}, {u}: not addressed to {u}: {stray[:10]}"
        # beyond what was acknowledged only the message each client had in flight at the kill
        # (committed, its 250 never read) or one the server refused (4xx after a partial commit)
        in_flight = set(ledger.last.values()) | ledger.refused
        extra = sorted(x for x in present[u] if u not in ledger.acked.get(x, set()) and x not in in_flight)
        assert not extra, f"seed {seed}, {u}: stored though neither acknowledged nor in flight: {extra[:10]}"
        lost = sorted(x for x, users in ledger.acked.items() if u in users and present[u][x] != 1)
        assert not lost, f"seed {seed}, {u}: acknowledged but not in the Inbox: {lost[:10]} ({len(lost)})"

    acked = sum(len(v) for v in ledger.acked.values())
    stored = sum(sum(c.values()) for c in present.values())
    elapsed = time.monotonic() - started
    print(f"seed {seed}: {ROUNDS} rounds, acknowledged per round {per_round}, sent {len(ledger.sent)}, "
          f"acknowledged deliveries {acked}, stored {stored}, refusals {dict(ledger.refusals)}, "
          f"client ends {dict(ledger.ends)}, {elapsed:.1f}s")
    assert sum(1 for n in per_round if n > 0) >= ROUNDS // 2, (
        f"seed {seed}: too few rounds had load acknowledged before the kill: {per_round}")
    assert elapsed < TOTAL_BUDGET, f"seed {seed}: the drill took {elapsed:.1f}s"
