"""IMAP4rev1 (RFC 3501) with UIDPLUS, MOVE and NAMESPACE, as a session that does no I/O.

:meth:`ImapSession.handle` takes one whole command (literals inline) and returns what to
send: lines, or generators of chunks for message contents (a message is streamed from the
store, never held whole). Store calls are blocking: the I/O layer runs ``handle`` and
drains the generators in worker threads.

Invariants:
- States of RFC 3501 §3: not authenticated -> authenticated -> selected -> logout; a command
  not valid in the state gets ``BAD``.
- Message sequence numbers map to UIDs from the last SELECT/EXAMINE, updated by this
  session's own expunges and moves and, at NOOP/CHECK, by other sessions' changes
  (``* n EXPUNGE``, ``* n EXISTS``); FETCH, STORE and SEARCH never renumber.
- ``BODY[...]`` without ``.PEEK`` sets ``\\Seen`` (not in a read-only selection).
- Not yet (answered ``BAD`` with the reason): BODYSTRUCTURE, BODY (the structure), FULL,
  STARTTLS, AUTHENTICATE.
"""

from __future__ import annotations

import email.parser
import email.policy
import email.utils
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mailkeep.server.imap_parse import Command, ParseError, parse, sequence_set, text
from mailkeep.store.errors import StoreError
from mailkeep.store.mailbox import Mailbox, MessageInfo

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
CAPS = "IMAP4rev1 LITERAL+ UIDPLUS MOVE NAMESPACE IDLE"
CRLF = b"\r\n"
@dataclass(frozen=True)
class Idle:
    """RFC 2177: the I/O layer answers ``+ idling``, calls :meth:`ImapSession.idle_poll`
    every few seconds and passes the client's next line to :meth:`ImapSession.idle_done`."""

    tag: str


Reply = bytes | Iterator[bytes] | Idle
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
UNSUPPORTED_FETCH = ("BODYSTRUCTURE", "BODY", "FULL")


def quote(s: str) -> bytes:
    b = s.encode("utf-8")
    if b"\r" in b or b"\n" in b or b'"' in b and b"\\" in b:
        return b"{%d}\r\n" % len(b) + b
    return b'"' + b.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def internal_date(t: float) -> str:
    g = time.gmtime(t)
    return f"{g.tm_mday:02d}-{MONTHS[g.tm_mon - 1]}-{g.tm_year} {g.tm_hour:02d}:{g.tm_min:02d}:{g.tm_sec:02d} +0000"


def parse_date_time(value: str) -> float:
    try:
        return time.mktime(time.strptime(value[:20].strip(), "%d-%b-%Y %H:%M:%S")) - time.timezone - _tz(value)
    except ValueError as e:
        raise ParseError(f"bad date-time {value!r}") from e


def _tz(value: str) -> int:
    m = re.search(r"([+-])(\d\d)(\d\d)$", value.strip())
    if not m:
        return 0
    secs = int(m.group(2)) * 3600 + int(m.group(3)) * 60
    return secs if m.group(1) == "+" else -secs


F = TypeVar("F", bound=Callable[..., Any])


def states(*names: str) -> Callable[[F], F]:
    """The session states a command is valid in (RFC 3501 §6)."""

    def mark(f: F) -> F:
        setattr(f, "states", names)  # noqa: B010 - read back with getattr by handle()
        return f

    return mark


class Bad(Exception):
    pass


class No(Exception):
    pass


@dataclass
class ImapSession:
    login: Callable[[str, str], Mailbox | None]
    plaintext_ok: bool = True
    server_name: str = "Mailkeep"
    state: str = "NOT_AUTH"
    mb: Mailbox | None = None
    selected: str | None = None
    readonly: bool = False
    uids: list[int] = field(default_factory=list)
    closed: bool = False
    bad: int = 0

    def greeting(self) -> bytes:
        return f"* OK [CAPABILITY {self._caps()}] {self.server_name} IMAP4rev1 ready".encode() + CRLF

    def _caps(self) -> str:
        return CAPS + ("" if self.plaintext_ok else " LOGINDISABLED")

    def handle(self, data: bytes) -> list[Reply]:
        try:
            cmd = parse(data)
        except ParseError as e:
            tag = data.split(b" ", 1)[0].decode("ascii", "replace")[:32] or "*"
            return [f"{tag} BAD {e}".encode() + CRLF]
        method = getattr(self, "c_" + cmd.name.lower().replace(" ", "_"), None)
        if method is None:
            return [f"{cmd.tag} BAD unknown or unsupported command {cmd.name}".encode() + CRLF]
        need = getattr(method, "states", ("NOT_AUTH", "AUTH", "SELECTED"))
        if self.state not in need:
            return [f"{cmd.tag} BAD {cmd.name} is not valid now (state {self.state})".encode() + CRLF]
        try:
            out: list[Reply] = method(cmd)
            return out
        except Bad as e:
            return [f"{cmd.tag} BAD {e}".encode() + CRLF]
        except (No, StoreError) as e:
            return [f"{cmd.tag} NO {e}".encode() + CRLF]
        except ParseError as e:
            return [f"{cmd.tag} BAD {e}".encode() + CRLF]

    # -- any state ------------------------------------------------------------------------------
    def c_capability(self, c: Command) -> list[Reply]:
        return [f"* CAPABILITY {self._caps()}".encode() + CRLF, _ok(c, "CAPABILITY completed")]

    def c_noop(self, c: Command) -> list[Reply]:
        return [*self._sync(), _ok(c, "NOOP completed")]

    @states("AUTH", "SELECTED")
    def c_idle(self, c: Command) -> list[Reply]:
        return [Idle(c.tag)]

    def idle_poll(self) -> list[bytes]:
        """While idling: what changed in the selected folder (new mail, expunges)."""
        return self._sync()

    def idle_done(self, tag: str, line: bytes) -> list[bytes]:
        if line.strip().upper() != b"DONE":
            return [f"{tag} BAD expected DONE to end IDLE".encode() + CRLF]
        return [*self._sync(), f"{tag} OK IDLE terminated".encode() + CRLF]

    def c_logout(self, c: Command) -> list[Reply]:
        self.closed = True
        self.state = "LOGOUT"
        return [f"* BYE {self.server_name} logging out".encode() + CRLF, _ok(c, "LOGOUT completed")]

    # -- not authenticated ------------------------------------------------------------------------
    @states("NOT_AUTH")
    def c_login(self, c: Command) -> list[Reply]:
        if len(c.args) != 2:
            raise Bad("LOGIN needs a user name and a password")
        if not self.plaintext_ok:
            raise No("[PRIVACYREQUIRED] plain-text login is allowed only from loopback until STARTTLS exists")
        mb = self.login(text(c.args[0]), text(c.args[1]))
        if mb is None:
            self.bad += 1
            return [f"{c.tag} NO [AUTHENTICATIONFAILED] invalid user name or password".encode() + CRLF]
        self.mb = mb
        self.state = "AUTH"
        return [_ok(c, f"[CAPABILITY {self._caps()}] LOGIN completed")]


    def c_authenticate(self, c: Command) -> list[Reply]:
        raise No("AUTHENTICATE is not supported yet; use LOGIN")

    def c_starttls(self, c: Command) -> list[Reply]:
        raise Bad("STARTTLS is not supported yet")

    # -- authenticated ----------------------------------------------------------------------------
    def _mb(self) -> Mailbox:
        if self.mb is None:
            raise Bad("log in first")
        return self.mb

    @states("AUTH", "SELECTED")
    def c_namespace(self, c: Command) -> list[Reply]:
        return [b'* NAMESPACE (("" "/")) NIL NIL' + CRLF, _ok(c, "NAMESPACE completed")]

    @states("AUTH", "SELECTED")
    def c_list(self, c: Command, verb: str = "LIST") -> list[Reply]:
        if len(c.args) != 2:
            raise Bad(f"{verb} needs a reference and a pattern")
        ref, pat = text(c.args[0]), text(c.args[1])
        if pat == "":
            return [f'* {verb} (\\Noselect) "/" ""'.encode() + CRLF, _ok(c, f"{verb} completed")]
        pattern = _glob((ref.rstrip("/") + "/" if ref else "") + pat)
        folders = self._mb().folders()
        paths = {f.path for f in folders}
        out: list[Reply] = []
        for f in folders:
            if pattern.fullmatch(f.path) or (f.special == "inbox" and pattern.fullmatch("INBOX")):
                kids = any(p.startswith(f.path + "/") for p in paths)
                attrs = "\\HasChildren" if kids else "\\HasNoChildren"
                out.append(f'* {verb} ({attrs}) "/" '.encode() + quote(f.path) + CRLF)
        return [*out, _ok(c, f"{verb} completed")]

    @states("AUTH", "SELECTED")
    def c_lsub(self, c: Command) -> list[Reply]:
        return self.c_list(c, "LSUB")  # every folder counts as subscribed

    @states("AUTH", "SELECTED")
    def c_subscribe(self, c: Command) -> list[Reply]:
        self._mb().folder(text(c.args[0]) if c.args else "")
        return [_ok(c, "SUBSCRIBE completed")]

    @states("AUTH", "SELECTED")
    def c_unsubscribe(self, c: Command) -> list[Reply]:
        return [_ok(c, "UNSUBSCRIBE completed")]

    @states("AUTH", "SELECTED")
    def c_create(self, c: Command) -> list[Reply]:
        name = text(c.args[0]).rstrip("/") if c.args else ""
        if name.upper() == "INBOX":
            raise No("INBOX always exists")
        self._mb().create_folder(name)
        return [_ok(c, "CREATE completed")]

    @states("AUTH", "SELECTED")
    def c_delete(self, c: Command) -> list[Reply]:
        name = text(c.args[0]) if c.args else ""
        if name.upper() == "INBOX":
            raise No("INBOX cannot be deleted")
        self._mb().delete_folder(name)
        return [_ok(c, "DELETE completed")]

    @states("AUTH", "SELECTED")
    def c_rename(self, c: Command) -> list[Reply]:
        if len(c.args) != 2:
            raise Bad("RENAME needs two names")
        self._mb().rename_folder(text(c.args[0]), text(c.args[1]))
        return [_ok(c, "RENAME completed")]

    @states("AUTH", "SELECTED")
    def c_status(self, c: Command) -> list[Reply]:
        if len(c.args) != 2 or not isinstance(c.args[1], list):
            raise Bad("STATUS needs a mailbox and a list of items")
        name = text(c.args[0])
        f = self._mb().folder(name)
        vals = {"MESSAGES": f.messages, "RECENT": 0, "UIDNEXT": f.uidnext, "UIDVALIDITY": f.uidvalidity,
                "UNSEEN": f.unread}
        items = []
        for it in c.args[1]:
            key = text(it).upper()
            if key not in vals:
                raise Bad(f"unknown STATUS item {key}")
            items.append(f"{key} {vals[key]}")
        return [b"* STATUS " + quote(name) + f" ({' '.join(items)})".encode() + CRLF, _ok(c, "STATUS completed")]

    @states("AUTH", "SELECTED")
    def c_append(self, c: Command) -> list[Reply]:
        if len(c.args) < 2 or not isinstance(c.args[-1], bytes):
            raise Bad("APPEND needs a mailbox and a message literal")
        name = text(c.args[0])
        flags: list[str] = []
        when: float | None = None
        for a in c.args[1:-1]:
            if isinstance(a, list):
                flags = [text(x) for x in a]
            else:
                when = parse_date_time(text(a))
        mb = self._mb()
        try:
            f = mb.folder(name)
        except StoreError as e:
            raise No(f"[TRYCREATE] {e}") from e
        import io

        uid = mb.append(f.path, io.BytesIO(c.args[-1]), flags=flags, internal_date=when)
        return [_ok(c, f"[APPENDUID {f.uidvalidity} {uid}] APPEND completed")]

    @states("AUTH", "SELECTED")
    def c_select(self, c: Command, readonly: bool = False) -> list[Reply]:
        if len(c.args) != 1:
            raise Bad("SELECT needs a mailbox name")
        name = text(c.args[0])
        mb = self._mb()
        self.state, self.selected = "AUTH", None
        f = mb.folder(name)
        self.uids = [m.uid for m in mb.messages(f.path)]
        self.selected, self.readonly, self.state = f.path, readonly, "SELECTED"
        flags = " ".join(SYSTEM_FLAGS)
        first_unseen = next((i for i, m in enumerate(mb.messages(f.path), 1) if "\\Seen" not in m.flags), None)
        out: list[Reply] = [
            f"* {len(self.uids)} EXISTS".encode() + CRLF, b"* 0 RECENT" + CRLF,
            f"* FLAGS ({flags})".encode() + CRLF,
            f"* OK [PERMANENTFLAGS ({flags} \\*)] flags kept".encode() + CRLF,
            f"* OK [UIDVALIDITY {f.uidvalidity}] UIDs valid".encode() + CRLF,
            f"* OK [UIDNEXT {f.uidnext}] predicted next UID".encode() + CRLF,
        ]
        if first_unseen:
            out.append(f"* OK [UNSEEN {first_unseen}] first unseen".encode() + CRLF)
        mode = "READ-ONLY" if readonly else "READ-WRITE"
        return [*out, _ok(c, f"[{mode}] {'EXAMINE' if readonly else 'SELECT'} completed")]

    @states("AUTH", "SELECTED")
    def c_examine(self, c: Command) -> list[Reply]:
        return self.c_select(c, readonly=True)


    # -- selected -----------------------------------------------------------------------------
    def _sync(self) -> list[bytes]:
        """Other sessions' changes since the last look: expunges, then new messages."""
        if self.state != "SELECTED" or self.mb is None or self.selected is None:
            return []
        now = [m.uid for m in self.mb.messages(self.selected)]
        alive = set(now)
        out: list[bytes] = []
        for i in range(len(self.uids), 0, -1):
            if self.uids[i - 1] not in alive:
                out.append(f"* {i} EXPUNGE".encode() + CRLF)
                del self.uids[i - 1]
        known = set(self.uids)
        added = [u for u in now if u not in known]
        if added:
            self.uids.extend(added)
            out.append(f"* {len(self.uids)} EXISTS".encode() + CRLF)
        return out

    def _new_only(self) -> list[Reply]:
        """New messages may be announced during FETCH/STORE/SEARCH; expunges may not."""
        if self.mb is None or self.selected is None:
            return []
        known = set(self.uids)
        added = [m.uid for m in self.mb.messages(self.selected) if m.uid not in known]
        if not added:
            return []
        self.uids.extend(added)
        return [f"* {len(self.uids)} EXISTS".encode() + CRLF]

    def _targets(self, spec: str, by_uid: bool) -> list[tuple[int, int]]:
        """(sequence number, UID) pairs named by a sequence or UID set."""
        if by_uid:
            top = max(self.uids) if self.uids else 0
            wanted = set(sequence_set(spec, top)) if self.uids else set()
            return [(i, u) for i, u in enumerate(self.uids, 1) if u in wanted]
        if any(int(x) > len(self.uids) for x in re.findall(r"\d+", spec)):
            raise Bad(f"invalid message sequence number in {spec} (the mailbox has {len(self.uids)} messages)")
        nums = sequence_set(spec, len(self.uids))
        return [(n, self.uids[n - 1]) for n in nums if n <= len(self.uids)]

    @states("SELECTED")
    def c_check(self, c: Command) -> list[Reply]:
        return [*self._sync(), _ok(c, "CHECK completed")]

    @states("SELECTED")
    def c_close(self, c: Command) -> list[Reply]:
        assert self.mb is not None and self.selected is not None
        if not self.readonly:
            self.mb.expunge(self.selected)
        self.state, self.selected, self.uids = "AUTH", None, []
        return [_ok(c, "CLOSE completed")]

    def _expunge(self, c: Command, uids: set[int] | None) -> list[Reply]:
        assert self.mb is not None and self.selected is not None
        if self.readonly:
            raise No("the mailbox is selected read-only")
        gone = set(self.mb.expunge(self.selected, uids))
        out: list[Reply] = []
        for i in range(len(self.uids), 0, -1):
            if self.uids[i - 1] in gone:
                out.append(f"* {i} EXPUNGE".encode() + CRLF)
                del self.uids[i - 1]
        return [*out, *self._sync(), _ok(c, "EXPUNGE completed")]

    @states("SELECTED")
    def c_expunge(self, c: Command) -> list[Reply]:
        return self._expunge(c, None)

    @states("SELECTED")
    def c_uid_expunge(self, c: Command) -> list[Reply]:
        if len(c.args) != 1:
            raise Bad("UID EXPUNGE needs a UID set")
        return self._expunge(c, {u for _, u in self._targets(text(c.args[0]), True)})

    def _messages(self) -> dict[int, MessageInfo]:
        assert self.mb is not None and self.selected is not None
        return {m.uid: m for m in self.mb.messages(self.selected)}

    @states("SELECTED")
    def c_search(self, c: Command, by_uid: bool = False) -> list[Reply]:
        args = list(c.args)
        if args and isinstance(args[0], str) and args[0].upper() == "CHARSET":
            args = args[2:]
        msgs = self._messages()
        hits = []
        for n, uid in enumerate(self.uids, 1):
            m = msgs.get(uid)
            if m is not None and self._matches(args, n, m):
                hits.append(uid if by_uid else n)
        line = f"* SEARCH{''.join(f' {h}' for h in hits)}".encode() + CRLF
        return [*self._new_only(), line, _ok(c, "SEARCH completed")]

    @states("SELECTED")
    def c_uid_search(self, c: Command) -> list[Reply]:
        return self.c_search(c, by_uid=True)

    def _matches(self, keys: list[object], n: int, m: MessageInfo) -> bool:
        i = 0
        while i < len(keys):
            k = keys[i]
            if isinstance(k, list):
                if not self._matches(k, n, m):
                    return False
                i += 1
                continue
            key = text(k).upper()
            flag = {"SEEN": "\\Seen", "DELETED": "\\Deleted", "FLAGGED": "\\Flagged", "ANSWERED": "\\Answered",
                    "DRAFT": "\\Draft"}
            if key == "ALL":
                ok = True
            elif key in flag:
                ok = flag[key] in m.flags
            elif key.startswith("UN") and key[2:] in flag:
                ok = flag[key[2:]] not in m.flags
            elif key in ("NEW", "RECENT", "OLD"):
                ok = key == "OLD" or (key == "NEW" and "\\Seen" not in m.flags and False)
            elif key == "NOT":
                i += 1
                ok = not self._matches([keys[i]], n, m)
            elif key == "OR":
                ok = self._matches([keys[i + 1]], n, m) or self._matches([keys[i + 2]], n, m)
                i += 2
            elif key == "UID":
                i += 1
                ok = m.uid in {u for _, u in self._targets(text(keys[i]), True)}
            elif key in ("SUBJECT", "FROM"):
                i += 1
                hay = m.subject if key == "SUBJECT" else m.sender
                ok = text(keys[i]).lower() in hay.lower()
            elif key == "HEADER":
                name, want = text(keys[i + 1]).lower(), text(keys[i + 2]).lower()
                i += 2
                ok = want in self._header(m.uid, name).lower()
            elif key in ("TEXT", "BODY"):  # BODY: the text after the header only (RFC 3501 6.4.4)
                i += 1
                raw = self._raw(m.uid)
                if key == "BODY":
                    end = raw.find(b"\r\n\r\n")
                    raw = raw[end + 4:] if end >= 0 else b""
                ok = text(keys[i]).lower().encode() in raw.lower()
            elif re.fullmatch(r"[\d:,*]+", key):
                ok = n in {s for s, _ in self._targets(key, False)}
            else:
                raise Bad(f"unsupported SEARCH key {key}")
            if not ok:
                return False
            i += 1
        return True

    def _raw(self, uid: int) -> bytes:
        assert self.mb is not None and self.selected is not None
        return self.mb.read_message(self.selected, uid)

    def _head(self, uid: int) -> bytes:
        assert self.mb is not None and self.selected is not None
        with self.mb.fetch(self.selected, uid) as r:
            buf = b""
            while len(buf) < 1 << 20:
                chunk = r.read(64 * 1024)
                if not chunk:
                    break
                buf += chunk
                end = buf.find(b"\r\n\r\n")
                if end >= 0:
                    return buf[:end + 4]
            return buf

    def _header(self, uid: int, name: str) -> str:
        head = self._head(uid).decode("utf-8", "replace")
        vals = re.findall(rf"^{re.escape(name)}:[ \t]*(.*(?:\r\n[ \t].*)*)", head, re.M | re.I)
        return " ".join(v.replace("\r\n", "") for v in vals)

    @states("SELECTED")
    def c_fetch(self, c: Command, by_uid: bool = False) -> list[Reply]:
        if len(c.args) != 2:
            raise Bad("FETCH needs a sequence set and items")
        items = c.args[1] if isinstance(c.args[1], list) else [c.args[1]]
        names = [text(x) for x in items]
        if len(names) == 1 and names[0].upper() in ("FAST", "ALL"):
            names = ["FLAGS", "INTERNALDATE", "RFC822.SIZE"] + (["ENVELOPE"] if names[0].upper() == "ALL" else [])
        for nm in names:
            if nm.upper() in UNSUPPORTED_FETCH:
                raise Bad(f"FETCH {nm.upper()} is not supported yet")
        if by_uid and not any(nm.upper() == "UID" for nm in names):
            names = ["UID", *names]
        out: list[Reply] = [*self._new_only()]
        msgs = self._messages()
        for n, uid in self._targets(text(c.args[0]), by_uid):
            m = msgs.get(uid)
            if m is not None:
                out.extend(self._fetch_one(n, m, names))
        return [*out, _ok(c, "FETCH completed")]

    @states("SELECTED")
    def c_uid_fetch(self, c: Command) -> list[Reply]:
        return self.c_fetch(c, by_uid=True)

    def _fetch_one(self, n: int, m: MessageInfo, names: list[str]) -> list[Reply]:
        assert self.mb is not None and self.selected is not None
        segs: list[bytes | tuple[str, int, Callable[[], Iterator[bytes]]]] = []
        seen = False
        for nm in names:
            up = nm.upper()
            if up == "UID":
                segs.append(f"UID {m.uid}".encode())
            elif up == "FLAGS":
                segs.append(b"FLAGS (%s)" % " ".join(sorted(m.flags)).encode())
            elif up == "INTERNALDATE":
                segs.append(f'INTERNALDATE "{internal_date(m.internal_date)}"'.encode())
            elif up == "RFC822.SIZE":
                segs.append(f"RFC822.SIZE {m.size}".encode())
            elif up == "ENVELOPE":
                segs.append(b"ENVELOPE " + envelope(self._head(m.uid)))
            elif up in ("RFC822", "RFC822.HEADER", "RFC822.TEXT"):
                section = {"RFC822": "", "RFC822.HEADER": "HEADER", "RFC822.TEXT": "TEXT"}[up]
                seen |= up != "RFC822.HEADER"
                segs.append((up, *self._section(m, section, None)))
            elif up.startswith(("BODY[", "BODY.PEEK[")):
                mt = re.fullmatch(r"BODY(\.PEEK)?\[([^\]]*)\](?:<(\d+)\.(\d+)>)?", nm, re.I)
                if not mt:
                    raise Bad(f"bad FETCH item {nm}")
                partial = (int(mt.group(3)), int(mt.group(4))) if mt.group(3) else None
                seen |= not mt.group(1)
                label = f"BODY[{mt.group(2).upper()}]" + (f"<{partial[0]}>" if partial else "")
                segs.append((label, *self._section(m, mt.group(2), partial)))
            else:
                raise Bad(f"unsupported FETCH item {nm}")
        if seen and not self.readonly and "\\Seen" not in m.flags:
            new = self.mb.set_flags(self.selected, [m.uid], ["\\Seen"], mode="add")
            if not any(x.upper() == "FLAGS" for x in names):
                segs.append(b"FLAGS (%s)" % " ".join(sorted(new.get(m.uid, m.flags))).encode())
        out: list[Reply] = [f"* {n} FETCH (".encode()]
        for i, seg in enumerate(segs):
            sep = b" " if i else b""
            if isinstance(seg, bytes):
                out.append(sep + seg)
            else:
                label, length, stream = seg
                out.append(sep + f"{label} {{{length}}}".encode() + CRLF)
                out.append(stream())
        out.append(b")" + CRLF)
        return out

    def _section(
        self, m: MessageInfo, section: str, partial: tuple[int, int] | None,
    ) -> tuple[int, Callable[[], Iterator[bytes]]]:
        """(length, a stream of the bytes) of a body section: '', HEADER, TEXT,
        HEADER.FIELDS (...), HEADER.FIELDS.NOT (...)."""
        sec = section.upper()
        if sec in ("", "TEXT"):
            skip = len(self._head(m.uid)) if sec == "TEXT" else 0
            start, length = skip, m.size - skip
            if partial:
                start, length = start + min(partial[0], length), max(0, min(partial[1], length - partial[0]))
            return length, lambda: self._range(m.uid, start, length)
        if sec == "HEADER" or sec.startswith("HEADER.FIELDS"):
            data = self._head(m.uid)
            if sec.startswith("HEADER.FIELDS"):
                mf = re.fullmatch(r"HEADER\.FIELDS(\.NOT)? \(([^)]*)\)", sec)
                if not mf:
                    raise Bad(f"bad section {section}")
                wanted = {x.strip('"').lower() for x in mf.group(2).split()}
                data = _header_fields(data, wanted, bool(mf.group(1)))
            if partial:
                data = data[partial[0]:partial[0] + partial[1]]
            return len(data), lambda: iter([data])
        raise Bad(f"section {section} is not supported yet (MIME parts arrive with BODYSTRUCTURE)")

    def _range(self, uid: int, start: int, length: int) -> Iterator[bytes]:
        assert self.mb is not None and self.selected is not None
        with self.mb.fetch(self.selected, uid) as r:
            pos = 0
            left = length
            while left > 0:
                chunk = r.read(64 * 1024)
                if not chunk:
                    break
                lo = max(0, start - pos)
                pos += len(chunk)
                if lo >= len(chunk):
                    continue
                piece = chunk[lo:lo + left]
                left -= len(piece)
                yield piece
            if left > 0:
                yield b" " * left  # never short of what the literal announced
            for _ in iter(lambda: r.read(64 * 1024), b""):
                pass  # read to the end: the reader checks the content's hash there

    @states("SELECTED")
    def c_store(self, c: Command, by_uid: bool = False) -> list[Reply]:
        if len(c.args) != 3:
            raise Bad("STORE needs a set, an item and flags")
        if self.readonly:
            raise No("the mailbox is selected read-only")
        assert self.mb is not None and self.selected is not None
        item = text(c.args[1]).upper()
        mode = {"FLAGS": "replace", "+FLAGS": "add", "-FLAGS": "remove"}.get(item.replace(".SILENT", ""))
        if mode is None:
            raise Bad(f"unknown STORE item {item}")
        flags = [text(x) for x in c.args[2]] if isinstance(c.args[2], list) else [text(c.args[2])]
        targets = self._targets(text(c.args[0]), by_uid)
        new = self.mb.set_flags(self.selected, [u for _, u in targets], flags, mode=mode)
        out: list[Reply] = []
        if not item.endswith(".SILENT"):
            for n, uid in targets:
                if uid in new:
                    uid_part = f"UID {uid} " if by_uid else ""
                    out.append(f"* {n} FETCH ({uid_part}FLAGS ({' '.join(sorted(new[uid]))}))".encode() + CRLF)
        return [*out, _ok(c, "STORE completed")]

    @states("SELECTED")
    def c_uid_store(self, c: Command) -> list[Reply]:
        return self.c_store(c, by_uid=True)

    @states("SELECTED")
    def c_copy(self, c: Command, by_uid: bool = False, move: bool = False) -> list[Reply]:
        if len(c.args) != 2:
            raise Bad("COPY needs a set and a mailbox")
        assert self.mb is not None and self.selected is not None
        if move and self.readonly:
            raise No("the mailbox is selected read-only")
        try:
            dest = self.mb.folder(text(c.args[1]))
        except StoreError as e:
            raise No(f"[TRYCREATE] {e}") from e
        targets = self._targets(text(c.args[0]), by_uid)
        uids = [u for _, u in targets]
        mapping = (self.mb.move if move else self.mb.copy)(self.selected, uids, dest.path)
        code = ""
        if mapping:
            src = ",".join(str(u) for u in mapping)
            dst = ",".join(str(u) for u in mapping.values())
            code = f"[COPYUID {dest.uidvalidity} {src} {dst}] "
        out: list[Reply] = []
        if move:
            if code:
                out.append(f"* OK {code.strip()}".encode() + CRLF)
            for i in range(len(self.uids), 0, -1):
                if self.uids[i - 1] in mapping and dest.path != self.selected:
                    out.append(f"* {i} EXPUNGE".encode() + CRLF)
                    del self.uids[i - 1]
            return [*out, _ok(c, "MOVE completed")]
        return [_ok(c, f"{code}COPY completed")]

    @states("SELECTED")
    def c_uid_copy(self, c: Command) -> list[Reply]:
        return self.c_copy(c, by_uid=True)

    @states("SELECTED")
    def c_move(self, c: Command) -> list[Reply]:
        return self.c_copy(c, move=True)

    @states("SELECTED")
    def c_uid_move(self, c: Command) -> list[Reply]:
        return self.c_copy(c, by_uid=True, move=True)



def nstring(value: str | None) -> bytes:
    return b"NIL" if value is None else quote(value)


def envelope(head: bytes) -> bytes:
    """RFC 3501 §7.4.2, from the header as it is (encoded words are left to the client):
    date, subject, from, sender, reply-to, to, cc, bcc, in-reply-to, message-id. Sender and
    reply-to default to from."""
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(head)

    def field(name: str) -> str | None:
        v = msg.get(name)
        return None if v is None else re.sub(r"\r?\n[ \t]", " ", str(v)).strip()

    def addresses(name: str) -> bytes:
        raw = msg.get_all(name)
        if not raw:
            return b"NIL"
        out = []
        for disp, addr in email.utils.getaddresses([re.sub(r"\r?\n[ \t]", " ", str(v)) for v in raw]):
            if not addr and not disp:
                continue
            local, _, host = addr.rpartition("@") if "@" in addr else (addr, "", "")
            out.append(b"(" + b" ".join([nstring(disp or None), b"NIL", nstring(local or None),
                                          nstring(host or None)]) + b")")
        return b"(" + b"".join(out) + b")" if out else b"NIL"

    frm = addresses("From")
    parts = [nstring(field("Date")), nstring(field("Subject")), frm,
             addresses("Sender") if msg.get("Sender") else frm,
             addresses("Reply-To") if msg.get("Reply-To") else frm,
             addresses("To"), addresses("Cc"), addresses("Bcc"),
             nstring(field("In-Reply-To")), nstring(field("Message-ID"))]
    return b"(" + b" ".join(parts) + b")"


def _ok(c: Command, what: str) -> bytes:
    return f"{c.tag} OK {what}".encode() + CRLF


def _glob(pattern: str) -> Any:
    out = ""
    for ch in pattern:
        out += ".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch)
    return re.compile(out, re.I)


def _header_fields(head: bytes, wanted: set[str], negate: bool) -> bytes:
    lines = re.split(rb"\r\n(?![ \t])", head.rstrip(b"\r\n"))
    keep = [ln for ln in lines if (ln.split(b":", 1)[0].strip().decode("latin-1").lower() in wanted) != negate]
    return b"".join(ln + b"\r\n" for ln in keep) + b"\r\n"
