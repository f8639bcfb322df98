"""Reading a log stream: generation files in order, records in order, damage refused.

Invariants:
- Generations are read in order without gaps; a missing one is -528 (-509 for the one the
  checkpoint points at), a foreign signature -530, a header whose generation differs from
  its file name -513, a broken chain of creation times -515.
- Inside a generation, records are read until the first invalid one. The rest of the file
  must then be zeros. Otherwise, in the newest generation, it is a torn tail (a flush the
  crash interrupted) unless what lies beyond proves the damaged flush had been fsync'd (a
  sealed later flush, or any record two flushes later: see ``_later_flush``); then committed
  data was damaged, which is -501. In a closed
  generation (fsync'd completely before it was renamed) anything but zeros is -501.
  The damaged flush is the one the last valid record belongs to, unless that record is a
  FILL (which ends its flush): then it is the next one (flush 1 at the start of a generation).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

from mailkeep.engine import errors
from mailkeep.engine.errors import EseError
from mailkeep.engine.logformat import (
    FILL,
    FORMAT_VERSION,
    HEADER_SIZE,
    SECTOR,
    LogHeader,
    Record,
    both_names,
    decode_record,
    format_lsn,
    lsn,
    lsn_off,
    parse_gen_file_name,
)


def current_name(prefix: str) -> str:
    return f"{prefix}.log"


def read_header(path: str) -> LogHeader:
    try:
        with open(path, "rb") as f:
            data = f.read(HEADER_SIZE)
    except FileNotFoundError as e:
        raise EseError(errors.FileNotFound, f"log file {path} not found", path=path) from e
    try:
        header = LogHeader.decode(data)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise EseError(
            errors.LogFileCorrupt,
            f"log file {path} has a damaged header ({e}). Restore this generation from "
            "backup; without it, recovery cannot pass this point.",
            path=path,
        ) from e
    if header.version[0] != FORMAT_VERSION[0]:
        raise EseError(
            errors.BadLogVersion,
            f"log file {path} has format version {header.version[0]}.{header.version[1]}; this "
            f"Mailkeep reads version {FORMAT_VERSION[0]}.x. Replay it with the Mailkeep version "
            "that wrote it.",
            path=path,
        )
    return header


@dataclass
class GenerationData:
    path: str
    header: LogHeader
    records: list[Record]
    end: int  # LSN just past the last valid record (where the next record would go)
    last_flush: int
    torn_bytes: int  # bytes of torn tail ignored (newest generation only)
    sealed: bool = True  # no record, or the last valid one is a FILL


def list_generations(log_dir: str, prefix: str) -> dict[int, str]:
    """Numbered (closed) generations present in ``log_dir``: generation -> path."""
    found: dict[int, str] = {}
    try:
        names = os.listdir(log_dir)
    except FileNotFoundError:
        return found
    for name in names:
        g = parse_gen_file_name(prefix, name)
        if g is not None:
            found[g] = os.path.join(log_dir, name)
    return found


def scan_generation(path: str, expected_gen: int | None, *, newest: bool) -> GenerationData:
    header = read_header(path)
    if expected_gen is not None and header.generation != expected_gen:
        raise EseError(
            errors.LogGenerationMismatch,
            f"log file {path} holds generation {header.generation} but generation "
            f"{expected_gen} was expected by its name or position. The file was renamed or "
            "copied from elsewhere; put the right file back.",
            path=path,
        )
    gen = header.generation
    with open(path, "rb") as f:
        buf = f.read()
    records: list[Record] = []
    pos = HEADER_SIZE
    last_flush = 0
    while True:
        rec = decode_record(buf, pos, gen)
        if rec is None:
            break
        records.append(rec)
        last_flush = rec.flush
        pos += rec.end - rec.pos
    torn = 0
    rest = buf[pos:]
    if rest.count(0) != len(rest):
        damaged = last_flush if records and records[-1].type != FILL else last_flush + 1
        later = _later_flush(buf, pos, gen, damaged)
        if not newest or later is not None:
            where = format_lsn(lsn(gen, pos))
            why = (
                f"a valid record of flush {later[1]} at {format_lsn(later[0])} lies beyond it"
                if later
                else "this generation was closed, so it must be complete"
            )
            raise EseError(
                errors.LogFileCorrupt,
                f"log file {path} is damaged at {where} ({why}). Committed transactions are "
                "in the damaged range: restore the databases from backup and replay up to "
                "the previous generation, or repair with eseutil /p as a last resort.",
                path=path,
            )
        nz = len(rest) - len(rest.rstrip(b"\0"))
        torn = len(rest) - nz
    sealed = not records or records[-1].type == FILL
    return GenerationData(path, header, records, lsn(gen, pos), last_flush, torn, sealed)


def _later_flush(buf: bytes, pos: int, gen: int, damaged: int) -> tuple[int, int] | None:
    """A record past ``pos`` proving that the damaged flush had been made durable.

    The writer seals a flush (writes its FILL) only after the previous flush's fsync returned,
    and starts a flush only after sealing the one before. So a *sealed* flush after the
    damaged one, or any record of a flush two or more after it, proves the damaged flush was
    durable: its damage is not a torn write. Records of the very next flush without its FILL
    prove nothing: they are written while the damaged flush's fsync is still running, and a
    power loss can keep them while losing sectors of the damaged flush.
    """
    start = -(-(pos + 1) // SECTOR) * SECTOR
    for off in range(start, len(buf), SECTOR):
        rec = decode_record(buf, off, gen)
        if rec is None or rec.flush <= damaged:
            continue
        if rec.flush > damaged + 1:
            return rec.pos, rec.flush
        at: Record | None = rec
        while at is not None and at.flush == damaged + 1:
            if at.type == FILL:
                return at.pos, at.flush
            at = decode_record(buf, lsn_off(at.end), gen)
    return None


@dataclass
class StreamLayout:
    """Which generations a stream has on disk, and where its current file is."""

    log_dir: str
    prefix: str
    numbered: dict[int, str]
    current_path: str
    current_gen: int
    signature: str

    @property
    def lowest(self) -> int:
        return min([*self.numbered, self.current_gen])


def layout(log_dir: str, prefix: str) -> StreamLayout:
    cur = os.path.join(log_dir, current_name(prefix))
    numbered = list_generations(log_dir, prefix)
    if not os.path.exists(cur):
        nxt = max(numbered) + 1 if numbered else 1
        raise EseError(
            errors.MissingLogFile,
            f"the current log file {cur} is missing (it would hold generation {nxt}). "
            "Transactions in it are lost unless it is found; put it back, or restore from "
            "backup.",
            path=cur,
        )
    h = read_header(cur)
    for g, p in numbered.items():
        if g >= h.generation:
            raise EseError(
                errors.LogGenerationMismatch,
                f"log file {p} is numbered {g:08X} but the current log {cur} holds generation "
                f"{h.generation}: a log from another stream or a later stream is in {log_dir}.",
                path=p,
            )
    return StreamLayout(log_dir, prefix, numbered, cur, h.generation, h.signature)


def iter_generations(
    lay: StreamLayout, start_gen: int, *, checkpoint_gen: int | None = None
) -> Iterator[GenerationData]:
    """Each generation from ``start_gen`` to the current one, checked against its
    predecessor (signature, number, creation-time chain)."""
    prev: LogHeader | None = None
    for g in range(start_gen, lay.current_gen + 1):
        newest = g == lay.current_gen
        path = lay.current_path if newest else lay.numbered.get(g)
        if path is None:
            code = errors.MissingPreviousLogFile if g == checkpoint_gen else errors.MissingLogFile
            raise EseError(
                code,
                f"log generation {g} is missing from {lay.log_dir}: "
                f"{both_names(lay.prefix, g)}. Copy it back (from backup media if needed) "
                "and run recovery again.",
                path=os.path.join(lay.log_dir, both_names(lay.prefix, g)),
            )
        data = scan_generation(path, g, newest=newest)
        h = data.header
        if h.signature != lay.signature:
            raise EseError(
                errors.BadLogSignature,
                f"log file {path} belongs to another log stream (signature {h.signature}, "
                f"expected {lay.signature}). Logs of different streams cannot be mixed in one "
                "storage group: move it out of the log folder.",
                path=path,
            )
        if prev is not None and abs(h.prev_created - prev.created) > 1e-6:
            raise EseError(
                errors.InvalidLogSequence,
                f"log file {path} does not follow generation {prev.generation} (its previous-"
                "generation time does not match). A generation was replaced by one from "
                "another copy of the stream.",
                path=path,
            )
        prev = h
        yield data
