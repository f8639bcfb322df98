"""Byte layout of transaction log generations (documented in docs/formats/log.md).

A generation is a fixed-size, pre-allocated file: a 4096-byte header, then records from
offset 4096. Each group commit ("flush") starts on a 512-byte sector boundary and ends with a
FILL record up to the next boundary, so a flush never rewrites a sector holding records that
an earlier fsync made durable. Flushes are numbered from 1 in each generation, so a reader
knows the number of the first one. A record is valid only if its checksum matches and it
carries the generation number of its file, so zeroed space, stale bytes and torn writes never
parse.

A log position (LSN) is ``generation << 32 | byte offset``; eseutil shows it as
``(0xGEN,SECTOR,BYTE)``.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from mailkeep.engine import codec

FORMAT_VERSION = (1, 0)
HEADER_SIZE = 4096
SECTOR = 512
MIN_LOG_SIZE = 64 * 1024
DEFAULT_LOG_SIZE = 5 * 1024 * 1024
HEADER_MAGIC = b"MKLOG\x00\x01\x00"

# Record types
FILL = 1
OPS = 2
STREAM = 3
COMMIT = 4
ROLLBACK = 5
ATTACH = 6
DETACH = 7
CREATEDB = 8
TERM = 9
TYPE_NAMES = {
    FILL: "fill",
    OPS: "operation",
    STREAM: "stream",
    COMMIT: "commit",
    ROLLBACK: "rollback",
    ATTACH: "attach",
    DETACH: "detach",
    CREATEDB: "createdb",
    TERM: "term",
}

# crc32, payload length, generation, flush number, type, reserved, database id
RECORD = struct.Struct("<IIIIBBH")
STREAM_HEAD = struct.Struct("<QQQ")  # txn id, stream id, offset in stream file


def lsn(generation: int, offset: int) -> int:
    return (generation << 32) | offset


def lsn_gen(pos: int) -> int:
    return pos >> 32


def lsn_off(pos: int) -> int:
    return pos & 0xFFFFFFFF


def format_lsn(pos: int) -> str:
    off = lsn_off(pos)
    return f"(0x{lsn_gen(pos):X},{off // SECTOR:X},{off % SECTOR:X})"


def sector_ceil(offset: int) -> int:
    return -(-offset // SECTOR) * SECTOR


def gen_file_name(prefix: str, generation: int) -> str:
    return f"{prefix}{generation:08X}.log"


def legacy_gen_file_name(prefix: str, generation: int) -> str:
    return f"{prefix}{generation:05X}.log"


def both_names(prefix: str, generation: int) -> str:
    """Messages about a missing log name the 8-digit file and the Exchange 2003 5-digit form."""
    return f"{gen_file_name(prefix, generation)} (Exchange 2003 name {legacy_gen_file_name(prefix, generation)})"


def parse_gen_file_name(prefix: str, name: str) -> int | None:
    m = re.fullmatch(re.escape(prefix) + r"([0-9A-Fa-f]{8})\.log", name, flags=re.IGNORECASE)
    return int(m.group(1), 16) if m else None


@dataclass
class AttachedDb:
    dbid: int
    path: str
    stm_path: str
    signature: str

    def to_list(self) -> list[Any]:
        return [self.dbid, self.path, self.stm_path, self.signature]

    @classmethod
    def from_list(cls, v: list[Any]) -> AttachedDb:
        return cls(int(v[0]), str(v[1]), str(v[2]), str(v[3]))


@dataclass
class LogHeader:
    generation: int
    signature: str  # "<random hex>@<creation time of generation 1>"
    created: float
    prev_created: float
    file_size: int
    prefix: str
    circular: bool
    attached: list[AttachedDb] = field(default_factory=list)
    log_path: str = ""
    system_path: str = ""
    reserve: bool = False
    version: tuple[int, int] = FORMAT_VERSION

    def encode(self) -> bytes:
        body = codec.encode(
            {
                "version": list(self.version),
                "generation": self.generation,
                "signature": self.signature,
                "created": self.created,
                "prev_created": self.prev_created,
                "file_size": self.file_size,
                "prefix": self.prefix,
                "circular": self.circular,
                "attached": [a.to_list() for a in self.attached],
                "log_path": self.log_path,
                "system_path": self.system_path,
                "reserve": self.reserve,
            }
        )
        head = HEADER_MAGIC + struct.pack("<II", zlib.crc32(body), len(body))
        data = head + body
        if len(data) > HEADER_SIZE:
            raise ValueError("too many attached databases for one log header")
        return data + bytes(HEADER_SIZE - len(data))

    @classmethod
    def decode(cls, data: bytes) -> LogHeader:
        """Raises ValueError on any damage; callers name the file in the ESE error."""
        if len(data) < 16 or data[:8] != HEADER_MAGIC:
            raise ValueError("not a Mailkeep log file (bad magic)")
        crc, n = struct.unpack_from("<II", data, 8)
        body = data[16 : 16 + n]
        if n > HEADER_SIZE - 16 or len(body) != n or zlib.crc32(body) != crc:
            raise ValueError("log file header checksum mismatch")
        d = codec.decode(body)
        return cls(
            generation=int(d["generation"]),
            signature=str(d["signature"]),
            created=float(d["created"]),
            prev_created=float(d["prev_created"]),
            file_size=int(d["file_size"]),
            prefix=str(d["prefix"]),
            circular=bool(d["circular"]),
            attached=[AttachedDb.from_list(a) for a in d["attached"]],
            log_path=str(d["log_path"]),
            system_path=str(d["system_path"]),
            reserve=bool(d.get("reserve", False)),
            version=(int(d["version"][0]), int(d["version"][1])),
        )


@dataclass
class Record:
    pos: int  # LSN of the record's first byte
    type: int
    dbid: int
    flush: int
    payload: bytes

    @property
    def end(self) -> int:
        return self.pos + RECORD.size + len(self.payload)


def encode_record(generation: int, flush: int, rtype: int, dbid: int, payload: bytes) -> bytes:
    head = RECORD.pack(0, len(payload), generation, flush, rtype, 0, dbid)
    crc = zlib.crc32(payload, zlib.crc32(head[4:]))
    return struct.pack("<I", crc) + head[4:] + payload


def fill_record(generation: int, flush: int, offset: int) -> bytes:
    """A FILL record from ``offset`` to the next sector boundary (at least a header long)."""
    end = sector_ceil(offset + RECORD.size)
    return encode_record(generation, flush, FILL, 0, bytes(end - offset - RECORD.size))


def decode_record(buf: bytes | memoryview, offset: int, generation: int) -> Record | None:
    """The record at ``offset`` of a generation's bytes, or None if none valid is there."""
    if offset + RECORD.size > len(buf):
        return None
    crc, length, gen, flush, rtype, _res, dbid = RECORD.unpack_from(buf, offset)
    if gen != generation or rtype not in TYPE_NAMES:
        return None
    end = offset + RECORD.size + length
    if end > len(buf):
        return None
    payload = bytes(buf[offset + RECORD.size : end])
    head = bytes(buf[offset + 4 : offset + RECORD.size])
    if zlib.crc32(payload, zlib.crc32(head)) != crc:
        return None
    return Record(lsn(generation, offset), rtype, dbid, flush, payload)


def new_signature(created: float) -> str:
    return f"{os.urandom(8).hex()}@{created:.6f}"
