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
- Store calls run in worker threads, never on the event loop.
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import socket
from typing import Any

from mailkeep.store import delivery
from mailkeep.store.errors import StoreError, ecUnknownUser
from mailkeep.store.store import Store

DEFAULT_SIZE_LIMIT = 32 * 1024 * 1024


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


def default_server_name() -> str:
    return socket.getfqdn() or "localhost"
