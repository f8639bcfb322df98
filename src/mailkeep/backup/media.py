"""Backup media: a POSIX pax archive holding a media header and appended backup sets.

Why pax: any ``tar`` lists and extracts it (``tar tvf media.bkf``), so the data is reachable
without Mailkeep; pax extended headers carry what ustar cannot (long logical paths, our
per-entry fields). docs/media-format.md describes the layout:

    MAILKEEP-MEDIA.json                       the media header (name, GUID, owner, ...)
    set-0001/SET.json                         set header (number, type, source, selection, ...)
    set-0001/<logical path>[.zst]             one member per file (database, log, patch, file)
    set-0001/CATALOG.json                     the set's catalog: every entry with its SHA-256
    set-0002/...

Invariants:
- A set is complete only when its CATALOG.json is on the media; an interrupted backup leaves
  a set without one, which the next append cuts off (earlier sets are never touched).
- Entries are streamed (chunks in, chunks out); a compressed entry is spooled to a temporary
  file beside the media first, because a tar header states the size before the data.
- Every entry's SHA-256 is of the original (uncompressed) bytes and is computed while they
  are written; verify recomputes it from the media.
- Owner-only media are created mode 0600, record their owner, and refuse anyone else but root.
- Member names are checked on the way in and out: no absolute paths, no ``..``, no NUL.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import pwd
import queue
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Any

FORMAT = "mailkeep-media/1"
MEDIA_HEADER = "MAILKEEP-MEDIA.json"
SET_HEADER = "SET.json"
CATALOG = "CATALOG.json"
CHUNK = 1 << 20


class MediaError(Exception):
    """The media cannot be used as asked; the message says why and what to do."""


@dataclass
class MediaHeader:
    name: str
    guid: str
    created: float
    owner: str
    owner_uid: int
    owner_only: bool
    format: str = FORMAT


@dataclass
class Entry:
    """One file of a set. ``name`` is its logical path inside the set (without ``.zst``)."""

    name: str
    role: str  # edb, stm, log, patch, file, config
    size: int
    sha256: str
    stored_size: int = 0
    compression: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def member(self) -> str:
        return self.name + (".zst" if self.compression == "zstd" else "")


@dataclass
class SetInfo:
    number: int
    kind: str  # normal, copy, incremental, differential, daily
    description: str
    source: str  # the server backed up
    selection: list[str]
    user: str
    started: float
    media_name: str
    compressed: bool = False
    completed: float | None = None
    entries: list[Entry] = field(default_factory=list)
    status: str = "complete"  # complete | incomplete (no catalog: the backup did not finish)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(e.size for e in self.entries)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["entries"] = [asdict(e) for e in self.entries]
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> SetInfo:
        """From a catalog (media are hostile until checked: types and names are verified)."""
        try:
            d = dict(d)
            entries = [Entry(**e) for e in d.pop("entries", [])]
            info = cls(**d, entries=entries)
            if not isinstance(info.number, int) or isinstance(info.number, bool) or info.number < 1:
                raise ValueError(f"set number {info.number!r}")
            for e in entries:
                check_name(e.name)
                if not isinstance(e.size, int) or e.size < 0 or not isinstance(e.sha256, str):
                    raise ValueError(f"entry {e.name!r} has a bad size or checksum")
                if not isinstance(e.role, str) or not isinstance(e.meta, dict) or not isinstance(e.compression, str):
                    raise ValueError(f"entry {e.name!r} has a bad role, compression or meta")
        except (TypeError, ValueError, AttributeError) as e:
            raise MediaError(f"a set catalog on the media is malformed ({e})") from None
        return info


def check_name(name: str) -> str:
    """A member or logical name that stays inside the archive's tree."""
    if not name or "\0" in name or name.startswith("/") or "\\" in name:
        raise MediaError(f"unsafe name {name!r} on the media (absolute, empty, or with NUL/backslash)")
    parts = name.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise MediaError(f"unsafe name {name!r} on the media (empty, '.' or '..' component)")
    return name


def set_dir(number: int) -> str:
    return f"set-{number:04d}"


def current_user() -> tuple[str, int]:
    uid = os.getuid()
    try:
        return pwd.getpwuid(uid).pw_name, uid
    except KeyError:
        return str(uid), uid


def _json_member(tar: tarfile.TarFile, name: str, value: dict[str, Any]) -> None:
    data = json.dumps(value, indent=1, sort_keys=True).encode()
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = int(time.time())
    ti.mode = 0o600
    tar.addfile(ti, io.BytesIO(data))


class _Source:
    """File-like over an iterator of chunks, hashing what passes and checking the size."""

    def __init__(self, chunks: Iterator[bytes], size: int, name: str) -> None:
        self.chunks = chunks
        self.size = size
        self.name = name
        self.buf = b""
        self.pos = 0
        self.seen = 0
        self.sha = hashlib.sha256()

    def read(self, n: int = -1) -> bytes:
        if n > 0 and self.pos >= len(self.buf):  # the usual case: tarfile asks for one whole chunk
            c = self._next()
            if c is None:
                return b""
            if len(c) == n:
                return c
            self.buf, self.pos = c, 0
        out = bytearray()
        while n < 0 or len(out) < n:
            if self.pos >= len(self.buf):
                c = self._next()
                if c is None:
                    break
                self.buf, self.pos = c, 0
            take = len(self.buf) - self.pos if n < 0 else min(n - len(out), len(self.buf) - self.pos)
            out += self.buf[self.pos:self.pos + take]
            self.pos += take
        return bytes(out)

    def _next(self) -> bytes | None:
        try:
            c = next(self.chunks)
        except StopIteration:
            return None
        self.seen += len(c)
        if self.seen > self.size:
            raise MediaError(f"{self.name} grew while it was being written ({self.seen} > {self.size} bytes)")
        self.sha.update(c)
        return c


class SetWriter:
    """Adds the entries of one backup set; :meth:`finish` writes its catalog."""

    def __init__(self, media: MediaWriter, info: SetInfo) -> None:
        self.media = media
        self.info = info
        self.dir = set_dir(info.number)
        _json_member(media.tar, f"{self.dir}/{SET_HEADER}", {k: v for k, v in info.to_json().items()
                                                              if k not in ("entries", "completed", "status")})
        media.flush()

    def add(self, name: str, role: str, chunks: Iterable[bytes], size: int, *,
            progress: Callable[[int], None] | None = None, **meta: Any) -> Entry:
        check_name(name)
        compress = self.info.compressed and role != "patch"
        it = _prefetch(iter(chunks)) if size > CHUNK else iter(chunks)
        if progress is not None:
            it = _counting(it, progress)
        entry = Entry(name, role, size, "", compression="zstd" if compress else "", meta=meta)
        ti = tarfile.TarInfo(f"{self.dir}/{entry.member}")
        ti.mtime = int(time.time())
        ti.mode = 0o600
        ti.pax_headers = {"MAILKEEP.role": role, "MAILKEEP.size": str(size)}
        src = _Source(it, size, name)
        if compress:
            import zstandard

            with tempfile.TemporaryFile(dir=os.path.dirname(self.media.path) or ".") as spool:
                w = zstandard.ZstdCompressor(level=3, threads=-1).stream_writer(spool, closefd=False)
                while chunk := src.read(CHUNK):
                    w.write(chunk)
                w.flush(zstandard.FLUSH_FRAME)
                w.close()  # type: ignore[no-untyped-call]
                self._check_size(src, name, size)
                ti.size = spool.tell()
                spool.seek(0)
                ti.pax_headers["MAILKEEP.compression"] = "zstd"
                self.media.tar.addfile(ti, spool)
        else:
            ti.size = size
            self.media.tar.addfile(ti, src)  # read(n) is all tarfile uses
            src.read(1)  # a source longer than its declared size is damage, not data
            self._check_size(src, name, size)
        entry.stored_size = ti.size
        entry.sha256 = src.sha.hexdigest()
        self.info.entries.append(entry)
        self.media.flush()
        return entry

    @staticmethod
    def _check_size(src: _Source, name: str, size: int) -> None:
        if src.seen != size:
            raise MediaError(f"{name} gave {src.seen} bytes where {size} were announced")

    def finish(self) -> SetInfo:
        self.info.completed = time.time()
        self.info.status = "complete"
        _json_member(self.media.tar, f"{self.dir}/{CATALOG}", self.info.to_json())
        self.media.flush(sync=True)
        return self.info


def _prefetch(it: Iterator[bytes], depth: int = 4) -> Iterator[bytes]:
    """Pull ``it`` in a second thread, a few chunks ahead: the source's reading and
    verifying (the engine's checks, a stream's SHA-256) overlap with this thread's hashing
    and writing. hashlib and file I/O release the GIL, so both cores work. Exceptions of the
    source come out here; stopping early stops the producer."""
    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for c in it:
                while not stop.is_set():
                    try:
                        q.put(("chunk", c), timeout=0.5)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put(("error", e))

    t = threading.Thread(target=produce, name="backup-prefetch", daemon=True)
    t.start()
    try:
        while True:
            kind, value = q.get()
            if kind == "chunk":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        stop.set()
        while t.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                t.join(0.1)


def _lock(f: IO[bytes], path: str) -> None:
    """One writer per media file (two jobs appending at once would interleave their sets)."""
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise MediaError(f"{path} is being written by another backup right now; wait for it to finish, or "
                         "use other media") from None


def _counting(it: Iterator[bytes], progress: Callable[[int], None]) -> Iterator[bytes]:
    for c in it:
        progress(len(c))
        yield c


class MediaWriter:
    """Media opened for a new set: created, replaced, or appended to."""

    def __init__(self, path: str, header: MediaHeader, sets: list[SetInfo], fileobj: IO[bytes]) -> None:
        self.path = path
        self.header = header
        self.sets = sets
        self.f = fileobj
        self.tar = tarfile.open(fileobj=fileobj, mode="w", format=tarfile.PAX_FORMAT)
        self.tar.copybufsize = CHUNK  # type: ignore[attr-defined]  # 16 KiB by default: a call per 16 KiB
        self.removed_incomplete: list[int] = []

    @classmethod
    def open(cls, path: str, *, replace: bool = False, media_name: str | None = None,
             owner_only: bool = False) -> MediaWriter:
        user, uid = current_user()
        if os.path.exists(path) and not replace:
            existing = MediaReader(path)
            existing.check_access(write=True)  # the owner's rule first, then the file's mode
            if owner_only and not existing.header.owner_only:
                raise MediaError(f"{path} already exists and is not owner-only media; --owner-only applies to new "
                                 "media: choose a new file, or --replace these")
            f = open(path, "r+b")  # noqa: SIM115 - owned by the writer
            _lock(f, path)
            try:
                reader = MediaReader(path)  # again, now that no one else is writing it
                end, complete, incomplete = reader.append_point()
            except BaseException:
                f.close()
                raise
            f.seek(end)
            f.truncate()
            w = cls(path, reader.header, complete, f)
            w.removed_incomplete = incomplete
            return w
        if os.path.exists(path):
            MediaReader.try_access(path)
        tmp_mode = 0o600 if owner_only else 0o644
        fd = os.open(path, os.O_RDWR | os.O_CREAT, tmp_mode)
        if owner_only:
            os.fchmod(fd, 0o600)
        f = os.fdopen(fd, "r+b")
        _lock(f, path)  # before emptying it: another backup may be appending right now
        f.truncate(0)
        now = time.time()
        header = MediaHeader(
            name=media_name or f"Media created {time.strftime('%Y-%m-%d at %H:%M', time.localtime(now))}",
            guid=str(uuid.uuid4()), created=now, owner=user, owner_uid=uid, owner_only=owner_only,
        )
        w = cls(path, header, [], f)
        _json_member(w.tar, MEDIA_HEADER, asdict(header))
        return w

    def begin_set(self, *, kind: str, description: str, source: str, selection: list[str], user: str,
                  compressed: bool = False, **extra: Any) -> SetWriter:
        number = max((s.number for s in self.sets), default=0) + 1
        info = SetInfo(number, kind, description, source, list(selection), user, time.time(), self.header.name,
                       compressed, extra=extra)
        return SetWriter(self, info)

    def flush(self, *, sync: bool = False) -> None:
        self.f.flush()
        if sync:
            os.fsync(self.f.fileno())

    def abandon(self) -> None:
        """Stop without a catalog: the set stays incomplete and the next append cuts it off."""
        try:
            self.f.flush()
        finally:
            self.f.close()

    def close(self) -> None:
        self.tar.close()  # end-of-archive blocks: plain tar tools stop cleanly
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()


@dataclass
class _Member:
    name: str
    offset_data: int
    size: int
    pax: dict[str, str]
    end: int


class MediaReader:
    """Reads media, trusting nothing: names checked, sizes bounded by the file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.members: list[_Member] = []
        self.tail_cut: int | None = None
        self.damaged_at: int | None = None
        if not os.path.exists(path):
            raise MediaError(f"no media at {path}")
        self._scan()
        first = self.members[0] if self.members else None
        if first is None or first.name != MEDIA_HEADER:
            raise MediaError(f"{path} is not Mailkeep backup media (no {MEDIA_HEADER} at its start)")
        try:
            self.header = MediaHeader(**json.loads(self.read_small(first)))
        except (TypeError, ValueError) as e:
            raise MediaError(f"{path}: the media header is damaged ({e})") from None
        if self.header.format != FORMAT:
            raise MediaError(f"{path} has media format {self.header.format!r}; this Mailkeep reads {FORMAT}")

    @staticmethod
    def try_access(path: str) -> None:
        try:
            MediaReader(path).check_access(write=True)
        except MediaError as e:
            if "owner-only" in str(e):
                raise

    def check_access(self, *, write: bool = False) -> None:
        h = self.header
        user, uid = current_user()
        if h.owner_only and uid not in (h.owner_uid, 0):
            raise MediaError(f"{self.path} is owner-only media of {h.owner} (uid {h.owner_uid}); {user} may not "
                             f"{'append to or replace' if write else 'read'} it. Ask "
                             + (f"{h.owner} or root." if h.owner_uid != 0 else "root."))

    def _scan(self) -> None:
        """Members in order. Where the scan stops is recorded: ``tail_cut`` when the last
        member runs past the end of the file (a writer died in it), ``damaged_at`` when a
        header is invalid and non-zero bytes follow (damage: nothing after it is trusted)."""
        size = os.path.getsize(self.path)
        end = 0
        try:
            with tarfile.open(self.path, mode="r:") as tar:
                while True:
                    try:
                        ti = tar.next()
                    except (tarfile.ReadError, EOFError) as e:
                        if not self.members:
                            raise MediaError(f"{self.path} is not readable backup media ({e})") from None
                        self.damaged_at = end
                        break
                    if ti is None:
                        break
                    if ti.offset_data + ti.size > size:
                        self.tail_cut = ti.offset
                        break
                    check_name(ti.name)
                    if not ti.isreg():
                        raise MediaError(f"{self.path}: member {ti.name!r} is not a regular file "
                                         "(links and devices are never written by Mailkeep)")
                    end = ti.offset_data + ((ti.size + 511) // 512) * 512
                    self.members.append(_Member(ti.name, ti.offset_data, ti.size, dict(ti.pax_headers), end))
        except tarfile.ReadError as e:
            raise MediaError(f"{self.path} is not readable backup media ({e})") from None
        if self.tail_cut is None and self.damaged_at is None and _nonzero_after(self.path, end):
            self.damaged_at = end  # tarfile stops quietly at an invalid header

    def read_small(self, m: _Member, limit: int = 64 << 20) -> bytes:
        if m.size > limit:
            raise MediaError(f"{self.path}: {m.name} is {m.size} bytes, too large for a header")
        with open(self.path, "rb") as f:
            f.seek(m.offset_data)
            return f.read(m.size)

    def sets(self) -> list[SetInfo]:
        """Every set on the media: complete ones from their catalog, interrupted ones rebuilt
        from their members (status ``incomplete``: no checksums to verify against)."""
        out: dict[int, SetInfo] = {}
        partial: dict[int, list[_Member]] = {}
        for m in self.members[1:]:
            top, _, rest = m.name.partition("/")
            if not top.startswith("set-") or not top[4:].isdigit():
                continue
            n = int(top[4:])
            if rest == CATALOG:
                try:
                    out[n] = SetInfo.from_json(json.loads(self.read_small(m)))
                except (TypeError, ValueError) as e:
                    raise MediaError(f"{self.path}: the catalog of set #{n} is damaged ({e})") from None
            elif rest == SET_HEADER:
                try:
                    d = json.loads(self.read_small(m))
                    partial.setdefault(n, [])
                    out.setdefault(n, SetInfo.from_json({**d, "status": "incomplete"}))
                except (TypeError, ValueError):
                    continue
            else:
                partial.setdefault(n, []).append(m)
        for n, info in out.items():
            if info.status == "incomplete":
                info.entries = [_entry_of(m) for m in partial.get(n, [])]
        return [out[n] for n in sorted(out)]

    def get_set(self, number: int) -> SetInfo:
        for s in self.sets():
            if s.number == number:
                return s
        have = ", ".join(f"#{s.number}" for s in self.sets()) or "none"
        raise MediaError(f"{self.path} has no backup set #{number} (sets: {have})")

    def append_point(self) -> tuple[int, list[SetInfo], list[int]]:
        """Where the next set goes: after the last member of the last complete set (or the
        media header). Returns that offset, the complete sets, and the incomplete set numbers
        that will be cut off."""
        if self.damaged_at is not None:
            raise MediaError(
                f"{self.path} is damaged at offset {self.damaged_at}: what follows cannot be read, and appending "
                "would cut it off. Keep these media as they are (verify and restore what can be read), and write "
                "new backups to other media (or --replace these).")
        sets = self.sets()
        complete = [s for s in sets if s.status == "complete"]
        incomplete = [s.number for s in sets if s.status != "complete"]
        last_complete = max((s.number for s in complete), default=0)
        if any(n < last_complete for n in incomplete):
            raise MediaError(f"{self.path}: set(s) {', '.join(f'#{n}' for n in incomplete)} without a catalog "
                             "lie before complete sets, which an interrupted backup never leaves: the media are "
                             "damaged; write new backups to other media")
        end = self.members[0].end
        last = max((s.number for s in complete), default=0)
        for m in self.members:
            if m.name.startswith(set_dir(last) + "/") and last:
                end = max(end, m.end)
        return end, complete, [n for n in incomplete if n > last]

    def member(self, set_no: int, e: Entry) -> _Member:
        want = f"{set_dir(set_no)}/{e.member}"
        for m in self.members:
            if m.name == want:
                return m
        raise MediaError(f"{self.path}: set #{set_no} lists {e.name} but the media has no member {want}")

    def read_entry(self, set_no: int, e: Entry) -> Iterator[bytes]:
        """The entry's original bytes, decompressed, streamed."""
        m = self.member(set_no, e)
        with open(self.path, "rb") as f:
            f.seek(m.offset_data)
            raw = _limited(f, m.size)
            if e.compression == "zstd":
                import zstandard

                reader = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(_IterReader(raw)))
                try:
                    while chunk := reader.read(CHUNK):
                        yield chunk
                except zstandard.ZstdError as err:
                    raise MediaError(f"{e.name}: its compressed data on the media are damaged ({err}); restore "
                                     "another set, or other media") from None
            elif e.compression:
                raise MediaError(f"{e.name}: unknown compression {e.compression!r}")
            else:
                yield from raw


def _nonzero_after(path: str, offset: int) -> bool:
    with open(path, "rb") as f:
        f.seek(offset)
        while chunk := f.read(CHUNK):
            if chunk.count(0) != len(chunk):
                return True
    return False


def _entry_of(m: _Member) -> Entry:
    """An entry rebuilt from its member alone (a set whose catalog was never written)."""
    compression = m.pax.get("MAILKEEP.compression", "")
    name = m.name.split("/", 1)[1]
    if compression == "zstd":
        name = name.removesuffix(".zst")
    try:
        size = int(m.pax.get("MAILKEEP.size", m.size))
    except ValueError:
        raise MediaError(f"member {m.name!r} has a malformed MAILKEEP.size") from None
    return Entry(name, m.pax.get("MAILKEEP.role", "file"), size, "", m.size, compression)


def _limited(f: IO[bytes], size: int) -> Iterator[bytes]:
    left = size
    while left > 0:
        c = f.read(min(CHUNK, left))
        if not c:
            raise MediaError(f"the media ends inside a member ({left} bytes missing)")
        left -= len(c)
        yield c


class _IterReader(io.RawIOBase):
    def __init__(self, it: Iterator[bytes]) -> None:
        self.it = it
        self.buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self.buf:
            try:
                self.buf = next(self.it)
            except StopIteration:
                return 0
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


@dataclass
class VerifyResult:
    set: SetInfo
    files: int = 0
    different: list[str] = field(default_factory=list)
    bytes: int = 0
    started: float = 0.0
    completed: float = 0.0


def verify(reader: MediaReader, set_no: int) -> VerifyResult:
    """Re-read every entry of a set and compare its SHA-256 with the catalog's."""
    s = reader.get_set(set_no)
    res = VerifyResult(s, started=time.time())
    if s.status != "complete":
        res.different = [f"{e.name} (the set is incomplete: its backup did not finish)" for e in s.entries]
        res.completed = time.time()
        return res
    for e in s.entries:
        h = hashlib.sha256()
        n = 0
        try:
            for chunk in reader.read_entry(set_no, e):
                h.update(chunk)
                n += len(chunk)
        except (MediaError, OSError, Exception) as err:  # noqa: BLE001 - a damaged member is a difference
            res.different.append(f"{e.name} (unreadable: {err})")
            continue
        res.files += 1
        res.bytes += n
        if n != e.size or h.hexdigest() != e.sha256:
            res.different.append(e.name)
    res.completed = time.time()
    return res
