"""The full-text index operations behind `mailkeep fti` and the HTTP API (`fti.run`).

The guide's "Repairing Full-Text Indexing": Delete Full-Text Index, Create Full-Text Index,
Start Full Population, "This index is currently available for searching by clients", and
the update interval, over mailkeep.store.fti. One operation runs the whole command against
an open store (in the server, or on the files when none runs) and returns its text and its
JSON results, so the CLI prints the same either way.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import asdict
from types import SimpleNamespace
from typing import Any, TextIO

from mailkeep.admin.registry import Context, Param, operation
from mailkeep.admin.roles import Role
from mailkeep.store import fti
from mailkeep.store.server import DatabaseInfo
from mailkeep.store.store import Store

ACTIONS = ("create", "delete", "populate", "status", "set")


@operation("fti.run", "POST", "/fti", "full-text indexes: create, delete, populate, status, set",
           Role.FULL_ADMINISTRATOR, params=(
               Param("action", "string", True, enum=ACTIONS), Param("db"), Param("full", "boolean"),
               Param("available", "boolean"),
               Param("interval", doc="update interval in minutes, 'never', or 'keep' (default)"),
               Param("json", "boolean")))
def fti_run(ctx: Context, action: str, db: str | None, full: bool | None, available: bool | None,
            interval: str | None, json: bool | None) -> dict[str, Any]:  # noqa: A002 - the CLI's name
    if interval is None or interval == "keep":
        iv: Any = "keep"
    elif interval.lower() in ("never", "manual"):
        iv = None
    elif interval.isdigit() and int(interval) >= 1:
        iv = int(interval)
    else:
        raise fti.FtiError(f"{interval!r}: give the update interval in whole minutes (at least 1), or never")
    ns = SimpleNamespace(action=action, db=db, full=bool(full), available=available, interval=iv, json=bool(json))
    buf = io.StringIO()
    results = _run(ctx.store, ns, buf, local=ctx.local)
    return {"text": buf.getvalue(), "results": results}


def _targets(store: Store, ns: Any) -> list[DatabaseInfo]:
    if ns.db:
        return [store.server.database(ns.db)]
    dbs = [d for d in store.server.databases() if not d.sg.recovery]
    if ns.action == "status":
        return dbs
    if ns.action == "create":
        dbs = [d for d in dbs if fti.settings(store, d) is None]
        if not dbs:
            raise fti.FtiError("every database already has a full-text index")
        return dbs
    dbs = [d for d in dbs if fti.settings(store, d) is not None]
    if not dbs:
        raise fti.FtiError("no database has a full-text index; create one with 'mailkeep fti create [--db NAME]'")
    return dbs


def _run(store: Store, ns: Any, out: TextIO, *, local: bool) -> list[dict[str, Any]]:
    dbs = _targets(store, ns)
    results: list[dict[str, Any]] = []
    for d in dbs:
        if ns.action == "create":
            interval = fti.DEFAULT_INTERVAL if ns.interval == "keep" else ns.interval
            st = fti.create(store, d, available=bool(ns.available), interval=interval)
            results.append({"database": d.path_name, "path": fti.index_path(store, d), **st})
            if not ns.json:
                print(f"Created the full-text index of {d.path_name}: {fti.index_path(store, d)}", file=out)
                print(f"  empty until a full population: mailkeep fti populate --db \"{d.name}\" --full", file=out)
                print(f"  {_settings_line(st)}", file=out)
        elif ns.action == "delete":
            removed = fti.delete(store, d)
            results.append({"database": d.path_name, "removed": removed})
            if not ns.json:
                print(f"Deleted the full-text index of {d.path_name}; removed {', '.join(removed) or 'no files'}",
                      file=out)
                print("  searches scan the messages until an index is created and populated again", file=out)
        elif ns.action == "populate":
            if local:
                store.mount_intended()
            _configure(store, d, ns)
            rep = fti.populate(store, d, full=ns.full)
            results.append(asdict(rep))
            if not ns.json:
                print(f"{'Full' if rep.full else 'Incremental'} population of {d.path_name}: {rep.messages} "
                      f"message(s) in the index; {rep.added} added or changed, {rep.removed} removed; "
                      f"{rep.contents_read} content(s) read in {rep.seconds:.2f} s", file=out)
                for f in rep.failed:
                    print(f"  not indexed (searches read it instead): {f}", file=out)
        elif ns.action == "set":
            st = _configure(store, d, ns) or fti.settings(store, d) or {}
            results.append({"database": d.path_name, **st})
            if not ns.json:
                print(f"{d.path_name}: {_settings_line(st)}", file=out)
        else:
            s = fti.status(store, d)
            results.append(asdict(s))
            if not ns.json:
                _print_status(s, out)
    plain: list[dict[str, Any]] = json.loads(json.dumps(results, default=str))
    return plain


def _configure(store: Store, d: DatabaseInfo, ns: Any) -> dict[str, Any] | None:
    if ns.available is None and ns.interval == "keep":
        return None
    return fti.configure(store, d, available=ns.available, interval=ns.interval)


def _settings_line(st: dict[str, Any]) -> str:
    return f"available for searching: {'yes' if st.get('available') else 'no'}; update interval: " \
           f"{_interval_text(st.get('interval'))}"


def _interval_text(v: int | None) -> str:
    return "never (manual population only)" if v is None else f"{v} minute{'s' if v != 1 else ''}"


def _when(t: float | None) -> str:
    return "never" if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _print_status(s: fti.Status, out: TextIO) -> None:
    print(s.database, file=out)
    if s.state == fti.NONE:
        print("  full-text index:          none", file=out)
        return
    print(f"  full-text index:          {s.state} ({s.path})", file=out)
    if s.problem:
        print(f"  problem:                  {s.problem}; searches scan the messages. Re-create it: "
              f"mailkeep fti delete --db \"{s.name}\"; mailkeep fti create --db \"{s.name}\"; "
              f"mailkeep fti populate --db \"{s.name}\" --full", file=out)
    print(f"  available for searching:  {'yes' if s.available else 'no'}", file=out)
    print(f"  update interval:          {_interval_text(s.interval)}", file=out)
    print(f"  last full population:     {_when(s.last_full)}", file=out)
    print(f"  last incremental:         {_when(s.last_incremental)}", file=out)
    if s.messages is not None:
        print(f"  messages indexed:         {s.messages} ({s.contents} content(s))", file=out)
        print(f"  searches answered:        {s.searches}", file=out)
