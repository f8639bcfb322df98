"""TLS and authentication over real sockets: the generated certificate, STARTTLS/STLS on SMTP,
IMAP and POP3 with clients that verify it, plaintext sent ahead of the handshake discarded,
IMAP AUTHENTICATE / POP3 AUTH / SMTP AUTH, and passwords refused in the clear from a client
that is not on loopback (over a Unix socket pair, whose peer is no loopback address)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import imaplib
import io
import ipaddress
import logging
import os
import poplib
import smtplib
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mailkeep.directory import tasks
from mailkeep.directory.setup import open_directory
from mailkeep.server import tls
from mailkeep.server.imap import ImapSession
from mailkeep.server.pop3 import Pop3Session, StartTls
from mailkeep.server.service import Options, Service
from mailkeep.store.setup import setup_server
from tests.server.test_serve import free_port


@dataclass
class Running:
    svc: Service
    options: Options
    data: Path
    banner: str

    @property
    def context(self) -> ssl.SSLContext:
        """A client context that trusts exactly the server's certificate file."""
        return ssl.create_default_context(cafile=str(self.data / "tls" / "cert.pem"))


def make_data(path: Path) -> Path:
    res = setup_server(str(path), domain="contoso.com", server="EX1")
    d = open_directory(str(path))
    try:
        for name in ("alice", "bob"):
            d.add_user(name, password_text="pw")
            tasks.mailbox_enable(d, name, res.mailbox_store.dn)
        d.add_user("carol", password_text="pw")
        d.set_disabled("carol", True)
    finally:
        d.close()
    return path


def run_service(data: Path, **limits: Any) -> Running:
    ports = {"smtp_port": free_port(), "imap_port": free_port(), "pop3_port": free_port()}
    if hasattr(Options, "http_port"):
        ports["http_port"] = free_port()
    options = Options(domain="contoso.com", **ports, **limits)
    out = io.StringIO()
    svc = Service(str(data), options, out=out)
    svc.start()
    return Running(svc, options, data, out.getvalue())


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    r = run_service(make_data(tmp_path / "data"))
    try:
        yield r
    finally:
        r.svc.stop()


def b64(s: bytes) -> bytes:
    return base64.b64encode(s)


# --- the certificate -------------------------------------------------------------------------------------------


def test_the_certificate_is_generated_once_private_and_shown_in_the_banner(tmp_path: Path) -> None:
    running = run_service(make_data(tmp_path / "data"))
    running.svc.stop()
    cert, key = running.data / "tls" / "cert.pem", running.data / "tls" / "key.pem"
    assert os.stat(key).st_mode & 0o777 == 0o600
    der = ssl.PEM_cert_to_DER_cert(cert.read_text())
    fp = ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    lines = running.banner.splitlines()
    assert f"  TLS   STARTTLS/STLS with {cert} (self-signed, generated now), SHA-256 {fp}" in lines
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == ["EX1", "localhost"]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]
    assert sorted(os.listdir(running.data / "tls")) == ["cert.pem", "key.pem"]  # no temporary file left
    # a second start keeps the pair
    again = run_service(running.data)
    try:
        assert f"  TLS   STARTTLS/STLS with {cert}, SHA-256 {fp}" in again.banner.splitlines()
    finally:
        again.svc.stop()


def test_an_administrators_certificate_is_used_and_never_overwritten(tmp_path: Path) -> None:
    folder = tmp_path / "tls"
    folder.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mail.contoso.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    # only the certificate: refused, and nothing is generated over it
    with pytest.raises(tls.TlsError, match=r"key.pem is missing; put the matching file there, or remove .*cert.pem"):
        tls.load(str(tmp_path), "EX1")
    assert not (folder / "key.pem").exists()
    other = ec.generate_private_key(ec.SECP256R1())
    (folder / "key.pem").write_bytes(other.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    with pytest.raises(tls.TlsError, match="must be a matching PEM pair"):
        tls.load(str(tmp_path), "EX1")
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    loaded = tls.load(str(tmp_path), "EX1")
    assert not loaded.generated
    assert loaded.fingerprint == ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
    assert loaded.context.minimum_version == ssl.TLSVersion.TLSv1_2
    # both removed: a new self-signed pair
    os.unlink(folder / "cert.pem")
    os.unlink(folder / "key.pem")
    fresh = tls.load(str(tmp_path), "EX1")
    assert fresh.generated and fresh.fingerprint != loaded.fingerprint


# --- SMTP -----------------------------------------------------------------------------------------------------


def test_smtp_starttls_auth_and_no_relaying_for_authenticated_clients(
    running: Running, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)  # aiosmtpd logs every command line at DEBUG/INFO
    with smtplib.SMTP("127.0.0.1", running.options.smtp_port, timeout=30) as c:
        code, caps = c.ehlo("client.example.org")
        assert (code, caps) == (250, b"EX1\nSIZE 33554432\n8BITMIME\nSMTPUTF8\nSTARTTLS\nAUTH LOGIN PLAIN\n"
                                     b"PIPELINING\nHELP")  # AUTH offered in the clear: loopback
        assert c.starttls(context=running.context) == (220, b"Ready to start TLS")
        code, caps = c.ehlo("client.example.org")
        assert (code, caps) == (250, b"EX1\nSIZE 33554432\n8BITMIME\nSMTPUTF8\nAUTH LOGIN PLAIN\nPIPELINING\nHELP")
        assert c.docmd("AUTH", "PLAIN " + b64(b"\0alice\0wrong").decode()) == (
            535, b"5.7.8 Authentication credentials invalid")
        assert c.docmd("AUTH", "PLAIN " + b64(b"bob\0alice\0pw").decode()) == (
            535, b"5.7.8 alice may not act as bob (proxy authorization is not supported)")
        assert c.docmd("AUTH", "PLAIN " + b64(b"\0carol\0pw").decode()) == (
            535, b"5.7.8 Authentication credentials invalid")  # a disabled account
        assert c.docmd("AUTH", "PLAIN !!") == (501, b"5.5.2 the response is not valid base64")
        assert c.docmd("AUTH", "PLAIN") == (334, b"")
        assert c.docmd("*") == (501, b"5.7.0 Auth aborted")
        assert c.docmd("AUTH", "PLAIN") == (334, b"")
        assert c.docmd(b64(b"alice\0alice\0pw").decode()) == (235, b"2.7.0 Authentication successful")
        assert c.docmd("AUTH", "PLAIN") == (503, b"Already authenticated")
        assert c.docmd("MAIL FROM:<alice@contoso.com>") == (250, b"OK")
        assert c.docmd("RCPT TO:<someone@elsewhere.org>") == (
            550, b"5.7.1 <someone@elsewhere.org>: this server does not deliver to other domains "
                 b"(no outbound connector)")
        assert c.docmd("RCPT TO:<bob@contoso.com>") == (250, b"2.1.5 OK")
        assert c.docmd("DATA")[0] == 354
        c.send(b"Subject: tls\r\nMessage-ID: <tls1@x>\r\n\r\nover TLS\r\n.\r\n")
        assert c.getreply() == (250, b"2.0.0 OK: delivered")
    with smtplib.SMTP("127.0.0.1", running.options.smtp_port, timeout=30) as c:
        c.starttls(context=running.context)
        c.ehlo("client.example.org")
        assert c.login("bob", "pw") == (235, b"2.7.0 Authentication successful")  # smtplib picks LOGIN or PLAIN
    with smtplib.SMTP("127.0.0.1", running.options.smtp_port, timeout=30) as c:
        c.ehlo("client.example.org")
        assert c.docmd("AUTH", "LOGIN") == (334, b64(b"User Name\0"))
        assert c.docmd(b64(b"alice").decode()) == (334, b64(b"Password\0"))
        assert c.docmd(b64(b"pw").decode()) == (235, b"2.7.0 Authentication successful")  # loopback: no TLS needed
    with smtplib.SMTP("127.0.0.1", running.options.smtp_port, timeout=30) as c:  # not authenticated
        c.ehlo("client.example.org")
        assert c.docmd("MAIL FROM:<x@example.org>") == (250, b"OK")
        assert c.docmd("RCPT TO:<someone@elsewhere.org>") == (
            550, b"5.7.1 <someone@elsewhere.org>: relaying denied (this server accepts mail for contoso.com)")
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "PLAIN" in logged  # the AUTH lines were logged, sanitized:
    for secret in (b64(b"\0alice\0pw"), b64(b"alice\0alice\0pw"), b64(b"pw"), b64(b"\0alice\0wrong")):
        assert secret.decode() not in logged


def raw_reply(f: Any) -> list[bytes]:
    """One SMTP reply (all its lines)."""
    lines = []
    while True:
        line = f.readline()
        assert line, lines
        lines.append(line)
        if line[3:4] != b"-":
            return lines


def test_smtp_commands_sent_ahead_of_the_tls_handshake_are_discarded(running: Running) -> None:
    with socket.create_connection(("127.0.0.1", running.options.smtp_port), timeout=30) as s:
        f = s.makefile("rb")
        assert raw_reply(f)[0].startswith(b"220 EX1 ")
        s.sendall(b"EHLO x\r\n")
        raw_reply(f)
        s.sendall(b"STARTTLS\r\nMAIL FROM:<evil@example.org>\r\nRCPT TO:<alice@contoso.com>\r\n")
        assert f.readline() == b"220 Ready to start TLS\r\n"
        with running.context.wrap_socket(s, server_hostname="localhost") as t:
            tf = t.makefile("rb")
            t.sendall(b"EHLO x\r\nRCPT TO:<alice@contoso.com>\r\n")
            assert raw_reply(tf)[0] == b"250-EX1\r\n"  # the first reply over TLS answers our EHLO
            assert raw_reply(tf) == [b"503 Error: need MAIL command\r\n"]  # the injected MAIL never ran


def test_smtp_pipelined_transaction_gets_every_reply_in_order(running: Running) -> None:
    with socket.create_connection(("127.0.0.1", running.options.smtp_port), timeout=30) as s:
        f = s.makefile("rb")
        raw_reply(f)
        s.sendall(b"EHLO client.example.org\r\n")
        assert b"250-PIPELINING\r\n" in raw_reply(f)
        s.sendall(b"MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@contoso.com>\r\nRCPT TO:<nobody@contoso.com>\r\n"
                  b"RCPT TO:<bob@contoso.com>\r\nDATA\r\n")
        assert [raw_reply(f) for _ in range(5)] == [
            [b"250 OK\r\n"], [b"250 2.1.5 OK\r\n"], [b"550 5.1.1 <nobody@contoso.com>: no such mailbox here\r\n"],
            [b"250 2.1.5 OK\r\n"], [b"354 End data with <CR><LF>.<CR><LF>\r\n"]]
        s.sendall(b"Subject: p\r\nMessage-ID: <pipe@x>\r\n\r\npipelined\r\n.\r\nRSET\r\nQUIT\r\n")
        assert [raw_reply(f) for _ in range(3)] == [[b"250 2.0.0 OK: delivered\r\n"], [b"250 OK\r\n"],
                                                    [b"221 Bye\r\n"]]
    c = imaplib.IMAP4("127.0.0.1", running.options.imap_port, timeout=30)
    c.login("bob", "pw")
    c.select("INBOX")
    assert c.search(None, "HEADER", "Message-ID", "<pipe@x>")[1] == [b"1"]
    c.logout()


# --- IMAP -----------------------------------------------------------------------------------------------------

IMAP_CAPS = "IMAP4rev1 LITERAL+ UIDPLUS MOVE NAMESPACE IDLE"


def test_imap_starttls_then_login_and_authenticate(running: Running) -> None:
    c = imaplib.IMAP4("127.0.0.1", running.options.imap_port, timeout=30)
    assert c.capability() == ("OK", [f"{IMAP_CAPS} STARTTLS AUTH=PLAIN SASL-IR".encode()])
    assert c.starttls(ssl_context=running.context)[0] == "OK"
    assert c.capability() == ("OK", [f"{IMAP_CAPS} AUTH=PLAIN SASL-IR".encode()])
    with pytest.raises(imaplib.IMAP4.error, match="TLS is already active"):
        c._simple_command("STARTTLS")  # type: ignore[attr-defined]
    assert c.login("alice", "pw") == ("OK", [f"[CAPABILITY {IMAP_CAPS}] LOGIN completed".encode()])
    c.logout()
    c = imaplib.IMAP4("127.0.0.1", running.options.imap_port, timeout=30)
    c.starttls(ssl_context=running.context)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.authenticate("PLAIN", lambda _: b"\0alice\0wrong")
    with pytest.raises(imaplib.IMAP4.error, match=r"AUTHORIZATIONFAILED\] alice may not act as bob"):
        c.authenticate("PLAIN", lambda _: b"bob\0alice\0pw")
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.authenticate("PLAIN", lambda _: b"\0carol\0pw")  # disabled
    assert c.authenticate("PLAIN", lambda _: b"\0alice\0pw") == (
        "OK", [f"[CAPABILITY {IMAP_CAPS}] AUTHENTICATE completed".encode()])
    assert c.select("INBOX")[0] == "OK"
    c.logout()


class RawImap:
    def __init__(self, sock: socket.socket) -> None:
        self.s = sock
        self.f = sock.makefile("rb")

    def until(self, tag: bytes) -> list[bytes]:
        out = []
        for _ in range(100):
            line = self.f.readline()
            assert line, out
            out.append(line)
            if line.startswith(tag + b" ") or line.startswith(b"+ "):
                return out
        raise AssertionError(out)

    def cmd(self, tag: bytes, text: bytes) -> list[bytes]:
        self.s.sendall(tag + b" " + text + b"\r\n")
        return self.until(tag)

    def respond(self, tag: bytes, text: bytes) -> list[bytes]:
        """A line answering a ``+`` continuation."""
        self.s.sendall(text + b"\r\n")
        return self.until(tag)


def test_imap_authenticate_forms_and_refusals(running: Running) -> None:
    r = RawImap(socket.create_connection(("127.0.0.1", running.options.imap_port), timeout=30))
    r.f.readline()
    assert r.cmd(b"a1", b"AUTHENTICATE PLAIN") == [b"+ \r\n"]
    assert r.respond(b"a1", b"*") == [b"a1 BAD AUTHENTICATE cancelled\r\n"]
    assert r.cmd(b"a2", b"AUTHENTICATE PLAIN") == [b"+ \r\n"]
    assert r.respond(b"a2", b"not base64!") == [b"a2 BAD the response is not valid base64\r\n"]
    assert r.cmd(b"a3", b"AUTHENTICATE PLAIN " + b64(b"alice\0pw")) == [
        b"a3 BAD a PLAIN response is authzid NUL authcid NUL password\r\n"]
    assert r.cmd(b"a4", b"AUTHENTICATE CRAM-MD5") == [
        b"a4 NO unsupported authentication mechanism; this server offers PLAIN\r\n"]
    assert r.cmd(b"a5", b"AUTHENTICATE PLAIN =") == [
        b"a5 BAD a PLAIN response is authzid NUL authcid NUL password\r\n"]
    assert r.cmd(b"a6", b"AUTHENTICATE PLAIN " + b64(b"alice\0alice\0pw")) == [
        f"a6 OK [CAPABILITY {IMAP_CAPS}] AUTHENTICATE completed\r\n".encode()]
    assert r.cmd(b"a7", b"AUTHENTICATE PLAIN") == [b"a7 BAD AUTHENTICATE is not valid now (state AUTH)\r\n"]
    r.s.close()


def test_imap_commands_sent_ahead_of_the_tls_handshake_are_discarded(running: Running) -> None:
    s = socket.create_connection(("127.0.0.1", running.options.imap_port), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a STARTTLS\r\nb LOGIN alice pw\r\nc SELECT INBOX\r\n")
    assert f.readline() == b"a OK Begin TLS negotiation now\r\n"
    r = RawImap(running.context.wrap_socket(s, server_hostname="localhost"))
    assert r.cmd(b"d", b"CAPABILITY") == [f"* CAPABILITY {IMAP_CAPS} AUTH=PLAIN SASL-IR\r\n".encode(),
                                          b"d OK CAPABILITY completed\r\n"]  # no reply to b or c came first
    assert r.cmd(b"e", b"SELECT INBOX") == [b"e BAD SELECT is not valid now (state NOT_AUTH)\r\n"]
    r.s.close()


# --- POP3 -----------------------------------------------------------------------------------------------------


def test_pop3_stls_and_auth_plain(running: Running) -> None:
    c = poplib.POP3("127.0.0.1", running.options.pop3_port, timeout=30)
    assert c._longcmd("CAPA")[:2] == (b"+OK capability list follows", [  # type: ignore[attr-defined]
        b"TOP", b"UIDL", b"RESP-CODES", b"AUTH-RESP-CODE", b"STLS", b"USER", b"SASL PLAIN"])
    assert c.stls(context=running.context) == b"+OK Begin TLS negotiation"
    assert list(c.capa()) == ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "USER", "SASL"]
    with pytest.raises(poplib.error_proto, match="TLS is already active"):
        c._shortcmd("STLS")  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] alice may not act as bob"):
        c._shortcmd("AUTH PLAIN " + b64(b"bob\0alice\0pw").decode())  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] invalid user name or password"):
        c._shortcmd("AUTH PLAIN " + b64(b"\0carol\0pw").decode())  # type: ignore[attr-defined]
    assert c._shortcmd("AUTH PLAIN") == b"+ "  # type: ignore[attr-defined]
    with pytest.raises(poplib.error_proto, match="authentication cancelled"):
        c._shortcmd("*")  # type: ignore[attr-defined]
    assert c._shortcmd("AUTH PLAIN") == b"+ "  # type: ignore[attr-defined]
    assert c._shortcmd(b64(b"\0alice\0pw").decode()) == b"+OK 0 message(s)"  # type: ignore[attr-defined]
    c.quit()


def test_pop3_commands_sent_ahead_of_the_tls_handshake_are_discarded(running: Running) -> None:
    s = socket.create_connection(("127.0.0.1", running.options.pop3_port), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"STLS\r\nUSER alice\r\n")
    assert f.readline() == b"+OK Begin TLS negotiation\r\n"
    t = running.context.wrap_socket(s, server_hostname="localhost")
    tf = t.makefile("rb")
    t.sendall(b"PASS pw\r\n")
    assert tf.readline() == b"-ERR send USER first\r\n"  # the USER sent ahead never arrived
    t.sendall(b"USER alice\r\nPASS pw\r\nQUIT\r\n")
    assert [tf.readline() for _ in range(3)] == [b"+OK send PASS\r\n", b"+OK 0 message(s)\r\n",
                                                 b"+OK EX1 POP3 server signing off\r\n"]
    t.close()


def test_overlong_lines_are_refused_over_tls_too(running: Running) -> None:
    s = socket.create_connection(("127.0.0.1", running.options.imap_port), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"a STARTTLS\r\n")
    f.readline()
    t = running.context.wrap_socket(s, server_hostname="localhost")
    t.sendall(b"b NOOP " + b"x" * 10_000 + b"\r\n")
    assert t.makefile("rb").readline() == b"* BYE line too long\r\n"
    t.close()
    s = socket.create_connection(("127.0.0.1", running.options.pop3_port), timeout=30)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"STLS\r\n")
    f.readline()
    t = running.context.wrap_socket(s, server_hostname="localhost")
    t.sendall(b"NOOP " + b"x" * 1000 + b"\r\n")
    assert t.makefile("rb").readline() == b"-ERR line too long; goodbye\r\n"
    t.close()


# --- a client that is not on loopback --------------------------------------------------------------------------


def attach(loop: asyncio.AbstractEventLoop, factory: Callable[[], asyncio.BaseProtocol]) -> socket.socket:
    """A connection into a running server over a Unix socket pair: its peer is no loopback address."""
    ours, theirs = socket.socketpair()
    asyncio.run_coroutine_threadsafe(loop.connect_accepted_socket(factory, theirs), loop).result(10)
    ours.settimeout(30)
    return ours


def stream_factory(server: Any) -> Callable[[], asyncio.BaseProtocol]:
    return lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=server.line_limit), server._accept)


def test_not_on_loopback_passwords_need_tls(running: Running) -> None:
    svc = running.svc
    assert svc.imap is not None and svc.pop3 is not None and svc.smtp is not None
    # IMAP
    s = attach(svc.imap._loop, stream_factory(svc.imap))  # type: ignore[arg-type]
    r = RawImap(s)
    assert r.f.readline() == f"* OK [CAPABILITY {IMAP_CAPS} STARTTLS LOGINDISABLED] EX1 IMAP4rev1 ready\r\n".encode()
    refused = b"NO [PRIVACYREQUIRED] passwords are accepted from this address only over TLS: send STARTTLS first\r\n"
    assert r.cmd(b"a", b"LOGIN alice pw") == [b"a " + refused]
    assert r.cmd(b"b", b"AUTHENTICATE PLAIN " + b64(b"\0alice\0pw")) == [b"b " + refused]
    assert r.cmd(b"c", b"STARTTLS") == [b"c OK Begin TLS negotiation now\r\n"]
    r = RawImap(running.context.wrap_socket(s, server_hostname="localhost"))
    assert r.cmd(b"d", b"CAPABILITY")[0] == f"* CAPABILITY {IMAP_CAPS} AUTH=PLAIN SASL-IR\r\n".encode()
    assert r.cmd(b"e", b"LOGIN alice pw")[-1].startswith(b"e OK [CAPABILITY")
    r.s.close()
    # POP3
    s = attach(svc.pop3._loop, stream_factory(svc.pop3))  # type: ignore[arg-type]
    f = s.makefile("rb")
    assert f.readline() == b"+OK EX1 POP3 server ready\r\n"
    s.sendall(b"CAPA\r\n")
    assert [f.readline() for _ in range(7)] == [b"+OK capability list follows\r\n", b"TOP\r\n", b"UIDL\r\n",
                                                b"RESP-CODES\r\n", b"AUTH-RESP-CODE\r\n", b"STLS\r\n", b".\r\n"]
    need_tls = b"-ERR [AUTH] passwords are accepted from this address only over TLS: send STLS first\r\n"
    s.sendall(b"USER alice\r\nPASS pw\r\nAUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\nSTLS\r\n")
    assert [f.readline() for _ in range(4)] == [b"+OK send PASS\r\n", need_tls, need_tls,
                                                b"+OK Begin TLS negotiation\r\n"]
    t = running.context.wrap_socket(s, server_hostname="localhost")
    t.sendall(b"AUTH PLAIN " + b64(b"\0alice\0pw") + b"\r\nQUIT\r\n")
    tf = t.makefile("rb")
    assert [tf.readline() for _ in range(2)] == [b"+OK 0 message(s)\r\n", b"+OK EX1 POP3 server signing off\r\n"]
    t.close()
    # SMTP
    s = attach(svc.smtp.loop, svc.smtp.factory)
    c = smtplib.SMTP(timeout=30)
    c.sock, c._host = s, "localhost"  # type: ignore[attr-defined]
    assert c.getreply()[0] == 220
    assert c.ehlo("client.example.org") == (250, b"EX1\nSIZE 33554432\n8BITMIME\nSMTPUTF8\nSTARTTLS\nPIPELINING\nHELP")
    assert c.docmd("AUTH", "PLAIN " + b64(b"\0alice\0pw").decode()) == (
        538, b"5.7.11 Encryption required for requested authentication mechanism")
    c.starttls(context=running.context)
    assert c.ehlo("client.example.org")[1].split(b"\n")[4] == b"AUTH LOGIN PLAIN"
    assert c.login("alice", "pw") == (235, b"2.7.0 Authentication successful")
    c.quit()


def test_session_layer_with_a_remote_peer() -> None:
    """The sans-I/O sessions as the I/O layer builds them for a peer that is not on loopback."""
    logins: list[tuple[str, str]] = []

    def login(user: str, password: str) -> None:
        logins.append((user, password))
        return None

    s = ImapSession(login, plaintext_ok=False, tls_available=True)  # type: ignore[arg-type]
    assert s.handle(b"a CAPABILITY\r\n")[0] == f"* CAPABILITY {IMAP_CAPS} STARTTLS LOGINDISABLED\r\n".encode()
    assert s.handle(b"b LOGIN alice pw\r\n")[0].startswith(b"b NO [PRIVACYREQUIRED]")  # type: ignore[union-attr]
    assert logins == []  # the password was never even checked
    replies = s.handle(b"c STARTTLS\r\n")
    assert replies[0] == b"c OK Begin TLS negotiation now\r\n" and type(replies[1]).__name__ == "StartTls"
    s.tls_started()
    assert s.handle(b"d LOGIN alice pw\r\n") == [b"d NO [AUTHENTICATIONFAILED] invalid user name or password\r\n"]
    assert logins == [("alice", "pw")]
    p = Pop3Session(lambda u, pw: None, server_name="EX1", plaintext_ok=False, tls_available=True)
    p.handle(b"USER alice")
    assert p.handle(b"PASS pw") == [b"-ERR [AUTH] passwords are accepted from this address only over TLS: "
                                    b"send STLS first\r\n"]
    assert p.handle(b"STLS") == [b"+OK Begin TLS negotiation\r\n", StartTls()]
    p.tls_started()
    assert p.handle(b"AUTH PLAIN " + b64(b"\0alice\0pw")) == [b"-ERR [AUTH] invalid user name or password\r\n"]
