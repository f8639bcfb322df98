"""`mailkeep deliver` while `mailkeep serve` runs: handed to the server over SMTP, same exit codes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.server.test_serve import data, free_port, inbox, start, stop  # noqa: F401 - `data` is a fixture


def deliver(data_dir: Path, *args: str, message: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mailkeep", "--data", str(data_dir), "deliver", *args],
                          input=message, capture_output=True, timeout=120)


def test_deliver_goes_through_the_running_server(data: Path) -> None:  # noqa: F811
    p = start(data, free_port())
    try:
        body = b"".join(b"line %d\n" % i for i in range(20000))  # ~200 KB, LF line ends, streamed
        msg = b"From: a@example.org\nSubject: piped\nMessage-ID: <pipe-1@x>\n\n.leading dot\n" + body
        r = deliver(data, "-f", "a@example.org", "alice@contoso.com", message=msg)
        assert r.returncode == 0, r.stderr
        r = deliver(data, "alice@contoso.com", "nobody@contoso.com", message=b"Message-ID: <pipe-2@x>\n\nx\n")
        assert r.returncode == 67
        assert r.stderr.decode().startswith("mailkeep deliver: nobody@contoso.com: 550 5.1.1")
        r = deliver(data, "--bogus", message=b"")
        assert r.returncode == 64
    finally:
        code, _ = stop(p)
    assert code == 0
    assert inbox(data, "alice") == ["<pipe-1@x>", "<pipe-2@x>"]
    from mailkeep.store.mailbox import open_mailbox
    from mailkeep.store.store import Store

    with Store.open(str(data)) as s:
        s.mount_intended()
        mb = open_mailbox(s, "alice")
        m = next(m for m in mb.messages("INBOX") if m.message_id == "<pipe-1@x>")
        stored = mb.read_message("INBOX", m.uid)
    head, _, text = stored.partition(b"\r\n\r\n")
    assert head.startswith(b"Received: from ")
    assert text == (b".leading dot\n" + body).replace(b"\n", b"\r\n")
