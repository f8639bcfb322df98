"""Delivery process for the SIGKILL delivery test (tests/faults/test_delivery_sigkill.py).

Usage: python delivery_proc.py DATA ROUND COUNT

Prints ``opening``, opens the store of the server in DATA (soft recovery of its storage
groups after the previous kill), mounts its databases, prints ``ready`` and then delivers
COUNT messages, one at a time, each to both RECIPIENTS. After :func:`deliver` reported
"delivered" for every recipient it prints the message's Message-ID and flushes stdout: a
printed Message-ID is an acknowledged delivery (an SMTP 250). It prints ``done`` when all
COUNT were delivered, and ``FAILED ...`` (exit 3) when a delivery is refused.
"""

from __future__ import annotations

import io
import random
import sys

LOG_SIZE = 128 * 1024  # small generations: roll-overs happen during the deliveries
DOMAIN = "contoso.com"
RECIPIENTS = ("alice", "bob")


def message_id(round_no: int, i: int) -> str:
    return f"<kill.{round_no}.{i}@example.org>"


def raw_message(round_no: int, i: int) -> bytes:
    """The message as submitted: every fourth one has LF-only line ends (a Unix pipe),
    every third a body of 20-80 KB (several stream chunks)."""
    rng = random.Random(round_no * 1_000_003 + i)
    lines = ["From: sender@example.org", f"To: alice@{DOMAIN}, bob@{DOMAIN}",
             f"Subject: round {round_no} message {i}", f"Message-ID: {message_id(round_no, i)}",
             "Date: Wed, 25 Nov 2026 10:00:00 +0000", ""]
    n_body = rng.randint(300, 1200) if i % 3 == 0 else rng.randint(1, 5)
    lines += [rng.randbytes(rng.randint(10, 50)).hex() for _ in range(n_body)]
    eol = "\n" if i % 4 == 0 else "\r\n"
    return (eol.join(lines) + eol).encode()


def stored_message(round_no: int, i: int) -> bytes:
    """What the store must hold: the same message with CRLF line ends."""
    return raw_message(round_no, i).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def main() -> None:
    data, round_no, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    print("opening", flush=True)  # soft recovery starts now
    from mailkeep.store import delivery
    from mailkeep.store.store import Store

    store = Store.open(data, log_file_size=LOG_SIZE)
    try:
        store.mount_intended()
        print("ready", flush=True)
        addresses = [f"{u}@{DOMAIN}" for u in RECIPIENTS]
        for i in range(count):
            rep = delivery.deliver(store, io.BytesIO(raw_message(round_no, i)), addresses,
                                   sender="sender@example.org")
            if [o.status for o in rep.outcomes] != [delivery.DELIVERED] * len(addresses):
                print(f"FAILED {message_id(round_no, i)} {rep.outcomes}", flush=True)
                sys.exit(3)
            print(message_id(round_no, i), flush=True)
        print("done", flush=True)
    finally:
        store.close()


if __name__ == "__main__":
    main()
