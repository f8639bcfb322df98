"""IMAP command syntax (RFC 3501 §9), parsed without I/O.

A command arrives as bytes with its literals inline (``{n}\\r\\n`` followed by n octets: the
I/O layer has read them). :func:`parse` splits it into the tag, the command and its
arguments: atoms (``str``), strings (``bytes``: quoted or literal) and parenthesized lists.
An atom may carry a bracketed section and a partial (``BODY.PEEK[HEADER.FIELDS (A B)]<0.10>``),
kept whole for the FETCH parser. Errors raise :class:`ParseError` with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

Token = "str | bytes | list[Token]"
_LITERAL = re.compile(rb"\{(\d{1,10})\+?\}\r\n")
ATOM_STOP = b" ()\r\n\"{"


class ParseError(ValueError):
    pass


@dataclass
class Command:
    tag: str
    name: str
    args: list[object]


def parse(data: bytes) -> Command:
    p = _Parser(data)
    tag = p.atom()
    if not tag or any(c in tag for c in "+*%"):
        raise ParseError("a command starts with a tag")
    p.space()
    name = p.atom().upper()
    if name == "UID":
        p.space()
        name = "UID " + p.atom().upper()
    args: list[object] = []
    while not p.at_end():
        p.space()
        args.append(p.value())
    return Command(tag, name, args)


def literal_size(line: bytes) -> int | None:
    """The size a line's trailing ``{n}`` announces (the I/O layer then reads n octets)."""
    m = re.search(rb"\{(\d{1,10})\+?\}\r?\n?$", line)
    return int(m.group(1)) if m else None


class _Parser:
    def __init__(self, data: bytes) -> None:
        # exactly the command's own line end goes: a literal's last octets may be CR LF too
        self.d = data[:-2] if data.endswith(b"\r\n") else data[:-1] if data.endswith(b"\n") else data
        self.i = 0

    def at_end(self) -> bool:
        return self.i >= len(self.d) or self.d[self.i:] in (b"\r\n",)

    def space(self) -> None:
        if self.d[self.i:self.i + 1] != b" ":
            raise ParseError(f"expected a space at position {self.i}")
        self.i += 1

    def atom(self) -> str:
        start = self.i
        depth = 0
        while self.i < len(self.d):
            c = self.d[self.i:self.i + 1]
            if c == b"[":
                depth += 1
            elif c == b"]":
                depth -= 1
            elif depth == 0 and c in (b" ", b"(", b")", b"\r", b"\n", b'"', b"{"):
                if c == b"(" and self.i > start and self.d[self.i - 1:self.i] == b"]":
                    pass
                else:
                    break
            self.i += 1
            if depth == 0 and self.d[self.i - 1:self.i] == b"]" and self.d[self.i:self.i + 1] == b"<":
                end = self.d.find(b">", self.i)
                if end < 0:
                    raise ParseError("unterminated partial <...>")
                self.i = end + 1
        if depth:
            raise ParseError("unbalanced [ ]")
        if self.i == start:
            raise ParseError(f"expected an atom at position {start}")
        return self.d[start:self.i].decode("utf-8", "replace")

    def value(self) -> object:
        c = self.d[self.i:self.i + 1]
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        if c == b"(":
            self.i += 1
            out: list[object] = []
            while self.d[self.i:self.i + 1] != b")":
                if self.i >= len(self.d):
                    raise ParseError("unterminated list")
                if out:
                    self.space()
                out.append(self.value())
            self.i += 1
            return out
        return self.atom()

    def quoted(self) -> bytes:
        self.i += 1
        out = bytearray()
        while True:
            if self.i >= len(self.d):
                raise ParseError("unterminated quoted string")
            c = self.d[self.i]
            if c == 0x5C:  # backslash
                self.i += 1
                out.append(self.d[self.i])
            elif c == 0x22:
                self.i += 1
                return bytes(out)
            elif c in (0x0D, 0x0A):
                raise ParseError("a quoted string cannot hold CR or LF (use a literal)")
            else:
                out.append(c)
            self.i += 1

    def literal(self) -> bytes:
        m = _LITERAL.match(self.d, self.i)
        if not m:
            raise ParseError("malformed literal")
        n = int(m.group(1))
        start = m.end()
        if start + n > len(self.d):
            raise ParseError("literal shorter than announced")
        self.i = start + n
        return self.d[start:start + n]


def text(value: object) -> str:
    """An astring argument as text."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, str):
        return value
    raise ParseError("expected a string, not a list")


def sequence_set(spec: str, top: int) -> list[int]:
    """``1:3,7,9:*`` -> sorted numbers within 1..top (``*`` is top)."""
    out: set[int] = set()
    for part in spec.split(","):
        a, _, b = part.partition(":")
        try:
            lo = top if a == "*" else int(a)
            hi = lo if not b else top if b == "*" else int(b)
        except ValueError as e:
            raise ParseError(f"bad sequence set {spec!r}") from e
        if lo <= 0 or hi <= 0:
            raise ParseError(f"bad sequence set {spec!r}: numbers start at 1")
        lo, hi = min(lo, hi), min(max(lo, hi), max(top, 0))
        out.update(range(lo, hi + 1))
    return sorted(out)
