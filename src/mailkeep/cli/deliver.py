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

While ``mailkeep serve`` runs on the data folder it owns the storage groups, so the message is
handed to it over SMTP on its loopback address instead (streamed, dot-stuffed); its replies
map to the same exit codes: ``250`` delivered, ``550`` unknown, ``4xx`` retry, ``5xx`` after
DATA rejected (e.g. larger than the server's SMTP size limit).
"""

from __future__ import annotations

import smtplib
import sys
from typing import BinaryIO, TextIO

from mailkeep.cli.target import running_server
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
    state = running_server(data)
    if state is not None and state.get("smtp"):
        return _through_server(state, src, sender, rcpts, err)
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


def _through_server(state: dict[str, object], src: BinaryIO, sender: str, rcpts: list[str], err: TextIO) -> int:
    host = str(state.get("bind") or "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    codes: list[int] = []
    try:
        with smtplib.SMTP(host, int(str(state["smtp"])), timeout=300) as c:
            c.ehlo("localhost")
            code, msg = c.mail(sender)
            if code != 250:
                print(f"mailkeep deliver: the server refused the sender: {code} {msg.decode(errors='replace')}",
                      file=err)
                return EX_TEMPFAIL if 400 <= code < 500 else EX_DATAERR
            accepted = []
            for r in rcpts:
                code, msg = c.rcpt(r)
                if code in (250, 251):
                    accepted.append(r)
                else:
                    print(f"mailkeep deliver: {r}: {code} {msg.decode(errors='replace')}", file=err)
                    codes.append(EX_TEMPFAIL if 400 <= code < 500 else EX_NOUSER)
            if accepted:
                code, msg = _data(c, src)
                if code != 250:
                    print(f"mailkeep deliver: {', '.join(accepted)}: {code} {msg.decode(errors='replace')}", file=err)
                    codes.append(EX_TEMPFAIL if 400 <= code < 500 else EX_DATAERR)
    except (OSError, smtplib.SMTPException) as e:
        print(f"mailkeep deliver: temporary failure, the running server (pid {state.get('pid')}) did not take the "
              f"message: {e}", file=err)
        return EX_TEMPFAIL
    for rc in (EX_TEMPFAIL, EX_NOUSER, EX_DATAERR):
        if rc in codes:
            return rc
    return EX_OK


def _data(c: smtplib.SMTP, src: BinaryIO) -> tuple[int, bytes]:
    """DATA, streamed line by line: CRLF line ends, leading dots doubled (RFC 5321 §4.5.2)."""
    code, msg = c.docmd("DATA")
    if code != 354:
        return code, msg
    buf = bytearray()
    ended = True
    while True:
        line = src.readline(65536)
        if not line:
            break
        if ended and line.startswith(b"."):
            buf += b"."
        ended = line.endswith(b"\n")
        buf += line[:-2] + b"\r\n" if line.endswith(b"\r\n") else line[:-1] + b"\r\n" if ended else line
        if len(buf) >= 1 << 16:
            c.send(bytes(buf))
            buf.clear()
    if not ended:
        buf += b"\r\n"
    c.send(bytes(buf) + b".\r\n")
    return c.getreply()


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
