"""The periodic agents run on their own, and stop cleanly."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from mailkeep.directory import tasks
from mailkeep.store import agents, delivery
from mailkeep.store.maintenance import Maintenance
from mailkeep.store.setup import SetupResult
from mailkeep.store.store import Store
from tests.store.conftest import message, source


def test_cleanup_runs_periodically_and_stops(store: Store, server: SetupResult,
                                             add_mailbox_user: Callable[..., str]) -> None:
    addr = add_mailbox_user("carol")
    assert delivery.deliver(store, source(message("<c1@x>")), [addr]).of(addr).status == "delivered"
    tasks.remove_exchange_attributes(store.directory, "carol")
    before = store.clock()
    m = Maintenance(store, interval=0.05)
    m.start()
    deadline = time.monotonic() + 20
    while m.runs < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    m.stop()
    assert m.runs >= 2
    rows = [x for x in agents.list_mailboxes(store) if x.account == "carol"]
    assert [(x.state, x.messages) for x in rows] == [("disconnected", 1)]
    sa = [x for x in agents.list_mailboxes(store) if x.kind == "system-attendant"]
    # each run's task reached the system attendant mailbox, which keeps only the latest message
    assert len(sa) == 1 and sa[0].messages == 1 and (sa[0].latest_item or 0) > before
    runs = m.runs
    time.sleep(0.2)
    assert m.runs == runs  # stopped means stopped


def test_interval_must_be_positive(store: Store) -> None:
    with pytest.raises(ValueError, match="positive"):
        Maintenance(store, interval=0)
