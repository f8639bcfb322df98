"""The database header: what `eseutil /mh` prints, stored inside the .edb.

Invariants: the state machine is Just Created -> Dirty Shutdown <-> Clean Shutdown
(illegal transitions raise); a Dirty Shutdown database names the log stream it is attached
to (Log Signature) and the generations it needs (Log Required); a Clean Shutdown database
needs none (0-0) and records where it became consistent (Last Consistent).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from mailkeep.engine import codec

FORMAT_VERSION = (0x620, 12)  # shown as "Format ulVersion: 0x620,12"


class DbState(enum.Enum):
    JUST_CREATED = "Just Created"
    DIRTY = "Dirty Shutdown"
    CLEAN = "Clean Shutdown"


_ALLOWED = {
    (DbState.JUST_CREATED, DbState.DIRTY),
    (DbState.JUST_CREATED, DbState.CLEAN),
    (DbState.CLEAN, DbState.DIRTY),
    (DbState.DIRTY, DbState.CLEAN),
    (DbState.DIRTY, DbState.DIRTY),
}


@dataclass
class Mark:
    """A log position with the time it was reached (Last Attach, Last Consistent, ...)."""

    lsn: int
    time: float

    def to_list(self) -> list[Any]:
        return [self.lsn, self.time]

    @classmethod
    def from_list(cls, v: Any) -> Mark | None:
        return None if v is None else cls(int(v[0]), float(v[1]))


@dataclass
class BackupInfo:
    """A backup section: the log generations it covers, its mark and time."""

    low_gen: int
    high_gen: int
    mark: int
    time: float

    def to_list(self) -> list[Any]:
        return [self.low_gen, self.high_gen, self.mark, self.time]

    @classmethod
    def from_list(cls, v: Any) -> BackupInfo | None:
        return None if v is None else cls(int(v[0]), int(v[1]), int(v[2]), float(v[3]))


BACKUP_SECTIONS = (
    "previous_full",
    "previous_incremental",
    "previous_copy",
    "previous_differential",
    "current_full",
    "patch_current_full",
)


@dataclass
class DatabaseHeader:
    signature: str
    created: float
    state: DbState = DbState.JUST_CREATED
    version: tuple[int, int] = FORMAT_VERSION
    log_signature: str = ""
    log_required_low: int = 0
    log_committed: int = 0
    last_attach: Mark | None = None
    last_detach: Mark | None = None
    last_consistent: Mark | None = None
    repair_count: int = 0
    repair_date: float | None = None
    directory_guid: str = ""
    organization: str = ""
    admin_group: str = ""
    dbid: int = 0
    backups: dict[str, BackupInfo | None] = field(
        default_factory=lambda: dict.fromkeys(BACKUP_SECTIONS)
    )

    @classmethod
    def new(cls, *, directory_guid: str = "", organization: str = "", admin_group: str = "") -> DatabaseHeader:
        created = time.time()
        return cls(
            signature=f"{int.from_bytes(os.urandom(4), 'little')}@{created:.6f}",
            created=created,
            directory_guid=directory_guid or str(uuid.uuid4()),
            organization=organization,
            admin_group=admin_group,
        )

    def copy(self) -> DatabaseHeader:
        """An independent copy (the backup sections too), to change and then write."""
        return dataclasses.replace(self, backups=dict(self.backups))

    def transition(self, new: DbState) -> None:
        if (self.state, new) not in _ALLOWED:
            raise ValueError(f"illegal database state change {self.state.value} -> {new.value}")
        self.state = new

    def encode(self) -> bytes:
        return codec.encode(
            {
                "signature": self.signature,
                "created": self.created,
                "state": self.state.value,
                "version": list(self.version),
                "log_signature": self.log_signature,
                "log_required_low": self.log_required_low,
                "log_committed": self.log_committed,
                "last_attach": self.last_attach.to_list() if self.last_attach else None,
                "last_detach": self.last_detach.to_list() if self.last_detach else None,
                "last_consistent": self.last_consistent.to_list() if self.last_consistent else None,
                "repair_count": self.repair_count,
                "repair_date": self.repair_date,
                "directory_guid": self.directory_guid,
                "organization": self.organization,
                "admin_group": self.admin_group,
                "dbid": self.dbid,
                "backups": {k: (v.to_list() if v else None) for k, v in self.backups.items()},
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> DatabaseHeader:
        d = codec.decode(data)
        backups: dict[str, BackupInfo | None] = dict.fromkeys(BACKUP_SECTIONS)
        for k, v in (d.get("backups") or {}).items():
            backups[str(k)] = BackupInfo.from_list(v)
        return cls(
            signature=str(d["signature"]),
            created=float(d["created"]),
            state=DbState(d["state"]),
            version=(int(d["version"][0]), int(d["version"][1])),
            log_signature=str(d["log_signature"]),
            log_required_low=int(d["log_required_low"]),
            log_committed=int(d["log_committed"]),
            last_attach=Mark.from_list(d["last_attach"]),
            last_detach=Mark.from_list(d["last_detach"]),
            last_consistent=Mark.from_list(d["last_consistent"]),
            repair_count=int(d["repair_count"]),
            repair_date=None if d["repair_date"] is None else float(d["repair_date"]),
            directory_guid=str(d["directory_guid"]),
            organization=str(d["organization"]),
            admin_group=str(d["admin_group"]),
            dbid=int(d.get("dbid", 0)),
            backups=backups,
        )
