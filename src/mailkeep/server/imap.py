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
- Passwords (LOGIN, AUTHENTICATE PLAIN) are taken only when ``plaintext_ok`` (a loopback
  client) or after STARTTLS; otherwise CAPABILITY says LOGINDISABLED and they get
  ``NO [PRIVACYREQUIRED]``. STARTTLS answers OK then a :class:`StartTls` marker: the I/O
  layer upgrades the stream, drops what the client sent ahead, and calls
  :meth:`ImapSession.tls_started`.
- BODY, BODYSTRUCTURE and MIME part sections come from one streaming pass over the message
  (``server/imap_mime.py``), kept for the last ``STRUCTURE_CACHE`` messages; a section is then
  streamed from the store as a byte range. A part number that names no part gives an empty
  string, as Dovecot does.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mailkeep.server import sasl
from mailkeep.server.imap_mime import Part, body, bodystructure, envelope, locate, quote, scan
from mailkeep.server.imap_parse import Command, ParseError, parse, sequence_set, text
from mailkeep.store.errors import StoreError
from mailkeep.store.fti import FolderSearch
from mailkeep.store.mailbox import Mailbox, MessageInfo

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
CAPS = "IMAP4rev1 LITERAL+ UIDPLUS MOVE NAMESPACE IDLE"
CRLF = b"\r\n"
@dataclass(frozen=True)
class Idle:
    """RFC 2177: the I/O layer answers ``+ idling``, calls :meth:`ImapSession.idle_poll`
    every few seconds and passes the client's next line to :meth:`ImapSession.idle_done`."""

    tag: str


@dataclass(frozen=True)
class StartTls:
    """RFC 3501 §6.2.1: after ``tag OK``, the I/O layer starts TLS on the connection, discards
    anything the client sent before the handshake, and calls :meth:`ImapSession.tls_started`."""

    tag: str


@dataclass(frozen=True)
class Continue:
    """AUTHENTICATE sent ``+``: the I/O layer reads the client's next line as it is (no
    literals) and passes it to :meth:`ImapSession.authenticate_response`."""

    tag: str


Reply = bytes | Iterator[bytes] | Idle | StartTls | Continue
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
STRUCTURE_CACHE = 32  # messages whose MIME structure a session keeps ...
STRUCTURE_CACHE_PARTS = 20_000  # ... and how many parts they may have in all
_PART_SECTION = re.compile(r"((?:[1-9]\d*\.)*[1-9]\d*)(?:\.(MIME|HEADER|TEXT|HEADER\.FIELDS(?:\.NOT)? \(.*\)))?")


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
    structures: OrderedDict[tuple[str, int, int, float], Part] = field(default_factory=OrderedDict)
    closed: bool = False
    bad: int = 0
    tls_available: bool = False
    tls: bool = False

    def greeting(self) -> bytes:
        return f"* OK [CAPABILITY {self._caps()}] {self.server_name} IMAP4rev1 ready".encode() + CRLF

    def _caps(self) -> str:
        caps = CAPS
        if self.state == "NOT_AUTH":
            if self.tls_available and not self.tls:
                caps += " STARTTLS"
            caps += " AUTH=PLAIN SASL-IR" if self.plaintext_ok else " LOGINDISABLED"
        return caps

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
            raise No(PRIVACY_REQUIRED)
        return [*self._log_in(c.tag, text(c.args[0]), text(c.args[1]), "LOGIN")]

    def _log_in(self, tag: str, user: str, password: str, verb: str) -> list[bytes]:
        mb = self.login(user, password)
        if mb is None:
            self.bad += 1
            return [f"{tag} NO [AUTHENTICATIONFAILED] invalid user name or password".encode() + CRLF]
        self.mb = mb
        self.state = "AUTH"
        return [f"{tag} OK [CAPABILITY {self._caps()}] {verb} completed".encode() + CRLF]

    @states("NOT_AUTH")
    def c_authenticate(self, c: Command) -> list[Reply]:
        """RFC 3501 §6.2.2 with SASL-IR (RFC 4959); PLAIN (RFC 4616) is the one mechanism."""
        if len(c.args) not in (1, 2):
            raise Bad("AUTHENTICATE needs a mechanism name and at most an initial response")
        if text(c.args[0]).upper() != "PLAIN":
            raise No("unsupported authentication mechanism; this server offers PLAIN")
        if not self.plaintext_ok:
            raise No(PRIVACY_REQUIRED)
        if len(c.args) == 2:
            return [*self._sasl_plain(c.tag, text(c.args[1]).encode())]
        return [b"+ " + CRLF, Continue(c.tag)]

    def authenticate_response(self, tag: str, line: bytes) -> list[bytes]:
        """The client's line after ``+``: base64 of the PLAIN message, or ``*`` to cancel."""
        return self._sasl_plain(tag, line.rstrip(b"\r\n"))

    def _sasl_plain(self, tag: str, response: bytes) -> list[bytes]:
        try:
            message = sasl.decode_response(response)
            if isinstance(message, sasl.Cancel):
                return [f"{tag} BAD AUTHENTICATE cancelled".encode() + CRLF]
            user, password = sasl.plain(message)
        except sasl.Malformed as e:
            return [f"{tag} BAD {e}".encode() + CRLF]
        except sasl.NotAuthorized as e:
            self.bad += 1
            return [f"{tag} NO [AUTHORIZATIONFAILED] {e}".encode() + CRLF]
        return self._log_in(tag, user, password, "AUTHENTICATE")

    @states("NOT_AUTH")
    def c_starttls(self, c: Command) -> list[Reply]:
        if c.args:
            raise Bad("STARTTLS takes no arguments")
        if self.tls:
            raise Bad("TLS is already active")
        if not self.tls_available:
            raise No("STARTTLS is not available on this server")
        return [_ok(c, "Begin TLS negotiation now"), StartTls(c.tag)]

    def tls_started(self) -> None:
        """TLS is on: passwords may come now, from any address (and capabilities change)."""
        self.tls = True
        self.plaintext_ok = True

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
        assert self.mb is not None and self.selected is not None
        # TEXT/BODY: the full-text index answers when it can, else each message is read
        # once (streamed); the answer is the same either way (docs/fti.md)
        ts = FolderSearch(self.mb, self.selected, _text_terms(args))
        hits = []
        for n, uid in enumerate(self.uids, 1):
            m = msgs.get(uid)
            if m is not None and self._matches(args, n, m, ts):
                hits.append(uid if by_uid else n)
        line = f"* SEARCH{''.join(f' {h}' for h in hits)}".encode() + CRLF
        return [*self._new_only(), line, _ok(c, "SEARCH completed")]

    @states("SELECTED")
    def c_uid_search(self, c: Command) -> list[Reply]:
        return self.c_search(c, by_uid=True)

    def _matches(self, keys: list[object], n: int, m: MessageInfo, ts: FolderSearch) -> bool:
        i = 0
        while i < len(keys):
            ok, i = self._key(keys, i, n, m, ts)
            if not ok:
                return False
        return True

    def _key(self, keys: list[object], i: int, n: int, m: MessageInfo, ts: FolderSearch) -> tuple[bool, int]:
        """The search key at ``keys[i]`` with its arguments (NOT and OR take whole keys,
        arguments included): (whether ``m`` matches, the index after it)."""
        k = keys[i]
        if isinstance(k, list):
            return self._matches(k, n, m, ts), i + 1
        key = text(k).upper()

        def arg(j: int) -> str:
            if i + j >= len(keys):
                raise Bad(f"SEARCH {key} needs {'an argument' if j == 1 else f'{j} arguments'}")
            return text(keys[i + j])

        flag = {"SEEN": "\\Seen", "DELETED": "\\Deleted", "FLAGGED": "\\Flagged", "ANSWERED": "\\Answered",
                "DRAFT": "\\Draft"}
        if key == "ALL":
            return True, i + 1
        if key in flag:
            return flag[key] in m.flags, i + 1
        if key.startswith("UN") and key[2:] in flag:
            return flag[key[2:]] not in m.flags, i + 1
        if key in ("NEW", "RECENT", "OLD"):
            return key == "OLD", i + 1  # \Recent is always 0 here, so NEW and RECENT match nothing
        if key in ("NOT", "OR"):
            if i + 1 >= len(keys):
                raise Bad(f"SEARCH {key} needs a search key")
            first, j = self._key(keys, i + 1, n, m, ts)
            if key == "NOT":
                return not first, j
            if j >= len(keys):
                raise Bad("SEARCH OR needs two search keys")
            second, j = self._key(keys, j, n, m, ts)
            return first or second, j
        if key == "UID":
            return m.uid in {u for _, u in self._targets(arg(1), True)}, i + 2
        if key in ("SUBJECT", "FROM"):
            hay = m.subject if key == "SUBJECT" else m.sender
            return arg(1).lower() in hay.lower(), i + 2
        if key == "HEADER":
            name, want = arg(1).lower(), arg(2).lower()
            return want in self._header(m.uid, name).lower(), i + 3
        if key in ("TEXT", "BODY"):  # BODY: the text after the header only (RFC 3501 6.4.4)
            return ts.matches(m.uid, key, arg(1)), i + 2
        if re.fullmatch(r"[\d:,*]+", key):
            return n in {s for s, _ in self._targets(key, False)}, i + 1
        raise Bad(f"unsupported SEARCH key {key}")

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
        macros = {"FAST": ["FLAGS", "INTERNALDATE", "RFC822.SIZE"],
                  "ALL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE"],
                  "FULL": ["FLAGS", "INTERNALDATE", "RFC822.SIZE", "ENVELOPE", "BODY"]}
        if len(names) == 1 and names[0].upper() in macros:
            names = macros[names[0].upper()]
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
            elif up == "BODYSTRUCTURE":
                segs.append(b"BODYSTRUCTURE " + bodystructure(self._structure(m)))
            elif up == "BODY":
                segs.append(b"BODY " + body(self._structure(m)))
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
        HEADER.FIELDS (...), HEADER.FIELDS.NOT (...), or a part's (``1.2``, ``2.MIME``, ...)."""
        sec = section.upper()
        mp = _PART_SECTION.fullmatch(sec)
        if mp:
            return self._part_section(m, [int(x) for x in mp.group(1).split(".")], mp.group(2) or "", partial)
        if sec in ("", "TEXT"):
            skip = len(self._head(m.uid)) if sec == "TEXT" else 0
            return self._window(m.uid, skip, m.size - skip, partial)
        if sec == "HEADER" or sec.startswith("HEADER.FIELDS"):
            data = _select_fields(self._head(m.uid), sec)
            if partial:
                data = data[partial[0]:partial[0] + partial[1]]
            return len(data), lambda: iter([data])
        raise Bad(f"bad section {section}: expected HEADER, TEXT, HEADER.FIELDS (...), a part number "
                  "such as 1.2, or a part number then .MIME, .HEADER, .TEXT or .HEADER.FIELDS (...)")

    def _part_section(
        self, m: MessageInfo, numbers: list[int], spec: str, partial: tuple[int, int] | None,
    ) -> tuple[int, Callable[[], Iterator[bytes]]]:
        """A MIME part's body, its MIME header, or (a message/rfc822 part only) the HEADER,
        TEXT or HEADER.FIELDS of the message it holds; an empty string when there is no such
        part (another message of the same FETCH may have it)."""
        part = locate(self._structure(m), numbers)
        start = size = 0
        if part is not None and spec == "":
            start, size = part.body_offset, part.body_size
        elif part is not None and spec == "MIME":
            start, size = part.header_offset, part.header_size
        elif part is not None and part.message is not None:
            inner = part.message
            start, size = (inner.body_offset, inner.body_size) if spec == "TEXT" else (
                inner.header_offset, inner.header_size)
            if spec.startswith("HEADER.FIELDS"):  # a part's header is at most imap_mime.MAX_HEADER octets
                data = _select_fields(b"".join(self._range(m.uid, start, size)), spec)
                if partial:
                    data = data[partial[0]:partial[0] + partial[1]]
                return len(data), lambda: iter([data])
        return self._window(m.uid, start, size, partial)

    def _window(
        self, uid: int, start: int, size: int, partial: tuple[int, int] | None,
    ) -> tuple[int, Callable[[], Iterator[bytes]]]:
        """The octets [start, start + size) of the message, or the ``<offset.count>`` of them asked for."""
        if partial:
            skip = min(partial[0], size)
            start, size = start + skip, max(0, min(partial[1], size - skip))
        if size == 0:
            return 0, lambda: iter(())
        return size, lambda: self._range(uid, start, size)

    def _structure(self, m: MessageInfo) -> Part:
        """The message's MIME tree: one streaming pass over its content, kept for the last
        ``STRUCTURE_CACHE`` messages with at most ``STRUCTURE_CACHE_PARTS`` parts in all (a stored
        message never changes; size and date in the key tell a re-created folder's UID apart)."""
        assert self.mb is not None and self.selected is not None
        key = (self.selected, m.uid, m.size, m.internal_date)
        root = self.structures.get(key)
        if root is not None:
            self.structures.move_to_end(key)
            return root
        with self.mb.fetch(self.selected, m.uid) as r:
            root = scan(iter(lambda: r.read(64 * 1024), b""))
        self.structures[key] = root
        while len(self.structures) > 1 and (len(self.structures) > STRUCTURE_CACHE or sum(
                t.tree_parts for t in self.structures.values()) > STRUCTURE_CACHE_PARTS):
            self.structures.popitem(last=False)
        return root

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



PRIVACY_REQUIRED = "[PRIVACYREQUIRED] passwords are accepted from this address only over TLS: send STARTTLS first"


def _text_terms(keys: list[object]) -> list[tuple[str, str]]:
    """Every TEXT/BODY key's (key, string) in a SEARCH program, nested lists included, so
    a message is read once for all of them. A string that merely looks like the key (an
    argument of another key) adds a term looked for in vain, never a wrong answer."""
    out: list[tuple[str, str]] = []
    flat: list[object] = []
    todo = list(keys)
    while todo:
        k = todo.pop(0)
        if isinstance(k, list):
            todo[:0] = k
        else:
            flat.append(k)
    for j, k in enumerate(flat[:-1]):
        if isinstance(k, str | bytes) and text(k).upper() in ("TEXT", "BODY") and isinstance(flat[j + 1], str | bytes):
            out.append((text(k).upper(), text(flat[j + 1])))
    return out


def _ok(c: Command, what: str) -> bytes:
    return f"{c.tag} OK {what}".encode() + CRLF


def _glob(pattern: str) -> Any:
    out = ""
    for ch in pattern:
        out += ".*" if ch == "*" else "[^/]*" if ch == "%" else re.escape(ch)
    return re.compile(out, re.I)


def _select_fields(head: bytes, spec: str) -> bytes:
    """HEADER (all of ``head``), or HEADER.FIELDS (...) / HEADER.FIELDS.NOT (...) of it."""
    if not spec.startswith("HEADER.FIELDS"):
        return head
    mf = re.fullmatch(r"HEADER\.FIELDS(\.NOT)? \(([^)]*)\)", spec)
    if not mf:
        raise Bad(f"bad section {spec}: expected HEADER.FIELDS (NAME ...) or HEADER.FIELDS.NOT (NAME ...)")
    return _header_fields(head, {x.strip('"').lower() for x in mf.group(2).split()}, bool(mf.group(1)))


def _header_fields(head: bytes, wanted: set[str], negate: bool) -> bytes:
    lines = re.split(rb"\r\n(?![ \t])", head.rstrip(b"\r\n"))
    keep = [ln for ln in lines if (ln.split(b":", 1)[0].strip().decode("latin-1").lower() in wanted) != negate]
    return b"".join(ln + b"\r\n" for ln in keep) + b"\r\n"
