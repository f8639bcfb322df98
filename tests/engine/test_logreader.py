"""logreader: generations read in order, records read in order, damage refused."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from mailkeep.engine import logformat as lf
from mailkeep.engine import logreader as lr
from mailkeep.engine.errors import EseError
from mailkeep.engine.fileio import FileIO
from mailkeep.engine.log import LogWriter, create_first_generation


def new_writer(log_dir: Path, size: int = lf.MIN_LOG_SIZE) -> LogWriter:
    os.makedirs(log_dir, exist_ok=True)
    created = time.time()
    h = lf.LogHeader(
        generation=1,
        signature=lf.new_signature(created),
        created=created,
        prev_created=0.0,
        file_size=size,
        prefix="E00",
        circular=False,
    )
    io = FileIO()
    create_first_generation(io, str(log_dir), h)
    return LogWriter(io, str(log_dir), h, offset=lf.HEADER_SIZE, flush=0, attached=list)


def make_stream(log_dir: Path, generations: int = 3, per_gen: int = 2) -> list[bytes]:
    """A stream of ``generations`` generations with ``per_gen`` flushed OPS records each."""
    w = new_writer(log_dir)
    payloads = []
    for g in range(1, generations + 1):
        for i in range(per_gen):
            p = f"g{g}r{i}".encode()
            w.append(lf.OPS, 1, p)
            payloads.append(p)
        w.flush()
        if g < generations:
            w.roll()
    w.close()
    return payloads


def ops_payloads(datas: list[lr.GenerationData]) -> list[bytes]:
    return [r.payload for d in datas for r in d.records if r.type == lf.OPS]


def err(exc: pytest.ExceptionInfo[EseError]) -> tuple[int, str]:
    return exc.value.number, exc.value.name


# -- headers and names -------------------------------------------------------------------------


def test_current_name() -> None:
    assert lr.current_name("E00") == "E00.log"
    assert lr.current_name("R00") == "R00.log"


def test_read_header(tmp_path: Path) -> None:
    make_stream(tmp_path, 2)
    h = lr.read_header(str(tmp_path / "E00.log"))
    assert h.generation == 2
    assert lr.read_header(str(tmp_path / "E0000000001.log")).generation == 1


def test_read_header_missing_file(tmp_path: Path) -> None:
    p = str(tmp_path / "E00.log")
    with pytest.raises(EseError) as e:
        lr.read_header(p)
    assert err(e) == (-1811, "JET_errFileNotFound")
    assert e.value.path == p


def test_read_header_damaged(tmp_path: Path) -> None:
    make_stream(tmp_path, 1)
    p = tmp_path / "E00.log"
    with open(p, "r+b") as f:
        f.seek(40)
        f.write(b"\xff\xff")
    with pytest.raises(EseError) as e:
        lr.read_header(str(p))
    assert err(e) == (-501, "JET_errLogFileCorrupt")
    assert e.value.path == str(p)
    assert "damaged header" in str(e.value)


def test_list_generations(tmp_path: Path) -> None:
    make_stream(tmp_path, 4)
    (tmp_path / "E01000000AA.log").write_bytes(b"")  # another prefix
    (tmp_path / "E00tmp.log").write_bytes(b"")
    found = lr.list_generations(str(tmp_path), "E00")
    assert found == {g: str(tmp_path / lf.gen_file_name("E00", g)) for g in (1, 2, 3)}
    assert lr.list_generations(str(tmp_path / "nope"), "E00") == {}


# -- one generation ----------------------------------------------------------------------------


def test_scan_clean_generation(tmp_path: Path) -> None:
    make_stream(tmp_path, 2, per_gen=3)
    closed = lr.scan_generation(str(tmp_path / "E0000000001.log"), 1, newest=False)
    assert [r.payload for r in closed.records if r.type == lf.OPS] == [b"g1r0", b"g1r1", b"g1r2"]
    assert closed.records[-1].type == lf.FILL  # the roll sealed the last flush
    assert lf.lsn_off(closed.end) % lf.SECTOR == 0
    assert closed.torn_bytes == 0
    assert closed.last_flush == 1
    newest = lr.scan_generation(str(tmp_path / "E00.log"), 2, newest=True)
    assert newest.header.generation == 2
    assert [r.type for r in newest.records] == [lf.OPS, lf.OPS, lf.OPS, lf.FILL]
    assert newest.records[0].pos == lf.lsn(2, lf.HEADER_SIZE)
    assert newest.end == newest.records[-1].end
    assert newest.torn_bytes == 0


def test_scan_positions_are_contiguous(tmp_path: Path) -> None:
    make_stream(tmp_path, 1, per_gen=5)
    d = lr.scan_generation(str(tmp_path / "E00.log"), None, newest=True)
    for a, b in zip(d.records, d.records[1:], strict=False):
        assert a.end == b.pos


def test_scan_generation_name_mismatch(tmp_path: Path) -> None:
    make_stream(tmp_path, 3)
    p = str(tmp_path / "E0000000001.log")
    with pytest.raises(EseError) as e:
        lr.scan_generation(p, 2, newest=False)
    assert err(e) == (-513, "JET_errLogGenerationMismatch")
    assert e.value.path == p


def write_at(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_torn_tail_in_newest_generation_is_the_end(tmp_path: Path) -> None:
    make_stream(tmp_path, 2)
    cur = tmp_path / "E00.log"
    clean = lr.scan_generation(str(cur), 2, newest=True)
    end = lf.lsn_off(clean.end)
    # half a record of the next flush: what a crash leaves behind
    rec = lf.encode_record(2, clean.last_flush + 1, lf.OPS, 1, b"x" * 100)
    write_at(cur, end, rec[:60])
    torn = lr.scan_generation(str(cur), 2, newest=True)
    assert torn.end == clean.end
    assert len(torn.records) == len(clean.records)
    assert torn.torn_bytes == 60


def test_torn_tail_with_records_of_the_torn_flush_beyond_it(tmp_path: Path) -> None:
    make_stream(tmp_path, 1)
    cur = tmp_path / "E00.log"
    clean = lr.scan_generation(str(cur), 1, newest=True)
    end = lf.lsn_off(clean.end)
    write_at(cur, end, b"\x5a" * 30)
    later_same_flush = lf.encode_record(1, clean.last_flush + 1, lf.OPS, 1, b"y")
    write_at(cur, end + 2 * lf.SECTOR, later_same_flush)
    d = lr.scan_generation(str(cur), 1, newest=True)
    assert d.end == clean.end
    assert d.torn_bytes == 2 * lf.SECTOR + len(later_same_flush.rstrip(b"\0"))


def test_damage_before_a_sealed_later_flush_is_corruption(tmp_path: Path) -> None:
    make_stream(tmp_path, 1)
    cur = tmp_path / "E00.log"
    clean = lr.scan_generation(str(cur), 1, newest=True)
    end = lf.lsn_off(clean.end)
    write_at(cur, end, b"\x5a" * 30)
    nxt = clean.last_flush + 2  # the damaged flush is last_flush + 1
    later = lf.encode_record(1, nxt, lf.OPS, 1, b"committed later")
    at = end + lf.SECTOR
    write_at(cur, at, later + lf.fill_record(1, nxt, at + len(later)))
    with pytest.raises(EseError) as e:
        lr.scan_generation(str(cur), 1, newest=True)
    assert err(e) == (-501, "JET_errLogFileCorrupt")
    msg = str(e.value)
    fill_at = lf.format_lsn(lf.lsn(1, at + len(later)))
    assert f"a valid record of flush {nxt} at {fill_at}" in msg
    assert f"damaged at {lf.format_lsn(clean.end)}" in msg


def test_damage_before_a_record_two_flushes_later_is_corruption(tmp_path: Path) -> None:
    make_stream(tmp_path, 1)
    cur = tmp_path / "E00.log"
    clean = lr.scan_generation(str(cur), 1, newest=True)
    end = lf.lsn_off(clean.end)
    write_at(cur, end, b"\x5a" * 30)
    write_at(cur, end + lf.SECTOR, lf.encode_record(1, clean.last_flush + 3, lf.OPS, 1, b"much later"))
    with pytest.raises(EseError) as e:
        lr.scan_generation(str(cur), 1, newest=True)
    assert err(e) == (-501, "JET_errLogFileCorrupt")


def test_torn_flush_followed_by_unsealed_next_flush_is_a_torn_tail(tmp_path: Path) -> None:
    """Power loss while flush T was being fsync'd and T+1 was being written: T+1's records
    (without their FILL) may reach the disk while sectors of T do not. Nothing in either was
    acknowledged, so this is a torn tail, not corruption."""
    make_stream(tmp_path, 1)
    cur = tmp_path / "E00.log"
    clean = lr.scan_generation(str(cur), 1, newest=True)
    end = lf.lsn_off(clean.end)
    write_at(cur, end, b"\x5a" * 30)
    write_at(cur, end + lf.SECTOR, lf.encode_record(1, clean.last_flush + 2, lf.OPS, 1, b"unsealed"))
    d = lr.scan_generation(str(cur), 1, newest=True)
    assert d.end == clean.end and len(d.records) == len(clean.records) and d.torn_bytes > 0


def test_damaged_committed_record_is_corruption(tmp_path: Path) -> None:
    # Flip a byte of the first record: the following (durable) flushes prove it was committed.
    w = new_writer(tmp_path)
    for i in range(3):
        w.append(lf.OPS, 1, b"r%d" % i)
        w.flush()
    w.close()
    cur = tmp_path / "E00.log"
    write_at(cur, lf.HEADER_SIZE + lf.RECORD.size, b"\xff")
    with pytest.raises(EseError) as e:
        lr.scan_generation(str(cur), 1, newest=True)
    assert err(e) == (-501, "JET_errLogFileCorrupt")
    assert "(0x1,8,0)" in str(e.value)


def test_garbage_after_the_end_of_a_closed_generation_is_corruption(tmp_path: Path) -> None:
    make_stream(tmp_path, 2)
    p = tmp_path / "E0000000001.log"
    end = lf.lsn_off(lr.scan_generation(str(p), 1, newest=False).end)
    write_at(p, end + 5, b"\x01")
    with pytest.raises(EseError) as e:
        lr.scan_generation(str(p), 1, newest=False)
    assert err(e) == (-501, "JET_errLogFileCorrupt")
    assert "this generation was closed, so it must be complete" in str(e.value)
    assert e.value.path == str(p)


# -- the stream --------------------------------------------------------------------------------


def test_layout(tmp_path: Path) -> None:
    make_stream(tmp_path, 3)
    lay = lr.layout(str(tmp_path), "E00")
    assert lay.current_gen == 3
    assert lay.current_path == str(tmp_path / "E00.log")
    assert sorted(lay.numbered) == [1, 2]
    assert lay.lowest == 1
    assert lay.signature == lr.read_header(str(tmp_path / "E00.log")).signature
    os.unlink(tmp_path / "E0000000001.log")
    assert lr.layout(str(tmp_path), "E00").lowest == 2


def test_layout_lowest_without_closed_generations(tmp_path: Path) -> None:
    make_stream(tmp_path, 1)
    lay = lr.layout(str(tmp_path), "E00")
    assert lay.numbered == {}
    assert lay.lowest == 1


def test_layout_missing_current_log(tmp_path: Path) -> None:
    make_stream(tmp_path, 3)
    os.unlink(tmp_path / "E00.log")
    with pytest.raises(EseError) as e:
        lr.layout(str(tmp_path), "E00")
    assert err(e) == (-528, "JET_errMissingLogFile")
    assert "would hold generation 3" in str(e.value)
    assert e.value.path == str(tmp_path / "E00.log")


def test_layout_missing_current_log_of_empty_folder(tmp_path: Path) -> None:
    with pytest.raises(EseError) as e:
        lr.layout(str(tmp_path), "E00")
    assert err(e) == (-528, "JET_errMissingLogFile")
    assert "would hold generation 1" in str(e.value)


def test_layout_numbered_log_not_below_current(tmp_path: Path) -> None:
    make_stream(tmp_path, 2)
    shutil.copy(tmp_path / "E0000000001.log", tmp_path / "E0000000002.log")
    with pytest.raises(EseError) as e:
        lr.layout(str(tmp_path), "E00")
    assert err(e) == (-513, "JET_errLogGenerationMismatch")
    assert e.value.path == str(tmp_path / "E0000000002.log")


def test_iter_generations_reads_everything_in_order(tmp_path: Path) -> None:
    payloads = make_stream(tmp_path, 4, per_gen=2)
    lay = lr.layout(str(tmp_path), "E00")
    datas = list(lr.iter_generations(lay, 1))
    assert [d.header.generation for d in datas] == [1, 2, 3, 4]
    assert ops_payloads(datas) == payloads
    assert [d.path for d in datas][-1] == lay.current_path
    assert [d.header.prev_created for d in datas[1:]] == [d.header.created for d in datas[:-1]]


def test_iter_generations_from_a_later_start(tmp_path: Path) -> None:
    payloads = make_stream(tmp_path, 4, per_gen=2)
    lay = lr.layout(str(tmp_path), "E00")
    datas = list(lr.iter_generations(lay, 3))
    assert [d.header.generation for d in datas] == [3, 4]
    assert ops_payloads(datas) == payloads[4:]


def test_missing_generation_in_the_middle(tmp_path: Path) -> None:
    make_stream(tmp_path, 4)
    os.unlink(tmp_path / "E0000000002.log")
    lay = lr.layout(str(tmp_path), "E00")
    with pytest.raises(EseError) as e:
        list(lr.iter_generations(lay, 1))
    assert err(e) == (-528, "JET_errMissingLogFile")
    assert "E0000000002.log (Exchange 2003 name E0000002.log)" in str(e.value)


def test_missing_checkpoint_generation(tmp_path: Path) -> None:
    make_stream(tmp_path, 4)
    os.unlink(tmp_path / "E0000000002.log")
    lay = lr.layout(str(tmp_path), "E00")
    with pytest.raises(EseError) as e:
        list(lr.iter_generations(lay, 2, checkpoint_gen=2))
    assert err(e) == (-509, "JET_errMissingPreviousLogFile")
    # a gap after the checkpoint generation is still -528
    make_stream(tmp_path / "b", 4)
    os.unlink(tmp_path / "b" / "E0000000003.log")
    lay = lr.layout(str(tmp_path / "b"), "E00")
    with pytest.raises(EseError) as e:
        list(lr.iter_generations(lay, 2, checkpoint_gen=2))
    assert err(e) == (-528, "JET_errMissingLogFile")


def test_generation_of_another_stream(tmp_path: Path) -> None:
    make_stream(tmp_path / "a", 3)
    make_stream(tmp_path / "b", 3)
    shutil.copy(tmp_path / "b" / "E0000000002.log", tmp_path / "a" / "E0000000002.log")
    lay = lr.layout(str(tmp_path / "a"), "E00")
    it = lr.iter_generations(lay, 1)
    assert next(it).header.generation == 1
    with pytest.raises(EseError) as e:
        next(it)
    assert err(e) == (-530, "JET_errBadLogSignature")
    assert e.value.path == str(tmp_path / "a" / "E0000000002.log")


def test_current_log_of_another_stream(tmp_path: Path) -> None:
    make_stream(tmp_path / "a", 2)
    make_stream(tmp_path / "b", 2)
    shutil.copy(tmp_path / "b" / "E00.log", tmp_path / "a" / "E00.log")
    lay = lr.layout(str(tmp_path / "a"), "E00")
    with pytest.raises(EseError) as e:
        list(lr.iter_generations(lay, 1))
    assert err(e) == (-530, "JET_errBadLogSignature")


def test_renamed_generation(tmp_path: Path) -> None:
    make_stream(tmp_path, 4)
    os.rename(tmp_path / "E0000000002.log", tmp_path / "E0000000002.bak")
    shutil.copy(tmp_path / "E0000000001.log", tmp_path / "E0000000002.log")
    lay = lr.layout(str(tmp_path), "E00")
    with pytest.raises(EseError) as e:
        list(lr.iter_generations(lay, 1))
    assert err(e) == (-513, "JET_errLogGenerationMismatch")


def test_broken_creation_time_chain(tmp_path: Path) -> None:
    make_stream(tmp_path, 3)
    p = tmp_path / "E0000000002.log"
    h = lr.read_header(str(p))
    h.prev_created += 10.0
    write_at(p, 0, h.encode())
    lay = lr.layout(str(tmp_path), "E00")
    with pytest.raises(EseError) as e:
        list(lr.iter_generations(lay, 1))
    assert err(e) == (-515, "JET_errInvalidLogSequence")
    assert e.value.path == str(p)
    # starting after the broken link reads fine
    assert [d.header.generation for d in lr.iter_generations(lay, 2)] == [2, 3]
