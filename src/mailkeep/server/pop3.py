"""POP3 (RFC 1939, with CAPA, UIDL and TOP; RFC 2449; STLS, RFC 2595; AUTH PLAIN, RFC 5034)
as a session that does no I/O.

:class:`Pop3Session` is fed one command line at a time and returns what to send: lines, or
a generator of content chunks for RETR/TOP (so a message is streamed, never held whole).
The maildrop behind it is a small interface, so the session is testable without sockets.

Invariants:
- AUTHORIZATION -> TRANSACTION -> UPDATE, as RFC 1939 says: messages marked with DELE go
  (to deleted item retention) only at QUIT; a dropped connection deletes nothing.
- A maildrop is locked while a session is in TRANSACTION: a second session on it is refused
  with ``-ERR [IN-USE]``.
- Lines over ``MAX_LINE`` and unknown commands get ``-ERR``; after ``MAX_BAD`` bad commands
  the session ends.
- Message numbers and sizes are fixed at logon (the RFC's snapshot); UIDL is
  ``UIDVALIDITY.UID``, stable across sessions.
- Passwords (PASS, AUTH PLAIN) are taken only when ``plaintext_ok`` (a loopback client) or
  after STLS; CAPA offers USER and SASL PLAIN only then, and STLS until TLS is on. STLS
  answers ``+OK`` then a :class:`StartTls` marker: the I/O layer upgrades the stream, drops
  what the client sent ahead, and calls :meth:`Pop3Session.tls_started`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from mailkeep.server import sasl

MAX_LINE = 512  # RFC 2449: commands up to 255 octets; be generous, never unbounded
MAX_BAD = 10
CRLF = b"\r\n"


@dataclass(frozen=True)
class Item:
    uid: int
    size: int


class Maildrop(Protocol):
    uidvalidity: int

    def items(self) -> list[Item]: ...

    def content(self, uid: int) -> Iterator[bytes]: ...

    def delete(self, uids: list[int]) -> None: ...

    def release(self) -> None: ...


# authenticate(user, password) -> a Maildrop, or None for a wrong name or password; may raise
# InUse when the maildrop is locked by another session.
Authenticator = Callable[[str, str], "Maildrop | None"]


class InUse(Exception):
    pass


@dataclass(frozen=True)
class StartTls:
    """After ``+OK`` to STLS: the I/O layer starts TLS on the connection now."""


Reply = bytes | Iterator[bytes] | StartTls


@dataclass
class Pop3Session:
    authenticate: Authenticator
    server_name: str = "Mailkeep"
    state: str = "AUTHORIZATION"
    user: str | None = None
    drop: Maildrop | None = None
    items: list[Item] = field(default_factory=list)
    deleted: set[int] = field(default_factory=set)  # message numbers
    bad: int = 0
    closed: bool = False
    plaintext_ok: bool = True  # passwords may be sent in the clear (a loopback client)
    tls_available: bool = False
    tls: bool = False
    sasl_pending: bool = False  # AUTH PLAIN sent "+ ": the next line is the client's response

    def greeting(self) -> bytes:
        return f"+OK {self.server_name} POP3 server ready".encode() + CRLF

    def handle(self, line: bytes) -> list[Reply]:
        """One command line (with or without its CRLF) -> what to send."""
        if len(line) > MAX_LINE:
            self.sasl_pending = False
            return self._bad("line too long")
        if self.sasl_pending:
            self.sasl_pending = False
            return self._sasl_response(line.rstrip(b"\r\n"))
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        cmd, _, arg = text.partition(" ")
        cmd = cmd.upper()
        handler = getattr(self, f"_{self.state.lower()}_{cmd.lower()}", None) if cmd.isalpha() else None
        if handler is None:
            known = ("QUIT", "CAPA", "NOOP", "USER", "PASS", "AUTH", "STLS")
            if cmd in known or hasattr(self, f"_transaction_{cmd.lower()}"):
                return self._bad(f"{cmd} is not valid in the {self.state} state")
            return self._bad("unknown command")
        out: list[Reply] = handler(arg)
        return out

    def _bad(self, why: str) -> list[Reply]:
        self.bad += 1
        if self.bad >= MAX_BAD:
            self.closed = True
            self._release()
            return [b"-ERR too many bad commands; goodbye" + CRLF]
        return [f"-ERR {why}".encode() + CRLF]

    def _release(self) -> None:
        if self.drop is not None:
            self.drop.release()
            self.drop = None

    # -- AUTHORIZATION ----------------------------------------------------------------------
    def _authorization_capa(self, arg: str) -> list[Reply]:
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE"]
        if self.state == "AUTHORIZATION":
            if self.tls_available and not self.tls:
                caps.append("STLS")
            if self.plaintext_ok:
                caps += ["USER", "SASL PLAIN"]
        return [b"+OK capability list follows" + CRLF, "".join(f"{c}\r\n" for c in caps).encode() + b".\r\n"]

    def _authorization_stls(self, arg: str) -> list[Reply]:
        if self.tls:
            return self._bad("TLS is already active")
        if not self.tls_available:
            return self._bad("STLS is not available on this server")
        return [b"+OK Begin TLS negotiation" + CRLF, StartTls()]

    def tls_started(self) -> None:
        """TLS is on (RFC 2595 §4: start again from a fresh AUTHORIZATION state)."""
        self.tls = True
        self.plaintext_ok = True
        self.user = None

    def _transaction_capa(self, arg: str) -> list[Reply]:
        return self._authorization_capa(arg)

    def _authorization_user(self, arg: str) -> list[Reply]:
        if not arg:
            return self._bad("USER needs a name")
        self.user = arg.strip()
        return [b"+OK send PASS" + CRLF]

    def _authorization_pass(self, arg: str) -> list[Reply]:
        if self.user is None:
            return self._bad("send USER first")
        user, self.user = self.user, None
        if not self.plaintext_ok:
            return [NEED_TLS]
        return self._logon(user, arg)

    def _authorization_auth(self, arg: str) -> list[Reply]:
        mechanism, _, initial = arg.strip().partition(" ")
        if mechanism.upper() != "PLAIN":
            return self._bad("unsupported authentication mechanism; this server offers PLAIN")
        if not self.plaintext_ok:
            return [NEED_TLS]
        if not initial:
            self.sasl_pending = True
            return [b"+ " + CRLF]
        return self._sasl_response(initial.encode())

    def _sasl_response(self, response: bytes) -> list[Reply]:
        try:
            message = sasl.decode_response(response)
            if isinstance(message, sasl.Cancel):
                return [b"-ERR authentication cancelled" + CRLF]
            user, password = sasl.plain(message)
        except sasl.Malformed as e:
            return self._bad(str(e))
        except sasl.NotAuthorized as e:
            self.bad += 1
            return [f"-ERR [AUTH] {e}".encode() + CRLF]
        return self._logon(user, password)

    def _logon(self, user: str, password: str) -> list[Reply]:
        try:
            drop = self.authenticate(user, password)
        except InUse:
            return [b"-ERR [IN-USE] the maildrop is in use by another session" + CRLF]
        if drop is None:
            self.bad += 1
            return [b"-ERR [AUTH] invalid user name or password" + CRLF]
        self.drop = drop
        self.items = drop.items()
        self.state = "TRANSACTION"
        return [f"+OK {len(self.items)} message(s)".encode() + CRLF]

    def _authorization_quit(self, arg: str) -> list[Reply]:
        self.closed = True
        return [f"+OK {self.server_name} POP3 server signing off".encode() + CRLF]

    # -- TRANSACTION ------------------------------------------------------------------------
    def _number(self, arg: str) -> int | None:
        try:
            n = int(arg.split()[0])
        except (ValueError, IndexError):
            return None
        if 1 <= n <= len(self.items) and n not in self.deleted:
            return n
        return None

    def _transaction_stat(self, arg: str) -> list[Reply]:
        live = [it for n, it in enumerate(self.items, 1) if n not in self.deleted]
        return [f"+OK {len(live)} {sum(i.size for i in live)}".encode() + CRLF]

    def _listing(self, arg: str, what: Callable[[int, Item], str]) -> list[Reply]:
        if arg.strip():
            n = self._number(arg)
            if n is None:
                return [b"-ERR no such message" + CRLF]
            return [f"+OK {what(n, self.items[n - 1])}".encode() + CRLF]
        lines = [f"{what(n, it)}\r\n" for n, it in enumerate(self.items, 1) if n not in self.deleted]
        return [b"+OK" + CRLF, ("".join(lines) + ".\r\n").encode()]

    def _transaction_list(self, arg: str) -> list[Reply]:
        return self._listing(arg, lambda n, it: f"{n} {it.size}")

    def _transaction_uidl(self, arg: str) -> list[Reply]:
        assert self.drop is not None
        validity = self.drop.uidvalidity
        return self._listing(arg, lambda n, it: f"{n} {validity}.{it.uid}")

    def _transaction_retr(self, arg: str) -> list[Reply]:
        n = self._number(arg)
        if n is None:
            return [b"-ERR no such message" + CRLF]
        it = self.items[n - 1]
        assert self.drop is not None
        return [f"+OK {it.size} octets".encode() + CRLF, dot_stuffed(self.drop.content(it.uid), None)]

    def _transaction_top(self, arg: str) -> list[Reply]:
        parts = arg.split()
        n = self._number(arg)
        if n is None or len(parts) != 2 or not parts[1].isdigit():
            return [b"-ERR usage: TOP message lines" + CRLF]
        assert self.drop is not None
        return [b"+OK" + CRLF, dot_stuffed(self.drop.content(self.items[n - 1].uid), int(parts[1]))]

    def _transaction_dele(self, arg: str) -> list[Reply]:
        n = self._number(arg)
        if n is None:
            return [b"-ERR no such message" + CRLF]
        self.deleted.add(n)
        return [f"+OK message {n} deleted".encode() + CRLF]

    def _transaction_rset(self, arg: str) -> list[Reply]:
        self.deleted.clear()
        return [f"+OK {len(self.items)} message(s)".encode() + CRLF]

    def _transaction_noop(self, arg: str) -> list[Reply]:
        return [b"+OK" + CRLF]

    def _transaction_quit(self, arg: str) -> list[Reply]:
        """UPDATE: the messages marked with DELE go now, and only now."""
        assert self.drop is not None
        self.closed = True
        try:
            self.drop.delete([self.items[n - 1].uid for n in sorted(self.deleted)])
        except Exception as e:  # noqa: BLE001 - RFC 1939: report it; the messages stay
            self._release()
            return [f"-ERR some deleted messages not removed ({type(e).__name__})".encode() + CRLF]
        self._release()
        return [f"+OK {self.server_name} POP3 server signing off".encode() + CRLF]

    def connection_lost(self) -> None:
        """No UPDATE state: nothing marked is deleted."""
        self._release()


NEED_TLS = b"-ERR [AUTH] passwords are accepted from this address only over TLS: send STLS first" + CRLF


def dot_stuffed(chunks: Iterator[bytes], top_lines: int | None) -> Iterator[bytes]:
    """A message as a POP3 multi-line response: lines starting with '.' get another one, the
    end is CRLF.CRLF; with ``top_lines``, the header and that many body lines only."""
    pending = b""
    in_body = False
    body_lines = 0
    for chunk in chunks:
        pending += chunk
        lines = pending.split(b"\r\n")
        pending = lines.pop()
        out = []
        for line in lines:
            if top_lines is not None and in_body:
                if body_lines >= top_lines:
                    continue
                body_lines += 1
            if line == b"" and not in_body:
                in_body = True
            out.append(b"." + line if line.startswith(b".") else line)
        if out:
            yield b"\r\n".join(out) + b"\r\n"
        if top_lines is not None and in_body and body_lines >= top_lines:
            pending = b""
            for _ in chunks:  # drain, so the store's reader finishes (and checks its hash)
                pass
            break
    if pending and not (top_lines is not None and in_body and body_lines >= top_lines):
        yield (b"." + pending if pending.startswith(b".") else pending) + b"\r\n"
    yield b".\r\n"
