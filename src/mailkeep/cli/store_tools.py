"""`mailkeep setup`, `sg ...`, `db ...`, `mailbox ...`: thin layers over mailkeep.store.

With no server running, these commands work on the data folder's files directly (§10 of
the architecture); a database is "mounted" then in the sense that the store mounts it
whenever it opens (``mailkeep deliver``, ``mailkeep serve``), until an administrator
dismounts it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from typing import Any, TextIO

from mailkeep.directory.backend import DirectoryError
from mailkeep.engine.errors import EseError
from mailkeep.store import agents
from mailkeep.store.errors import StoreError
from mailkeep.store.server import ConfigError, DatabaseInfo
from mailkeep.store.setup import DEFAULT_ADMIN_GROUP, DEFAULT_ORG, default_server_name, setup_server
from mailkeep.store.store import Store

COMMANDS = ("setup", "sg", "db", "mailbox")


def _onoff(v: str) -> bool:
    if v.lower() in ("on", "yes", "true", "1"):
        return True
    if v.lower() in ("off", "no", "false", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{v!r}: use on or off")


def add_parsers(sub: Any) -> None:
    s = sub.add_parser("setup", help="create a server: organization, storage group, databases, system attendant")
    s.add_argument("--domain", help="DNS domain, e.g. contoso.com (needed for a new data folder)")
    s.add_argument("--org", default=DEFAULT_ORG)
    s.add_argument("--admin-group", default=DEFAULT_ADMIN_GROUP)
    s.add_argument("--server", default=None, help="server name (default: this machine's host name)")

    g = sub.add_parser("sg", help="storage groups: list, create, set, rename, delete")
    gs = g.add_subparsers(dest="action", required=True, metavar="ACTION")
    gs.add_parser("list").add_argument("--json", action="store_true")
    c = gs.add_parser("create")
    c.add_argument("name")
    c.add_argument("--log-path")
    c.add_argument("--system-path")
    c.add_argument("--circular-logging", type=_onoff, default=False, metavar="on|off")
    c.add_argument("--recovery", action="store_true", help="the recovery storage group (R00)")
    st = gs.add_parser("set")
    st.add_argument("name")
    st.add_argument("--log-path")
    st.add_argument("--system-path")
    st.add_argument("--circular-logging", type=_onoff, metavar="on|off")
    r = gs.add_parser("rename")
    r.add_argument("old")
    r.add_argument("new")
    gs.add_parser("delete").add_argument("name")

    d = sub.add_parser("db", help="databases: list, create, set, rename, delete, mount, dismount")
    ds = d.add_subparsers(dest="action", required=True, metavar="ACTION")
    ds.add_parser("list").add_argument("--json", action="store_true")
    c = ds.add_parser("create")
    c.add_argument("sg", metavar="STORAGEGROUP")
    c.add_argument("name")
    c.add_argument("--public", action="store_true", help="a public folder store (default: a mailbox store)")
    c.add_argument("--edb")
    c.add_argument("--stm")
    c.add_argument("--mount", action="store_true", help="mount it now (the guide advises not to before a restore)")
    st = ds.add_parser("set")
    st.add_argument("name")
    st.add_argument("--mount-at-startup", type=_onoff, metavar="on|off")
    st.add_argument("--allow-restore-overwrite", type=_onoff, metavar="on|off",
                    help='"This database can be overwritten by a restore"')
    st.add_argument("--edb", help="move the .edb (the database must be dismounted)")
    st.add_argument("--stm", help="move the .stm (the database must be dismounted)")
    r = ds.add_parser("rename")
    r.add_argument("old")
    r.add_argument("new")
    ds.add_parser("delete").add_argument("name")
    m = ds.add_parser("mount")
    m.add_argument("name")
    m.add_argument("--create-new", action="store_true",
                   help="the files are gone and no restore is coming: start an empty database")
    ds.add_parser("dismount").add_argument("name")

    mb = sub.add_parser("mailbox", help="mailboxes: list, cleanup, purge, reconnect, recover, move, rehome")
    ms = mb.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = ms.add_parser("list")
    ls.add_argument("--db")
    ls.add_argument("--disconnected", action="store_true")
    ls.add_argument("--json", action="store_true")
    ms.add_parser("cleanup", help="run the Mailbox Cleanup Agent now").add_argument("--db")
    pg = ms.add_parser("purge", help="purge a disconnected mailbox")
    pg.add_argument("guid")
    pg.add_argument("--db", help="the database holding it (when the GUID is in several)")
    rc = ms.add_parser("reconnect", help="connect a disconnected mailbox to an account without a mailbox")
    rc.add_argument("guid")
    rc.add_argument("user")
    rv = ms.add_parser("recover", help="Mailbox Recovery Center: match disconnected mailboxes to their owners")
    rv.add_argument("--db")
    rv.add_argument("--apply", action="store_true", help="reconnect every mailbox that has a match")
    mv = ms.add_parser("move", help="Move Mailbox to another database of this server")
    mv.add_argument("user")
    mv.add_argument("--to", required=True, metavar="DB")
    from mailkeep.cli import directory_tools

    directory_tools.add_rehome_parser(ms)


def main(ns: argparse.Namespace, *, data: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        if ns.command == "setup":
            return _setup(ns, data, out)
        if ns.command == "mailbox" and ns.action == "rehome":  # the directory only, as the guide's script
            from mailkeep.cli import directory_tools
            from mailkeep.directory.setup import open_directory

            d = open_directory(data)
            try:
                return directory_tools.rehome(d, ns, out)
            finally:
                d.close()
        with Store.open(data) as store:
            if ns.command == "sg":
                return _sg(store, ns, out)
            if ns.command == "db":
                return _db(store, ns, out)
            return _mailbox(store, ns, out)
    except (ConfigError, StoreError, DirectoryError, EseError) as e:
        print(f"mailkeep {ns.command}: {e}", file=sys.stderr)
        return 1


def _setup(ns: argparse.Namespace, data: str, out: TextIO) -> int:
    res = setup_server(data, domain=ns.domain, organization=ns.org, admin_group=ns.admin_group,
                       server=ns.server or default_server_name())
    srv = res.server
    print(f"Server {srv.name} set up in {srv.data}", file=out)
    print(f"  organization:        {srv.organization}", file=out)
    print(f"  administrative group: {srv.admin_group}", file=out)
    print(f"  server object:       {srv.dn}", file=out)
    print(f"  storage group:       {res.storage_group} (E00, logs in {res.mailbox_store.sg.log_path})", file=out)
    for db in (res.mailbox_store, res.public_store):
        print(f"  {db.kind + ':':<20} {db.name} ({db.edb}, {db.stm}) mounted", file=out)
    print(f"  system attendant:    {srv.system_attendant_legacy_dn}", file=out)
    return 0


def _state(store: Store, db: DatabaseInfo) -> str:
    return "mounted" if store.server.mount_intended(db) else "dismounted"


def _sg(store: Store, ns: argparse.Namespace, out: TextIO) -> int:
    srv = store.server
    if ns.action == "list":
        groups = srv.storage_groups()
        if ns.json:
            print(json.dumps([{**asdict(g), "databases": [d.name for d in srv.databases(g)]} for g in groups],
                             indent=2), file=out)
            return 0
        print(f"{'Prefix':<7} {'Storage group':<28} {'Circular':<9} {'Databases':<10} Log path", file=out)
        for g in groups:
            print(f"{g.prefix:<7} {g.name:<28} {'on' if g.circular else 'off':<9} {len(srv.databases(g)):<10} "
                  f"{g.log_path}", file=out)
        return 0
    if ns.action == "create":
        g = srv.create_storage_group(ns.name, log_path=ns.log_path, system_path=ns.system_path,
                                     circular=ns.circular_logging, recovery=ns.recovery)
        print(f"Created storage group {g.name} ({g.prefix}); logs in {g.log_path}, system files in {g.system_path}",
              file=out)
        return 0
    if ns.action == "set":
        g = srv.storage_group(ns.name)
        _require_idle(store, g.prefix)
        g = srv.set_storage_group(ns.name, log_path=ns.log_path, system_path=ns.system_path,
                                  circular=ns.circular_logging)
        print(f"Storage group {g.name}: logs in {g.log_path}, system files in {g.system_path}, circular logging "
              f"{'on' if g.circular else 'off'}", file=out)
        return 0
    if ns.action == "rename":
        g = srv.rename_storage_group(ns.old, ns.new)
        print(f"Renamed storage group {ns.old} to {g.name}", file=out)
        return 0
    g, kept = srv.delete_storage_group(ns.name)
    print(f"Deleted storage group {g.name} ({g.prefix}) from the directory. Its files were kept in "
          f"{', '.join(kept)}; delete them yourself when they are no longer needed.", file=out)
    return 0


def _require_idle(store: Store, prefix: str) -> None:
    """Opening the group takes its lock: refused while a server (or another tool) has it."""
    g = store.server.storage_group(prefix)
    store.group(g)
    store.close_group(g)


def _db(store: Store, ns: argparse.Namespace, out: TextIO) -> int:
    srv = store.server
    if ns.action == "list":
        dbs = srv.databases()
        if ns.json:
            print(json.dumps([{
                "name": d.name, "storage_group": d.sg.name, "dn": d.dn, "guid": str(d.guid), "public": d.public,
                "edb": d.edb, "stm": d.stm, "state": _state(store, d), "mount_at_startup": d.mount_at_startup,
                "allow_restore_overwrite": d.allow_restore_overwrite,
            } for d in dbs], indent=2), file=out)
            return 0
        print(f"{'Database':<34} {'Storage group':<22} {'Type':<8} {'State':<11} {'Startup':<8} "
              f"{'Restore overwrites':<19} Files", file=out)
        for d in dbs:
            print(f"{d.name:<34} {d.sg.name:<22} {'public' if d.public else 'mailbox':<8} {_state(store, d):<11} "
                  f"{'mount' if d.mount_at_startup else 'no':<8} "
                  f"{'allowed' if d.allow_restore_overwrite else 'no':<19} "
                  f"{d.edb}, {d.stm}", file=out)
        return 0
    if ns.action == "create":
        d = srv.create_database(ns.sg, ns.name, public=ns.public, edb=ns.edb, stm=ns.stm)
        print(f"Created {d.kind} {d.name} in {d.sg.name} ({d.edb}, {d.stm})", file=out)
        if ns.mount:
            store.mount(d)
            print(f"Mounted {d.path_name}", file=out)
        else:
            print(f"Not mounted: mount it with 'mailkeep db mount \"{d.name}\"' (not before a restore into it).",
                  file=out)
        return 0
    if ns.action == "set":
        d = srv.database(ns.name)
        if (ns.edb or ns.stm) and srv.mount_intended(d):
            raise ConfigError(f"{d.kind} {d.name} is mounted: dismount it before moving its files")
        if ns.edb or ns.stm:
            _require_idle(store, d.sg.prefix)
        d = srv.set_database(ns.name, mount_at_startup=ns.mount_at_startup,
                             allow_restore_overwrite=ns.allow_restore_overwrite, edb=ns.edb, stm=ns.stm)
        print(f"{d.kind} {d.name}: mount at start-up {'on' if d.mount_at_startup else 'off'}; "
              f"this database can be overwritten by a restore: {'on' if d.allow_restore_overwrite else 'off'}; "
              f"files {d.edb}, {d.stm}", file=out)
        return 0
    if ns.action == "rename":
        d = srv.rename_database(ns.old, ns.new)
        print(f"Renamed {d.kind} {ns.old} to {d.name}", file=out)
        return 0
    if ns.action == "delete":
        d = srv.database(ns.name)
        d = srv.delete_database(ns.name, mounted=srv.mount_intended(d))
        kept = [p for p in (d.edb, d.stm) if os.path.exists(p)]
        print(f"Deleted {d.kind} {d.name} from the directory. " + (
            f"Its files were kept: {', '.join(kept)}; delete them yourself when they are no longer needed."
            if kept else "It had no files (it was never mounted)."), file=out)
        return 0
    if ns.action == "mount":
        d = store.mount(ns.name, create_new=ns.create_new)
        print(f"Mounted {d.path_name}: consistent, and mounted whenever the store runs (mailkeep deliver, "
              "mailkeep serve) until 'mailkeep db dismount'.", file=out)
        return 0
    d = srv.database(ns.name)
    if srv.files_created(d) and _files_exist(d):
        store.mount(d)  # brings a database left dirty by a crash to Clean Shutdown first
    store.dismount(d)
    print(f"Dismounted {d.path_name} (Clean Shutdown); it stays dismounted until 'mailkeep db mount'.", file=out)
    return 0


def _files_exist(d: DatabaseInfo) -> bool:
    return os.path.exists(d.edb) and os.path.exists(d.stm)


def _mailbox(store: Store, ns: argparse.Namespace, out: TextIO) -> int:
    store.mount_intended()
    if ns.action == "list":
        rows = agents.list_mailboxes(store, ns.db, disconnected=ns.disconnected)
        if ns.json:
            print(json.dumps([asdict(m) for m in rows], indent=2), file=out)
            return 0
        print(f"{'Mailbox GUID':<37} {'Display name':<22} {'State':<13} {'Items':>6} {'Size':>10}  Database",
              file=out)
        for m in rows:
            state = m.state + (" (tombstoned)" if m.tombstoned and m.state != "tombstoned" else "")
            print(f"{m.guid:<37} {m.display_name[:22]:<22} {state:<13} {m.messages:>6} {m.size:>10}  {m.database}",
                  file=out)
        return 0
    if ns.action == "cleanup":
        rep = agents.cleanup(store, ns.db)
        print(f"Mailbox Cleanup Agent: {len(rep.disconnected)} disconnected, {len(rep.tombstoned)} tombstoned, "
              f"{len(rep.purged)} purged, {rep.deleted_items_purged} deleted item(s) past retention removed", file=out)
        for g in rep.disconnected:
            print(f"  disconnected {g}", file=out)
        return 0
    if ns.action == "purge":
        m = agents.purge(store, ns.guid, ns.db)
        print(f"Purged mailbox {m.guid} ({m.display_name}, {m.messages} item(s)) from {m.database}", file=out)
        return 0
    if ns.action == "reconnect":
        e = agents.reconnect(store, ns.guid, ns.user)
        print(f"Reconnected mailbox {ns.guid} to {e.dn}", file=out)
        return 0
    if ns.action == "recover":
        sugg, problems = agents.recover(store, ns.db, apply=ns.apply)
        print(f"{'Mailbox GUID':<37} {'Last owner':<24} Suggested account", file=out)
        for s in sugg:
            print(f"{s.guid:<37} {s.display_name[:24]:<24} {s.match or '(none)'}  [{s.reason}]", file=out)
        if ns.apply:
            failed = {p.split(":", 1)[0] for p in problems}
            done = sum(1 for s in sugg if s.match and s.guid not in failed)
            print(f"Reconnected {done} mailbox(es)", file=out)
            for p in problems:
                print(f"  not reconnected: {p}", file=out)
        return 1 if problems else 0
    d = agents.move(store, ns.user, ns.to)
    print(f"Moved the mailbox of {ns.user} to {d.path_name}", file=out)
    return 0
