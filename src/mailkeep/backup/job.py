"""A backup job: storage groups or databases of a running store, streamed into media.

The job drives the engine's streaming backup API (engine/backup.py) per storage group and
writes what it yields into one backup set: the database files (``.edb``, ``.stm``), a patch
entry per database (what ``Patch Current Full Backup`` shows after a restore), and the log
generations, under the logical paths of the guide's backup tree
(``SERVER/Information Store/First Storage Group/Mailbox Store (SERVER)/priv1.edb``).

Invariants:
- A storage group's backup either completes (truncation and header stamps done by the
  engine) or is ended as failed (checkpoint unfrozen, headers untouched); the set records
  which storage groups completed, so a restore never uses a failed one.
- Events (in the backed-up server's log): 8000 when the job starts, 8019 when it ends
  (error level if anything failed or the agent went away).
- The source (server side) and the sink (media side) meet only through :class:`Item`s and a
  final summary, so the same job runs in-process or across the HTTP API (remote backup).
- The report section is appended whatever happens (an administrator reads the log).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

from mailkeep.backup import report
from mailkeep.backup.media import MediaError, MediaReader, MediaWriter, SetInfo, VerifyResult, verify
from mailkeep.engine.backup import BackupKind
from mailkeep.engine.errors import EseError
from mailkeep.engine.logformat import gen_file_name
from mailkeep.store.server import DatabaseInfo, StorageGroupInfo
from mailkeep.store.store import Store

SOURCE = "NTBackup"
DATABASE_KINDS = ("normal", "copy", "incremental", "differential")


class BackupFailed(Exception):
    """Nothing could be backed up; the media were not touched."""


class SelectionError(ValueError):
    """A selection names nothing this server has; the message lists what it has."""


@dataclass
class GroupPlan:
    sg: StorageGroupInfo
    databases: list[DatabaseInfo]
    whole: bool  # the whole storage group was selected
    skipped: list[tuple[DatabaseInfo, str]] = field(default_factory=list)


@dataclass
class Options:
    kind: str = "normal"
    description: str = ""
    media_name: str | None = None
    replace: bool = False
    owner_only: bool = False
    compress: bool = False
    verify: bool = False
    detailed: bool = False
    user: str = ""


@dataclass
class JobResult:
    set: SetInfo
    errors: list[str] = field(default_factory=list)
    truncated: dict[str, list[int]] = field(default_factory=dict)
    verify: VerifyResult | None = None
    report: str = ""
    removed_incomplete: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors and (self.verify is None or not self.verify.different)


@dataclass
class Selection:
    """A SELECTION list split by what takes each part: storage groups and databases (the
    server's store), the configuration set (the server), file paths (this machine)."""

    databases: list[str] = field(default_factory=list)
    config: bool = False
    files: list[str] = field(default_factory=list)

    @property
    def server_side(self) -> list[str]:
        return self.databases + (["Configuration"] if self.config else [])


def split_selection(selection: list[str]) -> Selection:
    out = Selection()
    for raw in selection:
        text = raw.strip()
        if text.startswith("/"):
            out.files.append(text)
        elif text.strip("/").lower() == "configuration" or text.strip("/").lower().endswith("/configuration"):
            out.config = True
        else:
            out.databases.append(text)
    return out


def logical_root(store: Store) -> str:
    return f"{store.server.name}/Information Store"


def plan(store: Store, selection: list[str]) -> list[GroupPlan]:
    """Resolve SELECTION strings (§10) to storage groups and databases, in server order."""
    srv = store.server
    root = logical_root(store)
    groups = srv.storage_groups()
    chosen: dict[str, GroupPlan] = {}
    for raw in selection:
        text = raw.strip().strip("/")
        if text.lower().endswith("configuration") and split_selection([raw]).config:
            continue
        if text.lower() == root.lower() or text.lower() == "information store":
            for g in groups:
                chosen[g.prefix] = GroupPlan(g, srv.databases(g), True)
            continue
        rest = text[len(root) + 1:] if text.lower().startswith(root.lower() + "/") else None
        if rest is None:
            raise SelectionError(
                f"{raw!r} is not part of this server's backup tree; choose '{root}', '{root}/STORAGE GROUP' or "
                f"'{root}/STORAGE GROUP/DATABASE' (storage groups: {', '.join(g.name for g in groups)})")
        sg_name, _, db_name = rest.partition("/")
        sg = next((x for x in groups if x.name.lower() == sg_name.lower()), None)
        if sg is None:
            raise SelectionError(f"{raw!r}: this server has no storage group {sg_name!r} "
                                 f"(it has: {', '.join(x.name for x in groups)})")
        dbs = srv.databases(sg)
        if not db_name:
            chosen[sg.prefix] = GroupPlan(sg, dbs, True)
            continue
        d = next((x for x in dbs if x.name.lower() == db_name.lower()), None)
        if d is None:
            raise SelectionError(f"{raw!r}: storage group {sg.name} has no database {db_name!r} "
                                 f"(it has: {', '.join(x.name for x in dbs)})")
        p = chosen.setdefault(sg.prefix, GroupPlan(sg, [], False))
        if d not in p.databases:
            p.databases.append(d)
    order = {g.prefix: i for i, g in enumerate(groups)}
    return sorted(chosen.values(), key=lambda p: order[p.sg.prefix])


@dataclass
class Item:
    """One file of a backup as the source produces it: the sink writes it to media."""

    name: str
    role: str
    size: int
    chunks: Iterator[bytes]
    meta: dict[str, Any] = field(default_factory=dict)


Source = Generator["Item | dict[str, Any]", None, None]  # items, then one summary dict


def source(store: Store, selection: list[str], kind_name: str, *, key_password: str | None = None) -> Source:
    """The server side of a backup: each storage group through the engine's streaming API,
    yielding the files in order and finally a summary (storage groups, errors, truncation).
    Closing the generator early (the agent went away) ends the running storage group's
    backup as failed: checkpoint unfrozen, error events."""
    if kind_name not in DATABASE_KINDS:
        raise SelectionError(f"the information store and the configuration set take the types "
                             f"{', '.join(DATABASE_KINDS)}; {kind_name!r} applies to file sets only")
    kind = BackupKind(kind_name)
    sel = split_selection(selection)
    if sel.files:
        raise SelectionError(f"file paths ({', '.join(sel.files)}) are backed up by the machine that runs "
                             "'mailkeep backup run', not through the server")
    plans = plan(store, sel.databases)
    if not plans and not sel.config:
        raise SelectionError("nothing selected: name the information store, a storage group, a database or "
                             "SERVER/Configuration")
    ev = store.events
    root = logical_root(store)
    ev.info(SOURCE, 8000, f"Begin Operation: {kind.value} backup of {', '.join(selection)}.", kind=kind.value)
    summary: dict[str, Any] = {"storage_groups": [], "errors": [], "truncated": {}, "server": store.server.name}
    ok = False
    try:
        for p in plans:
            record = yield from _group_items(store, p, kind, root, summary)
            summary["storage_groups"].append(record)
        if sel.config:
            from mailkeep.backup import config

            try:
                yield from config.items(store, kind.value, key_password, summary)
            except (config.ConfigSetError, EseError, OSError) as e:
                summary["errors"].append(f"Configuration: {e}")
        ok = not summary["errors"]
        yield summary
    finally:
        if ok:
            ev.info(SOURCE, 8019, f"End Operation: {kind.value} backup of {', '.join(selection)} completed "
                    "successfully.", kind=kind.value)
        else:
            why = "; ".join(summary["errors"]) or "the backup agent stopped before the end"
            ev.error(SOURCE, 8019, f"End Operation: {kind.value} backup of {', '.join(selection)} did not complete: "
                     f"{why}", kind=kind.value)


def _group_items(store: Store, p: GroupPlan, kind: BackupKind, root: str,
                 summary: dict[str, Any]) -> Generator[Item, None, dict[str, Any]]:
    sg_info = p.sg
    base = f"{root}/{sg_info.name}"
    errors: list[str] = summary["errors"]
    record: dict[str, Any] = {"name": sg_info.name, "prefix": sg_info.prefix, "status": "failed", "databases": []}
    mounted = []
    for d in p.databases:
        if store.is_mounted(d):
            mounted.append(d)
        else:
            errors.append(f"{sg_info.name}/{d.name} was not backed up: it is dismounted (mount it, or leave it out "
                          "of the selection)")
    if not mounted:
        record["status"] = "failed: no mounted database"
        return record
    sg = store.group(sg_info)
    handles = [store.handle(d).db for d in mounted]
    everything = [d.edb for d in store.server.databases(sg_info)]
    try:
        b = sg.begin_backup(kind, handles, group_databases=everything)
    except EseError as e:
        errors.append(f"{sg_info.name}: {e}")
        record["status"] = f"failed: {e}"
        return record
    record.update(log_signature=sg.signature, kind=kind.value)
    guard = _Guard()
    try:
        for f in b.database_files():
            info = next(d for d in mounted if _same(d.edb, f.database))
            with b.open(f) as r:
                yield Item(f"{base}/{info.name}/{f.name}", f.role, f.size, _guarded(r, f.size, guard),
                           {"database": info.name})
            guard.check()
        for f in b.log_files():
            with b.open(f) as r:
                yield Item(f"{base}/{gen_file_name(sg_info.prefix, f.generation)}", "log", f.size,
                           _guarded(r, f.size, guard), {"generation": f.generation})
            guard.check()
        for d, db in zip(mounted, handles, strict=True):
            if kind.full:
                data = b.patch(db)
                yield Item(f"{base}/{d.name}/{_stem(d.edb)}.pat", "patch", len(data), iter([data]),
                           {"database": d.name})
            record["databases"].append({"name": d.name, "guid": str(d.guid), "public": d.public, "edb": d.edb,
                                        "stm": d.stm, "signature": db.header.signature})
        if kind.truncates:
            summary["truncated"][sg_info.name] = b.truncate()
        b.end(ok=True)
        record.update(status="complete", low_gen=b.low_gen, high_gen=b.high_gen)
    except Exception as e:
        b.end(ok=False)
        errors.append(f"{sg_info.name}: {e}")
        record["status"] = f"failed: {e}"
    except BaseException:  # GeneratorExit: the agent went away
        b.end(ok=False)
        raise
    return record


def run(store: Store, media_path: str, selection: list[str], opts: Options, *,
        progress: Callable[[str, int], None] | None = None, key_password: str | None = None) -> JobResult:
    """A backup of this process's own store (and configuration) into local media."""
    return write_set([source(store, selection, opts.kind, key_password=key_password)], media_path, selection, opts,
                     progress=progress)


def write_set(sources: list[Source], media_path: str, selection: list[str], opts: Options, *,
              progress: Callable[[str, int], None] | None = None,
              after: list[Callable[[], None]] | None = None) -> JobResult:
    """The agent side: everything the sources yield becomes one set on the media. Each
    source yields items and ends with a summary; ``after`` runs once the set's catalog is on
    the media (a file set's archive marks)."""
    kind = opts.kind
    it = itertools.chain.from_iterable(sources)
    try:
        first = next(it)  # a refused or wrong request fails here, before the media are touched
    except StopIteration:
        raise SelectionError("the backup produced nothing") from None
    media = None
    sw = None
    res: JobResult | None = None
    summaries = 0
    try:
        for item in itertools.chain([first], it):
            if isinstance(item, dict):
                summaries += 1
                if sw is None and item.get("errors") and summaries == len(sources):
                    # nothing at all was backed up: no set is written
                    raise BackupFailed("nothing was backed up: " + "; ".join(item["errors"]))
            if sw is None:
                media = MediaWriter.open(media_path, replace=opts.replace, media_name=opts.media_name,
                                         owner_only=opts.owner_only)
                server = item.get("server", "") if isinstance(item, dict) else item.name.split("/", 1)[0]
                sw = media.begin_set(kind=kind, description=opts.description or
                                     f"Set created {time.strftime('%Y-%m-%d at %H:%M')}", source=server,
                                     selection=list(selection), user=opts.user, compressed=opts.compress)
                res = JobResult(sw.info, removed_incomplete=media.removed_incomplete)
            assert res is not None
            if isinstance(item, dict):
                _merge(sw.info.extra, res, item)
                continue
            tick: Callable[[int], None] | None = None
            if progress is not None:
                tick = _ticker(progress, item.name)
            sw.add(item.name, item.role, item.chunks, item.size, progress=tick, **item.meta)
        if sw is None or res is None or media is None:
            raise SelectionError("the backup produced nothing")
        if summaries != len(sources):
            raise MediaError("a backup stream ended without its summary: the set is incomplete")
        res.set = sw.finish()
    except BaseException as e:
        for src in sources:
            src.close()
        if media is not None:
            media.abandon()
        _failure_report(selection, media_path, opts, e)
        raise
    media.close()
    for fn in after or []:
        fn()
    if opts.verify:
        res.verify = verify(MediaReader(media_path), res.set.number)
    res.report = _report(res, media_path, opts)
    return res


def _merge(extra: dict[str, Any], res: JobResult, summary: dict[str, Any]) -> None:
    extra.setdefault("storage_groups", []).extend(summary.get("storage_groups", []))
    for key in ("config", "files"):
        if key in summary:
            extra[key] = summary[key]
    res.errors.extend(summary.get("errors", []))
    for k, v in summary.get("truncated", {}).items():
        res.truncated[k] = list(v)


class _Guard:
    """A read that failed inside a file: the entry is completed with zeros (the tar stream
    must stay well-formed) and the storage group's backup is recorded as failed."""

    def __init__(self) -> None:
        self.failed: EseError | None = None

    def check(self) -> None:
        if self.failed is not None:
            raise self.failed


def _guarded(r: Any, size: int, guard: _Guard) -> Iterator[bytes]:
    sent = 0
    try:
        while chunk := r.read():
            sent += len(chunk)
            yield chunk
    except EseError as e:
        guard.failed = e
    while sent < size:
        n = min(1 << 20, size - sent)
        sent += n
        yield b"\0" * n


def _ticker(progress: Callable[[str, int], None], name: str) -> Callable[[int], None]:
    return lambda n: progress(name, n)


def _same(a: str, b: str) -> bool:
    import os

    return os.path.abspath(a) == os.path.abspath(b)


def _stem(path: str) -> str:
    import os

    return os.path.splitext(os.path.basename(path))[0]


def _chunks(r: Any) -> Any:
    while chunk := r.read():
        yield chunk


def _report(res: JobResult, media_path: str, opts: Options) -> str:
    s = res.set
    files = len(s.entries)
    dirs = len({e.name.rsplit("/", 1)[0] for e in s.entries})
    lines = [
        "Backup Status",
        "Operation: Backup",
        "Active backup destination: File",
        f'Media name: "{s.media_name}"',
        f'Backup of "{", ".join(s.selection)}"',
        f"Backup set #{s.number} on media #1",
        f'Backup description: "{s.description}"',
        f'Media name: "{s.media_name}"',
        f"Backup Type: {s.kind.capitalize()}",
        f"Backup started on {report.when(s.started)}.",
    ]
    if opts.detailed:
        lines += [f"  {e.name}  {report.number(e.size)} bytes  sha256 {e.sha256}" for e in s.entries]
    for err in res.errors:
        lines.append(f"Error: {err}")
    for sg_name, gens in res.truncated.items():
        if gens:
            lines.append(f"{sg_name}: log files {gens[0]} to {gens[-1]} truncated.")
    lines += [
        f"Backup completed on {report.when(s.completed or time.time())}." if not res.errors else
        f"Backup completed with errors on {report.when(s.completed or time.time())}.",
        f"Directories: {dirs}",
        f"Files: {files}",
        f"Bytes: {report.number(s.bytes)}",
        f"Time:  {report.duration((s.completed or time.time()) - s.started)}",
    ]
    text = report.append(lines)
    if res.verify is not None:
        text += verify_report(res.verify, media_path, "Verify After Backup")
    return text


def _failure_report(selection: list[str], media_path: str, opts: Options, e: BaseException) -> None:
    """A run that wrote no complete set still leaves its section in the backup log."""
    now = time.time()
    report.append([
        "Backup Status", "Operation: Backup", "Active backup destination: File",
        f"Active backup destination: {media_path}", f'Backup of "{", ".join(selection)}"',
        f"Backup Type: {opts.kind.capitalize()}", f"Error: {e}" if str(e) else f"Error: {type(e).__name__}",
        f"The backup did not complete on {report.when(now)}; no set was added to the media "
        "(an incomplete one is removed by the next backup to these media).",
    ])


def verify_report(v: VerifyResult, media_path: str, operation: str = "Verify") -> str:
    s = v.set
    lines = [
        "Verify Status",
        f"Operation: {operation}",
        "Active backup destination: File",
        f"Active backup destination: {media_path}",
        f'Verify of "{", ".join(s.selection)}"',
        f"Backup set #{s.number} on media #1",
        f'Backup description: "{s.description}"',
        f"Verify started on {report.when(v.started)}.",
        f"Verify completed on {report.when(v.completed)}.",
        f"Directories: {len({e.name.rsplit('/', 1)[0] for e in s.entries})}",
        f"Files: {v.files}",
        f"Different: {len(v.different)}",
    ]
    lines += [f"  Different: {name}" for name in v.different]
    lines += [f"Bytes: {report.number(v.bytes)}", f"Time:  {report.duration(v.completed - v.started)}"]
    return report.append(lines)
