"""LDIFDE's export and import, over the directory API (the guide's re-home procedure).

Invariants: export writes LDIFDE's format (``changetype: add`` records) and streams entry by
entry; import applies records in file order, one at a time, and stops at the first failure,
reporting exactly which records were applied and which one failed (its DN and line) — a
failed import never leaves the reader guessing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TextIO

from mailkeep.directory import ldif
from mailkeep.directory.backend import Change, DirectoryError, Scope
from mailkeep.directory.directory import Directory

# LDIFDE leaves these out of an export unless -l names them (they cannot be imported back).
NOT_EXPORTED = {"objectguid", "objectsid", "passwordhash", "distinguishedname"}


def export(
    d: Directory, out: TextIO, *, base: str | None = None, flt: str = "(objectClass=*)",
    attrs: Sequence[str] | None = None, scope: Scope = "subtree",
) -> int:
    """Write matching entries; returns how many."""
    n = 0
    for e in d.search(base or d.domain_dn, flt, scope, attrs):
        values = {k: v for k, v in e.attrs.items() if attrs is not None or k.lower() not in NOT_EXPORTED}
        if attrs is not None:
            wanted = {a.lower() for a in attrs}
            values = {k: v for k, v in values.items() if k.lower() in wanted}
        ldif.write_entry(out, e.dn, {k: [str(x) if isinstance(x, int) else x for x in v] for k, v in values.items()})
        n += 1
    return n


@dataclass
class ImportReport:
    applied: list[tuple[int, str, str]] = field(default_factory=list)  # (line, changetype, dn)
    failed: tuple[int, str, str] | None = None  # (line, dn, error)

    @property
    def ok(self) -> bool:
        return self.failed is None


def import_ldif(d: Directory, source: str | TextIO) -> ImportReport:
    rep = ImportReport()
    try:
        for rec in ldif.parse(source):
            try:
                if isinstance(rec, ldif.AddRecord):
                    d.add(rec.dn, rec.attrs)
                    kind = "add"
                elif isinstance(rec, ldif.ModifyRecord):
                    d.modify(rec.dn, [Change(c.op, c.attr, tuple(c.values)) for c in rec.changes])
                    kind = "modify"
                elif isinstance(rec, ldif.DeleteRecord):
                    d.delete(rec.dn)
                    kind = "delete"
                else:
                    d.rename(rec.dn, rec.newrdn, rec.newsuperior)
                    kind = "modrdn"
            except (DirectoryError, ValueError) as e:
                rep.failed = (rec.line, rec.dn, str(e))
                return rep
            rep.applied.append((rec.line, kind, rec.dn))
    except ldif.LdifError as e:
        rep.failed = (e.line, "", str(e))
    except UnicodeDecodeError as e:  # a stream that turns out not to be UTF-8 part-way
        after = rep.applied[-1][0] + 1 if rep.applied else 1
        rep.failed = (after, "", f"the file is not UTF-8 text after line {after}: {e.reason}")
    return rep
