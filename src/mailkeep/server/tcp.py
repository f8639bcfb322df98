"""A TCP server on its own asyncio event loop in a background thread: what POP3 and IMAP
share, with the bounds every client meets. Subclasses implement :meth:`ThreadedServer.client`
and :meth:`ThreadedServer.refusal`. ``start`` returns once the socket listens (or raises why
it could not); ``stop`` closes the listener and ends the loop.

Invariants (hostile clients):
- At most ``Limits.per_address`` connections from one source address and ``Limits.total`` in
  all are served at once, per listener; one more is answered with the protocol's refusal
  line and closed before anything else is read. SMTP keeps the same counts with its own
  :class:`ConnectionLimiter` (see ``server/smtp.py``).
- :func:`read_line` waits up to ``idle`` for a command to begin and then up to
  ``Limits.command_timeout`` for the rest of its line: a client dribbling a line a byte at a
  time is cut off (:class:`TooSlow`) however patient it is.
- :func:`read_exactly` (literals, message data) needs the bytes at ``Limits.min_rate`` on
  average after a grace of ``command_timeout``: a slow trickle ends, a slow link does not.
- :func:`start_tls` discards whatever the client sent after the command that started TLS and
  before the handshake (RFC 3207 §4.2, RFC 2595 §3.1; the CVE-2011-0411 class of injection).
"""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
import threading
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    per_address: int = 20
    total: int = 500
    command_timeout: float = 60.0  # from a command's first byte to its line end; also the TLS handshake
    min_rate: float = 1024.0  # octets per second a literal or message must average after that grace


class ConnectionLimiter:
    """Counts the connections being served, by source address. Thread-safe: SMTP, IMAP and
    POP3 each have one, used from their own event loop."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._by_address: dict[str, int] = {}
        self._total = 0
        self._lock = threading.Lock()

    def admit(self, address: str) -> str | None:
        """None and counted, or the reason it is refused (not counted)."""
        with self._lock:
            if self._total >= self.limits.total:
                return "too many connections; try again later"
            if self._by_address.get(address, 0) >= self.limits.per_address:
                return "too many connections from your address"
            self._by_address[address] = self._by_address.get(address, 0) + 1
            self._total += 1
            return None

    def release(self, address: str) -> None:
        with self._lock:
            n = self._by_address.get(address, 0) - 1
            if n > 0:
                self._by_address[address] = n
            else:
                self._by_address.pop(address, None)
            self._total = max(0, self._total - 1)

    def count(self, address: str | None = None) -> int:
        with self._lock:
            return self._total if address is None else self._by_address.get(address, 0)


class TooSlow(TimeoutError):
    """A command line or a literal did not arrive in time (not the same as an idle client)."""


def peer_address(writer: asyncio.StreamWriter) -> str:
    return str((writer.get_extra_info("peername") or ("?",))[0])


class LoopThread:
    """An asyncio event loop in a thread of its own, for a listener of the service process
    (IMAP, POP3, the HTTP API). :meth:`start` returns once the listener is open, raising
    what opening it raised (a port in use); :meth:`stop` ends the loop and closes it."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        pass

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mailkeep-{type(self).__name__}", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._open())
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._error = e
            self._loop = None  # stop() has nothing to stop
            loop.close()
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        try:
            loop.run_until_complete(self._close())
        finally:
            loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)
        self._thread = None


class ThreadedServer(LoopThread):
    line_limit = 8192

    def __init__(self, host: str, port: int, *, limits: Limits | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self.host = host
        self.port = port
        self.limits = limits or Limits()
        self.tls = tls
        self.limiter = ConnectionLimiter(self.limits)
        self._server: asyncio.AbstractServer | None = None

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def refusal(self, why: str) -> bytes:
        """The line sent to a connection over the limits before closing it."""
        raise NotImplementedError

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        address = peer_address(writer)
        why = self.limiter.admit(address)
        if why is not None:
            try:
                writer.write(self.refusal(why))
                await asyncio.wait_for(writer.drain(), 5)
            except (OSError, TimeoutError):
                pass
            writer.close()
            return
        try:
            await self.client(reader, writer)
        finally:
            self.limiter.release(address)
            writer.close()

    async def _open(self) -> None:
        self._server = await asyncio.start_server(self._accept, self.host, self.port, limit=self.line_limit)

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def read_line(reader: asyncio.StreamReader, *, idle: float, command_timeout: float) -> bytes:
    """One line up to ``\\n``: its first byte within ``idle`` seconds (TimeoutError), the rest
    within ``command_timeout`` of that (:class:`TooSlow`). EOF: IncompleteReadError; a line
    over the reader's limit: LimitOverrunError (the bytes stay unread)."""
    first = await asyncio.wait_for(reader.read(1), idle)
    if not first:
        raise asyncio.IncompleteReadError(b"", 1)
    if first == b"\n":
        return first
    try:
        rest = await asyncio.wait_for(reader.readuntil(b"\n"), command_timeout)
    except TimeoutError as e:
        raise TooSlow(f"command line not completed within {command_timeout:g} seconds") from e
    except asyncio.IncompleteReadError as e:
        raise asyncio.IncompleteReadError(first + e.partial, None) from e
    return first + rest


async def read_exactly(reader: asyncio.StreamReader, n: int, limits: Limits) -> bytes:
    """``n`` octets, which must keep coming: by ``grace + received / min_rate`` seconds after
    the start, else :class:`TooSlow`. EOF: IncompleteReadError."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    parts: list[bytes] = []
    got = 0
    while got < n:
        left = start + limits.command_timeout + got / limits.min_rate - loop.time()
        if left <= 0:
            raise TooSlow(f"data arriving slower than {limits.min_rate:g} octets per second")
        try:
            chunk = await asyncio.wait_for(reader.read(min(n - got, 64 * 1024)), left)
        except TimeoutError as e:
            raise TooSlow(f"data arriving slower than {limits.min_rate:g} octets per second") from e
        if not chunk:
            raise asyncio.IncompleteReadError(b"".join(parts), n)
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)


async def start_tls(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext,
                    handshake_timeout: float) -> int:
    """Upgrade the connection (after the server's "go ahead" reply has been written): returns
    how many plaintext octets the client had sent ahead, which are discarded unread.

    The buffer is cleared and the transport switched with no ``await`` in between, so no
    plaintext can slip in; later plaintext reaches the TLS layer and fails the handshake."""
    await writer.drain()
    buffered: bytearray = reader._buffer  # type: ignore[attr-defined]  # no public way to discard
    discarded = len(buffered)
    buffered.clear()
    # StreamWriter.start_tls's drain() returns without suspending (we just drained): the raw
    # transport's reading is paused by loop.start_tls before any other callback can run.
    plain = writer.transport
    await writer.start_tls(context, ssl_handshake_timeout=handshake_timeout)
    if writer.transport is None:  # Python 3.11: the client left mid-handshake and start_tls "succeeded"
        writer._transport = plain  # so that close() works
        raise ConnectionResetError("the client left during the TLS handshake")
    # CPython gh-114921: the reader keeps the plaintext transport for flow control; point it at TLS
    reader._transport = writer.transport  # type: ignore[attr-defined]
    return discarded


def is_loopback(peer: str) -> bool:
    try:
        return ipaddress.ip_address(peer).is_loopback
    except ValueError:
        return False
