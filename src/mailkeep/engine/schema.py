"""Table declarations of the layers above, and their SQL.

Invariant: every identifier that reaches SQL is checked against ``NAME`` first, so a table
or column name can never inject SQL; table ``t`` lives in SQLite as ``"t_t"`` so engine
tables (leading underscore) and user tables never collide.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,62}")


def check_name(kind: str, name: str) -> str:
    if not NAME.fullmatch(name):
        raise ValueError(f"invalid {kind} name {name!r}: use letters, digits and _")
    return name


@dataclass(frozen=True)
class TableSpec:
    name: str
    columns: tuple[str, ...]
    primary_key: tuple[str, ...]
    indexes: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name("table", self.name)
        for c in self.columns:
            check_name("column", c)
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"table {self.name}: duplicate column")
        if not self.primary_key or any(c not in self.columns for c in self.primary_key):
            raise ValueError(f"table {self.name}: primary key must name its columns")
        for iname, cols in self.indexes.items():
            check_name("index", iname)
            if not cols or any(c not in self.columns for c in cols):
                raise ValueError(f"table {self.name}: index {iname} must name its columns")

    @property
    def sql_name(self) -> str:
        return f'"t_{self.name}"'

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "columns": list(self.columns),
            "primary_key": list(self.primary_key),
            "indexes": {k: list(v) for k, v in self.indexes.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TableSpec:
        return cls(
            str(d["name"]),
            tuple(d["columns"]),
            tuple(d["primary_key"]),
            {str(k): tuple(v) for k, v in d["indexes"].items()},
        )

    def create_sql(self) -> list[str]:
        cols = ", ".join(f'"{c}"' for c in self.columns)
        pk = ", ".join(f'"{c}"' for c in self.primary_key)
        out = [f"CREATE TABLE IF NOT EXISTS {self.sql_name} ({cols}, PRIMARY KEY ({pk}))"]
        for iname, icols in self.indexes.items():
            ic = ", ".join(f'"{c}"' for c in icols)
            out.append(
                f'CREATE INDEX IF NOT EXISTS "i_{self.name}_{iname}" ON {self.sql_name} ({ic})'
            )
        return out

    def key_of(self, row: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(row.get(c) for c in self.primary_key)
