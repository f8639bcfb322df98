"""File sets: files and folders of the machine running the backup, with Windows Backup's types.

Windows Backup marks a file as backed up by clearing its archive attribute. Linux has none,
so Mailkeep keeps the equivalent per machine: a small SQLite table of each file's identity
(size, modification and change times, inode) when a normal or incremental backup last took
it. A file whose identity differs, or that is not in the table, "has its archive attribute
set". The types then follow the guide's Backup Type tab exactly:

- normal: every selected file; marks them backed up.
- copy: every selected file; marks nothing.
- incremental: files created or changed since the last normal or incremental; marks them.
- differential: the same files; marks nothing.
- daily: files modified today; marks nothing.

Marks are written only after the set's catalog is on the media, so a backup that fails never
clears an "archive attribute".

Exclusions ("Data to Exclude from Windows Backup Sets"): database files and transaction logs
are never taken as files — they are changing and are backed up through the Information Store
option — so every storage group's log and system folders and every database's ``.edb`` /
``.stm`` of the data folder are excluded by default, as are the store's working files. More
exclusions with ``--exclude PATTERN`` (fnmatch on the full path).
"""

from __future__ import annotations

import fnmatch
import os
import socket
import sqlite3
import stat
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from mailkeep.backup.job import Item
from mailkeep.backup.report import state_dir

FILE_KINDS = ("normal", "copy", "incremental", "differential", "daily")
CHUNK = 1 << 20


@dataclass
class FilePlan:
    roots: list[str]
    kind: str
    excluded: list[str] = field(default_factory=list)  # absolute paths (folders or files)
    patterns: list[str] = field(default_factory=list)


def default_exclusions(data: str | None) -> list[str]:
    """The data folder's database files, log and system folders, and working files."""
    if not data or not os.path.exists(os.path.join(data, "server.json")):
        return []
    out = [os.path.join(data, n) for n in ("directory", "index", "serve.token", "serve.json")]
    try:
        from mailkeep.directory.setup import open_directory  # noqa: F401 - only to check the layout exists
        from mailkeep.store.server import Server
        from mailkeep.store.store import Store

        if os.path.exists(os.path.join(data, "serve.json")):
            raise OSError("server running")  # its locks: read the layout from server.json instead
        with Store.open(data, lock_wait=0.0) as s:
            srv: Server = s.server
            for g in srv.storage_groups():
                out += [g.log_path, g.system_path]
            for d in srv.databases():
                out += [d.edb, d.stm, d.edb + "-wal", d.edb + "-shm"]
    except Exception:  # noqa: BLE001 - fall back to the default layout
        out.append(os.path.join(data, "mdbdata"))
    return sorted({os.path.abspath(p) for p in out})


class Archive:
    """The archive-attribute equivalent: identities of files at their last normal/incremental."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or os.path.join(state_dir(), "archive.sqlite")
        self.conn = sqlite3.connect(self.path)
        self.conn.execute("CREATE TABLE IF NOT EXISTS archived (path TEXT PRIMARY KEY, ident TEXT NOT NULL, "
                          "at REAL NOT NULL)")

    def changed(self, path: str, ident: str) -> bool:
        row = self.conn.execute("SELECT ident FROM archived WHERE path = ?", (path,)).fetchone()
        return row is None or row[0] != ident

    def mark(self, marks: list[tuple[str, str]]) -> None:
        now = time.time()
        with self.conn:
            self.conn.executemany("INSERT OR REPLACE INTO archived (path, ident, at) VALUES (?, ?, ?)",
                                  [(p, i, now) for p, i in marks])

    def close(self) -> None:
        self.conn.close()


def identity(st: os.stat_result) -> str:
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}:{st.st_ino}"


def logical_name(path: str) -> str:
    """``HOST/File System/etc/hosts`` for ``/etc/hosts``."""
    return f"{socket.gethostname().split('.')[0]}/File System/{os.path.abspath(path).lstrip('/')}"


class FileSource:
    """Yields the selected files as backup items; :meth:`commit` marks them once the set is
    safely on the media (normal and incremental only)."""

    def __init__(self, plan: FilePlan, archive: Archive | None = None) -> None:
        if plan.kind not in FILE_KINDS:
            raise ValueError(f"file sets take the types {', '.join(FILE_KINDS)}, not {plan.kind!r}")
        self.plan = plan
        self.archive = archive or Archive()
        self.marks: list[tuple[str, str]] = []
        self.skipped: list[str] = []
        self.errors: list[str] = []
        self.today = time.localtime()[:3]

    def _excluded(self, path: str) -> bool:
        for e in self.plan.excluded:
            if path == e or path.startswith(e.rstrip("/") + "/"):
                return True
        return any(fnmatch.fnmatch(path, p) for p in self.plan.patterns)

    def _walk(self) -> Iterator[str]:
        for root in self.plan.roots:
            root = os.path.abspath(root)
            if self._excluded(root):
                self.skipped.append(f"{root} (excluded)")
                continue
            if not os.path.lexists(root):
                self.errors.append(f"{root}: no such file or folder")
                continue
            if os.path.isfile(root) and not os.path.islink(root):
                yield root
                continue
            for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: self.errors.append(str(e))):
                kept = []
                for d in sorted(dirnames):
                    if self._excluded(os.path.join(dirpath, d)):
                        self.skipped.append(f"{os.path.join(dirpath, d)} (excluded)")
                    else:
                        kept.append(d)
                dirnames[:] = kept
                for n in sorted(filenames):
                    p = os.path.join(dirpath, n)
                    if self._excluded(p):
                        self.skipped.append(f"{p} (excluded)")
                        continue
                    yield p

    def source(self) -> Generator[Item | dict[str, Any], None, None]:
        """The files the type selects, as backup items; then a summary (errors, skipped)."""
        kind = self.plan.kind
        for p in self._walk():
            try:
                st = os.lstat(p)
            except OSError as e:
                self.errors.append(f"{p}: {e.strerror}")
                continue
            if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
                self.skipped.append(f"{p} (not a regular file)")
                continue
            ident = identity(st)
            if kind in ("incremental", "differential") and not self.archive.changed(p, ident):
                continue
            if kind == "daily" and time.localtime(st.st_mtime)[:3] != self.today:
                continue
            meta: dict[str, Any] = {"path": p, "mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid,
                                    "gid": st.st_gid, "mtime": st.st_mtime}
            errors_before = len(self.errors)
            yield Item(logical_name(p), "file", st.st_size, self._read(p, st.st_size), meta)
            if len(self.errors) == errors_before:  # written whole and unchanged: it may be marked
                self.marks.append((p, ident))
        yield {"errors": list(self.errors), "files": {"kind": kind, "roots": self.plan.roots,
                                                      "skipped": list(self.skipped)}}

    def _read(self, path: str, size: int) -> Iterator[bytes]:
        """Exactly ``size`` bytes: a file that shrinks while read is padded with zeros and
        reported; one that grows is cut at its size when the backup began (and reported)."""
        left = size
        try:
            with open(path, "rb") as f:
                while left > 0:
                    c = f.read(min(CHUNK, left))
                    if not c:
                        break
                    left -= len(c)
                    yield c
                if left == 0 and f.read(1):
                    self.errors.append(f"{path}: it grew while it was backed up; the copy stops at {size} bytes")
        except OSError as e:
            self.errors.append(f"{path}: {e.strerror}; zeros were written in its place")
        if left > 0:
            self.errors.append(f"{path}: it changed while it was backed up ({left} bytes short, padded)")
            while left > 0:
                n = min(CHUNK, left)
                left -= n
                yield b"\0" * n

    def commit(self) -> None:
        if self.plan.kind in ("normal", "incremental") and self.marks:
            self.archive.mark(self.marks)

    def close(self) -> None:
        self.archive.close()
