"""The searchable text of a message, read as a stream: what IMAP SEARCH TEXT/BODY compare
against, and what the full-text index (``store/fti.py``) stores. One definition serves both,
so a search answers the same with or without the index.

A message yields text on three channels:

- ``HEAD``: the top-level header block as it is (UTF-8, undecodable bytes replaced), up to
  and including the blank line that ends it;
- ``BODY``: the decoded text of the body: every ``text/*`` part (quoted-printable and base64
  decoded, then its charset), nested ``message/rfc822`` headers as they are; parts of other
  types (binary attachments), MIME part headers, preambles and epilogues give nothing;
- ``EXTRA``: ``Name: value`` lines for header fields holding RFC 2047 encoded words, decoded
  (so ``=?utf-8?q?Gr=C3=BC=C3=9Fe?=`` is found as ``Grüße``).

Rule (docs/fti.md): ``TEXT t`` matches when ``fold(t)`` is a substring of ``fold(HEAD + BODY)``
or of ``fold(EXTRA)``; ``BODY t`` when it is a substring of ``fold(BODY)``. ``fold`` is
Unicode case folding (a superset of RFC 3501's case-insensitive ASCII compare) with NUL
turned into U+FFFD.

Invariants: memory stays bounded whatever the message size: input is taken in chunks, a
line longer than ``MAX_LINE`` is cut into pieces, at most ``MAX_HEADER`` bytes of a header
block are kept for parsing, and the decoders carry at most a few bytes between chunks.
Malformed MIME never raises: what cannot be understood is skipped or taken as text.
"""

from __future__ import annotations

import binascii
import codecs
import email.errors
import email.header
import email.message
import email.parser
import email.policy
import email.utils
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

HEAD, BODY, EXTRA = "head", "body", "extra"
TEXT_KEY, BODY_KEY = "TEXT", "BODY"
CHUNK = 64 * 1024
MAX_LINE = 64 * 1024
MAX_HEADER = 256 * 1024
_B64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_QP = re.compile(rb"=(\r\n|\n|[0-9A-Fa-f]{2})")

Term = tuple[str, str]  # (TEXT or BODY, folded term)


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


def fold(s: str) -> str:
    """Context-free case folding: folding piece by piece equals folding the whole."""
    return s.casefold().replace("\0", "\ufffd")


def term(kind: str, value: str) -> Term:
    k = kind.upper()
    if k not in (TEXT_KEY, BODY_KEY):
        raise ValueError(f"a text search key is TEXT or BODY, not {kind!r}")
    return k, fold(value)


# -- decoders ------------------------------------------------------------------------------------
class _Identity:
    def feed(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Base64:
    def __init__(self) -> None:
        self.carry = b""

    def feed(self, data: bytes) -> bytes:
        s = self.carry + _B64_JUNK.sub(b"", data)
        n = len(s) // 4 * 4
        self.carry = s[n:]
        return _b64(s[:n])

    def flush(self) -> bytes:
        s, self.carry = self.carry, b""
        return _b64(s + b"=" * (-len(s) % 4)) if len(s) >= 2 else b""


def _b64(s: bytes) -> bytes:
    try:
        return binascii.a2b_base64(s) if s else b""
    except binascii.Error:
        return b""


class _QuotedPrintable:
    def __init__(self) -> None:
        self.carry = b""

    def feed(self, data: bytes) -> bytes:
        s = self.carry + data
        cut = s.rfind(b"=", max(0, len(s) - 2))  # "=", "=X" or "=\r" may continue in the next chunk
        if cut < 0:
            cut = len(s)
        self.carry = s[cut:]
        return _QP.sub(_qp_sub, s[:cut])

    def flush(self) -> bytes:
        s, self.carry = self.carry, b""
        return _QP.sub(_qp_sub, s)


def _qp_sub(m: re.Match[bytes]) -> bytes:
    g = m.group(1)
    return b"" if g in (b"\r\n", b"\n") else bytes([int(g, 16)])


def _charset_decoder(charset: str | None) -> codecs.IncrementalDecoder:
    name = (charset or "utf-8").strip().lower()
    if name in ("us-ascii", "ascii", "unknown-8bit", "x-unknown", ""):
        name = "utf-8"  # unlabelled 8-bit mail is most often UTF-8
    try:
        return codecs.getincrementaldecoder(name)("replace")
    except (LookupError, TypeError):
        return codecs.getincrementaldecoder("utf-8")("replace")


class _TextPart:
    """Bytes of a text part's body -> text (transfer encoding, then charset)."""

    def __init__(self, cte: str, charset: str | None) -> None:
        c = cte.strip().lower()
        self.cte: _Identity | _Base64 | _QuotedPrintable = (
            _Base64() if c == "base64" else _QuotedPrintable() if c == "quoted-printable" else _Identity())
        self.chars = _charset_decoder(charset)

    def feed(self, data: bytes) -> str:
        return self.chars.decode(self.cte.feed(data))

    def flush(self) -> str:
        return self.chars.decode(self.cte.flush(), final=True)


# -- the streaming MIME walk -----------------------------------------------------------------------
class Extractor:
    """Fed the message's bytes in any chunking; calls ``emit(channel, text)`` in order.

    States: reading a header block (the top one is emitted on HEAD; a nested message's on
    BODY; a MIME part's is only parsed) -> a body (a text part emits BODY; other parts are
    skipped) -> at a boundary line of an enclosing multipart, the next part's header block.
    """

    def __init__(self, emit: Callable[[str, str], None]) -> None:
        self.emit = emit
        self.boundaries: list[bytes] = []
        self.in_header = True
        self.header_channel: str | None = HEAD  # where header bytes go (None: a MIME part's, kept quiet)
        self.top = True
        self.hbuf = bytearray()
        self.hchars = _charset_decoder("utf-8")
        self.part: _TextPart | None = None  # the text part being read, or None (skipping)
        self.line = bytearray()  # the line being assembled (at most MAX_LINE bytes)
        self.line_start = True  # whether ``line`` starts a line (only such a piece can be a boundary)

    def feed(self, data: bytes) -> None:
        pos = 0
        n = len(data)
        while pos < n:
            nl = data.find(b"\n", pos)
            end = n if nl < 0 else nl + 1
            room = MAX_LINE - len(self.line)
            if end - pos > room:
                end = pos + room
                self.line += data[pos:end]
                self._line(bytes(self.line), complete=False)
            else:
                self.line += data[pos:end]
                if nl >= 0 and end == nl + 1:
                    self._line(bytes(self.line), complete=True)
                elif len(self.line) >= MAX_LINE:
                    self._line(bytes(self.line), complete=False)
            pos = end

    def close(self) -> None:
        if self.line:
            self._line(bytes(self.line), complete=False)
        self._end_body()
        if self.in_header:
            self._header_done()
            self._end_body()

    def _line(self, line: bytes, *, complete: bool) -> None:
        start = self.line_start
        self.line.clear()
        self.line_start = complete
        if start and self.boundaries and line[:2] == b"--" and self._boundary(line):
            return
        if self.in_header:
            self._header_line(line, start=start)
        elif self.part is not None:
            self._emit(BODY, self.part.feed(line))

    def _boundary(self, line: bytes) -> bool:
        s = line.rstrip(b" \t\r\n")
        for i in range(len(self.boundaries) - 1, -1, -1):
            b = self.boundaries[i]
            if s == b"--" + b or s == b"--" + b + b"--":
                if self.in_header:
                    self._header_done(parse_only=True)
                self._end_body()
                if s.endswith(b"--") and s != b"--" + b:
                    del self.boundaries[i:]  # closed: the rest up to an outer boundary is epilogue
                    self.in_header = False
                else:
                    del self.boundaries[i + 1:]
                    self._start_header(None)
                return True
        return False

    def _start_header(self, channel: str | None) -> None:
        self.in_header = True
        self.header_channel = channel
        self.hbuf.clear()
        self.hchars = _charset_decoder("utf-8")

    def _header_line(self, line: bytes, *, start: bool) -> None:
        if self.header_channel is not None:
            self._emit(self.header_channel, self.hchars.decode(line))
        if len(self.hbuf) < MAX_HEADER:
            self.hbuf += line[: MAX_HEADER - len(self.hbuf)]
        if start and line in (b"\r\n", b"\n"):
            self._header_done()

    def _header_done(self, *, parse_only: bool = False) -> None:
        """The header block is complete: decide what its body is."""
        if self.header_channel is not None:
            self._emit(self.header_channel, self.hchars.decode(b"", final=True))
        raw = bytes(self.hbuf)
        if self.top:
            self.top = False
            self._emit(EXTRA, _encoded_words(raw))
        self.in_header = False
        if parse_only:
            return
        msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
        ctype = msg.get_content_type()
        if ctype.startswith("multipart/"):
            boundary = _param(msg, "boundary")
            if boundary:
                self.boundaries.append(boundary.encode("utf-8", "replace"))
            return  # the preamble (or a multipart without boundary) gives nothing
        if ctype in ("message/rfc822", "message/global"):
            self._start_header(BODY)
            return
        if ctype.startswith("text/"):
            self.part = _TextPart(str(msg.get("Content-Transfer-Encoding", "") or ""), _param(msg, "charset"))

    def _end_body(self) -> None:
        if self.part is not None:
            self._emit(BODY, self.part.flush())
            self.part = None

    def _emit(self, channel: str, s: str) -> None:
        if s:
            self.emit(channel, s)


def _param(msg: email.message.Message, name: str) -> str | None:
    try:
        v = msg.get_param(name)
    except (ValueError, IndexError):
        return None
    if isinstance(v, tuple):
        v = email.utils.collapse_rfc2231_value(v)
    return str(v) if v else None


def _encoded_words(raw: bytes) -> str:
    """``Name: decoded value`` lines for the fields that hold RFC 2047 encoded words."""
    if b"=?" not in raw:
        return ""
    text = raw.decode("utf-8", "replace")
    out = []
    for m in re.finditer(r"^([!-9;-~]+)[ \t]*:([^\r\n]*(?:\r?\n[ \t][^\r\n]*)*)", text, re.M):
        value = m.group(2)
        if "=?" not in value:
            continue
        value = re.sub(r"\r?\n([ \t])", r"\1", value).strip()
        try:
            decoded = str(email.header.make_header(email.header.decode_header(value)))
        except (ValueError, LookupError, UnicodeError, email.errors.HeaderParseError):
            continue
        out.append(f"{m.group(1)}: {decoded}\n")
    return "".join(out)


def pieces(source: Readable) -> Iterator[tuple[str, str]]:
    """(channel, text) pieces of a message read from ``source`` chunk by chunk. A consumer
    that stops early stops the reading too."""
    pending: list[tuple[str, str]] = []
    ex = Extractor(lambda ch, s: pending.append((ch, s)))
    while chunk := source.read(CHUNK):
        ex.feed(bytes(chunk))
        yield from pending
        pending.clear()
    ex.close()
    yield from pending


def pieces_of(data: bytes) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    ex = Extractor(lambda ch, s: out.append((ch, s)))
    ex.feed(data)
    ex.close()
    return out


# -- finding terms in a stream ---------------------------------------------------------------------
class Finder:
    """Which terms occur, following the pieces of one message (piece boundaries never hide
    a match: each channel keeps the last ``len(longest term) - 1`` folded characters)."""

    def __init__(self, terms: Iterable[Term]) -> None:
        self.terms = list(dict.fromkeys(terms))
        self.found: set[Term] = {t for t in self.terms if t[1] == ""}
        keep = max((len(t[1]) for t in self.terms), default=1) - 1
        self.keep = max(keep, 0)
        self.tails = {"hb": "", "b": "", "x": ""}

    @property
    def done(self) -> bool:
        return len(self.found) == len(self.terms)

    def feed(self, channel: str, s: str) -> None:
        f = fold(s)
        if channel == HEAD:
            self._scan("hb", f, TEXT_KEY)
        elif channel == BODY:
            self._scan("hb", f, TEXT_KEY)
            self._scan("b", f, BODY_KEY)
        elif channel == EXTRA:
            self._scan("x", f, TEXT_KEY)

    def _scan(self, stream: str, f: str, kind: str) -> None:
        window = self.tails[stream] + f
        for t in self.terms:
            if t[0] == kind and t not in self.found and t[1] in window:
                self.found.add(t)
        self.tails[stream] = window[-self.keep:] if self.keep else ""


def find(source: Readable, terms: Iterable[Term]) -> set[Term]:
    """The terms found in a message read from ``source`` (stops reading once all are found)."""
    finder = Finder(terms)
    if finder.done:
        return set(finder.found)
    for ch, s in pieces(source):
        finder.feed(ch, s)
        if finder.done:
            break
    return set(finder.found)

