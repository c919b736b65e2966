"""CPU time of processes and threads as the kernel counts it: /proc/PID/stat.

The one reader of CPU time for the benchmarks under tests/bench (the way
callgrind.py is the one reader of instruction counts):

* ``proc_stat(pid, tid=None, proc="/proc")``: the fields of /proc/PID/stat (or
  of one thread, /proc/PID/task/TID/stat) after the command name, index 0 =
  state, so that field N of proc(5) is index N - 3; None when the process is
  gone. ``proc`` names another proc root (a test's).
* ``cpu_of(fields, reaped=False)``: (user, system) seconds from those fields;
  with ``reaped`` the children the process waited for are added (cutime,
  cstime).
* ``cpu_seconds(pid, tid=None)``: (user, system) seconds of a live process,
  all its threads (or of one thread); ProcessLookupError when it is gone.
* ``thread_name(pid, tid)``: a thread's name (comm), "" when it is gone.
* ``profiled_command(module, out)``: the start of a command line that runs a
  daemon module's ``main(argv)`` under cProfile counting CPU time (not wall time,
  which would count the other processes' turns too) and leaves the statistics in
  ``out`` when it exits (SIGTERM included); the daemon's arguments follow.

Seconds are ticks (``TICK`` per second, usually 100) divided out: a figure
below a few hundred ticks is too coarse to compare.
"""

from __future__ import annotations

import os
import sys

TICK = os.sysconf("SC_CLK_TCK")
_UTIME, _STIME, _CUTIME, _CSTIME = 11, 12, 13, 14


def _path(pid: int, tid: int | None, proc: str = "/proc") -> str:
    return f"{proc}/{pid}/stat" if tid is None else f"{proc}/{pid}/task/{tid}/stat"


def proc_stat(pid: int, tid: int | None = None, proc: str = "/proc") -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state)."""
    try:
        with open(_path(pid, tid, proc)) as f:
            text = f.read()
    except OSError:
        return None
    return text[text.rindex(")") + 2:].split()


def cpu_of(fields: list[str], reaped: bool = False) -> tuple[float, float]:
    """(user, system) seconds from proc_stat's fields; ``reaped`` adds waited-for children."""
    user, system = int(fields[_UTIME]), int(fields[_STIME])
    if reaped:
        user += int(fields[_CUTIME])
        system += int(fields[_CSTIME])
    return user / TICK, system / TICK


def cpu_seconds(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(user, system) seconds of a live process (all threads) or of one thread."""
    fields = proc_stat(pid, tid)
    if fields is None:
        raise ProcessLookupError(pid)
    return cpu_of(fields)


def thread_name(pid: int, tid: int) -> str:
    try:
        with open(_path(pid, tid)) as f:
            text = f.read()
    except OSError:
        return ""
    return text[text.index("(") + 1:text.rindex(")")]


_PROFILED = """
import cProfile, importlib, sys, time
out, module = sys.argv.pop(1), sys.argv.pop(1)
main = importlib.import_module(module).main
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(main, sys.argv[1:])
finally:
    profile.dump_stats(out)
"""


def profiled_command(module: str, out: str) -> list[str]:
    """``python -c SCRIPT OUT MODULE``: run ``module.main`` under cProfile (module docstring)."""
    return [sys.executable, "-c", _PROFILED, out, module]
