"""Security identifiers in the binary form AD stores (objectSid, msExchMasterAccountSid)."""

from __future__ import annotations

import os
import struct

SELF = "S-1-5-10"  # the well-known Self SID the guide's fix sets on disabled mailbox accounts


def to_bytes(text: str) -> bytes:
    parts = text.split("-")
    if len(parts) < 3 or parts[0].upper() != "S":
        raise ValueError(f"invalid SID {text!r}")
    rev, auth, subs = int(parts[1]), int(parts[2]), [int(x) for x in parts[3:]]
    if len(subs) > 15:
        raise ValueError(f"invalid SID {text!r}: too many sub-authorities")
    return struct.pack("<BB", rev, len(subs)) + auth.to_bytes(6, "big") + b"".join(
        struct.pack("<I", s) for s in subs
    )


def to_text(data: bytes) -> str:
    if len(data) < 8:
        raise ValueError("SID too short")
    rev, n = data[0], data[1]
    if len(data) != 8 + 4 * n:
        raise ValueError("SID length does not match its sub-authority count")
    auth = int.from_bytes(data[2:8], "big")
    subs = struct.unpack(f"<{n}I", data[8:])
    return "-".join(["S", str(rev), str(auth), *map(str, subs)])


def new_domain_sid() -> str:
    a, b, c = struct.unpack("<III", os.urandom(12))
    return f"S-1-5-21-{a}-{b}-{c}"
