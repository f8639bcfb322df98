"""Directory lookups: the embedded backend with its attribute index, the same lookup when
the filter cannot use the index (a scan), and plain SQLite with an index on the same column.

The question: what does finding one user by address cost (the server does it at every logon
and for every delivery), and how does it grow with the directory?
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import sys
import time
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from mailkeep.directory.directory import Directory  # noqa: E402
from mailkeep.directory.embedded import EmbeddedBackend  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out", "directory")
SIZES = (1_000, 10_000)
LOOKUPS = 300
SECONDS = 3.0


def _rate(fn: Callable[[str], Any], keys: list[str]) -> float:
    n, t0 = 0, time.perf_counter()
    while n < LOOKUPS * 20 and time.perf_counter() - t0 < SECONDS:
        fn(keys[n % len(keys)])
        n += 1
    return n / (time.perf_counter() - t0)


def measure(log: Callable[[str], None] = print) -> dict[str, Any]:
    results: dict[str, Any] = {"sizes": []}
    for size in SIZES:
        shutil.rmtree(OUT, ignore_errors=True)
        os.makedirs(OUT)
        d = Directory(EmbeddedBackend(os.path.join(OUT, "dir")), "contoso.com")
        d.ensure_base()
        d.rus_enabled = False
        t0 = time.perf_counter()
        for i in range(size):
            d.add(f"CN=user{i},{d.users_dn}", {
                "objectClass": ["top", "person", "organizationalPerson", "user"], "objectCategory": ["user"],
                "cn": [f"user{i}"], "sAMAccountName": [f"user{i}"], "mail": [f"user{i}@contoso.com"],
            })
        load = time.perf_counter() - t0
        rng = random.Random(size)
        keys = [f"user{rng.randrange(size)}@contoso.com" for _ in range(LOOKUPS)]

        def indexed(k: str, d: Directory = d) -> None:
            assert len(list(d.search(None, f"(&(objectCategory=user)(mail={k}))"))) == 1

        def scanned(k: str, d: Directory = d) -> None:  # same result; a non-indexed OR arm forbids the index
            assert len(list(d.search(None, f"(&(objectCategory=user)(|(mail={k})(description=none)))"))) == 1

        conn = sqlite3.connect(os.path.join(OUT, "plain.db"))
        conn.execute("CREATE TABLE users (dn TEXT PRIMARY KEY, mail TEXT COLLATE NOCASE, attrs BLOB)")
        conn.execute("CREATE INDEX by_mail ON users (mail)")
        with conn:
            conn.executemany("INSERT INTO users VALUES (?, ?, ?)",
                             ((f"CN=user{i}", f"user{i}@contoso.com", os.urandom(200)) for i in range(size)))

        def plain(k: str, conn: sqlite3.Connection = conn) -> None:
            assert len(conn.execute("SELECT dn, attrs FROM users WHERE mail = ?", (k,)).fetchall()) == 1

        row = {"size": size, "load_s": load, "indexed": _rate(indexed, keys), "plain_sqlite": _rate(plain, keys)}
        row["scan"] = _rate(scanned, keys[:20]) if size <= 10_000 else None
        log(f"  {size:>6} users: indexed {row['indexed']:.0f}/s, scan {row['scan']:.1f}/s, "
            f"plain SQLite {row['plain_sqlite']:.0f}/s (load {load:.1f} s)")
        results["sizes"].append(row)
        conn.close()
        d.close()
    shutil.rmtree(OUT, ignore_errors=True)
    return results


def markdown(r: dict[str, Any]) -> str:
    lines = [
        "| users | lookups/s by mail, indexed | same lookup as a scan | plain SQLite, indexed | indexed/plain |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in r["sizes"]:
        lines.append(
            f"| {row['size']:,} | {row['indexed']:,.0f} | {row['scan']:,.1f} | {row['plain_sqlite']:,.0f} | "
            f"{row['indexed'] / row['plain_sqlite']:.2f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(measure()))
