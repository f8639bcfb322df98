"""`mailkeep ldifde`: LDIFDE's switches (-f -i -d -r -l -p -s), case-insensitive, with the
guide's en-dash (–F) and curly-quote (“...”) spellings accepted as typed from the guide."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass

from mailkeep.directory import dn as dnmod
from mailkeep.directory import filters, ldifde
from mailkeep.directory.backend import SCOPES, DirectoryError, Scope
from mailkeep.directory.setup import open_directory

USAGE = """usage: mailkeep ldifde -f FILE [-i] [-d BASE] [-r FILTER] [-l ATTR,ATTR] [-p Base|OneLevel|Subtree]
  export (default): write the entries below BASE matching FILTER to FILE
  -i: import FILE (changetype add / modify / delete / modrdn records)"""


class UsageError(Exception):
    pass


@dataclass
class Args:
    file: str
    do_import: bool = False
    base: str | None = None
    flt: str = "(objectClass=*)"
    attrs: list[str] | None = None
    scope: Scope = "subtree"


def _clean(word: str) -> str:
    return word.strip().strip("\u201c\u201d\"'")


def parse_args(words: Sequence[str]) -> Args:
    file: str | None = None
    a = Args(file="")
    i = 0
    while i < len(words):
        w = words[i].replace("\u2013", "-").replace("\u2014", "-")
        if not w.startswith(("-", "/")) or len(w) < 2:
            raise UsageError(f"unexpected argument {words[i]!r}")
        key, inline = w[1].lower(), w[2:]

        def value(w: str = w, inline: str = inline) -> str:
            nonlocal i
            if inline:
                return _clean(inline)
            if i + 1 >= len(words):
                raise UsageError(f"{w} needs a value")
            i += 1
            return _clean(words[i])

        if key == "i" and not inline:
            a.do_import = True
        elif key == "f":
            file = value()
        elif key == "d":
            a.base = value()
        elif key == "r":
            a.flt = value()
        elif key == "l":
            a.attrs = [x.strip() for x in value().split(",") if x.strip()]
        elif key == "p":
            scope = {"base": "base", "onelevel": "one", "subtree": "subtree"}.get(value().lower())
            if scope is None or scope not in SCOPES:
                raise UsageError("-p takes Base, OneLevel or Subtree")
            a.scope = scope
        elif key == "s":
            value()  # the server: always this data folder's directory
        else:
            raise UsageError(f"unknown switch {words[i]!r}")
        i += 1
    if not file:
        raise UsageError("-f FILE is required")
    a.file = file
    return a


def main(argv: Sequence[str], *, data: str) -> int:
    out = sys.stdout
    try:
        args = parse_args(argv)
    except UsageError as e:
        print(f"ldifde: {e}\n{USAGE}", file=out)
        return 2
    try:
        d = open_directory(data)
    except (DirectoryError, OSError) as e:
        print(f"ldifde: cannot open the directory in {data}: {e}", file=out)
        return 1
    try:
        print(f"Connecting to the directory of {d.domain} in {data}", file=out)
        if args.do_import:
            print(f"Importing directory from file \"{args.file}\"", file=out)
            print("Loading entries", file=out)
            try:  # read whole first: a file that is not UTF-8 text fails before any record is applied
                with open(args.file, encoding="utf-8-sig", newline="") as f:
                    text = f.read()
            except OSError as e:
                print(f"ldifde: cannot read {args.file}: {e.strerror}", file=out)
                return 1
            except UnicodeDecodeError as e:
                print(f"ldifde: {args.file} is not UTF-8 text (byte {e.start}: {e.reason}); nothing was imported",
                      file=out)
                return 1
            rep = ldifde.import_ldif(d, text)
            for line, kind, dn in rep.applied:
                print(f"  line {line}: {kind} {dn}: done", file=out)
            print(f"{len(rep.applied)} entries modified successfully.", file=out)
            if rep.failed:
                line, dn, err = rep.failed
                print(f"Error on entry starting on line {line}" + (f" ({dn})" if dn else "") + f": {err}", file=out)
                print(f"The records before line {line} were applied; that record and the ones after it were not. "
                      "Correct the file and import the rest again.", file=out)
                return 1
        else:
            print(f"Exporting directory to file {args.file}", file=out)
            print("Searching for entries...", file=out)
            filters.parse(args.flt)  # a bad filter fails here, before FILE is created or truncated
            if args.base:
                dnmod.split(args.base)
            try:
                f = open(args.file, "w", encoding="utf-8", newline="")
            except OSError as e:
                print(f"ldifde: cannot write {args.file}: {e.strerror}", file=out)
                return 1
            with f:
                n = ldifde.export(d, f, base=args.base, flt=args.flt, attrs=args.attrs, scope=args.scope)
            print("Writing out entries", file=out)
            print(f"{n} entries exported", file=out)
    except (DirectoryError, ValueError) as e:
        print(f"ldifde: {e}", file=out)
        return 1
    finally:
        d.close()
    print("The command has completed successfully", file=out)
    return 0
