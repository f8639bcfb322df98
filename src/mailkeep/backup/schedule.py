"""Scheduled backup jobs: named jobs kept in the data folder, run by the server's scheduler.

The guide schedules a backup with a job name, a schedule, and "Set Account Information":
the account Backup runs as. Mailkeep keeps the account's name, checks its password once when
the job is added (so a typo is caught then, not at 2 a.m.), and never stores the password: at
each run the scheduler checks that the account still exists, is enabled and is a backup
operator, and runs the job with that account's rights. A run that fails, or a run missed
because the server was down at its time, writes an error event (8020 failed, 8021 missed),
as the guide's advice to read the event log every day expects.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mailkeep.admin import roles
from mailkeep.admin.roles import Role
from mailkeep.backup import job
from mailkeep.store.store import Store

SOURCE = "NTBackup"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")


class ScheduleError(ValueError):
    pass


class NoSuchJob(ScheduleError):
    pass


@dataclass
class Job:
    name: str
    selection: list[str]
    media: str
    kind: str = "normal"
    account: str = ""
    at: str | None = None  # "HH:MM" local time
    days: list[str] = field(default_factory=lambda: list(DAYS))
    every: int | None = None  # seconds, instead of at/days
    description: str = ""
    verify: bool = False
    compress: bool = False
    owner_only: bool = False
    created: float = 0.0
    last_run: float | None = None
    last_status: str = ""

    def next_after(self, t: float) -> float:
        """The first scheduled time strictly after ``t``."""
        if self.every:
            base = self.last_run or self.created
            n = max(1, int((t - base) // self.every) + 1)
            return base + n * self.every
        assert self.at is not None
        hh, mm = (int(x) for x in self.at.split(":"))
        lt = time.localtime(t)
        day0 = time.mktime((lt.tm_year, lt.tm_mon, lt.tm_mday, hh, mm, 0, 0, 0, -1))
        for k in range(0, 8):
            cand = time.mktime(time.localtime(day0 + k * 86400)[:3] + (hh, mm, 0, 0, 0, -1))
            if cand > t and DAYS[time.localtime(cand).tm_wday] in self.days:
                return cand
        raise ScheduleError(f"job {self.name} has no day to run on")


def folder(data: str) -> str:
    return os.path.join(data, "schedules")


def _path(data: str, name: str) -> str:
    if not NAME.fullmatch(name):  # also keeps a name from leaving the folder ("../x")
        raise ScheduleError(f"job name {name!r}: use letters, digits, space, '.', '_' or '-' (up to 64), "
                            "starting with a letter or digit")
    return os.path.join(folder(data), f"{name.lower()}.json")


def parse_every(text: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([smhd]?)", text.strip().lower())
    if not m or int(m.group(1)) < 1:
        raise ScheduleError(f"{text!r}: give an interval such as 30s, 15m, 6h or 1d")
    return int(m.group(1)) * {"": 60, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def save(data: str, j: Job) -> None:
    os.makedirs(folder(data), mode=0o700, exist_ok=True)
    p = _path(data, j.name)
    tmp = p + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(asdict(j), f, indent=1)
    os.replace(tmp, p)


def load(data: str, name: str) -> Job:
    try:
        with open(_path(data, name), encoding="utf-8") as f:
            try:
                return Job(**json.load(f))
            except (TypeError, ValueError) as e:
                raise ScheduleError(f"the scheduled job file of {name!r} is damaged ({e}); remove it and add "
                                    "the job again") from None
    except FileNotFoundError:
        have = ", ".join(j.name for j in list_jobs(data)) or "none"
        raise NoSuchJob(f"no scheduled job {name!r} (jobs: {have})") from None


def list_jobs(data: str) -> list[Job]:
    out = []
    try:
        names = sorted(os.listdir(folder(data)))
    except FileNotFoundError:
        return []
    for n in names:
        if n.endswith(".json"):
            try:
                with open(os.path.join(folder(data), n), encoding="utf-8") as f:
                    out.append(Job(**json.load(f)))
            except (OSError, ValueError, TypeError):
                continue
    return out


def add(store: Store, data: str, j: Job, *, password: str | None) -> Job:
    """Check everything a run will need, then save. ``password`` None: the caller already
    proved it is the account (its own session)."""
    if not NAME.fullmatch(j.name):
        raise ScheduleError(f"job name {j.name!r}: use letters, digits, space, '.', '_' or '-' (up to 64)")
    if os.path.exists(_path(data, j.name)):
        raise ScheduleError(f"a scheduled job named {j.name!r} exists; remove it first")
    if j.kind not in job.DATABASE_KINDS:
        raise ScheduleError(f"type must be one of {', '.join(job.DATABASE_KINDS)}")
    if (j.at is None) == (j.every is None):
        raise ScheduleError("give either --at HH:MM (with --days) or --every INTERVAL")
    if j.at is not None and not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d", j.at):
        raise ScheduleError(f"--at {j.at!r}: give a time as HH:MM (24-hour)")
    bad = [d for d in j.days if d not in DAYS]
    if bad or not j.days:
        raise ScheduleError(f"--days: use {','.join(DAYS)} (got {','.join(j.days) or 'none'})")
    if not os.path.isabs(j.media):
        raise ScheduleError(f"--media {j.media!r}: a scheduled job needs an absolute path (it runs in the server)")
    job.plan(store, j.selection)
    _check_account(store, j.account, password)
    j.created = time.time()
    save(data, j)
    return j


def _check_account(store: Store, account: str, password: str | None) -> None:
    d = store.directory
    if password is not None:
        if d.authenticate(account, password) is None:
            raise ScheduleError(f"the password for {account!r} is wrong, or the account is disabled")
        user = d.find_user(account)
    else:
        user = d.find_user(account)
    if user is None:
        raise ScheduleError(f"no account {account!r}")
    caller = roles.caller_for(d, user)
    caller.require(f"running scheduled backups as {account}", Role.BACKUP_OPERATOR)


def remove(data: str, name: str) -> Job:
    j = load(data, name)
    os.unlink(_path(data, name))
    return j


def run(store: Store, data: str, name: str) -> job.JobResult:
    """Run a job now, as its account; record the outcome; an error event if it failed."""
    j = load(data, name)
    ev = store.events
    try:
        _check_account(store, j.account, None)
        res = job.run(store, j.media, j.selection, job.Options(
            kind=j.kind, description=j.description or f"Scheduled job {j.name}", verify=j.verify,
            compress=j.compress, owner_only=j.owner_only, user=j.account))
    except Exception as e:
        j.last_run, j.last_status = time.time(), f"failed: {e}"
        save(data, j)
        ev.error(SOURCE, 8020, f"The scheduled backup job {j.name!r} (as {j.account}) failed: {e}", job=j.name)
        raise
    j.last_run = time.time()
    j.last_status = "completed" if res.ok else "completed with errors: " + "; ".join(res.errors)
    save(data, j)
    if not res.ok:
        ev.error(SOURCE, 8020, f"The scheduled backup job {j.name!r} (as {j.account}) {j.last_status}", job=j.name)
    return res


def due(data: str, now: float, since: float) -> tuple[list[Job], list[Job]]:
    """Jobs to run now, and jobs whose time passed while nothing ran them (``since``: when
    the scheduler last looked, or the server's start)."""
    run_now, missed = [], []
    for j in list_jobs(data):
        last = max(j.last_run or j.created, j.created)
        nxt = j.next_after(last)
        if nxt > now:
            continue
        if nxt < since - 1:  # its time came while the server was down (or the scheduler was stopped)
            missed.append(j)
        else:
            run_now.append(j)
    return run_now, missed


def mark_missed(store: Store, data: str, j: Job, now: float) -> None:
    store.events.error(SOURCE, 8021, f"The scheduled backup job {j.name!r} did not run at "
                       f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(j.next_after(j.last_run or j.created)))}: "
                       "the server was not running. Run it now with 'mailkeep backup schedule run "
                       f"{j.name}' if a backup is needed before its next time.", job=j.name)
    j.last_run = now
    j.last_status = "missed"
    save(data, j)


def describe(j: Job) -> dict[str, Any]:
    d = asdict(j)
    d["next_run"] = j.next_after(max(time.time(), j.last_run or 0.0))
    return d
