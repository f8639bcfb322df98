"""The MIME structure of a stored message, for IMAP (RFC 3501 §6.4.5 sections, §7.4.2 BODY and
BODYSTRUCTURE), found in one streaming pass.

:func:`scan` reads a message as an iterator of byte chunks and returns its tree of
:class:`Part`: for each part, where its MIME header and body lie in the message (absolute
octet offsets, so a section is served by streaming that byte range from the store again),
its body's line count and the fields BODYSTRUCTURE reports. :func:`bodystructure` and
:func:`body` render the tree; :func:`locate` resolves a section's part number.

Invariants:
- The message is never held: only the header block of the part being read (at most
  ``MAX_HEADER`` octets) and one line's start (at most ``MAX_BOUNDARY_LINE`` octets, to spot a
  boundary) are kept between chunks; bodies are only counted. A boundary split across two
  chunks is found all the same.
- Lines end at LF (CRLF, or a bare LF, taken defensively: the store normalises to CRLF); a
  lone CR is content. A boundary delimiter line is ``--boundary`` or ``--boundary--`` and
  optional spaces or tabs (RFC 2046 §5.1.1); the line end before it belongs to the
  delimiter, not to the part before it. Any enclosing multipart's delimiter ends the parts
  inside it, so a missing close delimiter loses nothing; preamble and epilogue belong to the
  multipart's body, not to a part.
- A part's header ends at its blank line, or at the first line that is neither a field nor
  a continuation (that line is then the body's first), as Python's ``email`` package reads it.
  A header longer than ``MAX_HEADER`` is not a header: the whole part is a text/plain body.
- Bounded: at most ``MAX_PARTS`` parts and ``MAX_DEPTH`` nested levels; past them the rest is
  body of the part being read. message/rfc822 is opened only with an identity encoding
  (7bit, 8bit, binary).
- Rendering keeps header values as written (type, subtype, parameters, encoding, case
  included), as Dovecot does; what a header leaves out is given in RFC 3501's upper case
  (``"TEXT" "PLAIN" ("CHARSET" "US-ASCII")``, ``"7BIT"``). Strings with 8-bit octets, CR or
  LF are sent as literals.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_HEADER = 64 * 1024
MAX_PARTS = 10_000
MAX_DEPTH = 64
MAX_BOUNDARY_LINE = 1024  # a longer line is never a boundary delimiter (boundaries are at most 70 octets)
IDENTITY = ("7bit", "8bit", "binary")
# a header line as Python's email package (feedparser.headerRE) sees one: a field, a continuation, a From_ line
_HEADER_LINE = re.compile(rb"From |[\x21-\x39\x3b-\x7e]*:|[ \t]")
NIL_ENVELOPE = b"(NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"


@dataclass(eq=False)
class Part:
    """One MIME entity. ``header_*`` is its MIME header (the blank line included), ``body_*``
    its body; a multipart's body runs from its preamble to the end of its epilogue. A
    message/rfc822 part's ``message`` is the message it holds (its own header and body), whose
    ``envelope`` is set."""

    header_offset: int
    header_size: int = 0
    body_offset: int = 0
    body_size: int = 0
    body_lines: int = 0
    type: str = "text"
    subtype: str = "plain"
    typed: bool = False  # False: no valid Content-Type; type/subtype are the default
    params: list[tuple[str, str]] = field(default_factory=list)
    id: str | None = None
    description: str | None = None
    encoding: str | None = None
    md5: str | None = None
    disposition: tuple[str, list[tuple[str, str]]] | None = None
    language: list[str] | None = None
    location: str | None = None
    children: list[Part] = field(default_factory=list)
    message: Part | None = None
    envelope: bytes | None = None
    lfs_head: int = 0  # LFs before the header (while scanning)
    lfs_body: int = 0  # LFs before the body (while scanning)
    digest_child: bool = False  # a part of multipart/digest: message/rfc822 by default
    is_message: bool = False  # the header is a message's (top level, or inside message/rfc822)
    tree_parts: int = 1  # on the root: how many parts the whole tree has (a cache weighs trees by it)

    @property
    def multipart(self) -> bool:
        return self.type.lower() == "multipart"

    @property
    def rfc822(self) -> bool:
        return self.type.lower() == "message" and self.subtype.lower() == "rfc822"

    def param(self, name: str) -> str | None:
        return next((v for k, v in self.params if k.lower() == name), None)


def scan(chunks: Iterable[bytes]) -> Part:
    """The MIME tree of the message the chunks make up (its root is the message itself)."""
    s = _Scanner()
    for chunk in chunks:
        if chunk:
            s.feed(chunk)
    return s.finish()


def locate(root: Part, numbers: list[int]) -> Part | None:
    """The part a section's part number names (RFC 3501 §6.4.5), or None if there is none.
    The body of a message that is not multipart is its part 1; after a message/rfc822 part,
    numbers go on inside the message it holds."""
    cur = root
    for depth, k in enumerate(numbers):
        if depth:
            if cur.message is not None:
                cur = cur.message
            elif not cur.multipart:
                return None
        if cur.multipart:
            if not 1 <= k <= len(cur.children):
                return None
            cur = cur.children[k - 1]
        elif k != 1:
            return None
    return cur


class _Scanner:
    """The streaming pass. ``buf[i:]`` is what has not been looked at yet; it starts at offset
    ``pos`` of the message. ``open`` is the chain of parts not yet ended (the root first),
    ``bounds`` the delimiters in force (innermost last) with the multipart each belongs to."""

    def __init__(self) -> None:
        self.root = Part(0, is_message=True)
        self.open: list[Part] = [self.root]
        self.bounds: list[tuple[bytes, Part]] = []
        self.in_header = True
        self.head = bytearray()
        self.buf = b""
        self.i = 0
        self.pos = 0
        self.lfs = 0  # LFs before pos
        self.eol = 0  # length of the line end just before pos (0: pos is not at a line start)
        self.cr = False  # the octet before pos is CR (a CRLF may be split between two chunks)
        self.parts = 1

    def feed(self, chunk: bytes) -> None:
        self.buf = self.buf[self.i:] + chunk if self.i < len(self.buf) else chunk
        self.i = 0
        self._run(final=False)

    def finish(self) -> Part:
        self._run(final=True)
        while self.open:
            self._close(self.open.pop(), self.pos, 0)
        self.root.tree_parts = self.parts
        return self.root

    def _consume(self, n: int) -> None:
        data = self.buf[self.i:self.i + n]
        self.lfs += data.count(b"\n")
        if data.endswith(b"\n"):
            self.eol = 2 if data[-2:] == b"\r\n" or (len(data) == 1 and self.cr) else 1
        else:
            self.eol = 0
        self.cr = data.endswith(b"\r")
        self.i += n
        self.pos += n

    def _run(self, final: bool) -> None:
        while True:
            buf, i = self.buf, self.i
            avail = len(buf) - i
            if avail == 0:
                return
            if self.in_header:
                j = buf.find(b"\n", i)
                if j < 0 and not final:
                    if avail + len(self.head) > MAX_HEADER:
                        self._oversize()
                        continue
                    return
                line = buf[i:j + 1] if j >= 0 else buf[i:]
                if not self._boundary(line):
                    self._header_line(line)
                continue
            if not self.bounds:  # nothing but the end can end this body
                self._consume(avail)
                return
            if self.pos == 0 or self.eol:  # at a line start
                if avail < 2 and not final:
                    return
                if buf.startswith(b"--", i):
                    j = buf.find(b"\n", i, i + MAX_BOUNDARY_LINE)
                    if j >= 0:
                        line = buf[i:j + 1]
                    elif final or avail >= MAX_BOUNDARY_LINE:
                        line = buf[i:i + MAX_BOUNDARY_LINE]
                    else:
                        return
                    if not self._boundary(line):
                        self._consume(len(line))
                    continue
            k = buf.find(b"\n--", i)
            if k >= 0:
                self._consume(k + 1 - i)
                continue
            last = buf.rfind(b"\n", i)
            if last < 0 or final or len(buf) - (last + 1) >= 2:
                self._consume(avail)  # no delimiter can start in here
            else:
                self._consume(last + 1 - i)  # keep a short last line: it may become "--..."
            return

    def _boundary(self, line: bytes) -> bool:
        """If ``line`` (at ``pos``) is a delimiter in force: end what it ends, start what it starts."""
        if not self.bounds or not line.startswith(b"--"):
            return False
        s = line[:-1] if line.endswith(b"\n") else line
        s = (s[:-1] if s.endswith(b"\r") else s).rstrip(b" \t")
        for idx in range(len(self.bounds) - 1, -1, -1):
            delim, owner = self.bounds[idx]
            if s == delim:
                closing = False
            elif s == delim + b"--":
                closing = True
            else:
                continue
            while self.open[-1] is not owner:
                self._close(self.open.pop(), self.pos, self.eol)
            del self.bounds[idx if closing else idx + 1:]
            self._consume(len(line))
            if not closing:
                child = Part(self.pos, lfs_head=self.lfs, digest_child=owner.subtype.lower() == "digest")
                owner.children.append(child)
                self._push(child)
            return True
        return False

    def _push(self, part: Part) -> None:
        self.open.append(part)
        self.parts += 1
        self.in_header = True
        self.head = bytearray()
        if self.parts >= MAX_PARTS:
            self.bounds.clear()  # no more parts: the rest is this one's

    def _header_line(self, line: bytes) -> None:
        if line in (b"\r\n", b"\n"):
            self._consume(len(line))
            self._end_header()
        elif _HEADER_LINE.match(line):
            if len(self.head) + len(line) > MAX_HEADER:
                self._oversize()
                return
            self.head += line
            self._consume(len(line))
        else:
            self._end_header()  # this line is the body's first: read again in the body state

    def _oversize(self) -> None:
        part = self.open[-1]
        self.in_header = False
        self.head = bytearray()
        part.header_size, part.body_offset, part.lfs_body = 0, part.header_offset, part.lfs_head
        if part.is_message and part is not self.root:
            part.envelope = NIL_ENVELOPE

    def _end_header(self) -> None:
        part = self.open[-1]
        self.in_header = False
        head, self.head = bytes(self.head), bytearray()
        part.header_size = self.pos - part.header_offset
        part.body_offset, part.lfs_body = self.pos, self.lfs
        self._fields(part, head)
        room = len(self.open) < MAX_DEPTH and self.parts < MAX_PARTS
        boundary = (part.param("boundary") or "").rstrip()
        if part.multipart and boundary and room:
            self.bounds.append((b"--" + boundary.encode("latin-1"), part))
        elif part.rfc822 and (part.encoding or "7bit").lower() in IDENTITY and room:
            part.message = Part(self.pos, lfs_head=self.lfs, is_message=True)
            self._push(part.message)

    def _close(self, part: Part, at: int, eol: int) -> None:
        """End ``part`` where a delimiter line starts (``eol``: the line end before it) or at the end."""
        if self.in_header:  # only ever the innermost part: its header had no blank line
            self.in_header = False
            part.header_size = at - part.header_offset
            part.body_offset, part.lfs_body = at, self.lfs
            self._fields(part, bytes(self.head))
            self.head = bytearray()
            return
        end = at - eol
        if end < part.body_offset:
            part.body_size = part.body_lines = 0
        else:
            part.body_size = end - part.body_offset
            part.body_lines = self.lfs - (1 if eol else 0) - part.lfs_body

    def _fields(self, part: Part, head: bytes) -> None:
        f = _header_fields(head)
        ct = _content_type(f["content-type"]) if "content-type" in f else None
        if ct is not None:
            part.type, part.subtype, part.params = ct
            part.typed = True
        elif part.digest_child:
            part.type, part.subtype = "message", "rfc822"
        part.encoding = f.get("content-transfer-encoding") or None
        part.id = f.get("content-id")
        part.description = f.get("content-description")
        part.md5 = f.get("content-md5")
        part.location = f.get("content-location")
        disp = f.get("content-disposition")
        if disp:
            kind, _, rest = disp.partition(";")
            if kind.strip():
                part.disposition = (kind.strip(), _params(rest))
        langs = [x.strip() for x in f.get("content-language", "").split(",") if x.strip()]
        part.language = langs or None
        if part.is_message and part is not self.root:
            part.envelope = envelope(head)


def _header_fields(head: bytes) -> dict[str, str]:
    """Lower-case field name -> its first value, unfolded and stripped (octets as latin-1)."""
    text = re.sub(r"\r?\n(?=[ \t])", "", head.decode("latin-1"))
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if colon and name and name not in out:
            out[name] = value.strip()
    return out


def _content_type(value: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    main, _, rest = value.partition(";")
    t, slash, s = main.strip().partition("/")
    t, s = t.strip(), s.strip()
    if not slash or not t or not s or re.search(r"[\s/]", t + s):
        return None
    return t, s, _params(rest)


def _params(text: str) -> list[tuple[str, str]]:
    """``; a=b; c="d \\" e"`` -> [(a, b), (c, 'd " e')], names and values as written."""
    out: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t;":
            i += 1
        j = i
        while j < n and text[j] not in "=;":
            j += 1
        name = text[i:j].strip()
        if j >= n or text[j] == ";":
            i = j
            continue
        j += 1
        while j < n and text[j] in " \t":
            j += 1
        if j < n and text[j] == '"':
            j += 1
            chars = []
            while j < n and text[j] != '"':
                if text[j] == "\\" and j + 1 < n:
                    j += 1
                chars.append(text[j])
                j += 1
            value = "".join(chars)
            while j < n and text[j] != ";":
                j += 1
        else:
            k = j
            while k < n and text[k] != ";":
                k += 1
            value, j = text[j:k].strip(), k
        if name:
            out.append((name, value))
        i = j
    return out


# -- rendering -------------------------------------------------------------------------------------------------


def string(value: str | None) -> bytes:
    """An nstring from header text (octets as latin-1): quoted when it is 7-bit text, else a literal."""
    if value is None:
        return b"NIL"
    b = value.encode("latin-1", "replace")
    if all(0x20 <= c < 0x7F for c in b):
        return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(b) + b


def _plist(params: list[tuple[str, str]]) -> bytes:
    if not params:
        return b"NIL"
    return b"(" + b" ".join(string(k) + b" " + string(v) for k, v in params) + b")"


def _extension(p: Part) -> bytes:
    disp = b"NIL" if p.disposition is None else b"(" + string(p.disposition[0]) + b" " + _plist(
        p.disposition[1]) + b")"
    lang = b"NIL" if p.language is None else b"(" + b" ".join(string(x) for x in p.language) + b")"
    return disp + b" " + lang + b" " + string(p.location)


def _empty(ext: bool) -> bytes:
    return b'("TEXT" "PLAIN" ("CHARSET" "US-ASCII") NIL NIL "7BIT" 0 0' + (b" NIL NIL NIL NIL)" if ext else b")")


def _render(p: Part, ext: bool) -> bytes:
    if p.multipart:
        out = b"".join(_render(c, ext) for c in p.children) or _empty(ext)
        out += b" " + string(p.subtype)
        if ext:
            out += b" " + _plist(p.params) + b" " + _extension(p)
        return b"(" + out + b")"
    text = p.type.lower() == "text"
    if p.typed:
        head = [string(p.type), string(p.subtype)]
    else:
        head = [string(p.type.upper()), string(p.subtype.upper())]
    params = _plist(p.params)
    if text and p.param("charset") is None:  # RFC 2045 §5.2's default, said out loud
        params = (params[:-1] + b" " if p.params else b"(") + b'"CHARSET" "US-ASCII")'
    fields = [*head, params, string(p.id), string(p.description),
              string(p.encoding) if p.encoding else b'"7BIT"', b"%d" % p.body_size]
    if text:
        fields.append(b"%d" % p.body_lines)
    elif p.rfc822:
        if p.message is None:  # not opened (an encoding other than identity, or too deep)
            fields += [NIL_ENVELOPE, _empty(ext)]
        else:
            fields += [p.message.envelope or NIL_ENVELOPE, _render(p.message, ext)]
        fields.append(b"%d" % p.body_lines)
    if ext:
        fields += [string(p.md5), _extension(p)]
    return b"(" + b" ".join(fields) + b")"


def bodystructure(root: Part) -> bytes:
    """FETCH BODYSTRUCTURE: the structure with extension data."""
    return _render(root, ext=True)


def body(root: Part) -> bytes:
    """FETCH BODY: the structure without extension data."""
    return _render(root, ext=False)


# -- ENVELOPE ----------------------------------------------------------------------------------------------------


def quote(s: str) -> bytes:
    """An IMAP string: quoted, or a literal when it holds CR, LF, or both ``"`` and ``\\``."""
    b = s.encode("utf-8")
    if b"\r" in b or b"\n" in b or b'"' in b and b"\\" in b:
        return b"{%d}\r\n" % len(b) + b
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def nstring(value: str | None) -> bytes:
    return b"NIL" if value is None else quote(value)


def envelope(head: bytes) -> bytes:
    """RFC 3501 §7.4.2, from the header as it is (encoded words are left to the client):
    date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to, message-id. Sender and
    reply-to default to from."""
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)

    def value(name: str) -> str | None:
        v = msg.get(name)
        return None if v is None else re.sub(r"\r?\n[ \t]", " ", str(v)).strip()

    def addresses(name: str) -> bytes:
        raw = msg.get_all(name)
        if not raw:
            return b"NIL"
        out = []
        for disp, addr in email.utils.getaddresses([re.sub(r"\r?\n[ \t]", " ", str(v)) for v in raw]):
            if not addr and not disp:
                continue
            local, _, host = addr.rpartition("@") if "@" in addr else (addr, "", "")
            out.append(b"(" + b" ".join([nstring(disp or None), b"NIL", nstring(local or None),
                                          nstring(host or None)]) + b")")
        return b"(" + b"".join(out) + b")" if out else b"NIL"

    frm = addresses("From")
    parts = [nstring(value("Date")), nstring(value("Subject")), frm,
             addresses("Sender") if msg.get("Sender") else frm,
             addresses("Reply-To") if msg.get("Reply-To") else frm,
             addresses("To"), addresses("Cc"), addresses("Bcc"),
             nstring(value("In-Reply-To")), nstring(value("Message-ID"))]
    return b"(" + b" ".join(parts) + b")"
