"""Full-text indexing per mailbox or public folder database ("Repairing Full-Text Indexing").

As in Exchange, an index is kept outside the database files: one SQLite FTS5 file per
database, ``<data>/index/<database GUID>.fts`` (:func:`index_folder` is the one place that
says so; Exchange's equivalent is the ``Projects`` folder). It holds, for each content of the
database (single instance: copies and moves share it), the searchable text of
``store/searchtext.py`` (header, decoded body text, decoded encoded words), case folded and
bounded to ``MAX_TEXT`` characters, plus the (mailbox GUID, folder, UID) -> content map of
the messages, so results map back to IMAP UIDs.

Settings live in ``server.json`` (``databases.<GUID>.fti``), the data folder's record of
what belongs to this machine (decision 0005), written atomically: not next to the index,
because the guide's repair deletes the contents of the index folder by hand, and the
settings must survive that so the loss is *detected* ("missing") rather than forgotten.
They are: the index exists, "This index is currently available for searching by clients",
the update interval (minutes, or None for "never": manual population only), the times of
the last full and incremental population, and the state (``new`` never populated,
``ready``, ``missing``, ``damaged``).

Invariants:
- Creating makes an empty index; populating is separate (Exchange's Start Full
  Population). A full population builds a new file and renames it over the old one, so a
  search never sees a half-built index.
- Incremental population reads only rows to find new, changed and removed messages (the
  store has no change numbers: it compares the (mailbox, folder, UID) -> content map and
  each content's SHA-256, which also catches a restored database reusing content ids) and
  reads the streams of new contents only.
- :func:`search` answers exactly what scanning the messages answers: the index narrows
  (trigram match, then ``instr`` on the stored text), and messages it cannot vouch for (not
  indexed yet, changed since, or text cut at ``MAX_TEXT``) are read and checked as the scan
  would. It returns None (the caller scans) when there is no index, it is not available for
  searching, it was never populated, or its file is missing or damaged.
- A missing or damaged file never raises out of search or the periodic update: it is
  recorded in the settings, reported by :func:`status`, and logged once (event 7003).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mailkeep.engine.errors import EseError
from mailkeep.store import searchtext
from mailkeep.store.searchtext import BODY_KEY, TEXT_KEY, Term
from mailkeep.store.server import DatabaseInfo

if TYPE_CHECKING:
    from mailkeep.store.mailbox import Mailbox
    from mailkeep.store.store import Store

SOURCE = "Microsoft Search"  # the guide's MSSearch service, which owns the indexes in Exchange
EV_CREATED, EV_DELETED, EV_POPULATED, EV_UNUSABLE, EV_FAILED = 7000, 7001, 7002, 7003, 7004
FORMAT = 1
MAX_TEXT = 1 << 20  # characters of searchable text kept per content; longer ones are checked by reading
DEFAULT_INTERVAL = 15  # minutes between incremental populations
BATCH = 200  # contents per index transaction during population
BUSY_MS = 5000
NEW, READY, MISSING, DAMAGED, NONE = "new", "ready", "missing", "damaged", "none"

# Process-wide, as the files they guard are: settings writes (server.json) from the service's
# threads, and populations (one at a time, so only a population ever writes an index file).
_lock = threading.RLock()
_populating = threading.Lock()


class FtiError(Exception):
    """A full-text index request that cannot be done; the message says what to do."""


def index_folder(data: str) -> str:
    """Where the indexes live (outside the database files, as in Exchange)."""
    return os.path.join(data, "index")


def index_path(store: Store, info: DatabaseInfo) -> str:
    return os.path.join(index_folder(store.server.data), f"{info.guid}.fts")


# -- settings --------------------------------------------------------------------------------------
def settings(store: Store, info: DatabaseInfo) -> dict[str, Any] | None:
    st = store.server.state.get("databases", {}).get(str(info.guid), {}).get("fti")
    return dict(st) if isinstance(st, dict) else None


def _save_settings(store: Store, info: DatabaseInfo, values: dict[str, Any] | None) -> None:
    with _lock:
        dbs = store.server.state.setdefault("databases", {})
        entry = dbs.setdefault(str(info.guid), {})
        if values is None:
            entry.pop("fti", None)
        else:
            entry["fti"] = values
        store.server.save()


def _update_settings(store: Store, info: DatabaseInfo, **changes: Any) -> dict[str, Any]:
    with _lock:
        st = settings(store, info)
        if st is None:
            raise FtiError(_no_index(info))
        st.update(changes)
        _save_settings(store, info, st)
        return st


def _no_index(info: DatabaseInfo) -> str:
    return (f"{info.kind} {info.path_name} has no full-text index; create one with "
            f"'mailkeep fti create --db \"{info.name}\"'")


# -- the index file --------------------------------------------------------------------------------
SCHEMA = (
    "CREATE TABLE meta(key TEXT PRIMARY KEY, value)",
    "CREATE TABLE contents(cid INTEGER PRIMARY KEY, sha256 TEXT NOT NULL, truncated INTEGER NOT NULL)",
    "CREATE TABLE keys(mailbox TEXT NOT NULL, fid INTEGER NOT NULL, uid INTEGER NOT NULL, cid INTEGER NOT NULL, "
    "PRIMARY KEY(mailbox, fid, uid)) WITHOUT ROWID",
    "CREATE VIRTUAL TABLE docs USING fts5(head, body, extra, tokenize='trigram case_sensitive 1')",
)


class Unusable(Exception):
    """The index file is missing or damaged (``state`` says which)."""

    def __init__(self, state: str, why: str) -> None:
        super().__init__(why)
        self.state = state


def _connect(path: str, *, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=BUSY_MS / 1000, isolation_level=None, check_same_thread=False, uri=uri)
    conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")
    return conn


def _new_file(path: str, info: DatabaseInfo) -> None:
    for p in (path, path + "-journal"):
        if os.path.exists(p):
            os.unlink(p)
    with closing(_connect(path)) as c:
        c.execute("BEGIN")
        for sql in SCHEMA:
            c.execute(sql)
        c.executemany("INSERT INTO meta VALUES (?, ?)", [
            ("format", FORMAT), ("database", str(info.guid)), ("created", time.time())])
        c.execute("COMMIT")
    _fsync(path)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _open(path: str, info: DatabaseInfo, *, thorough: bool = False) -> sqlite3.Connection:
    """The index file, checked (raises :class:`Unusable`)."""
    if not os.path.exists(path):
        raise Unusable(MISSING, f"the index file {path} is missing")
    try:
        # mode=rw never creates: a file that vanished stays missing
        c = _connect(f"file:{urllib.request.pathname2url(path)}?mode=rw", uri=True)
    except sqlite3.Error as e:
        raise Unusable(MISSING, f"the index file {path} cannot be opened ({e})") from e
    try:
        meta = dict(c.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != FORMAT or meta.get("database") != str(info.guid):
            raise Unusable(DAMAGED, f"the index file {path} is not an index of format {FORMAT} for database "
                           f"{info.guid} (format {meta.get('format')!r}, database {meta.get('database')!r})")
        c.execute("SELECT count(*) FROM contents").fetchone()
        if thorough:
            bad = [r[0] for r in c.execute("PRAGMA quick_check").fetchall() if r[0] != "ok"]
            if bad:
                raise Unusable(DAMAGED, f"the index file {path} is damaged ({bad[0]})")
            c.execute("INSERT INTO docs(docs) VALUES('integrity-check')")
    except Unusable:
        c.close()
        raise
    except sqlite3.Error as e:
        c.close()
        raise Unusable(DAMAGED, f"the index file {path} is damaged ({e})") from e
    return c


def _unusable(store: Store, info: DatabaseInfo, u: Unusable) -> None:
    """Record a missing or damaged file once: settings state and event 7003."""
    with _lock:
        st = settings(store, info)
        if st is None or st.get("state") == u.state:
            return
        _update_settings(store, info, state=u.state)
    store.events.error(
        SOURCE, EV_UNUSABLE,
        f"The full-text index of {info.kind} {info.path_name} is {u.state}: {u}. Searches scan the messages "
        f"instead. Re-create it: mailkeep fti delete --db \"{info.name}\"; mailkeep fti create --db "
        f"\"{info.name}\"; mailkeep fti populate --db \"{info.name}\" --full.",
        database=str(info.guid), state=u.state,
    )


# -- create, delete, settings ----------------------------------------------------------------------
def create(store: Store, info: DatabaseInfo, *, available: bool = False,
           interval: int | None = DEFAULT_INTERVAL) -> dict[str, Any]:
    """Exchange's Create Full-Text Index: an empty index and its settings."""
    if info.sg.recovery:
        raise FtiError(f"{info.path_name} is in the recovery storage group, whose databases are not indexed")
    _check_interval(interval)
    with _lock:
        if settings(store, info) is not None:
            raise FtiError(f"{info.kind} {info.path_name} already has a full-text index; delete it first "
                           f"('mailkeep fti delete --db \"{info.name}\"') to re-create it")
        path = index_path(store, info)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _new_file(path, info)
        st = {"created": time.time(), "available": available, "interval": interval, "state": NEW,
              "last_full": None, "last_incremental": None}
        _save_settings(store, info, st)
    store.events.info(SOURCE, EV_CREATED, f"Full-text index of {info.kind} {info.path_name} created ({path}).",
                      database=str(info.guid))
    return st


def delete(store: Store, info: DatabaseInfo) -> list[str]:
    """Exchange's Delete Full-Text Index plus emptying its project files: the files that
    were removed."""
    with _populating, _lock:
        if settings(store, info) is None and not os.path.exists(index_path(store, info)):
            raise FtiError(_no_index(info))
        removed = []
        path = index_path(store, info)
        for p in (path, path + "-journal", path + ".new", path + ".new-journal", _counter_path(path)):
            if os.path.exists(p):
                os.unlink(p)
                removed.append(p)
        _save_settings(store, info, None)
    store.events.info(SOURCE, EV_DELETED, f"Full-text index of {info.kind} {info.path_name} deleted.",
                      database=str(info.guid))
    return removed


def configure(store: Store, info: DatabaseInfo, *, available: bool | None = None,
              interval: int | None | str = "keep") -> dict[str, Any]:
    """"This index is currently available for searching by clients" and the update
    interval (``None``: never, manual population only)."""
    changes: dict[str, Any] = {}
    if available is not None:
        changes["available"] = available
    if interval != "keep":
        _check_interval(interval)  # type: ignore[arg-type]
        changes["interval"] = interval
    return _update_settings(store, info, **changes)


def _check_interval(interval: int | None) -> None:
    if interval is not None and (not isinstance(interval, int) or interval < 1):
        raise FtiError(f"the update interval must be a whole number of minutes (at least 1) or never, "
                       f"not {interval!r}")


# -- population ------------------------------------------------------------------------------------
@dataclass
class PopulateReport:
    database: str
    full: bool
    messages: int = 0  # messages in the index afterwards
    added: int = 0  # messages added, or whose content changed
    removed: int = 0  # messages that left the database
    contents_read: int = 0
    truncated: int = 0  # contents whose text is longer than MAX_TEXT (checked by reading at search time)
    failed: list[str] = field(default_factory=list)  # contents that could not be read
    seconds: float = 0.0


def populate(store: Store, info: DatabaseInfo, *, full: bool = False) -> PopulateReport:
    """Full (rebuild) or incremental population. The database must be mounted. An
    incremental population of an index never populated is a full one."""
    t0 = time.monotonic()
    st = settings(store, info)
    if st is None:
        raise FtiError(_no_index(info))
    store.handle(info)  # dismounted: StoreError naming the remedy
    path = index_path(store, info)
    if not full and st.get("last_full") is None:
        full = True
    rep = PopulateReport(info.path_name, full)
    with _populating:
        if full:
            _rebuild(store, info, path, rep)
        else:
            try:
                conn = _open(path, info)
            except Unusable as u:
                _unusable(store, info, u)
                raise FtiError(f"{u}; an incremental population needs the index: start a full population "
                               f"('mailkeep fti populate --db \"{info.name}\" --full') or re-create it") from u
            with closing(conn):
                _fill(store, info, conn, rep)
    rep.seconds = time.monotonic() - t0
    now = time.time()
    _update_settings(store, info, state=READY, **({"last_full": now} if full else {"last_incremental": now}),
                     messages=rep.messages)
    kind = "Full" if full else "Incremental"
    store.events.info(
        SOURCE, EV_POPULATED,
        f"{kind} population of the full-text index of {info.kind} {info.path_name}: {rep.messages} message(s) "
        f"in the index, {rep.added} added or changed, {rep.removed} removed, {rep.contents_read} content(s) read"
        + (f", {len(rep.failed)} unreadable" if rep.failed else "") + ".",
        **{k: v for k, v in asdict(rep).items() if k != "failed"},
    )
    return rep


def _rebuild(store: Store, info: DatabaseInfo, path: str, rep: PopulateReport) -> None:
    """A full population: a new file, renamed over the old one when complete. Searches hold
    the old file open or open the new one; neither sees a half-built index. Only a
    population writes an index file (searches never do), and populations take turns, so a
    ``-journal`` left next to the old file is a dead one and goes before the rename (it
    must never be taken for the new file's)."""
    tmp = path + ".new"
    _new_file(tmp, info)
    try:
        with closing(_open(tmp, info)) as c:
            _fill(store, info, c, rep)
        _fsync(tmp)
        if os.path.exists(path + "-journal"):
            os.unlink(path + "-journal")
        os.replace(tmp, path)
        _fsync(path)
    except BaseException:
        for p in (tmp, tmp + "-journal"):
            if os.path.exists(p):
                os.unlink(p)
        raise


def _fill(store: Store, info: DatabaseInfo, c: sqlite3.Connection, rep: PopulateReport) -> None:
    """Bring the index to the database's rows: rows are compared, only new content read."""
    with store.read(info) as (r, db):
        now_keys = {(m["mailbox"], int(m["fid"]), int(m["uid"])): int(m["content"]) for m in r.scan(db, "message")}
        shas = {int(x["cid"]): str(x["sha256"]) for x in r.scan(db, "content")}
    old_keys = {(m, int(f), int(u)): int(cid) for m, f, u, cid in c.execute("SELECT mailbox, fid, uid, cid FROM keys")}
    old_docs = {int(cid): sha for cid, sha in c.execute("SELECT cid, sha256 FROM contents")}
    wanted = {cid for cid in now_keys.values() if cid in shas}
    stale = [cid for cid, sha in old_docs.items() if cid not in wanted or shas.get(cid) != sha]
    fresh = sorted(cid for cid in wanted if old_docs.get(cid) != shas[cid])
    changed_cids = set(stale) | set(fresh)
    gone = [k for k in old_keys if k not in now_keys]
    moved = [(k, cid) for k, cid in now_keys.items() if old_keys.get(k) != cid or cid in changed_cids]
    rep.removed = len(gone)
    rep.added = len(moved)
    c.execute("BEGIN IMMEDIATE")
    for cid in stale:
        c.execute("DELETE FROM docs WHERE rowid = ?", (cid,))
        c.execute("DELETE FROM contents WHERE cid = ?", (cid,))
    c.executemany("DELETE FROM keys WHERE mailbox = ? AND fid = ? AND uid = ?", gone)
    c.executemany("INSERT OR REPLACE INTO keys VALUES (?, ?, ?, ?)", [(*k, cid) for k, cid in moved])
    c.execute("COMMIT")
    for i in range(0, len(fresh), BATCH):
        rows = []
        for cid in fresh[i:i + BATCH]:
            doc = _read_content(store, info, cid, rep)
            if doc is not None:
                rows.append((cid, shas[cid], doc))
        c.execute("BEGIN IMMEDIATE")
        for cid, sha, (head, body, extra, cut) in rows:
            c.execute("INSERT INTO docs(rowid, head, body, extra) VALUES (?, ?, ?, ?)", (cid, head, body, extra))
            c.execute("INSERT INTO contents VALUES (?, ?, ?)", (cid, sha, int(cut)))
        c.execute("COMMIT")
    rep.messages = int(c.execute("SELECT count(*) FROM keys").fetchone()[0])
    rep.truncated = int(c.execute("SELECT count(*) FROM contents WHERE truncated").fetchone()[0])


def _read_content(store: Store, info: DatabaseInfo, cid: int,
                  rep: PopulateReport) -> tuple[str, str, str, bool] | None:
    """(head, body, extra, cut) of one content, folded, at most MAX_TEXT characters in all."""
    parts: dict[str, list[str]] = {searchtext.HEAD: [], searchtext.BODY: [], searchtext.EXTRA: []}
    left = MAX_TEXT
    cut = False
    try:
        with _stream(store, info, cid) as reader:
            if reader is None:
                return None  # removed since the rows were read: the next population drops its key
            for ch, s in searchtext.pieces(reader):
                f = searchtext.fold(s)
                if len(f) > left:
                    parts[ch].append(f[:left])
                    cut = True
                    break
                parts[ch].append(f)
                left -= len(f)
    except (EseError, OSError) as e:
        rep.failed.append(f"content {cid}: {e}")
        store.events.warning(SOURCE, EV_FAILED, f"Full-text indexing of {info.path_name} could not read content "
                             f"{cid}: {e}. Searches read that message instead.", database=str(info.guid))
        return None
    rep.contents_read += 1
    return ("".join(parts[searchtext.HEAD]), "".join(parts[searchtext.BODY]), "".join(parts[searchtext.EXTRA]),
            cut)


@contextmanager
def _stream(store: Store, info: DatabaseInfo, cid: int) -> Iterator[Any]:
    with store.read(info) as (r, db):
        row = r.get(db, "content", (cid,))
        if row is None:
            yield None
            return
        reader = r.open_stream(db, int(row["stream"]))
    try:
        yield reader
    finally:
        reader.close()


def update_due(store: Store, now: float | None = None) -> list[PopulateReport]:
    """The periodic update: an incremental population of each mounted database whose
    interval has passed. Failures are events, never raised (the maintenance thread calls it)."""
    now = time.time() if now is None else now
    out = []
    for info in store.mounted_databases():
        st = settings(store, info)
        if st is None or st.get("interval") is None or st.get("state") != READY:
            continue
        last = max(st.get("last_full") or 0.0, st.get("last_incremental") or 0.0)
        if now - last < int(st["interval"]) * 60:
            continue
        try:
            out.append(populate(store, info))
        except Exception as e:  # noqa: BLE001 - the next interval tries again
            store.events.error(SOURCE, EV_FAILED, f"Incremental population of the full-text index of "
                               f"{info.path_name} failed: {e}", database=str(info.guid))
    return out


# -- status ----------------------------------------------------------------------------------------
@dataclass
class Status:
    database: str
    name: str
    guid: str
    path: str
    state: str  # none, new, ready, missing, damaged
    available: bool
    interval: int | None
    last_full: float | None
    last_incremental: float | None
    messages: int | None
    contents: int | None
    searches: int | None  # searches the index answered since it was created (``<GUID>.searches``)
    problem: str = ""


def status(store: Store, info: DatabaseInfo) -> Status:
    st = settings(store, info)
    path = index_path(store, info)
    if st is None:
        return Status(info.path_name, info.name, str(info.guid), path, NONE, False, None, None, None, None, None,
                      None)
    state, problem = str(st.get("state", NEW)), ""
    messages = contents = searches = None
    try:
        with closing(_open(path, info, thorough=True)) as c:
            messages = int(c.execute("SELECT count(*) FROM keys").fetchone()[0])
            contents = int(c.execute("SELECT count(*) FROM contents").fetchone()[0])
        searches = _searches(path)
        if state in (MISSING, DAMAGED):  # the file is good again (put back by hand): it was populated before
            state = READY if st.get("last_full") else NEW
            _update_settings(store, info, state=state)
    except (Unusable, sqlite3.Error) as u:
        state = u.state if isinstance(u, Unusable) else DAMAGED
        problem = str(u)
        _unusable(store, info, u if isinstance(u, Unusable) else Unusable(DAMAGED, str(u)))
    return Status(info.path_name, info.name, str(info.guid), path, state, bool(st.get("available")),
                  st.get("interval"), st.get("last_full"), st.get("last_incremental"), messages, contents, searches,
                  problem)


# -- search ----------------------------------------------------------------------------------------
def search(
    store: Store, info: DatabaseInfo, mailbox: str, fid: int, terms: Iterable[tuple[str, str]],
) -> set[int] | None:
    """UIDs of the folder's messages matching every (TEXT|BODY, text) term (at least one),
    or None when the index cannot answer (the caller scans)."""
    folded = [searchtext.term(k, v) for k, v in terms]
    if not folded:
        raise ValueError("a full-text search needs at least one TEXT or BODY term")
    each = match_each(store, info, mailbox, fid, folded)
    if each is None:
        return None
    out = set(each[folded[0]])
    for t in folded[1:]:
        out &= each[t]
    return out


def match_each(store: Store, info: DatabaseInfo, mailbox: str, fid: int,
               terms: Iterable[Term]) -> dict[Term, set[int]] | None:
    """For each folded term (``searchtext.term``), the UIDs of the folder's messages that
    match it; None when the index cannot answer."""
    st = settings(store, info)
    if st is None or not st.get("available") or not st.get("last_full") \
            or st.get("state") not in (READY, MISSING, DAMAGED):
        return None
    terms = list(dict.fromkeys(terms))
    path = index_path(store, info)
    try:
        conn = _open(path, info)
    except Unusable as u:
        _unusable(store, info, u)
        return None
    try:
        with closing(conn):
            if st.get("state") != READY:  # the file is back (restored by hand): use it again
                _update_settings(store, info, state=READY)
            with store.read(info) as (r, db):
                rows = {int(m["uid"]): int(m["content"]) for m in r.scan(db, "message", prefix=(mailbox, fid))}
                shas = {}
                for cid in set(rows.values()):
                    c = r.get(db, "content", (cid,))
                    if c is not None:
                        shas[cid] = str(c["sha256"])
            conn.execute("BEGIN")  # one snapshot of the index for every query below
            try:
                vouched = _vouched(conn, shas)
                hits = {t: {uid for uid, cid in rows.items() if cid in vouched and cid in cids}
                        for t, cids in ((t, _query(conn, t)) for t in terms)}
            finally:
                conn.execute("COMMIT")
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            return None  # a population holds it longer than BUSY_MS: scan this time
        _unusable(store, info, Unusable(DAMAGED, f"the index file {path} is damaged ({e})"))
        return None
    except sqlite3.DatabaseError as e:
        _unusable(store, info, Unusable(DAMAGED, f"the index file {path} is damaged ({e})"))
        return None
    for uid, cid in sorted(rows.items()):
        if cid not in vouched:  # new since the last population, changed, or longer than MAX_TEXT
            for t in _scan_content(store, info, cid, terms):
                hits[t].add(uid)
    _count_search(path)
    return hits


class FolderSearch:
    """The TEXT/BODY keys of one SEARCH over one folder (IMAP's ``_matches`` asks per
    message): answered from the index when it can, else by reading each message once for
    all the terms (``searchtext.find``, streamed). Either way the answer is the same."""

    def __init__(self, mb: Mailbox, path: str, terms: Iterable[tuple[str, str]]) -> None:
        self.mb = mb
        self.path = path
        self.terms = list(dict.fromkeys(searchtext.term(k, v) for k, v in terms))
        self.index: dict[Term, set[int]] | None = None
        if self.terms:
            f = mb.folder(path)
            self.index = match_each(mb.store, mb.info, mb.guid, f.fid, self.terms)
        self._read: dict[int, tuple[set[Term], set[Term]]] = {}  # uid -> (terms looked for, found)

    @property
    def from_index(self) -> bool:
        return self.index is not None

    def matches(self, uid: int, kind: str, value: str) -> bool:
        t = searchtext.term(kind, value)
        if self.index is not None and t in self.index:
            return uid in self.index[t]
        looked, found = self._read.get(uid, (set(), set()))
        if t not in looked:
            want = set(self.terms) | {t}
            with self.mb.fetch(self.path, uid) as reader:
                found = searchtext.find(reader, want)
            looked = want
            self._read[uid] = (looked, found)
        return t in found


def _vouched(conn: sqlite3.Connection, shas: dict[int, str]) -> set[int]:
    """The contents whose whole text the index holds, as they are now."""
    out: set[int] = set()
    cids = list(shas)
    for i in range(0, len(cids), 500):
        part = cids[i:i + 500]
        q = f"SELECT cid, sha256 FROM contents WHERE truncated = 0 AND cid IN ({','.join('?' * len(part))})"
        out.update(int(cid) for cid, sha in conn.execute(q, part) if shas.get(int(cid)) == sha)
    return out


def _query(conn: sqlite3.Connection, t: Term) -> set[int]:
    """Contents matching one folded term, exactly (the rule of store/searchtext.py)."""
    kind, s = t
    if s == "":
        return {int(r[0]) for r in conn.execute("SELECT cid FROM contents")}
    if kind == BODY_KEY:
        exact, cols = "instr(body, :t) > 0", "{body}"
    else:
        exact, cols = "(instr(head || body, :t) > 0 OR instr(extra, :t) > 0)", "{head body extra}"
    if len(s) >= 3 and "\n" not in s and "\r" not in s:
        # trigrams narrow; a term without a line break cannot span header and body, so one
        # column holds it; instr() then confirms on the stored text
        sql = f"SELECT rowid FROM docs WHERE docs MATCH :m AND {exact}"
        params = {"m": f'{cols} : "' + s.replace('"', '""') + '"', "t": s}
    else:  # too short for trigrams, or spanning: the stored text, still no message is read
        sql = f"SELECT rowid FROM docs WHERE {exact}"
        params = {"t": s}
    return {int(r[0]) for r in conn.execute(sql, params)}


def _scan_content(store: Store, info: DatabaseInfo, cid: int, terms: list[Term]) -> set[Term]:
    with _stream(store, info, cid) as reader:
        if reader is None:
            return set()
        return searchtext.find(reader, terms)


def _counter_path(path: str) -> str:
    return os.path.splitext(path)[0] + ".searches"


def _searches(path: str) -> int:
    try:
        with open(_counter_path(path), encoding="ascii") as f:
            return int(f.read().strip() or 0)
    except (OSError, ValueError):
        return 0


def _count_search(path: str) -> None:
    """One more search answered from the index (a statistic: not fsync'd; searches never
    write the index file itself)."""
    with _lock:
        n = _searches(path) + 1
        tmp = _counter_path(path) + ".tmp"
        try:
            with open(tmp, "w", encoding="ascii") as f:
                f.write(f"{n}\n")
            os.replace(tmp, _counter_path(path))
        except OSError:
            pass


__all__ = [
    "BODY_KEY", "DAMAGED", "MISSING", "NEW", "NONE", "READY", "TEXT_KEY", "FolderSearch", "FtiError",
    "PopulateReport", "Status",
    "configure", "create", "delete", "index_folder", "index_path", "match_each", "populate", "search", "settings",
    "status", "update_due",
]
