"""The one interface every directory backend implements (embedded, LDAP).

Invariants: DNs are compared normalized (dn.normalize); attribute names are returned in
their canonical spelling (schema.canonical_name) with values of their syntax's type; every
failure is a :class:`DirectoryError` with an LDAP result name (``noSuchObject``,
``entryAlreadyExists``, ...) and a message that names the entry and the remedy.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from mailkeep.directory import schema
from mailkeep.directory.filters import Filter

Value = str | int | bytes
Scope = Literal["base", "one", "subtree"]
SCOPES: tuple[Scope, ...] = ("base", "one", "subtree")


class DirectoryError(Exception):
    def __init__(self, result: str, message: str) -> None:
        self.result = result
        super().__init__(f"{result}: {message}")


@dataclass
class Entry:
    dn: str
    attrs: dict[str, list[Value]] = field(default_factory=dict)

    def get(self, name: str) -> list[Value]:
        key = name.lower()
        for k, v in self.attrs.items():
            if k.lower() == key:
                return v
        return []

    def first(self, name: str) -> Value | None:
        values = self.get(name)
        return values[0] if values else None

    def text(self, name: str) -> str | None:
        v = self.first(name)
        return None if v is None else v if isinstance(v, str) else str(v)

    def has(self, name: str) -> bool:
        return bool(self.get(name))


@dataclass(frozen=True)
class Change:
    op: Literal["add", "replace", "delete"]
    attr: str
    values: tuple[Value, ...] = ()


def clean_attrs(attrs: Mapping[str, Sequence[Value] | Value]) -> dict[str, list[Value]]:
    """Canonical names, typed values, no empty attributes; single-valued ones checked."""
    out: dict[str, list[Value]] = {}
    for name, raw in attrs.items():
        values = list(raw) if isinstance(raw, (list, tuple)) else [raw]
        typed = [schema.to_python(name, v) for v in values]
        if not typed:
            continue
        canon = schema.canonical_name(name)
        if schema.attribute(name).single and len(typed) > 1:
            raise DirectoryError("constraintViolation", f"{canon} takes one value, not {len(typed)}")
        out.setdefault(canon, []).extend(typed)
    return out


def apply_changes(attrs: dict[str, list[Value]], changes: Sequence[Change], dn: str) -> dict[str, list[Value]]:
    """LDAP modify semantics on a copy of ``attrs``."""
    out = {k: list(v) for k, v in attrs.items()}
    for ch in changes:
        canon = schema.canonical_name(ch.attr)
        key = next((k for k in out if k.lower() == canon.lower()), canon)
        values = [schema.to_python(canon, v) for v in ch.values]
        have = out.get(key, [])
        if ch.op == "replace":
            have = values
        elif ch.op == "add":
            for v in values:
                if v in have:
                    raise DirectoryError(
                        "attributeOrValueExists", f"{dn} already has {canon} value {v!r}"
                    )
                have = [*have, v]
        elif ch.op == "delete":
            if not values:
                if not have:
                    raise DirectoryError("noSuchAttribute", f"{dn} has no {canon} to delete")
                have = []
            else:
                for v in values:
                    if v not in have:
                        raise DirectoryError("noSuchAttribute", f"{dn} has no {canon} value {v!r}")
                have = [x for x in have if x not in values]
        else:
            raise DirectoryError("protocolError", f"unknown modify operation {ch.op!r}")
        if schema.attribute(canon).single and len(have) > 1:
            raise DirectoryError("constraintViolation", f"{canon} of {dn} takes one value")
        out.pop(key, None)
        if have:
            out[canon] = have
    return out


class Backend(Protocol):
    def add(self, dn: str, attrs: Mapping[str, Sequence[Value]]) -> None: ...

    def modify(self, dn: str, changes: Sequence[Change]) -> None: ...

    def delete(self, dn: str) -> None: ...

    def rename(self, dn: str, new_rdn: str, new_parent: str | None = None) -> str: ...

    def get(self, dn: str) -> Entry | None: ...

    def search(
        self, base: str, scope: Scope, flt: Filter, attrs: Sequence[str] | None = None
    ) -> Iterator[Entry]: ...

    def close(self) -> None: ...
