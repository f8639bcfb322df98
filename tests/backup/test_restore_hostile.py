"""Restore from hostile media: media crafted by hand (Python's tarfile and json, the layout of
docs/media-format.md) whose members and catalogs try to write outside the restore's targets.

Every crafted media file starts from a real set (a normal backup of First Storage Group), so
only the one hostile detail differs; ``test_an_untouched_copy_restores`` proves the crafting
itself is faithful. Each hostile restore must fail with a message naming what is wrong, and
nothing may change outside the temporary folder and the target database files: the whole test
folder is snapshot before and after, with the folders a ``..`` or absolute name would reach,
and ``/etc/passwd``. restore.py takes target paths from the target server's directory objects
and log generation numbers, never from names or paths on the media; the last test holds it to
that for the source paths kept in restore.env too.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest

from mailkeep.backup.job import Options, run
from mailkeep.backup.media import MediaError
from mailkeep.backup.restore import ENV, RestoreError, hard_recovery, restore
from mailkeep.store import delivery
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.store import Store

SG_NAME = "First Storage Group"
SG = f"EX1/Information Store/{SG_NAME}"
DB = "Mailbox Store (EX1)"
BASE = f"set-0001/{SG}"
CATALOG = "set-0001/CATALOG.json"
ESCAPE = "mailkeep-hostile-escape"  # the file name every escaping name aims at

Items = list[tuple[tarfile.TarInfo, bytes]]
Craft = Callable[[dict[str, Any], Items], None]






@pytest.fixture
def good(store: Store, tmp_path: Path) -> tuple[Path, list[str]]:
    """Real media (one normal set of the storage group) and the Message-IDs it holds; the
    mailbox store is then dismounted, so a restore into it would go ahead."""
    ids = []
    for i in range(5):
        mid = f"<h{i}@x>"
        msg = f"Message-ID: {mid}\r\nSubject: {i}\r\n\r\n{'body ' * 50}\r\n".encode()
        assert delivery.deliver(store, BytesIO(msg), ["alice@contoso.com"]).outcomes[0].status == delivery.DELIVERED
        ids.append(mid)
    media = tmp_path / "good.bkf"
    assert run(store, str(media), [SG], Options()).ok
    store.dismount(store.server.database(DB))
    return media, sorted(ids)


# -- crafting -------------------------------------------------------------------------------------
def read_members(media: Path) -> Items:
    with tarfile.open(media) as t:
        out = []
        for ti in t.getmembers():
            f = t.extractfile(ti) if ti.isreg() else None
            out.append((copy.copy(ti), f.read() if f is not None else b""))
    return out


def craft(good: Path, dst: Path, change: Craft) -> Path:
    """A copy of ``good`` written by hand, after ``change`` edited set 1's catalog (a dict) and
    the members (a list of (TarInfo, bytes); the catalog member is rewritten from the dict)."""
    items = read_members(good)
    i = next(n for n, (ti, _d) in enumerate(items) if ti.name == CATALOG)
    cat = json.loads(items[i][1])
    change(cat, items)
    items = [(ti, json.dumps(cat).encode() if ti.name == CATALOG else data) for ti, data in items]
    with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT) as t:
        for ti, data in items:
            if ti.isreg():
                ti.size = len(data)
                t.addfile(ti, io.BytesIO(data))
            else:
                t.addfile(ti)
    return dst


def entry(cat: dict[str, Any], suffix: str) -> dict[str, Any]:
    return next(e for e in cat["entries"] if e["name"].endswith(suffix))


def member(items: Items, suffix: str) -> tarfile.TarInfo:
    return next(ti for ti, _d in items if ti.name.endswith(suffix))


def rename(new: str, suffix: str, *, member_too: bool = True) -> Craft:
    """Give one entry (and its member) another logical name."""
    def change(cat: dict[str, Any], items: Items) -> None:
        entry(cat, suffix)["name"] = new
        if member_too:
            member(items, suffix).name = new if new.startswith("/") else f"set-0001/{new}"
    return change


def link(kind: bytes, suffix: str, target: str) -> Craft:
    """Replace one member by a symbolic or hard link (the catalog still lists the file)."""
    def change(cat: dict[str, Any], items: Items) -> None:
        ti = member(items, suffix)
        ti.type = kind
        ti.linkname = target
        ti.size = 0
    return change


def generation(value: Any) -> Craft:
    def change(cat: dict[str, Any], items: Items) -> None:
        entry(cat, ".log")["meta"]["generation"] = value
    return change


def drop_member(suffix: str) -> Craft:
    def change(cat: dict[str, Any], items: Items) -> None:
        items.remove(next(x for x in items if x[0].name.endswith(suffix)))
    return change


def group(**fields: Any) -> Craft:
    def change(cat: dict[str, Any], items: Items) -> None:
        cat["extra"]["storage_groups"][0].update(fields)
    return change


def mailbox_record(**fields: Any) -> Craft:
    def change(cat: dict[str, Any], items: Items) -> None:
        rec = next(d for d in cat["extra"]["storage_groups"][0]["databases"] if d["name"] == DB)
        rec.update(fields)
    return change


def rename_database(new: str) -> Craft:
    """The mailbox store under another name, everywhere the catalog names it."""
    def change(cat: dict[str, Any], items: Items) -> None:
        mailbox_record(name=new)(cat, items)
        for e in cat["entries"]:
            if e["meta"].get("database") == DB:
                e["meta"]["database"] = new
    return change


def damage(suffix: str) -> Craft:
    """One byte of a member changed; the catalog keeps the original checksum."""
    def change(cat: dict[str, Any], items: Items) -> None:
        i = next(n for n, (ti, _d) in enumerate(items) if ti.name.endswith(suffix))
        ti, data = items[i]
        items[i] = (ti, data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    return change


def patch_bytes(raw: bytes) -> Craft:
    def change(cat: dict[str, Any], items: Items) -> None:
        i = next(n for n, (ti, _d) in enumerate(items) if ti.name.endswith("priv1.pat"))
        items[i] = (items[i][0], raw)
        e = entry(cat, "priv1.pat")
        e.update(size=len(raw), stored_size=len(raw), sha256=hashlib.sha256(raw).hexdigest())
    return change


def compressed(suffix: str, make: Callable[[], bytes]) -> Craft:
    """One entry stored as zstd with the payload ``make`` gives (made when the media are
    crafted, not when the tests are collected); the catalog keeps its size and checksum."""
    def change(cat: dict[str, Any], items: Items) -> None:
        payload = make()
        i = next(n for n, (ti, _d) in enumerate(items) if ti.name.endswith(suffix))
        ti = items[i][0]
        ti.name += ".zst"
        items[i] = (ti, payload)
        entry(cat, suffix).update(compression="zstd", stored_size=len(payload))
    return change


def bomb(size: int) -> bytes:
    """A small zstd frame that expands to ``size`` zero bytes."""
    import zstandard

    out = io.BytesIO()
    with zstandard.ZstdCompressor(level=1).stream_writer(out, closefd=False) as w:
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            w.write(zeros)
    return out.getvalue()


def duplicate_log(cat: dict[str, Any], items: Items) -> None:
    """A second log entry (and member) claiming generation 1 under another name."""
    e = dict(entry(cat, ".log"), name=f"{SG}/E0000000001-again.log")
    cat["entries"].append(e)
    ti, data = next(x for x in items if x[0].name.endswith(".log"))
    again = copy.copy(ti)
    again.name = f"set-0001/{e['name']}"
    items.insert(items.index((ti, data)) + 1, (again, data))


def both(*changes: Craft) -> Craft:
    def change(cat: dict[str, Any], items: Items) -> None:
        for c in changes:
            c(cat, items)
    return change


# -- what may change -------------------------------------------------------------------------------
def tree(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and link under ``root``: (size, mtime_ns, SHA-256 or link target)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            if os.path.islink(p):
                out[p] = (0, 0, "-> " + os.readlink(p))
                continue
            with open(p, "rb") as f:
                out[p] = (st.st_size, st.st_mtime_ns, hashlib.file_digest(f, "sha256").hexdigest())
    return out


def around(tmp_path: Path) -> dict[str, list[str]]:
    """The folders an escaping name could reach, listed (not walked), and /etc/passwd."""
    folders = {tmp_path.parent, tmp_path.parent.parent, Path("/tmp"), Path("/"), Path.cwd()}
    out = {str(f): sorted(os.listdir(f)) for f in folders}
    with open("/etc/passwd", "rb") as f:
        out["/etc/passwd"] = [hashlib.sha256(f.read()).hexdigest(), str(os.stat("/etc/passwd").st_mtime_ns)]
    return out


def changed(before: dict[str, tuple[int, int, str]], after: dict[str, tuple[int, int, str]]) -> set[str]:
    return {p for p in before.keys() | after.keys() if before.get(p) != after.get(p)}


def inbox(store: Store) -> list[str]:
    return sorted(m.message_id for m in open_mailbox(store, "alice").messages("INBOX"))


# -- the control ----------------------------------------------------------------------------------
def test_an_untouched_copy_restores(store: Store, good: tuple[Path, list[str]], tmp_path: Path) -> None:
    media = craft(good[0], tmp_path / "copy.bkf", lambda cat, items: None)
    res = restore(store, str(media), 1, [f"{SG}/{DB}"], str(tmp_path / "temp"), last=True, mount=True)
    assert res.mounted == [f"{SG_NAME}/{DB}"]
    assert inbox(store) == good[1]


# -- refused, and nothing written -------------------------------------------------------------------
ESC = f"{SG}/../../../../../../../../../../tmp/{ESCAPE}"
CASES: list[tuple[str, Craft, type[Exception], str]] = [
    ("dotdot-member", rename(ESC, ".log"), MediaError,
     f"unsafe name 'set-0001/{ESC}' on the media (empty, '.' or '..' component)"),
    ("dotdot-catalog-only", rename(ESC, ".log", member_too=False), MediaError,
     f"unsafe name '{ESC}' on the media (empty, '.' or '..' component)"),
    ("absolute-member", rename(f"/tmp/{ESCAPE}", "priv1.edb"), MediaError,
     f"unsafe name '/tmp/{ESCAPE}' on the media (absolute, empty, or with NUL/backslash)"),
    ("absolute-catalog-only", rename(f"/tmp/{ESCAPE}", "priv1.edb", member_too=False), MediaError,
     f"unsafe name '/tmp/{ESCAPE}' on the media (absolute, empty, or with NUL/backslash)"),
    ("symlink-edb", link(tarfile.SYMTYPE, "priv1.edb", "/etc/passwd"), MediaError,
     f"member '{BASE}/{DB}/priv1.edb' is not a regular file (links and devices are never written by Mailkeep)"),
    ("symlink-log", link(tarfile.SYMTYPE, ".log", f"/tmp/{ESCAPE}"), MediaError,
     f"member '{BASE}/E0000000001.log' is not a regular file (links and devices are never written by Mailkeep)"),
    ("hardlink-stm", link(tarfile.LNKTYPE, "priv1.stm", "etc/passwd"), MediaError,
     f"member '{BASE}/{DB}/priv1.stm' is not a regular file"),
    ("generation-text", generation("../../1"), MediaError,
     f"log entry '{SG}/E0000000001.log' of set #1 has generation '../../1', not a generation number"),
    ("generation-negative", generation(-3), MediaError,
     f"log entry '{SG}/E0000000001.log' of set #1 has generation -3, not a generation number"),
    ("generation-zero", generation(0), MediaError,
     f"log entry '{SG}/E0000000001.log' of set #1 has generation 0, not a generation number"),
    ("generation-float", generation(1.5), MediaError,
     f"log entry '{SG}/E0000000001.log' of set #1 has generation 1.5, not a generation number"),
    ("generation-bool", generation(True), MediaError,
     f"log entry '{SG}/E0000000001.log' of set #1 has generation True, not a generation number"),
    ("generation-missing", generation(None), MediaError,
     f"log entry '{SG}/E0000000001.log' of set #1 has generation None, not a generation number"),
    ("generation-elsewhere", generation(2 ** 40), MediaError,
     f"backup set #1 holds log generations {2 ** 40}-{2 ** 40} of {SG_NAME} where its catalog says 1-1"),
    ("generation-duplicate", duplicate_log, MediaError,
     f"backup set #1 holds log generations 1, 1 of {SG_NAME} where its catalog says 1-1"),
    ("low-gen-text", group(low_gen="1; rm -rf /"), MediaError,
     f"backup set #1: the catalog's record of storage group {SG_NAME} is malformed (low_gen '1; rm -rf /' is "
     "not a generation number)"),
    ("groups-not-a-list", lambda cat, items: cat["extra"].update(storage_groups="/etc/passwd"), MediaError,
     "backup set #1: the catalog's storage group records are malformed (not a list)"),
    ("group-name-not-text", group(name=["..", ".."]), MediaError,
     "backup set #1: the catalog's storage group records are malformed (a record without a name)"),
    ("database-edb-not-text", mailbox_record(edb={"path": "/etc/passwd"}), MediaError,
     f"backup set #1: the catalog's record of storage group {SG_NAME} is malformed (a database record with a "
     "missing or wrong field)"),
    ("group-name-escape", group(name=f"../../../../tmp/{ESCAPE}"), RestoreError,
     f"the media's storage group '../../../../tmp/{ESCAPE}' does not exist on server EX1 (it has: {SG_NAME})"),
    ("database-name-escape", rename_database(f"../../../tmp/{ESCAPE}"), RestoreError,
     f"the media's database '../../../tmp/{ESCAPE}' does not exist in storage group {SG_NAME} of server EX1 (it "
     f"has: {DB}, Public Folder Store (EX1))"),
    ("missing-stm-member", drop_member("priv1.stm"), MediaError,
     f"set #1 lists {SG}/{DB}/priv1.stm but the media has no member {BASE}/{DB}/priv1.stm"),
    ("missing-log-member", drop_member(".log"), MediaError,
     f"set #1 lists {SG}/E0000000001.log but the media has no member {BASE}/E0000000001.log"),
    ("missing-patch-entry",
     lambda cat, items: cat["entries"].remove(entry(cat, "priv1.pat")), MediaError,
     f"backup set #1 lacks the patch of {DB}"),
    ("unknown-compression", lambda cat, items: entry(cat, "priv1.stm").update(compression="gzip"), MediaError,
     f"{SG}/{DB}/priv1.stm: unknown compression 'gzip'"),
    ("malformed-patch", patch_bytes(b"\xff" * 40), MediaError,
     f"the patch entry of {DB} in set #1 is malformed"),
    ("damaged-stm", damage("priv1.stm"), MediaError,
     f"{SG}/{DB}/priv1.stm: its SHA-256 on the media differs from the catalog's"),
    ("damaged-log", damage(".log"), MediaError,
     f"{SG}/E0000000001.log: its SHA-256 on the media differs from the catalog's"),
    ("zstd-garbage", compressed("priv1.stm", lambda: b"\x28\xb5\x2f\xfd" + b"\xff" * 64), MediaError,
     f"{SG}/{DB}/priv1.stm: its compressed data on the media are damaged ("),
    ("zstd-bomb", compressed("priv1.stm", lambda: bomb(256 << 20)), MediaError,
     f"{SG}/{DB}/priv1.stm: more than the "),
]


@pytest.mark.parametrize(("case", "change", "error", "message"), CASES, ids=[c[0] for c in CASES])
def test_hostile_media_are_refused_and_nothing_is_written(store: Store, good: tuple[Path, list[str]], tmp_path: Path,
                                                          case: str, change: Craft, error: type[Exception],
                                                          message: str) -> None:
    media = craft(good[0], tmp_path / f"{case}.bkf", change)
    temp = tmp_path / "temp"
    target = store.server.database(DB)
    before, outside = tree(tmp_path), around(tmp_path)
    selection = {"group-name-not-text": ["EX1/Information Store"], "group-name-escape": ["EX1/Information Store"],
                 "database-name-escape": [SG]}.get(case, [f"{SG}/{DB}"])
    read: dict[str, int] = {}

    def progress(name: str, n: int) -> None:
        read[name] = read.get(name, 0) + n

    with pytest.raises(error) as e:
        restore(store, str(media), 1, selection, str(temp), last=True, mount=True, progress=progress)
    assert message in str(e.value)
    assert all(n <= 1 << 20 for n in read.values()), read  # a bomb is stopped at once, not written out
    assert around(tmp_path) == outside
    assert not any(ESCAPE in p for p in os.listdir("/tmp"))
    # the event log and the backup log record a failed restore; the target keeps its files
    assert changed(before, tree(tmp_path)) <= {str(tmp_path / p) for p in ("data/events.jsonl", "state/backup.log")}
    assert [p for p in temp.rglob("*") if not p.is_dir()] == []
    assert os.path.exists(target.edb) and not store.is_mounted(target)


def test_source_paths_on_the_media_are_never_used(store: Store, good: tuple[Path, list[str]], tmp_path: Path) -> None:
    """The catalog's database record names /etc/passwd as the database's path at backup (and
    its storage group record another log prefix): a restore writes the target's own files,
    restore.env keeps the media's paths only as the record of where the database was, and
    hard recovery never opens them."""
    media = craft(good[0], tmp_path / "paths.bkf",
                  both(mailbox_record(edb="/etc/passwd", stm="/etc/shadow"), group(prefix="../../../etc")))
    temp = tmp_path / "temp"
    target = store.server.database(DB)
    before, outside = tree(tmp_path), around(tmp_path)
    res = restore(store, str(media), 1, [f"{SG}/{DB}"], str(temp))
    assert res.files == 3
    logs = {str(tmp_path / p) for p in ("data/events.jsonl", "state/backup.log")}
    folder = temp / SG_NAME
    diff = changed(before, tree(tmp_path))
    # the database's files, the logs and restore.env; server.json: the restored database is not
    # to be mounted before hard recovery
    assert diff == logs | {target.edb, target.stm, str(folder / ENV), str(folder / "E0000000001.log"),
                           str(tmp_path / "data" / "server.json")}, sorted(diff)
    env = json.loads((folder / ENV).read_text())
    assert [(d["source_edb"], d["source_stm"], d["dest_edb"], d["dest_stm"]) for d in env["databases"]] == [
        ("/etc/passwd", "/etc/shadow", target.edb, target.stm)]
    assert env["prefix"] == "E00"  # the target's prefix, not the media's
    hard_recovery(store, str(temp))
    assert not (folder / ENV).exists()
    store.mount(target)
    assert inbox(store) == good[1]
    assert around(tmp_path) == outside


def test_keep_damaged_moves_the_files_only_when_the_set_is_sound(store: Store, good: tuple[Path, list[str]],
                                                                 tmp_path: Path) -> None:
    """--keep-damaged moves the existing files aside only once the set's files were read whole
    and matched their checksums: damaged media leave the target's files where they were."""
    target = store.server.database(DB)
    kept, temp = tmp_path / "kept", tmp_path / "temp"
    with open(target.edb, "rb") as f:
        edb = hashlib.file_digest(f, "sha256").hexdigest()
    had = sorted(n for n in os.listdir(os.path.dirname(target.edb)) if n.startswith("priv1."))
    assert {"priv1.edb", "priv1.stm"} <= set(had)
    media = craft(good[0], tmp_path / "damaged.bkf", damage("priv1.stm"))
    with pytest.raises(MediaError, match="priv1.stm: its SHA-256 on the media differs from the catalog's"):
        restore(store, str(media), 1, [f"{SG}/{DB}"], str(temp), keep_damaged=str(kept))
    assert not kept.exists() and sorted(os.listdir(os.path.dirname(target.edb))).count("priv1.stm") == 1
    with open(target.edb, "rb") as f:
        assert hashlib.file_digest(f, "sha256").hexdigest() == edb
    res = restore(store, str(good[0]), 1, [f"{SG}/{DB}"], str(temp), keep_damaged=str(kept), last=True, mount=True)
    dest = kept / SG_NAME / DB  # each database's files in a folder of their own
    assert res.notes == [f"{SG_NAME}/{DB}: the existing files were moved to {dest} (Clean Shutdown)"]
    # (reading the old header for the note opens it: SQLite's side files go along)
    assert set(had) <= set(os.listdir(dest)) <= {"priv1.edb", "priv1.stm", "priv1.edb-wal", "priv1.edb-shm"}
    assert inbox(store) == good[1]
