"""`mailkeep fti create|delete|populate|status|set`: a thin layer over the `fti.run` operation
(mailkeep.admin.fti_ops), in the running server or on the files.

The guide's "Repairing Full-Text Indexing": Delete Full-Text Index (and empty the project
files), Create Full-Text Index, Start Full Population, "This index is currently available
for searching by clients", and the update interval. With no server running the commands
work on the data folder directly; the library functions take an open ``Store`` so the HTTP
API can call them inside the server.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from mailkeep.admin.registry import BadRequest
from mailkeep.admin.roles import AccessDenied
from mailkeep.cli.store_tools import _onoff
from mailkeep.cli.target import RemoteError, target
from mailkeep.directory.backend import DirectoryError
from mailkeep.engine.errors import EseError
from mailkeep.store import fti
from mailkeep.store.errors import StoreError
from mailkeep.store.server import ConfigError

ACTIONS = ("create", "delete", "populate", "status", "set")


def _interval(v: str) -> int | None:
    if v.lower() in ("never", "manual"):
        return None
    if v.isdigit() and int(v) >= 1:
        return int(v)
    raise argparse.ArgumentTypeError(f"{v!r}: give the update interval in whole minutes (at least 1), or never")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("fti", help="full-text indexes: create, delete, populate, status, set")
    p.add_argument("action", choices=ACTIONS, metavar="ACTION", help="create | delete | populate | status | set")
    p.add_argument("--db", help="one database (name, STORAGEGROUP/NAME or GUID); default: every one")
    p.add_argument("--full", action="store_true", help="populate: a full population (rebuild)")
    p.add_argument("--available", type=_onoff, metavar="on|off",
                   help='"This index is currently available for searching by clients"')
    p.add_argument("--interval", type=_interval, default=argparse.SUPPRESS, metavar="MINUTES|never",
                   help="update interval for incremental populations (default at creation: 15)")
    p.add_argument("--json", action="store_true")


def main(ns: argparse.Namespace, *, data: str, out: TextIO | None = None) -> int:
    """Through the running server's HTTP API, or on the files when none runs."""
    out = out or sys.stdout
    interval = getattr(ns, "interval", "keep")
    args = {"action": ns.action, "db": ns.db, "full": ns.full, "available": ns.available, "json": ns.json,
            "interval": "keep" if interval == "keep" else "never" if interval is None else str(interval)}
    try:
        t = target(data, getattr(ns, "user", None))
        try:
            res = t.call("fti.run", args)
        finally:
            t.close()
    except (fti.FtiError, ConfigError, StoreError, DirectoryError, EseError, RemoteError, AccessDenied,
            BadRequest) as e:
        print(f"mailkeep fti {ns.action}: {e}", file=sys.stderr)
        return 1
    if ns.json:
        print(json.dumps(res["results"], indent=2), file=out)
    else:
        out.write(res["text"])
    return 0


