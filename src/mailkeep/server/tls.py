"""The server's TLS certificate: generated once (self-signed) into ``<data>/tls/``, loaded at
every start into one :class:`ssl.SSLContext` that SMTP, IMAP and POP3 share for STARTTLS/STLS.

Invariants:
- ``<data>/tls/cert.pem`` and ``<data>/tls/key.pem`` are a matching PEM pair. When both are
  missing (first start, or an administrator deleted them), a new self-signed pair is made for
  the server's name, ``localhost``, ``127.0.0.1`` and ``::1``. When only one is there, nothing
  is generated over it: the start fails and says which file to add or remove, so an
  administrator's own certificate is never replaced behind their back.
- The key file is written mode 0600 and atomically (a temporary file, fsync, rename), the
  certificate after it: a crash mid-generation leaves either nothing or a key without a
  certificate (which the start reports), never a torn file.
- The context accepts TLS 1.2 and later only, and asks no client certificate.
- An administrator may replace both files with their own certificate chain and key (PEM, the
  leaf first in ``cert.pem``); the banner shows the SHA-256 fingerprint of the leaf in use.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

TLS_DIR = "tls"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
VALIDITY_DAYS = 10 * 365


class TlsError(OSError):
    """The certificate or key cannot be used; the message says which file and what to do."""


@dataclass(frozen=True)
class Tls:
    context: ssl.SSLContext
    cert_path: str
    key_path: str
    fingerprint: str  # SHA-256 of the leaf certificate (DER), colon-separated hex
    generated: bool  # made at this start


def paths(data: str) -> tuple[str, str]:
    folder = os.path.join(data, TLS_DIR)
    return os.path.join(folder, CERT_FILE), os.path.join(folder, KEY_FILE)


def load(data: str, server_name: str) -> Tls:
    """The server's TLS context, generating a self-signed pair first when there is none."""
    cert_path, key_path = paths(data)
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    generated = False
    if not have_cert and not have_key:
        generate(data, server_name)
        generated = True
    elif not have_cert or not have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise TlsError(f"TLS: {present} exists but {missing} is missing; put the matching file there, "
                       f"or remove {present} to have a new self-signed pair generated at the next start")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert_path, key_path)
    except (ssl.SSLError, ValueError) as e:
        raise TlsError(f"TLS: cannot load certificate {cert_path} with key {key_path} ({e}); they must be a "
                       "matching PEM pair: replace them, or remove both to have a self-signed pair generated") from e
    return Tls(context, cert_path, key_path, fingerprint(cert_path), generated)


def fingerprint(cert_path: str) -> str:
    """SHA-256 of the first certificate in a PEM file, as ``AB:CD:...`` (what browsers and
    ``openssl x509 -fingerprint -sha256`` show)."""
    with open(cert_path, "rb") as f:
        pem = f.read()
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())


def generate(data: str, server_name: str) -> None:
    """A new self-signed certificate and its key in ``<data>/tls/`` (key first, each atomically)."""
    cert_path, key_path = paths(data)
    os.makedirs(os.path.dirname(cert_path), mode=0o700, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys([server_name, "localhost"]) if n]
    names += [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.IPAddress(ipaddress.ip_address("::1"))]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name or "localhost"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Mailkeep (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # a CA of itself, so clients can trust exactly this file as their CA (cafile=cert.pem)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    _write_atomically(key_path, key_pem, 0o600)
    _write_atomically(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _write_atomically(path: str, content: bytes, mode: int) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    os.fchmod(fd, mode)  # O_CREAT's mode is masked by the umask, and an old tmp file keeps its own
    with os.fdopen(fd, "wb") as f:
        f.write(content)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
