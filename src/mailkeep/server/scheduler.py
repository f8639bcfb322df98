"""The server's scheduler: runs scheduled backup jobs (backup/schedule.py) when they are due.

Invariants: one job runs at a time (a backup freezes its storage group's checkpoint; two
would queue on -505 anyway); a job whose time passed while the server was down is reported
as missed (event 8021), not run late; a failing job never stops the scheduler.
"""

from __future__ import annotations

import logging
import threading
import time

from mailkeep.backup import schedule
from mailkeep.store.store import Store

log = logging.getLogger("mailkeep.scheduler")
TICK = 2.0


class Scheduler:
    def __init__(self, store: Store, data: str, *, tick: float = TICK) -> None:
        self.store = store
        self.data = data
        self.tick = tick
        self.started = time.time()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop at once: a scheduled backup still running is ended as failed (event 214/8020),
        as it would be if the server stopped under any backup agent."""
        self._stop.set()
        deadline = time.monotonic() + 120
        while self._thread.is_alive() and time.monotonic() < deadline:
            self.store.abort_backups("the server is stopping")
            self._thread.join(0.5)

    def _run(self) -> None:
        since = self.started
        while not self._stop.wait(self.tick):
            now = time.time()
            try:
                run_now, missed = schedule.due(self.data, now, since)
                for j in missed:
                    schedule.mark_missed(self.store, self.data, j, now)
                for j in run_now:
                    if self._stop.is_set():
                        break
                    try:
                        schedule.run(self.store, self.data, j.name)
                    except Exception as e:  # noqa: BLE001 - recorded as event 8020 by schedule.run
                        log.warning("scheduled job %s failed: %s", j.name, e)
            except Exception:  # noqa: BLE001 - the scheduler keeps going
                log.exception("scheduler tick failed")
            since = now
