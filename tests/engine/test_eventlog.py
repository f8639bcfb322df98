"""eventlog: the persistent, structured application event log."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from mailkeep.eventlog import LEVELS, Event, EventLog


def test_levels() -> None:
    assert LEVELS == ("information", "warning", "error")


def test_write_returns_the_event_and_appends_one_json_line(tmp_path: Path) -> None:
    p = tmp_path / "events.jsonl"
    log = EventLog(str(p))
    t0 = time.time()
    ev = log.write("ESE", 100, "information", "First Storage Group (E00) started.", sg="E00", n=3)
    assert (ev.source, ev.id, ev.level, ev.message, ev.data) == (
        "ESE", 100, "information", "First Storage Group (E00) started.", {"sg": "E00", "n": 3},
    )
    assert t0 <= ev.time <= time.time()
    lines = p.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {
        "time": ev.time, "source": "ESE", "id": 100, "level": "information",
        "message": "First Storage Group (E00) started.", "data": {"sg": "E00", "n": 3},
    }


def test_helpers_set_the_level(events: EventLog) -> None:
    assert events.info("ESE", 1, "a").level == "information"
    assert events.warning("ESE", 2, "b").level == "warning"
    assert events.error("ESE", 3, "c", error=-1018).level == "error"
    assert [(e.id, e.level, e.data) for e in events.read()] == [
        (1, "information", {}), (2, "warning", {}), (3, "error", {"error": -1018}),
    ]


def test_unknown_level_refused(events: EventLog) -> None:
    with pytest.raises(ValueError, match="unknown event level 'critical'"):
        events.write("ESE", 1, "critical", "x")
    assert list(events.read()) == []
    assert events.recent == []


def test_events_persist_across_instances(tmp_path: Path) -> None:
    p = str(tmp_path / "events.jsonl")
    EventLog(p).info("ESE", 100, "started")
    EventLog(p).info("ESE", 101, "stopped")
    again = EventLog(p)
    assert again.recent == []  # memory is per instance, the file is shared
    assert [e.id for e in again.read()] == [100, 101]


def test_file_and_folders_are_created(tmp_path: Path) -> None:
    p = tmp_path / "a" / "b" / "events.jsonl"
    log = EventLog(str(p))
    assert list(log.read()) == []  # no file yet: nothing, no error
    log.info("ESE", 1, "x")
    assert p.exists()
    assert os.stat(p).st_mode & 0o777 == 0o600


def test_memory_only_log() -> None:
    log = EventLog()
    log.info("ESE", 1, "one")
    log.error("MSExchangeIS", 9518, "two")
    assert [e.id for e in log.read()] == [1, 9518]
    assert [e.id for e in log.read(level="error")] == [9518]


def test_recent_keeps_the_last_thousand() -> None:
    log = EventLog()
    for i in range(1005):
        log.info("ESE", i, "m")
    assert len(log.recent) == 1000
    assert log.recent[0].id == 5
    assert log.recent[-1].id == 1004


def test_filters(tmp_path: Path) -> None:
    log = EventLog(str(tmp_path / "ev.jsonl"))
    log.info("ESE", 300, "recovery begins")
    log.warning("ESE", 620, "deep checkpoint")
    mid = time.time()
    time.sleep(0.01)
    log.error("ESE", 621, "too deep")
    log.info("MSExchangeIS", 9523, "mounted")
    log.error("Mailbox", 1022, "logon failure")
    assert [e.id for e in log.read(source="ese")] == [300, 620, 621]
    assert [e.id for e in log.read(source="MSEXCHANGEIS")] == [9523]
    assert [e.id for e in log.read(event_id=621)] == [621]
    assert [e.id for e in log.read(level="error")] == [621, 1022]
    assert [e.id for e in log.read(since=mid)] == [621, 9523, 1022]
    assert [e.id for e in log.read(source="ESE", level="error", since=mid)] == [621]
    assert [e.id for e in log.read(event_id=999)] == []


def test_damaged_lines_are_skipped(tmp_path: Path) -> None:
    p = tmp_path / "ev.jsonl"
    log = EventLog(str(p))
    log.info("ESE", 1, "good")
    with open(p, "a", encoding="utf-8") as f:
        f.write("{not json\n")
        f.write('{"time": 1, "source": "ESE"}\n')  # missing fields
        f.write('{"time": "soon", "source": "ESE", "id": 5, "level": "error", "message": "m"}\n')
        f.write('["a", "list"]\n')
        f.write("\n")
        f.write('{"time": 2.5, "source": "ESE", "id": "7", "level": "warning", "message": "no data"}\n')
    with open(p, "ab") as f:
        f.write(b'\xff\xfe{"broken": \n')
        f.write(b'{"time": 3, "source": "ESE", "id": 8, "level": "error", "message": "torn')  # no newline
    log.info("ESE", 9, "after")
    got = [(e.id, e.level, e.data) for e in log.read()]
    assert got == [(1, "information", {}), (7, "warning", {}), (9, "information", {})]


def test_non_json_data_is_stringified(events: EventLog) -> None:
    ev = events.info("ESE", 1, "x", path=Path("/a/b"), when=b"\x01")
    back = next(events.read())
    assert back.data == {"path": "/a/b", "when": str(b"\x01")}
    assert ev.data["path"] == Path("/a/b")  # the returned event keeps the original


def test_concurrent_writers_never_interleave(tmp_path: Path) -> None:
    p = str(tmp_path / "ev.jsonl")
    logs = [EventLog(p) for _ in range(4)]  # separate instances: only O_APPEND keeps lines whole
    body = "x" * 3000

    def writer(k: int) -> None:
        for i in range(50):
            logs[k].info(f"src{k}", i, body)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with open(p, encoding="utf-8") as f:
        # A writer that looks while another's append is under way may see an unfinished
        # last line and start its own with a newline: an empty line at worst, never a mix.
        lines = [line for line in f.read().splitlines() if line]
    assert len(lines) == 200
    assert all(json.loads(line)["message"] == body for line in lines)
    for k in range(4):
        assert [e.id for e in EventLog(p).read(source=f"src{k}")] == list(range(50))


def test_event_line_format() -> None:
    t = time.mktime((2003, 10, 21, 14, 5, 9, 0, 0, -1))
    ev = Event(t, "ESE", 621, "error", "too deep")
    assert ev.line() == "2003-10-21 14:05:09  error       ESE              621  too deep"
    info = Event(t, "MSExchangeIS", 9523, "information", "m")
    assert info.line() == "2003-10-21 14:05:09  information MSExchangeIS    9523  m"


def test_storage_group_events_reach_the_file(sg: object, events: EventLog) -> None:
    assert events.path is not None
    ids = [e.id for e in EventLog(events.path).read(source="ESE")]
    assert ids == [300, 302, 100]


def test_a_torn_last_line_does_not_swallow_the_next_event(tmp_path: Path) -> None:
    p = tmp_path / "ev.jsonl"
    log = EventLog(str(p))
    log.info("ESE", 1, "before")
    with open(p, "ab") as f:
        f.write(b'{"time": 3, "source": "ESE", "id": 2, "lev')  # a write cut short by a crash
    log.info("ESE", 3, "after")
    assert [e.id for e in EventLog(str(p)).read()] == [1, 3]
    log.info("ESE", 4, "later")
    assert p.read_text().count("\n\n") == 0  # only a torn line gets a separating newline
    assert [e.id for e in EventLog(str(p)).read()] == [1, 3, 4]
