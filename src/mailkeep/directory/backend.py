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

from mailkeep.directory import dn as dnmod
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
        merged = [*out.get(canon, []), *typed]
        if schema.attribute(name).single and len(merged) > 1:
            raise DirectoryError("constraintViolation", f"{canon} takes one value, not {len(merged)}")
        _no_duplicates(canon, merged, "")
        out[canon] = merged
    return out


def value_key(attr: str, value: Value) -> Value:
    """The form in which LDAP's equality rule for ``attr`` compares ``value``: strings ignore
    case (DN-valued ones are normalized first), integers and bytes compare exactly."""
    if not isinstance(value, str):
        return value
    if schema.attribute(attr).syntax == schema.DN:
        try:
            return dnmod.normalize(value)
        except dnmod.DnError:
            pass
    return value.casefold()


def _no_duplicates(canon: str, values: Sequence[Value], dn: str) -> None:
    seen: set[Value] = set()
    for v in values:
        k = value_key(canon, v)
        if k in seen:
            where = f" of {dn}" if dn else ""
            raise DirectoryError("attributeOrValueExists", f"{canon}{where} is given the value {v!r} twice")
        seen.add(k)


def apply_changes(attrs: dict[str, list[Value]], changes: Sequence[Change], dn: str) -> dict[str, list[Value]]:
    """LDAP modify semantics on a copy of ``attrs``: values are compared with the attribute's
    equality rule (:func:`value_key`), as an LDAP server does, so adding ``smtp:a@b`` next to
    ``SMTP:a@b`` is attributeOrValueExists and deleting ``FOO`` removes ``foo``; a value given
    twice in one add or replace is attributeOrValueExists."""
    out = {k: list(v) for k, v in attrs.items()}
    for ch in changes:
        canon = schema.canonical_name(ch.attr)
        key = next((k for k in out if k.lower() == canon.lower()), canon)
        values = [schema.to_python(canon, v) for v in ch.values]
        have = out.get(key, [])
        if ch.op in ("add", "replace"):
            _no_duplicates(canon, values, dn)
        if ch.op == "replace":
            have = values
        elif ch.op == "add":
            keys = {value_key(canon, x) for x in have}
            for v in values:
                if value_key(canon, v) in keys:
                    raise DirectoryError(
                        "attributeOrValueExists", f"{dn} already has {canon} value {v!r}"
                    )
            have = [*have, *values]
        elif ch.op == "delete":
            if not values:
                if not have:
                    raise DirectoryError("noSuchAttribute", f"{dn} has no {canon} to delete")
                have = []
            else:
                keys = {value_key(canon, x) for x in have}
                gone = {value_key(canon, v) for v in values}
                for v in values:
                    if value_key(canon, v) not in keys:
                        raise DirectoryError("noSuchAttribute", f"{dn} has no {canon} value {v!r}")
                have = [x for x in have if value_key(canon, x) not in gone]
        else:
            raise DirectoryError("protocolError", f"unknown modify operation {ch.op!r}")
        if schema.attribute(canon).single and len(have) > 1:
            raise DirectoryError("constraintViolation", f"{canon} of {dn} takes one value")
        out.pop(key, None)
        if have:
            out[canon] = have
    return out


def check_rdn_kept(dn: str, before: Mapping[str, Sequence[Value]], after: Mapping[str, Sequence[Value]]) -> None:
    """A modify may not remove the value that names the entry (``cn`` of ``CN=x,...``): that
    takes a rename. notAllowedOnRDN, as Active Directory answers."""
    attr, value = dnmod.rdn(dn)
    key = value.casefold()

    def has(attrs: Mapping[str, Sequence[Value]]) -> bool:
        return any(
            k.lower() == attr.lower() and any(isinstance(v, str) and v.casefold() == key for v in vs)
            for k, vs in attrs.items()
        )

    if has(before) and not has(after):
        raise DirectoryError(
            "notAllowedOnRDN", f"{attr} of {dn} names the entry; rename it to change its {attr} ({value!r})"
        )


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
