"""LDIF (RFC 2849) reading and writing, with the habits of Microsoft LDIFDE.

Invariants:

- Streaming: ``parse`` reads its source line by line and yields each record as soon as the
  record ends; it never holds more than one record (plus one look-ahead line) in memory.
- Exact values: a parsed value is exactly what was written: ``parse(write(x)) == x`` for any dn
  and any str and bytes values, where ``write`` is ``write_entry`` (or ``write_modify``,
  ``write_delete``, ``write_modrdn``) and the values are in canonical form: values of a binary
  attribute (``is_binary_attribute``) are ``bytes``; other values are ``str``, or ``bytes`` that
  are not valid UTF-8. A non-canonical value still comes back with the same octets (its UTF-8
  encoding); only its Python type follows the canonical rule, since LDIF does not record it.
- Safety: no URL is ever fetched. ``attr:< URL`` is refused with an ``LdifError``; the value has
  to be in the file (base64 with ``attr::``).
- Errors: every malformed input raises ``LdifError`` (a ``ValueError``) carrying the 1-based
  line number (of the first physical line of a folded line), the record's dn when known, what
  is wrong and what was expected. Records before the bad line have already been yielded.

LDIFDE habits accepted besides RFC 2849: keywords in any case (``Dn:``, ``Replace:``), a modify
record whose last ``-`` is missing, several blank lines between records, CRLF line ends, a
UTF-8 byte-order mark, and (as in the Exchange 2003 re-homing procedure) a ``dn:`` line right
after a modify record's ``-`` line starting the next record without a blank line.

The writer emits LDIFDE's export format: ``dn:``, ``changetype: add``, one ``attr: value`` line
per value, base64 (``attr::``) for every value that is not a strictly safe string (printable
ASCII, no leading space, colon or ``<``, no trailing space) and for all bytes, lines folded at
76 characters with a single leading space on continuation lines, and a blank line after each
record. Its output is pure ASCII.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TextIO

__all__ = [
    "AddRecord",
    "Change",
    "DeleteRecord",
    "LdifError",
    "ModRdnRecord",
    "ModifyRecord",
    "Op",
    "Record",
    "Value",
    "is_binary_attribute",
    "parse",
    "write_delete",
    "write_entry",
    "write_modify",
    "write_modrdn",
    "write_record",
]

Value = str | bytes
Op = Literal["add", "replace", "delete"]

# Attributes whose values are octet strings, never text: base64 values of these decode to bytes.
BINARY_ATTRIBUTES = frozenset(
    {"objectguid", "objectsid", "msexchmailboxguid", "msexchmasteraccountsid", "unicodepwd", "userpassword"}
)

LINE_WIDTH = 76  # LDIFDE and RFC 2849 writers fold lines at this many characters

# RFC 2849 AttributeDescription: a name or an OID, then ;options.
_ATTR_DESC = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|[0-9]+(?:\.[0-9]+)*)(?:;[A-Za-z0-9-]+)*")
_OPS: dict[str, Op] = {"add": "add", "replace": "replace", "delete": "delete"}
_RESERVED = frozenset({"dn", "changetype", "control"})


class LdifError(ValueError):
    """A malformed LDIF input: ``line`` is the 1-based line of the problem, ``dn`` the record's."""

    def __init__(self, problem: str, line: int, dn: str | None = None) -> None:
        self.problem = problem
        self.line = line
        self.dn = dn
        where = f"LDIF line {line}"
        if dn is not None:
            where += f" (record dn: {dn!r})"
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True, slots=True)
class AddRecord:
    """A content record, or a change record with ``changetype: add``."""

    dn: str
    attrs: dict[str, list[Value]]
    line: int


@dataclass(frozen=True, slots=True)
class Change:
    """One part of a modify record: ``op: attr``, its value lines, ``-``."""

    op: Op
    attr: str
    values: list[Value]


@dataclass(frozen=True, slots=True)
class ModifyRecord:
    dn: str
    changes: list[Change]
    line: int


@dataclass(frozen=True, slots=True)
class DeleteRecord:
    dn: str
    line: int


@dataclass(frozen=True, slots=True)
class ModRdnRecord:
    """``changetype: modrdn`` or ``moddn``."""

    dn: str
    newrdn: str
    deleteoldrdn: bool
    newsuperior: str | None
    line: int


Record = AddRecord | ModifyRecord | DeleteRecord | ModRdnRecord


def is_binary_attribute(attr: str) -> bool:
    """True for attributes whose values are bytes (``objectGUID``, ``…;binary``, …)."""
    name, *options = attr.lower().split(";")
    return name in BINARY_ATTRIBUTES or "binary" in options


# ---------------------------------------------------------------- reading: lines


def _split_str(text: str) -> Iterator[str]:
    """The lines of ``text`` (split on LF only), without copying the whole string."""
    start = 0
    end = len(text)
    while start < end:
        nl = text.find("\n", start)
        if nl < 0:
            yield text[start:]
            return
        yield text[start:nl]
        start = nl + 1


def _split_chunks(chunks: Iterable[str]) -> Iterator[str]:
    """Each chunk holds one or more whole lines; a final line terminator is optional."""
    for chunk in chunks:
        if "\n" not in chunk:
            yield chunk
            continue
        parts = chunk.split("\n")
        if parts[-1] == "":
            parts.pop()
        yield from parts


def _physical_lines(source: str | TextIO | Iterable[str]) -> Iterator[tuple[int, str]]:
    raw = _split_str(source) if isinstance(source, str) else _split_chunks(source)
    for number, text in enumerate(raw, start=1):
        if number == 1 and text.startswith("\ufeff"):
            text = text[1:]
        if text.endswith("\r"):
            text = text[:-1]
        yield number, text


def _logical_lines(source: str | TextIO | Iterable[str]) -> Iterator[tuple[int, str | None]]:
    """Unfolded lines as (first line number, text); ``None`` text for a blank line; no comments."""
    pending: list[str] | None = None  # parts of the logical line being unfolded
    pending_line = 0
    pending_comment = False
    for number, text in _physical_lines(source):
        if text.startswith(" "):
            if pending is None:
                raise LdifError(
                    "continuation line (it starts with a space) but there is no previous line to continue: "
                    "it follows a blank line or starts the file; remove the leading space, or the blank line",
                    number,
                )
            if not pending_comment:
                pending.append(text[1:])
            continue
        if pending is not None and not pending_comment:
            yield pending_line, "".join(pending)
        pending = None
        if text == "":
            yield number, None
        else:
            pending, pending_line, pending_comment = [text], number, text.startswith("#")
    if pending is not None and not pending_comment:
        yield pending_line, "".join(pending)


def _blocks(source: str | TextIO | Iterable[str]) -> Iterator[list[tuple[int, str]]]:
    """Runs of non-blank logical lines: one record each (or the version line)."""
    block: list[tuple[int, str]] = []
    for number, text in _logical_lines(source):
        if text is None:
            if block:
                yield block
                block = []
        else:
            block.append((number, text))
    if block:
        yield block


# ---------------------------------------------------------------- reading: records


def _hint_for_no_colon(text: str) -> str:
    if text[:1] in ("\u00a0", "\t"):
        what = "a no-break space (U+00A0)" if text[0] == "\u00a0" else "a tab"
        return f"; the line starts with {what}, but a continuation line must start with one ASCII space"
    return "; if it continues the previous value, start it with one space"


class _Line:
    """One ``attr: value`` / ``attr:: base64`` / ``attr:< url`` logical line."""

    __slots__ = ("attr", "kind", "number", "raw")
    attr: str
    kind: Literal["text", "base64", "url"]
    number: int
    raw: str

    def __init__(self, number: int, text: str, dn: str | None) -> None:
        colon = text.find(":")
        if colon < 0:
            shown = text if len(text) <= 60 else text[:57] + "..."
            raise LdifError(
                f"expected 'attribute: value' but the line has no ':' ({shown!r}){_hint_for_no_colon(text)}",
                number,
                dn,
            )
        attr = text[:colon]
        if not _ATTR_DESC.fullmatch(attr):
            raise LdifError(
                f"{attr!r} is not an attribute description; expected a name of letters, digits and '-' "
                "(or an OID), optionally followed by ';options', then ':'",
                number,
                dn,
            )
        rest = text[colon + 1 :]
        self.number = number
        self.attr = attr
        if rest.startswith(":"):
            self.kind, self.raw = "base64", rest[1:].strip(" ")
        elif rest.startswith("<"):
            self.kind, self.raw = "url", rest[1:].strip(" ")
        else:
            self.kind, self.raw = "text", rest.lstrip(" ")

    def value(self, dn: str | None, binary: bool) -> Value:
        """The value as written: text, or decoded base64 (str when text and valid UTF-8)."""
        if self.kind == "text":
            return self.raw
        if self.kind == "url":
            raise LdifError(
                f"'{self.attr}:<' refers to a URL ({self.raw!r}); URLs are never loaded, for safety; "
                f"put the value in the file instead, base64-encoded as '{self.attr}:: <base64>'",
                self.number,
                dn,
            )
        try:
            data = base64.b64decode(self.raw, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise LdifError(
                f"the '{self.attr}::' value is not valid base64 ({exc}); expected characters A-Z a-z 0-9 + / "
                "padded with '=' to a multiple of 4",
                self.number,
                dn,
            ) from None
        if binary:
            return data
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data

    def text(self, dn: str | None, what: str) -> str:
        """A value that must be text (a dn, rdn, keyword argument)."""
        value = self.value(dn, binary=False)
        if isinstance(value, bytes):
            raise LdifError(f"the {what} is base64 of bytes that are not UTF-8 text", self.number, dn)
        return value

    def keyword(self, dn: str | None) -> str:
        if self.kind != "text":
            raise LdifError(f"'{self.attr}:' takes a plain word, not base64 or a URL", self.number, dn)
        return self.raw.strip(" ").lower()


def _parse_add(block: list[tuple[int, str]], i: int, dn: str, start: int) -> AddRecord:
    attrs: dict[str, list[Value]] = {}
    for number, text in block[i:]:
        line = _Line(number, text, dn)
        low = line.attr.lower()
        if low == "dn":
            raise LdifError("a second 'dn:' line inside the record; expected a blank line between records", number, dn)
        if low == "changetype":
            raise LdifError("'changetype:' must come right after the 'dn:' line", number, dn)
        attrs.setdefault(line.attr, []).append(line.value(dn, is_binary_attribute(line.attr)))
    # No attributes is legal here: LDIFDE exports such records when none of the -l attributes is set.
    return AddRecord(dn, attrs, start)


def _parse_delete(block: list[tuple[int, str]], i: int, dn: str, start: int) -> DeleteRecord:
    if i < len(block):
        number, _ = block[i]
        raise LdifError(
            "unexpected line after 'changetype: delete'; a delete record has only 'dn:' and 'changetype:', "
            "then a blank line",
            number,
            dn,
        )
    return DeleteRecord(dn, start)


def _parse_modrdn(block: list[tuple[int, str]], i: int, dn: str, start: int) -> ModRdnRecord:
    seen: dict[str, _Line] = {}
    for number, text in block[i:]:
        line = _Line(number, text, dn)
        low = line.attr.lower()
        if low not in ("newrdn", "deleteoldrdn", "newsuperior"):
            raise LdifError(
                f"unexpected '{line.attr}:' in a modrdn record; expected 'newrdn:', 'deleteoldrdn:', "
                "and optionally 'newsuperior:'",
                number,
                dn,
            )
        if low in seen:
            raise LdifError(f"'{line.attr}:' appears twice in the modrdn record", number, dn)
        seen[low] = line
    end = block[-1][0]
    if "newrdn" not in seen:
        raise LdifError("the modrdn record has no 'newrdn:' line", end, dn)
    if "deleteoldrdn" not in seen:
        raise LdifError("the modrdn record has no 'deleteoldrdn: 0' or 'deleteoldrdn: 1' line", end, dn)
    flag = seen["deleteoldrdn"]
    word = flag.keyword(dn)
    if word not in ("0", "1"):
        raise LdifError(f"deleteoldrdn is {flag.raw!r}; expected 0 or 1", flag.number, dn)
    superior = seen.get("newsuperior")
    return ModRdnRecord(
        dn,
        seen["newrdn"].text(dn, "newrdn"),
        word == "1",
        None if superior is None else superior.text(dn, "newsuperior"),
        start,
    )


def _parse_modify(block: list[tuple[int, str]], i: int, dn: str, start: int) -> tuple[ModifyRecord, int]:
    """The modify record, and where the block's next record starts (``len(block)`` if none)."""
    changes: list[Change] = []
    op: Op | None = None  # the open part: 'op: attr' on line part_line
    attr = ""
    part_line = 0
    values: list[Value] = []
    after_dash = False
    while i < len(block):
        number, text = block[i]
        is_dash = text.rstrip(" ") == "-"
        if op is None:
            if is_dash:
                raise LdifError(
                    "'-' with no open part; expected 'add:', 'replace:' or 'delete:' and an attribute name",
                    number,
                    dn,
                )
            line = _Line(number, text, dn)
            low = line.attr.lower()
            if low == "dn" and after_dash:
                # LDIFDE habit (the Exchange re-homing procedure): the next record follows the '-'.
                return ModifyRecord(dn, changes, start), i
            if low not in _OPS:
                raise LdifError(
                    "expected 'add:', 'replace:' or 'delete:' and an attribute name to start a modify part, "
                    f"or a blank line to end the record; found '{line.attr}:'",
                    number,
                    dn,
                )
            attr = line.raw.strip(" ")
            if line.kind != "text" or not _ATTR_DESC.fullmatch(attr):
                raise LdifError(
                    f"'{line.attr}:' does not name an attribute; expected '{low}: <attribute name>'", number, dn
                )
            op, part_line, values = _OPS[low], number, []
        elif is_dash:
            changes.append(Change(op, attr, values))
            op, after_dash = None, True
        else:
            line = _Line(number, text, dn)
            if line.attr.lower() != attr.lower():
                hint = ""
                if line.attr.lower() in _OPS:
                    hint = f"; a '-' line must end the '{op}: {attr}' part before the next part starts"
                raise LdifError(
                    f"a value line for '{line.attr}' inside the '{op}: {attr}' part (line {part_line}); "
                    f"expected '{attr}: <value>' or '-'{hint}",
                    number,
                    dn,
                )
            values.append(line.value(dn, is_binary_attribute(attr)))
        i += 1
    if op is not None:  # LDIFDE accepts a missing '-' after the last part
        changes.append(Change(op, attr, values))
    return ModifyRecord(dn, changes, start), i


def _parse_record(block: list[tuple[int, str]], i: int) -> tuple[Record, int]:
    start, text = block[i]
    first = _Line(start, text, None)
    if first.attr.lower() != "dn":
        raise LdifError(
            f"missing dn: the record starts with '{first.attr}:'; expected 'dn: <distinguished name>' first",
            start,
        )
    dn = first.text(None, "dn")
    i += 1
    if i == len(block):
        return _parse_add(block, i, dn, start), i
    number, text = block[i]
    line = _Line(number, text, dn)
    low = line.attr.lower()
    if low == "control":
        raise LdifError("LDAP controls ('control:') are not supported; remove the line", number, dn)
    if low != "changetype":
        return _parse_add(block, i, dn, start), len(block)
    changetype = line.keyword(dn)
    i += 1
    if changetype == "add":
        return _parse_add(block, i, dn, start), len(block)
    if changetype == "delete":
        return _parse_delete(block, i, dn, start), len(block)
    if changetype in ("modrdn", "moddn"):
        return _parse_modrdn(block, i, dn, start), len(block)
    if changetype == "modify":
        return _parse_modify(block, i, dn, start)
    raise LdifError(
        f"unknown changetype {line.raw.strip(' ')!r}; expected add, modify, delete, modrdn or moddn", number, dn
    )


def parse(source: str | TextIO | Iterable[str]) -> Iterator[Record]:
    """Yield the records of an LDIF text, one at a time, as they are read.

    ``source`` is a string, a text file, or any iterable of lines (with or without line ends).
    Raises ``LdifError`` at the first malformed line; records before it have been yielded.
    """
    first_block = True
    for block in _blocks(source):
        i = 0
        if first_block:
            first_block = False
            number, text = block[0]
            if text[:8].lower() == "version:":
                version = _Line(number, text, None)
                if version.kind != "text" or version.raw.strip(" ") != "1":
                    raise LdifError(f"unsupported LDIF version {version.raw!r}; expected 'version: 1'", number)
                i = 1
        while i < len(block):
            record, i = _parse_record(block, i)
            yield record


# ---------------------------------------------------------------- writing


def _is_safe(value: str) -> bool:
    """RFC 2849 SAFE-STRING, stricter: printable ASCII only (controls go base64 too)."""
    if not value:
        return True
    return value.isascii() and value.isprintable() and value[0] not in " :<" and value[-1] != " "


def _spec(attr: str, value: Value) -> str:
    if isinstance(value, str):
        if _is_safe(value):
            return f"{attr}: {value}" if value else f"{attr}:"
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"a value of {attr!r} cannot be encoded as UTF-8 ({exc})") from None
    elif isinstance(value, bytes):
        data = value
    else:
        raise TypeError(f"a value of {attr!r} is {type(value).__name__}; expected str or bytes")
    if not data:
        return f"{attr}::"
    return f"{attr}:: {base64.b64encode(data).decode('ascii')}"


def _write_line(out: TextIO, line: str) -> None:
    if len(line) <= LINE_WIDTH:
        out.write(line + "\n")
        return
    out.write(line[:LINE_WIDTH] + "\n")
    for pos in range(LINE_WIDTH, len(line), LINE_WIDTH - 1):
        out.write(" " + line[pos : pos + LINE_WIDTH - 1] + "\n")


def _check_attr(attr: str) -> None:
    if not isinstance(attr, str) or not _ATTR_DESC.fullmatch(attr):
        raise ValueError(
            f"{attr!r} is not an attribute description; expected letters, digits and '-' (or an OID), "
            "optionally with ';options'"
        )
    if attr.lower() in _RESERVED:
        raise ValueError(f"{attr!r} is an LDIF keyword and cannot be written as an attribute")


def _write_dn(out: TextIO, dn: str) -> None:
    if not isinstance(dn, str):
        raise TypeError(f"dn is {type(dn).__name__}; expected str")
    _write_line(out, _spec("dn", dn))


def write_entry(out: TextIO, dn: str, attrs: Mapping[str, Sequence[Value]], *, changetype_add: bool = True) -> None:
    """Write one entry in LDIFDE's export format (``changetype: add`` unless told otherwise).

    An entry with no attributes is written as LDIFDE does (``dn:`` and ``changetype:`` only).
    Raises ``ValueError`` for an attribute name LDIF cannot carry or an attribute with no values:
    neither could be read back as written.
    """
    for attr, values in attrs.items():
        _check_attr(attr)
        if isinstance(values, str | bytes) or not values:
            raise ValueError(f"attribute {attr!r} of {dn!r} needs a non-empty sequence of values")
    _write_dn(out, dn)
    if changetype_add:
        out.write("changetype: add\n")
    for attr, values in attrs.items():
        for value in values:
            _write_line(out, _spec(attr, value))
    out.write("\n")


def write_modify(out: TextIO, dn: str, changes: Iterable[Change]) -> None:
    """Write a ``changetype: modify`` record: each change as ``op: attr``, values, ``-``."""
    parts = list(changes)
    for change in parts:
        if change.op not in _OPS:
            raise ValueError(f"unknown modify operation {change.op!r}; expected add, replace or delete")
        _check_attr(change.attr)
        if isinstance(change.values, str | bytes):
            raise ValueError(f"the values of {change.op}: {change.attr} must be a list, not one value")
    _write_dn(out, dn)
    out.write("changetype: modify\n")
    for change in parts:
        out.write(f"{change.op}: {change.attr}\n")
        for value in change.values:
            _write_line(out, _spec(change.attr, value))
        out.write("-\n")
    out.write("\n")


def write_delete(out: TextIO, dn: str) -> None:
    """Write a ``changetype: delete`` record."""
    _write_dn(out, dn)
    out.write("changetype: delete\n\n")


def write_modrdn(out: TextIO, dn: str, newrdn: str, deleteoldrdn: bool, newsuperior: str | None = None) -> None:
    """Write a ``changetype: modrdn`` record."""
    _write_dn(out, dn)
    out.write("changetype: modrdn\n")
    _write_line(out, _spec("newrdn", newrdn))
    out.write(f"deleteoldrdn: {1 if deleteoldrdn else 0}\n")
    if newsuperior is not None:
        _write_line(out, _spec("newsuperior", newsuperior))
    out.write("\n")


def write_record(out: TextIO, record: Record) -> None:
    """Write any parsed record back (content records as ``changetype: add``)."""
    if isinstance(record, AddRecord):
        write_entry(out, record.dn, record.attrs)
    elif isinstance(record, ModifyRecord):
        write_modify(out, record.dn, record.changes)
    elif isinstance(record, DeleteRecord):
        write_delete(out, record.dn)
    else:
        write_modrdn(out, record.dn, record.newrdn, record.deleteoldrdn, record.newsuperior)
