"""The information store at run time: open storage groups, mounted databases.

Invariants:
- Every change to a database goes through an engine transaction of its storage group;
  nothing here writes a database file directly.
- A database is mounted only through :meth:`Store.mount`; mounting a database whose files
  are missing creates empty files only the first time (or when the administrator asks with
  ``create_new``, as Exchange System Manager asks before "force the creation of an empty
  database"): files that existed and vanished are usually a restore still to come.
- ``Server.mount_intended`` follows every successful mount and dismount, so a process that
  opens the store later (``mailkeep deliver``, ``mailkeep serve``) respects an
  administrator's dismount.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from mailkeep.directory.directory import Directory
from mailkeep.directory.setup import open_directory
from mailkeep.engine import errors as ese
from mailkeep.engine.database import Database
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.logreader import list_generations
from mailkeep.engine.storagegroup import StorageGroup
from mailkeep.engine.transaction import ReadTransaction, Transaction
from mailkeep.eventlog import EventLog
from mailkeep.store import schema
from mailkeep.store.errors import MAPI_E_CALL_FAILED, MAPI_E_FAILONEPROVIDER, StoreError
from mailkeep.store.server import ConfigError, DatabaseInfo, Server, StorageGroupInfo

SOURCE = "MSExchangeIS"
DISMOUNT_WAIT = 30.0  # seconds a dismount waits for the operations running on the database
T = TypeVar("T")


def _when_free(opener: Callable[[], T], wait: float) -> T:
    """Open something another process may hold (a storage group's lock), retrying for up to
    ``wait`` seconds: short-lived tools such as ``mailkeep deliver`` take turns."""
    deadline = time.monotonic() + wait
    delay = 0.01
    while True:
        try:
            return opener()
        except EseError as e:
            if e.number != ese.FileAccessDenied or time.monotonic() >= deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.2)


@dataclass
class Mounted:
    info: DatabaseInfo
    sg: StorageGroup
    db: Database


class Store:
    def __init__(
        self, server: Server, *, events: EventLog | None = None, io: FileIO | None = None,
        clock: Callable[[], float] = time.time, lock_wait: float = 0.0, log_file_size: int | None = None,
    ) -> None:
        self.server = server
        self.directory: Directory = server.directory
        self.events = events or EventLog(os.path.join(server.data, "events.jsonl"))
        self.io = io or FileIO()
        self.clock = clock
        self.lock_wait = lock_wait
        self.log_file_size = log_file_size
        self.groups: dict[str, StorageGroup] = {}
        self.mounted: dict[uuid.UUID, Mounted] = {}
        self._restoring: set[uuid.UUID] = set()  # databases a restore or hard recovery is writing
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._busy: dict[uuid.UUID, int] = {}  # operations running on each mounted database
        self._closing: set[uuid.UUID] = set()
        self.owns_directory = False

    @classmethod
    def open(cls, data: str, *, directory: Directory | None = None, **kw: object) -> Store:
        if not os.path.exists(Server.state_path(data)):
            raise ConfigError(f"{data} holds no server yet: run 'mailkeep setup --domain DNS-NAME' first")
        events = kw.pop("events", None) or EventLog(os.path.join(data, "events.jsonl"))
        own = directory is None
        wait = float(kw.get("lock_wait", 0.0))  # type: ignore[arg-type]
        d = directory or _when_free(lambda: open_directory(data, events=events), wait)  # type: ignore[arg-type]
        try:
            store = cls(Server.load(data, d), events=events, **kw)  # type: ignore[arg-type]
        except BaseException:
            if own:
                d.close()
            raise
        store.owns_directory = own
        return store

    # -- storage groups ------------------------------------------------------------------------
    def group(self, sg: StorageGroupInfo) -> StorageGroup:
        """The storage group's engine instance, opened (soft recovery) or created on first use."""
        with self._lock:
            g = self.groups.get(sg.prefix)
            if g is not None:
                return g
            extra = {"log_file_size": self.log_file_size} if self.log_file_size else {}
            cfg = self.server.engine_config(sg, **extra)
            exists = os.path.exists(os.path.join(sg.log_path, f"{sg.prefix}.log")) or bool(
                list_generations(sg.log_path, sg.prefix)
            )
            if exists:
                g = _when_free(lambda: StorageGroup.open(cfg, io=self.io, events=self.events), self.lock_wait)
            else:
                g = StorageGroup.create(cfg, io=self.io, events=self.events)
            self.groups[sg.prefix] = g
            return g

    def begin_restore(self, guids: list[uuid.UUID]) -> None:
        """Databases a restore or hard recovery is writing: not mounted (and not restored by
        anyone else) until :meth:`end_restore`."""
        with self._lock:
            busy = [g for g in guids if g in self._restoring]
            if busy:
                raise ConfigError("a restore or hard recovery of that database is running; wait for it to end")
            mounted = [m.info.path_name for g, m in self.mounted.items() if g in guids]
            if mounted:
                raise ConfigError(f"{', '.join(mounted)} is mounted: dismount it first; a mounted database is never "
                                  "overwritten")
            self._restoring.update(guids)

    def end_restore(self, guids: list[uuid.UUID]) -> None:
        with self._lock:
            self._restoring.difference_update(guids)

    def abort_backups(self, why: str) -> int:
        """End every running online backup as failed (-801): the server is stopping."""
        n = 0
        with self._lock:
            groups = list(self.groups.values())
        for g in groups:
            b = g.backup
            if b is not None:
                b.abort(EseError(ese.BackupAbortByServer, why))
                n += 1
        return n

    def close_group(self, sg: StorageGroupInfo) -> None:
        with self._lock:
            if any(m.info.sg.prefix == sg.prefix for m in self.mounted.values()):
                raise ConfigError(f"storage group {sg.name} still has mounted databases")
            g = self.groups.pop(sg.prefix, None)
            if g is not None:
                g.close()

    # -- mount and dismount --------------------------------------------------------------------
    def is_mounted(self, db: DatabaseInfo) -> bool:
        return db.guid in self.mounted

    def mount(self, name: str | DatabaseInfo, *, create_new: bool = False) -> DatabaseInfo:
        info = name if isinstance(name, DatabaseInfo) else self.server.database(name)
        with self._lock:
            if info.guid in self.mounted:
                return info
            if info.guid in self._restoring:
                raise ConfigError(f"{info.kind} {info.path_name} is being restored (or hard-recovered); mount it when "
                                  "that has ended")
            edb_there, stm_there = os.path.exists(info.edb), os.path.exists(info.stm)
            if (edb_there or stm_there) and not (edb_there and stm_there):
                missing = info.stm if edb_there else info.edb
                raise EseError(
                    ese.FileNotFound if edb_there else ese.DatabaseNotFound,
                    f"{info.kind} {info.name}: {missing} is missing while its partner file exists. "
                    "Restore both files from backup (or repair with eseutil) before mounting.",
                    path=missing,
                )
            fresh = not edb_there
            if fresh and self.server.files_created(info) and not create_new:
                raise ConfigError(
                    f"the files of {info.kind} {info.name} ({info.edb}, {info.stm}) are missing. If you "
                    "intend to restore a backup, restore it first. To start the database empty "
                    "instead (dial tone), mount it with --create-new."
                )
            sg = self.group(info.sg)
            if fresh:
                for p in (info.edb, info.stm):
                    os.makedirs(os.path.dirname(p), exist_ok=True)
                db = sg.create_database(
                    info.edb, info.stm, directory_guid=str(info.guid), admin_group=self.server.admin_group,
                )
                if self.server.files_created(info):
                    self.events.warning(
                        SOURCE, 9522,
                        f"{info.kind} {info.path_name}: its files were missing; new empty database "
                        f"files were created at the administrator's request ({info.edb}).",
                    )
            else:
                db = sg.mount(info.edb, info.stm)
            try:
                with sg.begin() as txn:
                    for spec in schema.TABLES:
                        txn.declare_table(db, spec)
                    if txn.get(db, "info", ("kind",)) is None:
                        txn.insert(db, "info", {"key": "kind", "value": "public" if info.public else "private"})
                        txn.insert(db, "info", {"key": "next_cid", "value": 1})
                    if info.public and txn.get(db, "mailbox", (str(info.guid),)) is None:
                        from mailkeep.store import folders

                        if txn.get(db, "folder", (str(info.guid), schema.ROOT_FID)) is None:
                            folders.create_mailbox_rows(
                                txn, db, str(info.guid), kind=schema.PUBLIC, owner_dn=info.dn,
                                legacy_dn="", display_name=info.name, now=self.clock(), standard=False,
                            )
                        # else: the hierarchy is there but its row is not (damage): isinteg's
                        # mailbox test re-creates the row; mounting must not fail on it
            except BaseException:
                sg.dismount(db)
                raise
            self.mounted[info.guid] = Mounted(info, sg, db)
            if not self.server.files_created(info) or not self.server.mount_intended(info):
                self.server._set_db_state(info, created=True, mounted=True)
            self.events.info(SOURCE, 9523, f"{info.kind} {info.path_name} mounted.")
            return info

    def dismount(self, name: str | DatabaseInfo, *, remember: bool = True) -> DatabaseInfo:
        """Dismount (Clean Shutdown). ``remember=False`` is a service stop, not an
        administrator's dismount: the database mounts again when the store next opens."""
        info = name if isinstance(name, DatabaseInfo) else self.server.database(name)
        with self._cond:
            m = self.mounted.get(info.guid)
            if m is not None:
                # New operations are refused from here on; the ones running finish first
                # (closing SQLite under a reader's feet would crash the process).
                self._closing.add(info.guid)
                try:
                    if not self._cond.wait_for(lambda: not self._busy.get(info.guid), timeout=DISMOUNT_WAIT):
                        raise StoreError(
                            MAPI_E_CALL_FAILED,
                            f"{info.kind} {info.path_name} is still in use after {DISMOUNT_WAIT:.0f} s; "
                            "it stays mounted. Try again when the sessions using it have ended.",
                        )
                    del self.mounted[info.guid]
                    m.sg.dismount(m.db)
                finally:
                    self._closing.discard(info.guid)
                self.events.info(SOURCE, 9539, f"{info.kind} {info.path_name} dismounted.")
            if remember and self.server.mount_intended(info):
                self.server.set_mount_intended(info, False)
            return info

    def mount_intended(self, *, only: set[str] | None = None, startup: bool = False) -> list[DatabaseInfo]:
        """Mount the databases meant to be mounted; returns them. ``startup`` is a service
        start: a database marked "do not mount at start-up" stays dismounted (and is
        recorded so)."""
        out = []
        for info in self.server.databases():
            if only is not None and info.sg.prefix not in only:
                continue
            if not self.server.mount_intended(info):
                continue
            if startup and not info.mount_at_startup:
                self.server.set_mount_intended(info, False)
                continue
            self.mount(info)
            out.append(info)
        return out

    def mounted_databases(self) -> list[DatabaseInfo]:
        """The mounted databases with their configuration as it is now (a rename since the
        mount shows)."""
        with self._lock:
            out = []
            for guid, m in list(self.mounted.items()):
                try:
                    m.info = self.server.database(str(guid))
                except ConfigError:
                    pass  # its object was deleted while mounted: keep what we had
                out.append(m.info)
            return out

    def handle(self, info: DatabaseInfo) -> Mounted:
        m = self.mounted.get(info.guid)
        if m is None:
            raise StoreError(
                MAPI_E_FAILONEPROVIDER,
                f"{info.kind} {info.path_name} is dismounted; mount it ('mailkeep db mount {info.name}') "
                "and try again",
            )
        return m

    @contextmanager
    def _using(self, info: DatabaseInfo) -> Iterator[Mounted]:
        """The mounted database, held mounted until the block ends."""
        with self._cond:
            m = self.handle(info)
            if info.guid in self._closing:
                raise StoreError(MAPI_E_FAILONEPROVIDER, f"{info.kind} {info.path_name} is being dismounted")
            self._busy[info.guid] = self._busy.get(info.guid, 0) + 1
        try:
            yield m
        finally:
            with self._cond:
                left = self._busy[info.guid] - 1
                if left:
                    self._busy[info.guid] = left
                else:
                    del self._busy[info.guid]
                    self._cond.notify_all()

    @contextmanager
    def write(self, info: DatabaseInfo) -> Iterator[tuple[Transaction, Database]]:
        """One durable transaction on a mounted database: committed when the block ends."""
        with self._using(info) as m:
            txn = m.sg.begin()
            try:
                yield txn, m.db
            except BaseException:
                txn.rollback()
                raise
            txn.commit()

    @contextmanager
    def read(self, info: DatabaseInfo) -> Iterator[tuple[ReadTransaction, Database]]:
        with self._using(info) as m:
            r = m.sg.reader()
            try:
                yield r, m.db
            finally:
                r.close()

    def close(self) -> None:
        """A service stop: dismount everything cleanly (mount intent is kept)."""
        with self._lock:
            for m in list(self.mounted.values()):
                try:
                    self.dismount(m.info, remember=False)
                except Exception as e:  # noqa: BLE001 - the rest must still be closed
                    self.events.error(SOURCE, 9539, f"Dismounting {m.info.path_name} failed: {e}")
            for g in list(self.groups.values()):
                g.close()
            self.groups.clear()
            if self.owns_directory:
                self.directory.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
