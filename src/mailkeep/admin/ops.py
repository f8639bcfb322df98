"""The administrative operations (storage groups, databases, users, mailboxes, roles, events).

Each is the library function behind a CLI command and an HTTP API call (see registry.py).
Roles follow the guide's "Permissions Required": configuring, mounting and dismounting,
and everything that changes mailboxes or accounts needs a full Exchange administrator; reading
the server's layout is open to backup operators too (they choose what to back up); the event
log to full and local administrators; ``me`` to every account.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

from mailkeep.admin import roles
from mailkeep.admin.registry import Context, Param, operation
from mailkeep.admin.roles import Role
from mailkeep.directory import dn as dnmod
from mailkeep.directory import rus, sid, tasks
from mailkeep.directory.backend import DirectoryError, Entry
from mailkeep.directory.directory import Directory, escape_filter_value
from mailkeep.store import agents
from mailkeep.store.server import ConfigError, DatabaseInfo, StorageGroupInfo

FULL = Role.FULL_ADMINISTRATOR
BACKUP = Role.BACKUP_OPERATOR
LOCAL = Role.LOCAL_ADMINISTRATOR
S, B, I = "string", "boolean", "integer"  # noqa: E741


# -- storage groups -------------------------------------------------------------------------------
def _sg_json(ctx: Context, g: StorageGroupInfo) -> dict[str, Any]:
    return {**asdict(g), "databases": [d.name for d in ctx.store.server.databases(g)]}


@operation("sg.list", "GET", "/storage-groups", "list storage groups", FULL, BACKUP)
def sg_list(ctx: Context) -> list[dict[str, Any]]:
    return [_sg_json(ctx, g) for g in ctx.store.server.storage_groups()]


@operation("sg.create", "POST", "/storage-groups", "create a storage group", FULL, params=(
    Param("name", S, True), Param("log_path"), Param("system_path"), Param("circular_logging", B),
    Param("recovery", B, doc="the recovery storage group (R00)")))
def sg_create(ctx: Context, name: str, log_path: str | None, system_path: str | None,
              circular_logging: bool | None, recovery: bool | None) -> dict[str, Any]:
    g = ctx.store.server.create_storage_group(name, log_path=log_path, system_path=system_path,
                                              circular=bool(circular_logging), recovery=bool(recovery))
    return {**_sg_json(ctx, g), "message": f"Created storage group {g.name} ({g.prefix}); logs in {g.log_path}, "
            f"system files in {g.system_path}"}


def _require_idle(ctx: Context, g: StorageGroupInfo) -> None:
    """Its files are about to move: nothing of the group may be open (its engine lock is taken
    and released, which fails while another process holds it; in the server, while any of its
    databases is mounted)."""
    ctx.store.group(g)
    ctx.store.close_group(g)


@operation("sg.set", "PATCH", "/storage-groups/{name}", "change a storage group's paths or circular logging", FULL,
           params=(Param("log_path"), Param("system_path"), Param("circular_logging", B)))
def sg_set(ctx: Context, name: str, log_path: str | None, system_path: str | None,
           circular_logging: bool | None) -> dict[str, Any]:
    srv = ctx.store.server
    _require_idle(ctx, srv.storage_group(name))
    g = srv.set_storage_group(name, log_path=log_path, system_path=system_path, circular=circular_logging)
    return {**_sg_json(ctx, g), "message": f"Storage group {g.name}: logs in {g.log_path}, system files in "
            f"{g.system_path}, circular logging {'on' if g.circular else 'off'}"}


@operation("sg.rename", "POST", "/storage-groups/{name}/rename", "rename a storage group", FULL,
           params=(Param("new", S, True),))
def sg_rename(ctx: Context, name: str, new: str) -> dict[str, Any]:
    g = ctx.store.server.rename_storage_group(name, new)
    return {**_sg_json(ctx, g), "message": f"Renamed storage group {name} to {g.name}"}


@operation("sg.delete", "DELETE", "/storage-groups/{name}", "delete a storage group (its files are kept)", FULL)
def sg_delete(ctx: Context, name: str) -> dict[str, Any]:
    g, kept = ctx.store.server.delete_storage_group(name)
    return {"name": g.name, "kept": kept, "message": f"Deleted storage group {g.name} ({g.prefix}) from the "
            f"directory. Its files were kept in {', '.join(kept)}; delete them yourself when they are no longer "
            "needed."}


# -- databases ------------------------------------------------------------------------------------
def _state(ctx: Context, d: DatabaseInfo) -> str:
    if ctx.local:
        return "mounted" if ctx.store.server.mount_intended(d) else "dismounted"
    return "mounted" if ctx.store.is_mounted(d) else "dismounted"


def _db_json(ctx: Context, d: DatabaseInfo) -> dict[str, Any]:
    return {"name": d.name, "storage_group": d.sg.name, "dn": d.dn, "guid": str(d.guid), "public": d.public,
            "edb": d.edb, "stm": d.stm, "state": _state(ctx, d), "mount_at_startup": d.mount_at_startup,
            "allow_restore_overwrite": d.allow_restore_overwrite}


@operation("db.list", "GET", "/databases", "list databases", FULL, BACKUP)
def db_list(ctx: Context) -> list[dict[str, Any]]:
    return [_db_json(ctx, d) for d in ctx.store.server.databases()]


@operation("db.create", "POST", "/databases", "create a database", FULL, params=(
    Param("storage_group", S, True), Param("name", S, True), Param("public", B), Param("edb"), Param("stm"),
    Param("mount", B, doc="mount it now (the guide advises not to before a restore)")))
def db_create(ctx: Context, storage_group: str, name: str, public: bool | None, edb: str | None, stm: str | None,
              mount: bool | None) -> dict[str, Any]:
    d = ctx.store.server.create_database(storage_group, name, public=bool(public), edb=edb, stm=stm)
    lines = [f"Created {d.kind} {d.name} in {d.sg.name} ({d.edb}, {d.stm})"]
    if mount:
        ctx.store.mount(d)
        lines.append(f"Mounted {d.path_name}")
    else:
        lines.append(f"Not mounted: mount it with 'mailkeep db mount \"{d.name}\"' (not before a restore into it).")
    return {**_db_json(ctx, d), "message": "\n".join(lines)}


@operation("db.set", "PATCH", "/databases/{name}", "change a database's settings or move its files", FULL, params=(
    Param("mount_at_startup", B), Param("allow_restore_overwrite", B,
                                        doc='"This database can be overwritten by a restore"'),
    Param("edb"), Param("stm")))
def db_set(ctx: Context, name: str, mount_at_startup: bool | None, allow_restore_overwrite: bool | None,
           edb: str | None, stm: str | None) -> dict[str, Any]:
    srv = ctx.store.server
    d = srv.database(name)
    if (edb or stm) and (srv.mount_intended(d) or ctx.store.is_mounted(d)):
        raise ConfigError(f"{d.kind} {d.name} is mounted: dismount it before moving its files")
    if edb or stm:
        _require_idle(ctx, d.sg)
    d = srv.set_database(name, mount_at_startup=mount_at_startup, allow_restore_overwrite=allow_restore_overwrite,
                         edb=edb, stm=stm)
    return {**_db_json(ctx, d), "message": f"{d.kind} {d.name}: mount at start-up "
            f"{'on' if d.mount_at_startup else 'off'}; this database can be overwritten by a restore: "
            f"{'on' if d.allow_restore_overwrite else 'off'}; files {d.edb}, {d.stm}"}


@operation("db.rename", "POST", "/databases/{name}/rename", "rename a database", FULL,
           params=(Param("new", S, True),))
def db_rename(ctx: Context, name: str, new: str) -> dict[str, Any]:
    d = ctx.store.server.rename_database(name, new)
    return {**_db_json(ctx, d), "message": f"Renamed {d.kind} {name} to {d.name}"}


@operation("db.delete", "DELETE", "/databases/{name}", "delete a database (its files are kept)", FULL)
def db_delete(ctx: Context, name: str) -> dict[str, Any]:
    srv = ctx.store.server
    d = srv.database(name)
    d = srv.delete_database(name, mounted=srv.mount_intended(d) or ctx.store.is_mounted(d))
    kept = [p for p in (d.edb, d.stm) if os.path.exists(p)]
    return {"name": d.name, "kept": kept, "message": f"Deleted {d.kind} {d.name} from the directory. " + (
        f"Its files were kept: {', '.join(kept)}; delete them yourself when they are no longer needed."
        if kept else "It had no files (it was never mounted).")}


@operation("db.mount", "POST", "/databases/{name}/mount", "mount a database", FULL, params=(
    Param("create_new", B, doc="the files are gone and no restore is coming: start an empty database"),))
def db_mount(ctx: Context, name: str, create_new: bool | None) -> dict[str, Any]:
    d = ctx.store.mount(name, create_new=bool(create_new))
    when = ("whenever the store runs (mailkeep deliver, mailkeep serve) until 'mailkeep db dismount'" if ctx.local
            else "now, and at every start of the server until 'mailkeep db dismount'")
    return {**_db_json(ctx, d), "message": f"Mounted {d.path_name}: consistent, and mounted {when}."}


@operation("db.dismount", "POST", "/databases/{name}/dismount", "dismount a database (Clean Shutdown)", FULL)
def db_dismount(ctx: Context, name: str) -> dict[str, Any]:
    srv = ctx.store.server
    d = srv.database(name)
    if srv.files_created(d) and os.path.exists(d.edb) and os.path.exists(d.stm):
        ctx.store.mount(d)  # brings a database left dirty by a crash to Clean Shutdown first
    ctx.store.dismount(d)
    return {**_db_json(ctx, d), "message": f"Dismounted {d.path_name} (Clean Shutdown); it stays dismounted until "
            "'mailkeep db mount'."}


# -- mailboxes ------------------------------------------------------------------------------------
def _mounted(ctx: Context) -> None:
    if ctx.local:
        ctx.store.mount_intended()


@operation("mailbox.list", "GET", "/mailboxes", "list mailboxes", FULL,
           params=(Param("db"), Param("disconnected", B)))
def mailbox_list(ctx: Context, db: str | None, disconnected: bool | None) -> list[dict[str, Any]]:
    _mounted(ctx)
    return [asdict(m) for m in agents.list_mailboxes(ctx.store, db, disconnected=bool(disconnected))]


@operation("mailbox.cleanup", "POST", "/mailboxes/cleanup", "run the Mailbox Cleanup Agent", FULL,
           params=(Param("db"),))
def mailbox_cleanup(ctx: Context, db: str | None) -> dict[str, Any]:
    _mounted(ctx)
    rep = agents.cleanup(ctx.store, db)
    lines = [f"Mailbox Cleanup Agent: {len(rep.disconnected)} disconnected, {len(rep.tombstoned)} tombstoned, "
             f"{len(rep.purged)} purged, {rep.deleted_items_purged} deleted item(s) past retention removed"]
    lines += [f"  disconnected {g}" for g in rep.disconnected]
    return {**asdict(rep), "message": "\n".join(lines)}


@operation("mailbox.purge", "POST", "/mailboxes/{guid}/purge", "purge a disconnected mailbox", FULL,
           params=(Param("db", doc="the database holding it (when the GUID is in several)"),))
def mailbox_purge(ctx: Context, guid: str, db: str | None) -> dict[str, Any]:
    _mounted(ctx)
    m = agents.purge(ctx.store, guid, db)
    return {**asdict(m), "message": f"Purged mailbox {m.guid} ({m.display_name}, {m.messages} item(s)) from "
            f"{m.database}"}


@operation("mailbox.reconnect", "POST", "/mailboxes/{guid}/reconnect",
           "connect a disconnected mailbox to an account without a mailbox", FULL, params=(Param("user", S, True),))
def mailbox_reconnect(ctx: Context, guid: str, user: str) -> dict[str, Any]:
    _mounted(ctx)
    e = agents.reconnect(ctx.store, guid, user)
    return {"guid": guid, "user": e.dn, "message": f"Reconnected mailbox {guid} to {e.dn}"}


@operation("mailbox.recover", "POST", "/mailboxes/recover",
           "Mailbox Recovery Center: match disconnected mailboxes to their owners (apply: reconnect)", FULL,
           params=(Param("db"), Param("apply", B)))
def mailbox_recover(ctx: Context, db: str | None, apply: bool | None) -> dict[str, Any]:
    _mounted(ctx)
    sugg, problems = agents.recover(ctx.store, db, apply=bool(apply))
    failed = {p.split(":", 1)[0] for p in problems}
    done = sum(1 for s in sugg if s.match and s.guid not in failed) if apply else 0
    return {"suggestions": [asdict(s) for s in sugg], "problems": problems, "applied": bool(apply),
            "reconnected": done}


@operation("mailbox.move", "POST", "/mailboxes/move", "Move Mailbox to another database of this server", FULL,
           params=(Param("user", S, True), Param("to", S, True)))
def mailbox_move(ctx: Context, user: str, to: str) -> dict[str, Any]:
    _mounted(ctx)
    d = agents.move(ctx.store, user, to)
    return {"user": user, "database": d.path_name, "message": f"Moved the mailbox of {user} to {d.path_name}"}


def _location(text: str) -> tasks.Location:
    parts = text.split("/")
    if len(parts) != 5 or not all(parts):
        raise DirectoryError("other", f"{text!r}: give ORGANIZATION/ADMINGROUP/SERVER/STORAGEGROUP/DATABASE")
    return tasks.Location(*parts)


@operation("mailbox.rehome", "POST", "/mailboxes/rehome",
           "the guide's re-home script: move users' homeMDB/homeMTA/msExchHomeServerName", FULL, params=(
               Param("from", S, True), Param("to", S, True), Param("mta_server"), Param("trial", B)))
def mailbox_rehome(ctx: Context, to: str, mta_server: str | None, trial: bool | None, **kw: str) -> dict[str, Any]:
    rep = tasks.rehome(ctx.directory, _location(kw["from"]), _location(to), mta_server=mta_server,
                       trial=bool(trial))
    return {**asdict(rep), "ok": not (rep.failed or not rep.matched)}


# -- users ----------------------------------------------------------------------------------------
def show_entry(e: Entry) -> dict[str, Any]:
    """An account's attributes for people: GUIDs and SIDs as text, never the password hash."""
    import uuid

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


def db_dn(d: Directory, text: str | None) -> str:
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


@operation("user.add", "POST", "/users", "add an account", FULL, params=(
    Param("name", S, True), Param("password"), Param("display_name"), Param("disabled", B)))
def user_add(ctx: Context, name: str, password: str | None, display_name: str | None,
             disabled: bool | None) -> dict[str, Any]:
    e = ctx.directory.add_user(name, password_text=password, display_name=display_name,
                                     disabled=bool(disabled))
    return {"dn": e.dn, "message": f"Added user {e.dn}"}


@operation("user.list", "GET", "/users", "list accounts", FULL)
def user_list(ctx: Context) -> list[dict[str, Any]]:
    d = ctx.directory
    users = sorted(d.users(), key=lambda e: str(e.text("sAMAccountName")).lower())
    return [{**show_entry(u), "disabled": d.is_disabled(u)} for u in users]


@operation("user.show", "GET", "/users/{name}", "show an account", FULL)
def user_show(ctx: Context, name: str) -> dict[str, Any]:
    return show_entry(ctx.directory.require_user(name))


@operation("user.disable", "POST", "/users/{name}/disable", "disable an account", FULL)
def user_disable(ctx: Context, name: str) -> dict[str, Any]:
    e = ctx.directory.set_disabled(name, True)
    return {"dn": e.dn, "message": f"{e.dn}: {'disabled' if ctx.directory.is_disabled(e) else 'enabled'}"}


@operation("user.enable", "POST", "/users/{name}/enable", "enable an account", FULL)
def user_enable(ctx: Context, name: str) -> dict[str, Any]:
    e = ctx.directory.set_disabled(name, False)
    return {"dn": e.dn, "message": f"{e.dn}: {'disabled' if ctx.directory.is_disabled(e) else 'enabled'}"}


@operation("user.mailbox-enable", "POST", "/users/{name}/mailbox-enable", "give an account a mailbox", FULL,
           params=(Param("db", doc="its name, SERVER/SG/DB or DN (default: the only one)"), Param("nickname")))
def user_mailbox_enable(ctx: Context, name: str, db: str | None, nickname: str | None) -> dict[str, Any]:
    d = ctx.directory
    e = tasks.mailbox_enable(d, name, db_dn(d, db), nickname=nickname)
    return {"dn": e.dn, "message": f"{e.dn}: mailbox-enabled on {e.text('homeMDB')} (mail {e.text('mail')})"}


@operation("user.delete-mailbox", "POST", "/users/{name}/delete-mailbox",
           "remove an account's mailbox attributes (the mailbox becomes disconnected)", FULL)
def user_delete_mailbox(ctx: Context, name: str) -> dict[str, Any]:
    e = tasks.delete_mailbox(ctx.directory, name)
    return {"dn": e.dn, "message": f"{e.dn}: mailbox attributes removed; the mailbox will be marked Disconnected"}


@operation("user.remove-exchange-attributes", "POST", "/users/{name}/remove-exchange-attributes",
           "remove an account's Exchange attributes without contacting the store", FULL)
def user_remove_exchange_attributes(ctx: Context, name: str) -> dict[str, Any]:
    e = tasks.remove_exchange_attributes(ctx.directory, name)
    return {"dn": e.dn, "message": f"{e.dn}: Exchange attributes removed (the store was not contacted)"}


@operation("user.rus", "POST", "/users/rus", "run the Recipient Update Service", FULL)
def user_rus(ctx: Context) -> dict[str, Any]:
    changed = rus.run(ctx.directory)
    lines = [f"Recipient Update Service: {len(changed)} user(s) completed"] + [f"  {dn}" for dn in changed]
    return {"changed": changed, "message": "\n".join(lines)}


@operation("directory.audit-master-sid", "POST", "/directory/audit-master-sid",
           "find (and with fix correct) msExchMasterAccountSid problems", FULL, params=(Param("fix", B),))
def directory_audit(ctx: Context, fix: bool | None) -> dict[str, Any]:
    rep = tasks.audit_master_sid(ctx.directory, fix=bool(fix))
    return asdict(rep)


# -- roles and the caller -------------------------------------------------------------------------
@operation("role.list", "GET", "/roles", "list the roles and who holds them", FULL, LOCAL)
def role_list(ctx: Context) -> list[dict[str, Any]]:
    held = roles.members(ctx.directory)
    return [{"role": r.value, "title": r.title, "group": roles.GROUPS[r], "members": held[r]} for r in roles.GROUPS]


@operation("role.grant", "POST", "/roles/{role}/members", "grant an account a role", FULL,
           params=(Param("user", S, True),))
def role_grant(ctx: Context, role: str, user: str) -> dict[str, Any]:
    r = roles.parse_role(role)
    _may_change(ctx, r)
    e = roles.grant(ctx.directory, user, r)
    return {"role": r.value, "user": e.dn, "message": f"{user} is now a {r.title} (member of {roles.GROUPS[r]})"}


@operation("role.revoke", "DELETE", "/roles/{role}/members/{user}", "take a role from an account", FULL)
def role_revoke(ctx: Context, role: str, user: str) -> dict[str, Any]:
    r = roles.parse_role(role)
    _may_change(ctx, r)
    e = roles.revoke(ctx.directory, user, r)
    return {"role": r.value, "user": e.dn, "message": f"{user} is no longer a {r.title}"}


def _may_change(ctx: Context, r: Role) -> None:
    """Local administrator is a separate right in the guide (configuration-set restores): only a
    local administrator grants or takes it, so a full administrator cannot give it to himself."""
    if r is LOCAL:
        ctx.caller.require(f"granting or revoking the role {r.title}", LOCAL)


@operation("me", "GET", "/me", "who am I: account, roles, mailbox")
def me(ctx: Context) -> dict[str, Any]:
    c = ctx.caller
    out: dict[str, Any] = {"name": c.name, "dn": c.dn, "roles": sorted(r.value for r in c.roles)}
    if c.dn:
        e = ctx.directory.require(c.dn)
        out["mail"] = e.text("mail")
        out["home_database"] = e.text("homeMDB")
    return out


# -- events ---------------------------------------------------------------------------------------
@operation("events.list", "GET", "/events", "read the application event log", FULL, LOCAL, params=(
    Param("source"), Param("id", I), Param("level", enum=("information", "warning", "error")),
    Param("since", "number", doc="seconds since the epoch")))
def events_list(ctx: Context, source: str | None, id: int | None, level: str | None,  # noqa: A002
                since: float | None) -> list[dict[str, Any]]:
    from mailkeep.eventlog import EventLog

    log = EventLog(os.path.join(ctx.data, "events.jsonl"))
    return [asdict(ev) for ev in log.read(source=source, event_id=id, level=level, since=since)]


__all__ = ["ConfigError"]
