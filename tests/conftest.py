"""Shared fixtures: real storage groups in temporary folders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailkeep.engine.fileio import FileIO
from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import StorageGroup, StorageGroupConfig
from mailkeep.eventlog import EventLog

SMALL_LOG = 64 * 1024

MESSAGES = TableSpec(
    "messages",
    ("id", "folder", "subject", "size"),
    ("id",),
    {"by_folder": ("folder", "id")},
)


def make_config(root: Path, **kw: object) -> StorageGroupConfig:
    opts: dict[str, object] = {
        "log_path": str(root / "logs"),
        "system_path": str(root / "system"),
        "log_file_size": SMALL_LOG,
    }
    opts.update(kw)
    return StorageGroupConfig(**opts)  # type: ignore[arg-type]


@pytest.fixture
def events(tmp_path: Path) -> EventLog:
    return EventLog(str(tmp_path / "events.jsonl"))


@pytest.fixture
def sg_config(tmp_path: Path) -> StorageGroupConfig:
    return make_config(tmp_path)


@pytest.fixture
def sg(sg_config: StorageGroupConfig, events: EventLog) -> Iterator[StorageGroup]:
    group = StorageGroup.create(sg_config, io=FileIO(), events=events)
    yield group
    group.close()


def db_paths(root: Path, name: str = "priv1") -> tuple[str, str]:
    d = root / "mdbdata"
    os.makedirs(d, exist_ok=True)
    return str(d / f"{name}.edb"), str(d / f"{name}.stm")
