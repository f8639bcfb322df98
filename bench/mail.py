"""The mail service over its sockets: Mailkeep (``mailkeep serve``) against Dovecot, on the same
disk, with the same messages and the same clients.

- Mailkeep: a data folder made by ``setup_server`` under bench/out/, mailbox-enabled users, then
  ``python -m mailkeep --data DIR serve`` in a subprocess on free loopback ports. SMTP ``250``
  after DATA means the delivery's transaction is fsync'd (docs/server.md).
- Dovecot (Debian's ``dovecot-imapd`` and ``dovecot-lmtpd``): a separate instance started by
  this benchmark with its own generated configuration (``dovecot -c CONF -F``; base_dir,
  state_dir, log and maildirs under the same temporary folder; listening on 127.0.0.1 only;
  users in a passwd-file; ``mail_fsync = always`` so that a ``250`` means the message file,
  its directory and the indexes are fsync'd, the promise Mailkeep makes). Dovecot has no SMTP
  server: its delivery protocol is LMTP (SMTP's sibling for the last hop, RFC 2033), spoken by
  the same client code (``smtplib.LMTP``). It is stopped by its master's pid at the end.

Workloads (every one against both servers; Mailkeep and Dovecot alternate which goes first):

- Delivery, durable: CLIENTS parallel client threads, each with one connection delivering to
  its own mailbox, messages of 5 KB and of 50 KB (decimal; base64 text in CRLF lines, a unique
  Message-ID each), PER_CLIENT[size] x CLIENTS messages per size taken from one counter
  (bench/driver.py), each message one MAIL/RCPT/DATA transaction. Before the clock starts
  every connection is open and has delivered one message (which allocates the mailbox).
  Reported: messages/s and MB/s. Afterwards every mailbox is read over IMAP and must hold
  exactly the Message-IDs that were acknowledged, each once: a lost or duplicated message
  fails the benchmark.
- IMAP FETCH: CORPUS messages of CORPUS_SIZE bytes delivered to one mailbox (CLIENTS clients
  in parallel, not timed; checked by Message-ID like the above), then on one connection LOGIN
  and SELECT INBOX (timed once) and PASSES passes each of ``FETCH 1:* (BODY.PEEK[HEADER])``
  and ``FETCH 1:* (BODY.PEEK[])``, timed from sending the command to its tagged OK. Every pass
  must return CORPUS literals. Reported: the median seconds per pass and messages/s.

Besides wall time, the CPU time of the server (its processes, from /proc: Mailkeep is one
process; Dovecot is its master and every child, live or reaped) and of this client process is
taken around each measurement, to say whether a server is bound by its CPU or by waiting.

The clients are Python threads in this process, on the same machine as the server: with two
CPUs they take CPU from the server under test, the same for both servers (their share is in
the "where the time goes" table).

Run alone: ``.venv/bin/python bench/mail.py`` (needs ``apt-get install dovecot-imapd
dovecot-lmtpd``; run as root, Dovecot delivers as the ``mail`` user).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from delivery import body_of, filesystem_of
from driver import drive

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "out")
ROOT = os.path.dirname(HERE)

CLIENTS = 10
SIZES = (5_000, 50_000)
PER_CLIENT = {5_000: 300, 50_000: 150}  # messages per client (on average: one shared counter)
CORPUS = 10_000
CORPUS_SIZE = 5_000
PASSES = 3  # FETCH passes per server and item
REPEATS = 3  # delivery rounds per server and size
GUARD_SECONDS = 600.0  # a delivery round that has not finished by then fails the run (lower PER_CLIENT)
DOMAIN = "mailkeep.test"
PASSWORD = "bench-Pw-1"
SENDER = "bench@example.org"
SIZE_LABEL = {5_000: "5 KB", 50_000: "50 KB"}
DOVECOT = "/usr/sbin/dovecot"
MAIL_USER = "mail"  # Dovecot refuses to deliver as root: maildirs belong to this account
FETCHES = (("header", "BODY.PEEK[HEADER]"), ("full", "BODY.PEEK[]"))
LITERAL = re.compile(rb"\{(\d+)\}\r\n$")
MESSAGE_ID = re.compile(rb"^Message-ID:[ \t]*(<[^>\r\n]*>)", re.I | re.M)


def missing_prerequisites() -> str | None:
    """What is missing to run this benchmark, and how to get it; None when all is there."""
    if not os.path.exists(DOVECOT):
        return ("Dovecot is not installed (the mail benchmark's baseline): run "
                "'apt-get install -y dovecot-imapd dovecot-lmtpd' as root, then run the benchmark again.")
    if os.geteuid() != 0:
        return ("the mail benchmark starts its own Dovecot instance, which needs root (it delivers as the "
                f"'{MAIL_USER}' account): run it as root.")
    try:
        pwd.getpwnam(MAIL_USER)
    except KeyError:
        return f"there is no '{MAIL_USER}' account for Dovecot's maildirs: create it (useradd -r {MAIL_USER})."
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes], what: str, logs: list[str], timeout: float = 60.0) -> None:
    """Until ``port`` accepts connections; if the process exits or ``timeout`` passes first, an
    error carrying the end of its logs (a bad configuration is reported there)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            tails = []
            for path in logs:
                try:
                    with open(path, errors="replace") as f:
                        tails.append(f"{path}:\n{f.read()[-2000:]}")
                except OSError:
                    pass
            raise RuntimeError(f"{what} did not start listening on 127.0.0.1:{port} "
                               f"(exit status {proc.poll()}); the end of its logs:\n" + "\n".join(tails))
        time.sleep(0.05)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of ``pid`` and all its descendants, live or already reaped:
    each live process's own time plus what its reaped children left in its cutime/cstime."""
    children: dict[int, list[int]] = {}
    times: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        p = int(name)
        children.setdefault(int(fields[1]), []).append(p)
        times[p] = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += times.get(p, 0)
        todo.extend(children.get(p, []))
    return total / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has been busy (all CPUs; /proc/stat: user, nice, system,
    irq, softirq, steal)."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    return sum(int(fields[i]) for i in (0, 1, 2, 5, 6, 7)) / os.sysconf("SC_CLK_TCK")


class Meter:
    """Wall time and CPU time over one measurement: the server's processes, this client process
    (all its threads), and what the rest of the machine used meanwhile — on a machine shared with
    other work, the figure that says whether a run was disturbed."""

    def __init__(self, server_pid: int) -> None:
        self.pid = server_pid
        self.figures: dict[str, float] = {}

    def __enter__(self) -> Meter:
        self._start = (time.perf_counter(), process_cpu(self.pid), time.process_time(), machine_busy())
        return self

    def __exit__(self, *exc: object) -> None:
        wall, server, client, busy = (b - a for a, b in zip(self._start, (
            time.perf_counter(), process_cpu(self.pid), time.process_time(), machine_busy()), strict=True))
        self.figures = {"wall_seconds": wall, "server_cpu_seconds": server, "client_cpu_seconds": client,
                        "other_cpu_seconds": max(0.0, busy - server - client)}


# -- messages ----------------------------------------------------------------------------------
def message(size: int, body: bytes, mid: str, to: str, subject: str) -> bytes:
    """A message of exactly ``size`` bytes (as sent; each server adds its trace fields)."""
    head = (
        f"From: Bench <{SENDER}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
        f"Message-ID: {mid}\r\nDate: Wed, 25 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    out = head + body[:size - len(head) - 2] + b"\r\n"
    assert len(out) == size, (len(out), size)
    return out


def mid_of(kind: str, client: int, n: int) -> str:
    return f"<{kind}.{client:02d}.{n:06d}@bench.invalid>"


# -- the servers -------------------------------------------------------------------------------
class MailServer:
    """What the workloads need of a server: where to deliver, where to read, whose CPU to count."""

    name = ""
    deliver_port = 0
    imap_port = 0
    pid = 0

    def connect_delivery(self) -> smtplib.SMTP:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError


class Mailkeep(MailServer):
    name = "Mailkeep"

    def __init__(self, root: str, users: list[str]) -> None:
        from mailkeep.directory import tasks
        from mailkeep.directory.setup import open_directory
        from mailkeep.store.setup import setup_server

        self.data = os.path.join(root, "data")
        result = setup_server(self.data, domain=DOMAIN, server="BENCH")
        directory = open_directory(self.data)
        try:
            for u in users:
                directory.add_user(u, password_text=PASSWORD)
                tasks.mailbox_enable(directory, u, result.mailbox_store.dn)
        finally:
            directory.close()
        self.deliver_port, self.imap_port = free_port(), free_port()
        self.log_path = os.path.join(root, "serve.log")
        cmd = [sys.executable, "-m", "mailkeep", "--data", self.data, "serve", "--bind", "127.0.0.1",
               "--smtp", str(self.deliver_port), "--imap", str(self.imap_port), "--pop3", str(free_port())]
        usage = subprocess.run([sys.executable, "-m", "mailkeep", "serve", "--help"], capture_output=True,
                               text=True, cwd=ROOT, timeout=60).stdout
        if "--http" in usage:  # every listener on a free port: never collide with a server already running
            cmd += ["--http", str(free_port())]
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=ROOT)
        self.pid = self.proc.pid
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(os.path.join(self.data, "serve.json")):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mailkeep serve did not start (see {self.log_path})")
                time.sleep(0.05)
            wait_port(self.imap_port, self.proc, "mailkeep serve", [self.log_path])
        except BaseException:
            self.stop()
            raise

    def connect_delivery(self) -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.deliver_port, timeout=120)
        c.ehlo("bench.example.org")
        return c

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise RuntimeError(f"mailkeep serve (pid {self.pid}) did not stop within 120 s of SIGTERM; "
                                   f"killed (see {self.log_path})") from None


class Dovecot(MailServer):
    """A private Dovecot instance: nothing of it is shared with a system Dovecot (own base_dir,
    state_dir, log, ports, users; the configuration file includes nothing from /etc)."""

    name = "Dovecot"

    def __init__(self, root: str, users: list[str]) -> None:
        mail = pwd.getpwnam(MAIL_USER)
        self.root = root
        for d in ("run", "state", "mail", "home"):
            os.makedirs(os.path.join(root, d), exist_ok=True)
        for d in ("mail", "home"):
            os.chown(os.path.join(root, d), mail.pw_uid, mail.pw_gid)
        os.chmod(root, 0o755)  # Dovecot's auth and mail processes run unprivileged: they must reach their files
        with open(os.path.join(root, "users"), "w") as f:
            for u in users:
                f.write(f"{u}:{{PLAIN}}{PASSWORD}:{mail.pw_uid}:{mail.pw_gid}::{root}/home/{u}::\n")
        self.deliver_port, self.imap_port = free_port(), free_port()
        self.log_path = os.path.join(root, "dovecot.log")
        self.conf = os.path.join(root, "dovecot.conf")
        with open(self.conf, "w") as f:
            f.write(self.config())
        open(self.log_path, "wb").close()
        stderr_path = os.path.join(root, "dovecot.stderr")  # errors before the log is set up
        with open(stderr_path, "wb") as err:
            self.proc = subprocess.Popen([DOVECOT, "-c", self.conf, "-F"], stdout=subprocess.DEVNULL, stderr=err)
        self.pid = self.proc.pid
        try:
            for port in (self.imap_port, self.deliver_port):
                wait_port(port, self.proc, "dovecot", [stderr_path, self.log_path])
        except BaseException:
            self.stop()
            raise

    def config(self) -> str:
        r = self.root
        return f"""# generated by bench/mail.py: a private instance, nothing shared with /etc/dovecot
base_dir = {r}/run
state_dir = {r}/state
log_path = {r}/dovecot.log
instance_name = mailkeep-bench-{os.getpid()}
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = 1
mail_location = maildir:{r}/mail/%n
mail_fsync = always
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%n {r}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {r}/users
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {self.deliver_port}
  }}
}}
"""

    def connect_delivery(self) -> smtplib.SMTP:
        c = smtplib.LMTP("127.0.0.1", self.deliver_port, timeout=120)
        c.ehlo("bench.example.org")  # LHLO
        return c

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
                raise RuntimeError(f"dovecot (pid {self.pid}) did not stop within 60 s of SIGTERM; killed") from None


# -- IMAP --------------------------------------------------------------------------------------
class Imap:
    """A minimal IMAP client that reads responses as a stream: each literal is read by its
    announced length and handed to a callback, so that the client costs little next to the
    server even for 10,000 bodies (imaplib builds a list of every response)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=600)
        self.f = self.sock.makefile("rb", buffering=1 << 20)
        self.tags = 0
        greeting = self.f.readline(65536)
        if not greeting.startswith(b"* OK"):
            raise RuntimeError(f"IMAP server on port {port} did not greet with * OK: {greeting!r}")

    def run(self, command: str, on_literal: Callable[[bytes], None] | None = None) -> dict[str, Any]:
        """Send ``command``, read up to its tagged reply (which must be OK). Returns the untagged
        lines that carried no literal, and the number and bytes of literals."""
        self.tags += 1
        tag = f"b{self.tags}".encode()
        self.sock.sendall(tag + b" " + command.encode() + b"\r\n")
        literals = size = 0
        lines: list[bytes] = []
        while True:
            line = self.f.readline(1 << 20)
            if not line:
                raise ConnectionError(f"IMAP server closed the connection during {command!r}")
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(f"IMAP {command!r} failed: {line!r}")
                return {"lines": lines, "literals": literals, "bytes": size}
            m = LITERAL.search(line)
            if m is None:
                if len(lines) < 1000:
                    lines.append(line)
                continue
            n = int(m.group(1))
            data = self.f.read(n)
            if len(data) != n:
                raise ConnectionError(f"IMAP server sent {len(data)} of a {n}-byte literal during {command!r}")
            literals += 1
            size += n
            if on_literal is not None:
                on_literal(data)

    def login(self, user: str) -> None:
        self.run(f'LOGIN {user} "{PASSWORD}"')

    def select(self, folder: str = "INBOX") -> int:
        reply = self.run(f"SELECT {folder}")
        for line in reply["lines"]:
            m = re.match(rb"\* (\d+) EXISTS", line)
            if m:
                return int(m.group(1))
        raise RuntimeError(f"SELECT {folder} gave no EXISTS: {reply['lines'][:5]}")

    def close(self) -> None:
        try:
            self.run("LOGOUT")
        except (OSError, RuntimeError):
            pass
        self.f.close()
        self.sock.close()


def verify(server: MailServer, user: str, sent: list[str]) -> int:
    """Every acknowledged Message-ID is in ``user``'s INBOX exactly once, and nothing else is."""
    c = Imap(server.imap_port)
    try:
        c.login(user)
        exists = c.select()
        found: Counter[str] = Counter()

        def take(head: bytes) -> None:
            m = MESSAGE_ID.search(head)
            found[m.group(1).decode() if m else "(none)"] += 1

        if exists:
            c.run("FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])", take)
    finally:
        c.close()
    want = Counter(sent)
    missing, extra = want - found, found - want
    if missing or extra:
        raise AssertionError(
            f"{server.name} lost or duplicated mail in {user}'s INBOX: {sum(want.values())} acknowledged, "
            f"{exists} there; missing {sum(missing.values())} (e.g. {list(missing)[:3]}), unexpected or "
            f"duplicated {sum(extra.values())} (e.g. {list(extra)[:3]})")
    return exists


# -- workloads ---------------------------------------------------------------------------------
def _quit(c: smtplib.SMTP) -> None:
    try:
        c.quit()
    except (smtplib.SMTPException, OSError):
        c.close()


def deliver_round(server: MailServer, size: int, kind: str, users: list[str], per_client: int,
                  sent: dict[str, list[str]], seconds: float = GUARD_SECONDS) -> dict[str, Any]:
    """CLIENTS connections, client i delivering to users[i]; the clock covers only the measured
    messages (every connection is open and has delivered one message before it starts).
    ``sent`` collects the Message-IDs the server acknowledged, for :func:`verify`."""
    body = body_of(size)
    conns: list[smtplib.SMTP] = []
    lock = threading.Lock()

    def send(c: smtplib.SMTP, i: int, n: int, tag: str = kind) -> None:
        to = f"{users[i]}@{DOMAIN}"
        mid = mid_of(tag, i, n)
        refused = c.sendmail(SENDER, [to], message(size, body, mid, to, f"{tag} {n}"))
        if refused:
            raise AssertionError(f"{server.name} refused {to}: {refused}")
        with lock:
            sent[users[i]].append(mid)

    try:
        for i in range(CLIENTS):
            conns.append(server.connect_delivery())
            send(conns[i], i, 0, kind + "-warm-up")  # allocates the mailbox, outside the clock
        with Meter(server.pid) as meter:
            r = drive(CLIENTS, CLIENTS * per_client, seconds, lambda i: conns[i], send)
    finally:
        for c in conns:
            _quit(c)
    n, s = r["operations"], r["seconds"]
    if n != CLIENTS * per_client:
        raise RuntimeError(f"{server.name} took {n} of {CLIENTS * per_client} messages of {size} bytes in "
                           f"{s:.0f} s, the guard; lower PER_CLIENT in bench/mail.py for this machine")
    return meter.figures | {"messages": n, "seconds": s, "messages_s": n / s, "mb_s": n * size / s / 1e6}


def fill(server: MailServer, user: str, count: int, size: int) -> dict[str, Any]:
    """``count`` messages into ``user``'s INBOX over CLIENTS parallel delivery connections,
    then checked by Message-ID."""
    body = body_of(size)
    to = f"{user}@{DOMAIN}"
    ids: list[str] = []
    lock = threading.Lock()

    def one(c: smtplib.SMTP, i: int, n: int) -> None:
        mid = mid_of("corpus", i, n)
        refused = c.sendmail(SENDER, [to], message(size, body, mid, to, f"corpus message {i}.{n}"))
        if refused:
            raise AssertionError(f"{server.name} refused {to}: {refused}")
        with lock:
            ids.append(mid)

    r = drive(CLIENTS, count, GUARD_SECONDS * 2, lambda i: server.connect_delivery(), one, _quit)
    if r["operations"] != count:
        raise RuntimeError(f"{server.name}: only {r['operations']} of {count} corpus messages delivered in "
                           f"{r['seconds']:.0f} s")
    verify(server, user, ids)
    return {"messages": count, "seconds": r["seconds"]}


def _median_run(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
    return sorted(runs, key=lambda x: x[key])[len(runs) // 2]


def fetch_all(servers: list[MailServer], user: str, count: int, passes: int = PASSES,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """One connection per server (LOGIN + SELECT timed), then for each FETCH ``passes`` passes,
    the servers taking turns, so that a disturbance of the machine falls on both."""
    conns: dict[str, Imap] = {}
    out: dict[str, dict[str, Any]] = {s.name: {} for s in servers}
    try:
        for s in servers:
            t0 = time.perf_counter()
            conns[s.name] = c = Imap(s.imap_port)
            c.login(user)
            exists = c.select()
            out[s.name]["select_seconds"] = time.perf_counter() - t0
            if exists != count:
                raise AssertionError(f"{s.name}: the INBOX of {user} holds {exists} messages, expected {count}")
        for key, item in FETCHES:
            runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
            for k in range(passes):
                for s in servers if k % 2 == 0 else servers[::-1]:
                    with Meter(s.pid) as meter:
                        reply = conns[s.name].run(f"FETCH 1:* ({item})")
                    if reply["literals"] != count:
                        raise AssertionError(f"{s.name}: FETCH 1:* ({item}) returned {reply['literals']} "
                                             f"literals, expected {count}")
                    runs[s.name].append(meter.figures | {"bytes": reply["bytes"]})
            for s in servers:
                med = _median_run(runs[s.name], "wall_seconds")
                walls = [x["wall_seconds"] for x in runs[s.name]]
                out[s.name][key] = {"runs": runs[s.name], "median": med, "seconds": med["wall_seconds"],
                                    "min_seconds": min(walls), "max_seconds": max(walls),
                                    "messages_s": count / med["wall_seconds"],
                                    "mb_s": med["bytes"] / med["wall_seconds"] / 1e6}
                log(f"  {s.name:<8} FETCH 1:* ({item}): {med['wall_seconds']:.2f} s per pass "
                    f"({count / med['wall_seconds']:,.0f} messages/s; passes {', '.join(f'{w:.2f}' for w in walls)})")
    finally:
        for c in conns.values():
            c.close()
    return out


# -- the run -----------------------------------------------------------------------------------
def measure(log: Callable[[str], None] = print) -> dict[str, Any]:
    problem = missing_prerequisites()
    if problem:
        raise SystemExit(problem)
    os.makedirs(OUT, exist_ok=True)
    if filesystem_of(OUT) == "tmpfs":
        raise SystemExit("bench/out/ is on a tmpfs: fsync would cost nothing there; run from a working tree "
                         "on a real disk.")
    work = tempfile.mkdtemp(prefix="mail-", dir=OUT)
    os.chmod(work, 0o755)  # Dovecot's unprivileged processes must reach their files below it
    users = [f"d{i}" for i in range(CLIENTS)] + ["corpus"]
    servers: list[MailServer] = []
    result: dict[str, Any] = {"delivery": [], "verified": {}, "fill": {}}
    done = False
    try:
        servers.append(Mailkeep(os.path.join(work, "mailkeep"), users))
        servers.append(Dovecot(os.path.join(work, "dovecot"), users))
        sent: dict[str, dict[str, list[str]]] = {s.name: {u: [] for u in users} for s in servers}
        for k, size in enumerate(SIZES):
            runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
            for rep in range(REPEATS):
                for s in servers if (k + rep) % 2 == 0 else servers[::-1]:
                    r = deliver_round(s, size, f"d{size // 1000}k-r{rep}", users, PER_CLIENT[size], sent[s.name])
                    runs[s.name].append(r)
                    log(f"  {s.name:<8} delivery {SIZE_LABEL[size]:>5} x {CLIENTS} clients: "
                        f"{r['messages_s']:7.1f} messages/s, {r['mb_s']:5.1f} MB/s ({r['messages']} in "
                        f"{r['seconds']:.1f} s; CPU: server {r['server_cpu_seconds']:.1f} s, client "
                        f"{r['client_cpu_seconds']:.1f} s, other processes {r['other_cpu_seconds']:.1f} s)")
            row: dict[str, Any] = {"size": size}
            for s in servers:
                rates = [x["messages_s"] for x in runs[s.name]]
                med = _median_run(runs[s.name], "messages_s")
                row[s.name] = {"runs": runs[s.name], "median": med, "messages_s": med["messages_s"],
                               "mb_s": med["mb_s"], "min_messages_s": min(rates), "max_messages_s": max(rates)}
            result["delivery"].append(row)
        for s in servers:
            n = sum(verify(s, u, sent[s.name][u]) for u in users[:CLIENTS])
            result["verified"][s.name] = n
            log(f"  {s.name:<8} every acknowledged message is there once, by Message-ID over IMAP ({n:,})")
        for s in servers[::-1]:
            r = fill(s, "corpus", CORPUS, CORPUS_SIZE)
            result["fill"][s.name] = r
            log(f"  {s.name:<8} corpus of {CORPUS:,} x {SIZE_LABEL[CORPUS_SIZE]} delivered and checked "
                f"({r['seconds']:.1f} s, {CORPUS / r['seconds']:.0f} messages/s)")
        result["fetch"] = fetch_all(servers, "corpus", CORPUS, log=log)
        for s in servers:
            s.stop()
        done = True
    finally:
        for s in servers:
            try:
                s.stop()
            except RuntimeError as e:
                log(str(e))
        if done:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"mail benchmark failed: its folders and the servers' logs (mailkeep/serve.log, "
                f"dovecot/dovecot.log) are kept in {work} for inspection; delete it afterwards.")
    result["dovecot_version"] = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True).stdout.strip()
    return result


def markdown(result: dict[str, Any]) -> str:
    def span(lo: float, hi: float, fmt: str) -> str:
        return f" ({lo:{fmt}}–{hi:{fmt}})"

    lines = [
        "| workload | Mailkeep | Dovecot | Mailkeep/Dovecot |",
        "|---|---:|---:|---:|",
    ]
    for r in result["delivery"]:
        m, d = r["Mailkeep"], r["Dovecot"]
        what = f"delivery, {SIZE_LABEL[r['size']]}, {CLIENTS} clients (SMTP / LMTP)"
        lines.append(f"| {what}: messages/s | {m['messages_s']:,.0f}"
                     f"{span(m['min_messages_s'], m['max_messages_s'], ',.0f')} | {d['messages_s']:,.0f}"
                     f"{span(d['min_messages_s'], d['max_messages_s'], ',.0f')} "
                     f"| {m['messages_s'] / d['messages_s']:.2f} |")
        lines.append(f"| {what}: MB/s | {m['mb_s']:,.1f} | {d['mb_s']:,.1f} | {m['mb_s'] / d['mb_s']:.2f} |")
    f = result["fetch"]
    m, d = f["Mailkeep"], f["Dovecot"]
    lines.append(f"| LOGIN + SELECT INBOX of {CORPUS:,} messages: seconds | {m['select_seconds']:.2f} "
                 f"| {d['select_seconds']:.2f} | {d['select_seconds'] / m['select_seconds']:.2f} |")
    for key, item in FETCHES:
        m, d = f["Mailkeep"][key], f["Dovecot"][key]
        what = f"`FETCH 1:* ({item})`, {CORPUS:,} × {SIZE_LABEL[CORPUS_SIZE]}"
        lines.append(f"| {what}: seconds per pass "
                     f"| {m['seconds']:.2f}{span(m['min_seconds'], m['max_seconds'], '.2f')} "
                     f"| {d['seconds']:.2f}{span(d['min_seconds'], d['max_seconds'], '.2f')} "
                     f"| {d['seconds'] / m['seconds']:.2f} |")
        lines.append(f"| {what}: messages/s | {m['messages_s']:,.0f} | {d['messages_s']:,.0f} "
                     f"| {m['messages_s'] / d['messages_s']:.2f} |")
        if key == "full":
            lines.append(f"| {what}: MB/s | {m['mb_s']:,.1f} | {d['mb_s']:,.1f} | {m['mb_s'] / d['mb_s']:.2f} |")
    lines += [
        "",
        "Where the time goes (the median run of each; CPU seconds over the measurement, and in parentheses per "
        "message in ms: the server's processes, this benchmark's client threads, and every other process of the "
        "machine meanwhile):",
        "",
        "| workload | Mailkeep wall s | server CPU | client CPU | other CPU "
        "| Dovecot wall s | server CPU | client CPU | other CPU |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def cells(x: dict[str, Any], n: int) -> str:
        return (f"{x['wall_seconds']:.2f} | {x['server_cpu_seconds']:.2f} ({x['server_cpu_seconds'] / n * 1e3:.2f}) "
                f"| {x['client_cpu_seconds']:.2f} ({x['client_cpu_seconds'] / n * 1e3:.2f}) "
                f"| {x['other_cpu_seconds']:.2f}")

    for r in result["delivery"]:
        m, d = r["Mailkeep"]["median"], r["Dovecot"]["median"]
        lines.append(f"| delivery, {SIZE_LABEL[r['size']]}, {m['messages']:,} messages "
                     f"| {cells(m, m['messages'])} | {cells(d, d['messages'])} |")
    for key, item in FETCHES:
        m, d = f["Mailkeep"][key]["median"], f["Dovecot"][key]["median"]
        lines.append(f"| `FETCH 1:* ({item})`, {CORPUS:,} messages | {cells(m, CORPUS)} | {cells(d, CORPUS)} |")
    v = result["verified"]
    lines += ["", f"Checked after the delivery rounds: every acknowledged message is in its mailbox exactly once "
                  f"(by Message-ID, over IMAP): {v['Mailkeep']:,} in Mailkeep, {v['Dovecot']:,} in Dovecot "
                  f"(warm-up messages included); each {CORPUS:,}-message corpus likewise. "
                  f"Dovecot {result['dovecot_version']}."]
    return "\n".join(lines)


if __name__ == "__main__":
    import run

    info = run.machine_info()
    print(f"Machine: `nproc` = {info['nproc']} ({info['cpu']}), {info['memory_gib']} GiB RAM, virtualization: "
          f"{info['virtualization']}, Linux {info['kernel']}; disk: {info['disk']}; {info['filesystem']}.\n")
    print(markdown(measure()))
