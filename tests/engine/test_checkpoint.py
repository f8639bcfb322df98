"""checkpoint: E00.chk, written atomically, refused when damaged."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pytest

from mailkeep.engine import checkpoint as chk
from mailkeep.engine import codec
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import Fault, FileIO
from mailkeep.engine.logformat import lsn


def sample(**kw: object) -> chk.Checkpoint:
    opts: dict[str, object] = {
        "signature": "0011223344556677@1700000000.000000",
        "lsn": lsn(0x2C, 8 * 512),
        "prefix": "E00",
        "log_path": "/var/mailkeep/logs",
        "system_path": "/var/mailkeep/system",
    }
    opts.update(kw)
    return chk.Checkpoint(**opts)  # type: ignore[arg-type]


def test_defaults() -> None:
    c = sample()
    assert (c.circular, c.frozen, c.full_backup, c.inc_backup, c.attached) == (False, False, None, None, [])


def test_encoding_layout() -> None:
    data = sample().encode()
    assert len(data) == chk.SIZE == 4096
    assert data[:8] == chk.MAGIC == b"MKCHK\x00\x01\x00"
    crc, n = struct.unpack_from("<II", data, 8)
    body = data[16 : 16 + n]
    assert zlib.crc32(body) == crc
    d = codec.decode(body)
    assert d["version"] == [1, 0]
    assert d["lsn"] == lsn(0x2C, 4096)
    assert data[16 + n :] == bytes(4096 - 16 - n)


def test_round_trip_all_fields() -> None:
    c = sample(
        circular=True,
        frozen=True,
        full_backup=[lsn(3, 4096), 1700000100.5],
        inc_backup=[lsn(5, 4608), 1700000200.25],
        attached=[[1, "/db/priv1.edb", "/db/priv1.stm", "12@3.0"], [2, "/db/pub1.edb", "/db/pub1.stm", "4@5.0"]],
    )
    assert chk.Checkpoint.decode(c.encode(), "E00.chk") == c


def test_write_then_read(tmp_path: Path) -> None:
    io = FileIO()
    p = str(tmp_path / "E00.chk")
    c = sample()
    chk.write(io, p, c)
    assert chk.read(p) == c
    assert os.path.getsize(p) == 4096
    assert sorted(os.listdir(tmp_path)) == ["E00.chk"]  # no temp file left


def test_write_replaces_whole_file_with_fsyncs(tmp_path: Path) -> None:
    io = FileIO()
    p = str(tmp_path / "E00.chk")
    chk.write(io, p, sample(lsn=lsn(1, 4096)))
    before = dict(io.counts)
    chk.write(io, p, sample(lsn=lsn(2, 4096)))
    assert chk.read(p).lsn == lsn(2, 4096)
    assert io.counts["write"] - before["write"] == 1
    assert io.counts["fsync"] - before["fsync"] == 2  # the file, then its folder


def test_failed_write_keeps_the_old_checkpoint(tmp_path: Path) -> None:
    io = FileIO()
    p = str(tmp_path / "E00.chk")
    chk.write(io, p, sample(lsn=lsn(1, 4096)))
    io.faults.append(Fault("fsync", at=io.counts["fsync"] + 1))
    with pytest.raises(OSError):
        chk.write(io, p, sample(lsn=lsn(9, 4096)))
    assert chk.read(p).lsn == lsn(1, 4096)


def test_large_checkpoint_is_not_truncated(tmp_path: Path) -> None:
    attached = [[i, "/" + "d" * 400 + f"/{i}.edb", "/" + "d" * 400 + f"/{i}.stm", f"{i}@1.0"] for i in range(1, 6)]
    c = sample(attached=attached)
    assert len(c.encode()) > chk.SIZE
    p = str(tmp_path / "E00.chk")
    chk.write(FileIO(), p, c)
    assert chk.read(p) == c


def test_missing_file(tmp_path: Path) -> None:
    p = str(tmp_path / "E00.chk")
    with pytest.raises(EseError) as e:
        chk.read(p)
    assert (e.value.number, e.value.name) == (-542, "JET_errCheckpointFileNotFound")
    assert e.value.path == p


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda d: b"XXXXXXXX" + d[8:], "bad magic"),
        (lambda d: d[:20] + bytes([d[20] ^ 0x40]) + d[21:], "checksum mismatch"),
        (lambda d: d[:12], "unpack"),
        (lambda d: d[:40], "checksum mismatch"),
        (lambda d: b"", "bad magic"),
        (lambda d: bytes(4096), "bad magic"),
    ],
)
def test_damaged_file(tmp_path: Path, damage: object, why: str) -> None:
    p = tmp_path / "E00.chk"
    p.write_bytes(damage(sample().encode()))  # type: ignore[operator]
    with pytest.raises(EseError) as e:
        chk.read(str(p))
    assert (e.value.number, e.value.name) == (-533, "JET_errCheckpointCorrupt")
    assert e.value.path == str(p)
    assert why in str(e.value)


def test_valid_checksum_but_missing_fields(tmp_path: Path) -> None:
    body = codec.encode({"version": [1, 0], "signature": "s"})
    data = chk.MAGIC + struct.pack("<II", zlib.crc32(body), len(body)) + body
    with pytest.raises(EseError) as e:
        chk.Checkpoint.decode(data, "x.chk")
    assert e.value.number == -533


def test_valid_checksum_but_undecodable_body() -> None:
    body = b"\x63"
    data = chk.MAGIC + struct.pack("<II", zlib.crc32(body), len(body)) + body
    with pytest.raises(EseError) as e:
        chk.Checkpoint.decode(data, "x.chk")
    assert e.value.number == -533
    assert "unknown value tag" in str(e.value)
