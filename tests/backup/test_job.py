"""Backup jobs against a real store: media contents, catalogs, verify, reports, appends,
owner-only media, and what an interrupted backup leaves behind."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest

from mailkeep.backup import media as mediamod
from mailkeep.backup import report
from mailkeep.backup.job import Options, SelectionError, plan, run
from mailkeep.backup.media import MediaError, MediaReader, verify
from mailkeep.engine.logformat import gen_file_name
from mailkeep.store import delivery
from mailkeep.store.store import Store

ROOT = "EX1/Information Store"
SG = f"{ROOT}/First Storage Group"






def deliver(store: Store, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        msg = f"From: x@example.org\r\nMessage-ID: <m{i}@x>\r\nSubject: {i}\r\n\r\n{'body ' * 200}\r\n".encode()
        rep = delivery.deliver(store, BytesIO(msg), ["alice@contoso.com"], sender="x@example.org")
        assert rep.outcomes[0].status == delivery.DELIVERED


def test_selection_forms(store: Store) -> None:
    assert [(p.sg.name, [d.name for d in p.databases], p.whole) for p in plan(store, [ROOT])] == [
        ("First Storage Group", ["Mailbox Store (EX1)", "Public Folder Store (EX1)"], True)]
    p = plan(store, [f"{SG}/mailbox store (ex1)"])
    assert [(x.sg.name, [d.name for d in x.databases], x.whole) for x in p] == [
        ("First Storage Group", ["Mailbox Store (EX1)"], False)]
    with pytest.raises(SelectionError, match="has no storage group 'Second'.*it has: First Storage Group"):
        plan(store, [f"{ROOT}/Second"])
    with pytest.raises(SelectionError, match="is not part of this server's backup tree"):
        plan(store, ["EX2/Information Store"])


def test_normal_then_incremental_into_one_media(store: Store, tmp_path: Path) -> None:
    deliver(store, 40)
    media = str(tmp_path / "backup.bkf")
    r1 = run(store, media, [ROOT], Options(description="nightly", verify=True, user="Administrator"))
    assert r1.ok, r1.errors
    s1 = r1.set
    names = [e.name for e in s1.entries]
    assert names[:4] == [f"{SG}/Mailbox Store (EX1)/priv1.edb", f"{SG}/Mailbox Store (EX1)/priv1.stm",
                         f"{SG}/Public Folder Store (EX1)/pub1.edb", f"{SG}/Public Folder Store (EX1)/pub1.stm"]
    sgrec = s1.extra["storage_groups"][0]
    logs = [f"{SG}/{gen_file_name('E00', g)}" for g in range(sgrec["low_gen"], sgrec["high_gen"] + 1)]
    assert names[4:] == logs + [f"{SG}/Mailbox Store (EX1)/priv1.pat", f"{SG}/Public Folder Store (EX1)/pub1.pat"]
    assert sgrec["status"] == "complete" and s1.number == 1 and s1.kind == "normal"
    # any tar lists it
    with tarfile.open(media) as t:
        listed = t.getnames()
    assert listed[0] == "MAILKEEP-MEDIA.json" and "set-0001/CATALOG.json" in listed
    assert f"set-0001/{SG}/Mailbox Store (EX1)/priv1.edb" in listed
    # the report follows the guide's layout
    text = r1.report.splitlines()
    assert text[:10] == ["-" * 22, "Backup Status", "Operation: Backup", "Active backup destination: File",
                         f'Media name: "{s1.media_name}"', f'Backup of "{ROOT}"', "Backup set #1 on media #1",
                         'Backup description: "nightly"', f'Media name: "{s1.media_name}"', "Backup Type: Normal"]
    assert f"Files: {len(names)}" in text and "Verify Status" in text and "Different: 0" in text
    assert report.sections()[-1].startswith("Verify Status")
    # incremental appended: set 2 holds only logs, rolled first
    deliver(store, 30, 100)
    r2 = run(store, media, [ROOT], Options(kind="incremental"))
    assert r2.ok, r2.errors
    assert r2.set.number == 2 and all(e.role == "log" for e in r2.set.entries)
    rec2 = r2.set.extra["storage_groups"][0]
    assert rec2["low_gen"] <= sgrec["high_gen"] + 1 and rec2["high_gen"] > sgrec["high_gen"]
    rd = MediaReader(media)
    assert [(s.number, s.kind, s.status) for s in rd.sets()] == [(1, "normal", "complete"),
                                                                 (2, "incremental", "complete")]
    assert verify(rd, 1).different == [] and verify(rd, 2).different == []


def test_damaged_media_found_by_verify(store: Store, tmp_path: Path) -> None:
    deliver(store, 10)
    media = str(tmp_path / "b.bkf")
    res = run(store, media, [f"{SG}/Mailbox Store (EX1)"], Options())
    rd = MediaReader(media)
    e = next(x for x in res.set.entries if x.name.endswith("priv1.stm"))
    m = rd.member(1, e)
    with open(media, "r+b") as f:
        f.seek(m.offset_data + m.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    v = verify(MediaReader(media), 1)
    assert v.different == [e.name]


def test_compressed_entries_round_trip(store: Store, tmp_path: Path) -> None:
    deliver(store, 20)
    media = str(tmp_path / "c.bkf")
    res = run(store, media, [ROOT], Options(compress=True, verify=True))
    assert res.ok
    assert all(e.compression == "zstd" for e in res.set.entries if e.role != "patch")
    edb = next(e for e in res.set.entries if e.name.endswith("priv1.edb"))
    assert edb.stored_size < edb.size
    with tarfile.open(media) as t:
        assert f"set-0001/{SG}/Mailbox Store (EX1)/priv1.edb.zst" in t.getnames()


def test_interrupted_set_is_cut_off_at_the_next_append(store: Store, tmp_path: Path) -> None:
    deliver(store, 5)
    media = str(tmp_path / "i.bkf")
    run(store, media, [ROOT], Options())
    size_after_first = os.path.getsize(media)
    w = mediamod.MediaWriter.open(media)
    sw = w.begin_set(kind="copy", description="dies", source="EX1", selection=[ROOT], user="")
    sw.add("x/y.bin", "file", iter([b"a" * 5000]), 5000)
    w.f.flush()
    w.f.close()  # the process died: no catalog, no end-of-archive
    rd = MediaReader(media)
    assert [(s.number, s.status) for s in rd.sets()] == [(1, "complete"), (2, "incomplete")]
    assert verify(rd, 1).different == []
    r = run(store, media, [ROOT], Options(kind="copy"))
    assert r.removed_incomplete == [2] and r.set.number == 2 and r.set.status == "complete"
    assert [(s.number, s.kind) for s in MediaReader(media).sets()] == [(1, "normal"), (2, "copy")]
    assert os.path.getsize(media) > size_after_first


def test_owner_only_media_refused_to_another_user(store: Store, tmp_path: Path) -> None:
    shared = Path(tempfile.mkdtemp(prefix="mk-owner-", dir="/tmp"))  # reachable by another user
    try:
        owner_only_checks(store, shared)
    finally:
        shutil.rmtree(shared)


def owner_only_checks(store: Store, shared: Path) -> None:
    os.chmod(shared, 0o755)
    media = shared / "o.bkf"
    run(store, str(media), [ROOT], Options(owner_only=True))
    assert (media.stat().st_mode & 0o777) == 0o600
    hdr = MediaReader(str(media)).header
    assert hdr.owner_only and hdr.owner_uid == os.getuid()
    if os.getuid() != 0:
        pytest.skip("needs root to act as another user")
    assert as_other_user(lambda: MediaReader(str(media))) == "PermissionError"  # mode 0600 first
    os.chmod(media, 0o644)  # opened up by mistake: Mailkeep still refuses
    got = as_other_user(lambda: MediaReader(str(media)).check_access())
    assert got == f"MediaError: {media} is owner-only media of root (uid 0); nobody may not read it. Ask root."
    got = as_other_user(lambda: mediamod.MediaWriter.open(str(media)))
    assert got.startswith("MediaError: ") and "may not append to or replace it" in got


def as_other_user(fn: Callable[[], object], uid: int = 65534) -> str:
    """Run ``fn`` in a forked child as another user; the exception it raised, as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: no exec, the modules are loaded already
        os.close(r)
        try:
            os.setgid(uid)
            os.setuid(uid)
            fn()
            out = "no error"
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = f"{type(e).__name__}: {e}" if not isinstance(e, PermissionError) else "PermissionError"
        os.write(w, out.encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        text = f.read().decode()
    os.waitpid(pid, 0)
    return text


def test_hostile_member_names_refused(tmp_path: Path) -> None:
    media = tmp_path / "evil.bkf"
    with tarfile.open(media, "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in (("MAILKEEP-MEDIA.json", b'{"name":"x","guid":"g","created":0,"owner":"a",'
                                                   b'"owner_uid":0,"owner_only":false}'),
                           ("set-0001/../../etc/passwd", b"x")):
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, BytesIO(data))
    with pytest.raises(MediaError, match=r"unsafe name 'set-0001/\.\./\.\./etc/passwd'"):
        MediaReader(str(media))


def test_damaged_media_refuse_appending_instead_of_cutting_sets(store: Store, tmp_path: Path) -> None:
    """Review finding: a damaged header in set 2 made the next append truncate sets 2 and 3."""
    media = str(tmp_path / "d.bkf")
    for _ in range(3):
        assert run(store, media, [ROOT], Options(kind="copy")).ok
    rd = MediaReader(media)
    m = next(x for x in rd.members if x.name == "set-0002/SET.json")
    hdr = m.offset_data - 512  # its ustar header block
    with open(media, "r+b") as f:
        f.seek(hdr + 148)  # the header checksum field
        f.write(b"9999999")
    size = os.path.getsize(media)
    with pytest.raises(MediaError, match="is damaged at offset .*appending would cut it off"):
        run(store, media, [ROOT], Options(kind="copy"))
    assert os.path.getsize(media) == size  # nothing was cut
    assert verify(MediaReader(media), 1).different == []


def test_one_writer_per_media(store: Store, tmp_path: Path) -> None:
    media = str(tmp_path / "l.bkf")
    w = mediamod.MediaWriter.open(media)
    try:
        with pytest.raises(MediaError, match="is being written by another backup right now"):
            mediamod.MediaWriter.open(media, replace=True)
    finally:
        w.close()


def test_damage_in_one_file_fails_that_storage_group_and_the_run_reports_it(store: Store, tmp_path: Path) -> None:
    deliver(store, 5)
    info = store.server.database("Mailbox Store (EX1)")
    m = store.handle(info)
    m.sg.checkpoint()
    conn = m.db.reader()
    off, _length, _sha = next((o, n, h) for _i, o, n, h in m.db.streams(conn))
    m.db.release_reader(conn)
    with open(info.stm, "r+b") as f:
        f.seek(off + 5)
        f.write(b"\x00\xff")
    media = str(tmp_path / "x.bkf")
    res = run(store, media, [ROOT], Options())
    assert not res.ok
    assert len(res.errors) == 1 and res.errors[0].startswith("First Storage Group: -1018 (JET_errReadVerifyFailure)")
    rec = res.set.extra["storage_groups"][0]
    assert rec["status"].startswith("failed: -1018")
    assert "Error: First Storage Group: -1018" in res.report and "Backup completed with errors on" in res.report
    assert store.group(info.sg).backup is None and not store.group(info.sg).frozen
    ev = [e.id for e in store.events.read(source="NTBackup")]
    assert ev[-2:] == [8000, 8019] and next(
        e for e in store.events.read(source="NTBackup", event_id=8019)).level == "error"
