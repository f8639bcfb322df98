"""`mailkeep isinteg`: the store's logical integrity checks with isinteg's switches.

    mailkeep isinteg [-s SERVER] -db NAME [-fix] [-verbose] [-l LOGFILE] -test alltests|TEST[,TEST...]

Switches are case-insensitive (``-FIX`` = ``-fix``; ``/fix`` works too). The database must be
dismounted (``mailkeep db dismount NAME``). The output (with every finding) is appended to
``LOGFILE``, by default ``isinteg.pri`` (mailbox store) or ``isinteg.pub`` (public folder
store) in the current folder, as Exchange's isinteg does. Exit status: 0 when no error
remains, 1 when errors were found and not fixed (or isinteg could not run), 2 for a wrong
command line.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TextIO

from mailkeep.directory.backend import DirectoryError
from mailkeep.engine import errors as ese
from mailkeep.engine.errors import EseError
from mailkeep.store import isinteg
from mailkeep.store.server import ConfigError
from mailkeep.store.store import Store

USAGE = (
    "usage: mailkeep isinteg [-s SERVER] -db NAME [-fix] [-verbose] [-l LOGFILE] -test alltests|TEST[,TEST...]\n"
    f"tests: {', '.join(isinteg.TESTS)}; groups: {', '.join(isinteg.GROUPS)}"
)
VALUED = ("s", "db", "l", "test")
FLAGS = ("fix", "verbose")


class UsageError(Exception):
    pass


@dataclass
class Args:
    server: str | None = None
    db: str | None = None
    fix: bool = False
    verbose: bool = False
    log: str | None = None
    tests: list[str] = field(default_factory=list)


def parse(argv: Sequence[str]) -> Args:
    args = Args()
    words = list(argv)
    i = 0
    while i < len(words):
        word = words[i]
        name = word[1:].lower() if word[:1] in ("-", "/") and len(word) > 1 else None
        i += 1
        if name in FLAGS:
            setattr(args, name, True)
            continue
        if name not in VALUED:
            raise UsageError(f"unknown switch {word!r}" if name else f"unexpected argument {word!r}")
        if i >= len(words) or words[i].startswith("-"):
            raise UsageError(f"{word} needs a value")
        value = words[i]
        i += 1
        if name == "test":
            while value.endswith(",") and i < len(words) and not words[i].startswith("-"):
                value += words[i]  # "-test folder, message" as the shell split it
                i += 1
            args.tests.extend(t for t in value.split(",") if t.strip())
        else:
            setattr(args, {"s": "server", "db": "db", "l": "log"}[name], value)
    return args


def main(argv: Sequence[str], *, data: str, out: TextIO | None = None, err: TextIO | None = None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        args = parse(argv)
        if not args.tests:
            raise UsageError("give the tests to run: -test alltests or -test TEST[,TEST...]")
        isinteg.expand_tests(args.tests)
    except (UsageError, isinteg.IsintegError) as e:
        print(f"mailkeep isinteg: {e}\n{USAGE}", file=err)
        return 2
    try:
        store = Store.open(data)
    except EseError as e:
        print(f"mailkeep isinteg: {_in_use(data) if e.number == ese.FileAccessDenied else e}", file=err)
        return 1
    except (ConfigError, DirectoryError, OSError) as e:
        print(f"mailkeep isinteg: {e}", file=err)
        return 1
    with store:
        return _run(store, args, out, err)


def _in_use(data: str) -> str:
    return (f"the data folder {os.path.abspath(data)} is in use by another running Mailkeep process (for example "
            "'mailkeep serve'); isinteg needs the database dismounted and its storage group free: stop that "
            "process (or dismount the database through it and stop it) and run isinteg again")


def _run(store: Store, args: Args, out: TextIO, err: TextIO) -> int:
    name = store.server.name
    if args.server is not None and args.server.lower() != name.lower():
        print(f"mailkeep isinteg: -s {args.server}: this data folder is server {name}, not {args.server}", file=err)
        return 2
    if not args.db:
        names = "; ".join(d.path_name for d in store.server.databases()) or "none"
        print(f"mailkeep isinteg: choose the database with -db NAME (databases of {name}: {names})", file=err)
        return 2
    try:
        report = isinteg.run(store, args.db, args.tests, fix=args.fix)
    except isinteg.IsintegError as e:
        print(f"mailkeep isinteg: {e}", file=err)
        return 2 if e.usage else 1
    except (ConfigError, DirectoryError, EseError) as e:
        print(f"mailkeep isinteg: {e}", file=err)
        return 1
    for line in report.lines(verbose=args.verbose):
        print(line, file=out)
    public = store.server.database(args.db).public
    _append_log(args.log or ("isinteg.pub" if public else "isinteg.pri"), args, report, err)
    return 1 if report.unfixed else 0


def _append_log(path: str, args: Args, report: isinteg.IsintegReport, err: TextIO) -> None:
    """The whole output, every finding included, after a line saying when and what ran."""
    server = f"-s {args.server} " if args.server else ""
    switches = f"{server}-db {args.db}{' -fix' if args.fix else ''} -test {','.join(args.tests)}"
    lines = [f"---- {datetime.now().isoformat(timespec='seconds')} mailkeep isinteg {switches}",
             *report.lines(verbose=True), ""]
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    except OSError as e:
        print(f"mailkeep isinteg: could not append to the log {os.path.abspath(path)}: {e}", file=err)
