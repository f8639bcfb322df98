"""Restore from backup media, and hard recovery (the guide's "Overview of the Database Restore
Process", "Recovering an Exchange Database", "How to Run Eseutil /cc").

A restore writes the database files of a normal or copy set to the paths the *target*
server's directory objects give (matched by storage group and database names, as the guide
requires), and the set's logs to ``<temp>/<storage group>/``, with ``restore.env`` describing
the restore. Incremental and differential sets restored afterwards into the same folder add
their logs and extend ``restore.env``. Hard recovery (``--last-restore-set`` or ``eseutil
/cc``) replays the restored logs into the restored databases only, then the storage group's
own log folder while its generations continue with the same signature, leaves the databases
in Clean Shutdown, and deletes ``restore.env`` (kept with ``/k``). Other databases of the
group stay mounted throughout.

Invariants:
- Everything is checked before anything is written: names, mounted targets, GUIDs and the
  overwrite flag, the temporary folder, space, the chain of sets (order and gaps), the
  catalog's records and generation numbers, the members on the media. Every file's SHA-256 is
  checked as it is read; the logs are restored first, and a database's two files replace the
  target's only when both were read whole and matched (a failed restore removes its logs).
- Media are hostile until checked: target paths come from the directory objects and log
  generation numbers, never from names on the media; nothing is written outside the targets.
- Hard recovery is idempotent (replay skips what a database holds), so an interrupted one is
  simply run again; ``restore.env`` goes only when it succeeded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from mailkeep.backup import report
from mailkeep.backup.media import Entry, MediaError, MediaReader, SetInfo
from mailkeep.engine import codec
from mailkeep.engine.database import Database
from mailkeep.engine.database import read_header as read_db_header
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.header import BackupInfo, DbState, Mark
from mailkeep.engine.logformat import gen_file_name, lsn
from mailkeep.engine.logreader import StreamLayout
from mailkeep.engine.logreader import read_header as read_log_header
from mailkeep.engine.recovery import replay
from mailkeep.store.server import DatabaseInfo, StorageGroupInfo
from mailkeep.store.store import Store

ENV = "restore.env"
SOURCE = "ESE"
SPACE_MARGIN = 10 * 1024 * 1024  # the guide: about 10 MB more than the logs being restored


class RestoreError(Exception):
    """A restore or hard recovery refused or failed; the message says why and what to do."""


@dataclass
class EnvDatabase:
    name: str
    guid: str
    signature: str
    source_edb: str
    source_stm: str
    dest_edb: str
    dest_stm: str
    target_guid: str = ""  # the target object's GUID (the media's is ``guid``)


@dataclass
class RestoreEnv:
    """``restore.env``: what the guide says it keeps track of (ESE's RESTORE_ENVIRONMENT)."""

    storage_group: str
    prefix: str
    server: str  # the server restored to
    backup_server: str
    log_signature: str
    log_low: int
    log_high: int
    databases: list[EnvDatabase]
    sets: list[dict[str, Any]] = field(default_factory=list)  # media GUID, set number, type, low, high
    last_restore_time: float = 0.0
    recover_status: str = "recoverNotStarted"
    recover_error: int = 0
    recover_time: float | None = None
    annotation: str = "Mailkeep Information Store"
    format: str = "mailkeep-restore-env/1"

    @classmethod
    def load(cls, folder: str) -> RestoreEnv | None:
        p = os.path.join(folder, ENV)
        try:
            with open(p, encoding="utf-8") as f:
                d = json.load(f)
            d["databases"] = [EnvDatabase(**x) for x in d["databases"]]
            return cls(**d)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, KeyError) as e:
            raise RestoreError(f"{p} is damaged ({e}); restore the normal set again into an empty folder") from None

    def save(self, folder: str) -> None:
        p = os.path.join(folder, ENV)
        tmp = p + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)


@dataclass
class RestoreResult:
    set: SetInfo
    folders: list[str] = field(default_factory=list)  # <temp>/<storage group> written
    files: int = 0
    bytes: int = 0
    notes: list[str] = field(default_factory=list)
    recovered: list[HardRecoveryResult] = field(default_factory=list)
    mounted: list[str] = field(default_factory=list)
    report: str = ""


@dataclass
class HardRecoveryResult:
    folder: str
    storage_group: str
    databases: list[str]
    restored_logs: tuple[int, int]
    rolled_to: int
    stopped: str
    kept_env: bool


# -- planning -------------------------------------------------------------------------------------
@dataclass
class _GroupPlan:
    record: dict[str, Any]  # the set's storage group record
    sg: StorageGroupInfo
    targets: list[tuple[dict[str, Any], DatabaseInfo]]  # (the set's database record, target database)
    logs: list[Entry]
    files: dict[str, list[Entry]]  # database name -> its edb, stm, patch entries
    folder: str
    env: RestoreEnv | None


def _selected(set_info: SetInfo, selection: list[str]) -> dict[str, set[str] | None]:
    """Storage group name -> database names chosen (None: every database of the set's group)."""
    groups = {g["name"].lower(): g for g in set_info.extra.get("storage_groups", [])}
    out: dict[str, set[str] | None] = {}
    for raw in selection:
        parts = [p for p in raw.strip().strip("/").split("/") if p]
        if len(parts) < 2 or parts[1].lower() != "information store":
            raise RestoreError(f"{raw!r}: name the backup tree as the media do: "
                               f"'{set_info.source}/Information Store[/STORAGE GROUP[/DATABASE]]'")
        if len(parts) == 2:
            for g in groups.values():
                out[g["name"]] = None
            continue
        g = groups.get(parts[2].lower())
        if g is None:
            raise RestoreError(f"{raw!r}: backup set #{set_info.number} holds no storage group {parts[2]!r} (it holds: "
                               f"{', '.join(x['name'] for x in groups.values()) or 'none'})")
        if len(parts) == 3:
            out[g["name"]] = None
        else:
            dbs = {d["name"].lower() for d in g.get("databases", [])}
            if parts[3].lower() not in dbs:
                raise RestoreError(f"{raw!r}: storage group {g['name']} of set #{set_info.number} holds no database "
                                   f"{parts[3]!r}")
            cur = out.get(g["name"], set())
            if cur is not None:
                cur.add(next(d["name"] for d in g["databases"] if d["name"].lower() == parts[3].lower()))
                out[g["name"]] = cur
    return out


def _plan(store: Store, s: SetInfo, selection: list[str], temp: str) -> list[_GroupPlan]:
    srv = store.server
    if s.status != "complete":
        raise RestoreError(f"backup set #{s.number} is incomplete (its backup did not finish); restore another set")
    full = s.kind in ("normal", "copy")
    _check_records(s)
    chosen = _selected(s, selection)
    plans = []
    for rec in s.extra.get("storage_groups", []):
        if rec["name"] not in chosen:
            continue
        if rec.get("status") != "complete":
            raise RestoreError(f"storage group {rec['name']} failed in backup set #{s.number} ({rec.get('status')}); "
                               "it cannot be restored from this set")
        _check_record(s, rec)
        try:
            sg = srv.storage_group(rec["name"])
        except Exception:
            have = ", ".join(g.name for g in srv.storage_groups())
            raise RestoreError(
                f"the media's storage group {rec['name']!r} does not exist on server {srv.name} (it has: {have}). "
                "The names must match: rename a storage group or create one with this name (the guide's "
                "\"Resolving Mismatched Names\"), then restore again.") from None
        names = chosen[rec["name"]]
        wanted = [d for d in rec.get("databases", []) if names is None or d["name"] in names]
        targets = []
        for d in wanted:
            t = next((x for x in srv.databases(sg) if x.name.lower() == d["name"].lower()), None)
            if t is None:
                have = ", ".join(x.name for x in srv.databases(sg)) or "none"
                raise RestoreError(
                    f"the media's database {d['name']!r} does not exist in storage group {sg.name} of server "
                    f"{srv.name} (it has: {have}). Rename a database or create one with this name, then restore "
                    "again.")
            targets.append((d, t))
        logs = _logs(s, rec)
        files: dict[str, list[Entry]] = {}
        for e in s.entries:
            if e.role in ("edb", "stm", "patch") and _in_group(e, rec["name"]):
                files.setdefault(str(e.meta.get("database", "")), []).append(e)
        folder = os.path.join(temp, sg.name)
        env = RestoreEnv.load(folder)
        if not full and env is not None:  # logs only: they go to the databases the normal set restored
            restored = {d.name for d in env.databases}
            targets = [(d, t) for d, t in targets if d["name"] in restored]
        plans.append(_GroupPlan(rec, sg, targets, logs, files, folder, env))
        if full and not targets:
            raise RestoreError(f"nothing of storage group {rec['name']} was chosen")
    if not plans:
        raise RestoreError(f"the selection names nothing in backup set #{s.number}")
    return plans


def _malformed(s: SetInfo, what: str, group: str | None = None) -> MediaError:
    where = f"record of storage group {group} is" if group else "storage group records are"
    return MediaError(f"backup set #{s.number}: the catalog's {where} malformed ({what}); nothing can be restored "
                      "from it. Restore another set, or other media ('mailkeep backup verify' checks them)")


def _is_gen(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


def _check_records(s: SetInfo) -> None:
    """The storage group records are read before anything else: media are hostile until
    checked, and a field of the wrong type is a refusal with a message, never a crash."""
    recs = s.extra.get("storage_groups", []) if isinstance(s.extra, dict) else None
    if not isinstance(recs, list):
        raise _malformed(s, "not a list")
    for rec in recs:
        if not isinstance(rec, dict) or not isinstance(rec.get("name"), str) or not rec["name"]:
            raise _malformed(s, "a record without a name")
        dbs = rec.get("databases", [])
        if not isinstance(dbs, list) or not all(
                isinstance(d, dict) and all(isinstance(d.get(k), str) for k in ("name", "guid", "signature", "edb",
                                                                                "stm"))
                for d in dbs):
            raise _malformed(s, "a database record with a missing or wrong field", rec["name"])


def _check_record(s: SetInfo, rec: dict[str, Any]) -> None:
    """A complete storage group's record, as restore and restore.env use it. (Its database
    paths are kept in restore.env as where the database was; they are never opened.)"""
    name = rec["name"]
    for key in ("low_gen", "high_gen"):
        if not _is_gen(rec.get(key)):
            raise _malformed(s, f"{key} {rec.get(key)!r} is not a generation number", name)
    if rec["low_gen"] > rec["high_gen"]:
        raise _malformed(s, f"low_gen {rec['low_gen']} is above high_gen {rec['high_gen']}", name)
    if not isinstance(rec.get("log_signature"), str):
        raise _malformed(s, "no log signature", name)


def _logs(s: SetInfo, rec: dict[str, Any]) -> list[Entry]:
    """The group's log entries in order; their generation numbers (the only thing a restored
    log's file name comes from) must be exactly the record's range."""
    found: list[tuple[int, Entry]] = []
    for e in s.entries:
        if e.role == "log" and _in_group(e, rec["name"]):
            g = e.meta.get("generation")
            if not isinstance(g, int) or not _is_gen(g):
                raise MediaError(f"log entry {e.name!r} of set #{s.number} has generation {g!r}, not a generation "
                                 "number: the catalog is damaged. Restore another set, or other media")
            found.append((g, e))
    found.sort(key=lambda x: x[0])
    gens = [g for g, _e in found]
    if gens != list(range(rec["low_gen"], rec["high_gen"] + 1)):
        have = "none" if not gens else (f"{gens[0]}-{gens[-1]}" if gens == list(range(gens[0], gens[-1] + 1))
                                        else ", ".join(map(str, gens[:10])))
        raise MediaError(f"backup set #{s.number} holds log generations {have} of {rec['name']} where its catalog "
                         f"says {rec['low_gen']}-{rec['high_gen']}: the catalog is damaged. Restore another set, or "
                         "other media")
    return [e for _g, e in found]


def _in_group(e: Entry, sg_name: str) -> bool:
    parts = e.name.split("/")
    return len(parts) >= 4 and parts[1] == "Information Store" and parts[2] == sg_name


def _check(store: Store, s: SetInfo, plans: list[_GroupPlan], media_guid: str, *, local: bool) -> None:
    """Every guard of the guide, before a byte is written."""
    srv = store.server
    full = s.kind in ("normal", "copy")
    for p in plans:
        if not full and p.env is None:
            raise RestoreError(
                f"there is no {ENV} in {p.folder}: an {s.kind} set only adds logs to a restore begun by a normal "
                "or copy set. Restore the normal set into this temporary folder first.")
        for d, t in p.targets:
            if store.is_mounted(t) or (local and srv.mount_intended(t) and srv.files_created(t)
                                       and os.path.exists(t.edb)):
                raise RestoreError(f"{t.kind} {t.path_name} is mounted: dismount it first ('mailkeep db dismount "
                                   f"\"{t.name}\"'); a mounted database is never overwritten")
            if full and str(t.guid) != d["guid"] and not t.allow_restore_overwrite:
                raise RestoreError(
                    f"{t.kind} {t.path_name} is not the database that was backed up (its GUID is {t.guid}, the "
                    f"media's is {d['guid']}: the object was deleted and created again, or this is another "
                    "server). If you mean to replace it, turn on \"This database can be overwritten by a restore\" "
                    f"('mailkeep db set \"{t.name}\" --allow-restore-overwrite on') and restore again.")
        # the temporary folder: never the storage group's own files
        own = {os.path.realpath(p.sg.log_path), os.path.realpath(p.sg.system_path)}
        own |= {os.path.realpath(os.path.dirname(x.edb)) for x in srv.databases()}
        own |= {os.path.realpath(os.path.dirname(x.stm)) for x in srv.databases()}
        folder = os.path.realpath(p.folder)
        if folder in own or os.path.realpath(os.path.dirname(p.folder)) in own:
            raise RestoreError(f"the temporary folder {os.path.dirname(p.folder)} holds {p.sg.name}'s own log or "
                               "database files; choose an empty folder elsewhere (--temp DIR): restored logs must "
                               "never mix with the storage group's own")
        if os.path.isdir(p.folder):
            theirs = [n for n in os.listdir(p.folder) if n.lower().endswith((".edb", ".stm", ".chk"))
                      or n.upper() == f"{p.sg.prefix}.LOG"]
            if theirs:
                raise RestoreError(f"the temporary folder {p.folder} holds database or checkpoint files "
                                   f"({', '.join(sorted(theirs)[:3])}); choose an empty folder (--temp DIR)")
        need = sum(e.size for e in p.logs) + SPACE_MARGIN
        probe = p.folder
        while not os.path.exists(probe):
            probe = os.path.dirname(probe) or "."
        free = shutil.disk_usage(probe).free
        if free < need:
            raise RestoreError(f"the temporary folder {p.folder} has {free:,} bytes free; the logs of this set need "
                               f"{need:,} (their size plus 10 MB). Free space or choose another folder (--temp).")
        env = p.env
        rec = p.record
        if full:
            if env is not None and not any(x["media"] == media_guid and x["set"] == s.number for x in env.sets):
                first = env.sets[0] if env.sets else {}
                raise RestoreError(
                    f"{os.path.join(p.folder, ENV)} belongs to another restore (set #{first.get('set')} of other "
                    "media, or another set): use a different temporary folder for each normal or copy set")
        else:
            if env is None:
                raise RestoreError(
                    f"there is no {ENV} in {p.folder}: an {s.kind} set only adds logs to a restore begun by a normal "
                    "or copy set. Restore the normal set into this temporary folder first.")
            if env.log_signature != rec.get("log_signature"):
                raise RestoreError(f"backup set #{s.number} holds logs of another log stream than the restore in "
                                   f"{p.folder}: it does not belong to that normal set")
            low, high = int(rec["low_gen"]), int(rec["high_gen"])
            if high <= env.log_high:
                raise RestoreError(
                    f"backup set #{s.number} holds generations {low}-{high}, which the restore in {p.folder} already "
                    f"has (up to {env.log_high}): sets restored out of order. Restore the normal set, then the "
                    "incremental or differential sets in the order they were made.")
            if low > env.log_high + 1:
                raise RestoreError(
                    f"backup set #{s.number} begins at generation {low}, but the restore in {p.folder} ends at "
                    f"{env.log_high}: generations {env.log_high + 1}-{low - 1} are missing (a set between them was "
                    "not restored). Restore the missing incremental set first.")


# -- restore --------------------------------------------------------------------------------------
def restore(store: Store, media: str, set_no: int, selection: list[str], temp: str, *, last: bool = False,
            mount: bool = False, keep_damaged: str | None = None, roll_forward: bool = True, local: bool = True,
            progress: Callable[[str, int], None] | None = None) -> RestoreResult:
    reader = MediaReader(media)
    reader.check_access()
    s = reader.get_set(set_no)
    temp = os.path.abspath(temp)
    plans = _plan(store, s, selection, temp)
    _check(store, s, plans, reader.header.guid, local=local)
    if keep_damaged:
        _check_keep(plans, keep_damaged)
    _check_media(reader, s, plans)
    res = RestoreResult(s)
    started = time.time()
    guids = [t.guid for p in plans for _d, t in p.targets]
    store.begin_restore(guids)  # no mount of these (and no other restore into them) until it ends
    try:
        return _restore(store, reader, s, plans, media, started, res, last=last, mount=mount,
                        keep_damaged=keep_damaged, roll_forward=roll_forward, progress=progress)
    finally:
        store.end_restore(guids)


def _restore(store: Store, reader: MediaReader, s: SetInfo, plans: list[_GroupPlan], media: str, started: float,
             res: RestoreResult, *, last: bool, mount: bool, keep_damaged: str | None, roll_forward: bool,
             progress: Callable[[str, int], None] | None) -> RestoreResult:
    full = s.kind in ("normal", "copy")
    store.events.info(SOURCE, 204, f"Restore of backup set #{s.number} ({s.kind}) from {media} begins.")
    written: list[str] = []  # logs and folders this restore created, removed again if it fails
    try:
        # the logs first (each checked against its SHA-256): a damaged one stops the restore
        # before a database file is replaced
        for p in plans:
            if not os.path.isdir(p.folder):
                os.makedirs(p.folder)
                written.append(p.folder)
            for e in p.logs:
                dest = os.path.join(p.folder, gen_file_name(p.sg.prefix, int(e.meta["generation"])))
                new = not os.path.exists(dest)
                _write(reader, s.number, e, dest, progress)
                if new:
                    written.append(dest)
                res.files += 1
                res.bytes += e.size
        if full:
            # every database's two files are staged and checked first; only then does any
            # replace a target's (a failure part-way leaves every target as it was)
            staged = []
            for p in plans:
                for d, t in p.targets:
                    staged.append((p, d, t, _stage_database(reader, s, p, d, t, progress, written)))
            for p, d, t, files in staged:
                store.server.set_mount_intended(t, False)  # mounted again only after hard recovery
                n, b = _install_database(reader, s, p, d, t, files, keep_damaged, res.notes)
                res.files += n
                res.bytes += b
        written.clear()  # the files are in place: from here on they belong to the restore
        for p in plans:
            _update_env(store, p, s, reader.header.guid)
            res.folders.append(p.folder)
    except BaseException as e:
        for path in reversed(written):
            try:
                os.rmdir(path) if os.path.isdir(path) else os.unlink(path)
            except OSError:
                pass
        store.events.error(SOURCE, 205, f"Restore of backup set #{s.number} from {media} failed: {e}")
        res.report = _report(res, media, started, error=str(e))
        raise
    store.events.info(SOURCE, 205, f"Restore of backup set #{s.number} ({s.kind}) from {media} complete: "
                      f"{res.files} file(s), {res.bytes:,} bytes.")
    if last:
        for folder in res.folders:
            res.recovered.append(hard_recovery(store, folder, roll_forward=roll_forward, _held=True))
        if mount:
            store.end_restore([t.guid for p in plans for _d, t in p.targets])
            for p in plans:
                for _d, t in p.targets:
                    store.mount(t)
                    res.mounted.append(t.path_name)
    res.report = _report(res, media, started)
    return res


def _database_entries(s: SetInfo, p: _GroupPlan, d: dict[str, Any]) -> dict[str, Entry]:
    entries = {e.role: e for e in p.files.get(d["name"], [])}
    missing = [r for r in ("edb", "stm", "patch") if r not in entries]
    if missing:
        raise MediaError(f"backup set #{s.number} lacks the {', '.join(missing)} of {d['name']}: restore another set, "
                         "or other media")
    return entries


PATCH_LIMIT = 1 << 20


def _read_patch(reader: MediaReader, s: SetInfo, name: str, e: Entry) -> dict[str, Any]:
    bad = MediaError(f"the patch entry of {name} in set #{s.number} is malformed: restore another set, or other media")
    if e.size > PATCH_LIMIT:
        raise bad
    raw = bytearray()
    for chunk in reader.read_entry(s.number, e):
        raw += chunk
        if len(raw) > e.size:
            raise bad
    try:
        patch = codec.decode(bytes(raw))
    except (ValueError, TypeError, IndexError):
        raise bad from None
    if not isinstance(patch, dict) or not all(_is_gen(patch.get(k)) for k in ("low_gen", "high_gen")) \
            or not isinstance(patch.get("log_signature"), str) or not isinstance(patch.get("time", 0.0), int | float):
        raise bad
    return patch


def _check_media(reader: MediaReader, s: SetInfo, plans: list[_GroupPlan]) -> None:
    """Before a byte is written: every entry the restore reads has its member on the media,
    in a compression this Mailkeep reads, and the patch entries decode."""
    full = s.kind in ("normal", "copy")
    for p in plans:
        used = list(p.logs)
        for d, _t in p.targets if full else []:
            entries = _database_entries(s, p, d)
            used += entries.values()
            _read_patch(reader, s, d["name"], entries["patch"])
        for e in used:
            reader.member(s.number, e)
            if e.compression not in ("", "zstd"):
                raise MediaError(f"{e.name}: unknown compression {e.compression!r}; restore it with the Mailkeep "
                                 "version that wrote these media")


def _stage_database(reader: MediaReader, s: SetInfo, p: _GroupPlan, d: dict[str, Any], t: DatabaseInfo,
                    progress: Callable[[str, int], None] | None, written: list[str]) -> tuple[str, str]:
    """The database's two files, read, checked and fsync'd under temporary names beside the
    targets (removed again if the restore fails)."""
    entries = _database_entries(s, p, d)
    for path in (t.edb, t.stm):
        os.makedirs(os.path.dirname(path), exist_ok=True)
    edb = _stage(reader, s.number, entries["edb"], t.edb, progress)
    written.append(edb)
    stm = _stage(reader, s.number, entries["stm"], t.stm, progress)
    written.append(stm)
    return edb, stm


def _install_database(reader: MediaReader, s: SetInfo, p: _GroupPlan, d: dict[str, Any], t: DatabaseInfo,
                      staged: tuple[str, str], keep_damaged: str | None, notes: list[str]) -> tuple[int, int]:
    entries = _database_entries(s, p, d)
    patch = _read_patch(reader, s, d["name"], entries["patch"])
    if keep_damaged:
        notes.append(_keep(t, keep_damaged))
    # the old database's WAL must never be applied to the restored image
    for stale in (t.edb + "-wal", t.edb + "-shm"):
        if os.path.exists(stale):
            os.unlink(stale)
    os.replace(staged[0], t.edb)
    os.replace(staged[1], t.stm)
    db = Database(FileIO(), t.edb, t.stm)
    db.open()
    try:
        h = db.header.copy()
        h.backups["patch_current_full"] = BackupInfo(int(patch["low_gen"]), int(patch["high_gen"]),
                                                     lsn(int(patch["low_gen"]), 0), float(patch.get("time", 0.0)))
        h.directory_guid = str(t.guid)  # restored under the target object (GUID checked above)
        db.write_header(h)
        db.header = h
        db.checkpoint()
    finally:
        db.close()
    return 2, entries["edb"].size + entries["stm"].size


def _write(reader: MediaReader, set_no: int, e: Entry, dest: str, progress: Callable[[str, int], None] | None) -> None:
    """Stream an entry to ``dest`` (through a temporary name, checked, fsync'd, then renamed)."""
    os.replace(_stage(reader, set_no, e, dest, progress), dest)


def _stage(reader: MediaReader, set_no: int, e: Entry, dest: str, progress: Callable[[str, int], None] | None) -> str:
    """Stream an entry to ``dest.restoring``, fsync'd, its size and SHA-256 checked against the
    catalog; returns that name (removed again when anything fails)."""
    tmp = dest + ".restoring"
    n = 0
    sha = hashlib.sha256()
    try:
        with open(tmp, "wb") as f:
            for chunk in reader.read_entry(set_no, e):
                n += len(chunk)
                if n > e.size:  # never more than the catalog says (the space check counted that)
                    raise MediaError(f"{e.name}: more than the {e.size} bytes its catalog says are on the media: the "
                                     "media are damaged; restore another set, or other media")
                f.write(chunk)
                sha.update(chunk)
                if progress is not None:
                    progress(e.name, len(chunk))
            f.flush()
            os.fsync(f.fileno())
        if n != e.size:
            raise MediaError(f"{e.name}: {n} bytes on the media where the catalog says {e.size}: the media are damaged "
                             "('mailkeep backup verify' lists what is); restore another set, or other media")
        if sha.hexdigest() != e.sha256:
            raise MediaError(f"{e.name}: its SHA-256 on the media differs from the catalog's: the media are damaged "
                             "('mailkeep backup verify' lists what is); restore another set, or other media")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return tmp


def _keep_dir(keep: str, t: DatabaseInfo) -> str:
    """Each database's files go to their own folder: two databases may have files of one name."""
    return os.path.join(keep, t.sg.name, t.name)


def _check_keep(plans: list[_GroupPlan], keep: str) -> None:
    probe = keep
    while not os.path.exists(probe):
        probe = os.path.dirname(probe) or "."
    dev = os.stat(probe).st_dev
    for p in plans:
        for _d, t in p.targets:
            dest = _keep_dir(keep, t)
            for path in (t.edb, t.stm, t.edb + "-wal", t.edb + "-shm"):
                if os.path.exists(path) and os.stat(path).st_dev != dev:
                    raise RestoreError(f"--keep-damaged {keep} is on another file system than {path}: moving would "
                                       "copy the whole file. Choose a folder on the same file system (the guide: a "
                                       "move on the same disk is almost instantaneous).")
                if os.path.lexists(os.path.join(dest, os.path.basename(path))):
                    raise RestoreError(f"{os.path.join(dest, os.path.basename(path))} exists already; choose another "
                                       "--keep-damaged folder")


def _keep(t: DatabaseInfo, keep: str) -> str:
    if not os.path.exists(t.edb):
        return f"{t.path_name}: no existing files to keep"
    try:
        h, _applied = read_db_header(t.edb)
        state = ("Clean Shutdown" if h.state == DbState.CLEAN else
                 f"{h.state.value}, Log Required {h.log_required_low}-{h.log_committed}")
    except EseError as e:
        state = f"header unreadable ({e.name})"
    dest = _keep_dir(keep, t)
    os.makedirs(dest, exist_ok=True)
    for path in (t.edb, t.stm, t.edb + "-wal", t.edb + "-shm"):
        if os.path.exists(path):
            os.rename(path, os.path.join(dest, os.path.basename(path)))
    return f"{t.path_name}: the existing files were moved to {dest} ({state})"


def _update_env(store: Store, p: _GroupPlan, s: SetInfo, media_guid: str) -> None:
    rec = p.record
    low, high = int(rec["low_gen"]), int(rec["high_gen"])
    entry = {"media": media_guid, "set": s.number, "type": s.kind, "low": low, "high": high,
             "restored": time.time(), "time": s.started}
    env = p.env
    restored = [EnvDatabase(t.name, d["guid"], d["signature"], d["edb"], d["stm"], t.edb, t.stm, str(t.guid))
                for d, t in p.targets]
    if s.kind in ("normal", "copy"):
        same = env is not None and any(x["media"] == media_guid and x["set"] == s.number for x in env.sets)
        if same and env is not None:  # the same set again (another database of it, or a retry)
            keep = [x for x in env.databases if x.target_guid not in {r.target_guid for r in restored}]
            env.databases = keep + restored
        else:
            env = RestoreEnv(
                storage_group=p.sg.name, prefix=p.sg.prefix, server=store.server.name, backup_server=s.source,
                log_signature=str(rec["log_signature"]), log_low=low, log_high=high, databases=restored,
                sets=[entry])
    else:
        assert env is not None
        env.log_high = high
        env.sets.append(entry)
    env.last_restore_time = time.time()
    env.save(p.folder)
    p.env = env


# -- hard recovery --------------------------------------------------------------------------------
def find_env_folder(temp: str) -> str:
    """The folder holding restore.env: TEMP itself, or its one storage group subfolder."""
    if os.path.exists(os.path.join(temp, ENV)):
        return temp
    subs = [os.path.join(temp, n) for n in sorted(os.listdir(temp)) if os.path.exists(os.path.join(temp, n, ENV))] \
        if os.path.isdir(temp) else []
    if len(subs) == 1:
        return subs[0]
    if not subs:
        raise RestoreError(f"no {ENV} in {temp} or its storage group folders: nothing to recover (it is deleted "
                           "when hard recovery succeeds)")
    raise RestoreError(f"{temp} holds restores of several storage groups ({', '.join(subs)}): run eseutil /cc on "
                       "each folder")


def hard_recovery(store: Store, temp: str, *, keep: bool = False, roll_forward: bool = True,
                  _held: bool = False) -> HardRecoveryResult:
    folder = find_env_folder(os.path.abspath(temp))
    env = RestoreEnv.load(folder)
    assert env is not None
    srv = store.server
    sg_info = next((g for g in srv.storage_groups() if g.name.lower() == env.storage_group.lower()), None)
    if sg_info is None:
        raise RestoreError(f"{ENV} in {folder} is for storage group {env.storage_group!r}, which server {srv.name} "
                           "does not have")
    if env.prefix != sg_info.prefix or env.server.lower() != srv.name.lower():
        raise RestoreError(f"{ENV} in {folder} was written for server {env.server} ({env.storage_group}, logs "
                           f"{env.prefix}), not for {srv.name} ({sg_info.name}, {sg_info.prefix}): restore into this "
                           "server again")
    if not (1 <= env.log_low <= env.log_high):
        raise RestoreError(f"{ENV} in {folder} is damaged (log range {env.log_low}-{env.log_high})")
    targets = []
    for d in env.databases:
        t = next((x for x in srv.databases(sg_info)
                  if (d.target_guid and str(x.guid) == d.target_guid) or (not d.target_guid and x.name == d.name)),
                 None)
        if t is None:
            raise RestoreError(f"database {d.name} of {ENV} no longer exists in {sg_info.name} (it was deleted "
                               "after the restore): restore again")
        if store.is_mounted(t):
            raise RestoreError(f"{t.path_name} is mounted: hard recovery works on dismounted restored databases; "
                               "dismount it and run eseutil /cc again")
        targets.append((d, t))
    guids = [t.guid for _d, t in targets]
    if not _held:
        store.begin_restore(guids)
    try:
        return _hard_recovery(store, folder, env, sg_info, targets, keep=keep, roll_forward=roll_forward)
    finally:
        if not _held:
            store.end_restore(guids)


def _hard_recovery(store: Store, folder: str, env: RestoreEnv, sg_info: StorageGroupInfo,
                   targets: list[tuple[EnvDatabase, DatabaseInfo]], *, keep: bool,
                   roll_forward: bool) -> HardRecoveryResult:
    # the restored logs: all there, contiguous, of the one stream
    numbered = {}
    for g in range(env.log_low, env.log_high + 1):
        p = os.path.join(folder, gen_file_name(env.prefix, g))
        if not os.path.exists(p):
            raise RestoreError(f"restored log generation {g} ({os.path.basename(p)}) is missing from {folder}: "
                               "restore the set that holds it again")
        lh = read_log_header(p)
        if lh.generation != g:
            raise RestoreError(f"{p} holds generation {lh.generation}, not {g}: a log was renamed or copied from "
                               "elsewhere; restore the set that holds it again")
        if lh.signature != env.log_signature:
            raise RestoreError(f"{p} belongs to another log stream than {ENV} says; it cannot be replayed here")
        numbered[g] = p
    env.recover_status = "recoverStarted"
    env.save(folder)
    store.events.info(SOURCE, 300, f"Hard recovery of {', '.join(t.path_name for _d, t in targets)} from {folder} "
                      f"begins (restored generations {env.log_low}-{env.log_high}).")
    dbs: list[Database] = []
    try:
        for d, t in targets:
            db = Database(FileIO(), t.edb, t.stm)
            db.open()
            dbs.append(db)
            if db.header.signature != d.signature:
                raise RestoreError(f"{t.edb} is not the database {ENV} restored (signature {db.header.signature}, "
                                   f"expected {d.signature}): restore the set again")
        sigs = {db.header.signature: db for db in dbs}
        lay = StreamLayout(folder, env.prefix, {g: p for g, p in numbered.items() if g < env.log_high},
                           numbered[env.log_high], env.log_high, env.log_signature)
        replay(lay, env.log_low, lambda a: sigs.get(a.signature))
        rolled, stopped = env.log_high, "not asked for (/t)"
        if roll_forward:
            sg = store.group(sg_info)
            rolled, stopped = sg.roll_forward(dbs, env.log_high + 1)
            rolled = max(rolled, env.log_high)
        now = time.time()
        for db in dbs:
            h = db.header.copy()
            if h.state != DbState.CLEAN:
                h.transition(DbState.CLEAN)
            h.log_required_low = 0
            patch = h.backups.get("patch_current_full")
            h.backups["patch_current_full"] = None
            _stamp_restored_backups(h, env, patch)
            h.last_consistent = Mark(db.applied_lsn, now)
            db.write_header(h)
            db.header = h
            if not db.checkpoint():
                raise RestoreError(f"{db.edb_path} could not be made durable (a reader held it); run eseutil /cc again")
    except BaseException as e:
        env.recover_status = "recoverStarted"
        env.recover_error = getattr(e, "number", -1)
        env.save(folder)
        store.events.error(SOURCE, 454, f"Hard recovery from {folder} failed: {e}. Fix the cause and run "
                           "'mailkeep eseutil /cc' again (it is safe to repeat).")
        raise
    finally:
        for db in dbs:
            db.close()
    env.recover_status = "recoverEnded"
    env.recover_time = time.time()
    if sg_info.prefix in store.groups:  # the logs it waited for were replayed: the checkpoint may move on
        for _d, t in targets:
            store.groups[sg_info.prefix].release_hold(t.edb)
    if keep:
        env.save(folder)
    else:
        os.unlink(os.path.join(folder, ENV))
    store.events.info(SOURCE, 302, f"Hard recovery from {folder} complete: restored generations {env.log_low}-"
                      f"{env.log_high}, rolled forward to generation {rolled}"
                      + (f" ({stopped})" if stopped else "") + "; the databases are in Clean Shutdown.")
    return HardRecoveryResult(folder, sg_info.name, [t.path_name for _d, t in targets], (env.log_low, env.log_high),
                              rolled, stopped, keep)


def _stamp_restored_backups(h: Any, env: RestoreEnv, patch: BackupInfo | None) -> None:
    """The restored database's backup history is the one it was restored from (the image's
    header predates that backup's stamp): Previous Full Backup from a normal set, Previous
    Incremental Backup from the last incremental restored after it. So the next incremental
    chains to what was restored, and truncation counts the restored backup."""
    first = env.sets[0] if env.sets else {}
    if first.get("type") == "normal":
        when = float(patch.time) if patch is not None else float(first.get("time", 0.0))
        h.backups["previous_full"] = BackupInfo(int(first["low"]), int(first["high"]), lsn(int(first["low"]), 0),
                                                when)
        incs = [x for x in env.sets[1:] if x.get("type") == "incremental"]
        if incs:
            last = incs[-1]
            h.backups["previous_incremental"] = BackupInfo(int(last["low"]), int(last["high"]),
                                                           lsn(int(last["low"]), 0), float(last.get("time", 0.0)))


def _report(res: RestoreResult, media: str, started: float, *, error: str = "") -> str:
    s = res.set
    lines = [
        "Restore Status",
        "Operation: Restore",
        f'Backup of "{", ".join(s.selection)}"',
        f"Backup set #{s.number} on media #1",
        f'Backup description: "{s.description}"',
        f"Restore started on {report.when(started)}.",
    ]
    lines += [f"Note: {n}" for n in res.notes]
    if error:
        lines += [f"Unable to restore data to the target ({error}); check the application event log.",
                  f"Restore did not complete on {report.when(time.time())}."]
    else:
        for r in res.recovered:
            lines.append(f"Hard recovery of {', '.join(r.databases)}: logs {r.restored_logs[0]}-{r.restored_logs[1]} "
                         f"from {r.folder}, rolled forward to generation {r.rolled_to}"
                         + (f" ({r.stopped})" if r.stopped else "") + ".")
        for m in res.mounted:
            lines.append(f"Mounted {m}.")
        lines.append(f"Restore completed on {report.when(time.time())}.")
    lines += [f"Files: {res.files}", f"Bytes: {report.number(res.bytes)}",
              f"Time:  {report.duration(time.time() - started)}"]
    return report.append(lines)
