"""The checkpoint file (E00.chk): the oldest log position still needed by a mounted database.

Invariants: written only by replacing the whole file atomically (temp + fsync + rename +
directory fsync), so it is always either the old or the new checkpoint; it names the log
stream's signature, so a checkpoint from another stream is refused (-532); a damaged file is
refused by the dump tool (-533) and ignored by recovery, which then starts at the lowest
generation on disk (always safe: replay is idempotent and no generation at or above the
checkpoint is ever deleted).
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from mailkeep.engine import codec, errors
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO

MAGIC = b"MKCHK\x00\x01\x00"
SIZE = 4096


@dataclass
class Checkpoint:
    signature: str
    lsn: int
    prefix: str
    log_path: str
    system_path: str
    circular: bool = False
    frozen: bool = False
    full_backup: list[Any] | None = None  # [lsn, time] of the last full backup's checkpoint
    inc_backup: list[Any] | None = None
    attached: list[list[Any]] = field(default_factory=list)

    def encode(self) -> bytes:
        body = codec.encode(
            {
                "version": [1, 0],
                "signature": self.signature,
                "lsn": self.lsn,
                "prefix": self.prefix,
                "log_path": self.log_path,
                "system_path": self.system_path,
                "circular": self.circular,
                "frozen": self.frozen,
                "full_backup": self.full_backup,
                "inc_backup": self.inc_backup,
                "attached": self.attached,
            }
        )
        data = MAGIC + struct.pack("<II", zlib.crc32(body), len(body)) + body
        return data + bytes(max(0, SIZE - len(data)))

    @classmethod
    def decode(cls, data: bytes, path: str) -> Checkpoint:
        try:
            if data[:8] != MAGIC:
                raise ValueError("bad magic")
            crc, n = struct.unpack_from("<II", data, 8)
            body = data[16 : 16 + n]
            if len(body) != n or zlib.crc32(body) != crc:
                raise ValueError("checksum mismatch")
            d = codec.decode(body)
            return cls(
                signature=str(d["signature"]),
                lsn=int(d["lsn"]),
                prefix=str(d["prefix"]),
                log_path=str(d["log_path"]),
                system_path=str(d["system_path"]),
                circular=bool(d["circular"]),
                frozen=bool(d["frozen"]),
                full_backup=d.get("full_backup"),
                inc_backup=d.get("inc_backup"),
                attached=list(d.get("attached") or []),
            )
        except (ValueError, KeyError, TypeError, struct.error) as e:
            raise EseError(
                errors.CheckpointCorrupt,
                f"checkpoint file {path} is damaged ({e}). Recovery can run without it: "
                "move it aside and run 'mailkeep eseutil /r' (replay starts at the lowest "
                "log generation on disk).",
                path=path,
            ) from e


def read(path: str) -> Checkpoint:
    try:
        with open(path, "rb") as f:
            data = f.read(SIZE * 4)
    except FileNotFoundError as e:
        raise EseError(
            errors.CheckpointFileNotFound,
            f"checkpoint file {path} not found. Recovery can run without it (from the "
            "lowest log generation on disk).",
            path=path,
        ) from e
    return Checkpoint.decode(data, path)


def write(io: FileIO, path: str, chk: Checkpoint) -> None:
    io.write_file_atomic(path, chk.encode())
