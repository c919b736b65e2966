"""Services and their child processes: what a child is, how it is started, its status pipe.

Contract: a master.cf command names a Python module (``module_for``):
``pymailsys.daemons.COMMAND`` (a ``-`` becomes ``_``, so ``trivial-rewrite``
is ``pymailsys.daemons.trivial_rewrite``); a command containing a dot is taken
as a full module name (third-party services, test fixtures).

``spawn`` starts one child of a service, forked from master's preloaded
image (``forking``), as what it would be when started as::

    python3 -P -m MODULE -c CONFIG_DIR -n SERVICE -t TYPE [-u] [-l|-z|-p MAXPROC]
            [-s COUNT] ARGS-FROM-MASTER.CF

(``-l``: maxproc 1, ``-z``: 0, as Postfix's master; ``-p``: any other
process limit, which a server that takes many clients in one process applies
to its clients where Postfix's counterpart serves one client per process:
``pymailsys.server``; ``/proc/PID/cmdline`` shows exactly that) in master's working directory,
queue_directory, with Python's safe-path mode (``-P``: no directory a
child starts in can shadow the installed package); with the descriptors of
``pymailsys.ipc.master_status`` (lifeline, status pipe, listeners), fds 0
and 1 /dev/null and fd 2 master's stderr relay; every other descriptor is
closed. Each child gets a status pipe of its own (the
child cannot tell): the one-byte status protocol carries no process ID, and a
private pipe is what lets master know exactly which child is available, even
after one was killed halfway. ``imported_environment`` filters the
environment by ``import_environment`` and keeps ``PYTHON*`` and
``PYMAILSYS_*`` so that the interpreter runs the same code; master re-executes
itself with only that at start-up, as Postfix's master strips its own (children
are forked from master's memory: what master drops, no child carries);
``child_env`` adds ``MAIL_CONFIG`` and ``GENERATION``.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

from pymailsys.daemons.master import forking
from pymailsys.daemons.master.listeners import Listener

from pymailsys import module_argv
from pymailsys.config import Config
from pymailsys.config.master_cf import ServiceEntry
from pymailsys.ipc.master_status import (
    LIFELINE_FD,
    LIMIT_WARNING_INTERVAL,
    LISTEN_FD,
    STATUS_AVAILABLE,
    STATUS_BUSY,
    STATUS_FD,
)

DAEMON_PACKAGE = "pymailsys.daemons."
PICKUP = DAEMON_PACKAGE + "pickup"  # woken only when maildrop/ holds mail (supervisor)


def names_full_module(command: str) -> bool:
    """True when a master.cf command names a module outside pymailsys.daemons."""
    return "." in os.path.basename(command)


def module_for(command: str) -> str:
    """The Python module that implements a master.cf command."""
    base = os.path.basename(command)
    if names_full_module(command):
        return base
    return DAEMON_PACKAGE + base.replace("-", "_")


def module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass
class Service:
    """One master.cf service as master runs it: its listeners and its children."""

    entry: ServiceEntry
    module: str
    maxproc: int
    spec: tuple
    listeners: list[Listener] = field(default_factory=list)
    children: dict[int, Child] = field(default_factory=dict)
    throttle_until: float = 0.0
    next_wakeup: float | None = None
    used: bool = False
    watching: bool = False
    last_limit_warning: float = -LIMIT_WARNING_INTERVAL
    failure_restart: float = float("-inf")  # a failed wake-up process last replaced at once

    @property
    def name(self) -> str:
        return self.entry.name

    def at_limit(self) -> bool:
        return self.maxproc > 0 and len(self.children) >= self.maxproc


@dataclass
class Child:
    """One running child process and the read end of its status pipe."""

    pid: int
    service: Service
    generation: int
    status_fd: int
    available: bool = True
    reported: bool = False
    deadline: float | None = None  # of the old generation: when master steps in
    terminated: bool = False  # SIGTERM sent at the deadline; SIGKILL at the next

    def read_status(self) -> bool:
        """Take the status bytes waiting on the pipe; False at end of file."""
        try:
            data = os.read(self.status_fd, 256)
        except BlockingIOError:
            return True
        except OSError:
            data = b""
        if not data:
            return False
        for byte in data:
            if byte == STATUS_AVAILABLE[0]:
                self.available = True
                self.reported = True
            elif byte == STATUS_BUSY[0]:
                self.available = False
                self.reported = True
        return True


def child_argv(svc: Service, config_dir: str) -> list[str]:
    entry = svc.entry
    argv = module_argv(svc.module, "-c", config_dir, "-n", entry.name, "-t", entry.type)
    if entry.unpriv:
        argv.append("-u")
    if svc.maxproc == 1:
        argv.append("-l")
    elif svc.maxproc == 0:
        argv.append("-z")
    else:
        argv += ["-p", str(svc.maxproc)]
    if len(svc.listeners) > 1:
        argv += ["-s", str(len(svc.listeners))]
    return argv + entry.args


def imported_environment(cfg: Config) -> dict[str, str]:
    """What import_environment lets through of this process's environment, and
    ``PYTHON*`` and ``PYMAILSYS_*`` (the interpreter must run the same code)."""
    env: dict[str, str] = {}
    for item in cfg.get_list("import_environment"):
        name, sep, value = item.partition("=")
        if sep:
            env[name] = value
        elif name in os.environ:
            env[name] = os.environ[name]
    for name, value in os.environ.items():
        if name.startswith(("PYTHON", "PYMAILSYS_")):
            env[name] = value
    return env


def child_env(cfg: Config, config_dir: str, generation: int) -> dict[str, str]:
    env = imported_environment(cfg)
    env["MAIL_CONFIG"] = config_dir
    env["GENERATION"] = f"{generation:o}"
    return env


def spawn(svc: Service, argv: list[str], env: dict[str, str], *, devnull: int,
          stderr_w: int, lifeline_r: int) -> tuple[int, int]:
    """Start one child of svc: (pid, non-blocking read end of its status pipe); OSError."""
    status_r, status_w = os.pipe()
    fds = [(devnull, 0), (devnull, 1), (stderr_w, 2),
           (lifeline_r, LIFELINE_FD), (status_w, STATUS_FD)]
    fds += [(lst.fd, LISTEN_FD + i) for i, lst in enumerate(svc.listeners)]
    try:
        pid = forking.start_child(argv, env, fds)
    except OSError:
        os.close(status_r)
        os.close(status_w)
        raise
    os.close(status_w)
    os.set_blocking(status_r, False)
    return pid, status_r
