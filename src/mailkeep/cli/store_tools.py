"""`mailkeep setup`, `sg ...`, `db ...`, `mailbox ...`: thin layers over mailkeep.store.

With no server running, these commands work on the data folder's files directly (§10 of
the architecture); a database is "mounted" then in the sense that the store mounts it
whenever it opens (``mailkeep deliver``, ``mailkeep serve``), until an administrator
dismounts it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

from mailkeep.admin.registry import BadRequest
from mailkeep.admin.roles import AccessDenied
from mailkeep.cli.target import Local, Remote, RemoteError, target
from mailkeep.directory.backend import DirectoryError
from mailkeep.engine.errors import EseError
from mailkeep.store.errors import StoreError
from mailkeep.store.server import ConfigError
from mailkeep.store.setup import DEFAULT_ADMIN_GROUP, DEFAULT_ORG, default_server_name, setup_server

Target = Local | Remote

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
        t = target(data, getattr(ns, "user", None))
        try:
            if ns.command == "sg":
                return _sg(t, ns, out)
            if ns.command == "db":
                return _db(t, ns, out)
            return _mailbox(t, ns, out)
        finally:
            t.close()
    except (ConfigError, StoreError, DirectoryError, EseError, RemoteError, AccessDenied, BadRequest) as e:
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


def _say(result: Any, out: TextIO) -> int:
    print(result["message"], file=out)
    return 0


def _sg(t: Target, ns: argparse.Namespace, out: TextIO) -> int:
    if ns.action == "list":
        groups = t.call("sg.list", {})
        if ns.json:
            print(json.dumps(groups, indent=2), file=out)
            return 0
        print(f"{'Prefix':<7} {'Storage group':<28} {'Circular':<9} {'Databases':<10} Log path", file=out)
        for g in groups:
            print(f"{g['prefix']:<7} {g['name']:<28} {'on' if g['circular'] else 'off':<9} "
                  f"{len(g['databases']):<10} {g['log_path']}", file=out)
        return 0
    if ns.action == "create":
        return _say(t.call("sg.create", {"name": ns.name, "log_path": ns.log_path, "system_path": ns.system_path,
                                         "circular_logging": ns.circular_logging, "recovery": ns.recovery}), out)
    if ns.action == "set":
        return _say(t.call("sg.set", {"name": ns.name, "log_path": ns.log_path, "system_path": ns.system_path,
                                      "circular_logging": ns.circular_logging}), out)
    if ns.action == "rename":
        return _say(t.call("sg.rename", {"name": ns.old, "new": ns.new}), out)
    return _say(t.call("sg.delete", {"name": ns.name}), out)


def _db(t: Target, ns: argparse.Namespace, out: TextIO) -> int:
    if ns.action == "list":
        dbs = t.call("db.list", {})
        if ns.json:
            print(json.dumps(dbs, indent=2), file=out)
            return 0
        print(f"{'Database':<34} {'Storage group':<22} {'Type':<8} {'State':<11} {'Startup':<8} "
              f"{'Restore overwrites':<19} Files", file=out)
        for d in dbs:
            print(f"{d['name']:<34} {d['storage_group']:<22} {'public' if d['public'] else 'mailbox':<8} "
                  f"{d['state']:<11} {'mount' if d['mount_at_startup'] else 'no':<8} "
                  f"{'allowed' if d['allow_restore_overwrite'] else 'no':<19} "
                  f"{d['edb']}, {d['stm']}", file=out)
        return 0
    if ns.action == "create":
        return _say(t.call("db.create", {"storage_group": ns.sg, "name": ns.name, "public": ns.public, "edb": ns.edb,
                                         "stm": ns.stm, "mount": ns.mount}), out)
    if ns.action == "set":
        return _say(t.call("db.set", {"name": ns.name, "mount_at_startup": ns.mount_at_startup,
                                      "allow_restore_overwrite": ns.allow_restore_overwrite, "edb": ns.edb,
                                      "stm": ns.stm}), out)
    if ns.action == "rename":
        return _say(t.call("db.rename", {"name": ns.old, "new": ns.new}), out)
    if ns.action == "delete":
        return _say(t.call("db.delete", {"name": ns.name}), out)
    if ns.action == "mount":
        return _say(t.call("db.mount", {"name": ns.name, "create_new": ns.create_new}), out)
    return _say(t.call("db.dismount", {"name": ns.name}), out)


def _mailbox(t: Target, ns: argparse.Namespace, out: TextIO) -> int:
    if ns.action == "list":
        rows = t.call("mailbox.list", {"db": ns.db, "disconnected": ns.disconnected})
        if ns.json:
            print(json.dumps(rows, indent=2), file=out)
            return 0
        print(f"{'Mailbox GUID':<37} {'Display name':<22} {'State':<13} {'Items':>6} {'Size':>10}  Database",
              file=out)
        for m in rows:
            state = m["state"] + (" (tombstoned)" if m["tombstoned"] and m["state"] != "tombstoned" else "")
            print(f"{m['guid']:<37} {m['display_name'][:22]:<22} {state:<13} {m['messages']:>6} {m['size']:>10}  "
                  f"{m['database']}", file=out)
        return 0
    if ns.action == "cleanup":
        return _say(t.call("mailbox.cleanup", {"db": ns.db}), out)
    if ns.action == "purge":
        return _say(t.call("mailbox.purge", {"guid": ns.guid, "db": ns.db}), out)
    if ns.action == "reconnect":
        return _say(t.call("mailbox.reconnect", {"guid": ns.guid, "user": ns.user}), out)
    if ns.action == "recover":
        res = t.call("mailbox.recover", {"db": ns.db, "apply": ns.apply})
        print(f"{'Mailbox GUID':<37} {'Last owner':<24} Suggested account", file=out)
        for s in res["suggestions"]:
            print(f"{s['guid']:<37} {s['display_name'][:24]:<24} {s['match'] or '(none)'}  [{s['reason']}]", file=out)
        if ns.apply:
            print(f"Reconnected {res['reconnected']} mailbox(es)", file=out)
            for p in res["problems"]:
                print(f"  not reconnected: {p}", file=out)
        return 1 if res["problems"] else 0
    if ns.action == "rehome":
        rep = t.call("mailbox.rehome", {"from": ns.__dict__["from"], "to": ns.to, "mta_server": ns.mta_server,
                                        "trial": ns.trial})
        for line in rep["log"]:
            print(line, file=out)
        return 0 if rep["ok"] else 1  # the script quits with 1 on no match
    return _say(t.call("mailbox.move", {"user": ns.user, "to": ns.to}), out)
