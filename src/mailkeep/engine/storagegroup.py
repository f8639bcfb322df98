"""A storage group: one log stream, one checkpoint, up to five databases.

Invariants:
- One process opens a storage group at a time (an exclusive lock file in the system
  folder; a second opener gets -1032).
- Opening runs soft recovery: every database the log shows attached is brought up to the
  end of the log and left in Clean Shutdown. Mounting a database attaches it (Dirty
  Shutdown, made durable before any transaction touches it); dismounting detaches it
  (Clean Shutdown, Log Required 0-0).
- The checkpoint (E00.chk) only moves to a position that every mounted database holds
  durably in its files; it does not move while frozen (online backup). Under circular
  logging, generations below it are deleted.
- Attach rules: a dirty database attaches only to its own stream (-550 otherwise), two
  databases with one signature never attach together (-1222), a clean database of another
  organization is refused (-531).
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from mailkeep.engine import checkpoint as chkfile
from mailkeep.engine import codec, errors
from mailkeep.engine.backup import BackupKind, OnlineBackup
from mailkeep.engine.database import Database
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.header import DatabaseHeader, DbState, Mark
from mailkeep.engine.log import (
    RESERVE_NAMES,
    LogWriter,
    create_first_generation,
    create_reserve_logs,
    tmp_name,
)
from mailkeep.engine.logformat import (
    ATTACH,
    DEFAULT_LOG_SIZE,
    DETACH,
    HEADER_SIZE,
    MIN_LOG_SIZE,
    TERM,
    AttachedDb,
    LogHeader,
    both_names,
    format_lsn,
    gen_file_name,
    lsn,
    lsn_gen,
    lsn_off,
    new_signature,
)
from mailkeep.engine.logreader import (
    StreamLayout,
    layout,
    list_generations,
    read_header,
)
from mailkeep.engine.recovery import check_required, replay
from mailkeep.engine.transaction import ReadTransaction, Transaction
from mailkeep.eventlog import EventLog

SOURCE = "ESE"
MAX_DATABASES = 5
# E00-E03: storage groups; R00: the recovery storage group; EDB: the directory database
# (Active Directory's own ESE instance uses edb.log / edb.chk, as the guide's DC table shows).
PREFIXES = ("E00", "E01", "E02", "E03", "R00", "EDB")


@dataclass
class StorageGroupConfig:
    log_path: str
    system_path: str
    prefix: str = "E00"
    name: str = "First Storage Group"
    log_file_size: int = DEFAULT_LOG_SIZE
    circular_logging: bool = False
    checkpoint_depth_max: int = 1000
    checkpoint_depth_warning: float = 0.8
    checkpoint_every: int = 1000  # commits between automatic checkpoints
    organization: str = ""

    def __post_init__(self) -> None:
        if self.prefix.upper() not in PREFIXES:
            raise ValueError(f"log prefix must be one of {', '.join(PREFIXES)}, not {self.prefix!r}")
        self.prefix = self.prefix.upper()
        if self.log_file_size < MIN_LOG_SIZE or self.log_file_size % 4096:
            raise ValueError(f"log file size must be a multiple of 4096 and at least {MIN_LOG_SIZE}")
        if self.checkpoint_depth_max < 2:
            raise ValueError("checkpoint depth limit must be at least 2 generations")

    @property
    def checkpoint_path(self) -> str:
        return os.path.join(self.system_path, f"{self.prefix}.chk")


@dataclass
class RecoveryOptions:
    """eseutil /r switches: /d (database folder overriding logged paths), /i (ignore
    missing or mismatched databases instead of failing with -1216)."""

    db_dir: str | None = None
    ignore_missing: bool = True


class StorageGroup:
    def __init__(self, config: StorageGroupConfig, io: FileIO, events: EventLog) -> None:
        self.config = config
        self.io = io
        self.events = events
        self._write_lock = threading.RLock()
        self._writer: LogWriter | None = None
        self._dbs: dict[int, Database] = {}
        self._lock_fd = -1
        self._txn_counter = 0
        self._commits = 0
        self._chk_lsn = 0
        self._frozen = 0
        self._closed = False
        self._depth_warned = False
        self._checkpoint_due = False
        self._checkpointing = threading.Lock()
        self._durable_applied: dict[int, int] = {}
        # Databases dismounted by a failed write (482), still Dirty Shutdown: edb path -> the
        # position their files hold durably. They hold the checkpoint (and so circular
        # logging) back until mounted again, or the log they need would be deleted.
        self._failed_hold: dict[str, int] = {}
        self.signature = ""
        self.last_recovery: dict[str, object] = {}
        self._backup: OnlineBackup | None = None

    # ======================================================================================
    # creation and opening
    # ======================================================================================
    @classmethod
    def create(
        cls, config: StorageGroupConfig, *, io: FileIO | None = None, events: EventLog | None = None
    ) -> StorageGroup:
        io = io or FileIO()
        for d in (config.log_path, config.system_path):
            os.makedirs(d, exist_ok=True)
        cur = os.path.join(config.log_path, f"{config.prefix}.log")
        if os.path.exists(cur) or list_generations(config.log_path, config.prefix):
            raise EseError(
                errors.FileAccessDenied,
                f"{config.log_path} already holds a {config.prefix} log stream; open it instead "
                "of creating a new one",
                path=cur,
            )
        created = time.time()
        header = LogHeader(
            generation=1,
            signature=new_signature(created),
            created=created,
            prev_created=0.0,
            file_size=config.log_file_size,
            prefix=config.prefix,
            circular=config.circular_logging,
            log_path=os.path.abspath(config.log_path),
            system_path=os.path.abspath(config.system_path),
        )
        chk = chkfile.Checkpoint(
            signature=header.signature,
            lsn=lsn(1, HEADER_SIZE),
            prefix=config.prefix,
            log_path=header.log_path,
            system_path=header.system_path,
            circular=config.circular_logging,
        )
        try:
            create_first_generation(io, config.log_path, header)
            create_reserve_logs(io, config.log_path, config.log_file_size)
            chkfile.write(io, config.checkpoint_path, chk)
            return cls.open(config, io=io, events=events)
        except BaseException as e:
            # Nothing was ever committed to a group whose creation failed: remove what was
            # made, so creating it again works (a half-written E00.log would otherwise be
            # refused by both open (-501) and create (-1032)).
            _undo_creation(
                io, e, f"storage group {config.name} in {config.log_path}", config.log_path,
                [cur, *(os.path.join(config.log_path, n) for n in RESERVE_NAMES),
                 config.checkpoint_path, config.checkpoint_path + ".tmp"],
            )
            raise

    @classmethod
    def open(
        cls,
        config: StorageGroupConfig,
        *,
        io: FileIO | None = None,
        events: EventLog | None = None,
        recovery: RecoveryOptions | None = None,
    ) -> StorageGroup:
        sg = cls(config, io or FileIO(), events or EventLog())
        sg._acquire_lock()
        try:
            sg._recover(recovery or RecoveryOptions())
        except BaseException:
            sg._abandon()
            raise
        return sg

    def _acquire_lock(self) -> None:
        os.makedirs(self.config.system_path, exist_ok=True)
        path = os.path.join(self.config.system_path, f"{self.config.prefix}.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            try:
                with open(path) as f:
                    pid = f.read().strip()
            except OSError:
                pid = ""
            holder = f"process {pid}" if pid else "another process"
            raise EseError(
                errors.FileAccessDenied,
                f"storage group {self.config.prefix} in {self.config.log_path} is in use by "
                f"{holder}. Stop it (or go through the running server) first.",
                path=path,
            ) from e
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock_fd = fd

    def _finish_interrupted_roll(self) -> None:
        cfg = self.config
        cur = os.path.join(cfg.log_path, f"{cfg.prefix}.log")
        tmp = os.path.join(cfg.log_path, tmp_name(cfg.prefix))
        if os.path.exists(cur):
            if os.path.exists(tmp):
                self.io.unlink(tmp)  # a prepared generation never used
            return
        numbered = list_generations(cfg.log_path, cfg.prefix)
        if not numbered:
            return
        try:
            prev = read_header(numbered[max(numbered)])
        except EseError:
            return
        # On a full disk the roll-over's next generation is a reserve log, not E00tmp.log.
        for name in (tmp_name(cfg.prefix), *RESERVE_NAMES):
            path = os.path.join(cfg.log_path, name)
            if not os.path.exists(path):
                continue
            try:
                h = read_header(path)
            except EseError:
                continue  # a reserve log not used yet (zeros)
            if h.generation == max(numbered) + 1 and h.signature == prev.signature:
                self.io.rename(path, cur)
                self.io.fsync_dir(cfg.log_path)
                self.events.warning(
                    SOURCE, 470,
                    f"Completed an interrupted log roll-over: {name} became "
                    f"{cfg.prefix}.log (generation {h.generation}).",
                )
                return

    def _recover(self, opts: RecoveryOptions) -> None:
        cfg = self.config
        self._finish_interrupted_roll()
        lay = layout(cfg.log_path, cfg.prefix)
        self.signature = lay.signature
        start_gen, chk_gen = self._recovery_start(lay)
        self.events.info(
            SOURCE, 300,
            f"{cfg.name} ({cfg.prefix}): recovery begins at generation {start_gen} "
            f"(current {lay.current_gen}).",
        )
        opened: dict[str, Database] = {}

        def resolve(a: AttachedDb) -> Database | None:
            return self._resolve(a, opts, opened, start_gen)

        try:
            res = replay(lay, start_gen, resolve, checkpoint_gen=chk_gen)
        except EseError as e:
            for db in opened.values():
                db.abandon()
            self.events.error(SOURCE, 454, f"Recovery of {cfg.name} failed: {e}", error=e.number)
            raise
        for db in opened.values():
            if db not in res.attached_at_end.values():
                if db.header.state == DbState.DIRTY:
                    # Detached in the log (its DETACH record, or its id taken by a later
                    # ATTACH after it failed) but its header never said so: every record
                    # that concerns it has been replayed, so it is consistent now.
                    h = db.header.copy()
                    h.transition(DbState.CLEAN)
                    h.log_required_low = 0
                    h.last_consistent = Mark(db.applied_lsn, time.time())
                    db.write_header(h)
                    self._make_durable(db)
                db.close()
        self._txn_counter = max(time.time_ns(), res.max_txn_id + 1)
        # The writer continues where the valid log ends; a torn tail is zeroed first so no
        # stale bytes can ever be read as records again.
        cur_header = read_header(lay.current_path)
        end_off = lsn_off(res.end)
        if res.torn_bytes:
            fd = self.io.open(lay.current_path)
            try:
                self.io.fill_zeros(fd, end_off, cur_header.file_size)
                self.io.fsync(fd)
            finally:
                self.io.close(fd)
            self.events.warning(
                SOURCE, 462,
                f"The end of {lay.current_path} at {format_lsn(res.end)} was torn (a write "
                f"interrupted by the stop); {res.torn_bytes} bytes of it were discarded. No "
                "acknowledged transaction is in a torn flush.",
            )
        self._writer = LogWriter(
            self.io, cfg.log_path, cur_header, offset=end_off, flush=res.last_flush,
            attached=self._attached, sealed=res.sealed,
        )
        self._writer.on_roll = self._rolled
        recovered = [db for db in res.attached_at_end.values() if db is not None]
        ahead = max([db.applied_lsn for db in recovered] + [0])
        while ahead > self._writer.appended():
            self._writer.roll()
            self.events.warning(
                SOURCE, 497,
                f"A database of {cfg.name} holds transactions beyond the end of the log "
                f"({format_lsn(ahead)} > {format_lsn(res.end)}): the log lost its last writes "
                "in a power failure after the database got them. They were never acknowledged; "
                "the log continues at a new generation so no position is reused.",
            )
        for db in recovered:
            self._detach_clean(db)
        self._writer.append(TERM, 0, b"")
        self._writer.flush()
        self._chk_lsn = min([self._writer.appended(), *self._failed_hold.values()])
        self._write_checkpoint()
        try:
            create_reserve_logs(self.io, cfg.log_path, cur_header.file_size)
        except OSError as e:
            self.events.warning(SOURCE, 429, f"Could not re-create the reserve logs: {e.strerror}.")
        self.last_recovery = {
            "generations": res.generations,
            "transactions": res.transactions,
            "bytes": res.bytes_read,
            "seconds": res.seconds,
            "databases": [db.edb_path for db in recovered],
        }
        self.events.info(
            SOURCE, 302,
            f"{cfg.name} ({cfg.prefix}): recovery complete: {res.generations} generation(s), "
            f"{res.transactions} transaction(s) read in {res.seconds:.2f} s; "
            f"{len(recovered)} database(s) left in Clean Shutdown.",
            **self.last_recovery,
        )
        self.events.info(SOURCE, 100, f"{cfg.name} ({cfg.prefix}) started.")

    def _recovery_start(self, lay: StreamLayout) -> tuple[int, int | None]:
        try:
            chk = chkfile.read(self.config.checkpoint_path)
        except EseError as e:
            if e.number == errors.CheckpointCorrupt:
                self.events.warning(SOURCE, 533, f"{e.detail} Replaying from the lowest generation.")
            return lay.lowest, None
        if chk.signature != lay.signature:
            raise EseError(
                errors.BadCheckpointSignature,
                f"checkpoint {self.config.checkpoint_path} belongs to another log stream "
                f"({chk.signature}, logs are {lay.signature}). Move it aside; recovery then "
                "starts at the lowest generation.",
                path=self.config.checkpoint_path,
            )
        gen = lsn_gen(chk.lsn)
        if gen > lay.current_gen:
            self.events.warning(SOURCE, 533, "The checkpoint is past the end of the log; ignoring it.")
            return lay.lowest, None
        return gen, gen

    def _resolve(
        self, a: AttachedDb, opts: RecoveryOptions, opened: dict[str, Database], start_gen: int
    ) -> Database | None:
        edb, stm = a.path, a.stm_path
        if opts.db_dir is not None:
            edb = os.path.join(opts.db_dir, os.path.basename(edb))
            stm = os.path.join(opts.db_dir, os.path.basename(stm))
        key = os.path.abspath(edb)
        if key in opened:
            db = opened[key]
            return db if db.header.signature == a.signature else None

        def mismatch(why: str) -> None:
            msg = (
                f"database {edb} (attached in the log as id {a.dbid}, signature {a.signature}) "
                f"{why}. Put the right file back, use /d to say where the databases are, or /i "
                "to recover without it."
            )
            if not opts.ignore_missing:
                raise EseError(errors.AttachedDatabaseMismatch, msg, path=edb)
            # It may come back (a volume not mounted yet): keep the log it needs until it is
            # mounted again or an administrator says it is gone (forget_database).
            key = os.path.abspath(edb)
            self._failed_hold[key] = min(lsn(start_gen, HEADER_SIZE), self._failed_hold.get(key, 1 << 62))
            self.events.warning(
                SOURCE, 494,
                msg.split(". Put")[0] + "; skipped. Its logs are kept until it is mounted again (or "
                "forgotten with StorageGroup.forget_database).",
            )

        if not os.path.exists(edb):
            mismatch("is missing")
            return None
        db = Database(self.io, edb, stm)
        db.open()
        if db.header.backups.get("patch_current_full") is not None:
            # Restored from an online backup, waiting for hard recovery (eseutil /cc), which
            # replays the restored logs and then these: soft recovery must not touch it, and
            # the logs it will need are kept (it holds the checkpoint until it is mounted).
            db.close()
            self._failed_hold[key] = min(lsn(start_gen, HEADER_SIZE), self._failed_hold.get(key, 1 << 62))
            self.events.info(SOURCE, 498, f"database {edb} was restored from backup and waits for hard recovery "
                             "(eseutil /cc); soft recovery leaves it alone and keeps the logs it will need.")
            return None
        if db.header.signature != a.signature:
            db.close()
            mismatch(f"has signature {db.header.signature}")
            return None
        if db.header.state == DbState.CLEAN and db.applied_lsn < lsn(start_gen, 0):
            # A consistent database that ends before this replay begins (a restored copy after
            # hard recovery, or files copied back): the log from here holds transactions of an
            # incarnation it never had the start of. Applying them would leave a gap inside it.
            db.close()
            self.events.warning(SOURCE, 499, f"database {edb} is consistent and ends before generation {start_gen}, "
                                "where this recovery begins: the log's later transactions for its signature belong "
                                "to another copy of it and are not applied.")
            return None
        if db.header.log_signature and db.header.log_signature != self.signature:
            db.close()
            mismatch(f"was last attached to another log stream ({db.header.log_signature})")
            return None
        try:
            check_required(db, start_gen)
        except EseError:
            db.close()
            raise
        opened[key] = db
        return db

    # ======================================================================================
    # state
    # ======================================================================================
    def _check_open(self) -> None:
        if self._closed or self._writer is None:
            raise EseError(errors.LoggingDisabled, f"storage group {self.config.name} is not open")
        if self._writer.failed is not None:
            raise self._writer.failed

    def _check_mounted(self, db: Database) -> None:
        if self._dbs.get(db.dbid) is not db:
            raise EseError(
                errors.DatabaseNotFound,
                f"database {db.name} is not mounted in {self.config.name}; mount it first",
                path=db.edb_path,
            )

    def _log_writer(self) -> LogWriter:
        self._check_open()
        assert self._writer is not None
        return self._writer

    def _next_txn_id(self) -> int:
        self._txn_counter += 1
        return self._txn_counter

    def _attached(self) -> list[AttachedDb]:
        return [
            AttachedDb(db.dbid, db.edb_path, db.stm_path, db.header.signature)
            for db in self._dbs.values()
        ]

    @property
    def databases(self) -> list[Database]:
        return list(self._dbs.values())

    @property
    def current_generation(self) -> int:
        return self._log_writer().generation

    @property
    def checkpoint_lsn(self) -> int:
        return self._chk_lsn

    @property
    def checkpoint_depth(self) -> int:
        return self.current_generation - lsn_gen(self._chk_lsn)

    # ======================================================================================
    # databases
    # ======================================================================================
    def create_database(
        self,
        edb_path: str,
        stm_path: str | None = None,
        *,
        directory_guid: str = "",
        admin_group: str = "",
    ) -> Database:
        from mailkeep.engine.database import create_files

        stm_path = stm_path or os.path.splitext(edb_path)[0] + ".stm"
        header = DatabaseHeader.new(
            directory_guid=directory_guid,
            organization=self.config.organization,
            admin_group=admin_group,
        )
        with self._write_lock:
            self._check_open()
            if len(self._dbs) >= MAX_DATABASES:
                raise EseError(
                    errors.InternalError,
                    f"{self.config.name} already has {MAX_DATABASES} databases mounted",
                )
            fresh = not os.path.exists(edb_path) and not os.path.exists(stm_path)
            db: Database | None = None
            try:
                create_files(self.io, edb_path, stm_path, header)
                header.transition(DbState.CLEAN)
                db = Database(self.io, edb_path, stm_path)
                db.open()
                db.write_header(header)
                db.checkpoint()
                db.close()
            except BaseException as e:
                # Nothing was ever stored in a database whose creation failed: remove its
                # files, so creating it again works (a half-written .stm would otherwise be
                # refused by mount (-1018) and by create_database (-1032)).
                if db is not None:
                    db.abandon()
                made = [edb_path, edb_path + "-wal", edb_path + "-shm", stm_path] if fresh else []
                _undo_creation(self.io, e, f"database {edb_path}", edb_path, made)
                raise
        return self.mount(edb_path, stm_path)

    def mount(self, edb_path: str, stm_path: str | None = None) -> Database:
        stm_path = stm_path or os.path.splitext(edb_path)[0] + ".stm"
        with self._write_lock:
            self._check_open()
            self._check_mountable()
            key = os.path.abspath(edb_path)
            for d in self._dbs.values():
                if d.edb_path == key:
                    return d
            if len(self._dbs) >= MAX_DATABASES:
                raise EseError(
                    errors.InternalError,
                    f"{self.config.name} already has {MAX_DATABASES} databases mounted",
                )
            db = Database(self.io, edb_path, stm_path)
            db.open()
            try:
                patch = db.header.backups.get("patch_current_full")
                if patch is not None:
                    raise EseError(
                        errors.SoftRecoveryOnBackupDatabase,
                        f"database {db.edb_path} was restored from an online backup and has not been recovered "
                        f"yet (Patch Current Full Backup: log generations {patch.low_gen}-{patch.high_gen}). Run "
                        "'mailkeep eseutil /cc TEMP' on the restore's temporary folder (or restore with "
                        "--last-restore-set), then mount it.",
                        path=db.edb_path,
                    )
                if db.header.state == DbState.DIRTY:  # Just Created: never attached, nothing to replay
                    self._recover_one(db)
                self._attach(db)
            except BaseException:
                db.close()
                raise
            return db

    def _check_mountable(self) -> None:
        w = self._log_writer()
        if w.disk_full:
            try:
                create_reserve_logs(self.io, self.config.log_path, w.file_size)
            except OSError as e:
                raise EseError(
                    errors.LogDiskFull,
                    f"the log disk of {self.config.name} ({self.config.log_path}) is still full "
                    f"({e.strerror}). Free space there, then mount again.",
                    path=self.config.log_path,
                ) from e
            w.disk_full = False
            self.events.info(SOURCE, 430, f"Reserve logs of {self.config.name} re-created; mounting allowed.")
        depth = self.checkpoint_depth
        if depth >= self.config.checkpoint_depth_max:
            raise EseError(
                errors.CheckpointDepthTooDeep,
                f"the checkpoint of {self.config.name} is {depth} generations behind the current "
                f"log (limit {self.config.checkpoint_depth_max}), usually because a backup never "
                "finished. End or cancel the backup, then mount again.",
            )

    def _recover_one(self, db: Database) -> None:
        """Soft recovery of one dirty database against this (running) stream."""
        h = db.header
        if h.log_signature != self.signature:
            raise EseError(
                errors.DatabaseDirtyShutdown,
                f"database {db.edb_path} was not shut down cleanly and is attached to another "
                f"log stream ({h.log_signature or 'none'}), not to {self.config.name}'s. Run "
                "'mailkeep eseutil /r' with the logs it was attached to (or restore it from "
                "backup) before mounting it here.",
                path=db.edb_path,
            )
        w = self._log_writer()
        w.flush()
        lay = layout(self.config.log_path, self.config.prefix)
        start = max(min(h.log_required_low or lay.lowest, lsn_gen(db.applied_lsn) or lay.lowest), 1)
        if start < lay.lowest:
            missing = ", ".join(both_names(self.config.prefix, g) for g in range(start, min(lay.lowest, start + 3)))
            raise EseError(
                errors.DatabaseDirtyShutdown,
                f"database {db.edb_path} was not shut down cleanly and needs log generations "
                f"{start}-{lay.lowest - 1}, which are no longer in {self.config.log_path} ({missing}"
                f"{', ...' if lay.lowest - start > 3 else ''}). Copy them back from backup and mount "
                "again, or restore the database from backup.",
                path=db.edb_path,
            )

        def resolve(a: AttachedDb) -> Database | None:
            return db if a.signature == h.signature else None

        self.events.info(SOURCE, 300, f"Recovery of {db.edb_path} begins at generation {start}.")
        res = replay(lay, start, resolve)
        self.events.info(
            SOURCE, 302,
            f"Recovery of {db.edb_path} complete: {res.transactions} transaction(s) read.",
        )
        if db.applied_lsn > w.appended():
            raise EseError(
                errors.DbTimeTooNew,
                f"database {db.edb_path} holds transactions beyond the end of this log "
                f"({format_lsn(db.applied_lsn)}); it cannot be attached to it. Restore it.",
                path=db.edb_path,
            )
        now = time.time()
        end = w.appended()
        h = db.header.copy()
        h.transition(DbState.CLEAN)
        h.log_required_low = 0
        h.last_consistent = Mark(end, now)
        db.write_header(h, applied_lsn=max(db.applied_lsn, end))
        self._make_durable(db)

    def roll_forward(self, dbs: Sequence[Database], from_gen: int) -> tuple[int, str]:
        """Hard recovery's second part: replay this storage group's own log generations, from
        ``from_gen`` while they continue with the same signature, into restored databases
        that are not mounted (other databases of the group stay mounted; the write lock keeps
        the log still meanwhile). Returns the last generation replayed (``from_gen - 1`` when
        none) and, when it stopped early, why."""
        with self._write_lock:
            self._check_open()
            for db in dbs:
                if any(d.edb_path == db.edb_path for d in self._dbs.values()):
                    raise EseError(errors.DatabaseInUse, f"database {db.edb_path} is mounted; dismount it before "
                                   "recovering a restored copy into its files", path=db.edb_path)
            w = self._log_writer()
            w.flush()
            lay = layout(self.config.log_path, self.config.prefix)
            if lay.signature != next((d.header.log_signature for d in dbs if d.header.log_signature), lay.signature):
                return from_gen - 1, (f"{self.config.name}'s logs belong to another log stream (signature "
                                      f"{lay.signature}), so none of them apply to the restored databases")
            if from_gen > lay.current_gen:
                return from_gen - 1, ""
            if from_gen not in lay.numbered and from_gen != lay.current_gen:
                return from_gen - 1, (f"{self.config.name}'s log folder does not hold generation {from_gen} "
                                      f"({both_names(self.config.prefix, from_gen)}; it starts at {lay.lowest}): "
                                      "the databases hold what the restored logs hold")
            sigs = {d.header.signature: d for d in dbs}

            def resolve(a: AttachedDb) -> Database | None:
                return sigs.get(a.signature)

            self.events.info(SOURCE, 300, f"Roll-forward of {len(dbs)} restored database(s) from {self.config.name}'s "
                             f"own log folder begins at generation {from_gen}.")
            res = replay(lay, from_gen, resolve)
            self.events.info(SOURCE, 302, f"Roll-forward complete: generations {from_gen}-{lay.current_gen}, "
                             f"{res.transactions} transaction(s) read.")
            return lay.current_gen, ""

    def _attach(self, db: Database) -> None:
        h = db.header.copy()
        org = self.config.organization
        if h.organization and org and h.organization != org:
            raise EseError(
                errors.BadDbSignature,
                f"database {db.edb_path} belongs to organization {h.organization!r}, not "
                f"{org!r}; it cannot be mounted on this server.",
                path=db.edb_path,
            )
        for other in self._dbs.values():
            if other.header.signature == h.signature:
                raise EseError(
                    errors.DatabaseSignInUse,
                    f"database {db.edb_path} has the same signature as mounted database "
                    f"{other.edb_path} (a copy of it). Two copies of one database cannot be "
                    "mounted in one storage group.",
                    path=db.edb_path,
                )
        dbid = min(set(range(1, MAX_DATABASES + 2)) - set(self._dbs))
        w = self._log_writer()
        info = AttachedDb(dbid, db.edb_path, db.stm_path, h.signature)
        _s, end = w.append(ATTACH, dbid, codec.encode(info.to_list()))
        w.wait_durable(end)
        h.transition(DbState.DIRTY)
        h.log_signature = self.signature
        h.last_attach = Mark(end, time.time())
        h.log_required_low = lsn_gen(end)
        h.log_committed = lsn_gen(end)
        h.dbid = dbid
        db.dbid = dbid
        db.write_header(h, applied_lsn=end)
        self._make_durable(db)  # Dirty Shutdown is on disk before any transaction touches the file
        self._durable_applied[dbid] = end
        self._failed_hold.pop(db.edb_path, None)  # recovered and durable again
        self._dbs[dbid] = db
        self.events.info(SOURCE, 326, f"Database {db.edb_path} attached to {self.config.name} (id {dbid}).")

    def forget_database(self, edb_path: str) -> bool:
        """An administrator's word that a missing or failed database is gone for good: its
        logs no longer hold the checkpoint (circular logging may then delete them)."""
        with self._write_lock:
            held = self._failed_hold.pop(os.path.abspath(edb_path), None)
            if held is None:
                return False
            self.events.warning(
                SOURCE, 495, f"{edb_path} was forgotten: the log it needed is no longer kept for it."
            )
            self._advance_checkpoint()
            return True

    def release_hold(self, edb_path: str) -> None:
        """A restored database has been recovered (hard recovery replayed what it needed): it no
        longer holds the checkpoint (soft recovery held it while it waited, event 498)."""
        with self._write_lock:
            self._failed_hold.pop(os.path.abspath(edb_path), None)

    @property
    def held_databases(self) -> dict[str, int]:
        """Databases that hold the checkpoint without being mounted: path -> log position."""
        return dict(self._failed_hold)

    def dismount(self, db: Database) -> None:
        with self._write_lock:
            if self._dbs.get(db.dbid) is not db:
                return
            self._check_open()
            del self._dbs[db.dbid]
            self._durable_applied.pop(db.dbid, None)
            self._detach_clean(db)
            self._advance_checkpoint()

    def _detach_clean(self, db: Database) -> None:
        b = self._backup
        if b is not None and db in b.databases:
            b.abort(EseError(errors.BackupAbortByServer, f"database {db.edb_path} was dismounted during the backup"),
                    advance=False)
        w = self._log_writer()
        _s, end = w.append(DETACH, db.dbid, b"")
        w.wait_durable(end)
        now = time.time()
        h = db.header.copy()
        if h.state != DbState.CLEAN:
            h.transition(DbState.CLEAN)
        h.log_required_low = 0
        h.log_committed = lsn_gen(end)
        h.last_detach = Mark(end, now)
        h.last_consistent = Mark(end, now)
        try:
            db.write_header(h, applied_lsn=end)
        except BaseException:
            db.abandon()  # stays Dirty Shutdown (mounting replays it); no handle is kept
            raise
        db.close_readers()
        try:
            for _ in range(50):
                if db.checkpoint():
                    break
                time.sleep(0.02)
            db.close()
            self.io.fsync_path(db.edb_path)
            wal = db.edb_path + "-wal"
            if os.path.exists(wal) and os.path.getsize(wal) > 0:
                # Another process kept SQLite from folding its WAL into the .edb: make the
                # WAL itself durable, so the Clean Shutdown header and every commit in it
                # survive a power loss (SQLite replays a WAL when the file is opened).
                self.io.fsync_path(wal)
                self.io.fsync_dir(os.path.dirname(db.edb_path))
        except OSError as e:
            db.abandon()
            self._stop(e, f"making database {db.edb_path} durable at its detach")
        self.events.info(SOURCE, 327, f"Database {db.edb_path} detached from {self.config.name}: Clean Shutdown.")

    def _database_failed(self, db: Database, e: BaseException) -> None:
        self._dbs.pop(db.dbid, None)
        held = self._durable_applied.pop(db.dbid, None)
        if held is not None:
            self._failed_hold[db.edb_path] = min(held, self._failed_hold.get(db.edb_path, held))
        db.abandon()
        self.events.error(
            SOURCE, 482,
            f"Database {db.edb_path} was dismounted because writing it failed ({e}). The log "
            "holds every committed transaction: free space or fix the disk, then mount it "
            "again (soft recovery replays the log).",
        )

    # ======================================================================================
    # transactions
    # ======================================================================================
    def begin(self) -> Transaction:
        return Transaction(self)

    def reader(self) -> ReadTransaction:
        return ReadTransaction(self)

    def _rolled(self, generation: int) -> None:
        self._checkpoint_due = True

    def _after_commit(self) -> None:
        self._commits += 1
        w = self._writer
        if w is not None and not w.next_prepared:
            w.prepare_next()
        if w is not None and w.disk_full and self._dbs:
            self._shutdown_disk_full()
            return
        if self._checkpoint_due or self._commits % self.config.checkpoint_every == 0:
            self.checkpoint()

    def _shutdown_disk_full(self) -> None:
        with self._write_lock:
            names = [db.edb_path for db in self._dbs.values()]
            for db in list(self._dbs.values()):
                del self._dbs[db.dbid]
                self._durable_applied.pop(db.dbid, None)
                self._detach_clean(db)
            self._advance_checkpoint()
        self.events.error(
            SOURCE, 429,
            f"The log disk of {self.config.name} ({self.config.log_path}) is full: a reserve "
            f"log took the last records and {len(names)} database(s) were dismounted cleanly "
            f"({', '.join(names)}). Free space, then mount them again.",
        )

    # ======================================================================================
    # checkpoint
    # ======================================================================================
    def checkpoint(self) -> int:
        """Make mounted databases durable and advance E00.chk as far as they allow."""
        if not self._checkpointing.acquire(blocking=False):
            return self._chk_lsn
        try:
            with self._write_lock:
                self._check_open()
                self._checkpoint_due = False
                w = self._log_writer()
                # With the write lock held no transaction is open, so every logged change
                # up to ``end`` is in each database: each is caught up to ``end``, even one
                # that saw no transaction for a long time (it must not hold the checkpoint).
                end = w.flush()
                for dbid, db in list(self._dbs.items()):
                    h = db.header.copy()
                    h.log_required_low = lsn_gen(end)
                    h.log_committed = w.generation
                    db.write_header(h, applied_lsn=end)
                    if self._make_durable(db):
                        self._durable_applied[dbid] = end
                self._advance_checkpoint()
            self._check_depth()
            return self._chk_lsn
        finally:
            self._checkpointing.release()

    def _advance_checkpoint(self) -> None:
        w = self._log_writer()
        if self._frozen:
            return
        target = min([*self._durable_applied.values(), *self._failed_hold.values()], default=w.appended())
        if target <= self._chk_lsn:
            return
        self._chk_lsn = target
        try:
            self._write_checkpoint()
            if self.config.circular_logging:
                chk_gen = lsn_gen(target)
                for g, path in sorted(list_generations(self.config.log_path, self.config.prefix).items()):
                    if g < chk_gen:
                        self.io.unlink(path)
                self.io.fsync_dir(self.config.log_path)
        except OSError as e:
            self._stop(e, f"writing checkpoint {self.config.checkpoint_path}")

    def _make_durable(self, db: Database) -> bool:
        """db.checkpoint(); a failed write or fsync of its files stops the group (-510)."""
        try:
            return db.checkpoint()
        except OSError as e:
            self._stop(e, f"making database {db.edb_path} durable")

    def _stop(self, e: OSError, what: str) -> NoReturn:
        """A write or fsync the group relies on failed. As after a failed log fsync, no
        further commit is accepted (-510) and reopening recovers from the log: a retried
        fsync is never trusted ("fsyncgate"), so a later checkpoint must not pass data the
        kernel may have dropped."""
        failure = EseError(
            errors.LogWriteFail,
            f"{what} failed ({e.strerror}). No further commits are accepted in "
            f"{self.config.name}; restart the storage group to recover from the log.",
            path=e.filename,
        )
        if self._writer is not None:
            self._writer.stop(failure)
        raise failure from e

    def _write_checkpoint(self) -> None:
        cfg = self.config
        chk = chkfile.Checkpoint(
            signature=self.signature,
            lsn=self._chk_lsn,
            prefix=cfg.prefix,
            log_path=os.path.abspath(cfg.log_path),
            system_path=os.path.abspath(cfg.system_path),
            circular=cfg.circular_logging,
            frozen=bool(self._frozen),
            attached=[a.to_list() for a in self._attached()],
        )
        chkfile.write(self.io, cfg.checkpoint_path, chk)

    def _check_depth(self) -> None:
        cfg = self.config
        depth = self.checkpoint_depth
        warn_at = max(1, int(cfg.checkpoint_depth_max * cfg.checkpoint_depth_warning))
        if depth >= cfg.checkpoint_depth_max and self._dbs:
            with self._write_lock:
                names = []
                for db in list(self._dbs.values()):
                    del self._dbs[db.dbid]
                    self._durable_applied.pop(db.dbid, None)
                    self._detach_clean(db)
                    names.append(db.edb_path)
            self.events.error(
                SOURCE, 621,
                f"{cfg.name}: the checkpoint is {depth} generations behind the current log "
                f"(limit {cfg.checkpoint_depth_max}); the databases were dismounted "
                f"({', '.join(names)}) with error {errors.CheckpointDepthTooDeep} "
                f"({errors.error_name(errors.CheckpointDepthTooDeep)}). A backup that never "
                "finished usually freezes the checkpoint: end it, then mount again.",
                error=errors.CheckpointDepthTooDeep, depth=depth,
            )
        elif depth >= warn_at and not self._depth_warned:
            self._depth_warned = True
            self.events.warning(
                SOURCE, 620,
                f"{cfg.name}: the checkpoint is {depth} generations behind the current log; at "
                f"{cfg.checkpoint_depth_max} the databases will be dismounted. Check for a "
                "backup that has not finished.",
                depth=depth,
            )
        elif depth < warn_at:
            self._depth_warned = False

    def freeze_checkpoint(self) -> None:
        with self._write_lock:
            self._frozen += 1
            self._write_checkpoint()

    def thaw_checkpoint(self, *, advance: bool = True) -> None:
        with self._write_lock:
            self._frozen = max(0, self._frozen - 1)
            if not self._frozen and not self._closed:
                self._write_checkpoint()  # even if the checkpoint cannot move, E00.chk is no longer frozen
        if not self._frozen and advance:
            self.checkpoint()

    @property
    def frozen(self) -> bool:
        return bool(self._frozen)

    # ======================================================================================
    # online backup
    # ======================================================================================
    def begin_backup(
        self,
        kind: BackupKind | str,
        databases: Sequence[Database] | None = None,
        *,
        group_databases: Sequence[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> OnlineBackup:
        """Start an online backup (see engine/backup.py). ``databases``: the mounted databases
        to back up (default all); ``group_databases``: the ``.edb`` paths of every database
        the storage group has, mounted or not (the store knows them; the engine only knows the
        mounted ones) — a dismounted one stops truncation."""
        kind = BackupKind(kind)
        with self._write_lock:
            self._check_open()
            if self._backup is not None:
                raise EseError(errors.BackupInProgress, f"a {self._backup.kind.value} backup of {self.config.name} "
                               "is running; wait for it to end (or stop it), then start this one")
            chosen = list(self._dbs.values()) if databases is None else list(databases)
            for db in chosen:
                self._check_mounted(db)
            if not chosen:
                raise EseError(errors.DatabaseNotFound, f"{self.config.name} has no mounted database to back up; "
                               "mount the databases first (a dismounted database cannot be backed up online)")
            b = OnlineBackup(self, kind, chosen, group_databases if group_databases is not None else
                             [db.edb_path for db in self._dbs.values()], clock)
            self._backup = b
            try:
                b._begin()
            except BaseException:
                self._backup = None
                raise
            return b

    def _backup_ended(self, b: OnlineBackup) -> None:
        if self._backup is b:
            self._backup = None

    @property
    def backup(self) -> OnlineBackup | None:
        return self._backup

    def roll(self) -> int:
        """Force a roll-over; returns the generation closed."""
        with self._write_lock:
            return self._log_writer().roll()

    # ======================================================================================
    # shutdown
    # ======================================================================================
    def close(self) -> None:
        """Clean shutdown: every database detached (Clean Shutdown), log flushed."""
        if self._closed:
            return
        b = self._backup
        if b is not None:
            b.abort(EseError(errors.BackupAbortByServer, f"{self.config.name} is shutting down"), advance=False)
        try:
            with self._write_lock:
                if self._writer is not None and self._writer.failed is None:
                    for db in list(self._dbs.values()):
                        del self._dbs[db.dbid]
                        self._durable_applied.pop(db.dbid, None)
                        self._detach_clean(db)
                    self._writer.append(TERM, 0, b"")
                    self._writer.flush()
                    self._advance_checkpoint()
                    self.events.info(SOURCE, 101, f"{self.config.name} ({self.config.prefix}) stopped.")
        finally:
            self._abandon()

    def crash(self) -> None:
        """Stop as a killed process would: nothing more is written (tests)."""
        self._abandon()

    def _abandon(self) -> None:
        self._closed = True
        for db in list(self._dbs.values()):
            db.abandon()
        self._dbs.clear()
        if self._writer is not None:
            self._writer.close()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> StorageGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _undo_creation(io: FileIO, e: BaseException, what: str, path: str, made: list[str]) -> None:
    """Remove the files of a creation that failed (nothing was ever committed to them, and a
    half-written file would block creating it again); an I/O failure becomes -1808/-1022."""
    for p in made:
        try:
            io.unlink(p)
        except OSError:
            pass
    if isinstance(e, OSError):
        full = e.errno in (errno.ENOSPC, errno.EDQUOT)
        raise EseError(
            errors.DiskFull if full else errors.DiskIO,
            f"creating {what} failed ({e.strerror}); nothing was left behind. "
            + ("Free space on its disk" if full else "Check the disk") + ", then create it again.",
            path=path,
        ) from e


def generation_path(config: StorageGroupConfig, generation: int) -> str:
    return os.path.join(config.log_path, gen_file_name(config.prefix, generation))


__all__ = ["StorageGroup", "StorageGroupConfig", "RecoveryOptions", "generation_path"]
