"""Full-text indexes (store/fti.py): create, populate, status, delete; incremental population;
search answers equal to scanning, with quoted-printable, base64, non-ASCII and multipart mail;
a missing or damaged index file is detected and searches still answer."""

from __future__ import annotations

import base64
import json
import os
import quopri
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.server.imap import ImapSession
from mailkeep.store import delivery, fti, searchtext
from mailkeep.store.mailbox import Mailbox, open_mailbox
from mailkeep.store.server import DatabaseInfo
from mailkeep.store.setup import SetupResult
from mailkeep.store.store import Store
from tests.store.conftest import message, source

MAILBOX_STORE = "Mailbox Store (Exchange1)"


def _mime(subject: str, parts: list[tuple[str, str, bytes]], boundary: str = "b0und") -> bytes:
    """A multipart/mixed message: parts are (content type, transfer encoding, encoded body)."""
    out = (f"From: sender@example.org\r\nSubject: {subject}\r\nMessage-ID: <{abs(hash(subject))}@x>\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"{boundary}\"\r\n\r\n"
           "This is a multi-part message in MIME format (preamble).\r\n").encode()
    for ctype, cte, body in parts:
        out += f"--{boundary}\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n".encode()
        out += body + b"\r\n"
    return out + f"--{boundary}--\r\nepilogue words\r\n".encode()


def _single(subject: str, ctype: str, cte: str, body: bytes, extra: str = "") -> bytes:
    return (f"From: Sender <sender@example.org>\r\nTo: alice@contoso.com\r\nSubject: {subject}\r\n{extra}"
            f"MIME-Version: 1.0\r\nContent-Type: {ctype}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n").encode() + body


CORPUS: list[bytes] = [
    message("<p1@x>", subject="plain one", body="the quick brown fox jumps"),  # 1
    _single("qp utf8", "text/plain; charset=utf-8", "quoted-printable",
            quopri.encodestring("Grüße aus Köln, a soft line break follows: ".encode() + b"x" * 90 + b" tail")),  # 2
    _single("b64 latin1", "text/plain; charset=iso-8859-1", "base64",
            base64.encodebytes("Señor Müller, ΣΊΣΥΦΟΣ is not latin-1".encode("iso-8859-1", "replace"))),  # 3
    _mime("with attachment", [
        ("text/plain; charset=utf-8", "base64", base64.encodebytes(b"decoded needle inside base64")),
        ("application/octet-stream", "base64", base64.encodebytes(b"binaryneedle \x00\x01\x02 hidden text")),
    ]),  # 4
    _single("=?utf-8?q?Caf=C3=A9_cr=C3=A8me?=", "text/plain; charset=utf-8", "8bit",
            "İstanbul straße ΣΊΣΥΦΟΣ".encode()),  # 5
    _mime("nested", [
        ("message/rfc822", "7bit", message("<inner@x>", subject="inner subject", body="forwarded words")),
        ("text/html; charset=utf-8", "quoted-printable", b"<p>html =E2=82=AC euro</p>"),
    ], boundary="outer"),  # 6
]

TERMS = [
    ("TEXT", "quick"), ("BODY", "QUICK BROWN"), ("TEXT", "grüße"), ("TEXT", "GRÜSSE"), ("BODY", "köln"),
    ("BODY", "xxxxxxxxxx tail"), ("TEXT", "señor"), ("BODY", "MÜLLER"), ("TEXT", "decoded needle"),
    ("TEXT", "binaryneedle"), ("TEXT", "hidden"), ("BODY", "preamble"), ("TEXT", "epilogue"), ("TEXT", "café crème"),
    ("TEXT", "=?utf-8?q?caf"), ("BODY", "straße"), ("BODY", "STRASSE"), ("TEXT", "σίσυφος"), ("BODY", "forwarded"),
    ("BODY", "inner subject"), ("BODY", "€ euro"), ("TEXT", "subject:"), ("BODY", "subject:"), ("TEXT", "x"),
    ("TEXT", "ab"), ("TEXT", "message-id"), ("BODY", "content-type"), ("TEXT", "\r\n\r\nthe quick"), ("TEXT", ""),
    ("TEXT", 'a "quoted" word'), ("BODY", "nothing matches this"),
]


@pytest.fixture
def alice(store: Store, add_mailbox_user: Callable[..., str]) -> Mailbox:
    add_mailbox_user("alice")
    return open_mailbox(store, "alice")


def _db(store: Store) -> DatabaseInfo:
    return store.server.database(MAILBOX_STORE)


def _deliver(store: Store, *msgs: bytes) -> None:
    for m in msgs:
        assert delivery.deliver(store, source(m), ["alice@contoso.com"]).outcomes[0].status == "delivered"


def _scan(mb: Mailbox, path: str, terms: list[tuple[str, str]]) -> set[int]:
    """What scanning answers: every message read (never the index)."""
    want = [searchtext.term(k, v) for k, v in terms]
    out = set()
    for m in mb.messages(path):
        with mb.fetch(path, m.uid) as r:
            if set(want) <= searchtext.find(r, want):
                out.add(m.uid)
    return out


def _search(store: Store, mb: Mailbox, path: str, *terms: tuple[str, str]) -> set[int] | None:
    return fti.search(store, _db(store), mb.guid, mb.folder(path).fid, list(terms))


def _ready(store: Store) -> DatabaseInfo:
    info = _db(store)
    fti.create(store, info, available=True)
    fti.populate(store, info, full=True)
    return info


def test_create_populate_status_delete(store: Store, alice: Mailbox, server: SetupResult) -> None:
    _deliver(store, *CORPUS[:3])
    info = _db(store)
    path = os.path.join(server.server.data, "index", f"{info.guid}.fts")
    assert fti.status(store, info).state == "none"
    st = fti.create(store, info)
    assert {k: st[k] for k in ("available", "interval", "state", "last_full")} == {
        "available": False, "interval": 15, "state": "new", "last_full": None}
    assert fti.index_path(store, info) == path and os.path.isfile(path)
    assert json.loads(Path(server.server.data, "server.json").read_text())["databases"][str(info.guid)]["fti"] == st
    s = fti.status(store, info)
    assert (s.state, s.available, s.messages, s.contents, s.searches, s.problem) == ("new", False, 0, 0, 0, "")
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) is None  # never populated, not available
    with pytest.raises(fti.FtiError, match="already has a full-text index; delete it first"):
        fti.create(store, info)

    rep = fti.populate(store, info, full=True)
    assert (rep.full, rep.messages, rep.added, rep.removed, rep.contents_read, rep.failed) == (True, 3, 3, 0, 3, [])
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) is None  # populated, but not available yet
    fti.configure(store, info, available=True, interval=None)
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) == {1}
    assert _search(store, alice, "INBOX", ("TEXT", "quick"), ("BODY", "fox")) == {1}
    assert _search(store, alice, "INBOX", ("TEXT", "quick"), ("BODY", "köln")) == set()
    s = fti.status(store, info)
    assert (s.state, s.available, s.interval, s.messages, s.contents, s.searches) == ("ready", True, None, 3, 3, 3)

    removed = fti.delete(store, info)
    assert removed == [path, path[:-4] + ".searches"]
    assert not os.listdir(os.path.dirname(path))
    assert fti.settings(store, info) is None and fti.status(store, info).state == "none"
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) is None
    with pytest.raises(fti.FtiError, match="has no full-text index; create one with 'mailkeep fti create"):
        fti.populate(store, info)
    ids = [(e.id, e.level) for e in store.events.read(source="Microsoft Search")]
    assert ids == [(7000, "information"), (7002, "information"), (7001, "information")]


def test_incremental_finds_new_deleted_and_moved_messages(store: Store, alice: Mailbox) -> None:
    _deliver(store, *CORPUS[:4])
    info = _ready(store)
    alice.create_folder("Archive")
    _deliver(store, CORPUS[4])  # new: UID 5
    alice.delete("INBOX", [1])  # the quick brown fox goes to deleted item retention
    assert alice.move("INBOX", [2], "Archive") == {2: 1}  # Grüße moves: same content, new key
    alice.copy("INBOX", [3], "Archive")  # a copy shares the content too
    rep = fti.populate(store, info)
    # only the new message's content is read; the moved and copied ones are known by content
    assert (rep.full, rep.messages, rep.added, rep.removed, rep.contents_read) == (False, 5, 3, 2, 1)
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) == set()
    assert _search(store, alice, "Archive", ("BODY", "köln")) == {1}
    assert _search(store, alice, "Archive", ("TEXT", "señor")) == {2}
    assert _search(store, alice, "INBOX", ("TEXT", "señor")) == {3}
    assert _search(store, alice, "INBOX", ("BODY", "STRASSE")) == {5}
    nothing = fti.populate(store, info)
    assert (nothing.messages, nothing.added, nothing.removed, nothing.contents_read) == (5, 0, 0, 0)
    s = fti.status(store, info)
    assert (s.messages, s.contents, s.last_incremental is not None) == (5, 4, True)


def test_index_search_equals_scan_on_the_corpus(store: Store, alice: Mailbox) -> None:
    _deliver(store, *CORPUS)
    _ready(store)
    expected = {
        ("TEXT", "quick"): {1}, ("TEXT", "GRÜSSE"): {2}, ("BODY", "xxxxxxxxxx tail"): {2}, ("BODY", "MÜLLER"): {3},
        ("TEXT", "decoded needle"): {4}, ("TEXT", "binaryneedle"): set(), ("BODY", "preamble"): set(),
        ("TEXT", "epilogue"): set(), ("TEXT", "café crème"): {5}, ("TEXT", "=?utf-8?q?caf"): {5},
        ("BODY", "STRASSE"): {5}, ("TEXT", "σίσυφος"): {5}, ("BODY", "inner subject"): {6}, ("BODY", "€ euro"): {6},
        ("BODY", "subject:"): {6}, ("TEXT", "subject:"): {1, 2, 3, 4, 5, 6}, ("TEXT", "\r\n\r\nthe quick"): {1},
        ("TEXT", ""): {1, 2, 3, 4, 5, 6}, ("BODY", "content-type"): set(), ("BODY", "nothing matches this"): set(),
    }
    for t in TERMS:
        scanned = _scan(alice, "INBOX", [t])
        assert _search(store, alice, "INBOX", t) == scanned, t
        if t in expected:
            assert scanned == expected[t], t
    pairs = [(TERMS[i], TERMS[j]) for i in range(0, len(TERMS), 3) for j in range(1, len(TERMS), 4)]
    for a, b in pairs:
        assert _search(store, alice, "INBOX", a, b) == _scan(alice, "INBOX", [a, b]), (a, b)


def test_imap_search_answers_the_same_from_the_index_and_by_scanning(store: Store, alice: Mailbox) -> None:
    _deliver(store, *CORPUS)
    info = _ready(store)
    path = fti.index_path(store, info)

    def run(program: bytes) -> list[bytes]:
        s = ImapSession(lambda u, p: alice)
        assert s.handle(b"a LOGIN alice pw")[0] == b"a OK [CAPABILITY " + s._caps().encode() + b"] LOGIN completed\r\n"
        s.handle(b"b SELECT INBOX")
        return [r for r in s.handle(b"c UID SEARCH " + program) if isinstance(r, bytes)]

    programs = [b"TEXT quick", b"BODY \"k\xc3\xb6ln\"", b"OR TEXT quick BODY STRASSE", b"NOT TEXT subject",
                b"(TEXT gr\xc3\xbc\xc3\x9fe) UNSEEN", b"NOT BODY euro", b"TEXT \"\"", b"OR (BODY forwarded) (TEXT x)"]
    answers = {p: run(p) for p in programs}
    assert answers[b"TEXT quick"] == [b"* SEARCH 1\r\n", b"c OK SEARCH completed\r\n"]
    assert answers[b"OR TEXT quick BODY STRASSE"][0] == b"* SEARCH 1 5\r\n"
    assert answers[b"NOT TEXT subject"][0] == b"* SEARCH\r\n"
    assert answers[b"NOT BODY euro"][0] == b"* SEARCH 1 2 3 4 5\r\n"
    assert fti.status(store, info).searches == len(programs)  # each SEARCH asked the index once
    fti.configure(store, info, available=False)
    assert {p: run(p) for p in programs} == answers
    assert fti.status(store, info).searches == len(programs)  # not available: none answered from the index
    fti.configure(store, info, available=True)
    os.unlink(path)
    assert {p: run(p) for p in programs} == answers  # the file is gone: scanning answers the same


def test_unindexed_and_longer_than_bound_messages_are_read(store: Store, alice: Mailbox) -> None:
    big_text = "lorem ipsum " * ((fti.MAX_TEXT // 12) + 1000) + "farbeyondthebound"
    _deliver(store, message("<big@x>", body=big_text), CORPUS[0])
    info = _db(store)
    fti.create(store, info, available=True)
    rep = fti.populate(store, info, full=True)
    assert (rep.messages, rep.contents_read, rep.truncated) == (2, 2, 1)  # the big one's text is cut at MAX_TEXT
    _deliver(store, message("<late@x>", body="arrived after the population farbeyondthebound"))
    assert _search(store, alice, "INBOX", ("BODY", "farbeyondthebound")) == {1, 3}
    assert _search(store, alice, "INBOX", ("BODY", "lorem ipsum lorem")) == {1}
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) == {2}


def test_missing_and_damaged_files_are_detected(store: Store, alice: Mailbox) -> None:
    _deliver(store, *CORPUS[:2])
    info = _ready(store)
    path = fti.index_path(store, info)
    os.unlink(path)
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) is None
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) is None
    s = fti.status(store, info)
    assert (s.state, s.problem, s.messages) == ("missing", f"the index file {path} is missing", None)
    with pytest.raises(fti.FtiError, match="is missing; an incremental population needs the index: start a full"):
        fti.populate(store, info)
    assert fti.update_due(store, now=10**10) == []  # the periodic update skips it, never raises
    unusable = [e for e in store.events.read(source="Microsoft Search") if e.id == 7003]
    assert len(unusable) == 1 and unusable[0].level == "error"  # logged once, not at every search
    assert unusable[0].message.startswith("The full-text index of mailbox store First Storage Group/"
                                          f"{MAILBOX_STORE} is missing: the index file {path} is missing. "
                                          "Searches scan the messages instead. Re-create it: mailkeep fti delete")

    fti.populate(store, info, full=True)  # a full population rebuilds the file
    assert fti.status(store, info).state == "ready"
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) == {1}

    with open(path, "r+b") as f:
        f.write(b"this is not an index" * 10)
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) is None
    s = fti.status(store, info)
    assert s.state == "damaged" and s.problem.startswith(f"the index file {path} is damaged (")
    assert [e.data["state"] for e in store.events.read(source="Microsoft Search") if e.id == 7003] == [
        "missing", "damaged"]
    fti.delete(store, info)
    fti.create(store, info, available=True)
    fti.populate(store, info, full=True)
    assert _search(store, alice, "INBOX", ("TEXT", "quick")) == {1}


def test_update_due_runs_incremental_populations_at_the_interval(store: Store, alice: Mailbox) -> None:
    _deliver(store, CORPUS[0])
    info = _ready(store)
    last = fti.settings(store, info)["last_full"]  # type: ignore[index]
    assert fti.update_due(store, now=last + 14 * 60) == []
    _deliver(store, CORPUS[1])
    reps = fti.update_due(store, now=last + 15 * 60)
    assert [(r.full, r.added, r.contents_read) for r in reps] == [(False, 1, 1)]
    fti.configure(store, info, interval=None)
    assert fti.update_due(store, now=last + 10**6) == []


# -- property: the index answers what a plain substring model answers -------------------------------
ALPHABET = "abcAB Ωωσςß İıüÜ€-:="
texts = st.text(alphabet=ALPHABET, min_size=0, max_size=200)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bodies=st.lists(st.tuples(texts, st.sampled_from(["8bit", "quoted-printable", "base64"])), min_size=1,
                       max_size=5),
       terms=st.lists(st.tuples(st.sampled_from(["TEXT", "BODY"]), st.text(alphabet=ALPHABET, max_size=6)),
                      min_size=1, max_size=4))
def test_index_search_matches_a_substring_model(store: Store, alice: Mailbox,
                                                 bodies: list[tuple[str, str]], terms: list[tuple[str, str]]) -> None:
    info = _db(store) if fti.settings(store, _db(store)) is not None else _ready(store)  # once per test
    folder = alice.create_folder(f"h{len(alice.folders())}")
    model: dict[int, tuple[str, str]] = {}
    for i, (text, cte) in enumerate(bodies):
        raw = text.encode()
        encoded = {"8bit": raw, "quoted-printable": quopri.encodestring(raw), "base64": base64.encodebytes(raw)}[cte]
        head = (f"Subject: m{i}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                f"Content-Transfer-Encoding: {cte}\r\n\r\n")
        uid = alice.append(folder.path, source(head.encode() + encoded + b"\r\n"))
        model[uid] = (head, text)
    fti.populate(store, info)
    for kind, value in terms:
        t = value.casefold()
        want = {uid for uid, (head, text) in model.items()
                if t in (text.casefold() if kind == "BODY" else (head + text).casefold())}
        assert _search(store, alice, folder.path, (kind, value)) == want, (kind, value)
