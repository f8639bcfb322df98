"""`mailkeep setup`, `user ...`, `mailbox rehome`, `directory audit-master-sid`: thin layers
over mailkeep.directory (setup, directory, tasks)."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import uuid
from typing import Any

from mailkeep.directory import dn as dnmod
from mailkeep.directory import rus, sid, tasks
from mailkeep.directory.backend import DirectoryError, Entry
from mailkeep.directory.directory import Directory, escape_filter_value
from mailkeep.directory.setup import open_directory


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


def add_rehome_parser(ms: Any) -> None:
    r = ms.add_parser("rehome", help="the guide's re-home script: move users' homeMDB/homeMTA/msExchHomeServerName")
    for side in ("from", "to"):
        r.add_argument(f"--{side}", required=True, metavar="ORG/ADMINGROUP/SERVER/SG/DB",
                       help=f"{'old' if side == 'from' else 'new'} location, e.g. Organization/AG1/Exchange1/SG1/DB1")
    r.add_argument("--mta-server", help="server whose MTA becomes homeMTA (default: the new server)")
    r.add_argument("--trial", action="store_true", help="show what would change; change nothing")


def rehome(d: Directory, ns: argparse.Namespace, out: Any) -> int:
    rep = tasks.rehome(d, _location(ns.__dict__["from"]), _location(ns.to), mta_server=ns.mta_server,
                       trial=ns.trial)
    for line in rep.log:
        print(line, file=out)
    return 1 if rep.failed or not rep.matched else 0  # the script quits with 1 on no match


def _location(text: str) -> tasks.Location:
    parts = [p for p in text.split("/")]
    if len(parts) != 5 or not all(parts):
        raise DirectoryError("other", f"{text!r}: give ORGANIZATION/ADMINGROUP/SERVER/STORAGEGROUP/DATABASE")
    return tasks.Location(*parts)


def _show(e: Entry) -> dict[str, Any]:
    out: dict[str, Any] = {"dn": e.dn}
    for k, values in sorted(e.attrs.items()):
        if k.lower() == "passwordhash":
            continue
        shown: list[str | int] = []
        for v in values:
            if isinstance(v, bytes):
                if k.lower() in ("objectguid", "msexchmailboxguid") and len(v) == 16:
                    shown.append(str(uuid.UUID(bytes_le=v)))
                elif k.lower() in ("objectsid", "msexchmastersccountsid", "msexchmasteraccountsid"):
                    try:
                        shown.append(sid.to_text(v))
                    except ValueError:
                        shown.append(v.hex())
                else:
                    shown.append(v.hex())
            else:
                shown.append(v)
        out[k] = shown if len(shown) != 1 else shown[0]
    return out


def _db_dn(d: Directory, text: str | None) -> str:
    """A mailbox database from its DN, SERVER/SG/DB, or its name; without one, the only
    mailbox database there is."""
    if text and "=" in text:
        return text
    if text and "/" in text:
        parts = text.split("/")
        if len(parts) != 3:
            raise DirectoryError("other", f"--db {text!r}: give SERVER/STORAGEGROUP/DATABASE, a name or a DN")
        server, sg, db = parts
        flt = f"(&(objectCategory=msExchExchangeServer)(cn={escape_filter_value(server)}))"
        found = list(d.search(d.exchange_dn, flt))
        if not found:
            raise DirectoryError("noSuchObject", f"no server {server!r} in the directory")
        return f"CN={dnmod.escape_value(db)},CN={dnmod.escape_value(sg)},CN=InformationStore,{found[0].dn}"
    flt = "(objectCategory=msExchPrivateMDB)" if not text else (
        f"(&(objectCategory=msExchPrivateMDB)(cn={escape_filter_value(text)}))")
    dbs = list(d.search(d.exchange_dn, flt))
    if len(dbs) == 1:
        return dbs[0].dn
    if not dbs:
        raise DirectoryError("noSuchObject", f"no mailbox database {text!r}" if text else "no mailbox database exists")
    raise DirectoryError(
        "other", f"{len(dbs)} mailbox databases match; choose one with --db SERVER/SG/DB or its DN: "
        + "; ".join(x.dn for x in dbs),
    )


def main(ns: argparse.Namespace, *, data: str) -> int:
    out = sys.stdout
    try:
        d = open_directory(data)
        try:
            return _run(d, ns, out)
        finally:
            d.close()
    except (DirectoryError, ValueError) as e:  # ValueError: a malformed DN or value given on the command line
        print(f"mailkeep {ns.command}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # e.g. the audit's --log file cannot be written (nothing was changed then)
        print(f"mailkeep {ns.command}: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1


def _run(d: Directory, ns: argparse.Namespace, out: Any) -> int:
    if ns.command == "user":
        act = ns.action
        if act == "add":
            pw = ns.password
            if pw is None and sys.stdin.isatty():
                pw = getpass.getpass(f"Password for {ns.name}: ")
            e = d.add_user(ns.name, password_text=pw, display_name=ns.display_name, disabled=ns.disabled)
            print(f"Added user {e.dn}", file=out)
        elif act == "list":
            users = sorted(d.users(), key=lambda e: str(e.text("sAMAccountName")).lower())
            if ns.json:
                print(json.dumps([_show(u) for u in users], indent=2), file=out)
            for u in [] if ns.json else users:
                state = "disabled" if d.is_disabled(u) else "enabled"
                print(f"{u.text('sAMAccountName'):<20} {state:<9} {u.text('homeMDB') or '(no mailbox)'}", file=out)
        elif act == "show":
            shown = _show(d.require_user(ns.name))
            if ns.json:
                print(json.dumps(shown, indent=2), file=out)
            else:
                for k, v in shown.items():
                    print(f"{k}: {v}", file=out)
        elif act in ("disable", "enable"):
            e = d.set_disabled(ns.name, act == "disable")
            print(f"{e.dn}: {'disabled' if d.is_disabled(e) else 'enabled'}", file=out)
        elif act == "mailbox-enable":
            e = tasks.mailbox_enable(d, ns.name, _db_dn(d, ns.db), nickname=ns.nickname)
            print(f"{e.dn}: mailbox-enabled on {e.text('homeMDB')} (mail {e.text('mail')})", file=out)
        elif act == "delete-mailbox":
            e = tasks.delete_mailbox(d, ns.name)
            print(f"{e.dn}: mailbox attributes removed; the mailbox will be marked Disconnected", file=out)
        elif act == "remove-exchange-attributes":
            e = tasks.remove_exchange_attributes(d, ns.name)
            print(f"{e.dn}: Exchange attributes removed (the store was not contacted)", file=out)
        elif act == "rus":
            changed = rus.run(d)
            print(f"Recipient Update Service: {len(changed)} user(s) completed", file=out)
            for dn in changed:
                print(f"  {dn}", file=out)
        return 0
    if ns.command == "directory" and ns.action == "audit-master-sid":
        audit = tasks.audit_master_sid(d, fix=ns.fix, log_path=ns.log)
        for line in audit.log:
            print(line, file=out)
        print(f"Log written to {ns.log}", file=out)
        return 0
    return 2
