"""The service host of `mailkeep serve`: one process owning the data folder's store.

Invariants:
- Start: set up a new server on first start (and print, once, a generated administrator
  password, stored hashed); mount the databases meant to be mounted and marked "mount at
  start-up"; start the periodic agents; listen on loopback by default.
- ``<data>/serve.json`` names the running process and its addresses while it runs (the
  contract of ARCHITECTURE §10) and is removed at a clean stop.
- Stop (SIGTERM, SIGINT): stop accepting, finish running deliveries, dismount every database
  Clean Shutdown (the administrator's mount intent is kept for the next start).
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import threading
from dataclasses import dataclass
from typing import TextIO

from aiosmtpd.controller import Controller

from mailkeep.admin import roles
from mailkeep.server import tls as tls_files
from mailkeep.server.http import ApiServer
from mailkeep.server.imap_server import ImapServer
from mailkeep.server.pop3_server import Pop3Server
from mailkeep.server.scheduler import Scheduler
from mailkeep.server.smtp import DEFAULT_SIZE_LIMIT, IDLE_TIMEOUT, DeliveryHandler, SmtpController
from mailkeep.server.tcp import Limits, is_loopback
from mailkeep.store.maintenance import Maintenance
from mailkeep.store.server import Server
from mailkeep.store.setup import default_server_name, setup_server
from mailkeep.store.store import Store

STATE = "serve.json"
TOKEN = "serve.token"  # the service account's bearer token for local administrative commands (mode 0600)
DEFAULT_DOMAIN = "mailkeep.test"  # RFC 2606: never a real domain; `mailkeep setup --domain` sets yours


@dataclass
class Options:
    bind: str = "127.0.0.1"
    smtp_port: int = 2525
    pop3_port: int = 1110
    imap_port: int = 1143
    http_port: int = 8080
    https: bool | None = None  # None: HTTPS exactly when the bind address is not loopback
    domain: str = DEFAULT_DOMAIN
    size_limit: int = DEFAULT_SIZE_LIMIT
    maintenance_interval: float = 15 * 60.0
    # hostile-client bounds, per protocol (server/tcp.py, server/smtp.py)
    max_connections_per_address: int = 20
    max_connections: int = 500
    command_timeout: float = 60.0  # a command line's first byte to its end; also the TLS handshake
    min_data_rate: float = 1024.0  # octets/s a message or literal must average after that grace


class Service:
    def __init__(self, data: str, options: Options | None = None, *, out: TextIO | None = None) -> None:
        self.data = os.path.abspath(data)
        self.options = options or Options()
        self.out = out
        self.store: Store | None = None
        self.maintenance: Maintenance | None = None
        self.smtp: Controller | None = None
        self.pop3: Pop3Server | None = None
        self.imap: ImapServer | None = None
        self.http: ApiServer | None = None
        self.scheduler: Scheduler | None = None
        self.https = False

    def _say(self, text: str) -> None:
        if self.out is not None:
            print(text, file=self.out, flush=True)

    def _first_start(self) -> None:
        res = setup_server(self.data, domain=self.options.domain, server=default_server_name())
        password = secrets.token_urlsafe(12)
        from mailkeep.directory.setup import open_directory

        d = open_directory(self.data)
        try:
            d.add_user("Administrator", password_text=password, display_name="Administrator")
            for role in roles.GROUPS:  # the built-in administrator holds every role, as in a new domain
                roles.grant(d, "Administrator", role)
        finally:
            d.close()
        self._say(f"First start: server {res.server.name} set up in {self.data} (domain {self.options.domain}).")
        self._say(f"Administrator password (shown this once, stored hashed): {password}")

    def start(self) -> None:
        if not os.path.exists(Server.state_path(self.data)):
            self._first_start()
        store = Store.open(self.data)
        self.store = store
        try:
            mounted = store.mount_intended(startup=True)
            self.maintenance = Maintenance(store, interval=self.options.maintenance_interval)
            self.maintenance.start()
            tls = tls_files.load(self.data, store.server.name)
            limits = Limits(self.options.max_connections_per_address, self.options.max_connections,
                            self.options.command_timeout, self.options.min_data_rate)
            handler = DeliveryHandler(store, server_name=store.server.name, domains={store.directory.domain})
            self.smtp = SmtpController(
                handler, limits=limits, check_password=lambda u, p: store.directory.authenticate(u, p) is not None,
                hostname=self.options.bind, port=self.options.smtp_port, data_size_limit=self.options.size_limit,
                server_hostname=store.server.name, tls_context=tls.context, require_starttls=False,
                timeout=IDLE_TIMEOUT)
            self.smtp.start()
            self.pop3 = Pop3Server(store, self.options.bind, self.options.pop3_port, limits=limits, tls=tls.context)
            self.pop3.start()
            self.imap = ImapServer(store, self.options.bind, self.options.imap_port, limits=limits, tls=tls.context)
            self.imap.start()
            roles.ensure_groups(store.directory)
            token = secrets.token_urlsafe(32)
            _write_private(os.path.join(self.data, TOKEN), token)
            self.https = self.options.https if self.options.https is not None else not is_loopback(self.options.bind)
            self.http = ApiServer(store, self.options.bind, self.options.http_port, token=token,
                                  ssl_context=tls.context if self.https else None)
            self.http.start()
            self.scheduler = Scheduler(store, self.data)
            self.scheduler.start()
        except BaseException:
            self.stop()
            raise
        self._write_state()
        self._say(f"Mailkeep server {store.server.name} running (pid {os.getpid()}), data in {self.data}")
        for info in mounted:
            self._say(f"  mounted {info.kind} {info.path_name}")
        self._say(f"  SMTP  {self.options.bind}:{self.options.smtp_port}  (mail for @{store.directory.domain})")
        self._say(f"  IMAP  {self.options.bind}:{self.options.imap_port}")
        self._say(f"  POP3  {self.options.bind}:{self.options.pop3_port}")
        made = " (self-signed, generated now)" if tls.generated else ""
        self._say(f"  TLS   STARTTLS/STLS with {tls.cert_path}{made}, SHA-256 {tls.fingerprint}")
        scheme = "https" if self.https else "http"
        self._say(f"  HTTP  {scheme}://{self.options.bind}:{self.options.http_port}/api/v1/  "
                  "(OpenAPI: /api/v1/openapi.json)")

    def _write_state(self) -> None:
        path = os.path.join(self.data, STATE)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"pid": os.getpid(), "bind": self.options.bind, "smtp": self.options.smtp_port,
                       "pop3": self.options.pop3_port, "imap": self.options.imap_port,
                       "http": self.options.http_port, "https": self.https}, f)
        os.replace(tmp, path)

    def stop(self) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler = None
        if self.http is not None:
            self.http.stop()
            self.http = None
        if self.imap is not None:
            self.imap.stop()
            self.imap = None
        if self.pop3 is not None:
            self.pop3.stop()
            self.pop3 = None
        if self.smtp is not None:
            self.smtp.stop()  # no new sessions; a delivery in flight finishes before the loop ends
            self.smtp = None
        if self.maintenance is not None:
            self.maintenance.stop()
            self.maintenance = None
        if self.store is not None:
            self.store.close()
            self.store = None
        for name in (STATE, TOKEN):
            try:
                os.unlink(os.path.join(self.data, name))
            except FileNotFoundError:
                pass
        self._say("Mailkeep server stopped; databases dismounted (Clean Shutdown).")


def _write_private(path: str, text: str) -> None:
    """Owner-only from the first byte (no window in which another user could read it)."""
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def run(data: str, options: Options, out: TextIO) -> int:
    """Serve until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    svc = Service(data, options, out=out)
    svc.start()
    try:
        while not stop.wait(3600):
            pass
    finally:
        svc.stop()
    return 0
