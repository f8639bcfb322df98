"""The application event log: persistent, structured, shared by every layer.

Invariant: an event, once :meth:`EventLog.write` returns, is in the file (written with one
``O_APPEND`` write of one JSON line, so concurrent writers never interleave inside a line).
A damaged line is skipped when reading, never fatal: the event log must not stop the server.
IDs the guide names keep their meaning; docs/events.md lists every ID.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

LEVELS = ("information", "warning", "error")


@dataclass
class Event:
    time: float
    source: str
    id: int
    level: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.time))
        return f"{stamp}  {self.level:<11} {self.source:<14} {self.id:>5}  {self.message}"


class EventLog:
    """Events kept in memory always, and appended to ``path`` when one is given."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self.recent: list[Event] = []

    def write(
        self, source: str, event_id: int, level: str, message: str, **data: Any
    ) -> Event:
        if level not in LEVELS:
            raise ValueError(f"unknown event level {level!r}")
        ev = Event(time.time(), source, event_id, level, message, data)
        raw = (json.dumps(asdict(ev), default=str) + "\n").encode()
        with self._lock:
            self.recent.append(ev)
            del self.recent[:-1000]
            if self.path:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
                try:
                    end = os.fstat(fd).st_size
                    if end and os.pread(fd, 1, end - 1) != b"\n":
                        raw = b"\n" + raw  # a torn last line must not swallow this event
                    os.write(fd, raw)
                finally:
                    os.close(fd)
        return ev

    def info(self, source: str, event_id: int, message: str, **data: Any) -> Event:
        return self.write(source, event_id, "information", message, **data)

    def warning(self, source: str, event_id: int, message: str, **data: Any) -> Event:
        return self.write(source, event_id, "warning", message, **data)

    def error(self, source: str, event_id: int, message: str, **data: Any) -> Event:
        return self.write(source, event_id, "error", message, **data)

    def read(
        self,
        *,
        source: str | None = None,
        event_id: int | None = None,
        level: str | None = None,
        since: float | None = None,
    ) -> Iterator[Event]:
        """Events from the file (or memory, without a file), oldest first, filtered."""
        for ev in self._all():
            if source is not None and ev.source.lower() != source.lower():
                continue
            if event_id is not None and ev.id != event_id:
                continue
            if level is not None and ev.level != level:
                continue
            if since is not None and ev.time < since:
                continue
            yield ev

    def _all(self) -> Iterator[Event]:
        if not self.path:
            yield from list(self.recent)
            return
        try:
            f = open(self.path, encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return
        with f:
            for raw in f:
                try:
                    d = json.loads(raw)
                    yield Event(
                        float(d["time"]), str(d["source"]), int(d["id"]), str(d["level"]),
                        str(d["message"]), dict(d.get("data") or {}),
                    )
                except (ValueError, KeyError, TypeError):
                    continue
