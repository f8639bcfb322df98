"""Writing a log stream: append, group commit, roll-over, reserve logs.

Invariants:
- A record is written to the file (pwrite) as soon as it is appended, so a killed process
  loses nothing that was appended; it is *durable* only once a flush covering it has been
  fsync'd. :meth:`LogWriter.wait_durable` returns only then, and never after a failed fsync
  (the writer is then failed for good: -510, as PostgreSQL does since "fsyncgate").
- Concurrent committers share one fsync: the first waiter seals the current flush (a FILL
  record to the sector boundary) and fsyncs; everyone whose record is before the seal wakes.
- The next generation's file is created ahead of need (``prepare_next``, outside the commit
  path); roll-over then only writes its header. Roll-over closes a full generation only
  after fsyncing it, renames it to its numbered name
  and then renames the prepared ``E00tmp.log`` to ``E00.log`` (directory fsync after each).
  A crash between the two renames leaves ``E00tmp.log`` holding the next generation, which
  opening the storage group completes.
- When the next generation cannot be created (disk full), a reserve log (res1.log, then
  res2.log, pre-allocated at full size) becomes the next generation and the writer reports
  ``disk_full``: the storage group then shuts its databases down cleanly into that space.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Callable

from mailkeep.engine import errors
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.logformat import (
    HEADER_SIZE,
    RECORD,
    SECTOR,
    AttachedDb,
    LogHeader,
    encode_record,
    fill_record,
    gen_file_name,
    lsn,
)

RESERVE_NAMES = ("res1.log", "res2.log")
MAX_GENERATION = 0xFFFFFFF0


def tmp_name(prefix: str) -> str:
    return f"{prefix}tmp.log"


class LogWriter:
    def __init__(
        self,
        io: FileIO,
        log_dir: str,
        header: LogHeader,
        *,
        offset: int,
        flush: int,
        attached: Callable[[], list[AttachedDb]],
        sealed: bool = True,
    ) -> None:
        self.io = io
        self.log_dir = log_dir
        self.prefix = header.prefix
        self.file_size = header.file_size
        self.header = header
        self._attached = attached
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._fd = io.open(self.path_current)
        self._offset = offset
        self._sealed = offset  # end of the last sealed flush in the current generation
        self._flush = flush + 1
        if not sealed:
            # The log ends in a flush that was never sealed, so never fsync'd (a crash
            # interrupted it): continue that flush rather than start a new one after it, or
            # a sealed next flush would "prove" it durable (logreader) and one of its sectors
            # lost in a power loss during our first fsync would read as -501.
            self._flush = flush
            self._sealed = -1
        self._durable = lsn(header.generation, offset)
        self._flushing = False
        self.failed: EseError | None = None
        self.disk_full = False
        self._prep_lock = threading.Lock()
        self._prepared = False  # E00tmp.log is ready: full size, zeros, fsync'd
        self._prep_failed = 0  # generation during which preparing failed (no retry before a roll)
        self.on_roll: Callable[[int], None] | None = None
        self.max_payload = min(1 << 20, (self.file_size - HEADER_SIZE) // 2 - RECORD.size - SECTOR)

    # -- paths and positions ---------------------------------------------------------------
    @property
    def path_current(self) -> str:
        return os.path.join(self.log_dir, f"{self.prefix}.log")

    @property
    def generation(self) -> int:
        return self.header.generation

    def appended(self) -> int:
        with self._lock:
            return lsn(self.header.generation, self._offset)

    def durable(self) -> int:
        with self._lock:
            return self._durable

    # -- appending -------------------------------------------------------------------------
    def append(self, rtype: int, dbid: int, payload: bytes) -> tuple[int, int]:
        """Write one record; returns its (start, end) log positions. Not yet durable."""
        return self.append_many([(rtype, dbid, payload)])[0]

    def append_many(self, items: list[tuple[int, int, bytes]]) -> list[tuple[int, int]]:
        """Write records back to back (one pwrite when they fit in the current generation,
        which is the common case of a transaction's records and its commit record)."""
        for _t, _d, payload in items:
            if len(payload) > self.max_payload:
                raise ValueError(f"log record of {len(payload)} bytes exceeds {self.max_payload}")
        with self._lock:
            self._check_usable()
            total = sum(RECORD.size + len(p) for _t, _d, p in items) + RECORD.size + SECTOR
            if self._offset + total > self.file_size and HEADER_SIZE + total <= self.file_size:
                self._roll_locked()
            out: list[tuple[int, int]] = []
            if self._offset + total <= self.file_size:
                gen = self.header.generation
                data = b"".join(encode_record(gen, self._flush, t, d, p) for t, d, p in items)
                try:
                    self.io.pwrite(self._fd, data, self._offset)
                except OSError as e:
                    self._fail(e, "writing")
                for _t, _d, p in items:
                    size = RECORD.size + len(p)
                    out.append((lsn(gen, self._offset), lsn(gen, self._offset + size)))
                    self._offset += size
                return out
            for t, d, p in items:  # larger than a generation: record by record, rolling between
                if self._offset + RECORD.size + len(p) + RECORD.size + SECTOR > self.file_size:
                    self._roll_locked()
                gen = self.header.generation
                data = encode_record(gen, self._flush, t, d, p)
                try:
                    self.io.pwrite(self._fd, data, self._offset)
                except OSError as e:
                    self._fail(e, "writing")
                out.append((lsn(gen, self._offset), lsn(gen, self._offset + len(data))))
                self._offset += len(data)
            return out

    def _check_usable(self) -> None:
        if self.failed is not None:
            raise self.failed

    def stop(self, failure: EseError) -> None:
        """Accept no further record: a write or fsync the storage group relies on failed."""
        with self._lock:
            if self.failed is None:
                self.failed = failure
            self._cond.notify_all()

    def _fail(self, e: OSError, doing: str) -> None:
        self.failed = EseError(
            errors.LogWriteFail,
            f"{doing} log file {self.path_current} failed ({e.strerror}). No further commits "
            "are accepted; restart the storage group to recover from the log.",
            path=self.path_current,
        )
        self._cond.notify_all()
        raise self.failed from e

    # -- group commit ----------------------------------------------------------------------
    def _seal_locked(self) -> int:
        """Close the current flush at a sector boundary; returns the LSN it ends at."""
        if self._offset != self._sealed:
            data = fill_record(self.header.generation, self._flush, self._offset)
            try:
                self.io.pwrite(self._fd, data, self._offset)
            except OSError as e:
                self._fail(e, "writing")
            self._offset += len(data)
            self._sealed = self._offset
            self._flush += 1
        return lsn(self.header.generation, self._offset)

    def wait_durable(self, target: int) -> None:
        """Return once every record before ``target`` is on disk (shares fsyncs)."""
        with self._cond:
            while self._durable < target:
                self._check_usable()
                if self._flushing:
                    self._cond.wait()
                    continue
                self._flushing = True
                end = self._seal_locked()
                fd = self._fd
                self._lock.release()
                err: OSError | None = None
                try:
                    self.io.fsync(fd)
                except OSError as e:
                    err = e
                finally:
                    self._lock.acquire()
                    self._flushing = False
                if err is not None:
                    self._fail(err, "flushing")
                self._durable = max(self._durable, end)
                self._cond.notify_all()

    def flush(self) -> int:
        end = self.appended()
        self.wait_durable(end)
        return end

    # -- roll-over -------------------------------------------------------------------------
    def roll(self) -> int:
        """Force a roll-over (online backup); returns the generation just closed."""
        with self._lock:
            self._check_usable()
            closed = self.header.generation
            self._roll_locked()
            return closed

    def _roll_locked(self) -> None:
        while self._flushing:
            self._cond.wait()
        self._check_usable()
        old = self.header
        if old.generation >= MAX_GENERATION:
            raise EseError(
                errors.LogSequenceEnd,
                f"log stream in {self.log_dir} reached its last generation. Dismount the "
                "databases cleanly, move the logs and checkpoint aside, and take a full backup.",
            )
        end = self._seal_locked()
        try:
            self.io.fsync(self._fd)
        except OSError as e:
            self._fail(e, "flushing")
        self._durable = max(self._durable, end)
        self._cond.notify_all()
        new = LogHeader(
            generation=old.generation + 1,
            signature=old.signature,
            created=max(time.time(), old.created + 1e-6),
            prev_created=old.created,
            file_size=old.file_size,
            prefix=old.prefix,
            circular=old.circular,
            attached=self._attached(),
            log_path=old.log_path,
            system_path=old.system_path,
        )
        tmp = os.path.join(self.log_dir, tmp_name(self.prefix))
        with self._prep_lock:
            try:
                if not self._prepared:
                    self._zero_file(tmp)
                self._prepared = False
                self._write_header(tmp, new)
            except OSError as e:
                if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                    self._fail(e, "creating the next generation after")
                tmp = self._use_reserve(new)
        cur = self.path_current
        self.io.close(self._fd)
        self._fd = -1  # closed: a failure below must not let close() close a reused number
        try:
            self.io.rename(cur, os.path.join(self.log_dir, gen_file_name(self.prefix, old.generation)))
            self.io.fsync_dir(self.log_dir)
            self.io.rename(tmp, cur)
            self.io.fsync_dir(self.log_dir)
            self._fd = self.io.open(cur)
        except OSError as e:
            self._fail(e, "renaming")
        self.header = new
        self._offset = self._sealed = HEADER_SIZE
        self._flush = 1  # flushes are numbered from 1 in each generation (logformat)
        self._durable = lsn(new.generation, HEADER_SIZE)
        if self.on_roll is not None:
            self.on_roll(new.generation)

    def prepare_next(self) -> None:
        """Create the next generation's file (``E00tmp.log``, full size, zeros, fsync'd)
        ahead of need, so the roll-over inside a commit only writes its header. Called
        outside the commit path; a failure (a full disk) is left for the roll-over, which
        tries again and falls back to the reserve logs."""
        if self._prepared or self.failed is not None or self._prep_failed == self.header.generation:
            return
        with self._prep_lock:
            if self._prepared:
                return
            try:
                self._zero_file(os.path.join(self.log_dir, tmp_name(self.prefix)))
                self._prepared = True
            except OSError:
                self._prep_failed = self.header.generation  # try again after the next roll-over

    @property
    def next_prepared(self) -> bool:
        return self._prepared

    def _zero_file(self, path: str) -> None:
        """A full-size, zero-filled file, fsync'd; removed again if that fails."""
        fd = self.io.open(path, create=True)
        try:
            os.ftruncate(fd, 0)
            self.io.fill_zeros(fd, 0, self.file_size)
            self.io.fsync(fd)
        except OSError:
            self.io.close(fd)
            try:
                self.io.unlink(path)
            except OSError:
                pass
            raise
        self.io.close(fd)

    def _write_header(self, path: str, header: LogHeader) -> None:
        fd = self.io.open(path)
        try:
            self.io.pwrite(fd, header.encode(), 0)
            self.io.fsync(fd)
        finally:
            self.io.close(fd)

    def _use_reserve(self, header: LogHeader) -> str:
        header.reserve = True
        for name in RESERVE_NAMES:
            path = os.path.join(self.log_dir, name)
            if os.path.exists(path) and os.path.getsize(path) >= header.file_size:
                fd = self.io.open(path)
                try:
                    self.io.pwrite(fd, header.encode(), 0)
                    self.io.fsync(fd)
                except OSError as e:
                    self.io.close(fd)
                    self._fail(e, "writing reserve")
                self.io.close(fd)
                self.disk_full = True
                return path
        self.failed = EseError(
            errors.LogDiskFull,
            f"the log disk of {self.log_dir} is full and both reserve logs are used. Free "
            "space on that disk, then mount the databases again (soft recovery replays the "
            "log).",
            path=self.log_dir,
        )
        self._cond.notify_all()
        raise self.failed

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                self.io.close(self._fd)
                self._fd = -1


def create_reserve_logs(io: FileIO, log_dir: str, size: int) -> None:
    """(Re)create res1.log and res2.log at full size; missing ones only."""
    for name in RESERVE_NAMES:
        path = os.path.join(log_dir, name)
        if os.path.exists(path) and os.path.getsize(path) >= size:
            continue
        fd = io.open(path, create=True)
        try:
            io.fill_zeros(fd, 0, size)
            io.fsync(fd)
        finally:
            io.close(fd)
    io.fsync_dir(log_dir)


def create_first_generation(io: FileIO, log_dir: str, header: LogHeader) -> None:
    path = os.path.join(log_dir, f"{header.prefix}.log")
    fd = io.open(path, create=True, exclusive=True)
    try:
        io.fill_zeros(fd, 0, header.file_size)
        io.pwrite(fd, header.encode(), 0)
        io.fsync(fd)
    finally:
        io.close(fd)
    io.fsync_dir(log_dir)
