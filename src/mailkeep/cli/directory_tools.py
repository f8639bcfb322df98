"""`mailkeep user ...`, `role ...`, `directory audit-master-sid` (and the parser of `mailbox rehome`):
thin layers over the administrative operations (mailkeep.admin), run in the server or on the files."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from mailkeep.admin.roles import AccessDenied
from mailkeep.cli.target import Local, Remote, RemoteError, target
from mailkeep.directory import tasks
from mailkeep.directory.backend import DirectoryError


def add_parsers(sub: Any) -> None:
    u = sub.add_parser("user", help="users: add, list, show, disable, enable, mailbox tasks")
    us = u.add_subparsers(dest="action", required=True, metavar="ACTION")
    a = us.add_parser("add")
    a.add_argument("name")
    a.add_argument("--password", help="the password (prompted for when omitted and a terminal is attached)")
    a.add_argument("--display-name")
    a.add_argument("--disabled", action="store_true")
    us.add_parser("list").add_argument("--json", action="store_true")
    sh = us.add_parser("show")
    sh.add_argument("name")
    sh.add_argument("--json", action="store_true")
    for name in ("disable", "enable", "delete-mailbox", "remove-exchange-attributes"):
        us.add_parser(name).add_argument("name")
    me = us.add_parser("mailbox-enable")
    me.add_argument("name")
    me.add_argument("--db", help="the mailbox database: its name, SERVER/SG/DB or DN (default: the only one)")
    me.add_argument("--nickname")
    us.add_parser("rus", help="run the Recipient Update Service on demand")

    dr = sub.add_parser("directory", help="directory checks")
    ds = dr.add_subparsers(dest="action", required=True, metavar="ACTION")
    au = ds.add_parser("audit-master-sid", help="find (and with --fix correct) msExchMasterAccountSid problems")
    au.add_argument("--fix", action="store_true")
    au.add_argument("--log", default="NoMAS.log", help="log of problems found and changes made (appended)")

    r = sub.add_parser("role", help="roles (the guide's Permissions Required): list, grant, revoke")
    rs = r.add_subparsers(dest="action", required=True, metavar="ACTION")
    rs.add_parser("list").add_argument("--json", action="store_true")
    for verb in ("grant", "revoke"):
        g = rs.add_parser(verb)
        g.add_argument("name", metavar="USER")
        g.add_argument("role", metavar="ROLE", help="backup-operator, full-administrator or local-administrator")


def add_rehome_parser(ms: Any) -> None:
    r = ms.add_parser("rehome", help="the guide's re-home script: move users' homeMDB/homeMTA/msExchHomeServerName")
    for side in ("from", "to"):
        r.add_argument(f"--{side}", required=True, metavar="ORG/ADMINGROUP/SERVER/SG/DB",
                       help=f"{'old' if side == 'from' else 'new'} location, e.g. Organization/AG1/Exchange1/SG1/DB1")
    r.add_argument("--mta-server", help="server whose MTA becomes homeMTA (default: the new server)")
    r.add_argument("--trial", action="store_true", help="show what would change; change nothing")


def main(ns: argparse.Namespace, *, data: str) -> int:
    out = sys.stdout
    try:
        t = target(data, getattr(ns, "user", None))
        try:
            return _run(t, ns, out)
        finally:
            t.close()
    except (DirectoryError, ValueError, RemoteError, AccessDenied) as e:  # ValueError: a malformed DN or value
        print(f"mailkeep {ns.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the audit's --log file cannot be written (nothing was changed then)
        print(f"mailkeep {ns.command}: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1


def _run(t: Local | Remote, ns: argparse.Namespace, out: Any) -> int:
    if ns.command == "user":
        act = ns.action
        if act == "add":
            pw = ns.password
            if pw is None and sys.stdin.isatty():
                pw = getpass.getpass(f"Password for {ns.name}: ")
            res = t.call("user.add", {"name": ns.name, "password": pw, "display_name": ns.display_name,
                                      "disabled": ns.disabled})
        elif act == "list":
            users = t.call("user.list", {})
            if ns.json:
                print(json.dumps([{k: v for k, v in u.items() if k != "disabled"} for u in users], indent=2),
                      file=out)
            for u in [] if ns.json else users:
                state = "disabled" if u["disabled"] else "enabled"
                print(f"{u.get('sAMAccountName'):<20} {state:<9} {u.get('homeMDB') or '(no mailbox)'}", file=out)
            return 0
        elif act == "show":
            shown = t.call("user.show", {"name": ns.name})
            if ns.json:
                print(json.dumps(shown, indent=2), file=out)
            else:
                for k, v in shown.items():
                    print(f"{k}: {v}", file=out)
            return 0
        elif act == "mailbox-enable":
            res = t.call("user.mailbox-enable", {"name": ns.name, "db": ns.db, "nickname": ns.nickname})
        elif act == "rus":
            res = t.call("user.rus", {})
        else:  # disable, enable, delete-mailbox, remove-exchange-attributes
            res = t.call(f"user.{act}", {"name": ns.name})
        print(res["message"], file=out)
        return 0
    if ns.command == "role":
        if ns.action == "list":
            rows = t.call("role.list", {})
            if ns.json:
                print(json.dumps(rows, indent=2), file=out)
                return 0
            print(f"{'Role':<20} {'Group':<30} Members", file=out)
            for r in rows:
                print(f"{r['role']:<20} {r['group']:<30} {', '.join(r['members']) or '(none)'}", file=out)
            return 0
        if ns.action == "grant":
            res = t.call("role.grant", {"role": ns.role, "user": ns.name})
        else:
            res = t.call("role.revoke", {"role": ns.role, "user": ns.name})
        print(res["message"], file=out)
        return 0
    if ns.command == "directory" and ns.action == "audit-master-sid":
        if isinstance(t, Local):  # the log is written as it happens: a failure part-way still leaves it
            lines = tasks.audit_master_sid(t.ctx.directory, fix=ns.fix, log_path=ns.log).log
        else:  # the log opens before the server is asked: an unusable path changes nothing
            with open(ns.log, "a", encoding="utf-8") as log_file:
                lines = t.call("directory.audit-master-sid", {"fix": ns.fix})["log"]
                log_file.writelines(line + "\n" for line in lines)
        for line in lines:
            print(line, file=out)
        print(f"Log written to {ns.log}", file=out)
        return 0
    return 2
