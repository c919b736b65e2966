"""The children's stderr: one pipe shared by every child, its lines logged by master.

Contract: ``StderrRelay`` owns a pipe; children get ``write_fd`` as fd 2.
``on_readable`` logs every complete line as ``warning: daemon stderr: TEXT``
(a Python traceback before a daemon's own logging is set up is not lost); a
line longer than 4096 bytes is logged in pieces, so a child cannot make
master's buffer grow without bound; control characters are shown as ``?``
(a child cannot forge or garble log lines). ``drain`` logs what is left at
shutdown.
"""

from __future__ import annotations

import os
import select

from pymailsys import log
from pymailsys.log import printable

MAX_LINE = 4096


class StderrRelay:
    def __init__(self) -> None:
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.read_fd, False)
        self.buf = b""

    def on_readable(self) -> None:
        try:
            data = os.read(self.read_fd, 65536)
        except BlockingIOError:
            return
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        if len(self.buf) > MAX_LINE:
            lines.append(self.buf)
            self.buf = b""
        for line in lines:
            text = printable(line.decode("utf-8", "replace").rstrip())
            if text:
                log.warning(f"daemon stderr: {text}")

    def drain(self) -> None:
        """Log what the children wrote before they exited (bounded by the pipe's size)."""
        try:
            while readable([self.read_fd]):
                before = len(self.buf)
                self.on_readable()
                if len(self.buf) == before and not readable([self.read_fd]):
                    break
        except OSError:
            pass


def readable(fds: list[int]) -> bool:
    """True when one of fds can be read without waiting."""
    if not fds:
        return False
    try:
        ready, _, _ = select.select(fds, [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(ready)
