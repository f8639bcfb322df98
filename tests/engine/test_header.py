"""header: the database header (`eseutil /mh`) and its state machine."""

from __future__ import annotations

import re
import uuid
from dataclasses import replace

import pytest

from mailkeep.engine import codec
from mailkeep.engine.header import (
    BACKUP_SECTIONS,
    FORMAT_VERSION,
    BackupInfo,
    DatabaseHeader,
    DbState,
    Mark,
)

JC, DIRTY, CLEAN = DbState.JUST_CREATED, DbState.DIRTY, DbState.CLEAN


def test_state_names_are_eseutils() -> None:
    assert [s.value for s in DbState] == ["Just Created", "Dirty Shutdown", "Clean Shutdown"]


def test_format_version() -> None:
    assert FORMAT_VERSION == (0x620, 12)


def test_new_header() -> None:
    h = DatabaseHeader.new(organization="First Organization", admin_group="First Administrative Group")
    assert h.state is JC
    assert re.fullmatch(r"\d+@\d+\.\d{6}", h.signature)
    assert h.signature.endswith(f"@{h.created:.6f}")
    assert uuid.UUID(h.directory_guid)
    assert (h.organization, h.admin_group) == ("First Organization", "First Administrative Group")
    assert (h.log_signature, h.log_required_low, h.log_committed, h.dbid) == ("", 0, 0, 0)
    assert (h.last_attach, h.last_detach, h.last_consistent) == (None, None, None)
    assert (h.repair_count, h.repair_date) == (0, None)
    assert h.version == FORMAT_VERSION
    assert h.backups == dict.fromkeys(BACKUP_SECTIONS)


def test_new_headers_differ() -> None:
    a, b = DatabaseHeader.new(), DatabaseHeader.new()
    assert a.signature != b.signature
    assert a.directory_guid != b.directory_guid
    assert DatabaseHeader.new(directory_guid="g-1").directory_guid == "g-1"


def test_backup_sections() -> None:
    assert BACKUP_SECTIONS == (
        "previous_full",
        "previous_incremental",
        "previous_copy",
        "previous_differential",
        "current_full",
        "patch_current_full",
    )


# -- state machine ------------------------------------------------------------------------------

LEGAL = [(JC, DIRTY), (JC, CLEAN), (CLEAN, DIRTY), (DIRTY, CLEAN), (DIRTY, DIRTY)]
ILLEGAL = [(JC, JC), (CLEAN, CLEAN), (CLEAN, JC), (DIRTY, JC)]


def test_every_pair_is_classified() -> None:
    assert sorted(LEGAL + ILLEGAL, key=str) == sorted([(a, b) for a in DbState for b in DbState], key=str)


@pytest.mark.parametrize(("old", "new"), LEGAL)
def test_legal_transitions(old: DbState, new: DbState) -> None:
    h = replace(DatabaseHeader.new(), state=old)
    h.transition(new)
    assert h.state is new


@pytest.mark.parametrize(("old", "new"), ILLEGAL)
def test_illegal_transitions_raise(old: DbState, new: DbState) -> None:
    h = replace(DatabaseHeader.new(), state=old)
    with pytest.raises(ValueError) as e:
        h.transition(new)
    assert str(e.value) == f"illegal database state change {old.value} -> {new.value}"
    assert h.state is old


def test_lifecycle() -> None:
    h = DatabaseHeader.new()
    for s in (CLEAN, DIRTY, DIRTY, CLEAN, DIRTY, CLEAN):
        h.transition(s)
    assert h.state is CLEAN
    with pytest.raises(ValueError):
        h.transition(JC)


# -- encoding ----------------------------------------------------------------------------------


def full_header() -> DatabaseHeader:
    h = DatabaseHeader.new(organization="Org", admin_group="AG", directory_guid="guid-1")
    h.transition(DIRTY)
    h.log_signature = "abcd@1.0"
    h.log_required_low = 0x26
    h.log_committed = 0x28
    h.last_attach = Mark((0x26 << 32) | 4096, 1700000000.5)
    h.last_detach = Mark((0x20 << 32) | 8192, 1690000000.25)
    h.last_consistent = Mark((0x20 << 32) | 8192, 1690000000.25)
    h.repair_count = 2
    h.repair_date = 1680000000.0
    h.dbid = 3
    h.backups["previous_full"] = BackupInfo(0x10, 0x12, (0x10 << 32) | 4096, 1695000000.0)
    h.backups["current_full"] = BackupInfo(0x26, 0x26, (0x26 << 32) | 4096, 1700000001.0)
    return h


def test_round_trip() -> None:
    h = full_header()
    assert DatabaseHeader.decode(h.encode()) == h
    fresh = DatabaseHeader.new()
    assert DatabaseHeader.decode(fresh.encode()) == fresh


def test_encoding_is_a_codec_dict() -> None:
    d = codec.decode(full_header().encode())
    assert d["state"] == "Dirty Shutdown"
    assert d["version"] == [0x620, 12]
    assert d["last_attach"] == [(0x26 << 32) | 4096, 1700000000.5]
    assert d["backups"]["previous_full"] == [0x10, 0x12, (0x10 << 32) | 4096, 1695000000.0]
    assert d["backups"]["previous_incremental"] is None


def test_decode_without_optional_fields() -> None:
    d = codec.decode(DatabaseHeader.new().encode())
    del d["dbid"]
    del d["backups"]
    h = DatabaseHeader.decode(codec.encode(d))
    assert h.dbid == 0
    assert h.backups == dict.fromkeys(BACKUP_SECTIONS)


def test_decode_keeps_unknown_backup_sections() -> None:
    d = codec.decode(DatabaseHeader.new().encode())
    d["backups"]["current_shadow"] = [1, 2, 3, 4.0]
    h = DatabaseHeader.decode(codec.encode(d))
    assert h.backups["current_shadow"] == BackupInfo(1, 2, 3, 4.0)


def test_decode_refuses_unknown_state() -> None:
    d = codec.decode(DatabaseHeader.new().encode())
    d["state"] = "Being Converted"
    with pytest.raises(ValueError):
        DatabaseHeader.decode(codec.encode(d))


def test_decode_refuses_missing_field() -> None:
    d = codec.decode(DatabaseHeader.new().encode())
    del d["log_signature"]
    with pytest.raises(KeyError):
        DatabaseHeader.decode(codec.encode(d))


def test_mark_and_backup_info_list_forms() -> None:
    assert Mark(5, 1.5).to_list() == [5, 1.5]
    assert Mark.from_list([5, 1.5]) == Mark(5, 1.5)
    assert Mark.from_list(None) is None
    assert BackupInfo(1, 2, 3, 4.5).to_list() == [1, 2, 3, 4.5]
    assert BackupInfo.from_list(["1", "2", "3", "4.5"]) == BackupInfo(1, 2, 3, 4.5)
    assert BackupInfo.from_list(None) is None


def test_replace_copies_do_not_share_state() -> None:
    h = DatabaseHeader.new()
    h2 = replace(h)
    h2.transition(CLEAN)
    assert h.state is JC
