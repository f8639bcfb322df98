"""The streaming online backup API of a storage group (ESE's HrESEBackup* calls).

``StorageGroup.begin_backup(kind, databases)`` returns an :class:`OnlineBackup`; the agent
then reads :meth:`OnlineBackup.database_files` (normal and copy), :meth:`OnlineBackup.log_files`
and, per database, :meth:`OnlineBackup.patch`, calls :meth:`OnlineBackup.truncate` (normal and
incremental) and :meth:`OnlineBackup.end`. The steps follow the guide's "How Exchange Server
2003 Backup Works" to the letter:

- normal: freeze the checkpoint; record the first log needed in each selected database's
  Current Full Backup section; stream the database files (a consistent image: while a backup
  holds a database, the engine does not fold SQLite's WAL into the ``.edb``, so the main file
  does not change while commits continue in the log; the ``.stm`` is append-only, so its
  prefix is stable); verify every record and stream on the way (-1018, event 474); force a
  roll-over after the database files; stream the closed generations from the frozen
  checkpoint to the one just closed (never ``E00.log``); truncate what no database of the
  group still needs; write Previous Full Backup; unfreeze.
- copy: the same without truncation and without the header update.
- incremental: freeze; roll over first; stream every closed generation on disk; truncate;
  write the guide's "Current Incremental Backup" (``eseutil /mh`` shows it as Previous
  Incremental Backup, as ESE does once the backup ends). Refused under circular logging (-526) and for a
  database without a normal backup (-560).
- differential: as incremental without truncation and header update.

Truncation: generations below the lowest of (each mounted database's newest backed-up
generation + 1, the frozen checkpoint's generation) are deleted — the least recently
backed-up database decides, a database never backed up keeps everything, and nothing is
deleted when any database of the group is dismounted (its header cannot be read).

Invariants:
- One backup per storage group at a time (-505).
- A backup that ends badly, is abandoned, or whose storage group dismounts a database or
  closes, leaves nothing half-done: holds released, checkpoint unfrozen, headers untouched
  except Current Full Backup, an error event (214); later reads fail with -801.
- Calls out of order are -521 (JET_errInvalidBackupSequence) and change nothing.
"""

from __future__ import annotations

import enum
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailkeep.engine import codec, errors
from mailkeep.engine.database import STM_HEADER, Database, sqlite_error
from mailkeep.engine.errors import EseError
from mailkeep.engine.header import BackupInfo
from mailkeep.engine.logformat import gen_file_name, lsn, lsn_gen
from mailkeep.engine.logreader import list_generations, scan_generation

if TYPE_CHECKING:
    from mailkeep.engine.storagegroup import StorageGroup

SOURCE = "ESE"
CHUNK = 1 << 20


class BackupKind(enum.Enum):
    NORMAL = "normal"
    COPY = "copy"
    INCREMENTAL = "incremental"
    DIFFERENTIAL = "differential"

    @property
    def full(self) -> bool:
        """Normal and copy stream the database files; incremental and differential only logs."""
        return self in (BackupKind.NORMAL, BackupKind.COPY)

    @property
    def truncates(self) -> bool:
        return self in (BackupKind.NORMAL, BackupKind.INCREMENTAL)


@dataclass(frozen=True)
class BackupFile:
    """One file of the backup. ``role`` is ``edb``, ``stm``, or ``log``; ``database`` is the
    database's ``.edb`` path for its files."""

    role: str
    path: str
    size: int
    database: str = ""
    generation: int = 0

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


@dataclass
class _Held:
    db: Database
    edb_size: int
    stm_size: int
    streams: list[tuple[int, int, bytes, int]] = field(default_factory=list)  # offset, length, sha, id
    verified_edb: bool = False


class OnlineBackup:
    def __init__(self, sg: StorageGroup, kind: BackupKind, databases: Sequence[Database],
                 group_databases: Sequence[str], clock: Callable[[], float]) -> None:
        self.sg = sg
        self.kind = kind
        self.databases = list(databases)
        self.group_databases = [os.path.abspath(p) for p in group_databases]
        self.clock = clock
        self.started = clock()
        self.low_gen = 0
        self.high_gen = 0  # the generation closed by the forced roll-over
        self.truncated: list[int] = []
        self.state = "begun"  # begun -> logs -> truncated -> ended | aborted
        self.failure: EseError | None = None
        self._held: dict[str, _Held] = {}
        self._open: dict[str, int] = {}  # path -> readers open on it
        # One lock for the backup and its storage group: dismount, close and the depth limit
        # end a backup while holding the write lock, so a lock of the backup's own taken in
        # the other order would deadlock. Slow work (verifying an image, reading files) runs
        # outside it.
        self._lock = sg._write_lock

    # -- begin ---------------------------------------------------------------------------------
    def _begin(self) -> None:
        sg = self.sg
        cfg = sg.config
        if not self.kind.full:
            if cfg.circular_logging:
                raise EseError(errors.InvalidBackup, f"{cfg.name} uses circular logging, so its logs are deleted as "
                               f"the checkpoint passes them: a{'n' if self.kind == BackupKind.INCREMENTAL else ''} "
                               f"{self.kind.value} backup is impossible. Run a normal backup, or turn circular "
                               "logging off first.")
            missing = [db.edb_path for db in self.databases if db.header.backups.get("previous_full") is None]
            if missing:
                raise EseError(errors.MissingFullBackup, f"{', '.join(missing)} never had a normal backup: an "
                               f"{self.kind.value} backup holds only logs, which are useless without one. Run a "
                               "normal backup first.")
        sg.freeze_checkpoint()
        try:
            with sg._write_lock:
                chk_gen = lsn_gen(sg.checkpoint_lsn)
                now = self.clock()
                if self.kind.full:
                    self.low_gen = chk_gen
                    for db in self.databases:
                        h = db.header.copy()
                        h.backups["current_full"] = BackupInfo(chk_gen, 0, sg.checkpoint_lsn, now)
                        db.write_header(h)
                        db.header = h
                        for _ in range(20):  # fold the WAL so the image carries the header; an older image is safe too
                            if db.checkpoint():
                                break
                            time.sleep(0.01)
                        self._hold(db)
                else:
                    self.high_gen = sg._log_writer().roll()
                    self._log_range()
            sg.events.info(SOURCE, 210 if self.kind.full else 211,
                           f"{cfg.name} ({cfg.prefix}): {self.kind.value} backup started"
                           + (f" of {', '.join(db.edb_path for db in self.databases)}" if self.kind.full else "")
                           + ".", kind=self.kind.value)
        except BaseException:
            self._release_all()
            sg.thaw_checkpoint()
            raise

    def _hold(self, db: Database) -> None:
        db.backup_holds += 1
        edb_size = os.path.getsize(db.edb_path)
        self._held[db.edb_path] = _Held(db, edb_size, db.stm_end)

    def _release_all(self) -> None:
        for h in self._held.values():
            h.db.backup_holds = max(0, h.db.backup_holds - 1)
        self._held.clear()

    # -- database files ------------------------------------------------------------------------
    def database_files(self) -> list[BackupFile]:
        """The ``.edb`` and ``.stm`` of each selected database (normal and copy only)."""
        self._check("begun", "database_files")
        if not self.kind.full:
            return []
        out = []
        for h in self._held.values():
            out.append(BackupFile("edb", h.db.edb_path, h.edb_size, h.db.edb_path))
            out.append(BackupFile("stm", h.db.stm_path, h.stm_size, h.db.edb_path))
        return out

    def open(self, f: BackupFile) -> BackupReader:
        """A reader of one file, verifying as it goes. Database files before the logs."""
        if f.role in ("edb", "stm"):
            with self._lock:
                self._check("begun", f"open {f.name}")
                held = self._held.get(f.database)
                if held is None:
                    raise EseError(errors.InvalidBackupSequence, f"{f.path} is not part of this backup")
            if f.role == "edb":
                self._verify_image(held)
                return BackupReader(self, f, None)
            if not held.verified_edb:
                self._load_streams(held)
            return BackupReader(self, f, _StreamVerifier(held.streams, f.path))
        with self._lock:
            self._check("logs", f"open {f.name}")
        return _log_reader(self, f)

    def _image(self, held: _Held) -> sqlite3.Connection:
        """The ``.edb`` main file as it is on disk (no WAL): exactly the bytes being copied."""
        return sqlite3.connect(f"file:{held.db.edb_path}?immutable=1", uri=True, check_same_thread=False)

    def _verify_image(self, held: _Held) -> None:
        """Every record's checksum and SQLite's own structure check, on the image itself."""
        db = held.db
        conn = self._image(held)
        try:
            try:
                bad = [r[0] for r in conn.execute("PRAGMA quick_check(5)")]
            except sqlite3.DatabaseError as e:
                raise sqlite_error(e, db.edb_path) from e
            if bad != ["ok"]:
                self._damaged(db.edb_path, f"SQLite structure check: {'; '.join(bad)}")
            for (name,) in conn.execute("SELECT name FROM _tables").fetchall():
                try:
                    for _row in db.scan(conn, name):  # every row's checksum, read from the image
                        pass
                except EseError as e:
                    self._damaged(db.edb_path, f"table {name}: {e.detail}")
            held.streams = _stream_list(conn)
            held.verified_edb = True
        finally:
            conn.close()

    def _load_streams(self, held: _Held) -> None:
        conn = self._image(held)
        try:
            held.streams = _stream_list(conn)
        finally:
            conn.close()

    def _damaged(self, path: str, where: str) -> None:
        e = EseError(errors.ReadVerifyFailure, f"{path} is damaged ({where}); the backup was stopped. Repair or "
                     "restore the database, then back it up again.", path=path)
        self.sg.events.error(SOURCE, 474, f"{self.sg.config.name}: backup read of {path} failed verification: "
                             f"{where}. Error {errors.ReadVerifyFailure} (JET_errReadVerifyFailure).",
                             error=errors.ReadVerifyFailure, path=path)
        self._fail(e)
        raise e

    # -- logs ----------------------------------------------------------------------------------
    def log_files(self) -> list[BackupFile]:
        """The closed generations the backup needs. For normal and copy this forces the
        roll-over (after the database files); never ``E00.log``."""
        with self._lock:
            if self.state == "begun" and self.kind.full:
                if self._open:
                    raise EseError(errors.InvalidBackupSequence, "close the database files before asking for the "
                                   f"logs (still open: {', '.join(sorted(self._open))})")
                self.high_gen = self.sg._log_writer().roll()
                self._release_all()  # the images are copied: folding the WAL may resume
                self.state = "logs"
            elif self.state == "begun":
                self.state = "logs"
            else:
                self._check("logs", "log_files")
            out = self._log_range()
        self.sg.events.info(SOURCE, 223, f"{self.sg.config.name}: the backup holds log generations {self.low_gen} to "
                            f"{self.high_gen}.", low=self.low_gen, high=self.high_gen)
        return out

    def _log_range(self) -> list[BackupFile]:
        cfg = self.sg.config
        gens = list_generations(cfg.log_path, cfg.prefix)
        if not self.kind.full:
            below = [g for g in gens if g <= self.high_gen]
            self.low_gen = min(below) if below else self.high_gen
            last = min((_last_backed_up(db) for db in self.databases), default=0)
            if last and self.low_gen > last + 1:
                raise EseError(errors.MissingFileToBackup, f"{cfg.name}: generations {last + 1} to "
                               f"{self.low_gen - 1} (after the last backup) are no longer on disk, so an "
                               f"{self.kind.value} backup would leave a gap. Run a normal backup.")
        out = []
        for g in range(self.low_gen, self.high_gen + 1):
            path = gens.get(g)
            if path is None:
                raise EseError(errors.MissingFileToBackup, f"{cfg.name}: log generation {g} "
                               f"({gen_file_name(cfg.prefix, g)}) is missing from {cfg.log_path}; the backup "
                               "cannot be complete. Run a normal backup once the cause is fixed.",
                               path=os.path.join(cfg.log_path, gen_file_name(cfg.prefix, g)))
            out.append(BackupFile("log", path, os.path.getsize(path), generation=g))
        return out

    def patch(self, db: Database) -> bytes:
        """What ``Patch Current Full Backup`` shows after a restore: the logs the database image
        needs (from the frozen checkpoint to the generation the roll-over closed)."""
        self._check(("logs", "truncated"), "patch")
        return codec.encode({
            "kind": self.kind.value, "database_signature": db.header.signature,
            "directory_guid": db.header.directory_guid, "log_signature": self.sg.signature,
            "prefix": self.sg.config.prefix, "low_gen": self.low_gen, "high_gen": self.high_gen,
            "mark": lsn(self.low_gen, 0), "time": self.started,
        })

    # -- truncate and end ----------------------------------------------------------------------
    def truncate(self) -> list[int]:
        """Delete the generations no database of the group still needs (normal and
        incremental only). Returns the generations deleted."""
        with self._lock:
            self._check("logs", "truncate")
            if not self.kind.truncates:
                raise EseError(errors.InvalidBackupSequence, f"a {self.kind.value} backup does not truncate logs")
            self.state = "truncated"
            sg = self.sg
            cfg = sg.config
            with sg._write_lock:
                mounted = {db.edb_path: db for db in sg.databases}
                down = [p for p in self.group_databases if p not in mounted]
                if down:
                    sg.events.info(SOURCE, 225, f"{cfg.name}: no log files were truncated because "
                                   f"{', '.join(down)} {'is' if len(down) == 1 else 'are'} dismounted (its header "
                                   "cannot be read to know which logs it needs).", dismounted=down)
                    return []
                selected = {db.edb_path for db in self.databases}
                needs = []
                for path, db in mounted.items():
                    needs.append(self.high_gen + 1 if path in selected else _last_backed_up(db) + 1)
                limit = min([*needs, lsn_gen(sg.checkpoint_lsn)])
                gens = list_generations(cfg.log_path, cfg.prefix)
                doomed = sorted(g for g in gens if g < limit)
                if not doomed:
                    sg.events.info(SOURCE, 225, f"{cfg.name}: no log files could be truncated (every generation "
                                   "on disk is still needed by a database of the storage group).")
                    return []
                sg.events.info(SOURCE, 224, f"{cfg.name}: deleting log files {gen_file_name(cfg.prefix, doomed[0])} "
                               f"to {gen_file_name(cfg.prefix, doomed[-1])}.", low=doomed[0], high=doomed[-1])
                for g in doomed:
                    sg.io.unlink(gens[g])
                sg.io.fsync_dir(cfg.log_path)
            self.truncated = doomed
            return doomed

    def end(self, ok: bool = True, *, advance: bool = True) -> None:
        """Finish: on success the header sections (normal: Previous Full Backup; incremental:
        Previous Incremental Backup); always unfreeze and release. ``advance=False`` (a
        database is being detached) unfreezes without moving the checkpoint now: the detach
        must be recorded first, or circular logging could delete what that database needs."""
        with self._lock:
            if self.state in ("ended", "aborted"):
                return
            if ok and self.state not in ("logs", "truncated"):
                raise EseError(errors.InvalidBackupSequence, "the backup cannot end successfully before its logs "
                               "were read; end it with ok=False to abandon it")
            if ok and self.kind.truncates and self.state != "truncated":
                raise EseError(errors.InvalidBackupSequence, f"a {self.kind.value} backup truncates the logs before "
                               "it ends successfully; call truncate()")
            sg = self.sg
            stamped = False
            try:
                if ok:
                    self._stamp_headers()
                    stamped = True
                else:
                    self._clear_current()
            except BaseException as e:
                if self.failure is None:
                    self.failure = EseError(errors.BackupAbortByServer, f"writing the backup's header sections "
                                            f"failed ({e})")
                raise
            finally:
                self._release_all()
                self.state = "ended" if stamped else "aborted"
                sg._backup_ended(self)
                sg.thaw_checkpoint(advance=advance)
                if stamped:
                    sg.events.info(SOURCE, 213, f"{sg.config.name} ({sg.config.prefix}): {self.kind.value} backup "
                                   f"completed successfully (log generations {self.low_gen} to {self.high_gen}).",
                                   kind=self.kind.value, low=self.low_gen, high=self.high_gen)
                else:
                    why = f": {self.failure}" if self.failure else ""
                    sg.events.error(SOURCE, 214, f"{sg.config.name} ({sg.config.prefix}): the {self.kind.value} "
                                    f"backup was stopped before it completed{why}. The checkpoint is no longer "
                                    "frozen; run the backup again.", kind=self.kind.value)

    def abort(self, reason: EseError, *, advance: bool = True) -> None:
        """Ended from the storage group's side (dismount, close, depth limit): -801 afterwards."""
        with self._lock:
            if self.failure is None:
                self.failure = reason
            self.end(ok=False, advance=advance)

    def _fail(self, e: EseError) -> None:
        self.abort(e)

    def _stamp_headers(self) -> None:
        section = {BackupKind.NORMAL: "previous_full", BackupKind.INCREMENTAL: "previous_incremental"}.get(self.kind)
        now = self.clock()
        with self._lock:
            for db in self.databases:
                if db not in self.sg.databases:
                    continue
                h = db.header.copy()
                h.backups["current_full"] = None
                if section is not None:
                    h.backups[section] = BackupInfo(self.low_gen, self.high_gen, lsn(self.low_gen, 0), now)
                db.write_header(h)
                db.header = h

    def _clear_current(self) -> None:
        if not self.kind.full:
            return
        try:
            with self._lock:
                for db in self.databases:
                    if db in self.sg.databases and db.header.backups.get("current_full") is not None:
                        h = db.header.copy()
                        h.backups["current_full"] = None
                        db.write_header(h)
                        db.header = h
        except (EseError, OSError):
            pass  # the database is going away (dismount, close): the next backup overwrites it

    def _check(self, allowed: str | tuple[str, ...], what: str) -> None:
        if self.state == "aborted":
            raise EseError(errors.BackupAbortByServer, f"the backup of {self.sg.config.name} was stopped "
                           f"({self.failure}); start a new one" if self.failure else
                           f"the backup of {self.sg.config.name} was abandoned; start a new one")
        if self.state not in ((allowed,) if isinstance(allowed, str) else allowed):
            raise EseError(errors.InvalidBackupSequence, f"{what}: not allowed now (the backup is at "
                           f"'{self.state}'; the order is: database files, log files, truncate, end)")


class BackupReader:
    """Chunks of one file; the last read checks what can be checked at the end."""

    def __init__(self, backup: OnlineBackup, f: BackupFile, verifier: _StreamVerifier | None,
                 data: bytes | None = None) -> None:
        self.backup = backup
        self.file = f
        self.verifier = verifier
        self.remaining = f.size
        self.offset = 0
        self._data = data
        self._fd = -1 if data is not None else os.open(f.path, os.O_RDONLY)
        backup._open[f.path] = backup._open.get(f.path, 0) + 1
        self._closed = False

    def read(self, size: int = CHUNK) -> bytes:
        b = self.backup
        if b.state == "aborted":
            self.close()
            b._check("begun", "read")  # raises -801
        if self.remaining <= 0:
            return b""
        n = min(size, self.remaining)
        if self._data is not None:
            chunk = self._data[self.offset:self.offset + n]
        else:
            chunk = os.pread(self._fd, n, self.offset)
            if len(chunk) < n:
                b._damaged(self.file.path, f"the file ended at offset {self.offset + len(chunk)}, "
                           f"{self.file.size} bytes expected")
        if self.verifier is not None:
            problem = self.verifier.feed(self.offset, chunk)
            if not problem and self.remaining - len(chunk) <= 0:
                problem = self.verifier.finish()
            if problem:
                self.close()
                b._damaged(self.file.path, problem)
        self.offset += len(chunk)
        self.remaining -= len(chunk)
        return chunk

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if not self._closed:
            self._closed = True
            left = self.backup._open.get(self.file.path, 0) - 1
            if left > 0:
                self.backup._open[self.file.path] = left
            else:
                self.backup._open.pop(self.file.path, None)

    def __enter__(self) -> BackupReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log_reader(backup: OnlineBackup, f: BackupFile) -> BackupReader:
    """A closed generation is checked whole before a byte leaves (they are a few MiB)."""
    try:
        scan_generation(f.path, f.generation, newest=False)
    except EseError as e:
        if e.number in (errors.LogFileCorrupt, errors.LogGenerationMismatch):
            err = EseError(errors.LogReadVerifyFailure, f"log file {f.path} is damaged ({e.detail}); the backup was "
                           "stopped.", path=f.path)
            backup.sg.events.error(SOURCE, 440, f"{backup.sg.config.name}: log file {f.path} failed verification "
                                   f"during backup: {e.detail}", error=errors.LogReadVerifyFailure, path=f.path)
            backup._fail(err)
            raise err from e
        raise
    with open(f.path, "rb") as fh:
        data = fh.read()
    return BackupReader(backup, BackupFile("log", f.path, len(data), generation=f.generation), None, data)


class _StreamVerifier:
    """SHA-256 of every stream the image references, computed as the ``.stm`` bytes pass by."""

    def __init__(self, streams: list[tuple[int, int, bytes, int]], path: str) -> None:
        self.streams = sorted(streams)
        self.path = path
        self.i = 0
        self.h: Any = None

    def feed(self, offset: int, chunk: bytes) -> str | None:
        end = offset + len(chunk)
        pos = offset
        while self.i < len(self.streams):
            s_off, s_len, sha, sid = self.streams[self.i]
            if s_off < STM_HEADER:
                return f"stream {sid} points into the file header (offset {s_off})"
            if s_off >= end:
                return None
            if self.h is None:
                self.h = hashlib.sha256()
            lo = max(pos, s_off)
            hi = min(end, s_off + s_len)
            if hi > lo:
                self.h.update(chunk[lo - offset:hi - offset])
            if s_off + s_len > end:
                return None
            if self.h.digest() != sha:
                return f"stream {sid} at offset {s_off} ({s_len} bytes) fails its SHA-256"
            self.h = None
            pos = max(pos, s_off + s_len)
            self.i += 1
        return None

    def finish(self) -> str | None:
        """At the end of the copy: every stream the image references was seen whole."""
        if self.i < len(self.streams):
            s_off, s_len, _sha, sid = self.streams[self.i]
            return (f"stream {sid} at offset {s_off} ({s_len} bytes) lies beyond the end of the streaming file "
                    "that was copied")
        return None


def _stream_list(conn: sqlite3.Connection) -> list[tuple[int, int, bytes, int]]:
    return [(int(r[1]), int(r[2]), bytes(r[3]), int(r[0]))
            for r in conn.execute("SELECT id, offset, length, sha256 FROM _streams WHERE length > 0")]


def _last_backed_up(db: Database) -> int:
    """The newest generation this database's backups (normal or incremental) hold; 0 if none."""
    highs = [b.high_gen for k in ("previous_full", "previous_incremental") if (b := db.header.backups.get(k))]
    return max(highs, default=0)


__all__ = ["BackupFile", "BackupKind", "BackupReader", "OnlineBackup"]
