"""Scheduled backup jobs as operations (CLI and HTTP API alike).

Roles (the guide's "Permissions Required"): backup operators schedule and run backups; full
administrators may list and remove jobs too (they manage the server).
"""

from __future__ import annotations

import os
from typing import Any

from mailkeep.admin.registry import Context, Param, operation
from mailkeep.admin.roles import SERVICE, Role
from mailkeep.backup import schedule

BACKUP = Role.BACKUP_OPERATOR
FULL = Role.FULL_ADMINISTRATOR


@operation("schedule.list", "GET", "/backup/schedules", "list scheduled backup jobs", BACKUP, FULL)
def schedule_list(ctx: Context) -> list[dict[str, Any]]:
    return [schedule.describe(j) for j in schedule.list_jobs(ctx.data)]


@operation("schedule.add", "POST", "/backup/schedules", "schedule a backup job", BACKUP, params=(
    Param("name", "string", True), Param("selection", "array", True), Param("media", "string", True),
    Param("type", enum=("normal", "copy", "incremental", "differential")),
    Param("account", doc="the account the job runs as (a backup operator); default: the caller"),
    Param("password", doc="that account's password (checked now, never stored)"),
    Param("at", doc="HH:MM"), Param("days", "array", doc="mon..sun (default every day)"),
    Param("every", doc="instead of at: an interval such as 30s, 15m, 6h, 1d"),
    Param("description"), Param("verify", "boolean"), Param("compress", "boolean"),
    Param("owner_only", "boolean", doc="new media readable only by the server's account (mode 0600)")))
def schedule_add(ctx: Context, name: str, selection: list[str], media: str, type: str | None,  # noqa: A002
                 account: str | None, password: str | None, at: str | None, days: list[str] | None,
                 every: str | None, description: str | None, verify: bool | None,
                 compress: bool | None, owner_only: bool | None) -> dict[str, Any]:
    caller = ctx.caller
    account = account or (caller.name if caller is not SERVICE else "")
    if not account:
        raise schedule.ScheduleError("give the account the job runs as (--account NAME) and its password")
    if password is None and (caller is SERVICE or caller.name.lower() != account.lower()):
        raise schedule.ScheduleError(f"give the password of {account} (Set Account Information): it is checked "
                                     "now and never stored")
    j = schedule.Job(name=name, selection=selection, media=media, kind=type or "normal", account=account, at=at,
                     days=[d.lower() for d in days] if days else list(schedule.DAYS),
                     every=schedule.parse_every(every) if every else None, description=description or "",
                     verify=bool(verify), compress=bool(compress), owner_only=bool(owner_only))
    schedule.add(ctx.store, ctx.data, j, password=password)
    d = schedule.describe(j)
    when = f"every {every}" if every else f"at {at} on {','.join(j.days)}"
    return {**d, "message": f"Scheduled backup job {j.name!r}: {j.kind} backup of {', '.join(j.selection)} to "
            f"{j.media} {when}, as {j.account}"}


@operation("schedule.remove", "DELETE", "/backup/schedules/{name}", "remove a scheduled backup job", BACKUP, FULL)
def schedule_remove(ctx: Context, name: str) -> dict[str, Any]:
    j = schedule.remove(ctx.data, name)
    return {"name": j.name, "message": f"Removed the scheduled backup job {j.name!r}"}


@operation("schedule.run", "POST", "/backup/schedules/{name}/run", "run a scheduled backup job now", BACKUP,
           exclusive=False)
def schedule_run(ctx: Context, name: str) -> dict[str, Any]:
    if ctx.local:
        ctx.store.mount_intended()
    res = schedule.run(ctx.store, ctx.data, name)
    return {"ok": res.ok, "set": res.set.number, "errors": res.errors, "report": res.report}


# -- restore (the guide: restores need full Exchange administrator rights) -----------------------
@operation("backup.restore", "POST", "/backup/restore", "restore databases from backup media", FULL, params=(
    Param("media", "string", True, doc="absolute path on the server's machine"), Param("set", "integer", True),
    Param("selection", "array", True), Param("temp", doc="temporary folder for logs and restore.env"),
    Param("last", "boolean", doc="Last Restore Set: start hard recovery"),
    Param("mount", "boolean", doc="mount the databases afterwards (with last)"),
    Param("keep_damaged", doc="move the existing database files to this folder first"),
    Param("roll_forward", "boolean", doc="with last: also replay the storage group's own logs (default true)"),
    Param("to_server", doc="the server meant to receive the restore: refused if it is not this one")),
    exclusive=False)
def backup_restore(ctx: Context, media: str, set: int, selection: list[str], temp: str | None,  # noqa: A002
                   last: bool | None, mount: bool | None, keep_damaged: str | None,
                   roll_forward: bool | None, to_server: str | None) -> dict[str, Any]:
    from mailkeep.backup import restore

    here = ctx.store.server.name
    if to_server and to_server.lower() != here.lower():
        raise restore.RestoreError(f"--to-server {to_server}: this is server {here}. Run the restore against "
                                   f"{to_server}'s data folder (--data) or its running server")

    res = restore.restore(ctx.store, media, set, selection, temp or default_temp(ctx.data), last=bool(last),
                          mount=bool(mount), keep_damaged=keep_damaged, roll_forward=roll_forward is not False,
                          local=ctx.local)
    return {"report": res.report, "folders": res.folders, "files": res.files, "bytes": res.bytes,
            "mounted": res.mounted, "notes": res.notes,
            "recovered": [_hr(r) for r in res.recovered]}


@operation("restore.hard-recovery", "POST", "/backup/hard-recovery",
           "hard recovery from a restore's temporary folder (eseutil /cc)", FULL, params=(
               Param("temp", "string", True), Param("keep", "boolean", doc="/k: keep restore.env"),
               Param("roll_forward", "boolean", doc="false = /t: only the restored logs")), exclusive=False)
def hard_recovery(ctx: Context, temp: str, keep: bool | None, roll_forward: bool | None) -> dict[str, Any]:
    from mailkeep.backup import restore

    return _hr(restore.hard_recovery(ctx.store, temp, keep=bool(keep), roll_forward=roll_forward is not False))


def default_temp(data: str) -> str:
    return os.path.join(data, "restore")


def _hr(r: Any) -> dict[str, Any]:
    return {"folder": r.folder, "storage_group": r.storage_group, "databases": r.databases,
            "restored_logs": list(r.restored_logs), "rolled_to": r.rolled_to, "stopped": r.stopped,
            "kept_env": r.kept_env}
