"""SASL PLAIN (RFC 4616) as IMAP AUTHENTICATE, POP3 AUTH and SMTP AUTH carry it, without I/O.

Invariants:
- A client response is base64 (strictly: other characters are an error), ``=`` for an empty
  initial response (RFC 4959, RFC 5034, RFC 4954), ``*`` to cancel (:data:`CANCEL`).
- A PLAIN message is ``[authzid] NUL authcid NUL passwd`` in UTF-8 with exactly two NULs and
  a non-empty authcid and password; anything else is :class:`Malformed` (the protocols answer
  BAD / ``-ERR`` / ``501``).
- Mailkeep lets no one act as someone else: an authzid that is neither empty nor the authcid
  is :class:`NotAuthorized` (a ``NO``), before any password is checked.
- Nothing here logs; the password only goes back to the caller.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final


class Malformed(ValueError):
    pass


class NotAuthorized(ValueError):
    pass


class Cancel:
    pass


CANCEL: Final = Cancel()


def decode_response(text: str | bytes) -> bytes | Cancel:
    """A client's SASL response line (without its CRLF) -> the octets, or :data:`CANCEL`."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    raw = raw.strip()
    if raw == b"*":
        return CANCEL
    if raw == b"=":
        return b""
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as e:
        raise Malformed("the response is not valid base64") from e


def plain(message: bytes) -> tuple[str, str]:
    """(user name, password) from a PLAIN message, or :class:`Malformed` / :class:`NotAuthorized`."""
    parts = message.split(b"\x00")
    if len(parts) != 3:
        raise Malformed("a PLAIN response is authzid NUL authcid NUL password")
    try:
        authzid, authcid, password = (p.decode("utf-8") for p in parts)
    except UnicodeDecodeError as e:
        raise Malformed("a PLAIN response must be UTF-8") from e
    if not authcid or not password:
        raise Malformed("a PLAIN response needs a user name and a password")
    if authzid and authzid != authcid:
        raise NotAuthorized(f"{authcid} may not act as {authzid} (proxy authorization is not supported)")
    return authcid, password
