"""A child process whose stdout the crash tests read line by line with timeouts, without
ever blocking past them (select on the pipe), so a SIGKILL can come at any moment."""

from __future__ import annotations

import os
import select
import subprocess
import time


class ChildOutput:
    proc: subprocess.Popen[bytes]

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.buf = b""

    def _read(self, timeout: float) -> bool:
        """Read what is available within ``timeout``; False at end of file."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        ready, _, _ = select.select([fd], [], [], max(timeout, 0.0))
        if not ready:
            return True
        chunk = os.read(fd, 65536)
        self.buf += chunk
        return bool(chunk)

    def wait_for(self, line: str, timeout: float) -> bool:
        """Wait until the child printed ``line``; False if it did not in time."""
        end = time.monotonic() + timeout
        while (line + "\n").encode() not in self.buf:
            left = end - time.monotonic()
            if left <= 0 or not self._read(left):
                return False
        return True
