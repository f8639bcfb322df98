"""`mailkeep backup run|verify|catalog|report`: thin layers over mailkeep.backup.

Where the data comes from (§10): with no server running on the data folder, this process
opens the store and backs it up itself; while ``mailkeep serve`` runs, the backup streams
from it over its HTTP API (as the service account, or ``--user``); with ``--server URL`` it
streams from another server (the guide's Remote Store option), as ``--user``, who must be a
backup operator. The media are always written here.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
import time
from typing import Any, TextIO

from mailkeep.admin.registry import BadRequest
from mailkeep.admin.roles import AccessDenied
from mailkeep.backup import catalog, job, report
from mailkeep.backup.media import MediaError, MediaReader, verify
from mailkeep.backup.restore import RestoreError
from mailkeep.backup.stream import RemoteBackupError, remote_source
from mailkeep.cli.target import TOKEN, RemoteError, running_server, target, tls_client
from mailkeep.directory.backend import DirectoryError
from mailkeep.engine.errors import EseError
from mailkeep.store.errors import StoreError
from mailkeep.store.server import ConfigError

KINDS = ("normal", "copy", "incremental", "differential")


def add_parser(sub: Any) -> None:
    b = sub.add_parser("backup", help="online backup: run, verify, catalog, report")
    bs = b.add_subparsers(dest="action", required=True, metavar="ACTION")
    r = bs.add_parser("run", help="back up storage groups or databases into media")
    r.add_argument("selection", nargs="+", metavar="SELECTION",
                   help="'SERVER/Information Store', '.../STORAGE GROUP', '.../STORAGE GROUP/DATABASE', "
                   "'SERVER/Configuration' (needs $MAILKEEP_KEY_PASSWORD), or absolute file paths")
    r.add_argument("--media", required=True, metavar="FILE")
    r.add_argument("--type", default="normal", choices=KINDS + ("daily",),
                   help="daily: file sets only (files modified today)")
    r.add_argument("--exclude", action="append", metavar="PATTERN",
                   help="file sets: leave out paths matching this fnmatch pattern (repeatable); the data "
                   "folder's databases and logs are always left out")
    mode = r.add_mutually_exclusive_group()
    mode.add_argument("--append", action="store_true", help="add a set to the media (the default)")
    mode.add_argument("--replace", action="store_true", help="start the media over (asks, or --yes)")
    r.add_argument("--yes", action="store_true", help="do not ask before replacing media")
    r.add_argument("--description", default="")
    r.add_argument("--media-name")
    r.add_argument("--verify", action="store_true", help="verify the set after writing it")
    r.add_argument("--compress", action="store_true", help="zstandard, per file")
    r.add_argument("--owner-only", action="store_true", help="new media readable only by you (mode 0600)")
    r.add_argument("--log", choices=("summary", "detailed"), default="summary")
    r.add_argument("--server", metavar="URL", help="back up another server over its HTTP API (needs --user)")
    r.add_argument("--cafile", metavar="PEM", help="trust this certificate for an https --server (default "
                   "$MAILKEEP_CAFILE, else the system's trust store)")
    r.add_argument("--json", action="store_true")
    rs = bs.add_parser("restore", help="restore databases from a set; --last-restore-set starts hard recovery")
    rs.add_argument("selection", nargs="+", metavar="SELECTION",
                    help="'SERVER/Information Store[/STORAGE GROUP[/DATABASE]]' as the media name it")
    rs.add_argument("--media", required=True, metavar="FILE")
    rs.add_argument("--set", type=int, required=True, metavar="N")
    rs.add_argument("--temp", metavar="DIR", help="temporary folder for logs and restore.env (default "
                    "DATA/restore); one per normal or copy set; the same one for its incrementals/differentials")
    rs.add_argument("--last-restore-set", action="store_true", help="the last set of the series: hard recovery now")
    rs.add_argument("--mount", action="store_true", help="mount after hard recovery (the guide advises not to)")
    rs.add_argument("--keep-damaged", metavar="DIR", help="move the existing database files here first "
                    "(same file system)")
    rs.add_argument("--to-server", metavar="NAME", help="the server meant to receive the restore (a check: the "
                    "restore goes to the data folder's server, whose names must match the media's)")
    rs.add_argument("--json", action="store_true")
    v = bs.add_parser("verify", help="re-read a set (or every set) and compare checksums")
    v.add_argument("--media", required=True, metavar="FILE")
    v.add_argument("--set", type=int)
    v.add_argument("--json", action="store_true")
    c = bs.add_parser("catalog", help="the on-disk catalog of media: list, show, rebuild, delete")
    c.add_argument("what", choices=("list", "show", "rebuild", "delete"))
    c.add_argument("--media", required=True, metavar="FILE")
    c.add_argument("--set", type=int)
    c.add_argument("--json", action="store_true")
    sc = bs.add_parser("schedule", help="scheduled backup jobs: list, add, remove, run")
    ss = sc.add_subparsers(dest="schedule_action", required=True, metavar="ACTION")
    ss.add_parser("list").add_argument("--json", action="store_true")
    a = ss.add_parser("add")
    a.add_argument("name")
    a.add_argument("selection", nargs="+", metavar="SELECTION")
    a.add_argument("--media", required=True, metavar="FILE", help="absolute path (the server writes it)")
    a.add_argument("--type", default="normal", choices=KINDS)
    a.add_argument("--account", help="the account the job runs as (a backup operator); its password from "
                   "$MAILKEEP_JOB_PASSWORD or a prompt")
    a.add_argument("--at", metavar="HH:MM")
    a.add_argument("--days", metavar="mon,tue,...", help="with --at (default every day)")
    a.add_argument("--every", metavar="INTERVAL", help="instead of --at: 30s, 15m, 6h, 1d")
    a.add_argument("--description", default="")
    a.add_argument("--verify", action="store_true")
    a.add_argument("--compress", action="store_true")
    a.add_argument("--owner-only", action="store_true", help="new media readable only by the server's account")
    for verb in ("remove", "run"):
        ss.add_parser(verb).add_argument("name")
    p = bs.add_parser("report", help="the backup log (Backup Status / Verify Status sections)")
    p.add_argument("--last", action="store_true", help="only the last run's sections")


def main(ns: argparse.Namespace, *, data: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        if ns.action == "run":
            return _run(ns, data, out)
        if ns.action == "verify":
            return _verify(ns, out)
        if ns.action == "catalog":
            return _catalog(ns, out)
        if ns.action == "schedule":
            return _schedule(ns, data, out)
        if ns.action == "restore":
            return _restore(ns, data, out)
        return _report(ns, out)
    except (MediaError, job.SelectionError, job.BackupFailed, RemoteBackupError, ConfigError, StoreError, EseError,
            DirectoryError, RemoteError, AccessDenied, BadRequest, ValueError, RestoreError) as e:
        print(f"mailkeep backup {ns.action}: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"mailkeep backup {ns.action}: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 1


def _auth_user(user: str) -> str:
    password = os.environ.get("MAILKEEP_PASSWORD")
    if password is None:
        password = getpass.getpass(f"Password for {user}: ")
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _run(ns: argparse.Namespace, data: str, out: TextIO) -> int:
    if ns.replace and os.path.exists(ns.media) and not ns.yes:
        if not sys.stdin.isatty():
            raise MediaError(f"--replace would erase every set on {ns.media}; add --yes to confirm")
        n = len(MediaReader(ns.media).sets())
        if input(f"Replace the {n} backup set(s) on {ns.media}? [y/N] ").strip().lower() not in ("y", "yes"):
            print("Nothing was changed.", file=out)
            return 1
    user = ns.user or os.environ.get("MAILKEEP_USER") or ""
    opts = job.Options(kind=ns.type, description=ns.description, media_name=ns.media_name, replace=ns.replace,
                       owner_only=ns.owner_only, compress=ns.compress, verify=ns.verify,
                       detailed=ns.log == "detailed", user=user)
    progress = _Progress() if sys.stderr.isatty() and not ns.json else None
    sel = job.split_selection(ns.selection)
    key_password = os.environ.get("MAILKEEP_KEY_PASSWORD") if sel.config else None
    if sel.config and key_password is None and sys.stdin.isatty():
        key_password = getpass.getpass("Password to encrypt the TLS private key in the configuration set: ")
    store = None
    sources: list[job.Source] = []
    after = []
    files = None
    try:
        if sel.server_side:
            if ns.type not in job.DATABASE_KINDS:
                raise job.SelectionError(f"--type {ns.type} applies to file sets only; the information store and "
                                         f"the configuration set take {', '.join(job.DATABASE_KINDS)}")
            server_sel = [x for x in ns.selection if not x.strip().startswith("/")]
            if ns.server:
                if not user:
                    raise MediaError("--server needs --user NAME (a backup operator of that server)")
                sources.append(remote_source(ns.server, _auth_user(user), server_sel, ns.type,
                                             context=tls_client(ns.cafile), key_password=key_password))
            elif (state := running_server(data)) is not None:
                url = f"{'https' if state.get('https') else 'http'}://{_host(state)}:{state['http']}"
                if user:
                    auth = _auth_user(user)
                else:
                    with open(os.path.join(data, TOKEN), encoding="utf-8") as f:
                        auth = "Bearer " + f.read().strip()
                    opts.user = _os_user()
                ctx = tls_client(os.path.join(data, "tls", "cert.pem") if state.get("https") else None)
                sources.append(remote_source(url, auth, server_sel, ns.type, context=ctx, key_password=key_password))
            else:
                from mailkeep.store.store import Store

                store = Store.open(data)
                store.mount_intended()
                opts.user = opts.user or _os_user()
                sources.append(job.source(store, server_sel, ns.type, key_password=key_password))
        if sel.files:
            from mailkeep.backup import files as filesets

            files = filesets.FileSource(filesets.FilePlan(
                sel.files, ns.type, excluded=filesets.default_exclusions(data if os.path.isdir(data) else None),
                patterns=list(ns.exclude or [])))
            sources.append(files.source())
            after.append(files.commit)
            opts.user = opts.user or _os_user()
        res = job.write_set(sources, ns.media, ns.selection, opts, progress=progress.tick if progress else None,
                            after=after)
    finally:
        if progress is not None:
            progress.stop()
        if files is not None:
            files.close()
        if store is not None:
            store.close()
    catalog.rebuild(ns.media)
    if ns.json:
        print(json.dumps({
            "media": os.path.abspath(ns.media), "set": res.set.number, "type": res.set.kind,
            "files": len(res.set.entries), "bytes": res.set.bytes, "errors": res.errors, "truncated": res.truncated,
            "storage_groups": res.set.extra.get("storage_groups", []),
            "verify": None if res.verify is None else {"files": res.verify.files, "different": res.verify.different},
            "removed_incomplete_sets": res.removed_incomplete,
        }, indent=2), file=out)
    else:
        for n in res.removed_incomplete:
            print(f"Removed incomplete set #{n} (from a backup that did not finish) before appending.", file=out)
        out.write(res.report)
    return 0 if res.ok else 1


def _host(state: dict[str, Any]) -> str:
    h = str(state.get("bind") or "127.0.0.1")
    return "127.0.0.1" if h in ("0.0.0.0", "::", "") else h


def _os_user() -> str:
    from mailkeep.backup.media import current_user

    return current_user()[0]


class _Progress:
    """Bytes and rate on the terminal (rich), one bar per file."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TransferSpeedColumn,
        )

        self.p = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                          transient=True)
        self.p.start()
        self.task: Any = None
        self.name = ""

    def tick(self, name: str, n: int) -> None:
        if name != self.name:
            if self.task is not None:
                self.p.remove_task(self.task)
            self.name = name
            self.task = self.p.add_task(name.rsplit("/", 1)[-1], total=None)
        self.p.advance(self.task, n)

    def stop(self) -> None:
        self.p.stop()


def _verify(ns: argparse.Namespace, out: TextIO) -> int:
    r = MediaReader(ns.media)
    r.check_access()
    numbers = [ns.set] if ns.set else [s.number for s in r.sets()]
    results = []
    bad = 0
    for n in numbers:
        v = verify(r, n)
        bad += len(v.different)
        results.append({"set": n, "files": v.files, "bytes": v.bytes, "different": v.different})
        text = job.verify_report(v, ns.media)
        if not ns.json:
            out.write(text)
    if ns.json:
        print(json.dumps(results, indent=2), file=out)
    return 1 if bad else 0


def _catalog(ns: argparse.Namespace, out: TextIO) -> int:
    if ns.what == "delete":
        gone = catalog.delete(ns.media)
        print(f"{'Deleted' if gone else 'There was no'} on-disk catalog of {ns.media}; the media were not touched.",
              file=out)
        return 0
    if ns.what == "rebuild":
        header, sets = catalog.rebuild(ns.media)
        print(f"Rebuilt the catalog of {ns.media} (media \"{header.name}\", {len(sets)} set(s)) from the media.",
              file=out)
        return 0
    header, sets, rebuilt = catalog.load(ns.media)
    if ns.what == "show":
        if not ns.set:
            raise MediaError("catalog show needs --set N")
        s = next((x for x in sets if x.number == ns.set), None)
        if s is None:
            raise MediaError(f"{ns.media} has no backup set #{ns.set}")
        if ns.json:
            print(json.dumps(s.to_json(), indent=2), file=out)
            return 0
        print(f"Backup set #{s.number} on media \"{header.name}\": {s.kind}, {s.description!r}, from {s.source}, "
              f"{report.when(s.started)}, {s.status}", file=out)
        for e in s.entries:
            print(f"  {e.size:>14,}  {e.role:<5}  {e.name}", file=out)
        return 0
    if ns.json:
        print(json.dumps({"media": header.__dict__, "sets": [
            {k: v for k, v in s.to_json().items() if k != "entries"} | {"files": len(s.entries), "bytes": s.bytes}
            for s in sets]}, indent=2), file=out)
        return 0
    print(f"Media \"{header.name}\" ({ns.media}), created {report.when(header.created)} by {header.owner}"
          + (", owner-only" if header.owner_only else "") + (" [catalog rebuilt from the media]" if rebuilt else ""),
          file=out)
    print(f"{'Set':>4}  {'Type':<12} {'Started':<22} {'Files':>6} {'Bytes':>15}  {'Status':<10} Description",
          file=out)
    for s in sets:
        print(f"{s.number:>4}  {s.kind:<12} {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(s.started)):<22} "
              f"{len(s.entries):>6} {s.bytes:>15,}  {s.status:<10} {s.description}", file=out)
    return 0


def _schedule(ns: argparse.Namespace, data: str, out: TextIO) -> int:
    act = ns.schedule_action
    t = target(data, getattr(ns, "user", None))
    try:
        if act == "list":
            jobs = t.call("schedule.list", {})
            if ns.json:
                print(json.dumps(jobs, indent=2), file=out)
                return 0
            print(f"{'Job':<20} {'Type':<13} {'When':<26} {'Account':<14} {'Next run':<17} Last", file=out)
            for j in jobs:
                when = f"every {j['every']} s" if j["every"] else f"{j['at']} {','.join(j['days'])}"
                nxt = time.strftime("%Y-%m-%d %H:%M", time.localtime(j["next_run"]))
                print(f"{j['name']:<20} {j['kind']:<13} {when:<26} {j['account']:<14} {nxt:<17} "
                      f"{j['last_status'] or '-'}", file=out)
            return 0
        if act == "add":
            password = None
            if ns.account:
                password = os.environ.get("MAILKEEP_JOB_PASSWORD")
                if password is None and sys.stdin.isatty():
                    password = getpass.getpass(f"Password for {ns.account} (Set Account Information): ")
            res = t.call("schedule.add", {
                "name": ns.name, "selection": ns.selection, "media": os.path.abspath(ns.media), "type": ns.type,
                "account": ns.account, "password": password, "at": ns.at,
                "days": ns.days.split(",") if ns.days else None, "every": ns.every,
                "description": ns.description, "verify": ns.verify, "compress": ns.compress,
                "owner_only": ns.owner_only})
            print(res["message"], file=out)
            return 0
        if act == "remove":
            print(t.call("schedule.remove", {"name": ns.name})["message"], file=out)
            return 0
        res = t.call("schedule.run", {"name": ns.name})
        out.write(res["report"])
        return 0 if res["ok"] else 1
    finally:
        t.close()


def _restore(ns: argparse.Namespace, data: str, out: TextIO) -> int:
    if ns.mount and not ns.last_restore_set:
        raise MediaError("--mount needs --last-restore-set: a database is mounted only after hard recovery")
    t = target(data, getattr(ns, "user", None))
    try:
        res = t.call("backup.restore", {
            "media": os.path.abspath(ns.media), "set": ns.set, "selection": ns.selection,
            "temp": os.path.abspath(ns.temp) if ns.temp else None, "last": ns.last_restore_set,
            "mount": ns.mount, "keep_damaged": os.path.abspath(ns.keep_damaged) if ns.keep_damaged else None,
            "to_server": ns.to_server})
    finally:
        t.close()
    if ns.json:
        print(json.dumps({k: v for k, v in res.items() if k != "report"}, indent=2), file=out)
        return 0
    out.write(res["report"])
    if not ns.last_restore_set:
        for folder in res["folders"]:
            print(f"Logs and restore.env are in {folder}. Restore the incremental or differential sets of this series "
                  f"into the same --temp, then run 'mailkeep eseutil /cc {folder}' (or restore the last one with "
                  "--last-restore-set).", file=out)
    return 0


def _report(ns: argparse.Namespace, out: TextIO) -> int:
    secs = report.sections()
    if not secs:
        print(f"No backup has been logged on this machine yet ({report.log_path()}).", file=out)
        return 0
    if ns.last:
        last = [secs[-1]]
        if secs[-1].startswith("Verify Status") and len(secs) > 1 and secs[-2].startswith("Backup Status"):
            last = secs[-2:]
        secs = last
    for s in secs:
        print(report.RULE, file=out)
        print(s, file=out)
    return 0
