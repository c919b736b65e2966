"""Children forked from master's preloaded image instead of fresh interpreters.

Contract: ``preload()`` imports every module of the pymailsys library (never
``pymailsys.tools``), every daemon module master may start
(``daemon_modules``: ``pymailsys.daemons.NAME``, master's own package aside),
and the modules the daemons import later themselves (``DAEMON_IMPORTS``),
with the collector off, then ``gc.freeze()``, so that
the children master forks share those pages with master and with each
other, and no collector run in a child walks (and so copies) them. A
daemon module's import runs only definitions; master never calls into
one. Preloading the daemons too took a child's start-up from 6-10 MB of
private memory to 5-6 MB (an import in the child dirties far more than
the module's own 0.02-0.4 MB: the import machinery's objects, the
unmarshalled code, the garbage around them). No
collection before the freeze, as Python's gc documentation advises: the
blocks it frees would leave holes in shared pages that every child then
fills, and so copies (measured: PSS under load 86 MB with a collection,
82 MB without). Then the C heap's free pages go back to the kernel
(glibc's ``malloc_trim``): what the imports freed would otherwise stay in
the image every child maps (1.5 MB; PSS under load 1.9 MB lower). Master
calls it once initialized; ``refreeze()`` after a reload collects what the
reload left behind, freezes what it built and trims again.

``start_child(argv, env, fds)`` forks; the child becomes what
``posix_spawn(python3 -P -m MODULE ...)`` made before, and never returns
into master's loop:

* signals: all blocked around the fork, so no signal reaches master's
  handlers or its wake-up pipe from the child; then the wake-up fd
  dropped, SIGHUP, SIGTERM, SIGCHLD back to SIG_DFL, SIGINT to Python's
  KeyboardInterrupt and SIGPIPE ignored (as a fresh interpreter has them),
  and an empty mask;
* descriptors: the C library's syslog connection closed first, then
  ``fds`` as ``[(source, target)]`` copied into place, every other
  descriptor closed (master's listeners of other services, other
  children's status pipes, the selector, the wake-up pipe, the pid-file
  lock, the log file);
* logging reset (``log.reset_in_child``), ``os.environ`` replaced by env
  (then ``time.tzset()``), ``sys.argv`` and ``/proc/PID/cmdline`` and
  ``/proc/PID/environ`` as an exec'd child had them (``proctitle``); the
  objects inherited from master frozen (a collection in the child never
  runs a finalizer of master's, which could close a descriptor number the
  child has since reused); atexit handlers inherited from master dropped;
* then the preloaded daemon module's ``main()``, which is what its ``python
  -m`` entry point runs (``if __name__ == "__main__": main()``, or a
  package's ``__main__``: ``main()``), without runpy's import of the entry
  point (0.4 MB per child); a module master did not preload (a master.cf
  command naming a full module) runs as
  ``runpy.run_module(MODULE, run_name="__main__", alter_sys=True)``;
  the exit status is the interpreter's: 0 at the end, SystemExit's code,
  1 with the traceback on fd 2 (master's stderr relay) for an exception.

The working directory (queue_directory) and the privileges are master's,
as with posix_spawn: the server skeleton drops privileges itself.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import importlib
import os
import pkgutil
import runpy
import signal
import sys
import time
import traceback
from typing import NoReturn

from pymailsys.daemons.master import proctitle

import pymailsys
from pymailsys import log

# Modules daemons import when they run, not at their own import
# (tests/test_master_fork.py names any that is missing).
DAEMON_IMPORTS = ("uvloop",)
DAEMONS = "pymailsys.daemons"
NOT_PRELOADED = (DAEMONS, "pymailsys.tools", "pymailsys.conf", "pymailsys.cli")

_CHILD_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGCHLD)


def library_modules() -> list[str]:
    """Every module of the pymailsys library, without daemons and commands."""
    return [m.name for m in pkgutil.walk_packages(pymailsys.__path__, "pymailsys.")
            if not m.name.startswith(NOT_PRELOADED)]


def daemon_modules() -> list[str]:
    """Every daemon module master may start: ``pymailsys.daemons.NAME``, not master."""
    package = importlib.import_module(DAEMONS)
    return [f"{DAEMONS}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
            if m.name != "master"]


def preload() -> None:
    """Import what children use, then freeze it for sharing (see the module docstring)."""
    gc.disable()
    try:
        for name in library_modules() + daemon_modules() + list(DAEMON_IMPORTS):
            try:
                importlib.import_module(name)
            except ImportError as e:
                # uvloop is optional; a broken library module fails again in the child
                if not name.startswith("uvloop"):
                    log.warning(f"preload: {name}: {e}")
        gc.freeze()
    finally:
        gc.enable()
    _trim_heap()


def refreeze() -> None:
    """After a reload: collect what it left behind, freeze what it built."""
    gc.collect()
    gc.freeze()
    _trim_heap()


def _trim_heap() -> None:
    """Return the C heap's free pages to the kernel, where the C library can (glibc)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def start_child(argv: list[str], env: dict[str, str], fds: list[tuple[int, int]]) -> int:
    """Fork a child that runs ``argv`` = ``[python, -P, -m, MODULE, ARGS...]``; its pid.

    OSError when the fork fails.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
    try:
        pid = os.fork()
    except OSError:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        raise
    if pid == 0:
        _child(argv, env, fds)
    signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    return pid


def _child(argv: list[str], env: dict[str, str], fds: list[tuple[int, int]]) -> NoReturn:
    status = 1
    try:
        gc.freeze()
        atexit._clear()
        signal.set_wakeup_fd(-1)
        for sig in _CHILD_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        log.reset_in_child()
        _place_descriptors(fds)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        os.environ.clear()
        os.environ.update(env)
        time.tzset()
        proctitle.show(argv, env)
        module = argv[3]
        sys.orig_argv = list(argv)
        sys.argv = [module, *argv[4:]]
        status = _run(module)
    except BaseException:  # noqa: B036 -- nothing may return into master's loop
        _print_exception()
    os._exit(status)


def _run(module: str) -> int:
    """Run the module as ``python -m`` would; the process's exit status."""
    try:
        entry = getattr(sys.modules.get(module), "main", None)
        if module.startswith(DAEMONS + ".") and callable(entry):
            entry()
        else:
            runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as e:
        status = _exit_status(e.code)
    except BaseException:  # noqa: B036 -- as an interpreter would: traceback, status 1
        _print_exception()
        status = 1
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: B036
        pass
    return status


def _exit_status(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    try:
        sys.stderr.write(f"{code}\n")
    except BaseException:  # noqa: B036
        pass
    return 1


def _print_exception() -> None:
    try:
        traceback.print_exc()
        sys.stderr.flush()
    except BaseException:  # noqa: B036
        pass


def _place_descriptors(fds: list[tuple[int, int]]) -> None:
    """Copy each source to its target, then close every descriptor not a target."""
    # Two steps through descriptors above every source and target, so that no
    # dup2 overwrites a source still to be copied.
    base = max(max(max(src, dst) for src, dst in fds) + 1, 3)
    for i, (src, _dst) in enumerate(fds):
        os.dup2(src, base + i)
    for i, (_src, dst) in enumerate(fds):
        os.dup2(base + i, dst)
    targets = sorted(dst for _src, dst in fds)
    low = 0
    for dst in targets:
        if dst > low:
            os.closerange(low, dst)
        low = dst + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))
