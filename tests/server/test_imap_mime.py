"""IMAP message structure: ``server/imap_mime.py`` against hand-written BODYSTRUCTURE strings, a
hypothesis check of every part's section against Python's ``email`` package, the session's
``BODY[n.m]`` on a real store, and FETCH BODYSTRUCTURE / part sections over a real socket.

The expected strings follow RFC 3501 §7.4.2 and were checked by hand against Dovecot 2.3
(which writes the defaults in lower case: ``"text" "plain" ("charset" "us-ascii") ... "7bit"``;
Mailkeep writes them as RFC 3501's examples do).
"""

from __future__ import annotations

import email
import email.message
import email.parser
import email.policy
import imaplib
import re
import subprocess
from collections.abc import Iterator
from email.mime.application import MIMEApplication
from email.mime.message import MIMEMessage
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailkeep.server.imap import STRUCTURE_CACHE, ImapSession
from mailkeep.server.imap_mime import MAX_DEPTH, MAX_HEADER, Part, body, bodystructure, locate, scan
from mailkeep.store.mailbox import Mailbox, open_mailbox
from mailkeep.store.store import Store
from tests.server.test_imap import fetch_line, imap_server, literal, login  # noqa: F401 - imap_server: fixture
from tests.server.test_serve import data  # noqa: F401 - a fixture

CHUNKS = (1, 2, 3, 5, 7, 64, 1 << 20)


def chunked(raw: bytes, size: int) -> Iterator[bytes]:
    return (raw[i:i + size] for i in range(0, len(raw), size))


def structure(raw: bytes) -> Part:
    """The tree, the same whatever the chunk size (checked for every size in CHUNKS)."""
    trees = [scan(chunked(raw, n)) for n in CHUNKS]
    first = bodystructure(trees[0])
    for n, t in zip(CHUNKS, trees, strict=True):
        assert bodystructure(t) == first, f"chunks of {n} octets give another structure"
    return trees[-1]


def section(raw: bytes, root: Part, spec: str) -> bytes:
    """What BODY[spec] serves (part number, then nothing, MIME, HEADER or TEXT)."""
    nums, _, rest = re.fullmatch(r"([\d.]+?)(\.(MIME|HEADER|TEXT))?", spec).groups()  # type: ignore[union-attr]
    p = locate(root, [int(x) for x in nums.split(".")])
    assert p is not None, spec
    if rest in ("HEADER", "TEXT"):
        assert p.message is not None, spec
        p = p.message
        return raw[p.header_offset:p.header_offset + p.header_size] if rest == "HEADER" else \
            raw[p.body_offset:p.body_offset + p.body_size]
    if rest == "MIME":
        return raw[p.header_offset:p.header_offset + p.header_size]
    return raw[p.body_offset:p.body_offset + p.body_size]


# --- hand-written cases -----------------------------------------------------------------------------------------

PLAIN = b"From: a@example.org\r\nSubject: hi\r\n\r\nhello\r\nworld\r\n"

CHARSET = (b"Subject: qp\r\nContent-Type: text/plain; charset=\"UTF-8\"; format=flowed\r\n"
           b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9\r\n")

ALTERNATIVE = (b"Subject: alt\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"alt-1\"\r\n\r\n"
               b"--alt-1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nhi there\r\n"
               b"--alt-1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Language: en\r\n\r\n<p>hi there</p>\r\n"
               b"--alt-1--\r\n")

MIXED = (b"Subject: report\r\nContent-Type: multipart/mixed; boundary=mix\r\n\r\n"
         b"This is a multi-part message in MIME format.\r\n"
         b"--mix\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n\r\n"
         b"--mix\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n"
         b"Content-Disposition: attachment; filename=\"report.pdf\"; size=6\r\nContent-ID: <att1@x>\r\n"
         b"Content-Description: the report\r\n\r\nJVBERi0x\r\n"
         b"--mix--\r\nepilogue\r\n")

NESTED = (b"Subject: nested\r\nContent-Type: multipart/mixed; boundary=outer\r\n\r\n"
          b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
          b"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
          b"--inner\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n"
          b"--inner--\r\n"
          b"--outer\r\nContent-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\niVBORw0K\r\n"
          b"--outer--\r\n")

INNER = (b"Date: Wed, 25 Nov 2026 10:00:00 +0000\r\nFrom: Carol <carol@example.org>\r\nTo: dave@example.org\r\n"
         b"Subject: original\r\nMessage-ID: <orig@example.org>\r\n\r\noriginal body\r\nsecond line")
FORWARD = (b"Subject: fwd\r\nContent-Type: multipart/mixed; boundary=fw\r\n\r\n"
           b"--fw\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nForwarded below.\r\n"
           b"--fw\r\nContent-Type: message/rfc822\r\nContent-Disposition: attachment\r\n\r\n" + INNER + b"\r\n"
           b"--fw--\r\n")

UNCLOSED = (b"Subject: cut\r\nContent-Type: multipart/mixed; boundary=b1\r\n\r\n"
            b"--b1\r\nContent-Type: text/plain\r\n\r\nfirst\r\n--b1\r\n\r\nlast, no close delimiter\r\n")

EXPECTED = {
    "plain": (PLAIN, b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 14 2 NIL NIL NIL NIL)'),
    "charset": (CHARSET, b'("text" "plain" ("charset" "UTF-8" "format" "flowed") NIL NIL "quoted-printable" 11 1 '
                         b'NIL NIL NIL NIL)'),
    "alternative": (ALTERNATIVE, b'(("text" "plain" ("charset" "utf-8") NIL NIL "7BIT" 8 0 NIL NIL NIL NIL)'
                                 b'("text" "html" ("charset" "utf-8") NIL NIL "7BIT" 15 0 NIL NIL ("en") NIL) '
                                 b'"alternative" ("boundary" "alt-1") NIL NIL NIL)'),
    "mixed": (MIXED, b'(("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 15 1 NIL NIL NIL NIL)'
                     b'("application" "pdf" ("name" "report.pdf") "<att1@x>" "the report" "base64" 8 NIL '
                     b'("attachment" ("filename" "report.pdf" "size" "6")) NIL NIL) "mixed" ("boundary" "mix") '
                     b'NIL NIL NIL)'),
    "nested": (NESTED, b'((("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 0 NIL NIL NIL NIL)'
                       b'("text" "html" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 11 0 NIL NIL NIL NIL) "alternative" '
                       b'("boundary" "inner") NIL NIL NIL)("image" "png" NIL NIL NIL "base64" 8 NIL NIL NIL NIL) '
                       b'"mixed" ("boundary" "outer") NIL NIL NIL)'),
    "rfc822": (FORWARD, b'(("text" "plain" ("charset" "us-ascii") NIL NIL "7BIT" 16 0 NIL NIL NIL NIL)'
                        b'("message" "rfc822" NIL NIL NIL "7BIT" 173 ("Wed, 25 Nov 2026 10:00:00 +0000" "original" '
                        b'(("Carol" NIL "carol" "example.org")) (("Carol" NIL "carol" "example.org")) '
                        b'(("Carol" NIL "carol" "example.org")) ((NIL NIL "dave" "example.org")) NIL NIL NIL '
                        b'"<orig@example.org>") ("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 26 1 '
                        b'NIL NIL NIL NIL) 7 NIL ("attachment" NIL) NIL NIL) "mixed" ("boundary" "fw") NIL NIL NIL)'),
    "unclosed": (UNCLOSED, b'(("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 5 0 NIL NIL NIL NIL)'
                           b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 26 1 NIL NIL NIL NIL) "mixed" '
                           b'("boundary" "b1") NIL NIL NIL)'),
    "empty": (b"Subject: nothing\r\n\r\n", b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0 NIL NIL NIL '
                                          b'NIL)'),
    "no-blank-line": (b"Subject: nothing\r\n", b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0 NIL NIL '
                                              b'NIL NIL)'),
    "nothing": (b"", b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0 NIL NIL NIL NIL)'),
}


def _without_extension(bs: bytes) -> bytes:
    """BODY from BODYSTRUCTURE for the cases above: drop each part's extension data."""
    bs = re.sub(rb' NIL (NIL|\("attachment" [^)]*\)*\)) (NIL|\("en"\)) NIL\)', b")", bs)
    return re.sub(rb' \("boundary" "[^"]*"\) NIL NIL NIL\)', b")", bs)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bodystructure_of_hand_written_messages(name: str) -> None:
    raw, expected = EXPECTED[name]
    root = structure(raw)
    assert bodystructure(root) == expected
    assert body(root) == _without_extension(expected)


def test_body_without_extension_data() -> None:
    assert body(structure(MIXED)) == (b'(("text" "plain" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 15 1)'
                                      b'("application" "pdf" ("name" "report.pdf") "<att1@x>" "the report" "base64" 8)'
                                      b' "mixed")')
    assert body(structure(FORWARD)).endswith(b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 26 1) 7) "mixed")')


def test_sections_of_hand_written_messages() -> None:
    root = structure(NESTED)
    assert section(NESTED, root, "1.1") == b"plain"
    assert section(NESTED, root, "1.2") == b"<b>html</b>"
    assert section(NESTED, root, "2") == b"iVBORw0K"
    assert section(NESTED, root, "1") == (b"--inner\r\nContent-Type: text/plain\r\n\r\nplain\r\n"
                                          b"--inner\r\nContent-Type: text/html\r\n\r\n<b>html</b>\r\n--inner--")
    assert section(NESTED, root, "1.MIME") == b"Content-Type: multipart/alternative; boundary=inner\r\n\r\n"
    assert section(NESTED, root, "2.MIME") == b"Content-Type: image/png\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    root = structure(FORWARD)
    assert section(FORWARD, root, "2") == INNER
    assert section(FORWARD, root, "2.HEADER") == INNER.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert section(FORWARD, root, "2.TEXT") == section(FORWARD, root, "2.1") == b"original body\r\nsecond line"
    root = structure(MIXED)
    assert section(MIXED, root, "1") == b"See attached.\r\n"
    root = structure(PLAIN)  # a message that is not multipart: its body is part 1, its header part 1's MIME header
    assert section(PLAIN, root, "1") == b"hello\r\nworld\r\n"
    assert section(PLAIN, root, "1.MIME") == b"From: a@example.org\r\nSubject: hi\r\n\r\n"
    assert locate(root, [2]) is None and locate(root, [1, 1]) is None
    assert locate(structure(NESTED), [3]) is None and locate(structure(NESTED), [2, 1]) is None


def test_lf_only_input_reads_as_crlf_does() -> None:
    for raw, expected in (EXPECTED["alternative"], EXPECTED["nested"], EXPECTED["unclosed"]):
        lf = raw.replace(b"\r\n", b"\n")
        want = expected.replace(b'"7BIT" 26 1', b'"7BIT" 25 1')  # unclosed: its last body is one LF shorter
        assert bodystructure(structure(lf)) == want
    root = structure(NESTED.replace(b"\r\n", b"\n"))
    assert root.children[0].children[1].body_size == len(b"<b>html</b>")


def test_digest_parts_default_to_message_rfc822_and_8bit_strings_are_literals() -> None:
    raw = (b"Content-Type: multipart/digest; boundary=d\r\n\r\n--d\r\n\r\nSubject: one\r\n\r\nx\r\n--d--\r\n")
    assert bodystructure(structure(raw)) == (
        b'(("MESSAGE" "RFC822" NIL NIL NIL "7BIT" 17 (NIL "one" NIL NIL NIL NIL NIL NIL NIL NIL) '
        b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 1 0 NIL NIL NIL NIL) 2 NIL NIL NIL NIL) "digest" '
        b'("boundary" "d") NIL NIL NIL)')
    raw = b'Content-Type: application/octet-stream; name="r\xe9sum\xe9.pdf"\r\n\r\nxx'
    assert bodystructure(structure(raw)) == (b'("application" "octet-stream" ("name" {10}\r\nr\xe9sum\xe9.pdf) NIL NIL '
                                             b'"7BIT" 2 NIL NIL NIL NIL)')


def test_delimiter_like_lines_long_lines_and_an_outer_delimiter_inside_an_inner_part() -> None:
    long_line = b"--b1" + b"x" * 5000
    raw = (b"Content-Type: multipart/mixed; boundary=b1\r\n\r\n--b1\r\n\r\n-- \r\n--b1x\r\n" + long_line + b"\r\n"
           b"--b1  \r\nContent-Type: multipart/alternative; boundary=b2\r\n\r\n--b2\r\n\r\ninner, never closed\r\n"
           b"--b1\r\n\r\nafter\r\n--b1--")
    root = structure(raw)
    assert [section(raw, root, s) for s in ("1", "2.1", "3")] == [
        b"-- \r\n--b1x\r\n" + long_line, b"inner, never closed", b"after"]
    assert root.children[1].body_lines == 2  # "--b2", its empty header line, the text; the CRLF before --b1 is not


def test_a_header_over_the_limit_is_a_body() -> None:
    huge = b"".join(b"X-Filler-%d: %s\r\n" % (i, b"y" * 100) for i in range(MAX_HEADER // 100 + 10))
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n" + huge + b"\r\nbody\r\n--b--\r\n"
    root = structure(raw)
    part = root.children[0]
    assert (part.header_size, part.body_size, part.body_lines) == (0, len(huge) + 6, huge.count(b"\n") + 1)
    assert section(raw, root, "1") == huge + b"\r\nbody"
    assert bodystructure(root).startswith(b'(("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" %d ' % (
        len(huge) + 6))


def test_nesting_is_bounded() -> None:
    depth = MAX_DEPTH + 20
    raw = b"".join(b"Content-Type: multipart/mixed; boundary=b%d\r\n\r\n--b%d\r\n" % (i, i) for i in range(depth))
    raw += b"\r\ndeep\r\n"
    root = structure(raw)
    levels = 0
    p: Part | None = root
    while p is not None and p.children:
        levels, p = levels + 1, p.children[0]
    assert levels < MAX_DEPTH and bodystructure(root).count(b"(") < 3 * MAX_DEPTH


# --- random trees against Python's email package ----------------------------------------------------------------

TEXT = st.text(alphabet="ab -=:.\n", max_size=120)


def _text(text: str, subtype: str, charset: str) -> email.message.Message:
    return MIMEText(text, subtype, charset)


def _attachment(content: bytes, name: str) -> email.message.Message:
    part = MIMEApplication(content)
    part.add_header("Content-Disposition", "attachment", filename=name)
    return part


def _multipart(kids: list[email.message.Message], subtype: str, preamble: str | None,
               epilogue: str | None) -> email.message.Message:
    m = MIMEMultipart(subtype, _subparts=kids)
    m.preamble, m.epilogue = preamble, epilogue
    return m


def _forwarded(inner: email.message.Message, subject: str) -> email.message.Message:
    inner["Subject"] = subject
    return MIMEMessage(inner)


LEAF = st.one_of(
    st.builds(_text, TEXT, st.sampled_from(["plain", "html"]), st.sampled_from(["us-ascii", "utf-8", "iso-8859-1"])),
    st.builds(_attachment, st.binary(max_size=300), st.sampled_from(["a.bin", "r\u00e9sum\u00e9.pdf"])),
)
TREE = st.recursive(LEAF, lambda kids: st.one_of(
    st.builds(_multipart, st.lists(kids, min_size=1, max_size=4), st.sampled_from(["mixed", "alternative", "related"]),
              st.none() | TEXT, st.none() | TEXT),
    st.builds(_forwarded, kids, st.sampled_from(["fwd", "re: x"])),
), max_leaves=8)


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    root = draw(TREE)
    if root.get_content_type() == "message/rfc822":
        root = _multipart([root], "mixed", None, None)
    for i, part in enumerate(root.walk()):  # boundaries the texts cannot hold (no digits, no "_"), not random ones
        if part.get_content_maintype() == "multipart":
            part.set_boundary(f"=_b{i}_=")
    root["Subject"] = "random tree"
    root["Message-ID"] = "<tree@example.org>"
    return root.as_bytes(policy=email.policy.compat32.clone(linesep="\r\n"))


def subparts(m: email.message.Message) -> list[email.message.Message]:
    """The parts of a multipart, or the one message a message/rfc822 part holds."""
    kids = m.get_payload()
    assert isinstance(kids, list)
    return [k for k in kids if isinstance(k, email.message.Message)]


def payload(m: email.message.Message) -> bytes:
    """A leaf's body as it is in the message (not decoded: the generated messages are 7-bit)."""
    text = m.get_payload()
    assert isinstance(text, str)
    return text.encode("ascii")


def email_parts(raw: bytes) -> dict[str, email.message.Message]:
    """Section part number -> the email package's view of that part (leaves and message/rfc822 parts)."""
    out: dict[str, email.message.Message] = {}

    def inside(m: email.message.Message, path: list[int]) -> None:  # m is a message: number its parts
        if m.get_content_maintype() == "multipart":
            for i, sub in enumerate(subparts(m), 1):
                part(sub, [*path, i])
        else:
            out[".".join(map(str, [*path, 1]))] = m

    def part(p: email.message.Message, path: list[int]) -> None:
        if p.get_content_maintype() == "multipart":
            for i, sub in enumerate(subparts(p), 1):
                part(sub, [*path, i])
        elif p.get_content_type() == "message/rfc822":
            out[".".join(map(str, path))] = p
            inside(subparts(p)[0], path)
        else:
            out[".".join(map(str, path))] = p

    inside(email.message_from_bytes(raw), [])
    return out


def header_items(head: bytes) -> list[tuple[str, str]]:
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head).items()


@settings(max_examples=150, deadline=None)
@given(raw=messages(), size=st.sampled_from([1, 2, 3, 17, 64, 4096]))
def test_every_part_is_what_the_email_package_sees(raw: bytes, size: int) -> None:
    root = scan(chunked(raw, size))
    assert bodystructure(root) == bodystructure(scan([raw]))
    parts = email_parts(raw)
    assert parts
    for num, p in parts.items():
        node = locate(root, [int(x) for x in num.split(".")])
        assert node is not None, num
        assert node.type.lower() + "/" + node.subtype.lower() == p.get_content_type()
        if p.get_content_type() == "message/rfc822":
            inner = subparts(p)[0]
            assert header_items(section(raw, root, num + ".HEADER")) == inner.items()
            continue
        assert section(raw, root, num) == payload(p), num
        if node.type.lower() == "text":
            assert node.body_lines == payload(p).count(b"\n")
        assert header_items(section(raw, root, num + ".MIME")) == p.items()


def parts_of(p: Part) -> Iterator[Part]:
    yield p
    for c in p.children:
        yield from parts_of(c)
    if p.message is not None:
        yield from parts_of(p.message)


PIECES = st.sampled_from([b"\r\n", b"\n", b"\r", b"--b", b"--b--", b"--c", b"Content-Type: multipart/mixed; boundary=b",
                          b"Content-Type: multipart/alternative; boundary=\"c\"", b"Content-Type: message/rfc822",
                          b"Content-Type: text/plain", b"Content-Type: multipart/digest; boundary=b", b"Subject: x",
                          b" folded", b"text", b"-", b"  ", b"\xff", b":"])


@settings(max_examples=400, deadline=None)
@given(raw=st.lists(PIECES, max_size=60).map(b"".join), size=st.integers(1, 40))
def test_any_octets_give_one_structure_whatever_the_chunks(raw: bytes, size: int) -> None:
    root = scan(chunked(raw, size))
    assert bodystructure(root) == bodystructure(scan([raw])) and body(root).startswith(b"(")
    for p in parts_of(root):
        assert 0 <= p.header_offset <= p.header_offset + p.header_size <= p.body_offset
        assert p.body_offset + p.body_size <= len(raw)
        assert p.body_lines == raw[p.body_offset:p.body_offset + p.body_size].count(b"\n")


# --- BODY[n.m] from a session on a real store ------------------------------------------------------------------


@pytest.fixture
def mailbox(data: Path) -> Iterator[Mailbox]:  # noqa: F811
    with Store.open(str(data)) as s:
        s.mount_intended()
        yield open_mailbox(s, "alice")


def run(session: ImapSession, command: bytes) -> bytes:
    out = b""
    for reply in session.handle(command):
        assert isinstance(reply, bytes | Iterator), reply  # no IDLE or STARTTLS here
        out += reply if isinstance(reply, bytes) else b"".join(reply)
    return out


def fetched(reply: bytes, label: bytes) -> bytes:
    m = re.search(re.escape(label) + rb" \{(\d+)\}\r\n", reply)
    assert m, reply[:300]
    return reply[m.end():m.end() + int(m.group(1))]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=messages())
def test_session_serves_each_part_as_the_email_package_sees_it(mailbox: Mailbox, raw: bytes) -> None:
    s = ImapSession(lambda user, password: mailbox)
    assert run(s, b"a LOGIN alice pw\r\n").startswith(b"a OK")
    assert b"b OK" in run(s, b"b SELECT INBOX\r\n")
    reply = run(s, b"c APPEND INBOX {%d}\r\n" % len(raw) + raw + b"\r\n")
    uid = int(re.search(rb"APPENDUID \d+ (\d+)", reply).group(1))  # type: ignore[union-attr]
    for num, p in email_parts(raw).items():
        reply = run(s, b"d UID FETCH %d (BODY.PEEK[%s])\r\n" % (uid, num.encode()))
        assert reply.endswith(b"d OK FETCH completed\r\n"), reply
        if p.get_content_type() == "message/rfc822":
            assert fetched(reply, b"BODY[%s]" % num.encode()).startswith(b"Content-Type: ")
            continue
        assert fetched(reply, b"BODY[%s]" % num.encode()) == payload(p), num
    assert b"\\Seen" not in run(s, b"e UID FETCH %d (FLAGS)\r\n" % uid)


# --- over a real socket ----------------------------------------------------------------------------------------


def test_fetch_bodystructure_and_parts_over_imap(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:  # noqa: F811
    _p, _smtp, port = imap_server
    c = login(port)
    for raw in (MIXED, FORWARD, PLAIN):
        assert c.append("INBOX", None, None, raw)[0] == "OK"
    c.select("INBOX")
    typ, dat = c.fetch("1:3", "(BODYSTRUCTURE)")
    assert typ == "OK" and dat == [b"%d (BODYSTRUCTURE %s)" % (i, EXPECTED[k][1])
                                   for i, k in enumerate(("mixed", "rfc822", "plain"), 1)]
    typ, dat = c.uid("FETCH", "1", "(BODY)")
    assert typ == "OK" and dat == [b"1 (UID 1 BODY " + body(structure(MIXED)) + b")"]
    typ, dat = c.fetch("3", "FULL")
    assert typ == "OK" and re.fullmatch(
        rb'3 \(FLAGS \(\) INTERNALDATE "[^"]+" RFC822.SIZE %d ENVELOPE \(NIL "hi" .*\) BODY \("TEXT" "PLAIN" '
        rb'\("CHARSET" "US-ASCII"\) NIL NIL "7BIT" 14 2\)\)' % len(PLAIN), fetch_line(dat))
    assert literal(c.fetch("1", "(BODY.PEEK[2])")[1]) == b"JVBERi0x"
    assert literal(c.fetch("1", "(BODY.PEEK[2.MIME])")[1]).startswith(b"Content-Type: application/pdf;")
    assert literal(c.fetch("1", "(BODY.PEEK[1])")[1]) == b"See attached.\r\n"
    typ, dat = c.fetch("1", "(BODY.PEEK[2]<2.3>)")
    assert literal(dat) == b"BER" and b"BODY[2]<2> {3}" in fetch_line(dat)
    typ, dat = c.fetch("1", "(BODY.PEEK[9] BODY.PEEK[2.HEADER])")  # no such part: an empty string
    assert typ == "OK" and dat == [(b"1 (BODY[9] {0}", b""), (b" BODY[2.HEADER] {0}", b""), b")"]
    assert literal(c.fetch("2", "(BODY.PEEK[2])")[1]) == INNER
    assert literal(c.fetch("2", "(BODY.PEEK[2.TEXT])")[1]) == b"original body\r\nsecond line"
    assert literal(c.fetch("2", "(BODY.PEEK[2.1])")[1]) == b"original body\r\nsecond line"
    typ, dat = c.fetch("2", "(BODY.PEEK[2.HEADER.FIELDS (SUBJECT TO)])")
    assert literal(dat) == b"To: dave@example.org\r\nSubject: original\r\n\r\n"
    assert b"BODY[2.HEADER.FIELDS (SUBJECT TO)]" in fetch_line(dat)
    assert literal(c.fetch("2", "(BODY.PEEK[2.HEADER])")[1]) == INNER.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert literal(c.fetch("3", "(BODY.PEEK[1])")[1]) == b"hello\r\nworld\r\n"
    assert literal(c.fetch("3", "(BODY.PEEK[1.MIME])")[1]) == PLAIN.split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    assert b"\\Seen" not in fetch_line(c.fetch("1:3", "(FLAGS)")[1])
    typ, dat = c.fetch("2", "(BODY[1])")  # without PEEK: \Seen, and the FETCH says so
    assert literal(dat) == b"Forwarded below." and b"FLAGS (\\Seen)" in fetch_line(dat)
    c.logout()


def test_bad_sections_are_refused_and_the_session_goes_on(imap_server: tuple[subprocess.Popen[str], int, int]) -> None:  # noqa: F811
    _p, _smtp, port = imap_server
    c = login(port)
    assert c.append("INBOX", None, None, NESTED)[0] == "OK"
    c.select("INBOX")
    for bad in ("(BODY[0])", "(BODY[1.0])", "(BODY[1.FOO])", "(BODY[MIME])", "(BODY.PEEK)"):
        with pytest.raises(imaplib.IMAP4.error):
            c.fetch("1", bad)
    assert literal(c.fetch("1", "(BODY.PEEK[1.2])")[1]) == b"<b>html</b>"
    c.logout()


def test_the_session_keeps_a_bounded_number_of_structures(mailbox: Mailbox) -> None:
    s = ImapSession(lambda user, password: mailbox)
    assert run(s, b"a LOGIN alice pw\r\n").startswith(b"a OK")
    raws = [PLAIN, MIXED, NESTED, FORWARD] * 9
    for raw in raws:
        assert b"OK [APPENDUID" in run(s, b"b APPEND INBOX {%d}\r\n" % len(raw) + raw + b"\r\n")
    assert b"c OK" in run(s, b"c SELECT INBOX\r\n")
    reply = run(s, b"d FETCH 1:* (BODYSTRUCTURE)\r\n")
    assert reply.count(b"BODYSTRUCTURE (") == len(raws) and len(s.structures) == STRUCTURE_CACHE
    want = {PLAIN: EXPECTED["plain"][1], MIXED: EXPECTED["mixed"][1], NESTED: EXPECTED["nested"][1],
            FORWARD: EXPECTED["rfc822"][1]}
    assert reply.split(b"\r\n")[:len(raws)] == [b"* %d FETCH (BODYSTRUCTURE %s)" % (i, want[raw])
                                                for i, raw in enumerate(raws, 1)]
    assert b"* 1 FETCH (BODYSTRUCTURE " + want[PLAIN] in run(s, b"e FETCH 1 (BODYSTRUCTURE)\r\n")  # read again
    # a folder deleted and made again reuses UID 1: its message is not taken for the old one
    assert b"f OK" in run(s, b"f CREATE Again\r\n")
    assert b"OK [APPENDUID" in run(s, b"g APPEND Again {%d}\r\n" % len(PLAIN) + PLAIN + b"\r\n")
    assert b"h OK" in run(s, b"h SELECT Again\r\n")
    assert b"BODYSTRUCTURE " + want[PLAIN] in run(s, b"i UID FETCH 1 (BODYSTRUCTURE)\r\n")
    assert b"j OK" in run(s, b"j SELECT INBOX\r\n") and b"k OK" in run(s, b"k DELETE Again\r\n")
    assert b"l OK" in run(s, b"l CREATE Again\r\n")
    assert b"OK [APPENDUID" in run(s, b"m APPEND Again {%d}\r\n" % len(NESTED) + NESTED + b"\r\n")
    assert b"n OK" in run(s, b"n SELECT Again\r\n")
    assert b"* 1 FETCH (UID 1 BODYSTRUCTURE " + want[NESTED] in run(s, b"o UID FETCH 1 (BODYSTRUCTURE)\r\n")
