"""The store's periodic agents: the Mailbox Cleanup Agent, and the system attendant's
tasks that need its mailbox (the guide: "A system attendant task will run that requires
delivery of a message to the system attendant mailbox").

Invariant: one background thread per store; each run is bounded (one pass over the
mounted databases) and its failures are logged as events, never raised into the service;
:meth:`Maintenance.stop` returns only after the thread has ended. The same thread runs the
full-text indexes' incremental populations, each at its database's update interval
(``fti.update_due``, looked at every ``fti_tick`` seconds).
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from mailkeep.store import agents, attendant, fti
from mailkeep.store.errors import StoreError

if TYPE_CHECKING:
    from mailkeep.store.store import Store

DEFAULT_INTERVAL = 15 * 60.0  # Exchange runs its cleanup agent on a schedule; 15 minutes here
FTI_TICK = 60.0  # how often the full-text indexes' update intervals are looked at


class Maintenance:
    def __init__(self, store: Store, *, interval: float = DEFAULT_INTERVAL, system_attendant: bool = True,
                 fti_tick: float = FTI_TICK) -> None:
        if interval <= 0 or fti_tick <= 0:
            raise ValueError("the maintenance interval must be positive")
        self.store = store
        self.interval = interval
        self.fti_tick = fti_tick
        self.system_attendant = system_attendant
        self.runs = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> agents.CleanupReport:
        rep = agents.CleanupReport()
        try:
            rep = agents.cleanup(self.store)
        except Exception as e:  # noqa: BLE001 - an agent failure is an event, not a service failure
            self.store.events.error("MSExchangeIS Mailbox Store", 9540, f"Mailbox Cleanup Agent failed: {e}")
        if self.system_attendant:
            try:
                attendant.run_task(self.store)
            except StoreError:
                pass  # logged by the attendant (event 1022) when it is the tombstone case
            except Exception as e:  # noqa: BLE001
                self.store.events.error("MSExchangeIS Mailbox Store", 9541, f"System attendant task failed: {e}")
        self.runs += 1
        return rep

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="mailkeep-maintenance", daemon=True)
        self._thread.start()

    def run_fti(self) -> list[fti.PopulateReport]:
        try:
            return fti.update_due(self.store)
        except Exception as e:  # noqa: BLE001 - update_due logs per database; this is the unexpected
            self.store.events.error(fti.SOURCE, fti.EV_FAILED, f"Full-text index update failed: {e}")
            return []

    def _loop(self) -> None:
        due = time.monotonic() + self.interval
        while not self._stop.wait(max(0.0, min(self.fti_tick, due - time.monotonic()))):
            if time.monotonic() >= due:
                self.run_once()
                due = time.monotonic() + self.interval
            self.run_fti()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
