"""A backup source carried over HTTP: the guide's Remote Store option.

The server runs the backup source (job.source) and sends it as a pax tar stream: one member
per file (pax headers ``MAILKEEP.role`` and ``MAILKEEP.meta``), then ``SUMMARY.json``. The
agent turns the stream back into the same items and writes its own media, so a remote backup
is the same job as a local one with the wire in the middle.

Invariants:
- A stream without ``SUMMARY.json`` at its end is incomplete (the server or the connection
  died): the agent's set stays incomplete and is cut off at the next append.
- The agent trusts nothing it receives: member names are checked like media names, sizes are
  what the tar headers say, and each file's SHA-256 is computed on arrival.
"""

from __future__ import annotations

import http.client
import json
import ssl
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO, Any

from mailkeep.backup.job import Item, Source
from mailkeep.backup.media import CHUNK, MediaError, check_name

SUMMARY = "SUMMARY.json"
PATH = "/api/v1/backup/stream"


class _ChunkFile:
    """read(n) over an iterator of chunks (tarfile copies members with read)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.buf = b""

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            try:
                self.buf += next(self.chunks)
            except StopIteration:
                break
        if n < 0:
            out, self.buf = self.buf, b""
        else:
            out, self.buf = self.buf[:n], self.buf[n:]
        return out


def write_stream(src: Source, out: IO[bytes]) -> None:
    """The server side: every item of ``src`` as a tar member on ``out``; the summary last."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.copybufsize = CHUNK  # type: ignore[attr-defined]  # (not in typeshed)
        for item in src:
            if isinstance(item, dict):
                data = json.dumps(item).encode()
                ti = tarfile.TarInfo(SUMMARY)
                ti.size = len(data)
                tar.addfile(ti, _ChunkFile(iter([data])))
                continue
            ti = tarfile.TarInfo(item.name)
            ti.size = item.size
            ti.mode = 0o600
            ti.pax_headers = {"MAILKEEP.role": item.role, "MAILKEEP.meta": json.dumps(item.meta)}
            tar.addfile(ti, _ChunkFile(item.chunks))


def read_stream(resp: IO[bytes]) -> Source:
    """The agent side: items back from a stream written by :func:`write_stream`."""
    try:
        yield from _read_stream(resp)
    except (tarfile.TarError, http.client.HTTPException, OSError) as e:
        raise MediaError(f"the backup stream was cut off ({type(e).__name__}: {e}): the server stopped or the "
                         "connection was lost; the set is incomplete") from None


def _read_stream(resp: IO[bytes]) -> Source:
    with tarfile.open(fileobj=resp, mode="r|") as tar:
        for m in tar:
            if m.name == SUMMARY:
                f = tar.extractfile(m)
                if f is None or m.size > 16 << 20:
                    raise MediaError("the backup stream's summary is malformed")
                yield json.loads(f.read())
                return
            check_name(m.name)
            if not m.isreg():
                raise MediaError(f"the backup stream sent {m.name!r}, which is not a regular file")
            meta = json.loads(m.pax_headers.get("MAILKEEP.meta", "{}"))
            if not isinstance(meta, dict):
                raise MediaError(f"the backup stream sent bad metadata for {m.name!r}")
            f = tar.extractfile(m)
            assert f is not None
            yield Item(m.name, m.pax_headers.get("MAILKEEP.role", "file"), m.size, _read_all(f), meta)
    raise MediaError("the backup stream ended before its summary: the server stopped or the connection was lost; "
                     "the set is incomplete")


def _read_all(f: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := f.read(CHUNK):
            yield chunk
    except (tarfile.TarError, http.client.HTTPException, OSError) as e:
        raise MediaError(f"the backup stream was cut off ({type(e).__name__}: {e}): the server stopped or the "
                         "connection was lost; the set is incomplete") from None


class RemoteBackupError(Exception):
    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def remote_source(url: str, auth: str, selection: list[str], kind: str, *, context: Any = None,
                  key_password: str | None = None) -> Source:
    """Ask the server at ``url`` for a backup and yield what it streams."""
    req = urllib.request.Request(url.rstrip("/") + PATH, method="POST",
                                 data=json.dumps({"selection": selection, "type": kind,
                                                  "key_password": key_password}).encode(),
                                 headers={"Authorization": auth, "Content-Type": "application/json"})
    try:
        resp = urllib.request.urlopen(req, timeout=3600, context=context)
    except urllib.error.HTTPError as e:
        try:
            body: dict[str, Any] = json.load(e)
            msg = str(body.get("message") or body)
        except ValueError:
            msg = f"HTTP {e.code} {e.reason}"
        raise RemoteBackupError(e.code, msg) from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, ssl.SSLError):
            raise RemoteBackupError(0, f"the server at {url} is not trusted ({e.reason}); give --cafile with its "
                                    "certificate (<data>/tls/cert.pem on the server; compare the SHA-256 fingerprint "
                                    "its start banner prints)") from None
        raise RemoteBackupError(0, f"the server at {url} does not answer ({e.reason})") from None
    with resp:
        yield from read_stream(resp)
