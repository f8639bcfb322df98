"""Delivery: outcomes per recipient, single-instance content per database, several databases,
non-seekable sources, normalisation and header fields, durability."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any

import pytest

from mailkeep.store import content, delivery
from mailkeep.store.errors import StoreError
from mailkeep.store.mailbox import open_mailbox
from mailkeep.store.mailboxes import guid_text
from mailkeep.store.server import DatabaseInfo
from mailkeep.store.setup import SetupResult
from mailkeep.store.store import Store
from tests.store.conftest import LOG_SIZE, message, source

FIRST = "First Storage Group/Mailbox Store (Exchange1)"
SECOND = "Second Storage Group/Mailbox Store 2"


class OnlyRead:
    """A source with ``read`` only (a pipe): no seek, no tell, no seekable; short reads."""

    def __init__(self, data: bytes, step: int = 1000) -> None:
        self._buf = io.BytesIO(data)
        self.step = step
        self.calls = 0

    def read(self, size: int = -1, /) -> bytes:
        self.calls += 1
        n = self.step if size is None or size < 0 else min(size, self.step)
        return self._buf.read(n)


@pytest.fixture
def second_db(store: Store) -> DatabaseInfo:
    store.server.create_storage_group("Second Storage Group")
    info = store.server.create_database("Second Storage Group", "Mailbox Store 2")
    store.mount(info)
    return info


def rows(store: Store, info: DatabaseInfo, table: str) -> list[dict[str, Any]]:
    with store.read(info) as (r, db):
        return [dict(x) for x in r.scan(db, table)]


def mailbox_guid(store: Store, user: str) -> str:
    raw = store.directory.require_user(user).first("msExchMailboxGUID")
    assert isinstance(raw, bytes)
    return guid_text(raw)


def inbox_ids(store: Store, user: str) -> list[str]:
    return [m.message_id for m in open_mailbox(store, user).messages()]


# -- single database ---------------------------------------------------------------------------------
def test_one_recipient(store: Store, server: SetupResult, add_mailbox_user: Callable[..., str]) -> None:
    addr = add_mailbox_user("alice")
    assert addr == "alice@contoso.com"
    data = message("<one@example.org>", subject="Hello", body="first message")
    rep = delivery.deliver(store, source(data), [addr], sender="sender@example.org")
    assert len(rep.outcomes) == 1
    o = rep.of(addr)
    assert (o.status, o.code, o.code_name, o.database, o.uid) == ("delivered", 0, "", FIRST, 1)
    assert o.mailbox == mailbox_guid(store, "alice")
    assert rep.delivered == [o]

    mb = open_mailbox(store, "alice")
    assert mb.guid == o.mailbox
    msgs = mb.messages("INBOX")
    assert len(msgs) == 1
    m = msgs[0]
    assert (m.uid, m.message_id, m.subject, m.sender, m.size, m.flags) == (
        1, "<one@example.org>", "Hello", "sender@example.org", len(data), frozenset())
    assert mb.read_message("INBOX", 1) == data
    inbox = mb.folder("INBOX")
    assert (inbox.messages, inbox.unread, inbox.uidnext) == (1, 1, 2)

    (msg_row,) = [r for r in rows(store, server.mailbox_store, "message") if r["mailbox"] == o.mailbox]
    assert msg_row["envelope_from"] == "sender@example.org"
    contents = rows(store, server.mailbox_store, "content")
    assert [(c["refs"], c["size"]) for c in contents] == [(1, len(data))]
    assert msg_row["content"] == contents[0]["cid"]


def test_several_recipients_one_database_single_instance(
    store: Store, server: SetupResult, add_mailbox_user: Callable[..., str],
) -> None:
    addrs = [add_mailbox_user(n) for n in ("alice", "bob", "carol")]
    data = message("<shared@example.org>", body="x" * 5000)
    rep = delivery.deliver(store, source(data), addrs)
    assert [o.recipient for o in rep.outcomes] == addrs
    assert [o.status for o in rep.outcomes] == ["delivered"] * 3
    assert {o.database for o in rep.outcomes} == {FIRST}
    assert len({o.mailbox for o in rep.outcomes}) == 3
    with store.read(server.mailbox_store) as (r, db):
        contents = list(r.scan(db, "content"))
    assert len(contents) == 1
    assert contents[0]["refs"] == 3
    assert contents[0]["size"] == len(data)
    msgs = rows(store, server.mailbox_store, "message")
    assert len(msgs) == 3
    assert {m["content"] for m in msgs} == {contents[0]["cid"]}
    for n in ("alice", "bob", "carol"):
        mb = open_mailbox(store, n)
        assert [m.message_id for m in mb.messages()] == ["<shared@example.org>"]
        assert mb.read_message("INBOX", 1) == data

    # a second delivery is a second content row
    delivery.deliver(store, source(message("<second@example.org>")), addrs[:2])
    assert sorted(c["refs"] for c in rows(store, server.mailbox_store, "content")) == [2, 3]


def test_duplicate_recipient_gets_one_copy(
    store: Store, server: SetupResult, add_mailbox_user: Callable[..., str],
) -> None:
    addr = add_mailbox_user("alice")
    rep = delivery.deliver(store, source(message("<dup@x>")), [addr, addr, "ALICE@contoso.com"])
    assert [o.status for o in rep.outcomes] == ["delivered"] * 3
    assert {o.uid for o in rep.outcomes} == {1}
    assert {o.mailbox for o in rep.outcomes} == {mailbox_guid(store, "alice")}
    assert inbox_ids(store, "alice") == ["<dup@x>"]
    assert [c["refs"] for c in rows(store, server.mailbox_store, "content")] == [1]
    assert open_mailbox(store, "alice").folder("INBOX").messages == 1


# -- several databases -------------------------------------------------------------------------------
def test_recipients_in_two_databases(
    store: Store, server: SetupResult, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
) -> None:
    a = add_mailbox_user("alice")
    b = add_mailbox_user("bob")
    c = add_mailbox_user("carol", second_db.dn)
    data = message("<two-dbs@x>", body="y" * 3000)
    rep = delivery.deliver(store, source(data), [c, a, b])
    assert [(o.recipient, o.status, o.database) for o in rep.outcomes] == [
        (c, "delivered", SECOND), (a, "delivered", FIRST), (b, "delivered", FIRST),
    ]
    first = rows(store, server.mailbox_store, "content")
    second = rows(store, second_db, "content")
    assert [x["refs"] for x in first] == [2]
    assert [x["refs"] for x in second] == [1]
    assert first[0]["sha256"] == second[0]["sha256"]
    for n in ("alice", "bob", "carol"):
        assert open_mailbox(store, n).read_message("INBOX", 1) == data
    assert open_mailbox(store, "carol").info.guid == second_db.guid


def test_non_seekable_source_two_databases(
    store: Store, server: SetupResult, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
) -> None:
    a = add_mailbox_user("alice")
    b = add_mailbox_user("bob", second_db.dn)
    # larger than one chunk, LF-only, so it is both spooled and normalised
    body = "\n".join(f"line {i:06d} " + "z" * 60 for i in range(2000))
    raw = (f"Subject: piped\nMessage-ID: <pipe@x>\n\n{body}\n").encode()
    assert len(raw) > content.CHUNK
    src = OnlyRead(raw, step=4093)
    assert not hasattr(src, "seek")
    rep = delivery.deliver(store, src, [a, b])
    assert [(o.status, o.database) for o in rep.outcomes] == [("delivered", FIRST), ("delivered", SECOND)]
    want = raw.replace(b"\n", b"\r\n")
    assert open_mailbox(store, "alice").read_message("INBOX", 1) == want
    assert open_mailbox(store, "bob").read_message("INBOX", 1) == want
    assert [x["size"] for x in rows(store, server.mailbox_store, "content")] == [len(want)]
    assert [x["size"] for x in rows(store, second_db, "content")] == [len(want)]


def test_non_seekable_source_one_database(store: Store, add_mailbox_user: Callable[..., str]) -> None:
    a = add_mailbox_user("alice")
    b = add_mailbox_user("bob")
    data = message("<pipe1@x>")
    rep = delivery.deliver(store, OnlyRead(data, step=7), [a, b])
    assert [o.status for o in rep.outcomes] == ["delivered", "delivered"]
    assert open_mailbox(store, "bob").read_message("INBOX", 1) == data


# -- failures ----------------------------------------------------------------------------------------
def test_unknown_recipient(store: Store, server: SetupResult, add_mailbox_user: Callable[..., str]) -> None:
    a = add_mailbox_user("alice")
    store.directory.add_user("nomail", password_text="Passw0rd!")  # an account without a mailbox
    rep = delivery.deliver(store, source(message("<u@x>")),
                           ["nobody@contoso.com", a, "nomail@contoso.com", "someone@elsewhere.org"])
    assert [o.status for o in rep.outcomes] == ["unknown", "delivered", "unknown", "unknown"]
    for o in (rep.outcomes[0], rep.outcomes[2], rep.outcomes[3]):
        assert o.code == 0x3EB
        assert o.code_name == "ecUnknownUser"
        assert o.uid == 0
    assert "nobody@contoso.com" in rep.outcomes[0].message
    assert inbox_ids(store, "alice") == ["<u@x>"]


def test_unknown_only_stores_nothing(store: Store, server: SetupResult) -> None:
    rep = delivery.deliver(store, source(message("<u2@x>")), ["nobody@contoso.com"])
    assert [(o.status, o.code) for o in rep.outcomes] == [("unknown", 0x3EB)]
    assert rows(store, server.mailbox_store, "content") == []
    assert rows(store, server.mailbox_store, "message") == []


def test_dismounted_database_is_temporary(
    store: Store, server: SetupResult, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
) -> None:
    a = add_mailbox_user("alice")
    c = add_mailbox_user("carol", second_db.dn)
    store.dismount(second_db)
    rep = delivery.deliver(store, source(message("<dm@x>")), [a, c])
    oa, oc = rep.outcomes
    assert (oa.status, oa.code) == ("delivered", 0)
    assert (oc.status, oc.code, oc.code_name) == ("temporary", 0x8004011D, "MAPI_E_FAILONEPROVIDER")
    assert "dismounted" in oc.message
    assert StoreError(oc.code, "x").temporary is True
    assert rep.delivered == [oa]
    store.mount(second_db)
    assert rows(store, second_db, "message") == []
    assert rows(store, second_db, "content") == []
    # once mounted, the retry goes through
    rep = delivery.deliver(store, source(message("<dm@x>")), [c])
    assert [o.status for o in rep.outcomes] == ["delivered"]


def test_empty_message_refused(store: Store, server: SetupResult, add_mailbox_user: Callable[..., str]) -> None:
    a = add_mailbox_user("alice")
    rep = delivery.deliver(store, source(b""), [a])
    (o,) = rep.outcomes
    assert o.status != "delivered"
    assert o.code == 0x80070057
    assert o.code_name == "MAPI_E_INVALID_PARAMETER"
    assert "empty" in o.message
    assert rep.delivered == []
    assert rows(store, server.mailbox_store, "content") == []
    assert rows(store, server.mailbox_store, "message") == []


# -- content -----------------------------------------------------------------------------------------
def test_lf_only_stored_as_crlf(store: Store, add_mailbox_user: Callable[..., str]) -> None:
    a = add_mailbox_user("alice")
    raw = b"Subject: unix\nMessage-ID: <lf@x>\n\nline 1\nline 2\r\nline 3\rstill 3\n"
    rep = delivery.deliver(store, source(raw), [a])
    assert rep.outcomes[0].status == "delivered"
    want = b"Subject: unix\r\nMessage-ID: <lf@x>\r\n\r\nline 1\r\nline 2\r\nline 3\rstill 3\r\n"
    mb = open_mailbox(store, "alice")
    assert mb.read_message("INBOX", 1) == want
    (m,) = mb.messages()
    assert (m.size, m.subject, m.message_id) == (len(want), "unix", "<lf@x>")


def test_crlf_split_across_reads_kept(store: Store, add_mailbox_user: Callable[..., str]) -> None:
    """A CR at the end of one read and its LF at the start of the next stay one CRLF."""
    a = add_mailbox_user("alice")
    head = b"Subject: split\r\nMessage-ID: <split@x>\r\n\r\n"
    pad = b"a" * (content.CHUNK - len(head) - 1)
    raw = head + pad + b"\r\n" + b"tail\n"
    assert raw[content.CHUNK - 1:content.CHUNK + 1] == b"\r\n"
    delivery.deliver(store, OnlyRead(raw, step=content.CHUNK), [a])
    assert open_mailbox(store, "alice").read_message("INBOX", 1) == head + pad + b"\r\ntail\r\n"


def test_encoded_word_subject_decoded(store: Store, add_mailbox_user: Callable[..., str]) -> None:
    a = add_mailbox_user("alice")
    raw = (b"From: =?utf-8?q?Ren=C3=A9e_Dupont?= <renee@example.org>\r\n"
           b"Subject: =?utf-8?q?Caf=C3=A9_au_lait?=\r\n"
           b"Message-ID: <enc@x>\r\n\r\nbody\r\n")
    delivery.deliver(store, source(raw), [a])
    (m,) = open_mailbox(store, "alice").messages()
    assert m.subject == "Café au lait"
    assert m.sender == "Renée Dupont <renee@example.org>"
    assert m.message_id == "<enc@x>"
    b64 = b"Subject: =?iso-8859-1?b?R3L832U=?=\r\nMessage-ID: <b64@x>\r\n\r\nx\r\n"
    delivery.deliver(store, source(b64), [a])
    assert [m.subject for m in open_mailbox(store, "alice").messages()] == ["Café au lait", "Grüße"]


def test_folded_header_fields_unfolded(store: Store, add_mailbox_user: Callable[..., str]) -> None:
    """RFC 5322 folding: a field continues on lines that start with white space."""
    a = add_mailbox_user("alice")
    raw = (b"Subject: part one\r\n part two\r\n\tpart three\r\n"
           b"Message-ID:\r\n <folded@example.org>\r\n\r\nbody\r\n")
    delivery.deliver(store, source(raw), [a])
    (m,) = open_mailbox(store, "alice").messages()
    assert m.subject == "part one part two\tpart three"
    assert m.message_id == "<folded@example.org>"


def test_first_field_value_kept(store: Store, add_mailbox_user: Callable[..., str]) -> None:
    a = add_mailbox_user("alice")
    raw = b"subject: first\r\nSUBJECT: second\r\nmessage-id: <case@x>\r\n\r\nSubject: in the body\r\n"
    delivery.deliver(store, source(raw), [a])
    (m,) = open_mailbox(store, "alice").messages()
    assert (m.subject, m.message_id) == ("first", "<case@x>")


@pytest.mark.parametrize("raw", [
    b"this line is not a header\r\n\r\nbody\r\n",
    b"Subject \xff\xfe broken\r\n: no name\r\nMessage-ID <nocolon@x>\r\n\r\nbody\r\n",
    b"no header block at all, and no line end",
    b"Subject: =?bogus-charset?q?x?=\r\n\r\nbody\r\n",
    b"\x00\x01\x02binary\r\n",
])
def test_malformed_headers_still_stored(store: Store, add_mailbox_user: Callable[..., str], raw: bytes) -> None:
    a = add_mailbox_user("alice")
    rep = delivery.deliver(store, source(raw), [a])
    assert [o.status for o in rep.outcomes] == ["delivered"]
    mb = open_mailbox(store, "alice")
    (m,) = mb.messages()
    assert m.message_id == ""
    assert mb.read_message("INBOX", 1) == raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if raw.startswith(b"Subject: =?bogus"):
        assert m.subject == "=?bogus-charset?q?x?="
    else:
        assert m.subject == ""


# -- durability --------------------------------------------------------------------------------------
def test_delivered_mail_survives_close_and_reopen(
    store: Store, server: SetupResult, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
) -> None:
    a = add_mailbox_user("alice")
    c = add_mailbox_user("carol", second_db.dn)
    sent = {}
    for i in range(5):
        data = message(f"<durable{i}@x>", body=f"body {i}")
        sent[f"<durable{i}@x>"] = data
        rep = delivery.deliver(store, source(data), [a, c])
        assert [o.status for o in rep.outcomes] == ["delivered", "delivered"]
    data_dir = store.server.data
    store.close()
    with Store.open(data_dir, log_file_size=LOG_SIZE) as s2:
        assert {d.guid for d in s2.mount_intended()} >= {server.mailbox_store.guid, second_db.guid}
        for user in ("alice", "carol"):
            mb = open_mailbox(s2, user)
            got = mb.messages()
            assert [m.uid for m in got] == [1, 2, 3, 4, 5]
            assert {m.message_id for m in got} == set(sent)
            for m in got:
                assert mb.read_message("INBOX", m.uid) == sent[m.message_id]
        with s2.read(s2.server.database(str(server.mailbox_store.guid))) as (r, db):
            assert sorted(x["refs"] for x in r.scan(db, "content")) == [1] * 5


def test_parallel_deliveries(
    store: Store, server: SetupResult, second_db: DatabaseInfo, add_mailbox_user: Callable[..., str],
) -> None:
    a = add_mailbox_user("alice")
    b = add_mailbox_user("bob")
    c = add_mailbox_user("carol", second_db.dn)
    threads, per = 4, 10
    errors: list[BaseException] = []
    bad: list[delivery.Outcome] = []

    def run(t: int) -> None:
        try:
            for i in range(per):
                rep = delivery.deliver(store, source(message(f"<p{t}.{i}@x>")), [a, b, c])
                bad.extend(o for o in rep.outcomes if o.status != "delivered")
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    ts = [threading.Thread(target=run, args=(t,), daemon=True) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in ts)
    assert errors == [] and bad == []
    total = threads * per
    want = {f"<p{t}.{i}@x>" for t in range(threads) for i in range(per)}
    for user in ("alice", "bob", "carol"):
        msgs = open_mailbox(store, user).messages()
        assert [m.uid for m in msgs] == list(range(1, total + 1))
        assert {m.message_id for m in msgs} == want
    assert sorted(x["refs"] for x in rows(store, server.mailbox_store, "content")) == [2] * total
    assert sorted(x["refs"] for x in rows(store, second_db, "content")) == [1] * total


def test_a_retried_delivery_is_not_stored_twice(store: Store, add_mailbox_user: Callable[..., str]) -> None:
    """An MTA retries the whole message after a temporary failure for one recipient: the
    recipients that got it already get no second copy (same Message-ID and bytes), while a
    different message with the same Message-ID, or a message without one, is delivered."""
    a, b = add_mailbox_user("alice"), add_mailbox_user("bob")
    raw = message("<retry@x>")
    first = delivery.deliver(store, source(raw), [a])
    again = delivery.deliver(store, source(raw), [a, b])
    assert [(o.recipient, o.status, o.message) for o in again.outcomes] == [
        (a, "delivered", "already delivered (duplicate suppressed)"), (b, "delivered", "delivered")]
    assert again.of(a).uid == first.of(a).uid
    alice = open_mailbox(store, "alice")
    assert [m.message_id for m in alice.messages()] == ["<retry@x>"]
    with store.read(alice.info) as (r, db):
        contents = list(r.scan(db, "content"))
    assert sorted(c["refs"] for c in contents) == [1, 1]  # alice's first copy, bob's copy
    only_dup = delivery.deliver(store, source(raw), [a])
    assert only_dup.of(a).message == "already delivered (duplicate suppressed)"
    with store.read(alice.info) as (r, db):
        assert len(list(r.scan(db, "content"))) == 2  # the third stream was dropped with its transaction
    edited = message("<retry@x>", body="a different body")
    assert delivery.deliver(store, source(edited), [a]).of(a).message == "delivered"
    no_id = b"From: x@y\r\nSubject: no id\r\n\r\nbody\r\n"
    for _ in range(2):
        assert delivery.deliver(store, source(no_id), [a]).of(a).message == "delivered"
    assert [m.message_id for m in alice.messages()] == ["<retry@x>", "<retry@x>", "", ""]
