"""IMAP over asyncio: reads whole commands (answering ``+`` for synchronizing literals),
hands them to :class:`~mailkeep.server.imap.ImapSession` in a worker thread, and writes the
replies, streaming message contents chunk by chunk.

Invariants: a line is at most ``MAX_LINE`` octets and a literal at most ``MAX_LITERAL``
(refused with ``NO`` before the client sends it; a non-synchronizing one that is too large
ends the connection); an idle connection is closed after ``IDLE_TIMEOUT`` (RFC 3501's 30
minutes); store calls never run on the event loop; passwords are never logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from mailkeep.server.imap import Idle, ImapSession
from mailkeep.server.imap_parse import literal_size
from mailkeep.server.tcp import ThreadedServer, is_loopback
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

    def __init__(self, store: Store, host: str, port: int) -> None:
        super().__init__(host, port)
        self.store = store

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
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), IDLE_TIMEOUT)
            except asyncio.LimitOverrunError:
                writer.write(b"* BYE line too long\r\n")
                return None
            except (TimeoutError, asyncio.IncompleteReadError):
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
            buf += await reader.readexactly(n)

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
        peer = str((writer.get_extra_info("peername") or ("?",))[0])
        session = ImapSession(self._login, plaintext_ok=is_loopback(peer), server_name=self.store.server.name)
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
                    await self._write(reply, writer)
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
