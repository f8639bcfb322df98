"""LDAP search filters (RFC 4515) as Active Directory accepts them: parse, print, evaluate.

A filter is a small tree of frozen dataclasses (:class:`And`, :class:`Or`, :class:`Not`,
:class:`Equal`, :class:`Present`, :class:`Substring`, :class:`GreaterOrEqual`,
:class:`LessOrEqual`, :class:`Approx`, :class:`Extensible`). :func:`parse` reads the string form,
:func:`to_string` writes the canonical string form, :func:`matches` evaluates a filter against an
entry (a mapping of attribute name to values).

Invariants:

- Parsing never executes anything: it is a bounded recursive-descent reader over the text (no
  ``eval``, no regular expression that can backtrack badly); it accepts at most
  :data:`MAX_LENGTH` bytes (UTF-8) of text and at most :data:`MAX_DEPTH` levels of nesting.
- Every parse error is a :class:`FilterError` carrying ``.position`` (0-based index into the
  text) and a message naming the position and what was expected there:
  ``expected ')' at position 17``.
- Every tree round-trips: ``parse(to_string(f)) == f`` for every ``f`` that :func:`parse`
  returns, and for every tree built from the constructors (they reject what the text form
  cannot express: an empty ``&``/``|``, a bad attribute name, a tree deeper than
  :data:`MAX_DEPTH`), with two exceptions: a ``bytes`` value that is valid UTF-8 comes back as
  the equal ``str``, and output longer than :data:`MAX_LENGTH` is refused by the parser.
- Evaluation never raises on any entry: attribute names are looked up case-insensitively,
  values of unexpected types are ignored, and a comparison that cannot be made (an unknown
  matching rule, a non-integer compared with an integer) is Undefined, never an exception.

Grammar accepted: all of RFC 4515 (``\\xx`` escapes, ``*`` in substrings, extensible matches
with ``:dn`` and ``:rule:=``, attribute descriptions that are names or numeric OIDs with
options such as ``;binary``), plus three things Active Directory accepts and the Exchange
Server 2003 Disaster Recovery guide writes:

- a bare item without outer parentheses: ``objectClass=user``;
- an item (or any filter) wrapped in extra parentheses: ``((msExchMasterAccountSid=*))``;
- ``!`` followed directly by an item: ``(!userAccountControl:1.2.840.113556.1.4.803:=2)``.

No whitespace is allowed except inside values, where it is kept. A value is ``str``; it is
``bytes`` only when ``\\xx`` escapes in it do not form valid UTF-8 (``\\c3\\a9`` gives ``"é"``,
``\\ff`` gives ``b"\\xff"``). ``(a=*)`` is :class:`Present`; ``(a=\\2a)`` is an :class:`Equal` of
``"*"``. Nesting depth counts every parenthesised filter, redundant parentheses included, and
an item written directly after ``!``.

Evaluation semantics (what AD does for the attributes Mailkeep uses):

- Three-valued logic exactly as RFC 4511 4.5.1.7: each item is TRUE, FALSE or Undefined; ``&``
  is FALSE if any part is FALSE, else Undefined if any part is, else TRUE; ``|`` dually;
  ``!Undefined`` is Undefined. :func:`matches` returns True only for TRUE, so a filter that is
  Undefined, and its negation, both fail to match.
- An item over an attribute the entry lacks is FALSE (there is no schema to call it unknown).
  An attribute description with options (``userCertificate;binary``) is looked up as written,
  and, if the entry has no such key, as the bare attribute type.
- Strings compare case-insensitively (``str.casefold``); bytes compare exactly (GUIDs, SIDs); a
  str compared with bytes compares its UTF-8 encoding exactly. Equality and ordering are
  numeric when the stored value is an ``int`` (then a non-integer assertion is Undefined) or
  when both sides are decimal integer strings. Equality of two DN-shaped strings compares
  their :func:`normalize_dn` forms. ``bool`` values count as ``"TRUE"``/``"FALSE"``.
- ``objectCategory`` equality with a class name (``objectCategory=user``) against a stored DN
  (``CN=Person,CN=Schema,...``) does what AD does: it compares the class's category (``user``,
  ``contact`` and ``inetOrgPerson`` map to ``Person``; other names compare without hyphens,
  so ``msExchPrivateMDB`` is ``CN=ms-Exch-Private-MDB``) with the first RDN of the stored DN.
- Approximate match (``~=``) is equality that also ignores runs of whitespace.
- Substrings match case-insensitively (exactly for bytes).
- Extensible match: no rule means the attribute's equality; ``1.2.840.113556.1.4.803``
  (LDAP_MATCHING_RULE_BIT_AND: ``value & f == f``) and ``1.2.840.113556.1.4.804``
  (LDAP_MATCHING_RULE_BIT_OR: ``value & f != 0``) on integer values; ``caseIgnoreMatch``
  (``2.5.13.2``), ``caseExactMatch`` (``2.5.13.5``), ``distinguishedNameMatch`` (``2.5.13.1``),
  ``integerMatch`` (``2.5.13.14``), ``octetStringMatch`` (``2.5.13.17``). Any other rule
  (including AD's ``1.2.840.113556.1.4.1941``, which needs the whole directory) is Undefined.
  Without an attribute, the rule is tried on every value of every attribute. ``:dn`` also
  tries the RDN values of the entry's ``distinguishedName`` (or ``dn``) attribute.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import AnyStr, NoReturn, TypeAlias

__all__ = [
    "LDAP_MATCHING_RULE_BIT_AND",
    "LDAP_MATCHING_RULE_BIT_OR",
    "MAX_DEPTH",
    "MAX_LENGTH",
    "And",
    "Approx",
    "Equal",
    "Extensible",
    "Filter",
    "FilterError",
    "GreaterOrEqual",
    "LessOrEqual",
    "Not",
    "Or",
    "Present",
    "Substring",
    "Value",
    "matches",
    "normalize_dn",
    "parse",
    "to_string",
]

MAX_DEPTH = 100
MAX_LENGTH = 64 * 1024  # bytes of UTF-8 filter text
LDAP_MATCHING_RULE_BIT_AND = "1.2.840.113556.1.4.803"
LDAP_MATCHING_RULE_BIT_OR = "1.2.840.113556.1.4.804"

Value: TypeAlias = str | bytes
EntryValue: TypeAlias = str | bytes | int


class FilterError(ValueError):
    """A filter that does not parse; ``position`` is the 0-based index into the filter text."""

    def __init__(self, expected: str, position: int) -> None:
        super().__init__(f"expected {expected} at position {position}")
        self.expected = expected
        self.position = position

    def __reduce__(self) -> tuple[type[FilterError], tuple[str, int]]:
        return (FilterError, (self.expected, self.position))


# -- the tree -----------------------------------------------------------------------------------

_DESCR = r"[A-Za-z][A-Za-z0-9-]*"
_NUMERICOID = r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+"
_OID_RE = re.compile(rf"{_DESCR}|{_NUMERICOID}")
_ATTR_RE = re.compile(rf"(?:{_DESCR}|{_NUMERICOID})(?:;[A-Za-z0-9-]+)*")
_SURROGATE_RE = re.compile(r"[\ud800-\udfff]")


def _check_attr(attr: object) -> str:
    if not isinstance(attr, str) or _ATTR_RE.fullmatch(attr) is None:
        raise ValueError(f"invalid attribute description {attr!r}: expected a name or numeric OID, with ;options")
    return str.__str__(attr)


def _check_value(value: object) -> Value:
    if isinstance(value, bytes):
        return bytes.__bytes__(value)
    if isinstance(value, str):
        if _SURROGATE_RE.search(value) is not None:
            raise ValueError(f"filter value {value!r} contains a lone surrogate, which has no UTF-8 form")
        return str.__str__(value)
    raise TypeError(f"a filter value is str or bytes, not {type(value).__name__}")


def _check_items(items: object, name: str) -> tuple[Filter, ...]:
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise TypeError(f"{name} takes an iterable of filters, not {type(items).__name__}")
    result = tuple(items)
    if not result:
        raise ValueError(f"{name} needs at least one filter (RFC 4515 has no empty '&' or '|')")
    for item in result:
        _check_node(item)
    return result


def _check_node(item: object) -> None:
    if not isinstance(item, _NODE_TYPES):
        raise TypeError(f"expected a filter node, not {type(item).__name__}")


def _depth_of(node: Filter) -> int:
    return node._depth if isinstance(node, And | Or | Not) else 1


def _set_depth(node: _Composite | Not, children: tuple[Filter, ...]) -> None:
    depth = 1 + max(_depth_of(c) for c in children)
    if depth > MAX_DEPTH:
        raise ValueError(f"filter nested {depth} levels deep; at most {MAX_DEPTH} are allowed")
    object.__setattr__(node, "_depth", depth)


@dataclass(frozen=True, slots=True)
class _Composite:
    """A list of at least one filter (& and |): the checks they share."""

    items: tuple[Filter, ...]
    _depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        items = _check_items(self.items, type(self).__name__)
        object.__setattr__(self, "items", items)
        _set_depth(self, items)


@dataclass(frozen=True, slots=True)
class And(_Composite):
    """``(&(a)(b)...)``: at least one filter."""


@dataclass(frozen=True, slots=True)
class Or(_Composite):
    """``(|(a)(b)...)``: at least one filter."""


@dataclass(frozen=True, slots=True)
class Not:
    """``(!(a))``."""

    item: Filter
    _depth: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _check_node(self.item)
        _set_depth(self, (self.item,))


@dataclass(frozen=True, slots=True)
class _AttrValue:
    """An attribute compared with one value (=, >=, <=, ~=): the checks they share."""

    attr: str
    value: Value

    def __post_init__(self) -> None:
        object.__setattr__(self, "attr", _check_attr(self.attr))
        object.__setattr__(self, "value", _check_value(self.value))


@dataclass(frozen=True, slots=True)
class Equal(_AttrValue):
    """``(attr=value)``."""


@dataclass(frozen=True, slots=True)
class Present:
    """``(attr=*)``: the entry has at least one value of ``attr``."""

    attr: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "attr", _check_attr(self.attr))


@dataclass(frozen=True, slots=True)
class Substring:
    """``(attr=initial*any1*any2*final)``.

    Normalized on construction: ``any`` is a tuple without empty pieces, an empty ``initial``
    or ``final`` is None. At least one piece must remain (``(attr=*)`` is :class:`Present`).
    """

    attr: str
    initial: Value | None = None
    any: tuple[Value, ...] = ()
    final: Value | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "attr", _check_attr(self.attr))
        initial = None if self.initial is None else _check_value(self.initial)
        final = None if self.final is None else _check_value(self.final)
        pieces: object = self.any
        if isinstance(pieces, str | bytes) or not isinstance(pieces, Iterable):
            raise TypeError(f"Substring.any takes an iterable of values, not {type(pieces).__name__}")
        middle = tuple(v for v in (_check_value(p) for p in pieces) if v)
        object.__setattr__(self, "initial", initial or None)
        object.__setattr__(self, "any", middle)
        object.__setattr__(self, "final", final or None)
        if not (initial or middle or final):
            raise ValueError("a Substring needs at least one non-empty piece; '(attr=*)' is Present(attr)")


@dataclass(frozen=True, slots=True)
class GreaterOrEqual(_AttrValue):
    """``(attr>=value)``."""


@dataclass(frozen=True, slots=True)
class LessOrEqual(_AttrValue):
    """``(attr<=value)``."""


@dataclass(frozen=True, slots=True)
class Approx(_AttrValue):
    """``(attr~=value)``."""


@dataclass(frozen=True, slots=True)
class Extensible:
    """``(attr:dn:rule:=value)``; ``attr`` or ``rule`` may be None, not both."""

    attr: str | None
    rule: str | None
    value: Value
    dn_attrs: bool = False

    def __post_init__(self) -> None:
        if self.attr is not None:
            object.__setattr__(self, "attr", _check_attr(self.attr))
        if self.rule is not None:
            if not isinstance(self.rule, str) or _OID_RE.fullmatch(self.rule) is None:
                raise ValueError(f"invalid matching rule {self.rule!r}: expected a name or numeric OID")
            if self.rule.lower() == "dn":
                raise ValueError("a matching rule named 'dn' cannot be written: ':dn' means dnAttributes")
            object.__setattr__(self, "rule", str.__str__(self.rule))
        if self.attr is None and self.rule is None:
            raise ValueError("an extensible match needs an attribute, a matching rule or both")
        if not isinstance(self.dn_attrs, bool):
            raise TypeError(f"dn_attrs is a bool, not {type(self.dn_attrs).__name__}")
        object.__setattr__(self, "value", _check_value(self.value))


Filter: TypeAlias = And | Or | Not | Equal | Present | Substring | GreaterOrEqual | LessOrEqual | Approx | Extensible
_NODE_TYPES = (And, Or, Not, Equal, Present, Substring, GreaterOrEqual, LessOrEqual, Approx, Extensible)


# -- parsing ------------------------------------------------------------------------------------

_ALPHA = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_DIGITS = frozenset("0123456789")
_KEYCHARS = _ALPHA | _DIGITS | {"-"}
_HEX = frozenset("0123456789abcdefABCDEF")
_KEYSTRING_RE = re.compile(r"[A-Za-z0-9-]*")
_DIGITS_RE = re.compile(r"[0-9]*")
_VALUE_RUN_RE = re.compile(r"[^()*\\\x00\ud800-\udfff]+")
_DNATTRS_RE = re.compile(r":[dD][nN]:")


def _scan(pattern: re.Pattern[str], text: str, pos: int) -> int:
    """The end of the (possibly empty) run of ``pattern`` at ``pos``."""
    m = pattern.match(text, pos)
    return pos if m is None else m.end()


def parse(text: str) -> Filter:
    """The filter tree for ``text``; raises :class:`FilterError` (a ValueError) if it does not parse."""
    if not isinstance(text, str):
        raise TypeError(f"a filter is parsed from str, not {type(text).__name__}")
    _check_length(text)
    return _Parser(text).parse()


def _check_length(text: str) -> None:
    if len(text) * 4 <= MAX_LENGTH:  # at most 4 UTF-8 bytes a character
        return
    total = 0
    for i, ch in enumerate(text):
        total += 1 if ch < "\x80" else 2 if ch < "\u0800" else 3 if ch < "\U00010000" else 4
        if total > MAX_LENGTH:
            raise FilterError(f"at most {MAX_LENGTH} bytes of filter text", i)


class _Parser:
    __slots__ = ("end", "pos", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.end = len(text)

    def fail(self, expected: str, position: int | None = None) -> NoReturn:
        raise FilterError(expected, self.pos if position is None else position)

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < self.end else ""

    def parse(self) -> Filter:
        if self.end == 0:
            self.fail("filter")
        if self.text[0] == "(":
            node = self.filter(0)
        else:  # AD: a bare item, "objectClass=user"
            node = self.item("'(' or attribute description")
        if self.pos != self.end:
            self.fail("end of filter")
        return node

    def enter(self, depth: int) -> int:
        depth += 1
        if depth > MAX_DEPTH:
            self.fail(f"at most {MAX_DEPTH} levels of nesting")
        return depth

    def filter(self, depth: int) -> Filter:
        """``( filtercomp )`` starting at the '(' under the cursor."""
        depth = self.enter(depth)
        self.pos += 1
        c = self.peek()
        node: Filter
        if c in ("&", "|"):
            self.pos += 1
            if self.peek() != "(":
                self.fail("'('")
            items: list[Filter] = []
            while self.peek() == "(":
                items.append(self.filter(depth))
            if self.peek() != ")":
                self.fail("'(' or ')'")
            node = And(tuple(items)) if c == "&" else Or(tuple(items))
        elif c == "!":
            self.pos += 1
            if self.peek() == "(":
                node = Not(self.filter(depth))
            else:  # AD: "!" followed directly by an item
                self.enter(depth)
                node = Not(self.item("'(' or attribute description"))
        elif c == "(":  # AD: redundant parentheses, "((msExchMasterAccountSid=*))"
            node = self.filter(depth)
        elif c in ("", ")"):
            self.fail("filter")
        else:
            node = self.item("attribute description")
        if self.peek() != ")":
            self.fail("')'")
        self.pos += 1
        return node

    def item(self, label: str) -> Filter:
        """simple / present / substring / extensible, without parentheses."""
        attr = None if self.peek() == ":" else self.attribute(label)
        c = self.peek()
        if c == ":":
            return self.extensible(attr)
        assert attr is not None  # only an extensible match may omit the attribute
        if c == "=":
            self.pos += 1
            segments = self.value(allow_star=True)
            if len(segments) == 1:
                return Equal(attr, segments[0])
            initial, middle, final = segments[0], [s for s in segments[1:-1] if s], segments[-1]
            if not (initial or middle or final):  # "*", or "**" (an empty any-piece matches anything)
                return Present(attr)
            return Substring(attr, initial or None, tuple(middle), final or None)
        if c in ("~", ">", "<"):
            self.pos += 1
            if self.peek() != "=":
                self.fail("'='")
            self.pos += 1
            value = self.value(allow_star=False)[0]
            if c == "~":
                return Approx(attr, value)
            return GreaterOrEqual(attr, value) if c == ">" else LessOrEqual(attr, value)
        self.fail("'=', '~=', '>=', '<=' or ':'")

    def attribute(self, label: str) -> str:
        start = self.pos
        c = self.peek()
        if c in _ALPHA:
            self.pos = _scan(_KEYSTRING_RE, self.text, self.pos + 1)
        elif c in _DIGITS:
            self.numericoid()
        else:
            self.fail(label)
        while self.peek() == ";":
            self.pos += 1
            if self.peek() not in _KEYCHARS:
                self.fail("attribute option")
            self.pos = _scan(_KEYSTRING_RE, self.text, self.pos)
        return self.text[start : self.pos]

    def numericoid(self) -> None:
        self.number()
        if self.peek() != ".":
            self.fail("'.'")
        while self.peek() == ".":
            self.pos += 1
            self.number()

    def number(self) -> None:
        start = self.pos
        c = self.peek()
        if c not in _DIGITS:
            self.fail("digit")
        self.pos = _scan(_DIGITS_RE, self.text, self.pos)
        if c == "0" and self.pos - start > 1:
            self.fail("a number without leading zeros", start)

    def rule(self) -> str:
        start = self.pos
        c = self.peek()
        if c in _ALPHA:
            self.pos = _scan(_KEYSTRING_RE, self.text, self.pos + 1)
        elif c in _DIGITS:
            self.numericoid()
        else:
            self.fail("matching rule")
        name = self.text[start : self.pos]
        if name.lower() == "dn":
            self.fail("matching rule other than 'dn'", start)
        return name

    def extensible(self, attr: str | None) -> Filter:
        """``attr [:dn] [:rule] := value`` with the cursor on the first ':'."""
        dn_attrs = _DNATTRS_RE.match(self.text, self.pos) is not None
        if dn_attrs:
            self.pos += 3
        rule = None
        if self.text.startswith(":=", self.pos):
            if attr is None:
                self.fail("matching rule", self.pos + 1)
        else:
            self.pos += 1
            rule = self.rule()
            if not self.text.startswith(":=", self.pos):
                self.fail("':='")
        self.pos += 2
        return Extensible(attr, rule, self.value(allow_star=False)[0], dn_attrs)

    def value(self, *, allow_star: bool) -> list[Value]:
        """The assertion value up to ')' or the end, split at unescaped '*' when allowed."""
        text, end = self.text, self.end
        segments: list[Value] = []
        parts: list[str | bytes] = []
        escaped = False
        while True:
            m = _VALUE_RUN_RE.match(text, self.pos)
            if m is not None:
                parts.append(m.group())
                self.pos = m.end()
            if self.pos >= end:
                break
            c = text[self.pos]
            if c == ")":
                break
            if c == "\\":
                for k in (1, 2):
                    if self.pos + k >= end or text[self.pos + k] not in _HEX:
                        self.fail("hex digit", self.pos + k)
                parts.append(bytes((int(text[self.pos + 1 : self.pos + 3], 16),)))
                escaped = True
                self.pos += 3
            elif c == "*" and allow_star:
                segments.append(_join_value(parts, escaped))
                parts, escaped = [], False
                self.pos += 1
            elif c in ("*", "(", "\x00"):
                self.fail(f"'\\{ord(c):02x}' instead of {c!r}")
            else:
                self.fail("a character other than a lone surrogate")
        segments.append(_join_value(parts, escaped))
        return segments


def _join_value(parts: list[str | bytes], escaped: bool) -> Value:
    if not escaped:
        return "".join(p for p in parts if isinstance(p, str))
    raw = b"".join(p.encode("utf-8") if isinstance(p, str) else p for p in parts)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw


# -- printing -----------------------------------------------------------------------------------

_SPECIAL_RE = re.compile(r"[*()\\\x00]")


def _escape(value: Value) -> str:
    if isinstance(value, bytes):
        return "".join(f"\\{b:02x}" for b in value)
    return _SPECIAL_RE.sub(lambda m: f"\\{ord(m.group()):02x}", value)


def to_string(f: Filter) -> str:
    """The canonical RFC 4515 text of ``f``: every filter parenthesised, no whitespace."""
    out: list[str] = []
    _render(f, out)
    return "".join(out)


def _render(f: Filter, out: list[str]) -> None:
    if isinstance(f, And | Or):
        out.append("(&" if isinstance(f, And) else "(|")
        for item in f.items:
            _render(item, out)
        out.append(")")
    elif isinstance(f, Not):
        out.append("(!")
        _render(f.item, out)
        out.append(")")
    elif isinstance(f, Present):
        out.append(f"({f.attr}=*)")
    elif isinstance(f, Substring):
        pieces = ["" if f.initial is None else _escape(f.initial), *map(_escape, f.any)]
        pieces.append("" if f.final is None else _escape(f.final))
        out.append(f"({f.attr}={'*'.join(pieces)})")
    elif isinstance(f, Extensible):
        dn = ":dn" if f.dn_attrs else ""
        rule = f":{f.rule}" if f.rule is not None else ""
        out.append(f"({f.attr or ''}{dn}{rule}:={_escape(f.value)})")
    else:
        op = {Equal: "=", GreaterOrEqual: ">=", LessOrEqual: "<=", Approx: "~="}[type(f)]
        out.append(f"({f.attr}{op}{_escape(f.value)})")


# -- distinguished names ------------------------------------------------------------------------

_DN_TYPE_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*")
_DN_ESCAPE = frozenset(',+"\\<>;=')


def _parse_dn(text: str) -> list[list[tuple[str, str]]] | None:
    """RDNs (each a list of (type, value)) of an ``attr=value(,attr=value)*`` string, else None.

    Lenient like AD: spaces around ',', '+' and '=' are ignored, ``\\xx`` and ``\\c`` escapes are
    decoded, unescaped trailing spaces are not part of a value.
    """
    if "=" not in text:
        return None
    rdns: list[list[tuple[str, str]]] = []
    rdn: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] == " ":
            i += 1
        m = _DN_TYPE_RE.match(text, i)
        if m is None:
            return None
        attr_type = m.group().casefold()
        i = m.end()
        while i < n and text[i] == " ":
            i += 1
        if i >= n or text[i] != "=":
            return None
        i += 1
        while i < n and text[i] == " ":
            i += 1
        buf = bytearray()
        significant = 0
        while i < n and text[i] not in ",+":
            c = text[i]
            if c == "\\":
                if i + 2 < n and text[i + 1] in _HEX and text[i + 2] in _HEX:
                    buf.append(int(text[i + 1 : i + 3], 16))
                    i += 3
                elif i + 1 < n:
                    buf += text[i + 1].encode("utf-8", "surrogatepass")
                    i += 2
                else:
                    return None
                significant = len(buf)
                continue
            buf += c.encode("utf-8", "surrogatepass")
            i += 1
            if c != " ":
                significant = len(buf)
        rdn.append((attr_type, bytes(buf[:significant]).decode("utf-8", "surrogateescape")))
        if i >= n:
            rdns.append(rdn)
            return rdns
        if text[i] == ",":
            rdns.append(rdn)
            rdn = []
        i += 1


def _dn_escape(value: str) -> str:
    out = [f"\\{c}" if c in _DN_ESCAPE else c for c in value]
    if out and out[0] in (" ", "#"):
        out[0] = "\\" + out[0]
    if out and out[-1] == " ":
        out[-1] = "\\ "
    return "".join(out)


@lru_cache(maxsize=4096)
def _dn_key(text: str) -> str | None:
    rdns = _parse_dn(text)
    if rdns is None:
        return None
    return ",".join("+".join(sorted(f"{t}={_dn_escape(v.casefold())}" for t, v in rdn)) for rdn in rdns)


def normalize_dn(text: str) -> str:
    """The comparison form of a DN: ``CN=a, CN=b`` and ``cn=A,cn=B`` both give ``cn=a,cn=b``.

    Attribute types and values are case-folded, spaces around separators dropped, escapes
    decoded and re-escaped canonically, the parts of a multi-valued RDN sorted. Raises
    ValueError if ``text`` is not ``attr=value(,attr=value)*``.
    """
    key = _dn_key(text) if isinstance(text, str) else None
    if key is None:
        raise ValueError(f"not a distinguished name: {text!r}")
    return key


# -- evaluation ---------------------------------------------------------------------------------

_Truth: TypeAlias = bool | None  # None is Undefined
_DECIMAL_RE = re.compile(r"-?[0-9]{1,4000}")  # int() refuses more than 4300 digits
_CATEGORY_ALIASES = {"user": "person", "contact": "person", "inetorgperson": "person"}


def matches(f: Filter, entry: Mapping[str, Sequence[str | bytes | int]]) -> bool:
    """True if ``f`` evaluates to TRUE for ``entry`` (attribute name -> values). Never raises."""
    return _eval(f, _Entry(entry)) is True


class _Entry:
    """Case-insensitive, type-checked, cached view of an entry mapping."""

    __slots__ = ("_cache", "_raw")

    def __init__(self, entry: object) -> None:
        self._raw: dict[str, list[object]] = {}
        self._cache: dict[str, tuple[EntryValue, ...]] = {}
        try:
            pairs = list(entry.items())  # type: ignore[attr-defined]
        except Exception:
            return
        for pair in pairs:
            try:
                key, values = pair
                if isinstance(key, str):
                    self._raw.setdefault(str.casefold(key), []).append(values)
            except Exception:
                continue

    def values(self, attr: str) -> tuple[EntryValue, ...]:
        name = attr.casefold()
        cached = self._cache.get(name)
        if cached is None:
            containers = self._raw.get(name)
            if containers is None and ";" in name:
                containers = self._raw.get(name.split(";", 1)[0])
            cached = tuple(v for c in containers or () for v in _entry_values(c))
            self._cache[name] = cached
        return cached

    def every_value(self) -> list[EntryValue]:
        return [v for name in list(self._raw) for v in self.values(name)]


def _entry_values(container: object) -> list[EntryValue]:
    if container is None:
        return []
    items: list[object] = []
    try:
        if isinstance(container, str | bytes | int | bytearray | memoryview):
            items.append(container)
        elif isinstance(container, Iterable):
            items.extend(container)
    except Exception:
        return []
    out: list[EntryValue] = []
    for v in items:
        try:
            if isinstance(v, bool):
                out.append("TRUE" if v else "FALSE")
            elif isinstance(v, int):
                out.append(int.__int__(v))
            elif isinstance(v, str):
                out.append(str.__str__(v))
            elif isinstance(v, bytes | bytearray | memoryview):
                out.append(bytes(v))
        except Exception:
            continue
    return out


def _decimal(text: str) -> int | None:
    return int(text) if _DECIMAL_RE.fullmatch(text) else None


def _int_text(n: int) -> str | None:
    try:
        return str(n)
    except ValueError:  # more digits than sys.get_int_max_str_digits()
        return None


def _as_bytes(v: EntryValue) -> bytes | None:
    if isinstance(v, bytes):
        return v
    if isinstance(v, int):
        text = _int_text(v)
        return None if text is None else text.encode("ascii")
    return v.encode("utf-8", "surrogatepass")


def _as_text(v: EntryValue) -> str | None:
    if isinstance(v, int):
        return _int_text(v)
    return v if isinstance(v, str) else None


def _as_int(v: EntryValue) -> int | None:
    if isinstance(v, int):
        return v
    return _decimal(v) if isinstance(v, str) else None


def _squash(text: str) -> str:
    return " ".join(text.casefold().split())


class _Assertion:
    """An assertion value with its comparison forms computed once per evaluation."""

    __slots__ = ("category", "dn", "folded", "integer", "raw", "squashed", "text")

    def __init__(self, value: Value, attr: str | None = None) -> None:
        self.text: str | None = value if isinstance(value, str) else None
        self.raw: bytes = value if isinstance(value, bytes) else value.encode("utf-8")
        self.folded: str | None = None
        self.squashed: str | None = None
        self.dn: str | None = None
        self.category: str | None = None
        self.integer: int | None = None
        if self.text is not None:
            self.folded = self.text.casefold()
            self.squashed = _squash(self.text)
            self.integer = _decimal(self.text)
            self.dn = _dn_key(self.text)
            if self.dn is None and attr is not None and attr.split(";", 1)[0].lower() == "objectcategory":
                self.category = _category(self.text)


def _category(name: str) -> str:
    key = name.casefold().replace("-", "")
    return _CATEGORY_ALIASES.get(key, key)


def _first_rdn_value(text: str) -> str | None:
    rdns = _parse_dn(text)
    if rdns is None or len(rdns[0]) != 1:
        return None
    return rdns[0][0][1]


def _equality(stored: EntryValue, a: _Assertion, approx: bool = False) -> _Truth:
    if isinstance(stored, bytes) or a.text is None:
        return _as_bytes(stored) == a.raw
    if isinstance(stored, int):
        return None if a.integer is None else stored == a.integer
    if a.integer is not None:
        number = _decimal(stored)
        if number is not None:
            return number == a.integer
    if a.dn is not None:
        key = _dn_key(stored)
        if key is not None:
            return key == a.dn
    if a.category is not None:
        first = _first_rdn_value(stored)
        if first is not None:
            return _category(first) == a.category
    if approx:
        return _squash(stored) == a.squashed
    return stored.casefold() == a.folded


def _ordering(stored: EntryValue, a: _Assertion, ge: bool) -> _Truth:
    if isinstance(stored, bytes) or a.text is None:
        data = _as_bytes(stored)
        return None if data is None else (data >= a.raw if ge else data <= a.raw)
    if isinstance(stored, int):
        if a.integer is None:
            return None
        return stored >= a.integer if ge else stored <= a.integer
    number = _decimal(stored)
    if number is not None and a.integer is not None:
        return number >= a.integer if ge else number <= a.integer
    folded, asserted = stored.casefold(), a.text.casefold()
    return folded >= asserted if ge else folded <= asserted


def _substring_match(s: AnyStr, initial: AnyStr | None, middle: Sequence[AnyStr], final: AnyStr | None) -> bool:
    pos, end = 0, len(s)
    if initial is not None:
        if not s.startswith(initial):
            return False
        pos = len(initial)
    if final is not None:
        if end - pos < len(final) or not s.endswith(final):
            return False
        end -= len(final)
    for piece in middle:
        found = s.find(piece, pos, end)
        if found < 0:
            return False
        pos = found + len(piece)
    return True


def _substring(f: Substring, values: Sequence[EntryValue]) -> _Truth:
    def raw(v: Value | None) -> bytes | None:
        return None if v is None else v if isinstance(v, bytes) else v.encode("utf-8")

    def fold(v: Value | None) -> str | None:
        return v.casefold() if isinstance(v, str) else None

    raw_pieces = (raw(f.initial), tuple(raw(p) or b"" for p in f.any), raw(f.final))
    text_pieces: tuple[str | None, tuple[str, ...], str | None] | None = None
    if not any(isinstance(p, bytes) for p in (f.initial, *f.any, f.final)):
        text_pieces = (fold(f.initial), tuple(fold(p) or "" for p in f.any), fold(f.final))
    for stored in values:
        text = None if isinstance(stored, bytes) or text_pieces is None else _as_text(stored)
        if text is not None and text_pieces is not None:
            if _substring_match(text.casefold(), *text_pieces):
                return True
        else:
            data = _as_bytes(stored)
            if data is not None and _substring_match(data, *raw_pieces):
                return True
    return False


def _bit_and(stored: EntryValue, a: _Assertion) -> _Truth:
    n = _as_int(stored)
    return None if n is None or a.integer is None else n & a.integer == a.integer


def _bit_or(stored: EntryValue, a: _Assertion) -> _Truth:
    n = _as_int(stored)
    return None if n is None or a.integer is None else n & a.integer != 0


def _case_ignore(stored: EntryValue, a: _Assertion) -> _Truth:
    text = _as_text(stored)
    if text is None or a.folded is None:
        return _as_bytes(stored) == a.raw
    return text.casefold() == a.folded


def _case_exact(stored: EntryValue, a: _Assertion) -> _Truth:
    text = _as_text(stored)
    if text is None or a.text is None:
        return _as_bytes(stored) == a.raw
    return text == a.text


def _integer_match(stored: EntryValue, a: _Assertion) -> _Truth:
    n = _as_int(stored)
    return None if n is None or a.integer is None else n == a.integer


def _dn_match(stored: EntryValue, a: _Assertion) -> _Truth:
    key = _dn_key(stored) if isinstance(stored, str) else None
    return None if key is None or a.dn is None else key == a.dn


def _octet_match(stored: EntryValue, a: _Assertion) -> _Truth:
    return _as_bytes(stored) == a.raw


_Rule: TypeAlias = Callable[[EntryValue, _Assertion], _Truth]
_RULES: dict[str, _Rule] = {
    LDAP_MATCHING_RULE_BIT_AND: _bit_and,
    LDAP_MATCHING_RULE_BIT_OR: _bit_or,
    "2.5.13.1": _dn_match,
    "distinguishednamematch": _dn_match,
    "2.5.13.2": _case_ignore,
    "caseignorematch": _case_ignore,
    "2.5.13.5": _case_exact,
    "caseexactmatch": _case_exact,
    "2.5.13.14": _integer_match,
    "integermatch": _integer_match,
    "2.5.13.17": _octet_match,
    "octetstringmatch": _octet_match,
}


def _any_value(values: Iterable[EntryValue], test: Callable[[EntryValue], _Truth]) -> _Truth:
    result: _Truth = False
    for v in values:
        r = test(v)
        if r is True:
            return True
        if r is None:
            result = None
    return result


def _extensible(f: Extensible, entry: _Entry) -> _Truth:
    if f.rule is None:
        rule: _Rule = _equality
    else:
        found = _RULES.get(f.rule.lower())
        if found is None:
            return None
        rule = found
    a = _Assertion(f.value, f.attr)
    values = list(entry.values(f.attr) if f.attr is not None else entry.every_value())
    if f.dn_attrs:
        wanted = None if f.attr is None else f.attr.split(";", 1)[0].casefold()
        for name in (v for v in entry.values("distinguishedName") or entry.values("dn") if isinstance(v, str)):
            for rdn in _parse_dn(name) or ():
                values.extend(value for t, value in rdn if wanted is None or t == wanted)
            break
    if f.attr is None:  # only the attributes the rule applies to take part
        return any(rule(v, a) is True for v in values)
    return _any_value(values, lambda v: rule(v, a))


def _eval(f: Filter, entry: _Entry) -> _Truth:
    if isinstance(f, And):
        result: _Truth = True
        for item in f.items:
            r = _eval(item, entry)
            if r is False:
                return False
            if r is None:
                result = None
        return result
    if isinstance(f, Or):
        result = False
        for item in f.items:
            r = _eval(item, entry)
            if r is True:
                return True
            if r is None:
                result = None
        return result
    if isinstance(f, Not):
        r = _eval(f.item, entry)
        return None if r is None else not r
    if isinstance(f, Present):
        return bool(entry.values(f.attr))
    if isinstance(f, Substring):
        return _substring(f, entry.values(f.attr))
    if isinstance(f, Extensible):
        return _extensible(f, entry)
    a = _Assertion(f.value, f.attr)
    values = entry.values(f.attr)
    if isinstance(f, Equal):
        return _any_value(values, lambda v: _equality(v, a))
    if isinstance(f, Approx):
        return _any_value(values, lambda v: _equality(v, a, approx=True))
    ge = isinstance(f, GreaterOrEqual)
    return _any_value(values, lambda v: _ordering(v, a, ge))
