"""Distinguished names (RFC 4514), as Active Directory writes them: ``CN=User1,CN=Users,DC=contoso,DC=com``.

Invariants: parsing never loses information (``str(parse(x))`` is an equivalent DN);
comparison uses :func:`normalize`, which is case-insensitive and ignores spaces around the
separators, so ``CN=a, DC=b`` and ``cn=A,dc=B`` are one name, as in AD.
"""

from __future__ import annotations

import functools
import re

_SPECIAL = ',+"\\<>;'


class DnError(ValueError):
    pass


def escape_value(value: str) -> str:
    out = []
    for i, ch in enumerate(value):
        if ch in _SPECIAL or (ch == "#" and i == 0):
            out.append("\\" + ch)
        elif ch == " " and (i == 0 or i == len(value) - 1):
            out.append("\\ ")
        elif ch == "\0":
            out.append("\\00")
        else:
            out.append(ch)
    return "".join(out)


def split(dn: str) -> list[tuple[str, str]]:
    """``[(attr, value), ...]`` from the leaf to the root; values unescaped."""
    if dn.strip() == "":
        return []
    rdns: list[tuple[str, str]] = []
    i, n = 0, len(dn)
    while i < n:
        while i < n and dn[i] == " ":
            i += 1
        m = re.match(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*", dn[i:])
        if not m:
            raise DnError(f"invalid DN {dn!r}: attribute name expected at position {i}")
        attr = m.group(0)
        i += len(attr)
        while i < n and dn[i] == " ":
            i += 1
        if i >= n or dn[i] != "=":
            raise DnError(f"invalid DN {dn!r}: '=' expected at position {i}")
        i += 1
        value: list[str] = []
        raw: list[str] = []
        while i < n and dn[i] not in ",;+":
            ch = dn[i]
            if ch == "\\":
                if i + 1 >= n:
                    raise DnError(f"invalid DN {dn!r}: dangling escape at position {i}")
                nxt = dn[i + 1]
                if re.fullmatch(r"[0-9A-Fa-f]", nxt) and i + 2 < n and re.fullmatch(r"[0-9A-Fa-f]", dn[i + 2]):
                    buf = bytearray()
                    while i + 2 < n and dn[i] == "\\" and re.fullmatch(r"[0-9A-Fa-f]{2}", dn[i + 1 : i + 3]):
                        buf.append(int(dn[i + 1 : i + 3], 16))
                        i += 3
                    value.append(buf.decode("utf-8", "replace"))
                    raw.append("x")
                    continue
                value.append(nxt)
                raw.append("x")
                i += 2
                continue
            value.append(ch)
            raw.append(ch)
            i += 1
        text = "".join(value)
        # unescaped trailing spaces are not part of the value
        while raw and raw[-1] == " ":
            raw.pop()
            text = text[:-1]
        rdns.append((attr, text))
        if i < n:
            if dn[i] == "+":
                raise DnError(f"invalid DN {dn!r}: multi-valued RDNs are not supported (position {i})")
            i += 1
            if i >= n:
                raise DnError(f"invalid DN {dn!r}: name component expected after the last ','")
    return rdns


def join(rdns: list[tuple[str, str]]) -> str:
    return ",".join(f"{a}={escape_value(v)}" for a, v in rdns)


@functools.lru_cache(maxsize=4096)
def normalize(dn: str) -> str:
    """The comparison form: lower-case attribute names and values, canonical escaping.
    (A pure function of its text, called for every homeMDB comparison: cached.)"""
    return ",".join(f"{a.lower()}={escape_value(v.casefold())}" for a, v in split(dn))


def parent(dn: str) -> str:
    return join(split(dn)[1:])


def rdn(dn: str) -> tuple[str, str]:
    parts = split(dn)
    if not parts:
        raise DnError("the empty DN has no RDN")
    return parts[0]


def child(base: str, attr: str, value: str) -> str:
    return join([(attr, value), *split(base)])


def domain_to_dn(domain: str) -> str:
    """``contoso.com`` -> ``DC=contoso,DC=com``."""
    labels = [x for x in domain.strip(".").split(".") if x]
    if not labels or not all(re.fullmatch(r"[A-Za-z0-9-]+", x) for x in labels):
        raise DnError(f"invalid DNS domain name {domain!r}")
    return ",".join(f"DC={x}" for x in labels)
