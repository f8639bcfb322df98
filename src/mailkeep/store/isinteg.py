"""isinteg: logical integrity checks (and repairs) of one mailbox or public folder database.

Exchange 2003's ``isinteg`` checks what eseutil cannot see: the store's own tables and the
rules between them. Each test here checks one group of the invariants of
``store/schema.py``; ``-fix`` repairs what it finds, in engine transactions only.

Invariants:
- The database must be dismounted (not mounted by the store, and not meant to be:
  ``Server.mount_intended`` false); isinteg mounts it privately, runs the tests and
  dismounts it again, leaving it dismounted.
- Without ``fix`` nothing changes: every test reads one snapshot (a read transaction).
  With ``fix`` each test is one write transaction, committed when the test ends, so a later
  test sees the repairs of an earlier one. An error repaired counts as an error *and* a
  fix; a second run reports no error.
- Each inconsistency is counted by exactly one test (documented per test), so counts are
  exact and a damage shows up once.
- Repairs never lose a message whose mailbox exists: a message whose folder is gone moves to
  the mailbox's "Lost and Found" folder; a mailbox row missing while the directory still
  homes its account here is re-created. Only rows that cannot be reached any more (their
  mailbox is gone from the database and the directory) or whose bytes are gone are deleted.
- Content is deleted only when no message or deleted item names it (counted afresh, never
  trusting ``refs``), and a stream only when no other content row names it.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol

from mailkeep.directory import dn as dnmod
from mailkeep.engine import errors as ese
from mailkeep.engine.database import Database
from mailkeep.engine.errors import EseError
from mailkeep.engine.transaction import Transaction
from mailkeep.store import folders, schema
from mailkeep.store.mailboxes import Owner
from mailkeep.store.server import ConfigError, DatabaseInfo

if TYPE_CHECKING:
    from mailkeep.store.store import Store

LOST_AND_FOUND = "Lost and Found"
# Run order: a test sees the repairs of the tests before it (mailbox rows and standard
# folders before the folder tree, the tree before messages, reference counts and folder
# counters last, when no other test changes rows any more).
TESTS: tuple[str, ...] = ("tombstone", "mailbox", "fldsub", "message", "dumpster", "content", "msgref", "folder")
TITLES = {
    "tombstone": "Mailbox Tombstone", "mailbox": "Mailbox", "fldsub": "Sub-folders", "message": "Message",
    "dumpster": "Deleted Messages", "content": "Message Content", "msgref": "Message Reference Count",
    "folder": "Folder",
}
GROUPS: dict[str, tuple[str, ...]] = {"alltests": TESTS, "allfoldertests": ("fldsub", "folder")}


class IsintegError(Exception):
    """isinteg could not run; ``usage`` when the request itself is wrong (CLI exit 2)."""

    def __init__(self, message: str, *, usage: bool = False) -> None:
        super().__init__(message)
        self.usage = usage


def hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}h:{s % 3600 // 60}m:{s % 60}s"


@dataclass
class TestResult:
    name: str
    title: str
    errors: int = 0
    warnings: int = 0
    fixes: int = 0
    rows: int = 0
    seconds: float = 0.0
    findings: list[str] = field(default_factory=list)
    unfixed: int = 0  # errors found and not repaired

    def line(self) -> str:
        return (f"Test {self.title} result: {self.errors} error(s); {self.warnings} warning(s); {self.fixes} fix(es);"
                f" {self.rows} row(s); time: {hms(self.seconds)}")


@dataclass
class IsintegReport:
    server: str
    database: str
    kind: str
    fix: bool
    results: list[TestResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results)

    @property
    def warnings(self) -> int:
        return sum(r.warnings for r in self.results)

    @property
    def fixes(self) -> int:
        return sum(r.fixes for r in self.results)

    @property
    def unfixed(self) -> int:
        return sum(r.unfixed for r in self.results)

    def result(self, name: str) -> TestResult:
        return next(r for r in self.results if r.name == name)

    def lines(self, *, verbose: bool = False) -> list[str]:
        mode = "check and fix" if self.fix else "check only"
        out = [f"Isinteg of {self.database} ({self.kind}) on server {self.server}: {mode}"]
        for r in self.results:
            if verbose:
                out.extend(r.findings)
            out.append(r.line())
        out += [
            ". . . . . SUMMARY . . . . .",
            f"Total number of tests : {len(self.results)}",
            f"Total number of warnings : {self.warnings}",
            f"Total number of errors : {self.errors}",
            f"Total number of fixes : {self.fixes}",
            f"Total time : {hms(self.seconds)}",
        ]
        return out


def _now() -> float:
    return time.monotonic()


def expand_tests(names: list[str]) -> list[str]:
    """Test names (case-insensitive, groups expanded) in run order; unknown ones refused."""
    wanted: set[str] = set()
    for raw in names:
        name = raw.strip().lower()
        if name in GROUPS:
            wanted.update(GROUPS[name])
        elif name in TESTS:
            wanted.add(name)
        else:
            valid = ", ".join([*GROUPS, *TESTS])
            raise IsintegError(f"unknown test {raw.strip()!r}; valid tests: {valid}", usage=True)
    if not wanted:
        raise IsintegError(f"no test given; use -test alltests or -test TEST[,TEST...] ({', '.join(TESTS)})",
                           usage=True)
    return [t for t in TESTS if t in wanted]


# -- running -----------------------------------------------------------------------------------------
def run(store: Store, db_name: str, tests: list[str], *, fix: bool) -> IsintegReport:
    """Run ``tests`` on the dismounted database ``db_name`` (name, SG/DB, DN or GUID)."""
    wanted = expand_tests(tests)
    try:
        info = store.server.database(db_name)
    except ConfigError as e:
        raise IsintegError(str(e), usage=True) from e
    if store.is_mounted(info) or store.server.mount_intended(info):
        how = "" if store.is_mounted(info) else " (the store mounts it whenever it runs)"
        raise IsintegError(f"{info.kind} {info.path_name} is mounted{how}; isinteg needs it dismounted. "
                           f"Dismount it first: mailkeep db dismount {info.name}")
    if not os.path.exists(info.edb):
        raise IsintegError(f"the files of {info.kind} {info.path_name} do not exist ({info.edb}); "
                           "restore them (or mount the database once) before running isinteg")
    report = IsintegReport(store.server.name, info.path_name, info.kind, fix)
    t0 = _now()
    _mount(store, info)
    try:
        state = _RunState(store, info)
        for name in wanted:
            report.results.append(_run_test(state, name, fix))
    finally:
        store.dismount(info, remember=False)
        # Store.mount records the intent to stay mounted; this private mount must not.
        if store.server.mount_intended(info):
            store.server.set_mount_intended(info, False)
    report.seconds = _now() - t0
    return report


def _mount(store: Store, info: DatabaseInfo) -> None:
    try:
        store.mount(info)
    except EseError as e:
        if e.number == ese.FileAccessDenied:
            raise IsintegError(
                f"storage group {info.sg.name} is in use by another running Mailkeep process (for example "
                f"'mailkeep serve'): {e.detail} isinteg needs the database dismounted and its storage group "
                "free; stop that process and run isinteg again") from e
        raise IsintegError(f"cannot open {info.kind} {info.path_name}: {e}") from e
    except ConfigError as e:
        raise IsintegError(str(e)) from e
    except KeyError as e:  # Store.mount could not complete the database's own rows
        raise IsintegError(f"cannot mount {info.kind} {info.path_name}: {e}") from e


def _run_test(state: _RunState, name: str, fix: bool) -> TestResult:
    result = TestResult(name, TITLES[name])
    t0 = _now()
    check = CHECKS[name]
    if fix:
        with state.store.write(state.info) as (txn, db):
            check(_Ctx(state, txn, db, txn, result))
    else:
        with state.store.read(state.info) as (r, db):
            check(_Ctx(state, r, db, None, result))
    result.seconds = _now() - t0
    return result


class _Reader(Protocol):
    def get(self, db: Database, table: str, key: tuple[Any, ...]) -> dict[str, Any] | None: ...

    def scan(self, db: Database, table: str, **kw: Any) -> Iterator[dict[str, Any]]: ...

    def open_stream(self, db: Database, stream_id: int) -> Any: ...


class _RunState:
    """What the tests of one run share: the store, the database, directory look-ups."""

    def __init__(self, store: Store, info: DatabaseInfo) -> None:
        self.store = store
        self.info = info
        self.now = store.clock()
        self._owners: dict[str, Owner | None] = {}

    def home_owner(self, guid: str) -> Owner | None:
        """The directory account (user or system attendant) whose mailbox GUID is ``guid``
        and whose ``homeMDB`` is this database, if any; for a public folder store's own GUID,
        the database."""
        if guid not in self._owners:
            self._owners[guid] = self._find_owner(guid)
        return self._owners[guid]

    def _find_owner(self, guid: str) -> Owner | None:
        if self.info.public and guid == str(self.info.guid):  # the hierarchy: owned by the database itself
            return Owner(self.info.dn, "", self.info.name, "", "", kind=schema.PUBLIC)
        try:
            raw = uuid.UUID(guid).bytes_le
        except ValueError:
            return None
        d = self.store.directory
        for e in d.mailbox_owners(raw):
            if _same_dn(str(e.text("homeMDB") or ""), self.info.dn):
                return Owner.of(e)
        srv = self.store.server
        sa = d.get(srv.system_attendant_dn)
        if sa is not None and sa.first("msExchMailboxGUID") == raw and _same_dn(str(sa.text("homeMDB") or ""),
                                                                                 self.info.dn):
            return Owner.of(sa, kind=schema.SYSTEM_ATTENDANT, server_legacy=srv.legacy_dn)
        return None


def _same_dn(a: str, b: str) -> bool:
    try:
        return bool(a) and dnmod.normalize(a) == dnmod.normalize(b)
    except (dnmod.DnError, ValueError):
        return a.lower() == b.lower()


@dataclass
class _Ctx:
    """One test's view: ``r`` reads (the write transaction itself when fixing), ``txn`` is
    set only when fixing."""

    state: _RunState
    r: _Reader
    db: Database
    txn: Transaction | None
    result: TestResult
    _known: dict[str, bool] = field(default_factory=dict)
    _stream_users: dict[int, int] | None = None

    @property
    def w(self) -> Transaction:
        assert self.txn is not None
        return self.txn

    @property
    def now(self) -> float:
        return self.state.now

    def mailbox_known(self, guid: str) -> bool:
        """The mailbox exists: its row is here, or the directory homes its account here
        (the mailbox test re-creates that row; other tests never delete its data)."""
        if guid not in self._known:
            self._known[guid] = self.has_row(guid) or self.state.home_owner(guid) is not None
        return self._known[guid]

    def has_row(self, guid: str) -> bool:
        return self.r.get(self.db, "mailbox", (guid,)) is not None

    def stream_users(self) -> dict[int, int]:
        """How many content rows name each stream (kept up to date by ``_delete_content``)."""
        if self._stream_users is None:
            self._stream_users = {}
            for c in self.r.scan(self.db, "content"):
                self._stream_users[int(c["stream"])] = self._stream_users.get(int(c["stream"]), 0) + 1
        return self._stream_users

    def error(self, text: str, repair: Callable[[], str] | None = None) -> None:
        self.result.errors += 1
        if not self._finding("ERROR", text, repair):
            self.result.unfixed += 1

    def warning(self, text: str, repair: Callable[[], str] | None = None) -> None:
        self.result.warnings += 1
        self._finding("WARNING", text, repair)

    def _finding(self, level: str, text: str, repair: Callable[[], str] | None) -> bool:
        if self.txn is None or repair is None:
            self.result.findings.append(f"    {level}: {text}")
            return False
        how = repair()
        self.result.fixes += 1
        self.result.findings.append(f"    {level}: {text} -- FIXED: {how}")
        return True


# -- row helpers -------------------------------------------------------------------------------------
def _rows(ctx: _Ctx, table: str, **kw: Any) -> list[dict[str, Any]]:
    return [dict(x) for x in ctx.r.scan(ctx.db, table, **kw)]


def _true_refs(r: _Reader, db: Database, cid: int) -> int:
    return sum(1 for _ in r.scan(db, "message", index="bycontent", prefix=(cid,))) + sum(
        1 for _ in r.scan(db, "dumpster", index="bycontent", prefix=(cid,)))


def _msg_text(row: dict[str, Any]) -> str:
    mid = f" (Message-ID {row['message_id']})" if row.get("message_id") else ""
    return f"message UID {row['uid']} in folder {row['fid']} of mailbox {row['mailbox']}{mid}"


def _item_text(row: dict[str, Any]) -> str:
    mid = f" (Message-ID {row['message_id']})" if row.get("message_id") else ""
    return f"deleted item {row['did']} of mailbox {row['mailbox']}{mid}"


def _folder_text(row: dict[str, Any]) -> str:
    return f"folder {row['fid']} {row['name']!r} of mailbox {row['mailbox']}"


def _delete_content(ctx: _Ctx, row: dict[str, Any]) -> None:
    """The content row and its stream (kept when another content row names the stream)."""
    users = ctx.stream_users()
    stream = int(row["stream"])
    ctx.w.delete(ctx.db, "content", (row["cid"],))
    users[stream] = users.get(stream, 1) - 1
    if users[stream] > 0:
        return
    try:
        ctx.w.delete_stream(ctx.db, stream)
    except KeyError:
        pass  # the stream was already gone


def _release(ctx: _Ctx, cid: int) -> str:
    """After a row naming ``cid`` went: the content goes when nothing names it any more;
    otherwise one reference fewer (the msgref test corrects a count that was wrong)."""
    row = ctx.w.get(ctx.db, "content", (cid,))
    if row is None:
        return f"its content {cid} was already gone"
    if _true_refs(ctx.w, ctx.db, cid) == 0:
        _delete_content(ctx, row)
        return f"content {cid} deleted (nothing else refers to it)"
    ctx.w.update(ctx.db, "content", (cid,), {"refs": max(1, int(row["refs"]) - 1)})
    return f"content {cid} kept (still referred to)"


def _unlink_message(txn: Transaction, db: Database, row: dict[str, Any]) -> None:
    """Remove a message row, keeping its folder's counters (not its content's references)."""
    txn.delete(db, "message", (row["mailbox"], row["fid"], row["uid"]))
    folder = txn.get(db, "folder", (row["mailbox"], row["fid"]))
    if folder is not None:
        unread = folders.SEEN not in folders.flag_set(row["flags"])
        txn.update(db, "folder", (row["mailbox"], row["fid"]), {
            "messages": max(0, int(folder["messages"]) - 1), "unread": max(0, int(folder["unread"]) - unread),
        })


def _delete_message(ctx: _Ctx, row: dict[str, Any]) -> str:
    _unlink_message(ctx.w, ctx.db, row)
    return "deleted; " + _release(ctx, int(row["content"]))


def _create_folder(
    txn: Transaction, db: Database, guid: str, parent: int, name: str, now: float, special: str | None = None,
) -> int:
    """``folders.new_folder``, first moving the mailbox's next folder id past every folder it
    has (a damaged counter must not make the repair itself fail)."""
    mb = txn.get(db, "mailbox", (guid,))
    top = max((int(f["fid"]) for f in txn.scan(db, "folder", prefix=(guid,))), default=schema.ROOT_FID)
    if mb is not None and int(mb["next_fid"] or 0) <= top:
        txn.update(db, "mailbox", (guid,), {"next_fid": top + 1})
    return folders.new_folder(txn, db, guid, parent, name, now, special=special)


def _lost_and_found(txn: Transaction, db: Database, guid: str, now: float) -> int:
    found = folders.find_child(txn, db, guid, schema.ROOT_FID, LOST_AND_FOUND)
    if found is not None:
        return int(found["fid"])
    return _create_folder(txn, db, guid, schema.ROOT_FID, LOST_AND_FOUND, now)


def _free_name(txn: Transaction, db: Database, guid: str, parent: int, name: str, fid: int) -> str:
    """``name`` if no other folder under ``parent`` has it, else ``name (fid)`` (then numbered)."""
    candidates = [name, f"{name} ({fid})", *(f"{name} ({fid}-{n})" for n in range(2, 1000))]
    for cand in candidates:
        other = folders.find_child(txn, db, guid, parent, cand)
        if other is None or int(other["fid"]) == fid:
            return cand
    raise RuntimeError(f"no free folder name for {name!r} under folder {parent}")


def _reparent(ctx: _Ctx, row: dict[str, Any]) -> str:
    txn, db, guid, fid = ctx.w, ctx.db, row["mailbox"], int(row["fid"])
    lf = _lost_and_found(txn, db, guid, ctx.now)
    name = _free_name(txn, db, guid, lf, row["name"], fid)
    txn.update(db, "folder", (guid, fid), {"parent": lf, "name": name})
    renamed = f" as {name!r}" if name != row["name"] else ""
    return f"folder {fid} moved under {LOST_AND_FOUND!r} (folder {lf}){renamed}"


def _disconnect(ctx: _Ctx, guid: str) -> str:
    ctx.w.update(ctx.db, "mailbox", (guid,), {"state": schema.DISCONNECTED, "disconnected_at": ctx.now})
    return f"mailbox {guid} marked disconnected"


# -- tombstone ---------------------------------------------------------------------------------------
def check_tombstone(ctx: _Ctx) -> None:
    """A GUID in the tombstone table must not be a connected mailbox (it cannot be logged on
    to or delivered to here): error; fix marks the mailbox disconnected."""
    tombs = _rows(ctx, "tombstone")
    ctx.result.rows = len(tombs)
    for t in tombs:
        mb = ctx.r.get(ctx.db, "mailbox", (t["guid"],))
        if mb is None or mb["state"] != schema.CONNECTED:
            continue
        home = f", new home {t['new_home']}" if t["new_home"] else ""
        ctx.error(f"mailbox {t['guid']} is in the tombstone table ({t['reason']}{home}) but is connected",
                  partial(_disconnect, ctx, t["guid"]))


# -- mailbox -----------------------------------------------------------------------------------------
def check_mailbox(ctx: _Ctx) -> None:
    """Mailbox rows: rows missing while the directory homes their account here (error; fix
    re-creates the row), the next folder id (error; fix raises it), the root folder of every
    mailbox and the standard folders of every non-public one (error; fix re-creates them), and
    two connected mailboxes of one owner (warning; fix disconnects those whose GUID is not the
    owner's current msExchMailboxGUID)."""
    mailboxes = _rows(ctx, "mailbox")
    ctx.result.rows = len(mailboxes)
    restored = _check_missing_mailboxes(ctx, {m["guid"] for m in mailboxes})
    for mb in mailboxes + restored:
        _check_next_fid(ctx, mb)
        _check_root(ctx, mb)
        if mb["kind"] != schema.PUBLIC:
            _check_standard_folders(ctx, mb)
    _check_duplicate_owners(ctx, mailboxes)


def _orphan_guids(ctx: _Ctx, known: set[str]) -> dict[str, int]:
    """Mailbox GUIDs that folder, message or deleted item rows name but no mailbox row has:
    how many rows each."""
    found: dict[str, int] = {}
    for table in ("folder", "message", "dumpster"):
        for row in ctx.r.scan(ctx.db, table):
            if row["mailbox"] not in known:
                found[row["mailbox"]] = found.get(row["mailbox"], 0) + 1
    return found


def _check_missing_mailboxes(ctx: _Ctx, known: set[str]) -> list[dict[str, Any]]:
    """The mailbox rows to re-create (the other checks of this test go on with them)."""
    restored = []
    for guid, n in sorted(_orphan_guids(ctx, known).items()):
        owner = ctx.state.home_owner(guid)
        if owner is None:
            continue  # unreachable: fldsub, message and dumpster report (and remove) its rows
        top = max((int(f["fid"]) for f in ctx.r.scan(ctx.db, "folder", prefix=(guid,))), default=schema.ROOT_FID)
        row = {
            **owner.row(), "guid": guid, "kind": owner.kind, "state": schema.CONNECTED,
            "server_legacy": owner.server_legacy, "created": ctx.now, "last_logon": None, "disconnected_at": None,
            "next_fid": top + 1,
        }
        restored.append(row)
        ctx.error(f"mailbox {guid} has {n} folder, message or deleted item row(s) but no mailbox row; "
                  f"{owner.dn} is homed here with that mailbox GUID", partial(_insert_mailbox, ctx, row))
    return restored


def _insert_mailbox(ctx: _Ctx, row: dict[str, Any]) -> str:
    ctx.w.insert(ctx.db, "mailbox", row)
    return f"mailbox row re-created for {row['owner_dn']}"


def _check_next_fid(ctx: _Ctx, mb: dict[str, Any]) -> None:
    guid = mb["guid"]
    top = max((int(f["fid"]) for f in ctx.r.scan(ctx.db, "folder", prefix=(guid,))), default=schema.ROOT_FID)
    if int(mb["next_fid"] or 0) > top:
        return

    def repair() -> str:
        ctx.w.update(ctx.db, "mailbox", (guid,), {"next_fid": top + 1})
        return f"set to {top + 1}"

    ctx.error(f"mailbox {guid}: next folder id {mb['next_fid']} is not above the highest folder id {top}", repair)


def _check_root(ctx: _Ctx, mb: dict[str, Any]) -> None:
    guid = mb["guid"]
    if ctx.r.get(ctx.db, "folder", (guid, schema.ROOT_FID)) is not None:
        return
    name = "Public Folders" if mb["kind"] == schema.PUBLIC else "Top of Information Store"

    def repair() -> str:
        ctx.w.insert(ctx.db, "folder", {
            "mailbox": guid, "fid": schema.ROOT_FID, "parent": 0, "name": name, "special": "root",
            "uidvalidity": folders.new_uidvalidity(), "uidnext": 1, "messages": 0, "unread": 0, "created": ctx.now,
        })
        return f"root folder {name!r} re-created"

    ctx.error(f"mailbox {guid} ({mb['display_name']}) has no root folder", repair)


def _check_standard_folders(ctx: _Ctx, mb: dict[str, Any]) -> None:
    guid = mb["guid"]
    have = {f["special"] for f in ctx.r.scan(ctx.db, "folder", prefix=(guid,))}
    for special, name in schema.STANDARD_FOLDERS:
        if special not in have:
            ctx.error(f"mailbox {guid} ({mb['display_name']}) has no {name} folder",
                      partial(_restore_standard, ctx, guid, special, name))


def _restore_standard(ctx: _Ctx, guid: str, special: str, name: str) -> str:
    """As delivery does: a top-level folder of that name becomes the standard folder again;
    otherwise a new one is created."""
    txn, db = ctx.w, ctx.db
    existing = folders.find_child(txn, db, guid, schema.ROOT_FID, name)
    if existing is not None:
        txn.update(db, "folder", (guid, existing["fid"]), {"special": special})
        return f"folder {existing['fid']} {existing['name']!r} is the {name} folder again"
    fid = _create_folder(txn, db, guid, schema.ROOT_FID, name, ctx.now, special=special)
    return f"re-created as folder {fid}"


def _check_duplicate_owners(ctx: _Ctx, mailboxes: list[dict[str, Any]]) -> None:
    by_owner: dict[str, list[dict[str, Any]]] = {}
    for mb in mailboxes:
        if mb["kind"] != schema.PUBLIC and mb["state"] == schema.CONNECTED and mb["owner_dn"]:
            by_owner.setdefault(str(mb["owner_dn"]).lower(), []).append(mb)
    for group in by_owner.values():
        if len(group) < 2:
            continue
        owner_dn = str(group[0]["owner_dn"])
        guids = ", ".join(m["guid"] for m in group)
        current = _current_guid(ctx, owner_dn)
        if current is None:
            ctx.warning(f"mailboxes {guids} are all connected to {owner_dn}, which has no mailbox GUID in the "
                        "directory; left as they are (the Mailbox Cleanup Agent decides)")
            continue
        for mb in group:
            if mb["guid"] != current:
                ctx.warning(f"mailboxes {guids} are all connected to {owner_dn}; its mailbox GUID is {current}, "
                            f"not {mb['guid']}", partial(_disconnect, ctx, mb["guid"]))


def _current_guid(ctx: _Ctx, owner_dn: str) -> str | None:
    e = ctx.state.store.directory.get(owner_dn)
    raw = e.first("msExchMailboxGUID") if e is not None else None
    return str(uuid.UUID(bytes_le=raw)) if isinstance(raw, bytes) and len(raw) == 16 else None


# -- fldsub ------------------------------------------------------------------------------------------
def check_fldsub(ctx: _Ctx) -> None:
    """The folder tree of each mailbox: folders of a mailbox that is gone (error; fix deletes
    the folder rows), a root whose parent is not 0, folders whose parent does not exist,
    cycles not reachable from the root (error; fix moves the folder, or the lowest folder of
    the cycle, under "Lost and Found" at the top), and two sibling folders with one name
    (error; fix renames the later one). A missing root is the mailbox test's error; here it
    is a warning and top-level folders are taken as attached to it."""
    rows = _rows(ctx, "folder")
    ctx.result.rows = len(rows)
    by_mailbox: dict[str, dict[int, dict[str, Any]]] = {}
    for row in rows:
        by_mailbox.setdefault(row["mailbox"], {})[int(row["fid"])] = row
    for guid, tree in by_mailbox.items():
        if not ctx.mailbox_known(guid):
            for row in tree.values():
                ctx.error(f"{_folder_text(row)}: the mailbox does not exist", partial(_delete_folder, ctx, row))
            continue
        _check_tree(ctx, guid, tree)


def _delete_folder(ctx: _Ctx, row: dict[str, Any]) -> str:
    ctx.w.delete(ctx.db, "folder", (row["mailbox"], row["fid"]))
    return "folder row deleted"


def _check_tree(ctx: _Ctx, guid: str, tree: dict[int, dict[str, Any]]) -> None:
    root = tree.get(schema.ROOT_FID)
    if root is None:
        ctx.warning(f"mailbox {guid} has no root folder (the mailbox test re-creates it)")
    elif int(root["parent"] or 0) != 0:
        ctx.error(f"root folder of mailbox {guid} has parent {root['parent']} (must be 0)",
                  partial(_set_parent, ctx, guid, schema.ROOT_FID, 0))
    movable = ctx.has_row(guid)  # "Lost and Found" needs the mailbox row (the mailbox test restores it)
    later = "" if movable else " (run the mailbox test first: the mailbox row is missing)"
    for fid, row in sorted(tree.items()):
        parent = int(row["parent"])
        if fid != schema.ROOT_FID and parent not in tree and parent != schema.ROOT_FID:
            ctx.error(f"{_folder_text(row)}: its parent folder {parent} does not exist{later}",
                      partial(_reparent, ctx, row) if movable else None)
    for cycle in _cycles(tree):
        head = tree[cycle[0]]
        listed = ", ".join(str(f) for f in cycle)
        ctx.error(f"folders {listed} of mailbox {guid} form a cycle (not reachable from the root){later}",
                  partial(_reparent, ctx, head) if movable else None)
    _check_sibling_names(ctx, guid, tree)


def _set_parent(ctx: _Ctx, guid: str, fid: int, parent: int) -> str:
    ctx.w.update(ctx.db, "folder", (guid, fid), {"parent": parent})
    return f"parent set to {parent}"


def _cycles(tree: dict[int, dict[str, Any]]) -> list[list[int]]:
    """Each set of folders whose parent chain loops without reaching the root, once (sorted)."""
    done: set[int] = set()
    out: list[list[int]] = []
    for start in sorted(tree):
        path: list[int] = []
        cur = start
        while cur != schema.ROOT_FID and cur not in done and cur in tree and cur not in path:
            path.append(cur)
            cur = int(tree[cur]["parent"])
        if cur in path:
            out.append(sorted(path[path.index(cur):]))
        done.update(path)
    return out


def _check_sibling_names(ctx: _Ctx, guid: str, tree: dict[int, dict[str, Any]]) -> None:
    siblings: dict[tuple[int, str], list[dict[str, Any]]] = {}
    for fid, row in sorted(tree.items()):
        if fid != schema.ROOT_FID and (int(row["parent"]) in tree or int(row["parent"]) == schema.ROOT_FID):
            siblings.setdefault((int(row["parent"]), str(row["name"]).lower()), []).append(row)
    for (parent, _name), group in siblings.items():
        if len(group) < 2:
            continue
        group.sort(key=lambda r: (r["special"] is None, int(r["fid"])))
        for row in group[1:]:
            ctx.error(f"folders {group[0]['fid']} and {row['fid']} of mailbox {guid} are both named "
                      f"{row['name']!r} under folder {parent}", partial(_rename_apart, ctx, row))


def _rename_apart(ctx: _Ctx, row: dict[str, Any]) -> str:
    name = _free_name(ctx.w, ctx.db, row["mailbox"], int(row["parent"]), f"{row['name']} ({row['fid']})",
                      int(row["fid"]))
    ctx.w.update(ctx.db, "folder", (row["mailbox"], row["fid"]), {"name": name})
    return f"folder {row['fid']} renamed {name!r}"


# -- message -----------------------------------------------------------------------------------------
def check_message(ctx: _Ctx) -> None:
    """Message rows whose mailbox is gone (error; fix deletes the row and drops its content
    reference) or whose folder is gone (error; fix moves the message, same content, flags and
    date, to the mailbox's "Lost and Found" folder with a new UID). Missing content is the
    content test's."""
    folders_here = {(f["mailbox"], int(f["fid"])) for f in ctx.r.scan(ctx.db, "folder")}
    gone: list[dict[str, Any]] = []
    homeless: list[dict[str, Any]] = []
    for row in ctx.r.scan(ctx.db, "message"):
        ctx.result.rows += 1
        if not ctx.mailbox_known(row["mailbox"]):
            gone.append(dict(row))
        elif (row["mailbox"], int(row["fid"])) not in folders_here:
            homeless.append(dict(row))
    for row in gone:
        ctx.error(f"{_msg_text(row)}: the mailbox does not exist", partial(_delete_message, ctx, row))
    for row in homeless:
        movable = ctx.has_row(row["mailbox"])
        later = "" if movable else " (run the mailbox test first: the mailbox row is missing)"
        ctx.error(f"{_msg_text(row)}: the folder does not exist{later}",
                  partial(_to_lost_and_found, ctx, row) if movable else None)


def _to_lost_and_found(ctx: _Ctx, row: dict[str, Any]) -> str:
    txn, db, guid = ctx.w, ctx.db, row["mailbox"]
    lf = _lost_and_found(txn, db, guid, ctx.now)
    _uidnext_past_rows(txn, db, guid, lf)
    txn.delete(db, "message", (guid, row["fid"], row["uid"]))
    uid = folders.insert_message(txn, db, guid, lf, int(row["content"]), folders.meta_of(row),
                                 flags=row["flags"] or "", internal_date=row["internal_date"])
    return f"moved to {LOST_AND_FOUND!r} (folder {lf}) as UID {uid}"


def _uidnext_past_rows(txn: Transaction, db: Database, guid: str, fid: int) -> None:
    """Keep ``insert_message`` from colliding with a row when the folder's UID counter is
    damaged (the folder test reports such a counter when it is still wrong)."""
    folder = txn.get(db, "folder", (guid, fid))
    last = list(txn.scan(db, "message", prefix=(guid, fid), reverse=True, limit=1))
    if folder is not None and last and int(folder["uidnext"]) <= int(last[0]["uid"]):
        txn.update(db, "folder", (guid, fid), {"uidnext": int(last[0]["uid"]) + 1})


# -- dumpster ----------------------------------------------------------------------------------------
def check_dumpster(ctx: _Ctx) -> None:
    """Deleted items (deleted item retention) whose mailbox is gone or whose content is
    missing: error; fix deletes the item (dropping its content reference)."""
    items = _rows(ctx, "dumpster")
    ctx.result.rows = len(items)
    for row in items:
        if not ctx.mailbox_known(row["mailbox"]):
            why = "the mailbox does not exist"
        elif ctx.r.get(ctx.db, "content", (row["content"],)) is None:
            why = f"its content {row['content']} does not exist"
        else:
            continue
        ctx.error(f"{_item_text(row)}: {why}", partial(_delete_item, ctx, row))


def _delete_item(ctx: _Ctx, row: dict[str, Any]) -> str:
    ctx.w.delete(ctx.db, "dumpster", (row["mailbox"], row["did"]))
    return "deleted; " + _release(ctx, int(row["content"]))


# -- content -----------------------------------------------------------------------------------------
def check_content(ctx: _Ctx) -> None:
    """Content rows nothing refers to (error; fix deletes row and stream), content whose
    stream is gone from the .stm (error; fix deletes it with the messages and deleted items
    naming it: their bytes are lost), messages naming content that does not exist (error; fix
    deletes the message row), and the next content id (error; fix raises it)."""
    contents = _rows(ctx, "content")
    ctx.result.rows = len(contents)
    for row in contents:
        cid = int(row["cid"])
        if _true_refs(ctx.r, ctx.db, cid) == 0:
            ctx.error(f"content {cid} ({row['size']} bytes): no message or deleted item refers to it",
                      partial(_delete_unreferenced, ctx, row))
        elif not _stream_exists(ctx, int(row["stream"])):
            ctx.error(f"content {cid}: its stream {row['stream']} is missing from the .stm",
                      partial(_delete_lost_content, ctx, row))
    cids = {int(c["cid"]) for c in contents}
    for msg in [dict(m) for m in ctx.r.scan(ctx.db, "message") if int(m["content"]) not in cids]:
        ctx.error(f"{_msg_text(msg)}: its content {msg['content']} does not exist",
                  partial(_delete_dangling, ctx, msg))
    _check_next_cid(ctx, max(cids, default=0))


def _stream_exists(ctx: _Ctx, stream: int) -> bool:
    try:
        reader = ctx.r.open_stream(ctx.db, stream)
    except KeyError:
        return False
    reader.close()
    return True


def _delete_unreferenced(ctx: _Ctx, row: dict[str, Any]) -> str:
    _delete_content(ctx, row)
    return "row and stream deleted"


def _delete_dangling(ctx: _Ctx, row: dict[str, Any]) -> str:
    _unlink_message(ctx.w, ctx.db, row)
    return "message row deleted"


def _delete_lost_content(ctx: _Ctx, row: dict[str, Any]) -> str:
    txn, db, cid = ctx.w, ctx.db, int(row["cid"])
    msgs = [dict(m) for m in txn.scan(db, "message", index="bycontent", prefix=(cid,))]
    items = [dict(d) for d in txn.scan(db, "dumpster", index="bycontent", prefix=(cid,))]
    for m in msgs:
        _unlink_message(txn, db, m)
    for d in items:
        txn.delete(db, "dumpster", (d["mailbox"], d["did"]))
    txn.delete(db, "content", (cid,))
    return f"content row deleted with the {len(msgs)} message(s) and {len(items)} deleted item(s) naming it"


def _check_next_cid(ctx: _Ctx, top: int) -> None:
    row = ctx.r.get(ctx.db, "info", ("next_cid",))
    have = int(row["value"]) if row else 1
    if have > top:
        return

    def repair() -> str:
        ctx.w.put(ctx.db, "info", {"key": "next_cid", "value": top + 1})
        return f"set to {top + 1}"

    ctx.error(f"next content id {have} is not above the highest content id {top}", repair)


# -- msgref ------------------------------------------------------------------------------------------
def check_msgref(ctx: _Ctx) -> None:
    """``content.refs`` equals the number of message and deleted item rows naming the
    content: error; fix sets it. Content nothing names is the content test's."""
    contents = _rows(ctx, "content")
    ctx.result.rows = len(contents)
    for row in contents:
        cid = int(row["cid"])
        true = _true_refs(ctx.r, ctx.db, cid)
        if true == 0 or int(row["refs"]) == true:
            continue

        def repair(c: int = cid, n: int = true) -> str:
            ctx.w.update(ctx.db, "content", (c,), {"refs": n})
            return f"set to {n}"

        ctx.error(f"content {cid}: reference count {row['refs']}, but {true} message(s) and deleted item(s) "
                  "refer to it", repair)


# -- folder ------------------------------------------------------------------------------------------
def check_folder(ctx: _Ctx) -> None:
    """Each folder's message and unread counts equal its message rows, and its next UID is
    above every UID it holds: one error per wrong counter; fix sets it."""
    rows = _rows(ctx, "folder")
    ctx.result.rows = len(rows)
    for f in rows:
        key = (f["mailbox"], int(f["fid"]))
        n = unread = top = 0
        for m in ctx.r.scan(ctx.db, "message", prefix=key):
            n += 1
            unread += folders.SEEN not in folders.flag_set(m["flags"])
            top = max(top, int(m["uid"]))
        what = _folder_text(f)
        if int(f["messages"]) != n:
            ctx.error(f"{what}: message count {f['messages']}, but it holds {n} message(s)",
                      partial(_set_folder, ctx, key, "messages", n))
        if int(f["unread"]) != unread:
            ctx.error(f"{what}: unread count {f['unread']}, but {unread} of its messages are unread",
                      partial(_set_folder, ctx, key, "unread", unread))
        if int(f["uidnext"]) <= top:
            ctx.error(f"{what}: next UID {f['uidnext']} is not above its highest UID {top}",
                      partial(_set_folder, ctx, key, "uidnext", top + 1))


def _set_folder(ctx: _Ctx, key: tuple[str, int], column: str, value: int) -> str:
    ctx.w.update(ctx.db, "folder", key, {column: value})
    return f"set to {value}"


CHECKS: dict[str, Callable[[_Ctx], None]] = {
    "tombstone": check_tombstone, "mailbox": check_mailbox, "fldsub": check_fldsub, "message": check_message,
    "dumpster": check_dumpster, "content": check_content, "msgref": check_msgref, "folder": check_folder,
}
