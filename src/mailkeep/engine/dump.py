"""Human-readable dumps of engine files, laid out as eseutil lays them out.

Each function returns the lines to print, so tests and the CLI share one implementation.
Invariant: dumping never changes a file (databases are opened read-only; a mounted database
can be dumped, as eseutil /mh allows).
"""

from __future__ import annotations

import os
import socket
import time
from collections import Counter
from typing import Any

from mailkeep.engine import checkpoint as chkfile
from mailkeep.engine import database
from mailkeep.engine.header import BACKUP_SECTIONS, BackupInfo, DbState, Mark
from mailkeep.engine.logformat import (
    SECTOR,
    TYPE_NAMES,
    format_lsn,
    lsn_gen,
)
from mailkeep.engine.logreader import read_header, scan_generation

MAGIC = "0x89abcdef"
SECTION_TITLES = {
    "previous_full": "Previous Full Backup",
    "previous_incremental": "Previous Incremental Backup",
    "previous_copy": "Previous Copy Backup",
    "previous_differential": "Previous Differential Backup",
    "current_full": "Current Full Backup",
    "patch_current_full": "Patch Current Full Backup",
}


def stamp(t: float | None) -> str:
    if not t:
        return "00/00/1900 00:00:00"
    return time.strftime("%m/%d/%Y %H:%M:%S", time.localtime(t))


def format_signature(sig: str) -> str:
    """'<rand>@<time>' as eseutil prints a signature."""
    rand, _, created = sig.partition("@")
    try:
        when = stamp(float(created))
    except ValueError:
        when = "?"
    return f"Create time:{when} Rand:{rand} Computer:{socket.gethostname()}"


def gens(low: int, high: int) -> str:
    return f"{low}-{high} (0x{low:X}-0x{high:X})"


def _label(lines: list[str], label: str, value: Any, width: int = 24) -> None:
    lines.append(f"{label:>{width}}: {value}")


def _mark(m: Mark | None) -> str:
    if m is None:
        return f"(0x0,0,0)  {stamp(None)}"
    return f"{format_lsn(m.lsn)}  {stamp(m.time)}"


def dump_database(path: str) -> list[str]:
    """eseutil /mh: the header of a .edb (or the identity of a .stm)."""
    lines: list[str] = []
    if path.lower().endswith(".stm"):
        sig = database.read_stm_signature(path)
        _label(lines, "Streaming File", os.path.basename(path))
        _label(lines, "File Type", "Streaming File")
        _label(lines, "Format ulMagic", MAGIC)
        _label(lines, "DB Signature", format_signature(sig))
        _label(lines, "File Size", f"{os.path.getsize(path)} bytes")
        return lines
    h, applied = database.read_header(path)
    stm = os.path.splitext(path)[0] + ".stm"
    stm_size = os.path.getsize(stm) if os.path.exists(stm) else 0
    dirty = h.state != DbState.CLEAN
    low = h.log_required_low if dirty else 0
    high = max(low, lsn_gen(applied)) if dirty else 0
    committed = max(h.log_committed, high) if dirty else 0
    ver = f"0x{h.version[0]:X},{h.version[1]}"
    _label(lines, "Database", os.path.basename(path))
    lines.append("")
    _label(lines, "File Type", "Database")
    _label(lines, "Format ulMagic", MAGIC)
    _label(lines, "Engine ulMagic", MAGIC)
    _label(lines, "Format ulVersion", ver)
    _label(lines, "Engine ulVersion", ver)
    _label(lines, "Created ulVersion", ver)
    _label(lines, "DB Signature", format_signature(h.signature))
    _label(lines, "cbDbPage", 4096)
    _label(lines, "State", h.state.value)
    _label(lines, "Log Required", gens(low, high))
    _label(lines, "Log Committed", gens(committed if dirty else 0, committed))
    _label(lines, "Streaming File", "Yes")
    _label(lines, "Streaming File Size", f"{stm_size} bytes")
    _label(lines, "Repair Count", h.repair_count)
    _label(lines, "Repair Date", stamp(h.repair_date))
    _label(lines, "Last Consistent", _mark(h.last_consistent))
    _label(lines, "Last Attach", _mark(h.last_attach))
    _label(lines, "Last Detach", _mark(h.last_detach))
    _label(lines, "Dbid", h.dbid)
    _label(lines, "Log Signature", format_signature(h.log_signature) if h.log_signature else "(none)")
    _label(lines, "Applied Position", format_lsn(applied))
    _label(lines, "Directory GUID", h.directory_guid or "(none)")
    _label(lines, "Organization", h.organization or "(none)")
    _label(lines, "Administrative Group", h.admin_group or "(none)")
    for key in BACKUP_SECTIONS:
        info = h.backups.get(key)
        if key == "patch_current_full" and info is None:
            continue
        lines.append("")
        lines.extend(_backup_section(SECTION_TITLES[key], info))
    return lines


def _backup_section(title: str, info: BackupInfo | None) -> list[str]:
    out = [f"{title}:"]
    if info is None:
        out += ["        Log Gen: 0-0 (0x0-0x0)", "           Mark: (0x0,0,0)", f"           Mark: {stamp(None)}"]
    else:
        out += [
            f"        Log Gen: {gens(info.low_gen, info.high_gen)}",
            f"           Mark: {format_lsn(info.mark)}",
            f"           Mark: {stamp(info.time)}",
        ]
    return out


def dump_log(path: str, *, verbose: bool = False) -> list[str]:
    """eseutil /ml: a generation's header, its attached databases, a summary of its records
    and the integrity verdict. Damage raises the ESE error (-501) after nothing is printed
    for the damaged part."""
    h = read_header(path)
    base = os.path.basename(path)
    newest = base.lower() == f"{h.prefix.lower()}.log"
    lines: list[str] = []
    _label(lines, "Base name", h.prefix)
    _label(lines, "Log file", base)
    _label(lines, "lGeneration", f"{h.generation} (0x{h.generation:X})")
    chk_path = os.path.join(h.system_path, f"{h.prefix}.chk")
    local_chk = os.path.join(os.path.dirname(os.path.abspath(path)), f"{h.prefix}.chk")
    chk_text = "NOT AVAILABLE"
    for p in (chk_path, local_chk):
        try:
            chk = chkfile.read(p)
        except Exception:  # noqa: BLE001 - a missing or damaged checkpoint is just not shown
            continue
        if chk.signature == h.signature:
            chk_text = format_lsn(chk.lsn)
            break
    _label(lines, "Checkpoint", chk_text)
    _label(lines, "creation time", stamp(h.created))
    _label(lines, "prev gen time", stamp(h.prev_created))
    _label(lines, "Format LGVersion", f"({h.version[0]}.{h.version[1]})")
    _label(lines, "Signature", format_signature(h.signature))
    _label(lines, "Env SystemPath", h.system_path)
    _label(lines, "Env LogFilePath", h.log_path)
    _label(lines, "Env Log Sec size", SECTOR)
    _label(lines, "Env (CircLog,LogFile)", f"({'on' if h.circular else 'off'},{h.file_size // SECTOR})")
    _label(lines, "Using Reserved Log File", "true" if h.reserve else "false")
    _label(lines, "Circular Logging Flag", "on" if h.circular else "off")
    for a in h.attached:
        lines.append(f"{a.dbid:>24} {a.path}")
        lines.append(f"{'Signature':>34}: {format_signature(a.signature)}")
    data = scan_generation(path, None, newest=newest)
    counts = Counter(TYPE_NAMES[r.type] for r in data.records)
    lines.append("")
    _label(lines, "Records", len(data.records))
    for name in ("commit", "operation", "stream", "rollback", "attach", "detach", "term", "fill"):
        if counts.get(name):
            _label(lines, name, counts[name])
    _label(lines, "Last record ends at", format_lsn(data.end))
    if verbose:
        lines.append("")
        for r in data.records:
            lines.append(f"  {format_lsn(r.pos):<18} {TYPE_NAMES[r.type]:<10} db {r.dbid:<3} {len(r.payload):>7} bytes")
    if data.torn_bytes:
        lines.append(f"WARNING: torn tail of {data.torn_bytes} bytes after {format_lsn(data.end)} ignored "
                     "(a flush interrupted by a stop; soft recovery discards it)")
    lines.append(f"Integrity check passed for log file: {base}")
    return lines


def dump_checkpoint(path: str) -> list[str]:
    """eseutil /mk."""
    chk = chkfile.read(path)
    lines: list[str] = []
    _label(lines, "Checkpoint file", os.path.basename(path))
    full = chk.full_backup
    inc = chk.inc_backup
    _label(lines, "LastFullBackupCheckpoint", format_lsn(int(full[0])) if full else "(0x0,0,0)")
    _label(lines, "Checkpoint", format_lsn(chk.lsn))
    _label(lines, "FullBackup", format_lsn(int(full[0])) if full else "(0x0,0,0)")
    _label(lines, "FullBackup time", stamp(float(full[1]) if full else None))
    _label(lines, "IncBackup", format_lsn(int(inc[0])) if inc else "(0x0,0,0)")
    _label(lines, "IncBackup time", stamp(float(inc[1]) if inc else None))
    _label(lines, "Signature", format_signature(chk.signature))
    _label(lines, "Env SystemPath", chk.system_path)
    _label(lines, "Env LogFilePath", chk.log_path)
    _label(lines, "Env CircLog", "on" if chk.circular else "off")
    _label(lines, "Frozen (backup)", "yes" if chk.frozen else "no")
    for a in chk.attached:
        lines.append(f"{a[0]:>24} {a[1]} LogOn RW")
    return lines
