"""``master -w``: detach into the background and tell the caller how start-up went.

Contract: ``start_detached(config_dir, run)`` forks; the child becomes a
daemon with python-daemon (new session, umask 022, cwd /, stdio to
/dev/null) and calls ``run(init_fd)``, where the master writes ``ok`` or
``fatal: REASON`` to ``init_fd`` once it has initialized. The parent waits
for that word and returns 0 on ``ok``, else prints the reason on stderr as
``$syslog_name/master: fatal: ...`` and returns 1. The daemon child never
returns to the caller.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from pymailsys import config as config_mod
from pymailsys.config import ConfigError

PROGRAM = "master"


def start_detached(config_dir: str | None, run: Callable[[int], int]) -> int:
    import daemon

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            os.close(read_fd)
            os.setsid()
            context = daemon.DaemonContext(detach_process=False, files_preserve=[write_fd],
                                           umask=0o022, working_directory="/",
                                           signal_map={}, prevent_core=False)
            context.open()
            rc = run(write_fd)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: B036 -- the daemon child must never return to the caller
            rc = 1
        os._exit(rc)
    os.close(write_fd)
    chunks = []
    while True:
        try:
            data = os.read(read_fd, 4096)
        except InterruptedError:
            continue
        if not data:
            break
        chunks.append(data)
    os.close(read_fd)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    status = b"".join(chunks).decode("utf-8", "replace")
    if status == "ok":
        return 0
    text = status or "fatal: master process terminated during initialization"
    sys.stderr.write(f"{_tag(config_dir)}: {text}\n")
    return 1


def _tag(config_dir: str | None) -> str:
    try:
        return f"{config_mod.load(config_dir).get('syslog_name') or 'postfix'}/{PROGRAM}"
    except (ConfigError, OSError):
        return f"postfix/{PROGRAM}"
