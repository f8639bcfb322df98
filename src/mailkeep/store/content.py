"""Message content: streamed into a database's ``.stm`` with its headers read on the way.

Invariants:
- A message passes through memory one chunk at a time (64 KiB), whatever its size; only
  the header block (at most ``MAX_HEADER`` bytes) is kept to read Message-ID, Subject and
  From.
- Stored content has CRLF line ends (RFC 5322, and what IMAP serves): a bare LF from a
  Unix pipe becomes CRLF; CRLF and lone CR are kept. ``size`` is the stored size.
- Malformed headers never refuse a message: the fields that cannot be read are empty.
"""

from __future__ import annotations

import email.header
import hashlib
import re
from dataclasses import dataclass
from typing import BinaryIO, Protocol

from mailkeep.engine.database import Database
from mailkeep.engine.transaction import Transaction
from mailkeep.store.errors import MAPI_E_INVALID_PARAMETER, StoreError
from mailkeep.store.folders import MessageMeta

CHUNK = 64 * 1024
MAX_HEADER = 256 * 1024
_LONE_LF = re.compile(rb"(?<!\r)\n")


class Readable(Protocol):
    def read(self, size: int = ..., /) -> bytes: ...


@dataclass(frozen=True)
class Stored:
    stream: int
    size: int
    sha256: str
    meta: MessageMeta


class _Normalizer:
    def __init__(self) -> None:
        self.prev_cr = False

    def feed(self, chunk: bytes) -> bytes:
        if not chunk:
            return b""
        head = b""
        if self.prev_cr and chunk[:1] == b"\n":
            head, chunk = b"\n", chunk[1:]
        self.prev_cr = (chunk or head)[-1:] == b"\r"
        if chunk[:1] != b"\n" and chunk.count(b"\n") == chunk.count(b"\r\n"):
            return head + chunk  # every LF already follows a CR: nothing to change (the usual case)
        return head + _LONE_LF.sub(b"\r\n", chunk)


class _HeaderReader:
    def __init__(self) -> None:
        self.buf = bytearray()
        self.done = False

    def feed(self, data: bytes) -> None:
        if self.done:
            return
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            del self.buf[end + 2:]
            self.done = True
        elif len(self.buf) > MAX_HEADER:
            del self.buf[MAX_HEADER:]
            self.done = True

    def fields(self) -> dict[str, str]:
        """First value of each field we keep, unfolded and with RFC 2047 words decoded."""
        out: dict[str, str] = {}
        text = bytes(self.buf).decode("utf-8", "replace")
        for m in re.finditer(r"^([!-9;-~]+)[ \t]*:([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", text, re.M):
            name = m.group(1).lower()
            if name in ("message-id", "subject", "from") and name not in out:
                out[name] = _decode(re.sub(r"\r\n([ \t])", r"\1", m.group(2)).strip())
        return out


def _decode(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError, UnicodeError):
        return value


def store_message(
    txn: Transaction, db: Database, source: Readable | BinaryIO, *, envelope_from: str = "",
) -> Stored:
    """Stream ``source`` into a new stream of ``db`` (part of ``txn``)."""
    norm = _Normalizer()
    head = _HeaderReader()
    digest = hashlib.sha256()
    size = 0
    with txn.create_stream(db) as w:
        while True:
            chunk = source.read(CHUNK)
            if not chunk:
                break
            data = norm.feed(bytes(chunk))
            head.feed(data)
            digest.update(data)
            w.write(data)
            size += len(data)
        stream = w.stream_id
    if size == 0:
        raise StoreError(MAPI_E_INVALID_PARAMETER, "the message is empty; nothing was stored")
    f = head.fields()
    meta = MessageMeta(size, f.get("message-id", ""), f.get("subject", ""), f.get("from", ""), envelope_from)
    return Stored(stream, size, digest.hexdigest(), meta)


def copy_stream(txn: Transaction, db: Database, source: Readable) -> tuple[int, int, str]:
    """Copy already-normalized content into a new stream of ``db``: (stream, size, sha256)."""
    digest = hashlib.sha256()
    size = 0
    with txn.create_stream(db) as w:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            w.write(chunk)
            size += len(chunk)
        stream = w.stream_id
    return stream, size, digest.hexdigest()
