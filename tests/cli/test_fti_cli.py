"""`mailkeep fti` as an administrator runs it: real subprocesses on a real data folder, exact
output (times and durations shown as TIME and N)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DB = "Mailbox Store (EX1)"


def mk(data: Path, *args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(data), *args],
                       capture_output=True, input=stdin, timeout=120)
    out = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "TIME", p.stdout.decode())
    out = re.sub(r"in \d+\.\d\d s", "in N s", out)
    return subprocess.CompletedProcess(p.args, p.returncode, out, p.stderr.decode())


def ok(data: Path, *args: str) -> list[str]:
    p = mk(data, *args)
    assert p.returncode == 0 and p.stderr == "", (args, p.stdout, p.stderr)
    return p.stdout.splitlines()


@pytest.fixture
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    ok(d, "setup", "--domain", "contoso.com", "--server", "EX1")
    ok(d, "user", "add", "alice", "--password", "pw")
    ok(d, "user", "mailbox-enable", "alice", "--db", DB)
    for i in range(3):
        body = f"From: s@example.org\nSubject: m{i}\nMessage-ID: <m{i}@x>\n\nword{i} common\n".encode()
        assert mk(d, "deliver", "alice@contoso.com", stdin=body).returncode == 0
    return d


def test_create_populate_status_set_delete(data: Path) -> None:
    guid = json.loads(mk(data, "fti", "status", "--db", DB, "--json").stdout)[0]["guid"]
    path = data / "index" / f"{guid}.fts"
    assert ok(data, "fti", "status", "--db", DB) == [
        f"First Storage Group/{DB}",
        "  full-text index:          none",
    ]
    assert ok(data, "fti", "create", "--db", DB) == [
        f"Created the full-text index of First Storage Group/{DB}: {path}",
        f'  empty until a full population: mailkeep fti populate --db "{DB}" --full',
        "  available for searching: no; update interval: 15 minutes",
    ]
    again = mk(data, "fti", "create", "--db", DB)
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr == (f"mailkeep fti create: mailbox store First Storage Group/{DB} already has a full-text "
                            f"index; delete it first ('mailkeep fti delete --db \"{DB}\"') to re-create it\n")
    assert ok(data, "fti", "populate", "--db", DB, "--full", "--available", "on") == [
        f"Full population of First Storage Group/{DB}: 3 message(s) in the index; 3 added or changed, 0 removed; "
        "3 content(s) read in N s",
    ]
    for i in range(2):
        body = f"From: s@example.org\nSubject: late{i}\nMessage-ID: <l{i}@x>\n\nlate common\n".encode()
        assert mk(data, "deliver", "alice@contoso.com", stdin=body).returncode == 0
    assert ok(data, "fti", "populate", "--db", DB) == [
        f"Incremental population of First Storage Group/{DB}: 5 message(s) in the index; 2 added or changed, "
        "0 removed; 2 content(s) read in N s",
    ]
    assert ok(data, "fti", "set", "--db", DB, "--interval", "never") == [
        f"First Storage Group/{DB}: available for searching: yes; update interval: never (manual population only)",
    ]
    assert ok(data, "fti", "status") == [
        f"First Storage Group/{DB}",
        f"  full-text index:          ready ({path})",
        "  available for searching:  yes",
        "  update interval:          never (manual population only)",
        "  last full population:     TIME",
        "  last incremental:         TIME",
        "  messages indexed:         5 (5 content(s))",
        "  searches answered:        0",
        "First Storage Group/Public Folder Store (EX1)",
        "  full-text index:          none",
    ]
    assert ok(data, "fti", "set", "--db", DB, "--interval", "30", "--available", "off") == [
        f"First Storage Group/{DB}: available for searching: no; update interval: 30 minutes",
    ]
    assert ok(data, "fti", "delete", "--db", DB) == [
        f"Deleted the full-text index of First Storage Group/{DB}; removed {path}",
        "  searches scan the messages until an index is created and populated again",
    ]
    assert not path.exists() and os.listdir(data / "index") == []
    none = mk(data, "fti", "populate")
    assert (none.returncode, none.stderr) == (1, "mailkeep fti populate: no database has a full-text index; create "
                                                 "one with 'mailkeep fti create [--db NAME]'\n")


def test_missing_file_reported_and_repaired_as_the_guide_says(data: Path) -> None:
    ok(data, "fti", "create", "--db", DB, "--available", "on")
    ok(data, "fti", "populate", "--db", DB, "--full")
    st = json.loads(mk(data, "fti", "status", "--db", DB, "--json").stdout)[0]
    path = Path(st["path"])
    assert (st["state"], st["messages"], st["contents"], st["searches"]) == ("ready", 3, 3, 0)
    for name in os.listdir(data / "index"):  # "delete the contents of the Projects folder"
        os.unlink(data / "index" / name)
    problem = f"the index file {path} is missing"
    assert ok(data, "fti", "status", "--db", DB) == [
        f"First Storage Group/{DB}",
        f"  full-text index:          missing ({path})",
        f"  problem:                  {problem}; searches scan the messages. Re-create it: mailkeep fti delete "
        f'--db "{DB}"; mailkeep fti create --db "{DB}"; mailkeep fti populate --db "{DB}" --full',
        "  available for searching:  yes",
        "  update interval:          15 minutes",
        "  last full population:     TIME",
        "  last incremental:         never",
    ]
    inc = mk(data, "fti", "populate", "--db", DB)
    assert inc.returncode == 1
    assert inc.stderr == (f"mailkeep fti populate: {problem}; an incremental population needs the index: start a "
                          f"full population ('mailkeep fti populate --db \"{DB}\" --full') or re-create it\n")
    events = mk(data, "events", "--id", "7003", "--json")
    assert [json.loads(line)["data"]["state"] for line in events.stdout.splitlines()] == ["missing"]
    assert ok(data, "fti", "delete", "--db", DB) == [
        f"Deleted the full-text index of First Storage Group/{DB}; removed no files",
        "  searches scan the messages until an index is created and populated again",
    ]
    ok(data, "fti", "create", "--db", DB, "--available", "on")
    assert ok(data, "fti", "populate", "--db", DB, "--full") == [
        f"Full population of First Storage Group/{DB}: 3 message(s) in the index; 3 added or changed, 0 removed; "
        "3 content(s) read in N s",
    ]
    assert json.loads(mk(data, "fti", "status", "--db", DB, "--json").stdout)[0]["state"] == "ready"


def test_population_needs_a_mounted_database_and_valid_switches(data: Path) -> None:
    ok(data, "fti", "create", "--db", DB)
    ok(data, "db", "dismount", DB)
    p = mk(data, "fti", "populate", "--db", DB, "--full")
    assert p.returncode == 1
    assert p.stderr == (f"mailkeep fti populate: mailbox store First Storage Group/{DB} is dismounted; mount it "
                        f"('mailkeep db mount {DB}') and try again (MAPI_E_FAILONEPROVIDER 0x8004011d)\n")
    bad = mk(data, "fti", "set", "--db", DB, "--interval", "0")
    assert bad.returncode == 2
    assert bad.stderr.splitlines()[-1] == ("mailkeep fti: error: argument --interval: '0': give the update interval "
                                           "in whole minutes (at least 1), or never")
    unknown = mk(data, "fti", "status", "--db", "No Such Store")
    assert unknown.returncode == 1 and unknown.stderr.startswith("mailkeep fti status: no database 'No Such Store'")
