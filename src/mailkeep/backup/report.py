"""Backup, verify and restore reports in the layout of the guide's example backup log.

Administrators compare these with what they know from Windows Backup, so the field names,
their order and the date and duration forms follow the guide's example exactly
("Backup started on 3/11/2004 at 5:31 PM.", "Time:  16 minutes and  55 seconds"). Reports
append to one log file per machine, sections separated by a line of dashes, as Backup did.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

RULE = "-" * 22


def state_dir() -> str:
    """Per-machine backup state (catalogs, the report log): ``$MAILKEEP_STATE_DIR``, else
    ``$XDG_DATA_HOME/mailkeep``, else ``~/.local/share/mailkeep``."""
    d = os.environ.get("MAILKEEP_STATE_DIR")
    if not d:
        base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
        d = os.path.join(base, "mailkeep")
    os.makedirs(d, mode=0o700, exist_ok=True)
    return d


def log_path() -> str:
    return os.path.join(state_dir(), "backup.log")


def when(t: float) -> str:
    """3/11/2004 at 5:31 PM"""
    lt = time.localtime(t)
    hour = lt.tm_hour % 12 or 12
    return f"{lt.tm_mon}/{lt.tm_mday}/{lt.tm_year} at {hour}:{lt.tm_min:02d} {'AM' if lt.tm_hour < 12 else 'PM'}"


def duration(seconds: float) -> str:
    """'1 second', '34 seconds', '1 minute and  18 seconds', '16 minutes and  55 seconds'"""
    s = max(1, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)

    def unit(n: int, name: str) -> str:
        return f"{n} {name}{'' if n == 1 else 's'}"

    if h:
        return f"{unit(h, 'hour')}, {unit(m, 'minute')} and  {unit(sec, 'second')}"
    if m:
        return f"{unit(m, 'minute')} and  {unit(sec, 'second')}"
    return unit(sec, "second")


def number(n: int) -> str:
    return f"{n:,}"


def append(lines: Iterable[str], path: str | None = None) -> str:
    """Append a section (with its rule) to the report log; returns the text written."""
    text = "\n".join([RULE, *lines]) + "\n"
    p = path or log_path()
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        f.write(text)
    return text


def sections(path: str | None = None) -> list[str]:
    """The sections of the report log, oldest first."""
    p = path or log_path()
    try:
        with open(p, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return []
    parts = [s.strip("\n") for s in text.split(RULE + "\n")]
    return [p for p in parts if p.strip()]
