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

from mailkeep.server.imap import ImapSession
from mailkeep.server.imap_parse import literal_size
from mailkeep.server.tcp import ThreadedServer, is_loopback
from mailkeep.store.errors import StoreError
from mailkeep.store.mailbox import Mailbox, open_mailbox
from mailkeep.store.store import Store

MAX_LINE = 8192
MAX_LITERAL = 32 * 1024 * 1024
MAX_LITERAL_BEFORE_LOGIN = 4096  # a user name or password; nobody unauthenticated gets 32 MiB held
IDLE_TIMEOUT = 30 * 60.0


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
                    if isinstance(reply, bytes):
                        writer.write(reply)
                        continue
                    while (chunk := await loop.run_in_executor(None, next, reply, None)) is not None:
                        writer.write(chunk)
                        await writer.drain()
                await writer.drain()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
