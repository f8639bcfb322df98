"""The public folder store: hierarchy create/rename/delete, posts and reading them back."""

from __future__ import annotations

import pytest

from mailkeep.store.errors import StoreError
from mailkeep.store.public import PublicFolders, open_public
from mailkeep.store.setup import SetupResult
from mailkeep.store.store import Store
from tests.store.conftest import LOG_SIZE, message, source

COLLISION, NO_SUPPORT, NOT_FOUND = 0x80040604, 0x80040102, 0x8004010F


@pytest.fixture
def pf(store: Store, server: SetupResult) -> PublicFolders:
    return open_public(store)


def test_open_public(store: Store, server: SetupResult, pf: PublicFolders) -> None:
    assert pf.info.guid == server.public_store.guid
    assert pf.guid == str(server.public_store.guid)
    assert pf.folders() == []  # no standard folders: the hierarchy starts empty
    assert open_public(store, "Public Folder Store (Exchange1)").info.guid == server.public_store.guid
    assert open_public(store, "first storage group/public folder store (exchange1)").guid == pf.guid
    with pytest.raises(StoreError) as ei:
        open_public(store, "Mailbox Store (Exchange1)")
    assert (ei.value.code, ei.value.name) == (NOT_FOUND, "MAPI_E_NOT_FOUND")
    with pytest.raises(StoreError) as ei:
        open_public(store, "No Such Store")
    assert ei.value.code == NOT_FOUND
    store.dismount(server.public_store)
    with pytest.raises(StoreError) as ei:
        open_public(store)
    assert (ei.value.code, ei.value.name) == (0x8004011D, "MAPI_E_FAILONEPROVIDER")


def test_hierarchy_create(pf: PublicFolders) -> None:
    pf.create_folder("Marketing/Campaigns/2026")
    pf.create_folder("Engineering")
    paths = [f.path for f in pf.folders()]
    assert paths == ["Engineering", "Marketing", "Marketing/Campaigns", "Marketing/Campaigns/2026"]
    assert all(f.special is None for f in pf.folders())
    camp = pf.folder("Marketing/Campaigns")
    assert camp.parent == pf.folder("Marketing").fid
    assert (camp.messages, camp.unread, camp.uidnext) == (0, 0, 1)
    for path in ("Marketing", "marketing", "Marketing/Campaigns"):
        with pytest.raises(StoreError) as ei:
            pf.create_folder(path)
        assert ei.value.code == COLLISION, path
    assert len(pf.folders()) == 4


def test_hierarchy_rename(pf: PublicFolders) -> None:
    f = pf.create_folder("Sales")
    pf.create_folder("Sales/EMEA")
    pf.create_folder("Archive")
    uid = pf.post("Sales", source(message("<s1@x>")))
    r = pf.rename_folder("Sales", "Revenue")
    assert (r.fid, r.uidvalidity, r.uidnext, r.messages) == (f.fid, f.uidvalidity, uid + 1, 1)
    assert [x.path for x in pf.folders()] == ["Archive", "Revenue", "Revenue/EMEA"]
    moved = pf.rename_folder("Revenue", "Archive/Revenue")
    assert (moved.fid, moved.uidvalidity) == (f.fid, f.uidvalidity)
    assert [x.path for x in pf.folders()] == ["Archive", "Archive/Revenue", "Archive/Revenue/EMEA"]
    assert [m.message_id for m in pf.messages("Archive/Revenue")] == ["<s1@x>"]
    with pytest.raises(StoreError) as ei:
        pf.rename_folder("Archive", "Archive/Revenue/EMEA/Loop")
    assert ei.value.code == NO_SUPPORT
    pf.create_folder("Other")
    with pytest.raises(StoreError) as ei:
        pf.rename_folder("Other", "Archive")
    assert ei.value.code == COLLISION


def test_hierarchy_delete(pf: PublicFolders) -> None:
    pf.create_folder("Old/Sub")
    pf.create_folder("Keep")
    pf.post("Old", source(message("<o1@x>")))
    pf.post("Old/Sub", source(message("<o2@x>")))
    pf.post("Keep", source(message("<k1@x>")))
    assert pf.delete_folder("Old") == 2
    assert [f.path for f in pf.folders()] == ["Keep"]
    assert sorted(d.message_id for d in pf.deleted_items()) == ["<o1@x>", "<o2@x>"]
    assert [m.message_id for m in pf.messages("Keep")] == ["<k1@x>"]
    with pytest.raises(StoreError) as ei:
        pf.delete_folder("Old")
    assert ei.value.code == NOT_FOUND


def test_posts_read_back(store: Store, server: SetupResult, pf: PublicFolders) -> None:
    pf.create_folder("Announcements")
    sent = [message(f"<post{i}@x>", subject=f"News {i}", body="n" * (i * 300)) for i in range(3)]
    uids = [pf.post("Announcements", source(data)) for data in sent]
    assert uids == [1, 2, 3]
    msgs = pf.messages("Announcements")
    assert [(m.uid, m.message_id, m.subject, m.size) for m in msgs] == [
        (i + 1, f"<post{i}@x>", f"News {i}", len(sent[i])) for i in range(3)]
    for uid, data in zip(uids, sent, strict=True):
        assert pf.read_message("Announcements", uid) == data
    f = pf.folder("Announcements")
    assert (f.messages, f.unread, f.uidnext) == (3, 3, 4)
    # a post from a pipe is normalised like delivered mail
    u = pf.post("Announcements", source(b"Subject: piped\n\nline\n"))
    assert pf.read_message("Announcements", u) == b"Subject: piped\r\n\r\nline\r\n"
    with pytest.raises(StoreError) as ei:
        pf.post("Nowhere", source(sent[0]))
    assert ei.value.code == NOT_FOUND
    with store.read(server.public_store) as (r, db):
        assert sorted(int(c["refs"]) for c in r.scan(db, "content")) == [1, 1, 1, 1]
        assert [m["guid"] for m in r.scan(db, "mailbox")] == [str(server.public_store.guid)]


def test_posts_flags_copy_and_durability(store: Store, server: SetupResult, pf: PublicFolders) -> None:
    pf.create_folder("A")
    pf.create_folder("B")
    data = message("<durable-post@x>", subject="Kept")
    uid = pf.post("A", source(data))
    pf.set_flags("A", [uid], ["\\Seen"], "add")
    assert pf.copy("A", [uid], "B") == {uid: 1}
    validity = pf.folder("A").uidvalidity
    data_dir = store.server.data
    store.close()
    with Store.open(data_dir, log_file_size=LOG_SIZE) as s2:
        s2.mount_intended()
        p2 = open_public(s2)
        assert [f.path for f in p2.folders()] == ["A", "B"]
        assert p2.folder("A").uidvalidity == validity
        assert [(m.uid, m.flags) for m in p2.messages("A")] == [(1, frozenset({"\\Seen"}))]
        assert p2.read_message("B", 1) == data
        with s2.read(p2.info) as (r, db):
            assert [int(c["refs"]) for c in r.scan(db, "content")] == [2]
