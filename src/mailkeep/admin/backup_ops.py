"""Scheduled backup jobs as operations (CLI and HTTP API alike).

Roles (the guide's "Permissions Required"): backup operators schedule and run backups; full
administrators may list and remove jobs too (they manage the server).
"""

from __future__ import annotations

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
