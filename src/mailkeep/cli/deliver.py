"""`mailkeep deliver [-f SENDER] RECIPIENT... < MESSAGE`: a local delivery agent.

An MTA (Postfix ``pipe``, Exim ``pipe`` transport) hands Mailkeep one message on standard
input. Exit codes follow sysexits.h, which those MTAs understand:

- 0: delivered to every recipient (durable before the exit);
- 67 EX_NOUSER: an unknown recipient (and nothing temporary);
- 65 EX_DATAERR: the message can never be stored (e.g. empty);
- 75 EX_TEMPFAIL: retry later (dismounted database, storage group busy, directory
  unreachable, disk full);
- 78 EX_CONFIG: no server in the data folder; 64 EX_USAGE: wrong switches.

With several recipients a temporary failure for one makes the MTA retry them all; those
that already have the message get no second copy (the store suppresses a delivery whose
Message-ID and bytes are already in the mailbox). An unknown recipient among known ones
makes the MTA bounce the message for all of them, so one recipient per delivery is still the
clearest setup (Postfix: ``mailkeep_destination_recipient_limit = 1``).
"""

from __future__ import annotations

import sys
from typing import BinaryIO, TextIO

from mailkeep.directory.backend import DirectoryError
from mailkeep.engine.errors import EseError
from mailkeep.store import delivery
from mailkeep.store.errors import StoreError
from mailkeep.store.server import ConfigError
from mailkeep.store.store import Store

EX_OK, EX_USAGE, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, EX_CONFIG = 0, 64, 65, 67, 75, 78
LOCK_WAIT = 30.0  # seconds to wait for a storage group another delivery holds

USAGE = "usage: mailkeep deliver [-f SENDER] RECIPIENT... < MESSAGE"


def parse(argv: list[str]) -> tuple[str, list[str]]:
    sender = ""
    rcpts: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("-f", "-r", "--from"):
            if i + 1 >= len(argv):
                raise ValueError(f"{a} needs a sender address")
            sender = argv[i + 1]
            i += 2
            continue
        if a.startswith("-f") and len(a) > 2:
            sender = a[2:]
        elif a == "--":
            rcpts.extend(argv[i + 1:])
            break
        elif a.startswith("-"):
            raise ValueError(f"unknown switch {a}")
        else:
            rcpts.append(a)
        i += 1
    if not rcpts:
        raise ValueError("no recipient given")
    return sender.strip("<>"), rcpts


def main(argv: list[str], *, data: str, stdin: BinaryIO | None = None, err: TextIO | None = None) -> int:
    err = err or sys.stderr
    try:
        sender, rcpts = parse(argv)
    except ValueError as e:
        print(f"mailkeep deliver: {e}\n{USAGE}", file=err)
        return EX_USAGE
    src = stdin or sys.stdin.buffer
    try:
        store = Store.open(data, lock_wait=LOCK_WAIT)
    except ConfigError as e:
        print(f"mailkeep deliver: {e}", file=err)
        return EX_CONFIG
    except (DirectoryError, EseError, OSError) as e:
        print(f"mailkeep deliver: temporary failure, the message was not delivered: {e}", file=err)
        return EX_TEMPFAIL
    try:
        _mount_needed(store, rcpts, err)
        report = delivery.deliver(store, src, rcpts, sender=sender)
    except Exception as e:  # noqa: BLE001 - whatever it was, the MTA keeps the message and retries
        print(f"mailkeep deliver: temporary failure, the message was not delivered: {type(e).__name__}: {e}",
              file=err)
        return EX_TEMPFAIL
    finally:
        try:
            store.close()
        except (EseError, OSError) as e:  # delivered mail is durable already: say so, exit by the report
            print(f"mailkeep deliver: closing the store: {e}", file=err)
    for o in report.outcomes:
        if o.status != delivery.DELIVERED:
            print(f"mailkeep deliver: {o.recipient}: {o.message} ({o.code_name} {o.code:#x})", file=err)
    if any(o.status == delivery.TEMPORARY for o in report.outcomes):
        return EX_TEMPFAIL
    if any(o.status == delivery.UNKNOWN for o in report.outcomes):
        return EX_NOUSER
    if any(o.status == delivery.REJECTED for o in report.outcomes):
        return EX_DATAERR
    return EX_OK


def _mount_needed(store: Store, rcpts: list[str], err: TextIO) -> None:
    """Mount the databases the recipients live in, if the administrator has them mounted."""
    for r in rcpts:
        try:
            t = delivery.resolve(store, r)
        except StoreError:
            continue  # reported per recipient by deliver()
        if store.server.mount_intended(t.info) and not store.is_mounted(t.info):
            try:
                store.mount(t.info)
            except (ConfigError, EseError) as e:  # deliver() reports it dismounted: a temporary failure
                print(f"mailkeep deliver: cannot mount {t.info.path_name}: {e}", file=err)
