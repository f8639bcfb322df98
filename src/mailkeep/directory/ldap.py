"""The LDAP backend: the directory kept by an LDAP server (OpenLDAP with ``schema/mailkeep.ldif``).

``LdapBackend(url, bind_dn, password, base_dn=...)`` implements :class:`~.backend.Backend`
over ldap3, with the same results as the embedded backend:

- Values come back in the syntax's Python type (``int`` for integers, ``bytes`` for GUIDs and
  SIDs, ``str`` otherwise); attribute names in schema.py's spelling; ``distinguishedName`` is
  made from the entry's DN (it is never stored, so a rename cannot leave it stale). OpenLDAP
  writes DNs with its own attribute type spelling (``cn=User1,cn=Users,dc=contoso,dc=com``);
  the backend hands them out as AD writes them (``CN=User1,CN=Users,DC=contoso,DC=com``).
- Modify checks the change on the entry it has just read with the same rules as the
  embedded backend (:func:`~.backend.apply_changes`: single-valued attributes, which the
  OpenLDAP core schema does not mark for cn, sn, mail..., value comparison by equality rule),
  then sends the change itself, so the server applies it atomically; every server refusal is
  a :class:`~.backend.DirectoryError` with the LDAP result name.
- Object classes: RFC 4519's ``person`` requires ``sn``, AD's does not. An entry that is an AD
  ``user``, ``contact`` or ``computer`` is stored with ``mailkeepPerson`` and
  ``mailkeepOrganizationalPerson`` in place of ``person`` and ``organizationalPerson``, and
  every entry carries the auxiliary class ``mailkeepObject`` (any Mailkeep attribute on any
  structural class). Both are translated back, and filters on objectClass are translated
  too, so callers see AD's classes.

Search: the filter is evaluated in two steps. The server gets a translation of it that
matches a superset of the entries the filter matches (:func:`server_filter`), built with
``filters.to_string``; then every returned entry is checked with ``filters.matches``, the
evaluator the embedded backend uses, so both backends return the same entries. The
translation keeps what OpenLDAP evaluates as Mailkeep does (presence, integer =, >= and <=,
binary and boolean equality) and widens the rest:

- the bitwise matching rules ``1.2.840.113556.1.4.803``/``804`` (AD's; OpenLDAP has no such
  rules) become ``(attr=*)`` and are applied client-side;
- ``objectCategory=user`` also asks for DN-shaped categories (``CN=Person,CN=Schema,...``),
  which ``filters`` maps to class names as AD does;
- string equality and substrings go to the server when the value is ASCII and neither a
  number nor a DN (``filters`` compares those numerically or as normalized DNs), else
  ``(attr=*)``; DN-valued attributes (homeMDB) use the server's distinguishedNameMatch;
- under a NOT, anything the server might match differently becomes "match nothing" inside
  the NOT (so the NOT matches everything and the client decides);
- an attribute schema.py does not know is only tested for presence.

Results are read in pages (Simple Paged Results, ``page_size`` entries at a time) on a
connection of their own, so a caller may use the backend while iterating over a search.
Connections are pooled and each is used by one thread at a time.
"""

from __future__ import annotations

import contextlib
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException, LDAPInvalidDnError

from mailkeep.directory import dn as dnmod
from mailkeep.directory import filters, schema
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

SCHEMA_FILE = Path(__file__).resolve().parent / "schema" / "mailkeep.ldif"  # load it into cn=config
PAGED_RESULTS_OID = "1.2.840.113556.1.4.319"
AUXILIARY_CLASS = "mailkeepObject"
# AD class name -> the class OpenLDAP stores for it on AD person entries (see mailkeep.ldif)
PERSON_CLASSES = {"person": "mailkeepPerson", "organizationalperson": "mailkeepOrganizationalPerson"}
STORED_PERSON_CLASSES = {"mailkeepperson": "person", "mailkeeporganizationalperson": "organizationalPerson"}
AD_PERSON_SUBCLASSES = {"user", "contact", "computer"}
# attribute types AD writes in upper case in DNs (RFC 4514's short names)
AD_UPPER_TYPES = {"cn", "ou", "dc", "o", "l", "st", "c", "street", "uid"}
SCOPES = {"base": ldap3.BASE, "one": ldap3.LEVEL, "subtree": ldap3.SUBTREE}
MAX_IDLE = 4

RESULT_NAMES = {
    1: "operationsError", 2: "protocolError", 3: "timeLimitExceeded", 4: "sizeLimitExceeded",
    7: "authMethodNotSupported", 8: "strongerAuthRequired", 10: "referral", 11: "adminLimitExceeded",
    12: "unavailableCriticalExtension", 13: "confidentialityRequired", 16: "noSuchAttribute",
    17: "undefinedAttributeType", 18: "inappropriateMatching", 19: "constraintViolation",
    20: "attributeOrValueExists", 21: "invalidAttributeSyntax", 32: "noSuchObject", 33: "aliasProblem",
    34: "invalidDNSyntax", 36: "aliasDereferencingProblem", 48: "inappropriateAuthentication",
    49: "invalidCredentials", 50: "insufficientAccessRights", 51: "busy", 52: "unavailable",
    53: "unwillingToPerform", 54: "loopDetect", 64: "namingViolation", 65: "objectClassViolation",
    66: "notAllowedOnNonLeaf", 67: "notAllowedOnRDN", 68: "entryAlreadyExists",
    69: "objectClassModsProhibited", 71: "affectsMultipleDSAs", 80: "other",
}

_DECIMAL_RE = re.compile(r"-?[0-9]{1,4000}")
_TRUE = filters.Present("objectClass")
_FALSE = filters.Not(_TRUE)


# -- values and names ----------------------------------------------------------------------------

def ad_dn(text: str) -> str:
    """``cn=User1,cn=Users,dc=contoso,dc=com`` -> ``CN=User1,CN=Users,DC=contoso,DC=com``."""
    try:
        parts = dnmod.split(text)
    except dnmod.DnError:
        return text
    return dnmod.join([(a.upper() if a.lower() in AD_UPPER_TYPES else a, v) for a, v in parts])


def wire_dn(text: str) -> str:
    """A DN as sent to the server: parsed and re-joined, so that spaces after the commas and
    other escaping styles dn.py accepts (and ldap3 may not) reach it in RFC 4514 form."""
    return dnmod.join(dnmod.split(text))


def _encode(value: Value) -> bytes:
    if isinstance(value, bytes):
        return value
    return str(value).encode("utf-8")


def _decode(name: str, raw: bytes) -> Value:
    try:
        value = schema.to_python(name, raw)
    except (ValueError, UnicodeDecodeError):
        return raw  # an attribute schema.py does not know, with binary values
    if isinstance(value, str) and schema.attribute(name).syntax == schema.DN:
        return ad_dn(value)
    return value


def _is_ad_person(classes: Sequence[Value]) -> bool:
    return any(str(c).lower() in AD_PERSON_SUBCLASSES for c in classes)


def stored_classes(classes: Sequence[Value]) -> list[Value]:
    """The objectClass values written to OpenLDAP for an entry with AD's ``classes``."""
    person = _is_ad_person(classes)
    out: list[Value] = [PERSON_CLASSES.get(str(c).lower(), str(c)) if person else c for c in classes]
    if not any(str(c).lower() == AUXILIARY_CLASS.lower() for c in out):
        out.append(AUXILIARY_CLASS)
    return out


def ad_classes(classes: Sequence[Value]) -> list[Value]:
    """AD's objectClass values for those stored in OpenLDAP."""
    return [
        STORED_PERSON_CLASSES.get(str(c).lower(), c) for c in classes if str(c).lower() != AUXILIARY_CLASS.lower()
    ]


# -- the server-side filter ----------------------------------------------------------------------

def _ascii_text(value: filters.Value | None) -> bool:
    return value is None or (isinstance(value, str) and value.isascii())


def _dn_shaped(value: str) -> bool:
    try:
        filters.normalize_dn(value)
    except ValueError:
        return False
    return True


def _decimal(value: filters.Value) -> int | None:
    """The integer a decimal assertion value names, as filters reads it (``-?[0-9]+``)."""
    if isinstance(value, str) and _DECIMAL_RE.fullmatch(value):
        return int(value)
    return None


def server_filter(f: filters.Filter) -> filters.Filter:
    """A filter OpenLDAP can evaluate that matches every entry ``f`` matches (and maybe more)."""
    return _widen(f, True)


def _widen(f: filters.Filter, positive: bool) -> filters.Filter:
    """``positive``: a filter whose TRUE set contains f's. Not ``positive`` (under a NOT): a
    filter whose FALSE set contains f's, so that the NOT of it contains the NOT of f."""
    if isinstance(f, filters.And | filters.Or):
        items = [_widen(x, positive) for x in f.items]
        absorbing, neutral = (_FALSE, _TRUE) if isinstance(f, filters.And) else (_TRUE, _FALSE)
        if absorbing in items:
            return absorbing
        items = [x for x in items if x != neutral]
        if not items:
            return neutral
        if len(items) == 1:
            return items[0]
        return filters.And(tuple(items)) if isinstance(f, filters.And) else filters.Or(tuple(items))
    if isinstance(f, filters.Not):
        inner = _widen(f.item, not positive)
        if inner == _TRUE:
            return _FALSE
        if inner == _FALSE:
            return _TRUE
        return filters.Not(inner)
    exact = _exact(f)
    if exact is not None:
        return exact
    if not positive:
        return _FALSE
    return _superset(f)


def _known(attr: str) -> schema.AttributeType | None:
    return schema.ATTRIBUTES.get(attr.lower())


def _exact(f: filters.Filter) -> filters.Filter | None:
    """A server filter that is TRUE and FALSE exactly where ``f`` is, or None."""
    attr = getattr(f, "attr", None)
    a = _known(attr) if isinstance(attr, str) else None
    if a is None:
        return None
    name = a.name.lower()
    if isinstance(f, filters.Present):
        if name in ("objectclass", "distinguishedname"):
            return _TRUE  # every entry has both
        if name == "name":
            return None  # OpenLDAP's name is the supertype of cn, sn, ou...: (name=*) matches those too
        return filters.Present(a.name)
    if isinstance(f, filters.Equal | filters.GreaterOrEqual | filters.LessOrEqual):
        if a.syntax == schema.INTEGER:
            number = _decimal(f.value)
            if number is None:
                return _FALSE  # Undefined or FALSE for Mailkeep too, never TRUE
            return type(f)(a.name, str(number))
        if isinstance(f, filters.Equal) and a.syntax == schema.BINARY:
            return filters.Equal(a.name, f.value)
        if isinstance(f, filters.Equal) and isinstance(f.value, bytes):
            return _FALSE  # not UTF-8: equal to no text value
        if isinstance(f, filters.Equal) and a.syntax == schema.BOOLEAN:
            text = str(f.value).upper()
            return filters.Equal(a.name, text) if text in ("TRUE", "FALSE") else _FALSE
    return None


def _superset(f: filters.Filter) -> filters.Filter:
    """A server filter TRUE wherever ``f`` is TRUE (``f`` is not exact)."""
    attr = getattr(f, "attr", None)
    a = _known(attr) if isinstance(attr, str) else None
    if isinstance(f, filters.Extensible) and f.dn_attrs:
        return _TRUE  # the entry's DN takes part
    if a is None:
        simple = isinstance(f, filters.Present | filters.Equal | filters.Substring)
        if simple and isinstance(attr, str) and ";" not in attr:
            return filters.Present(attr)  # an attribute Mailkeep does not know: only its presence
        return _TRUE
    name = a.name.lower()
    present = _TRUE if name in ("objectclass", "distinguishedname") else filters.Present(a.name)
    if isinstance(f, filters.Equal) and isinstance(f.value, str) and f.value.isascii():
        value = f.value
        if name == "distinguishedname":
            return filters.Equal("entryDN", value) if _dn_shaped(value) else _TRUE
        if name == "objectclass":
            stored = PERSON_CLASSES.get(value.lower())
            if stored is None:
                return f
            return filters.Or((filters.Equal("objectClass", value), filters.Equal("objectClass", stored)))
        if a.syntax == schema.DN:
            return filters.Equal(a.name, value) if _dn_shaped(value) else _FALSE
        if a.syntax == schema.STRING and name != "passwordhash":
            if _decimal(value) is not None or _dn_shaped(value):
                return present  # Mailkeep compares these as numbers or normalized DNs
            if name == "objectcategory":  # a stored CN=Person,CN=Schema,... matches objectCategory=user
                return filters.Or((filters.Equal(a.name, value), filters.Substring(a.name, None, ("=",), None)))
            return filters.Equal(a.name, value)
    if (
        isinstance(f, filters.Substring) and a.syntax == schema.STRING and name not in ("passwordhash", "objectclass")
        and all(_ascii_text(p) for p in (f.initial, *f.any, f.final))
    ):
        return f
    return present


def _filter_attrs(f: filters.Filter) -> set[str] | None:
    """The attributes ``matches(f, ...)`` reads; None if it may read every attribute."""
    if isinstance(f, filters.And | filters.Or):
        out: set[str] = set()
        for item in f.items:
            sub = _filter_attrs(item)
            if sub is None:
                return None
            out |= sub
        return out
    if isinstance(f, filters.Not):
        return _filter_attrs(f.item)
    if isinstance(f, filters.Extensible) and (f.attr is None or f.dn_attrs):
        return None
    attr = getattr(f, "attr", None)
    return {attr.split(";", 1)[0]} if isinstance(attr, str) else set()


# -- the backend ---------------------------------------------------------------------------------

class LdapBackend:
    """Mailkeep's directory on an LDAP server below ``base_dn`` (default: its first naming context)."""

    def __init__(
        self, url: str, bind_dn: str, password: str, *, base_dn: str | None = None,
        page_size: int = 500, timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.bind_dn = bind_dn
        self._password = password
        self.page_size = page_size
        self.timeout = timeout
        self._server = ldap3.Server(self.url, get_info=ldap3.NONE, connect_timeout=max(1, int(min(timeout, 10))))
        self._idle: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        with self._connection() as conn:  # fails now, with a clear message, if the server is unusable
            self.base_dn = base_dn or self._naming_context(conn)

    # -- connections -----------------------------------------------------------------------------
    def _open(self) -> Any:
        conn = ldap3.Connection(
            self._server, user=self.bind_dn, password=self._password, client_strategy=ldap3.SYNC,
            raise_exceptions=False, auto_referrals=False, return_empty_attributes=False,
            receive_timeout=max(1, int(self.timeout)), read_only=False,
        )
        try:
            ok = conn.bind()
        except LDAPException as e:
            raise DirectoryError(
                "unavailable", f"cannot reach the LDAP server at {self.url}: {e}; check that it runs and the URL"
            ) from e
        if not ok:
            result = conn.result or {}
            name = RESULT_NAMES.get(result.get("result", 80), str(result.get("description", "other")))
            raise DirectoryError(
                name, f"cannot bind to {self.url} as {self.bind_dn}: {result.get('message') or name}; "
                "check the bind DN and its password",
            )
        return conn

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        if self._closed:
            raise DirectoryError("unavailable", f"the LDAP backend for {self.url} is closed")
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._open()
        broken = False
        try:
            yield conn
        except LDAPCommunicationError as e:  # the connection broke: drop it, the next call opens another
            broken = True
            raise DirectoryError(
                "unavailable", f"lost the connection to the LDAP server at {self.url}: {e}; retry"
            ) from e
        except LDAPInvalidDnError as e:
            raise DirectoryError("invalidDNSyntax", f"the LDAP client refused a DN: {e}") from e
        except LDAPException as e:
            broken = True
            raise DirectoryError("other", f"LDAP request to {self.url} failed: {e}") from e
        finally:
            keep = False
            if not broken and not self._closed:
                with self._lock:
                    if len(self._idle) < MAX_IDLE:
                        self._idle.append(conn)
                        keep = True
            if not keep:
                with contextlib.suppress(Exception):
                    conn.unbind()

    def _naming_context(self, conn: Any) -> str:
        conn.search("", "(objectClass=*)", ldap3.BASE, attributes=["namingContexts"])
        for e in conn.response or []:
            for raw in e.get("raw_attributes", {}).get("namingContexts", []):
                return ad_dn(raw.decode("utf-8"))
        raise DirectoryError(
            "unwillingToPerform", f"the LDAP server at {self.url} names no naming context; pass base_dn"
        )

    @staticmethod
    def _fail(conn: Any, op: str, dn: str, messages: Mapping[str, str] | None = None) -> DirectoryError:
        result = conn.result or {}
        name = RESULT_NAMES.get(result.get("result", 80), str(result.get("description") or "other"))
        text = (messages or {}).get(name)
        if text is None:
            detail = result.get("message") or name
            text = f"{op} {dn}: {detail}"
            if name == "objectClassViolation":
                text += " (the object classes and attributes must fit the schema; see schema/mailkeep.ldif)"
            elif name == "sizeLimitExceeded":
                text += " (give the bind DN unlimited paged searches, e.g. olcLimits: dn.exact=... size=unlimited)"
        return DirectoryError(name, text)

    # -- reading ---------------------------------------------------------------------------------
    def _entry(self, raw_dn: str, raw: Mapping[str, Sequence[bytes]]) -> Entry:
        dn = ad_dn(raw_dn)
        attrs: dict[str, list[Value]] = {}
        for name, values in raw.items():
            if not values:
                continue
            canon = schema.canonical_name(name)
            typed = [_decode(canon, v) for v in values]
            if canon.lower() == "objectclass":
                typed = ad_classes(typed)
            attrs.setdefault(canon, []).extend(typed)
        attrs["distinguishedName"] = [dn]
        return Entry(dn, attrs)

    @staticmethod
    def _project(entry: Entry, attrs: Sequence[str] | None) -> Entry:
        if attrs is None:
            return entry
        wanted = {a.lower() for a in attrs}
        if "*" in wanted:
            return entry
        return Entry(entry.dn, {k: v for k, v in entry.attrs.items() if k.lower() in wanted})

    def get(self, dn: str) -> Entry | None:
        if not dnmod.split(dn):  # validates, as the embedded backend does
            return None
        with self._connection() as conn:
            conn.search(wire_dn(dn), "(objectClass=*)", ldap3.BASE, attributes=["*"])
            if conn.result["result"] == 32:
                return None
            if conn.result["result"] != 0:
                raise self._fail(conn, "cannot read", dn)
            for e in conn.response or []:
                if e.get("type") == "searchResEntry":
                    return self._entry(e["dn"], e["raw_attributes"])
        return None

    def search(
        self, base: str, scope: Scope, flt: filters.Filter, attrs: Sequence[str] | None = None
    ) -> Iterator[Entry]:
        dnmod.split(base)
        if scope not in SCOPES:
            raise DirectoryError("protocolError", f"unknown search scope {scope!r} (base, one or subtree)")
        return self._search(base, scope, flt, attrs)

    def _search(self, base: str, scope: Scope, f: filters.Filter, attrs: Sequence[str] | None) -> Iterator[Entry]:
        if not base.strip():  # the root, as the embedded backend has it: a subtree search is all entries
            if scope != "subtree":
                return
            base = self.base_dn
        needed = _filter_attrs(f)
        if attrs is None or needed is None or "*" in attrs:
            fetch = ["*"]
        else:
            names = {schema.canonical_name(a) for a in (*attrs, *needed)} - {"distinguishedName"}
            fetch = sorted(names) or ["1.1"]
        text = filters.to_string(server_filter(f))
        wire = wire_dn(base)
        with self._connection() as conn:
            cookie: bytes | None = None
            try:
                while True:
                    conn.search(wire, text, SCOPES[scope], dereference_aliases=ldap3.DEREF_NEVER,
                                attributes=fetch, paged_size=self.page_size, paged_cookie=cookie)
                    if conn.result["result"] != 0:
                        cookie = None
                        raise self._fail(conn, "cannot search", base, {
                            "noSuchObject": f"search base {base} does not exist",
                        })
                    page = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
                    control = (conn.result.get("controls") or {}).get(PAGED_RESULTS_OID) or {}
                    cookie = (control.get("value") or {}).get("cookie") or None
                    for e in page:
                        entry = self._entry(e["dn"], e["raw_attributes"])
                        if filters.matches(f, entry.attrs):
                            yield self._project(entry, attrs)
                    if not cookie:
                        break
            finally:
                if cookie:  # abandoned part-way: tell the server to drop the paged search
                    with contextlib.suppress(Exception):
                        conn.search(wire, text, SCOPES[scope], attributes=["1.1"], paged_size=0, paged_cookie=cookie)

    # -- writing ---------------------------------------------------------------------------------
    def add(self, dn: str, attrs: Mapping[str, Sequence[Value]]) -> None:
        clean = clean_attrs(attrs)
        dnmod.split(dn)
        clean.pop("distinguishedName", None)
        guid = (clean.get("objectGUID") or [uuid.uuid4().bytes_le])[0]
        clean["objectGUID"] = [guid]
        clean["objectClass"] = stored_classes(clean.get("objectClass", []))
        payload = {name: [_encode(v) for v in values] for name, values in clean.items()}
        parent = dnmod.parent(dn)
        with self._connection() as conn:
            conn.search(self.base_dn, filters.to_string(filters.Equal("objectGUID", _encode(guid))), ldap3.SUBTREE,
                        attributes=["1.1"], size_limit=1)
            if any(e.get("type") == "searchResEntry" for e in conn.response or []):
                raise DirectoryError("entryAlreadyExists", f"objectGUID of {dn} is already in use")
            if not conn.add(wire_dn(dn), attributes=payload):
                raise self._fail(conn, "cannot add", dn, {
                    "entryAlreadyExists": f"{dn} already exists",
                    "noSuchObject": f"cannot add {dn}: its parent {parent} does not exist; add it first",
                    "unwillingToPerform": f"cannot add {dn}: it is outside the server's naming context "
                                          f"{self.base_dn}",
                })

    def modify(self, dn: str, changes: Sequence[Change]) -> None:
        for ch in changes:
            if ch.attr.lower() in ("objectguid", "distinguishedname"):
                raise DirectoryError("constraintViolation", f"{ch.attr} of {dn} cannot be changed")
        current = self.get(dn)
        if current is None:
            raise DirectoryError("noSuchObject", f"{dn} does not exist")
        before = {k: v for k, v in current.attrs.items() if k != "distinguishedName"}
        after = apply_changes(before, changes, dn)  # Mailkeep's rules, the embedded backend's errors
        check_rdn_kept(current.dn, before, after)
        request: dict[str, list[tuple[Any, list[bytes]]]] = {}
        ops = {"add": ldap3.MODIFY_ADD, "replace": ldap3.MODIFY_REPLACE, "delete": ldap3.MODIFY_DELETE}
        classes_changed = False
        for ch in changes:
            canon = schema.canonical_name(ch.attr)
            if canon.lower() == "objectclass":
                classes_changed = True
                continue
            values = [_encode(schema.to_python(canon, v)) for v in ch.values]
            request.setdefault(canon, []).append((ops[ch.op], values))
        if classes_changed:  # the whole list, as stored (person classes and mailkeepObject)
            new = stored_classes(after.get("objectClass", []))
            request["objectClass"] = [(ldap3.MODIFY_REPLACE, [_encode(v) for v in new])]
        if not request:
            return
        with self._connection() as conn:
            if not conn.modify(wire_dn(dn), request):
                raise self._fail(conn, "cannot modify", dn, {"noSuchObject": f"{dn} does not exist"})

    def delete(self, dn: str) -> None:
        dnmod.split(dn)
        with self._connection() as conn:
            if not conn.delete(wire_dn(dn)):
                raise self._fail(conn, "cannot delete", dn, {
                    "noSuchObject": f"{dn} does not exist",
                    "notAllowedOnNonLeaf": f"{dn} has child objects; delete them first",
                })

    def rename(self, dn: str, new_rdn: str, new_parent: str | None = None) -> str:
        parent = dnmod.parent(dn) if new_parent is None else new_parent
        new_dn = new_rdn + ("," + parent if parent else "")
        dnmod.split(dn)
        dnmod.split(new_dn)
        with self._connection() as conn:
            superior = None if new_parent is None else wire_dn(new_parent)
            if not conn.modify_dn(wire_dn(dn), wire_dn(new_rdn), delete_old_dn=True, new_superior=superior):
                missing = f"{dn} does not exist"
                if conn.result.get("result") == 32 and self.get(dn) is not None:
                    missing = f"cannot move {dn}: {parent} does not exist"
                raise self._fail(conn, "cannot rename", dn, {
                    "noSuchObject": missing,
                    "entryAlreadyExists": f"{new_dn} already exists",
                })
            # AD's name follows the RDN (the naming attribute itself the server changes)
            conn.search(wire_dn(new_dn), "(name=*)", ldap3.BASE, attributes=["name"])
            value = dnmod.rdn(new_dn)[1]
            stale = [
                e for e in conn.response or []
                if e.get("type") == "searchResEntry" and e.get("raw_attributes", {}).get("name", [])
                not in ([], [value.encode("utf-8")])
            ]
            if stale and not conn.modify(wire_dn(new_dn), {"name": [(ldap3.MODIFY_REPLACE, [value.encode("utf-8")])]}):
                raise self._fail(conn, "cannot set name of", new_dn)
        return new_dn

    def close(self) -> None:
        self._closed = True
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.unbind()
