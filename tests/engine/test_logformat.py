"""logformat: generation file names, log positions, the header and record byte layout."""

from __future__ import annotations

import re
import struct
import zlib

import pytest

from mailkeep.engine import logformat as lf
from mailkeep.engine.logformat import AttachedDb, LogHeader


def header(**kw: object) -> LogHeader:
    opts: dict[str, object] = {
        "generation": 3,
        "signature": "00112233aabbccdd@1700000000.000000",
        "created": 1700000003.25,
        "prev_created": 1700000002.5,
        "file_size": lf.MIN_LOG_SIZE,
        "prefix": "E00",
        "circular": False,
    }
    opts.update(kw)
    return LogHeader(**opts)  # type: ignore[arg-type]


# -- constants that are part of the on-disk format --------------------------------------------


def test_format_constants() -> None:
    assert lf.HEADER_SIZE == 4096
    assert lf.SECTOR == 512
    assert lf.MIN_LOG_SIZE == 65536
    assert lf.DEFAULT_LOG_SIZE == 5 * 1024 * 1024
    assert lf.HEADER_MAGIC == b"MKLOG\x00\x01\x00"
    assert lf.RECORD.size == 20
    assert lf.STREAM_HEAD.size == 24
    assert (lf.FILL, lf.OPS, lf.STREAM, lf.COMMIT, lf.ROLLBACK, lf.ATTACH, lf.DETACH, lf.CREATEDB, lf.TERM) == (
        1, 2, 3, 4, 5, 6, 7, 8, 9,
    )
    assert lf.TYPE_NAMES[lf.COMMIT] == "commit"
    assert len(lf.TYPE_NAMES) == 9


# -- names -------------------------------------------------------------------------------------


def test_generation_file_names() -> None:
    assert lf.gen_file_name("E00", 1) == "E0000000001.log"
    assert lf.gen_file_name("E00", 0x1A) == "E000000001A.log"
    assert lf.gen_file_name("E01", 0xFFFFFFF0) == "E01FFFFFFF0.log"
    assert lf.legacy_gen_file_name("E00", 0x80A) == "E000080A.log"
    assert lf.both_names("E00", 0x80A) == "E000000080A.log (Exchange 2003 name E000080A.log)"


def test_parse_generation_file_names() -> None:
    assert lf.parse_gen_file_name("E00", "E0000000001.log") == 1
    assert lf.parse_gen_file_name("E00", "E000000001A.log") == 0x1A
    assert lf.parse_gen_file_name("E00", "e000000001a.LOG") == 0x1A
    assert lf.parse_gen_file_name("E01", "E01FFFFFFF0.log") == 0xFFFFFFF0
    for name in ("E00.log", "E00tmp.log", "res1.log", "E000080A.log", "E0100000001.log", "E0000000001.log.bak",
                 "xE0000000001.log", "E000000000G.log", "E00.chk"):
        assert lf.parse_gen_file_name("E00", name) is None, name


@pytest.mark.parametrize("g", [1, 2, 0xFF, 0x12345678, 0xFFFFFFF0])
def test_name_round_trip(g: int) -> None:
    assert lf.parse_gen_file_name("R00", lf.gen_file_name("R00", g)) == g


# -- positions ---------------------------------------------------------------------------------


def test_lsn_packing() -> None:
    pos = lf.lsn(0x2E, 0x3E21)
    assert pos == (0x2E << 32) | 0x3E21
    assert lf.lsn_gen(pos) == 0x2E
    assert lf.lsn_off(pos) == 0x3E21
    assert lf.lsn(1, 4096) < lf.lsn(1, 4097) < lf.lsn(2, 0)


def test_format_lsn_is_generation_sector_byte() -> None:
    assert lf.format_lsn(lf.lsn(0x2E, 0x1F * 512 + 0x1F1)) == "(0x2E,1F,1F1)"
    assert lf.format_lsn(lf.lsn(1, 4096)) == "(0x1,8,0)"
    assert lf.format_lsn(0) == "(0x0,0,0)"


def test_sector_ceil() -> None:
    assert [lf.sector_ceil(x) for x in (0, 1, 511, 512, 513, 4096, 4117)] == [0, 512, 512, 512, 1024, 4096, 4608]


# -- header ------------------------------------------------------------------------------------


def test_header_round_trip() -> None:
    h = header(
        attached=[
            AttachedDb(1, "/db/priv1.edb", "/db/priv1.stm", "123@1.5"),
            AttachedDb(2, "/db/pub.edb", "/db/pub.stm", "9@2.0"),
        ],
        log_path="/logs",
        system_path="/sys",
        reserve=True,
        circular=True,
    )
    data = h.encode()
    assert len(data) == lf.HEADER_SIZE
    assert data[:8] == lf.HEADER_MAGIC
    assert LogHeader.decode(data) == h


def test_header_layout_magic_crc_length_body() -> None:
    data = header().encode()
    crc, n = struct.unpack_from("<II", data, 8)
    body = data[16 : 16 + n]
    assert zlib.crc32(body) == crc
    assert data[16 + n :] == bytes(lf.HEADER_SIZE - 16 - n)


def test_header_decodes_from_whole_file_prefix() -> None:
    data = header().encode() + b"\x55" * 100  # records after the header do not matter
    assert LogHeader.decode(data).generation == 3


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: b"NOTALOG!" + d[8:], "bad magic"),
        (lambda d: d[:10], "bad magic"),  # shorter than magic + crc + length
        (lambda d: d[:20] + bytes([d[20] ^ 0xFF]) + d[21:], "checksum mismatch"),
        (lambda d: d[:8] + struct.pack("<II", 0, 5000) + d[16:], "checksum mismatch"),
        (lambda d: d[:200], "checksum mismatch"),
    ],
)
def test_damaged_header_refused(mutate: object, message: str) -> None:
    data = mutate(header().encode())  # type: ignore[operator]
    with pytest.raises(ValueError, match=message):
        LogHeader.decode(data)


def test_header_with_too_many_attachments_refused() -> None:
    many = [AttachedDb(i, "/" + "x" * 300 + ".edb", "/" + "x" * 300 + ".stm", "sig") for i in range(20)]
    with pytest.raises(ValueError, match="too many attached databases"):
        header(attached=many).encode()


def test_header_defaults() -> None:
    h = header()
    assert h.version == lf.FORMAT_VERSION == (1, 0)
    assert h.reserve is False
    assert h.attached == []
    assert LogHeader.decode(h.encode()).version == (1, 0)


def test_attached_db_list_form() -> None:
    a = AttachedDb(3, "/a.edb", "/a.stm", "s@1")
    assert a.to_list() == [3, "/a.edb", "/a.stm", "s@1"]
    assert AttachedDb.from_list(a.to_list()) == a
    assert AttachedDb.from_list(["4", "/b.edb", "/b.stm", "t"]) == AttachedDb(4, "/b.edb", "/b.stm", "t")


def test_new_signature_form() -> None:
    sig = lf.new_signature(1700000000.123456)
    assert re.fullmatch(r"[0-9a-f]{16}@1700000000\.123456", sig)
    assert lf.new_signature(1.0) != lf.new_signature(1.0)


# -- records -----------------------------------------------------------------------------------


def test_record_round_trip() -> None:
    raw = lf.encode_record(7, 3, lf.COMMIT, 2, b"payload")
    assert len(raw) == lf.RECORD.size + 7
    buf = bytes(4096) + raw
    rec = lf.decode_record(buf, 4096, 7)
    assert rec is not None
    assert (rec.pos, rec.type, rec.dbid, rec.flush, rec.payload) == (lf.lsn(7, 4096), lf.COMMIT, 2, 3, b"payload")
    assert rec.end == lf.lsn(7, 4096 + len(raw))


def test_record_layout() -> None:
    raw = lf.encode_record(0x11, 0x22, lf.OPS, 0x33, b"ab")
    crc, length, gen, flush, rtype, res, dbid = lf.RECORD.unpack_from(raw, 0)
    assert (length, gen, flush, rtype, res, dbid) == (2, 0x11, 0x22, lf.OPS, 0, 0x33)
    assert crc == zlib.crc32(b"ab", zlib.crc32(raw[4:20]))


def test_record_of_another_generation_is_not_a_record() -> None:
    raw = lf.encode_record(7, 1, lf.OPS, 1, b"x")
    assert lf.decode_record(raw, 0, 8) is None
    assert lf.decode_record(raw, 0, 7) is not None


def test_zeros_are_not_a_record() -> None:
    assert lf.decode_record(bytes(4096), 0, 0) is None
    assert lf.decode_record(bytes(4096), 0, 1) is None


def test_damaged_records_are_not_records() -> None:
    raw = lf.encode_record(1, 1, lf.OPS, 1, b"some payload")
    for i in range(len(raw)):
        bad = bytearray(raw)
        bad[i] ^= 0x01
        assert lf.decode_record(bytes(bad), 0, 1) is None, i


def test_truncated_record_is_not_a_record() -> None:
    raw = lf.encode_record(1, 1, lf.OPS, 1, b"some payload")
    for n in range(len(raw)):
        assert lf.decode_record(raw[:n], 0, 1) is None


def test_unknown_type_is_not_a_record() -> None:
    raw = lf.encode_record(1, 1, 42, 1, b"")
    assert lf.decode_record(raw, 0, 1) is None


def test_fill_record_reaches_next_sector_boundary() -> None:
    for offset in (4096, 4097, 4096 + 491, 4096 + 492, 4096 + 493, 5000):
        fill = lf.fill_record(1, 9, offset)
        end = offset + len(fill)
        assert end % lf.SECTOR == 0
        assert len(fill) >= lf.RECORD.size
        rec = lf.decode_record(bytes(offset) + fill, offset, 1)
        assert rec is not None and rec.type == lf.FILL and rec.flush == 9
        assert lf.lsn_off(rec.end) == end
    # exactly a header's room left: the fill is just a header
    assert len(lf.fill_record(1, 1, 4096 + 492)) == 20
    # less than a header's room: the fill runs on to the following boundary
    assert 4096 + 493 + len(lf.fill_record(1, 1, 4096 + 493)) == 4096 + 1024


def test_records_follow_each_other() -> None:
    recs = [lf.encode_record(2, 1, lf.OPS, 1, bytes([i]) * i) for i in range(5)]
    buf = bytes(lf.HEADER_SIZE) + b"".join(recs) + bytes(512)
    pos, seen = lf.HEADER_SIZE, []
    while (rec := lf.decode_record(buf, pos, 2)) is not None:
        seen.append(rec.payload)
        pos = lf.lsn_off(rec.end)
    assert seen == [bytes([i]) * i for i in range(5)]
