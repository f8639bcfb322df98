"""The engine's only door to the file system.

Invariant: every open, write, fsync, rename and unlink of a log, checkpoint or streaming file
goes through a :class:`FileIO`, so tests can fail the Nth write or fsync (as SQLite's test VFS
does) and can simulate a power loss that discards everything not fsync'd. A rename or an
unlink is followed by a directory fsync before the engine relies on it.
"""

from __future__ import annotations

import errno as errno_mod
import os
from dataclasses import dataclass, field

ZERO_CHUNK = 1 << 20


@dataclass
class Fault:
    """Fail operation number ``at`` (1-based) of ``kind`` ('write', 'fsync' or 'any')."""

    kind: str
    at: int
    errno: int = errno_mod.EIO
    persistent: bool = False
    fired: int = 0


class FileIO:
    """Plain POSIX I/O, with optional injected faults."""

    def __init__(self) -> None:
        self.faults: list[Fault] = []
        self.counts: dict[str, int] = {"write": 0, "fsync": 0}
        self._paths: dict[int, str] = {}

    # -- fault injection -------------------------------------------------------------------
    def _check(self, kind: str) -> None:
        self.counts[kind] += 1
        n_any = self.counts["write"] + self.counts["fsync"]
        for f in self.faults:
            n = n_any if f.kind == "any" else self.counts[kind] if f.kind == kind else None
            if n is None:
                continue
            if n == f.at or (f.persistent and n > f.at):
                f.fired += 1
                raise OSError(f.errno, f"{os.strerror(f.errno)} (injected at {kind} #{n})")

    # -- files -----------------------------------------------------------------------------
    def open(self, path: str, *, create: bool = False, exclusive: bool = False) -> int:
        flags = os.O_RDWR | getattr(os, "O_CLOEXEC", 0)
        if create:
            flags |= os.O_CREAT
        if exclusive:
            flags |= os.O_EXCL
        fd = os.open(path, flags, 0o600)
        self._paths[fd] = os.path.abspath(path)
        return fd

    def open_read(self, path: str) -> int:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._paths[fd] = os.path.abspath(path)
        return fd

    def close(self, fd: int) -> None:
        self._paths.pop(fd, None)
        os.close(fd)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        self._check("write")
        view = memoryview(data)
        while view:
            n = os.pwrite(fd, view, offset)
            view = view[n:]
            offset += n

    def pread(self, fd: int, size: int, offset: int) -> bytes:
        return os.pread(fd, size, offset)

    def fsync(self, fd: int) -> None:
        self._check("fsync")
        os.fsync(fd)

    def fsync_path(self, path: str) -> None:
        """fsync a file the engine does not hold open (SQLite's files after a checkpoint)."""
        fd = os.open(path, os.O_RDONLY)
        try:
            self._check("fsync")
            os.fsync(fd)
        finally:
            os.close(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            self._check("fsync")
            os.fsync(fd)
        finally:
            os.close(fd)

    def rename(self, src: str, dst: str) -> None:
        os.rename(src, dst)

    def unlink(self, path: str) -> None:
        os.unlink(path)

    def size(self, fd: int) -> int:
        return os.fstat(fd).st_size

    def truncate(self, fd: int, size: int) -> None:
        self._check("write")
        os.ftruncate(fd, size)

    def fill_zeros(self, fd: int, start: int, end: int) -> None:
        """Write real zeros (not holes) so later overwrites need no allocation: a log file
        that exists at full size can always take its records, even on a full disk."""
        zeros = bytes(min(ZERO_CHUNK, max(end - start, 0)))
        pos = start
        while pos < end:
            n = min(len(zeros), end - pos)
            self.pwrite(fd, zeros[:n], pos)
            pos += n

    def write_file_atomic(self, path: str, data: bytes) -> None:
        """temp file + fsync + rename + directory fsync: the file is either old or new."""
        tmp = path + ".tmp"
        fd = self.open(tmp, create=True)
        try:
            os.ftruncate(fd, 0)
            self.pwrite(fd, data, 0)
            self.fsync(fd)
        finally:
            self.close(fd)
        self.rename(tmp, path)
        self.fsync_dir(os.path.dirname(os.path.abspath(path)))

    def snapshot_sqlite(self, path: str) -> None:
        """Called after a database's SQLite file was checkpointed and fsync'd (a durable
        point). Plain I/O has nothing to do; the crash simulator remembers the image."""


@dataclass
class _Pending:
    offset: int
    old: bytes
    old_size: int


@dataclass
class CrashSimIO(FileIO):
    """FileIO that can simulate a power loss: :meth:`crash` reverts every write not
    followed by an fsync of its file, and puts each SQLite database back to the image it
    had at its last durable point (dropping its -wal and -shm files)."""

    pending: dict[str, list[_Pending]] = field(default_factory=dict)
    shadows: dict[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        FileIO.__init__(self)

    def pwrite(self, fd: int, data: bytes | memoryview, offset: int) -> None:
        path = self._paths.get(fd)
        if path is not None:
            size = os.fstat(fd).st_size
            old = os.pread(fd, len(data), offset)
            self.pending.setdefault(path, []).append(_Pending(offset, old, size))
        super().pwrite(fd, data, offset)

    def fsync(self, fd: int) -> None:
        super().fsync(fd)
        path = self._paths.get(fd)
        if path is not None:
            self.pending.pop(path, None)

    def fsync_path(self, path: str) -> None:
        super().fsync_path(path)
        self.pending.pop(os.path.abspath(path), None)

    def rename(self, src: str, dst: str) -> None:
        super().rename(src, dst)
        a, b = os.path.abspath(src), os.path.abspath(dst)
        if a in self.pending:
            self.pending[b] = self.pending.pop(a)
        for fd, p in list(self._paths.items()):
            if p == a:
                self._paths[fd] = b

    def snapshot_sqlite(self, path: str) -> None:
        with open(path, "rb") as f:
            self.shadows[os.path.abspath(path)] = f.read()

    def crash(self) -> None:
        for path, writes in self.pending.items():
            if not os.path.exists(path):
                continue
            with open(path, "r+b") as f:
                for w in reversed(writes):
                    f.seek(w.offset)
                    f.write(w.old)
                    if f.seek(0, os.SEEK_END) > w.old_size:
                        f.truncate(w.old_size)
        self.pending.clear()
        for path, image in self.shadows.items():
            if os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(image)
            for suffix in ("-wal", "-shm"):
                if os.path.exists(path + suffix):
                    os.unlink(path + suffix)
