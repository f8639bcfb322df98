"""IMAP over asyncio: reads whole commands (answering ``+`` for synchronizing literals),
hands them to :class:`~mailkeep.server.imap.ImapSession` in a worker thread, and writes the
replies, streaming message contents chunk by chunk.

Invariants: a line is at most ``MAX_LINE`` octets and a literal at most ``MAX_LITERAL``
(refused with ``NO`` before the client sends it; a non-synchronizing one that is too large
ends the connection); an idle connection is closed after ``IDLE_TIMEOUT`` (RFC 3501's 30
minutes), a command line slower than ``Limits.command_timeout`` or a literal trickling in
below ``Limits.min_rate`` ends it with ``* BYE``; store calls never run on the event loop;
passwords are never logged. After STARTTLS, what the client sent ahead is discarded unread.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator

from mailkeep.server.imap import Continue, Idle, ImapSession, StartTls
from mailkeep.server.imap_parse import literal_size
from mailkeep.server.tcp import (
    Limits,
    ThreadedServer,
    TooSlow,
    is_loopback,
    peer_address,
    read_exactly,
    read_line,
    start_tls,
)
from mailkeep.store.errors import StoreError
from mailkeep.store.mailbox import Mailbox, open_mailbox
from mailkeep.store.store import Store

MAX_LINE = 8192
MAX_LITERAL = 32 * 1024 * 1024
MAX_LITERAL_BEFORE_LOGIN = 4096  # a user name or password; nobody unauthenticated gets 32 MiB held
IDLE_TIMEOUT = 30 * 60.0
IDLE_POLL = 2.0  # seconds between looks at the selected folder while a client idles


class ImapServer(ThreadedServer):
    line_limit = MAX_LINE

    def __init__(self, store: Store, host: str, port: int, *, limits: Limits | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(host, port, limits=limits, tls=tls)
        self.store = store

    def refusal(self, why: str) -> bytes:
        return f"* BYE {why}".encode() + b"\r\n"

    async def _line(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes | None:
        """One line, or None (after a BYE saying why, where there is one) when the connection should end."""
        try:
            return await read_line(reader, idle=IDLE_TIMEOUT, command_timeout=self.limits.command_timeout)
        except asyncio.LimitOverrunError:
            writer.write(b"* BYE line too long\r\n")
        except TooSlow as e:
            writer.write(f"* BYE {e}".encode() + b"\r\n")
        except TimeoutError:
            writer.write(b"* BYE idle for too long; logging out\r\n")
        except asyncio.IncompleteReadError:
            pass
        return None

    def _login(self, user: str, password: str) -> Mailbox | None:
        entry = self.store.directory.authenticate(user, password)
        if entry is None:
            return None
        try:
            return open_mailbox(self.store, entry.dn)
        except StoreError:
            return None

    async def _command(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limit: int = MAX_LITERAL,
    ) -> bytes | None:
        """One command with its literals, or None when the connection should end."""
        buf = b""
        while True:
            line = await self._line(reader, writer)
            if line is None:
                return None
            buf += line
            n = literal_size(line)
            if n is None:
                return buf
            tag = buf.split(b" ", 1)[0][:32]
            if n > limit:
                if line.rstrip().endswith(b"+}"):
                    writer.write(b"* BYE literal too large\r\n")
                    return None
                writer.write(tag + b" NO [TOOBIG] literal larger than %d octets\r\n" % limit)
                await writer.drain()
                return b""
            if not line.rstrip().endswith(b"+}"):
                writer.write(b"+ Ready for literal data\r\n")
                await writer.drain()
            try:
                buf += await read_exactly(reader, n, self.limits)
            except TooSlow as e:
                writer.write(f"* BYE {e}".encode() + b"\r\n")
                return None

    async def _write(self, reply: bytes | Iterator[bytes], writer: asyncio.StreamWriter) -> None:
        if isinstance(reply, bytes):
            writer.write(reply)
            return
        loop = asyncio.get_running_loop()
        while (chunk := await loop.run_in_executor(None, next, reply, None)) is not None:
            writer.write(chunk)
            await writer.drain()

    async def _idle(
        self, session: ImapSession, idle: Idle, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
    ) -> bool:
        """Until the client says DONE: report changes as they happen. False: connection over."""
        loop = asyncio.get_running_loop()
        writer.write(b"+ idling\r\n")
        await writer.drain()
        deadline = loop.time() + IDLE_TIMEOUT
        pending = asyncio.ensure_future(reader.readuntil(b"\n"))
        try:
            while loop.time() < deadline:
                done, _ = await asyncio.wait({pending}, timeout=IDLE_POLL)
                if done:
                    try:
                        line = pending.result()
                    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                        return False
                    for reply in await loop.run_in_executor(None, session.idle_done, idle.tag, line):
                        await self._write(reply, writer)
                    await writer.drain()
                    return True
                for reply in await loop.run_in_executor(None, session.idle_poll):
                    await self._write(reply, writer)
                await writer.drain()
            return False
        finally:
            if not pending.done():
                pending.cancel()

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        session = ImapSession(self._login, plaintext_ok=is_loopback(peer_address(writer)),
                              server_name=self.store.server.name, tls_available=self.tls is not None)
        try:
            writer.write(session.greeting())
            await writer.drain()
            while not session.closed:
                limit = MAX_LITERAL_BEFORE_LOGIN if session.state == "NOT_AUTH" else MAX_LITERAL
                cmd = await self._command(reader, writer, limit)
                if cmd is None:
                    break
                if not cmd:
                    continue
                for reply in await loop.run_in_executor(None, session.handle, cmd):
                    if isinstance(reply, Idle):
                        if not await self._idle(session, reply, reader, writer):
                            return
                        continue
                    if isinstance(reply, StartTls):
                        assert self.tls is not None
                        await start_tls(reader, writer, self.tls, self.limits.command_timeout)
                        session.tls_started()
                        continue
                    if isinstance(reply, Continue):
                        await writer.drain()
                        line = await self._line(reader, writer)
                        if line is None:
                            return
                        for r in await loop.run_in_executor(None, session.authenticate_response, reply.tag, line):
                            await self._write(r, writer)
                        continue
                    await self._write(reply, writer)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
