"""The load driver every throughput benchmark shares: N threads, one clock, bounded work."""

from __future__ import annotations

import itertools
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any


def drive(
    threads: int, cap: int, seconds: float, setup: Callable[[int], Any], one: Callable[[Any, int, int], None],
    teardown: Callable[[Any], None] | None = None,
) -> dict[str, float]:
    """``threads`` workers until ``seconds`` pass or ``cap`` operations are taken. The clock
    (wall and process CPU time) starts once every thread's setup is done."""
    tickets = itertools.count()
    clock = {"start": 0.0, "deadline": 0.0, "cpu": 0.0}

    def start_clock() -> None:
        clock["cpu"] = time.process_time()
        clock["start"] = time.perf_counter()
        clock["deadline"] = clock["start"] + seconds

    barrier = threading.Barrier(threads + 1, action=start_clock)
    done = [0] * threads
    failures: list[BaseException] = []

    def worker(i: int) -> None:
        ctx = None
        try:
            ctx = setup(i)
            barrier.wait()
            n = 0
            deadline = clock["deadline"]
            while time.perf_counter() < deadline and next(tickets) < cap:
                one(ctx, i, n)
                n += 1
            done[i] = n
        except threading.BrokenBarrierError:
            pass
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            failures.append(e)
            barrier.abort()
        finally:
            if teardown is not None and ctx is not None:
                teardown(ctx)

    pool = [threading.Thread(target=worker, args=(i,), name=f"worker-{i}") for i in range(threads)]
    for t in pool:
        t.start()
    try:
        barrier.wait()
    except threading.BrokenBarrierError:
        pass
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - clock["start"]
    cpu = time.process_time() - clock["cpu"]
    if failures:
        raise failures[0]
    return {"operations": sum(done), "seconds": elapsed, "cpu_seconds": cpu}


def sqlite_full(path: str) -> sqlite3.Connection:
    """The baseline every benchmark compares with: SQLite in WAL mode with synchronous=FULL,
    durable when COMMIT returns (checked, not assumed)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=60, check_same_thread=False)
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    conn.execute("PRAGMA synchronous = FULL")
    sync = conn.execute("PRAGMA synchronous").fetchone()[0]
    if mode != "wal" or sync != 2:
        raise RuntimeError(f"SQLite baseline is not WAL + synchronous=FULL ({mode}, {sync})")
    return conn
