"""POP3 over asyncio: moves bytes between sockets and :class:`~mailkeep.server.pop3.Pop3Session`,
and adapts a mailbox's Inbox to the session's maildrop.

Invariants: store calls (authentication, listing, reading, deleting) run in worker threads,
never on the event loop; a message is written as it is read, chunk by chunk; an idle
connection is closed after ``IDLE_TIMEOUT`` (RFC 1939's ten minutes), a command line that
takes longer than ``Limits.command_timeout`` to arrive ends the session; user names and
passwords are never logged. Passwords are taken from loopback clients, and from others only
after STLS; after STLS the plaintext the client sent ahead is discarded unread.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
from collections.abc import Iterator

from mailkeep.server.pop3 import MAX_LINE, InUse, Item, Maildrop, Pop3Session, StartTls
from mailkeep.server.tcp import Limits, ThreadedServer, TooSlow, is_loopback, peer_address, read_line, start_tls
from mailkeep.store.errors import StoreError
from mailkeep.store.mailbox import Mailbox, open_mailbox
from mailkeep.store.store import Store

IDLE_TIMEOUT = 600.0


class InboxMaildrop:
    """A mailbox's Inbox as a POP3 maildrop, locked against a second POP3 session."""

    def __init__(self, mailbox: Mailbox, locks: set[str], lock: threading.Lock) -> None:
        self.mailbox = mailbox
        self._locks = locks
        self._lock = lock
        self.uidvalidity = mailbox.folder("INBOX").uidvalidity

    def items(self) -> list[Item]:
        return [Item(m.uid, m.size) for m in self.mailbox.messages("INBOX")]

    def content(self, uid: int) -> Iterator[bytes]:
        with self.mailbox.fetch("INBOX", uid) as r:
            while chunk := r.read(64 * 1024):
                yield chunk

    def delete(self, uids: list[int]) -> None:
        if uids:
            self.mailbox.delete("INBOX", uids)

    def release(self) -> None:
        with self._lock:
            self._locks.discard(self.mailbox.guid)


class Pop3Server(ThreadedServer):
    line_limit = MAX_LINE + 2

    def __init__(self, store: Store, host: str, port: int, *, limits: Limits | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        super().__init__(host, port, limits=limits, tls=tls)
        self.store = store
        self._locks: set[str] = set()
        self._lock = threading.Lock()

    def refusal(self, why: str) -> bytes:
        return f"-ERR [SYS/TEMP] {why}".encode() + b"\r\n"

    def _authenticate(self, user: str, password: str) -> Maildrop | None:
        entry = self.store.directory.authenticate(user, password)
        if entry is None:
            return None
        try:
            mb = open_mailbox(self.store, entry.dn)
        except StoreError:
            return None
        with self._lock:
            if mb.guid in self._locks:
                raise InUse()
            self._locks.add(mb.guid)
        try:
            return InboxMaildrop(mb, self._locks, self._lock)
        except BaseException:
            with self._lock:
                self._locks.discard(mb.guid)
            raise

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        session = Pop3Session(self._authenticate, server_name=self.store.server.name,
                              plaintext_ok=is_loopback(peer_address(writer)), tls_available=self.tls is not None)
        try:
            writer.write(session.greeting())
            await writer.drain()
            while not session.closed:
                try:
                    line = await read_line(reader, idle=IDLE_TIMEOUT, command_timeout=self.limits.command_timeout)
                except asyncio.LimitOverrunError:
                    writer.write(b"-ERR line too long; goodbye\r\n")
                    break
                except TooSlow as e:
                    writer.write(f"-ERR {e}; goodbye".encode() + b"\r\n")
                    break
                except (TimeoutError, asyncio.IncompleteReadError):
                    break
                for reply in await loop.run_in_executor(None, session.handle, line):
                    if isinstance(reply, bytes):
                        writer.write(reply)
                        continue
                    if isinstance(reply, StartTls):
                        assert self.tls is not None
                        await start_tls(reader, writer, self.tls, self.limits.command_timeout)
                        session.tls_started()
                        continue
                    while (chunk := await loop.run_in_executor(None, next, reply, None)) is not None:
                        writer.write(chunk)
                        await writer.drain()
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            await loop.run_in_executor(None, session.connection_lost)
            writer.close()

