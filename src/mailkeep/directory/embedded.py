"""The embedded directory: objects kept in a database on Mailkeep's own engine.

As on a domain controller, the directory database (``ntds.edb``) has its own storage group
(prefix ``EDB``: ``EDB.log``, ``EDB.chk``, ``res1.log``, ``res2.log``) with circular logging
always on, so it gets soft recovery after a crash and, later, online backup.

Invariants: one row per object, keyed by objectGUID; ``path`` (the normalized DN read from
the root, e.g. ``dc=com,dc=contoso,cn=users,cn=user1``) is unique, so a subtree is a range
of ``path``; an entry is added only under an existing parent (except a naming-context root);
an entry with children cannot be deleted; every change is one engine transaction.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from mailkeep.directory import dn as dnmod
from mailkeep.directory import schema
from mailkeep.directory.backend import (
    Change,
    DirectoryError,
    Entry,
    Scope,
    Value,
    apply_changes,
    check_rdn_kept,
    clean_attrs,
)
from mailkeep.directory.filters import And, Equal, Filter, Or, matches, normalize_dn
from mailkeep.engine import codec
from mailkeep.engine.database import Database
from mailkeep.engine.schema import TableSpec
from mailkeep.engine.storagegroup import StorageGroup, StorageGroupConfig
from mailkeep.engine.transaction import Transaction
from mailkeep.eventlog import EventLog

OBJECTS = TableSpec(
    "objects",
    ("guid", "path", "parent", "dn", "attrs"),
    ("guid",),
    {"by_path": ("path",), "by_parent": ("parent", "path")},
)
ATTRINDEX = TableSpec(
    "attrindex",
    ("attr", "value", "guid"),
    ("attr", "value", "guid"),
    {"by_guid": ("guid",)},
)
# Equality lookups the server makes on every logon and delivery. Only attributes whose
# equality the filters module decides by case-folding (strings) or exact bytes (binary) are
# indexed, so the index finds exactly what a scan would (the filter is still applied).
INDEXED = {
    a.lower(): a for a in (
        "sAMAccountName", "userPrincipalName", "mail", "mailNickname", "proxyAddresses",
        "legacyExchangeDN", "msExchMailboxGUID", "objectGUID", "objectSid",
    )
}
LOG_SIZE = 1024 * 1024
DECIMAL = re.compile(r"-?[0-9]{1,4000}")  # as mailkeep.directory.filters decides "a decimal integer"


def index_key(attr: str, value: Value | str) -> str | None:
    """The index form of one value (None: not indexable, so never planned on)."""
    if schema.attribute(attr).syntax == schema.BINARY:
        raw = value if isinstance(value, bytes) else str(value).encode("utf-8")
        return "b:" + raw.hex()
    if isinstance(value, bytes):
        return None
    text = str(value)
    if DECIMAL.fullmatch(text):  # the filters compare decimal integers numerically
        return "i:" + str(int(text))
    return "s:" + text.casefold()


def _looks_like_dn(text: str) -> bool:
    try:
        normalize_dn(text)
    except ValueError:
        return False
    return True


def plan(f: Filter) -> list[tuple[str, str]] | None:
    """Index keys whose objects include every match of ``f`` (None: cannot tell: scan)."""
    if isinstance(f, Equal):
        canon = INDEXED.get(f.attr.lower())
        if canon is None or (isinstance(f.value, str) and _looks_like_dn(f.value)):
            return None  # two DNs compare as DNs (spaces, escapes), not as folded text: scan
        key = index_key(canon, f.value)
        return [(canon, key)] if key is not None else None
    if isinstance(f, And):
        for item in f.items:
            keys = plan(item)
            if keys is not None:
                return keys
        return None
    if isinstance(f, Or):
        out: list[tuple[str, str]] = []
        for item in f.items:
            keys = plan(item)
            if keys is None:
                return None
            out.extend(keys)
        return out
    return None


def _path(dn: str) -> str:
    """The normalized DN read from the root: ``dc=com,dc=contoso,cn=users``."""
    parts = dnmod.split(dnmod.normalize(dn))
    return ",".join(f"{a}={dnmod.escape_value(v)}" for a, v in reversed(parts))


class EmbeddedBackend:
    """Directory objects in ``<root>/ntds.edb`` with logs in ``<root>/logs``."""

    def __init__(self, root: str, *, events: EventLog | None = None, log_file_size: int = LOG_SIZE) -> None:
        self.root = root
        cfg = StorageGroupConfig(
            log_path=os.path.join(root, "logs"),
            system_path=os.path.join(root, "system"),
            prefix="EDB",
            name="Directory",
            circular_logging=True,
            log_file_size=log_file_size,
        )
        edb = os.path.join(root, "ntds.edb")
        if os.path.exists(os.path.join(cfg.log_path, "EDB.log")):
            self.sg = StorageGroup.open(cfg, events=events)
            self.db: Database = self.sg.mount(edb)
        else:
            self.sg = StorageGroup.create(cfg, events=events)
            self.db = self.sg.create_database(edb)
        rebuild = "attrindex" not in self.db.specs
        with self.sg.begin() as t:
            t.declare_table(self.db, OBJECTS)
            t.declare_table(self.db, ATTRINDEX)
            if rebuild:  # a directory from before the index existed
                for row in list(t.scan(self.db, "objects")):
                    self._index(t, row["guid"], codec.decode(row["attrs"]))

    # -- helpers ---------------------------------------------------------------------------
    def _row(self, t: Any, dn: str) -> dict[str, Any] | None:
        rows = list(t.scan(self.db, "objects", index="by_path", prefix=(_path(dn),), limit=1))
        return rows[0] if rows else None

    @staticmethod
    def _entry(row: dict[str, Any], attrs: Sequence[str] | None = None) -> Entry:
        data: dict[str, list[Value]] = codec.decode(row["attrs"])
        if attrs is not None:
            wanted = {a.lower() for a in attrs}
            if "*" not in wanted:
                data = {k: v for k, v in data.items() if k.lower() in wanted}
        return Entry(str(row["dn"]), data)

    def _put(self, t: Transaction, guid: bytes, dn: str, attrs: dict[str, list[Value]]) -> None:
        attrs["distinguishedName"] = [dn]
        t.put(self.db, "objects", {
            "guid": guid,
            "path": _path(dn),
            "parent": _path(dnmod.parent(dn)),
            "dn": dn,
            "attrs": codec.encode(attrs),
        })
        self._index(t, guid, attrs)

    def _index(self, t: Transaction, guid: bytes, attrs: Mapping[str, Sequence[Value]] | None) -> None:
        """Replace the index rows of one object (``attrs`` None: it was deleted)."""
        for row in list(t.scan(self.db, "attrindex", index="by_guid", prefix=(guid,))):
            t.delete(self.db, "attrindex", (row["attr"], row["value"], guid))
        for name, values in (attrs or {}).items():
            canon = INDEXED.get(name.lower())
            if canon is None:
                continue
            for v in values:
                key = index_key(canon, v)
                if key is not None:
                    t.put(self.db, "attrindex", {"attr": canon, "value": key, "guid": guid})

    # -- Backend ---------------------------------------------------------------------------
    def add(self, dn: str, attrs: Mapping[str, Sequence[Value]]) -> None:
        clean = clean_attrs(attrs)
        dnmod.split(dn)  # validates
        with self.sg.begin() as t:
            if self._row(t, dn) is not None:
                raise DirectoryError("entryAlreadyExists", f"{dn} already exists")
            parent = dnmod.parent(dn)
            is_root = not clean.get("objectClass") or any(
                str(c).lower() in ("domain", "domaindns", "organization") for c in clean["objectClass"]
            )
            if parent and self._row(t, parent) is None and not is_root:
                raise DirectoryError("noSuchObject", f"cannot add {dn}: its parent {parent} does not exist")
            guid_values = clean.get("objectGUID") or [uuid.uuid4().bytes_le]
            guid = guid_values[0]
            assert isinstance(guid, bytes)
            if list(t.scan(self.db, "objects", prefix=(guid,), limit=1)):
                raise DirectoryError("entryAlreadyExists", f"objectGUID of {dn} is already in use")
            clean["objectGUID"] = [guid]
            self._put(t, guid, dn, clean)

    def modify(self, dn: str, changes: Sequence[Change]) -> None:
        with self.sg.begin() as t:
            row = self._row(t, dn)
            if row is None:
                raise DirectoryError("noSuchObject", f"{dn} does not exist")
            for ch in changes:
                if ch.attr.lower() in ("objectguid", "distinguishedname"):
                    raise DirectoryError("constraintViolation", f"{ch.attr} of {dn} cannot be changed")
            before = codec.decode(row["attrs"])
            attrs = apply_changes(before, changes, dn)
            check_rdn_kept(str(row["dn"]), before, attrs)
            self._put(t, row["guid"], str(row["dn"]), attrs)

    def delete(self, dn: str) -> None:
        with self.sg.begin() as t:
            row = self._row(t, dn)
            if row is None:
                raise DirectoryError("noSuchObject", f"{dn} does not exist")
            if list(t.scan(self.db, "objects", index="by_parent", prefix=(row["path"],), limit=1)):
                raise DirectoryError("notAllowedOnNonLeaf", f"{dn} has child objects; delete them first")
            t.delete(self.db, "objects", (row["guid"],))
            self._index(t, row["guid"], None)

    def rename(self, dn: str, new_rdn: str, new_parent: str | None = None) -> str:
        parent = dnmod.parent(dn) if new_parent is None else new_parent
        new_dn = new_rdn + ("," + parent if parent else "")
        dnmod.split(new_dn)
        with self.sg.begin() as t:
            row = self._row(t, dn)
            if row is None:
                raise DirectoryError("noSuchObject", f"{dn} does not exist")
            if self._row(t, new_dn) is not None:
                raise DirectoryError("entryAlreadyExists", f"{new_dn} already exists")
            if parent and self._row(t, parent) is None:
                raise DirectoryError("noSuchObject", f"cannot move {dn}: {parent} does not exist")
            depth = len(dnmod.split(dn))
            new_parts = dnmod.split(new_dn)
            for r in [row, *self._subtree_rows(t, row["path"], include_base=False)]:
                parts = dnmod.split(str(r["dn"]))
                target = dnmod.join(parts[: len(parts) - depth] + new_parts)
                attrs = codec.decode(r["attrs"])
                if r is row:  # the naming attribute and name follow the new RDN
                    a, v = new_parts[0]
                    for key in list(attrs):
                        if key.lower() in (a.lower(), "name"):
                            attrs[key] = [v]
                t.delete(self.db, "objects", (r["guid"],))
                self._put(t, r["guid"], target, attrs)
        return new_dn

    def get(self, dn: str) -> Entry | None:
        with self.sg.reader() as r:
            rows = list(r.scan(self.db, "objects", index="by_path", prefix=(_path(dn),), limit=1))
        return self._entry(rows[0]) if rows else None

    def _subtree_rows(self, t: Any, base_path: str, *, include_base: bool) -> Iterator[dict[str, Any]]:
        lo = (base_path,) if include_base else (base_path + ",",)
        for row in t.scan(self.db, "objects", index="by_path", lo=lo, hi=(base_path + "-",)):
            p = row["path"]
            if p == base_path and include_base or p.startswith(base_path + ","):
                yield row

    def search(
        self, base: str, scope: Scope, flt: Filter, attrs: Sequence[str] | None = None
    ) -> Iterator[Entry]:
        base_path = _path(base)
        with self.sg.reader() as r:
            if base and not list(r.scan(self.db, "objects", index="by_path", prefix=(base_path,), limit=1)):
                raise DirectoryError("noSuchObject", f"search base {base} does not exist")
            keys = plan(flt) if scope != "base" else None
            if keys is not None:
                rows: Iterator[dict[str, Any]] = self._indexed_rows(r, keys, base_path, scope)
            elif scope == "base":
                rows = r.scan(self.db, "objects", index="by_path", prefix=(base_path,))
            elif scope == "one":
                rows = r.scan(self.db, "objects", index="by_parent", prefix=(base_path,))
            else:
                rows = self._subtree_rows(r, base_path, include_base=True) if base else r.scan(self.db, "objects")
            for row in rows:
                entry = self._entry(row)
                if matches(flt, entry.attrs):
                    yield self._entry(row, attrs) if attrs is not None else entry

    def _indexed_rows(
        self, r: Any, keys: list[tuple[str, str]], base_path: str, scope: Scope
    ) -> Iterator[dict[str, Any]]:
        """The objects the index names for ``keys``, in scope, each once, in path order."""
        guids: set[bytes] = set()
        for attr, key in keys:
            guids.update(x["guid"] for x in r.scan(self.db, "attrindex", prefix=(attr, key)))
        rows = []
        for g in guids:
            row = r.get(self.db, "objects", (g,))
            if row is None:
                continue
            p = row["path"]
            in_scope = (
                row["parent"] == base_path if scope == "one"
                else not base_path or p == base_path or p.startswith(base_path + ",")
            )
            if in_scope:
                rows.append(row)
        return iter(sorted(rows, key=lambda x: x["path"]))

    def close(self) -> None:
        self.sg.close()
