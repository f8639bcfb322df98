"""A server's configuration: which server a data folder is, its storage groups and databases.

The directory holds the configuration objects (as Active Directory does for Exchange): a
storage group's log and system paths, log prefix and circular logging; a database's files,
"do not mount at start-up" (``msExchEDBOffline``) and "This database can be overwritten by a
restore" (``msExchPatchMDB``). ``<data>/server.json`` names the server the data folder is
and keeps what belongs to this machine only: whether each database is meant to be mounted
(an administrator's dismount holds until a mount) and whether its files were ever created.

Invariants:
- Limits of the guide: 4 storage groups (``E00``-``E03``) plus one recovery storage group
  (``R00``), 5 databases per storage group, 20 databases per server; a breach is refused
  before anything changes.
- Deleting a storage group or database removes its directory object only; the files stay,
  and the message says where they are.
- Relative paths in the directory are relative to the data folder, so a data folder can be
  moved to a standby machine as a whole.
- ``server.json`` is replaced atomically (temporary file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Any

from mailkeep.directory import dn as dnmod
from mailkeep.directory.backend import DirectoryError, Entry
from mailkeep.directory.directory import Directory, escape_filter_value
from mailkeep.engine.storagegroup import StorageGroupConfig

STATE = "server.json"
SG_PREFIXES = ("E00", "E01", "E02", "E03")
RECOVERY_PREFIX = "R00"
MAX_STORAGE_GROUPS = 4
MAX_DATABASES_PER_GROUP = 5
MAX_DATABASES = 20
CACHE_SECONDS = 5.0  # how stale database_by_dn may be about changes made by another process
FIRST_SG = "First Storage Group"
SA_CN = "Microsoft System Attendant"
RECOVERY_SG = "Recovery Storage Group"


class ConfigError(Exception):
    """A configuration request the guide's rules refuse (limits, names, state)."""


@dataclass(frozen=True)
class StorageGroupInfo:
    name: str
    dn: str
    prefix: str
    log_path: str
    system_path: str
    circular: bool

    @property
    def recovery(self) -> bool:
        return self.prefix == RECOVERY_PREFIX


@dataclass(frozen=True)
class DatabaseInfo:
    name: str
    dn: str
    guid: uuid.UUID
    sg: StorageGroupInfo
    public: bool
    edb: str
    stm: str
    mount_at_startup: bool
    allow_restore_overwrite: bool

    @property
    def kind(self) -> str:
        return "public folder store" if self.public else "mailbox store"

    @property
    def path_name(self) -> str:
        return f"{self.sg.name}/{self.name}"


def _bool(e: Entry, attr: str) -> bool:
    v = e.first(attr)
    return bool(v) and str(v).upper() not in ("0", "FALSE")


class Server:
    """One server: its directory objects and this data folder's local state."""

    def __init__(self, data: str, directory: Directory, state: dict[str, Any]) -> None:
        self.data = os.path.abspath(data)
        self.directory = directory
        self.state = state
        self.dn: str = state["server_dn"]
        self.name: str = state["server"]
        self.organization: str = state["organization"]
        self.admin_group: str = state["admin_group"]
        self.autosave = True  # off while setup builds the server: server.json is written last
        self._by_dn: dict[str, DatabaseInfo] | None = None
        self._by_dn_at = 0.0

    # -- loading -------------------------------------------------------------------------------
    @staticmethod
    def state_path(data: str) -> str:
        return os.path.join(data, STATE)

    @classmethod
    def load(cls, data: str, directory: Directory) -> Server:
        path = cls.state_path(data)
        try:
            with open(path, encoding="utf-8") as f:
                state = json.load(f)
        except FileNotFoundError as e:
            raise ConfigError(f"{data} holds no server yet: run 'mailkeep setup --domain DNS-NAME' first") from e
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); restore it from a configuration backup") from e
        srv = cls(data, directory, state)
        if directory.get(srv.dn) is None:
            raise ConfigError(
                f"the directory has no server object {srv.dn}; this data folder belongs to a server the "
                "directory does not know (rebuild it with 'mailkeep setup --disaster-recovery')"
            )
        return srv

    def save(self) -> None:
        if not self.autosave:
            return
        path = self.state_path(self.data)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(self.state, f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fd = os.open(self.data, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @property
    def legacy_dn(self) -> str:
        return f"/o={self.organization}/ou={self.admin_group}/cn=Configuration/cn=Servers/cn={self.name}"

    @property
    def system_attendant_dn(self) -> str:
        return f"CN={SA_CN},{self.dn}"

    @property
    def system_attendant_legacy_dn(self) -> str:
        return f"{self.legacy_dn}/cn={SA_CN}"

    def resolve(self, path: str) -> str:
        return path if os.path.isabs(path) else os.path.normpath(os.path.join(self.data, path))

    # -- reading the configuration ----------------------------------------------------------------
    def _sg_info(self, e: Entry) -> StorageGroupInfo:
        name = str(e.text("cn"))
        log = str(e.text("msExchESEParamLogFilePath") or "mdbdata")
        system = str(e.text("msExchESEParamSystemPath") or log)
        return StorageGroupInfo(
            name, e.dn, str(e.text("msExchESEParamBaseName") or "E00").upper(),
            self.resolve(log), self.resolve(system), _bool(e, "msExchESEParamCircularLog"),
        )

    def storage_groups(self) -> list[StorageGroupInfo]:
        found = self.directory.search(f"CN=InformationStore,{self.dn}", "(objectCategory=msExchStorageGroup)")
        return sorted((self._sg_info(e) for e in found), key=lambda s: s.prefix)

    def storage_group(self, name: str) -> StorageGroupInfo:
        for sg in self.storage_groups():
            if sg.name.lower() == name.lower() or sg.prefix == name.upper() or dnmod.normalize(sg.dn) == _norm(name):
                return sg
        names = ", ".join(s.name for s in self.storage_groups()) or "none"
        raise ConfigError(f"no storage group {name!r} on server {self.name} (storage groups: {names})")

    def _db_info(self, e: Entry, sg: StorageGroupInfo) -> DatabaseInfo:
        public = "msexchpublicmdb" in {str(c).lower() for c in e.get("objectClass")}
        name = str(e.text("cn"))
        guid_raw = e.first("objectGUID")
        guid = uuid.UUID(bytes_le=guid_raw) if isinstance(guid_raw, bytes) and len(guid_raw) == 16 else uuid.uuid4()
        edb = str(e.text("msExchEDBFile") or os.path.join(sg.system_path, f"{name}.edb"))
        stm = str(e.text("msExchSLVFile") or os.path.splitext(edb)[0] + ".stm")
        return DatabaseInfo(
            name, e.dn, guid, sg, public, self.resolve(edb), self.resolve(stm),
            not _bool(e, "msExchEDBOffline"), _bool(e, "msExchPatchMDB"),
        )

    def databases(self, sg: StorageGroupInfo | None = None) -> list[DatabaseInfo]:
        out = []
        for g in [sg] if sg else self.storage_groups():
            found = self.directory.search(g.dn, "(objectClass=msExchMDB)")
            out.extend(sorted((self._db_info(e, g) for e in found), key=lambda d: (d.public, d.name.lower())))
        return out

    def database(self, name: str) -> DatabaseInfo:
        """A database by name, ``SG/DB``, DN, or GUID."""
        dbs = self.databases()
        key = name.lower()
        matches = [
            d for d in dbs
            if key in (d.name.lower(), d.path_name.lower(), str(d.guid)) or _norm(name) == dnmod.normalize(d.dn)
        ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            names = ", ".join(d.path_name for d in dbs) or "none"
            raise ConfigError(f"no database {name!r} on server {self.name} (databases: {names})")
        raise ConfigError(f"{len(matches)} databases are named {name!r}; give STORAGEGROUP/DATABASE")

    def database_by_dn(self, dn: str) -> DatabaseInfo | None:
        """The database a ``homeMDB`` names (None: not one of this server's). Every delivery
        asks, so answers come from a map re-read from the directory when it is older than
        ``CACHE_SECONDS``, when a DN is not in it, or after a change made here."""
        n = _norm(dn)
        now = time.monotonic()
        if self._by_dn is None or now - self._by_dn_at > CACHE_SECONDS or n not in self._by_dn:
            self._by_dn = {dnmod.normalize(d.dn): d for d in self.databases()}
            self._by_dn_at = now
        return self._by_dn.get(n)

    def _changed(self) -> None:
        self._by_dn = None

    def engine_config(self, sg: StorageGroupInfo, **overrides: Any) -> StorageGroupConfig:
        return StorageGroupConfig(
            log_path=sg.log_path, system_path=sg.system_path, prefix=sg.prefix, name=sg.name,
            circular_logging=sg.circular, organization=self.organization, **overrides,
        )

    # -- local state ------------------------------------------------------------------------------
    def _db_state(self, db: DatabaseInfo) -> dict[str, Any]:
        return dict(self.state.setdefault("databases", {}).get(str(db.guid), {}))

    def _set_db_state(self, db: DatabaseInfo, **values: Any) -> None:
        self.state.setdefault("databases", {}).setdefault(str(db.guid), {}).update(values)
        self.save()

    def mount_intended(self, db: DatabaseInfo) -> bool:
        """Whether the database is meant to be mounted: an administrator's dismount holds
        until a mount. A database never mounted waits for its first explicit mount (the
        guide: do not mount a new store before restoring into it)."""
        st = self._db_state(db)
        return bool(st.get("mounted", False))

    def set_mount_intended(self, db: DatabaseInfo, mounted: bool) -> None:
        self._set_db_state(db, mounted=mounted)

    def files_created(self, db: DatabaseInfo) -> bool:
        return bool(self._db_state(db).get("created", False))

    def mark_files_created(self, db: DatabaseInfo) -> None:
        self._set_db_state(db, created=True)

    # -- storage groups ----------------------------------------------------------------------------
    def create_storage_group(
        self, name: str, *, log_path: str | None = None, system_path: str | None = None,
        circular: bool = False, recovery: bool = False,
    ) -> StorageGroupInfo:
        _check_name("storage group", name)
        groups = self.storage_groups()
        if any(g.name.lower() == name.lower() for g in groups):
            raise ConfigError(f"server {self.name} already has a storage group named {name!r}")
        if recovery:
            if any(g.recovery for g in groups):
                raise ConfigError(f"server {self.name} already has a recovery storage group; a server has only one")
            prefix = RECOVERY_PREFIX
        else:
            used = {g.prefix for g in groups}
            free = [p for p in SG_PREFIXES if p not in used]
            if not free:
                raise ConfigError(
                    f"server {self.name} already has {MAX_STORAGE_GROUPS} storage groups, the limit "
                    "(plus one recovery storage group); delete one or use another server"
                )
            prefix = free[0]
        folder = name
        log = log_path or (folder if not recovery else os.path.join(folder))
        system = system_path or log
        for p in (log, system):
            if any(self.resolve(p) == g.log_path for g in groups):
                raise ConfigError(
                    f"{self.resolve(p)} already holds the logs of another storage group; choose another path"
                )
        e = self.directory.add_storage_group(
            self.dn, name, log_path=log, system_path=system, prefix=prefix, circular=circular,
        )
        return self._sg_info(e)

    def set_storage_group(
        self, name: str, *, log_path: str | None = None, system_path: str | None = None,
        circular: bool | None = None, open_groups: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> StorageGroupInfo:
        """Change paths or circular logging. Paths move the group's files; the group must
        not be open (every database dismounted)."""
        sg = self.storage_group(name)
        if sg.prefix in open_groups and (log_path or system_path or circular is not None):
            raise ConfigError(f"storage group {sg.name} is in use: dismount its databases first")
        changes: dict[str, Any] = {}
        if log_path is not None and self.resolve(log_path) != sg.log_path:
            _move_group_files(sg.log_path, self.resolve(log_path), sg.prefix, logs=True)
            changes["msExchESEParamLogFilePath"] = log_path
        if system_path is not None and self.resolve(system_path) != sg.system_path:
            _move_group_files(sg.system_path, self.resolve(system_path), sg.prefix, logs=False)
            changes["msExchESEParamSystemPath"] = system_path
        if circular is not None:
            changes["msExchESEParamCircularLog"] = 1 if circular else 0
        if changes:
            self.directory.replace(sg.dn, **changes)
            self._changed()
        return self.storage_group(sg.prefix)

    def rename_storage_group(self, old: str, new: str) -> StorageGroupInfo:
        _check_name("storage group", new)
        sg = self.storage_group(old)
        if any(g.name.lower() == new.lower() and g.dn != sg.dn for g in self.storage_groups()):
            raise ConfigError(f"server {self.name} already has a storage group named {new!r}")
        new_dn = self.directory.rename(sg.dn, f"CN={dnmod.escape_value(new)}")
        self._changed()
        self._repoint_homes(sg.dn, new_dn)
        return self.storage_group(sg.prefix)

    def delete_storage_group(self, name: str) -> tuple[StorageGroupInfo, list[str]]:
        """Remove the object; returns the group and the folders whose files were kept."""
        sg = self.storage_group(name)
        dbs = self.databases(sg)
        if dbs:
            raise ConfigError(
                f"storage group {sg.name} still holds {len(dbs)} database(s) "
                f"({', '.join(d.name for d in dbs)}); delete them first"
            )
        self.directory.delete(sg.dn)
        self._changed()
        return sg, sorted({sg.log_path, sg.system_path})

    # -- databases ---------------------------------------------------------------------------------
    def create_database(
        self, sg_name: str, name: str, *, public: bool = False, edb: str | None = None, stm: str | None = None,
        mount_at_startup: bool = True, allow_restore_overwrite: bool = False,
    ) -> DatabaseInfo:
        _check_name("database", name)
        sg = self.storage_group(sg_name)
        in_group = self.databases(sg)
        if any(d.name.lower() == name.lower() for d in in_group):
            raise ConfigError(f"storage group {sg.name} already has a database named {name!r}")
        if len(in_group) >= MAX_DATABASES_PER_GROUP:
            raise ConfigError(
                f"storage group {sg.name} already has {MAX_DATABASES_PER_GROUP} databases, the limit; "
                "create the database in another storage group"
            )
        counted = [d for d in self.databases() if not d.sg.recovery]
        if not sg.recovery and len(counted) >= MAX_DATABASES:
            raise ConfigError(f"server {self.name} already has {MAX_DATABASES} databases, the limit")
        base = name
        edb_rel = edb or os.path.join(os.path.relpath(sg.system_path, self.data), f"{base}.edb")
        stm_rel = stm or os.path.splitext(edb_rel)[0] + ".stm"
        taken = {d.edb for d in self.databases()} | {d.stm for d in self.databases()}
        for p in (edb_rel, stm_rel):
            if self.resolve(p) in taken:
                raise ConfigError(f"{self.resolve(p)} is already the file of another database; choose another path")
        e = self.directory.add_database(sg.dn, name, public=public, edb=edb_rel, stm=stm_rel)
        self._changed()
        changes: dict[str, Any] = {}
        if not mount_at_startup:
            changes["msExchEDBOffline"] = True
        if allow_restore_overwrite:
            changes["msExchPatchMDB"] = True
        if changes:
            self.directory.replace(e.dn, **changes)
            self._changed()
        return self._db_info(self.directory.require(e.dn), sg)

    def set_database(
        self, name: str, *, mount_at_startup: bool | None = None, allow_restore_overwrite: bool | None = None,
        edb: str | None = None, stm: str | None = None, mounted: bool = False,
    ) -> DatabaseInfo:
        """Change flags or move the files (the database must be dismounted to move)."""
        db = self.database(name)
        changes: dict[str, Any] = {}
        if mount_at_startup is not None:
            changes["msExchEDBOffline"] = None if mount_at_startup else True
        if allow_restore_overwrite is not None:
            changes["msExchPatchMDB"] = True if allow_restore_overwrite else None
        moves: list[tuple[str, str]] = []  # (from, to), checked before anything moves
        for attr, new, old in (("msExchEDBFile", edb, db.edb), ("msExchSLVFile", stm, db.stm)):
            if new is None or self.resolve(new) == old:
                continue
            if mounted:
                raise ConfigError(f"database {db.name} is mounted: dismount it before moving its files")
            target = self.resolve(new)
            extra = ("-wal", "-shm") if attr == "msExchEDBFile" else ()
            for a, b in [(old, target), *((old + x, target + x) for x in extra)]:
                if os.path.exists(b):
                    raise ConfigError(f"{b} already exists; choose another path (nothing was moved)")
                if os.path.exists(a):
                    moves.append((a, b))
            changes[attr] = new
        _move_all(moves)
        if changes:
            self.directory.replace(db.dn, **changes)
            self._changed()
        return self.database(str(db.guid))

    def rename_database(self, old: str, new: str) -> DatabaseInfo:
        _check_name("database", new)
        db = self.database(old)
        if any(d.name.lower() == new.lower() and d.dn != db.dn for d in self.databases(db.sg)):
            raise ConfigError(f"storage group {db.sg.name} already has a database named {new!r}")
        new_dn = self.directory.rename(db.dn, f"CN={dnmod.escape_value(new)}")
        self._changed()
        self._repoint_homes(db.dn, new_dn)
        return self.database(str(db.guid))

    def delete_database(self, name: str, *, mounted: bool = False) -> DatabaseInfo:
        """Remove the object (files stay). Refused while mounted or while users are homed on
        it; the system attendant moves to another mailbox database of the server."""
        db = self.database(name)
        if mounted:
            raise ConfigError(f"database {db.name} is mounted: dismount it first")
        homed = [u.dn for u in self.users_homed_on(db.dn)]
        if homed:
            raise ConfigError(
                f"database {db.name} holds the mailboxes of {len(homed)} user(s) ({', '.join(homed[:3])}"
                f"{', ...' if len(homed) > 3 else ''}); move or delete those mailboxes first"
            )
        self.directory.delete(db.dn)
        self._changed()
        self.state.get("databases", {}).pop(str(db.guid), None)
        self.save()
        sa = self.directory.get(self.system_attendant_dn)
        if sa is not None and _norm(str(sa.text("homeMDB") or "")) == dnmod.normalize(db.dn):
            others = [d for d in self.databases() if not d.public and not d.sg.recovery]
            self.directory.replace(sa.dn, homeMDB=others[0].dn if others else None)
        return db

    def users_homed_on(self, db_dn: str) -> list[Entry]:
        flt = f"(&(objectCategory=user)(homeMDB={escape_filter_value(db_dn)}))"
        return list(self.directory.search(self.directory.domain_dn, flt))

    def _repoint_homes(self, old_dn: str, new_dn: str) -> None:
        """A rename moves every homeMDB under it (Active Directory keeps DN links itself)."""
        old_n = dnmod.normalize(old_dn)
        for base in (self.directory.domain_dn,):
            for e in list(self.directory.search(base, "(homeMDB=*)")):
                home = str(e.text("homeMDB"))
                hn = dnmod.normalize(home)
                if hn == old_n or hn.endswith("," + old_n):
                    suffix_len = len(dnmod.split(old_dn))
                    kept = dnmod.split(home)[: len(dnmod.split(home)) - suffix_len]
                    rebuilt = ",".join(f"{k}={dnmod.escape_value(v)}" for k, v in kept)
                    self.directory.replace(e.dn, homeMDB=f"{rebuilt},{new_dn}" if rebuilt else new_dn)


def _norm(dn: str) -> str:
    try:
        return dnmod.normalize(dn) if "=" in dn else dn.lower()
    except (dnmod.DnError, ValueError):
        return dn.lower()


def _check_name(kind: str, name: str) -> None:
    """Names appear in ``SG/DB`` forms and backup selections (``SERVER/Information Store/SG/DB``),
    so ``/`` is refused; a storage group may not be named like a log prefix (``E01``), which
    commands also accept to name one."""
    if not name or name != name.strip() or any(c in name for c in "/\\\0\n\r\t") or len(name) > 64 \
            or any(ord(c) < 32 for c in name):
        raise ConfigError(
            f"invalid {kind} name {name!r}: use 1-64 characters without '/', backslashes, control "
            "characters or leading/trailing spaces"
        )
    if kind == "storage group" and name.upper() in (*SG_PREFIXES, RECOVERY_PREFIX):
        raise ConfigError(f"invalid storage group name {name!r}: it is a log prefix (E00-E03, R00); choose a name")


def _move_group_files(src: str, dst: str, prefix: str, *, logs: bool) -> None:
    """Move a storage group's log files (or its checkpoint) to a new folder."""
    if not os.path.isdir(src):
        return
    names = sorted(os.listdir(src))
    if logs:
        moving = [n for n in names if (n.upper().startswith(prefix) and n.lower().endswith(".log"))
                  or n.lower() in ("res1.log", "res2.log")]
    else:
        moving = [n for n in names if n.upper() in (f"{prefix}.CHK", f"{prefix}.LOCK")]
    clash = [n for n in moving if os.path.exists(os.path.join(dst, n))]
    if clash:
        raise ConfigError(f"{dst} already holds {', '.join(clash)}; choose an empty folder (nothing was moved)")
    _move_all([(os.path.join(src, n), os.path.join(dst, n)) for n in moving])


def _move_all(moves: list[tuple[str, str]]) -> None:
    """Move files as one step: if one move fails, the ones done are moved back, so a
    storage group's logs or a database's two files are never left split between folders."""
    done: list[tuple[str, str]] = []
    try:
        for a, b in moves:
            os.makedirs(os.path.dirname(b), exist_ok=True)
            shutil.move(a, b)
            done.append((a, b))
    except OSError as e:
        for a, b in reversed(done):
            shutil.move(b, a)
        raise ConfigError(f"moving {e.filename or ''} failed ({e.strerror or e}); every file was put back, "
                          "nothing changed") from e


__all__ = [
    "ConfigError", "DatabaseInfo", "DirectoryError", "Server", "StorageGroupInfo",
]
