"""`mailkeep events`: the application event log, filtered."""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from datetime import datetime

from mailkeep.eventlog import EventLog


def events_path(data: str) -> str:
    return os.path.join(data, "events.jsonl")


def parse_since(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return datetime.fromisoformat(text).timestamp()


def main(ns: argparse.Namespace, *, data: str) -> int:
    try:
        since = parse_since(ns.since)
    except ValueError:
        print(f"mailkeep events: --since {ns.since!r} is neither an ISO time nor a number of seconds")
        return 2
    log = EventLog(events_path(data))
    for ev in log.read(source=ns.source, event_id=ns.id, level=ns.level, since=since):
        print(json.dumps(asdict(ev)) if ns.json else ev.line())
    return 0
