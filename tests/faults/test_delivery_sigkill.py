"""SIGKILL during deliveries: an acknowledged delivery is in the mailbox, exactly once.

A delivery process (tests/faults/delivery_proc.py) opens the store (soft recovery after the
previous kill) and delivers messages to two recipients one after another, printing each
Message-ID only after :func:`deliver` reported it delivered. The test kills it with SIGKILL
at random moments — during start-up and recovery as well as during deliveries — for ROUNDS
rounds, then opens the store itself (soft recovery) and checks, for each recipient:

- every acknowledged Message-ID is in the Inbox exactly once, with exactly the bytes sent
  (line ends normalised to CRLF);
- nothing else is there but the one delivery a round may have committed without printing
  it (the one in flight when the kill came): per round the Message-IDs present are the
  first ``acked`` or ``acked + 1`` of that round;
- both recipients hold the same messages (one transaction for both), and the Inbox's
  message count matches its rows.

The seed is in every failure message; ``MAILKEEP_KILL_SEED=N`` runs that seed again.
"""

from __future__ import annotations

import io
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from mailkeep.directory import tasks
from mailkeep.store import delivery
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.setup import setup_server
from mailkeep.store.store import Store
from tests.faults import delivery_proc as dp
from tests.faults.child import ChildOutput

PROC = Path(dp.__file__).resolve()
ROUNDS = 12
COUNT = 3000  # deliveries a round may make at most (a kill normally comes long before)
STARTUP_TIMEOUT = 30.0
MAX_RUN = 1.0  # seconds of deliveries before the kill, at most
CHECK_EVERY = 4  # rounds between verifications by the test itself


class Deliverer(ChildOutput):
    """One delivery process, its stdout read as it comes."""

    def __init__(self, data: str, round_no: int) -> None:
        self.round_no = round_no
        super().__init__(
            subprocess.Popen(
                [sys.executable, str(PROC), data, str(round_no), str(COUNT)],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=data,
            )
        )

    def kill(self) -> tuple[list[str], bool]:
        """SIGKILL this process (by its pid) unless it already finished all its deliveries;
        returns (Message-IDs acknowledged, whether it was killed)."""
        done = self.proc.poll() is not None
        if not done:
            os.kill(self.proc.pid, signal.SIGKILL)
        end = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < end and self._read(end - time.monotonic()):
            pass
        self.proc.wait(timeout=STARTUP_TIMEOUT)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode(errors="replace")
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        lines = self.buf.decode().split("\n")[:-1]  # a partial last line is no acknowledgement
        if done:
            assert self.proc.returncode == 0 and lines[-1:] == ["done"], (
                f"round {self.round_no}: the delivery process ended with {self.proc.returncode}:\n{err}")
        else:
            assert self.proc.returncode == -signal.SIGKILL, (
                f"round {self.round_no}: the delivery process ended by itself with {self.proc.returncode}:\n{err}")
        bad = [x for x in lines if x.startswith("FAILED")]
        assert not bad, f"round {self.round_no}: {bad}\n{err}"
        return [x for x in lines if x.startswith("<")], not done

    def reap(self) -> None:
        """Never leave our own process running (only when a check above failed)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STARTUP_TIMEOUT)


def run_round(data: str, round_no: int, rng: random.Random, tag: str) -> tuple[str, list[str]]:
    phase = rng.choices(["startup", "recovery", "deliveries"], weights=[1, 1, 4])[0]
    d = Deliverer(data, round_no)
    try:
        if phase == "startup":  # interpreter start-up, imports, opening the directory
            time.sleep(rng.uniform(0.0, 0.4))
        elif phase == "recovery":  # soft recovery of the previous kill, mounting
            assert d.wait_for("opening", STARTUP_TIMEOUT), f"{tag}, round {round_no}: never started"
            time.sleep(rng.uniform(0.0, 0.15))
        else:
            assert d.wait_for("ready", STARTUP_TIMEOUT), f"{tag}, round {round_no}: never got ready"
            time.sleep(rng.uniform(0.05, MAX_RUN))
        ids, _killed = d.kill()
    finally:
        d.reap()
    return phase, ids


def verify(data: str, acked: dict[int, list[str]], *, read_all: bool, tag: str) -> int:
    """Open the store (soft recovery) and check both mailboxes; returns the messages present."""
    with Store.open(data, log_file_size=dp.LOG_SIZE) as store:
        store.mount_intended()
        present: dict[str, list[str]] = {}
        for user in dp.RECIPIENTS:
            mb = open_mailbox(store, user)
            msgs = mb.messages("INBOX")
            assert mb.folder("INBOX").messages == len(msgs), tag
            ids = [m.message_id for m in msgs]
            twice = sorted(x for x, n in Counter(ids).items() if n > 1)
            assert not twice, f"{tag}, {user}: delivered more than once: {twice[:10]}"
            present[user] = ids
            by_round: dict[int, set[int]] = {}
            for x in ids:
                assert x.startswith("<kill.") and x.endswith("@example.org>"), f"{tag}, {user}: unexpected {x!r}"
                r, i = (int(v) for v in x[len("<kill."):-len("@example.org>")].split("."))
                by_round.setdefault(r, set()).add(i)
            for r in set(by_round) | set(acked):
                have, n = by_round.get(r, set()), len(acked.get(r, []))
                assert acked.get(r, []) == [dp.message_id(r, i) for i in range(n)], f"{tag}: printed out of order"
                assert have in (set(range(n)), set(range(n + 1))), (
                    f"{tag}, {user}, round {r}: {n} acknowledged, present {sorted(have)[:5]}..{sorted(have)[-5:]}"
                    f" ({len(have)}); lost: {sorted(set(range(n)) - have)[:10]}")
            if read_all:
                for m in msgs:
                    r, i = (int(v) for v in m.message_id[len("<kill."):-len("@example.org>")].split("."))
                    assert mb.read_message("INBOX", m.uid) == dp.stored_message(r, i), (tag, m.message_id)
        assert sorted(present["alice"]) == sorted(present["bob"]), f"{tag}: the two recipients differ"
        return len(present["alice"])


def test_sigkill_during_deliveries(tmp_path: Path) -> None:
    seed = int(os.environ.get("MAILKEEP_KILL_SEED") or int.from_bytes(os.urandom(4), "little"))
    rng = random.Random(seed)
    data = str(tmp_path / "data")
    r = setup_server(data, domain=dp.DOMAIN, organization="Organization", admin_group="AG1", server="Exchange1",
                     log_file_size=dp.LOG_SIZE)
    with Store.open(data, log_file_size=dp.LOG_SIZE) as store:
        store.mount_intended()
        for u in dp.RECIPIENTS:
            store.directory.add_user(u, password_text="Passw0rd!")
            tasks.mailbox_enable(store.directory, u, r.mailbox_store.dn)
    acked: dict[int, list[str]] = {}
    phases: Counter[str] = Counter()
    for round_no in range(ROUNDS):
        phase, ids = run_round(data, round_no, rng, f"seed {seed}")
        phases[phase] += 1
        acked[round_no] = ids
        if (round_no + 1) % CHECK_EVERY == 0:
            verify(data, acked, read_all=False, tag=f"seed {seed}, after round {round_no}")
    total = sum(len(v) for v in acked.values())
    present = verify(data, acked, read_all=True, tag=f"seed {seed}")
    print(f"seed {seed}: phases {dict(phases)}, acknowledged {total}, present {present}")
    assert total <= present <= total + ROUNDS, (seed, total, present)
    assert total > 0, f"seed {seed}: no delivery was acknowledged in {ROUNDS} rounds ({dict(phases)})"
    # the store still takes mail after all this
    with Store.open(data, log_file_size=dp.LOG_SIZE) as store:
        store.mount_intended()
        rep = delivery.deliver(store, io.BytesIO(dp.raw_message(ROUNDS, 0)), [f"alice@{dp.DOMAIN}"])
        assert [o.status for o in rep.outcomes] == [delivery.DELIVERED], (seed, rep.outcomes)
