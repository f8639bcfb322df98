"""SIGKILL loop (reliability.md, method 2): acknowledged means persisted.

A writer process (tests/faults/writer_proc.py) opens the storage group (soft recovery after
the previous kill), commits transactions in a loop and prints each id after its commit
returns. The test kills it with SIGKILL at random moments — during start-up and recovery as
well as during commits, roll-overs and checkpoints — and starts it again on the same folder,
at least MIN_KILLS times. Every few kills, and at the end, the test opens the group itself and
checks, by id:

- every printed id is present (acknowledged transactions survive a kill);
- no transaction is half applied: its ``msgs`` row (first database), its ``idx`` row
  (second database) and, for every third id, its stream are all present or all absent;
- every present row, index entry and stream holds exactly what that id wrote.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from mailkeep.engine.storagegroup import StorageGroup
from tests.faults import writer_proc as wp
from tests.faults.child import ChildOutput

WRITER = Path(wp.__file__).resolve()
MIN_KILLS = 50
MAX_KILLS = 100
TIME_BUDGET = 45.0  # seconds for the kill loop (then stop at MIN_KILLS at the latest)
CHECK_EVERY = 10  # kills between verifications by the test itself
STARTUP_TIMEOUT = 20.0


class Writer(ChildOutput):
    """One writer process; its stdout is read as it comes (select), so a kill can be aimed
    at a phase: start-up, soft recovery, or commits."""

    def __init__(self, root: Path, seed: int) -> None:
        self.seed = seed
        super().__init__(
            subprocess.Popen(
                [sys.executable, str(WRITER), str(root), str(seed)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd=str(root),
            )
        )

    def kill(self) -> tuple[list[int], list[str]]:
        """SIGKILL this process (by its pid); returns (ids printed, other lines)."""
        early = self.proc.poll()
        if early is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        end = time.monotonic() + STARTUP_TIMEOUT
        while self._read(end - time.monotonic()) and time.monotonic() < end:
            pass
        self.proc.wait(timeout=STARTUP_TIMEOUT)
        assert self.proc.stderr is not None
        err = self.proc.stderr.read().decode(errors="replace")
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        assert early is None and self.proc.returncode == -signal.SIGKILL, (
            f"writer (seed {self.seed}) ended by itself with {self.proc.returncode}:\n{err}"
        )
        text = self.buf.decode()
        lines = text.split("\n")[:-1]  # a partial last line is not an acknowledgement
        ids = [int(x) for x in lines if x.isdigit()]
        return ids, [x for x in lines if not x.isdigit()]

    def reap(self) -> None:
        """Never leave our own process running (only if a check above failed)."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STARTUP_TIMEOUT)


def run_cycle(root: Path, seed: int, rng: random.Random) -> tuple[str, list[int]]:
    """Start the writer and kill it in a randomly chosen phase; returns (phase, ids)."""
    phase = rng.choices(["anytime", "recovery", "commits"], weights=[1, 2, 5])[0]
    w = Writer(root, seed)
    try:
        if phase == "anytime":  # interpreter start-up, imports, open, mount or commits
            time.sleep(rng.uniform(0.0, 0.3))
        elif phase == "recovery":  # soft recovery of the previous kill, mount, first commits
            assert w.wait_for("opening", STARTUP_TIMEOUT), f"writer (seed {seed}) never started"
            time.sleep(rng.uniform(0.0, 0.03))  # recovery takes ~20 ms here
        else:
            assert w.wait_for("ready", STARTUP_TIMEOUT), f"writer (seed {seed}) never got ready"
            time.sleep(rng.uniform(0.0, 0.3))
        ids, _other = w.kill()
    finally:
        w.reap()
    return phase, ids


def verify(root: Path, acked: set[int]) -> int:
    """Open the group (soft recovery), check every transaction; returns the rows present."""
    sg = StorageGroup.open(wp.config(str(root)))
    try:
        (e1, s1), (e2, s2) = wp.db_files(str(root))
        d1 = sg.mount(e1, s1)
        d2 = sg.mount(e2, s2)
        with sg.reader() as r:
            msgs = {row["id"]: row for row in r.scan(d1, "msgs")}
            idx = {row["id"]: row for row in r.scan(d2, "idx")}
            lost = sorted(acked - set(msgs))
            assert not lost, f"acknowledged transactions lost: {lost[:20]} ({len(lost)})"
            half = sorted(set(msgs) ^ set(idx))
            assert not half, f"transactions half applied (one database only): {half[:20]}"
            stream_ids = set()
            for i, row in msgs.items():
                size = wp.stream_size(i)
                want_sha = hashlib.sha256(wp.stream_bytes(i)).hexdigest() if size else None
                assert row == {"id": i, "subject": wp.subject(i), "stream": row["stream"],
                               "size": size, "sha": want_sha}, f"msgs row {i} differs: {row}"
                assert idx[i] == wp.expected_idx(i), f"idx row {i} differs: {idx[i]}"
                if size:
                    assert row["stream"] is not None, f"transaction {i} present without its stream"
                    with r.open_stream(d1, row["stream"]) as s:
                        assert s.readall() == wp.stream_bytes(i), f"stream of transaction {i} differs"
                    stream_ids.add(row["stream"])
                else:
                    assert row["stream"] is None
            # no stream without its row (a half-applied stream transaction)
            present = {sid for sid, *_ in d1.streams(r._conn(d1))}
            assert present == stream_ids, f"streams without their row: {sorted(present - stream_ids)[:20]}"
            by_folder = [row["id"] for row in r.scan(d2, "idx", index="by_folder", prefix=("f0",))]
            assert by_folder == sorted(i for i in idx if i % 5 == 0)
        return len(msgs)
    finally:
        sg.close()


def test_sigkill_loop(tmp_path: Path) -> None:
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    root = tmp_path / "sg"
    os.makedirs(root)
    wp.setup(str(root))
    acked: set[int] = set()
    kills = during_commits = 0
    phases: dict[str, int] = {}
    deadline = time.monotonic() + TIME_BUDGET
    while kills < MAX_KILLS and (kills < MIN_KILLS or time.monotonic() < deadline):
        assert time.monotonic() < deadline + 30, f"seed {seed}: only {kills} kills in the time budget"
        phase, ids = run_cycle(root, rng.randrange(2**32), rng)
        kills += 1
        phases[phase] = phases.get(phase, 0) + 1
        if ids:
            during_commits += 1
        assert len(ids) == len(set(ids)) and not acked & set(ids), f"seed {seed}: an id was printed twice"
        acked.update(ids)
        if kills % CHECK_EVERY == 0:
            verify(root, acked)
    present = verify(root, acked)
    assert kills >= MIN_KILLS, f"seed {seed}: {kills} kills"
    assert during_commits >= MIN_KILLS // 2, f"seed {seed}: only {during_commits} kills during commits"
    assert phases.get("recovery", 0) >= 5, f"seed {seed}: kills by phase {phases}"
    assert len(acked) >= 1000 and present >= len(acked), (seed, len(acked), present)
