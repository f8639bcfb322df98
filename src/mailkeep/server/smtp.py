"""SMTP in (aiosmtpd does the protocol; this module is the policy: who may receive, and when
a message counts as accepted).

Invariants:
- ``250`` after DATA only once :func:`mailkeep.store.delivery.deliver` has returned
  "delivered" for every accepted recipient: the message is durable in the store.
- Recipients are checked at RCPT time, one reply each: unknown -> ``550 5.1.1``; another
  domain (relaying) -> ``550 5.7.1``; a dismounted database, a mailbox in transit or a
  directory hiccup -> ``451`` for that recipient only, so the client retries just that one.
- A failure after DATA that is temporary for any recipient answers ``451``: the client
  retries the whole message; nothing is lost (a recipient that already has it may get a
  second copy, since the new Received field makes the bytes differ).
- Store calls run in worker threads, never on the event loop (the password check too).
- AUTH (PLAIN, LOGIN) is offered and accepted only over TLS (STARTTLS) or from loopback;
  elsewhere ``538 5.7.11``. An authenticated client may send to this server's domains only:
  there is no outbound delivery, and RCPT for another domain says so (``550 5.7.1``).
- PIPELINING (RFC 2920) is announced: aiosmtpd reads and answers one command line at a time
  from a buffered stream, so pipelined commands are answered in order. After STARTTLS,
  aiosmtpd drops what the client sent ahead (RFC 3207 §4.2).
- Bounds (:class:`MailkeepSMTP`): connections per source address and in all (``421 4.7.0``
  and closed); a command line must be complete ``command_timeout`` after its first byte and
  message data must average ``min_rate`` after that grace (``421 4.4.2`` and closed); an idle
  client is closed after aiosmtpd's ``timeout``. Passwords are never logged.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import socket
from collections.abc import Callable
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import MISSING, SMTP, AuthResult, LoginPassword, Session

from mailkeep.server import sasl
from mailkeep.server.tcp import ConnectionLimiter, Limits, is_loopback
from mailkeep.store import delivery
from mailkeep.store.errors import StoreError, ecUnknownUser
from mailkeep.store.store import Store

DEFAULT_SIZE_LIMIT = 32 * 1024 * 1024
IDLE_TIMEOUT = 300.0  # RFC 5321 §4.5.3.2.7: a server waits at least five minutes for a command


class DeliveryHandler:
    def __init__(self, store: Store, *, server_name: str, domains: set[str]) -> None:
        self.store = store
        self.server_name = server_name
        self.domains = {d.lower() for d in domains}

    async def handle_RCPT(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str],
    ) -> str:
        domain = address.rpartition("@")[2].lower()
        if "@" not in address or domain not in self.domains:
            if session.authenticated:
                return f"550 5.7.1 <{address}>: this server does not deliver to other domains (no outbound connector)"
            ours = ", ".join(sorted(self.domains))
            return f"550 5.7.1 <{address}>: relaying denied (this server accepts mail for {ours})"
        loop = asyncio.get_running_loop()
        try:
            target = await loop.run_in_executor(None, delivery.resolve, self.store, address)
            self.store.handle(target.info)  # a dismounted database: retry later
        except StoreError as e:
            if e.code == ecUnknownUser:
                return f"550 5.1.1 <{address}>: no such mailbox here"
            return f"451 4.2.1 <{address}>: mailbox temporarily unavailable ({e.name})"
        except Exception as e:  # noqa: BLE001 - the directory or store hiccuped: the client retries
            return f"451 4.3.0 <{address}>: temporary failure ({type(e).__name__})"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_EHLO(  # noqa: N802 - aiosmtpd's hook name
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str],
    ) -> list[str]:
        """aiosmtpd handles pipelined commands but does not say so: add PIPELINING."""
        session.host_name = hostname  # with this hook, aiosmtpd leaves it to us
        return [*responses[:-1], "250-PIPELINING", responses[-1]]

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogateescape")
        peer = session.peer[0] if session.peer else "unknown"
        received = (
            f"Received: from {session.host_name or 'unknown'} ([{peer}])\r\n"
            f"\tby {self.server_name} (Mailkeep) with ESMTP;\r\n"
            f"\t{email.utils.formatdate(localtime=False)}\r\n"
        ).encode()
        loop = asyncio.get_running_loop()
        try:
            report = await loop.run_in_executor(
                None, lambda: delivery.deliver(self.store, io.BytesIO(received + raw), list(envelope.rcpt_tos),
                                               sender=envelope.mail_from or ""))
        except Exception as e:  # noqa: BLE001 - nothing acknowledged: the client keeps the message
            return f"451 4.3.0 temporary failure, try again later ({type(e).__name__})"
        failed = [o for o in report.outcomes if o.status != delivery.DELIVERED]
        if any(o.status == delivery.TEMPORARY for o in failed):
            return f"451 4.3.0 temporary failure for {', '.join(o.recipient for o in failed)}; try again later"
        if failed and len(failed) == len(report.outcomes):
            return f"554 5.6.0 message refused: {failed[0].message}"
        return "250 2.0.0 OK: delivered"


class _Session(Session):
    """aiosmtpd's session without the deprecation warning it logs each time its own AUTH sets
    ``login_data`` (on stderr, at every login)."""

    @property
    def login_data(self) -> Any:
        return self._login_data

    @login_data.setter
    def login_data(self, value: Any) -> None:
        self._login_data = value


class MailkeepSMTP(SMTP):
    """aiosmtpd's protocol with Mailkeep's bounds and AUTH; one instance per connection."""

    def __init__(self, handler: Any, *, limiter: ConnectionLimiter, check_password: Callable[[str, str], bool],
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._limiter = limiter
        self._limits = limiter.limits
        self._check_password = check_password
        self._address: str | None = None  # counted in the limiter
        self._refusal: str | None = None
        self._line_timer: asyncio.TimerHandle | None = None
        self._in_data = False
        self._data_start = 0.0
        self._data_octets = 0
        self._why_closing = "idle for too long"
        self._tls_up = False
        self._lost = False

    def _create_session(self) -> Session:
        return _Session(self.loop)

    # -- admission --------------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        if self._address is None and self._refusal is None:  # not again after STARTTLS
            peer = transport.get_extra_info("peername")
            address = str(peer[0]) if peer else "?"
            self._refusal = self._limiter.admit(address)
            if self._refusal is None:
                self._address = address
            self._auth_require_tls = not is_loopback(address)
        elif self._original_transport is not None:  # the TLS handshake is done; aiosmtpd drops what came ahead
            self._tls_up = True
            self._cancel_line_timer()
        super().connection_made(transport)

    async def _handle_client(self) -> None:
        """The session; when it ends, however it ends, the connection is closed and its slot
        freed (a TLS handshake cut short can leave aiosmtpd's connection_lost uncalled)."""
        try:
            if self._refusal is not None:
                await self.push(f"421 4.7.0 {self.hostname} {self._refusal}")
                return
            await super()._handle_client()
        finally:
            self._release()
            for t in (self.transport, self._original_transport):
                if t is not None and not t.is_closing():
                    t.close()

    def _release(self) -> None:
        self._cancel_line_timer()
        if self._address is not None:
            self._limiter.release(self._address)
            self._address = None
            self._refusal = "closed"  # never counted again

    def connection_lost(self, error: Exception | None) -> None:
        if self._lost:
            return
        self._lost = True
        self._release()
        super().connection_lost(error)

    # -- deadlines ----------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        now = self.loop.time()
        if self._in_data:
            self._data_octets += len(data)
            deadline = self._data_start + self._limits.command_timeout + self._data_octets / self._limits.min_rate
            self._why_closing = f"message data arriving slower than {self._limits.min_rate:g} octets per second"
            self._reset_timeout(max(min(deadline, now + self._timeout_duration) - now, 0.001))
        elif not data.endswith(b"\n"):
            if self._line_timer is None:  # a line has begun and is not complete
                self._line_timer = self.loop.call_later(self._limits.command_timeout, self._too_slow)
        elif self._line_timer is not None:
            self._line_timer.cancel()
            self._line_timer = None
        super().data_received(data)

    def _cancel_line_timer(self) -> None:
        if self._line_timer is not None:
            self._line_timer.cancel()
            self._line_timer = None

    async def smtp_STARTTLS(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's command method
        """aiosmtpd's, plus the end of a session whose client left during the handshake: on
        Python 3.11 the handshake then "succeeds" with no connection behind it, and aiosmtpd
        would wait on it forever, its connection slot never released."""
        self._cancel_line_timer()  # what was sent ahead is discarded, not a line in progress
        try:  # aiosmtpd's own handshake timeout is 60 s whatever the deadline is
            await asyncio.wait_for(super().smtp_STARTTLS(arg), self._limits.command_timeout)
        except TimeoutError:
            self._abandon(TimeoutError("the TLS handshake did not complete in time"))
            return
        if self._tls_protocol is not None and not self._tls_up:
            self._abandon(ConnectionResetError("the client left during the TLS handshake"))

    def _abandon(self, why: Exception) -> None:
        if self._original_transport is not None:
            self._original_transport.close()
        if self.transport is not None:
            self.transport.close()
        self.connection_lost(why)

    def _too_slow(self) -> None:
        self._line_timer = None
        self._why_closing = f"command line not completed within {self._limits.command_timeout:g} seconds"
        self._timeout_cb()

    def _timeout_cb(self) -> None:
        handshaking = self._tls_protocol is not None and not self._tls_up
        if self.transport is not None and not self.transport.is_closing() and not handshaking:
            self._writer.write(f"421 4.4.2 {self.hostname} {self._why_closing}; closing\r\n".encode())
        super()._timeout_cb()  # type: ignore[no-untyped-call]

    def _reset_timeout(self, duration: float | None = None) -> None:
        if duration is None:
            self._why_closing = "idle for too long"
        super()._reset_timeout(duration)

    async def smtp_DATA(self, arg: str) -> None:  # noqa: N802 - aiosmtpd's command method
        self._in_data, self._data_start, self._data_octets = True, self.loop.time(), 0
        try:
            await super().smtp_DATA(arg)
        finally:
            self._in_data = False

    async def _call_handler_hook(self, command: str, *args: Any) -> Any:
        if command == "DATA":  # the whole message is in: delivering is our time, not the client's
            self._in_data = False
            self._reset_timeout()
        return await super()._call_handler_hook(command, *args)

    # -- AUTH ---------------------------------------------------------------------------------
    async def _verify(self, user: str, password: str) -> AuthResult:
        loop = asyncio.get_running_loop()
        if await loop.run_in_executor(None, self._check_password, user, password):
            return AuthResult(success=True, auth_data=LoginPassword(user.encode(), b""))
        return AuthResult(success=False, handled=False)  # aiosmtpd answers 535 5.7.8

    async def _response(self, initial: str | None, challenge: str) -> bytes | None:
        """A SASL response (initial, or after a 334 challenge); None when already answered."""
        if initial is None:
            blob = await self.challenge_auth(challenge)  # answers 501 itself for "*" and bad base64
            return None if blob is MISSING else blob
        try:
            decoded = sasl.decode_response(initial)
        except sasl.Malformed as e:
            await self.push(f"501 5.5.2 {e}")
            return None
        if isinstance(decoded, sasl.Cancel):
            await self.push("501 5.7.0 Auth aborted")
            return None
        return decoded

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802 - aiosmtpd's mechanism hook
        message = await self._response(args[1] if len(args) > 1 else None, "")
        if message is None:
            return AuthResult(success=False, handled=True)
        try:
            user, password = sasl.plain(message)
        except sasl.Malformed as e:
            await self.push(f"501 5.5.2 {e}")
            return AuthResult(success=False, handled=True)
        except sasl.NotAuthorized as e:
            await self.push(f"535 5.7.8 {e}")
            return AuthResult(success=False, handled=True)
        return await self._verify(user, password)

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:  # noqa: N802 - aiosmtpd's mechanism hook
        login = await self._response(args[1] if len(args) > 1 else None, self.AuthLoginUsernameChallenge)
        if login is None:
            return AuthResult(success=False, handled=True)
        password = await self._response(None, self.AuthLoginPasswordChallenge)
        if password is None:
            return AuthResult(success=False, handled=True)
        try:
            return await self._verify(login.decode("utf-8"), password.decode("utf-8"))
        except UnicodeDecodeError:
            await self.push("501 5.5.2 user name and password must be UTF-8")
            return AuthResult(success=False, handled=True)


class SmtpController(Controller):
    """aiosmtpd's threaded controller making :class:`MailkeepSMTP` sessions that share one limiter."""

    def __init__(self, handler: Any, *, limits: Limits, check_password: Callable[[str, str], bool],
                 **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self.limiter = ConnectionLimiter(limits)
        self.check_password = check_password

    def factory(self) -> MailkeepSMTP:
        return MailkeepSMTP(self.handler, limiter=self.limiter, check_password=self.check_password,
                            **self.SMTP_kwargs)


def default_server_name() -> str:
    return socket.getfqdn() or "localhost"
