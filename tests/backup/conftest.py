"""Shared fixtures of the backup and restore tests: a store with 64 KiB log generations (so a
few deliveries span several), and a per-test machine state folder (catalogs, backup log)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.directory import tasks
from mailkeep.directory.setup import open_directory
from mailkeep.store.setup import setup_server
from mailkeep.store.store import Store


@pytest.fixture(autouse=True)
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "state"
    monkeypatch.setenv("MAILKEEP_STATE_DIR", str(d))
    return d


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """Server EX1 (contoso.com): alice has a mailbox in Mailbox Store (EX1); databases mounted."""
    data = tmp_path / "data"
    res = setup_server(str(data), domain="contoso.com", server="EX1", log_file_size=64 * 1024)
    d = open_directory(str(data))
    d.add_user("alice", password_text="pw")
    tasks.mailbox_enable(d, "alice", res.mailbox_store.dn)
    d.close()
    s = Store.open(str(data), log_file_size=64 * 1024)
    s.mount_intended()
    yield s
    s.close()
