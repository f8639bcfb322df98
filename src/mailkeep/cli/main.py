"""`mailkeep`: one console script; each subcommand lives in its own module."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mailkeep import __version__


def data_dir(value: str | None) -> str:
    return value or os.environ.get("MAILKEEP_DATA") or "./mailkeep-data"


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    data: str | None = None
    # --data may come before the subcommand; eseutil keeps its own Exchange-style switches.
    while args and args[0].startswith("--data"):
        opt = args.pop(0)
        if "=" in opt:
            data = opt.split("=", 1)[1]
        elif args:
            data = args.pop(0)
        else:
            print("mailkeep: --data needs a folder", file=sys.stderr)
            return 2
    if args and args[0].lower() == "eseutil":
        from mailkeep.cli import eseutil

        return eseutil.main(args[1:], data=data_dir(data))
    if args and args[0].lower() == "isinteg":
        from mailkeep.cli import isinteg

        return isinteg.main(args[1:], data=data_dir(data))
    if args and args[0].lower() == "deliver":
        from mailkeep.cli import deliver

        return deliver.main(args[1:], data=data_dir(data))
    if args and args[0].lower() == "ldifde":
        from mailkeep.cli import ldifde

        return ldifde.main(args[1:], data=data_dir(data))
    parser = argparse.ArgumentParser(
        prog="mailkeep",
        description="Mailkeep: a mail server whose data survives disasters.",
    )
    parser.add_argument("--version", action="version", version=f"mailkeep {__version__}")
    parser.add_argument("--data", help="data folder (default $MAILKEEP_DATA, else ./mailkeep-data)")
    parser.add_argument("--user", help="while the server runs: act as this directory account (default $MAILKEEP_USER; "
                        "password from $MAILKEEP_PASSWORD or a prompt); without it, the server's service token is used")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("eseutil", help="database utilities: /mh /ml /mk /r (Exchange-style switches)")
    sub.add_parser("ldifde", help="LDIF export/import of the directory (LDIFDE switches: -f -i -d -r -l)")
    sub.add_parser("isinteg", help="logical integrity checks: -db NAME [-fix] -test alltests|TEST,...")
    sub.add_parser("deliver", help="local delivery agent: deliver [-f SENDER] RECIPIENT... < MESSAGE")
    from mailkeep.cli import directory_tools, store_tools

    store_tools.add_parsers(sub)
    from mailkeep.cli import serve

    serve.add_parser(sub)
    directory_tools.add_parsers(sub)
    from mailkeep.cli import backup, fti

    fti.add_parser(sub)
    backup.add_parser(sub)
    ev = sub.add_parser("events", help="show the application event log")
    ev.add_argument("--source")
    ev.add_argument("--id", type=int)
    ev.add_argument("--level", choices=("information", "warning", "error"))
    ev.add_argument("--since", help="ISO time (2026-11-25T10:00) or seconds since the epoch")
    ev.add_argument("--json", action="store_true")
    ns = parser.parse_args(args)
    if data is None:
        data = ns.data
    if ns.command == "serve":
        return serve.main(ns, data=data_dir(data))
    if ns.command in store_tools.COMMANDS:
        return store_tools.main(ns, data=data_dir(data))
    if ns.command in ("user", "directory", "role"):
        return directory_tools.main(ns, data=data_dir(data))
    if ns.command == "fti":
        return fti.main(ns, data=data_dir(data))
    if ns.command == "backup":
        return backup.main(ns, data=data_dir(data))
    if ns.command == "events":
        from mailkeep.cli import events

        return events.main(ns, data=data_dir(data))
    parser.print_help()
    return 2
