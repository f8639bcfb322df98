"""`mailkeep eseutil`: eseutil's modes with eseutil's switches (case-insensitive).

    /mh FILE        database header            /ml LOG   log header, records, integrity
    /mk CHK         checkpoint file            /r ENN    soft recovery
                                                 [/l LOGPATH] [/s SYSPATH] [/d [DBFOLDER]] [/i]
    /cc [TEMP] [/k] [/t]  hard recovery of a restore (restore.env)
Switch values may be attached (/lD:\\logs style: /l/var/logs) or follow as the next word.
Success ends with "Operation completed successfully in N seconds."; failure with the ESE
number and name, and a non-zero exit.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from mailkeep import __version__
from mailkeep.admin.roles import AccessDenied
from mailkeep.backup.restore import RestoreError
from mailkeep.cli.target import RemoteError
from mailkeep.engine import dump
from mailkeep.engine.errors import EseError
from mailkeep.engine.logreader import read_header
from mailkeep.engine.storagegroup import PREFIXES, RecoveryOptions, StorageGroup, StorageGroupConfig
from mailkeep.eventlog import EventLog
from mailkeep.store.errors import StoreError
from mailkeep.store.server import ConfigError

BANNER = [
    "Mailkeep Server Database Utilities",
    f"Version {__version__}",
    "Eseutil-compatible switches; Exchange Server 2003 layouts.",
    "",
]

USAGE = """usage: mailkeep eseutil MODE ...
  /mh FILE                         dump a database header (.edb; .stm shows its identity)
  /ml LOG [/v]                     dump a log generation and check every record
  /mk CHK                          dump a checkpoint file
  /r ENN [/l PATH] [/s PATH] [/d [FOLDER]] [/i]
                                   soft recovery: replay the logs of prefix ENN into its databases
  /cc [TEMP] [/k] [/t]             hard recovery from a restore's folder (restore.env): the restored
                                   logs, then the storage group's own (/t: only the restored ones);
                                   /k keeps restore.env
Switches are case-insensitive (/MH = /mh)."""


class UsageError(Exception):
    pass


@dataclass
class RecoverArgs:
    prefix: str
    log_path: str
    system_path: str
    db_dir: str | None
    ignore: bool


def _is_switch(word: str) -> bool:
    return word.startswith("/") and len(word) >= 2 and not os.path.exists(word) or word.startswith("-")


def parse_recover(words: list[str]) -> RecoverArgs:
    if not words or words[0].upper() not in PREFIXES:
        raise UsageError(f"/r needs a log prefix ({', '.join(PREFIXES)}), e.g. 'eseutil /r E00'")
    prefix = words[0].upper()
    log_path = system_path = "."
    db_dir: str | None = None
    ignore = False
    i = 1
    while i < len(words):
        w = words[i]
        key = w[:2].lower()
        if key in ("/l", "-l", "/s", "-s", "/d", "-d") or w.lower() in ("/i", "-i"):
            if w.lower() in ("/i", "-i"):
                ignore = True
                i += 1
                continue
            value = w[2:]
            if not value and i + 1 < len(words) and not _is_switch(words[i + 1]):
                value = words[i + 1]
                i += 1
            if key[1] == "l":
                if not value:
                    raise UsageError("/l needs the log folder")
                log_path = value
            elif key[1] == "s":
                if not value:
                    raise UsageError("/s needs the system (checkpoint) folder")
                system_path = value
            else:
                db_dir = value or "."
            i += 1
            continue
        raise UsageError(f"unknown switch {w!r} for /r")
    return RecoverArgs(prefix, log_path, system_path, db_dir, ignore)


def recover(args: RecoverArgs, events: EventLog) -> Iterator[str]:
    """Soft recovery of a storage group's files (offline, as eseutil /r); lines are
    yielded as the work goes, so a failure still shows what was attempted."""
    cur = os.path.join(args.log_path, f"{args.prefix}.log")
    size = read_header(cur).file_size if os.path.exists(cur) else None
    cfg = StorageGroupConfig(log_path=args.log_path, system_path=args.system_path, prefix=args.prefix)
    if size:
        cfg.log_file_size = size
    yield from [
        "Initiating RECOVERY mode...",
        f"    Logfile base name: {args.prefix}",
        f"            Log files: {os.path.abspath(args.log_path)}",
        f"         System files: {os.path.abspath(args.system_path)}",
        f"   Database Directory: {os.path.abspath(args.db_dir) if args.db_dir else '(paths recorded in the logs)'}",
        "",
        "Performing soft recovery...",
    ]
    sg = StorageGroup.open(
        cfg, events=events, recovery=RecoveryOptions(db_dir=args.db_dir, ignore_missing=args.ignore)
    )
    info = dict(sg.last_recovery)
    sg.close()
    dbs = info.get("databases") or []
    yield f"    Replayed {info.get('generations')} generation(s), {info.get('transactions')} transaction(s)."
    if isinstance(dbs, list) and dbs:
        yield "    Databases now in Clean Shutdown:"
        yield from (f"        {p}" for p in dbs)
    else:
        yield "    No database needed replay."


def hard_recovery(words: list[str], data: str) -> Iterator[str]:
    """/cc [TEMP] [/k] [/t]: the guide's "How to Run Eseutil /cc" — through the running
    server when there is one (it owns the storage group), else on the files."""
    temp, keep, roll = ".", False, True
    for w in words:
        lw = w.lower()
        if lw in ("/k", "-k"):
            keep = True
        elif lw in ("/t", "-t"):
            roll = False
        elif _is_switch(w):
            raise UsageError(f"unknown switch {w!r} for /cc (it takes [TEMP] [/k] [/t])")
        else:
            temp = w
    from mailkeep.cli.target import target

    t = target(data)
    try:
        r = t.call("restore.hard-recovery", {"temp": os.path.abspath(temp), "keep": keep, "roll_forward": roll})
    finally:
        t.close()
    yield "Initiating RECOVERY mode..."
    yield f"    Restore folder: {r['folder']}"
    yield f"    Storage group: {r['storage_group']}"
    yield f"    Restored logs: generations {r['restored_logs'][0]}-{r['restored_logs'][1]}"
    if r["rolled_to"] > r["restored_logs"][1]:
        yield f"    Then the storage group's own logs up to generation {r['rolled_to']}"
    if r["stopped"]:
        yield f"    Roll-forward stopped: {r['stopped']}"
    yield "    Databases now in Clean Shutdown:"
    yield from (f"        {d}" for d in r["databases"])
    yield f"    restore.env {'kept (/k)' if r['kept_env'] else 'deleted'}"


def run(words: Sequence[str], events: EventLog, data: str = ".") -> Iterator[str]:
    """The output lines of one eseutil command (raises EseError or UsageError)."""
    if not words:
        raise UsageError("no mode given")
    mode = words[0].lower()
    rest = list(words[1:])
    if mode in ("/mh", "/ml", "/mk", "-mh", "-ml", "-mk"):
        if not rest:
            raise UsageError(f"{words[0]} needs a file")
        path = rest[0]
        extra = [w.lower() for w in rest[1:]]
        if mode[1:] == "ml":
            bad = [w for w in extra if w not in ("/v", "-v")]
            if bad:
                raise UsageError(f"unknown switch {bad[0]!r} for /ml")
            return iter(["Initiating FILE DUMP mode...", ""] + dump.dump_log(path, verbose=bool(extra)))
        if extra:
            raise UsageError(f"unknown switch {rest[1]!r} for {words[0]}")
        if not os.path.exists(path):
            from mailkeep.engine import errors

            raise EseError(errors.FileNotFound, f"{path} not found", path=path)
        fn = dump.dump_database if mode[1:] == "mh" else dump.dump_checkpoint
        return iter(["Initiating FILE DUMP mode...", ""] + fn(path))
    if mode in ("/r", "-r"):
        return recover(parse_recover(rest), events)
    if mode in ("/cc", "-cc"):
        return hard_recovery(rest, data)
    raise UsageError(f"unknown or not yet available mode {words[0]!r}")


def main(argv: Sequence[str], *, data: str) -> int:
    out = sys.stdout
    for line in BANNER:
        print(line, file=out)
    t0 = time.monotonic()
    events = EventLog(os.path.join(data, "events.jsonl") if os.path.isdir(data) else None)
    try:
        for line in run(argv, events, data):
            print(line, file=out)
    except UsageError as e:
        print(f"eseutil: {e}\n\n{USAGE}", file=out)
        return 2
    except (RestoreError, RemoteError, AccessDenied, StoreError, ConfigError) as e:
        secs = time.monotonic() - t0
        print(f"\nERROR: {e}", file=out)
        print(f"Operation terminated after {secs:.2f} seconds.", file=out)
        return 1
    except EseError as e:
        secs = time.monotonic() - t0
        print("", file=out)
        print(f"ERROR: {e.detail}", file=out)
        print(
            f"Operation terminated with error {e.number} ({e.name}, {e.description}) after {secs:.2f} seconds.",
            file=out,
        )
        return 1
    except OSError as e:
        secs = time.monotonic() - t0
        print(f"\nERROR: {e}", file=out)
        print(f"Operation terminated with error -1022 (JET_errDiskIO, Disk IO error) after {secs:.2f} seconds.",
              file=out)
        return 1
    except Exception as e:  # noqa: BLE001 - an engine bug must still end with an ESE error line
        secs = time.monotonic() - t0
        print(f"\nERROR: unexpected failure: {type(e).__name__}: {e}", file=out)
        print(f"Operation terminated with error -107 (JET_errInternalError, Fatal internal error) after {secs:.2f} "
              "seconds.", file=out)
        return 1
    print("", file=out)
    print(f"Operation completed successfully in {time.monotonic() - t0:.2f} seconds.", file=out)
    return 0
