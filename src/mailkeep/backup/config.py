"""The configuration set (``SERVER/Configuration``): what a server rebuild needs besides mail.

Contents (entries under ``SERVER/Configuration/``):
- ``server.json`` (the server's local state: paths, mount intent, full-text index settings),
  ``directory.json`` (which directory backend, the domain), ``schedules/*.json``;
- the embedded directory (``Directory/ntds.edb``, ``ntds.stm``, its logs and patch entry),
  taken through the engine's streaming backup API like any database — a copy of the live
  files would be inconsistent. A directory on an LDAP server is backed up with that server's
  own tools; the set records where it is;
- the TLS certificate (``tls/cert.pem``) and its private key **encrypted** with a password the
  operator gives (``tls/key.pem.enc``: scrypt-derived key, AES-256-GCM), so backup media never
  carry the key in the clear; the LDAP bind password file is never taken;
- connector settings: Mailkeep has no connectors yet (no outbound delivery), so there are none
  to record.

The set's ``config`` summary records the directory's tombstone lifetime and the time of the
backup, so a restore can refuse a set older than the lifetime (drill D19).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator
from typing import Any

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mailkeep.backup.job import Item
from mailkeep.engine.backup import BackupKind
from mailkeep.engine.logformat import gen_file_name
from mailkeep.store.store import Store

N, R, P = 2**15, 8, 1
MAGIC = b"MKKEY1"


class ConfigSetError(Exception):
    pass


def encrypt(data: bytes, password: str) -> bytes:
    """MKKEY1 | salt(16) | nonce(12) | AES-256-GCM(data) with a scrypt key (N=2^15, r=8, p=1)."""
    salt, nonce = os.urandom(16), os.urandom(12)
    key = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32, maxmem=64 << 20)
    return MAGIC + salt + nonce + AESGCM(key).encrypt(nonce, data, MAGIC)


def decrypt(blob: bytes, password: str) -> bytes:
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 28 + 16:
        raise ConfigSetError("not an encrypted Mailkeep key")
    salt, nonce, body = blob[6:22], blob[22:34], blob[34:]
    key = hashlib.scrypt(password.encode(), salt=salt, n=N, r=R, p=P, dklen=32, maxmem=64 << 20)
    try:
        return AESGCM(key).decrypt(nonce, body, MAGIC)
    except Exception:  # noqa: BLE001 - cryptography's InvalidTag: wrong password or damage
        raise ConfigSetError("the key password is wrong, or the encrypted key is damaged") from None


def _small(name: str, data: bytes, role: str = "config", **meta: Any) -> Item:
    return Item(name, role, len(data), iter([data]), dict(meta))


def _file(name: str, path: str, role: str = "config") -> Item:
    with open(path, "rb") as f:
        data = f.read(16 << 20)
    return _small(name, data, role, path=path)


def items(store: Store, kind: str, key_password: str | None, summary: dict[str, Any]) -> Iterator[Item]:
    """The configuration set's items (the server side: it holds the directory's files)."""
    if kind not in ("normal", "copy"):
        raise ConfigSetError(f"the configuration set is always taken whole: use --type normal or copy, not {kind}")
    if not key_password:
        raise ConfigSetError("the configuration set holds the server's TLS private key, which backup media never "
                             "carry in the clear: give a password to encrypt it with (--key-password, or "
                             "$MAILKEEP_KEY_PASSWORD)")
    data = store.server.data
    base = f"{store.server.name}/Configuration"
    record: dict[str, Any] = {"tombstone_lifetime_days": store.directory.tombstone_lifetime_days,
                              "domain": store.directory.domain, "directory": "embedded", "items": []}
    summary["config"] = record
    for name in ("server.json", "directory.json"):
        p = os.path.join(data, name)
        if os.path.exists(p):
            record["items"].append(name)
            yield _file(f"{base}/{name}", p)
    sched = os.path.join(data, "schedules")
    if os.path.isdir(sched):
        for n in sorted(os.listdir(sched)):
            if n.endswith(".json"):
                record["items"].append(f"schedules/{n}")
                yield _file(f"{base}/schedules/{n}", os.path.join(sched, n))
    cert, key = os.path.join(data, "tls", "cert.pem"), os.path.join(data, "tls", "key.pem")
    if os.path.exists(cert) and os.path.exists(key):
        record["items"] += ["tls/cert.pem", "tls/key.pem.enc"]
        yield _file(f"{base}/tls/cert.pem", cert)
        with open(key, "rb") as f:
            blob = encrypt(f.read(1 << 20), key_password)
        yield _small(f"{base}/tls/key.pem.enc", blob, "secret", cipher="scrypt+aes-256-gcm")
    with open(os.path.join(data, "directory.json"), encoding="utf-8") as f:
        dcfg = json.load(f)
    if dcfg.get("backend", "embedded") != "embedded":
        record["directory"] = f"ldap: {dcfg.get('url')} (back it up with the LDAP server's own tools)"
        return
    yield from _directory(store, base, kind, record)


def _directory(store: Store, base: str, kind: str, record: dict[str, Any]) -> Iterator[Item]:
    backend = store.directory.backend
    sg, db = getattr(backend, "sg", None), getattr(backend, "db", None)
    if sg is None or db is None:
        raise ConfigSetError("the embedded directory is not open in this process")
    b = sg.begin_backup(BackupKind(kind), [db])
    try:
        for f in b.database_files():
            with b.open(f) as r:
                yield Item(f"{base}/Directory/{f.name}", f.role, f.size, _chunks(r), {"database": "Directory"})
        for f in b.log_files():
            with b.open(f) as r:
                yield Item(f"{base}/Directory/{gen_file_name(sg.config.prefix, f.generation)}", "log", f.size,
                           _chunks(r), {"generation": f.generation})
        patch = b.patch(db)
        yield _small(f"{base}/Directory/ntds.pat", patch, "patch", database="Directory")
        if BackupKind(kind).truncates:
            b.truncate()
        b.end(ok=True)
        record["directory_backup"] = {"prefix": sg.config.prefix, "log_signature": sg.signature,
                                      "low_gen": b.low_gen, "high_gen": b.high_gen,
                                      "signature": db.header.signature}
    except BaseException:
        b.end(ok=False)
        raise


def _chunks(r: Any) -> Iterator[bytes]:
    while chunk := r.read():
        yield chunk
