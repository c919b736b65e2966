"""A forked child's command line and environment, as ps and /proc show them.

Contract: a child that master forks (``forking``) runs in master's memory
image, so ``/proc/PID/cmdline`` and ``/proc/PID/environ`` would still show
master's. ``show(argv, env)`` writes the child's arguments and environment,
NUL-separated, over the kernel's argument and environment areas of the
process (``arg_start``..``arg_end`` and ``env_start``..``env_end`` of
``/proc/self/stat``) and fills the rest with NULs, so that both files read
exactly as they did for an exec'd ``python3 -P -m MODULE ...`` child (empty
trailing strings aside, which ``ps`` and the usual readers drop), and no
byte of master's own environment stays in the child's. What does not fit
is cut at a string boundary: the argument area ends the kernel's view of
the command line (the setproctitle package joins the words with spaces
into a single string instead, which would break every reader that splits
``/proc/PID/cmdline`` on NULs, tests/harness.py among them).

The areas are as large as master's own command line and environment.
``start_clean(env)``, called first thing in master, re-executes master once
with the environment env (what import_environment lets through) and with
empty arguments and environment strings appended up to ``ROOM`` bytes each
(empty strings are invisible: Python skips an environment string without
``=``; master drops the empty arguments, and their presence tells it that
it was re-executed).

``show`` must run after the child's environment was put in place with
``os.environ`` (which makes the C library copy every string it keeps), so
nothing still points into the area it overwrites.
"""

from __future__ import annotations

import ctypes
import os
import sys

ROOM = 4096  # bytes of command line and of environment a child can show

_FIRST_FIELD = 3  # /proc/self/stat: fields after "pid (comm)" start at field 3
_ARG_START = 48  # then arg_end, env_start, env_end (proc(5), Linux 3.5+)


def areas() -> tuple[int, int, int, int] | None:
    """(arg_start, arg_end, env_start, env_end) of this process, None when unknown."""
    try:
        with open("/proc/self/stat", "rb") as f:
            text = f.read()
        fields = text[text.rindex(b")") + 2:].split()
        first = _ARG_START - _FIRST_FIELD
        arg_start, arg_end, env_start, env_end = (int(v) for v in fields[first:first + 4])
    except (OSError, ValueError):
        return None
    if not (0 < arg_start < arg_end and 0 < env_start <= env_end):
        return None
    return arg_start, arg_end, env_start, env_end


def start_clean(env: dict[str, str]) -> None:
    """Re-execute this process with env and room for the children's titles.

    Returns only when execve fails. The re-executed process gets at least
    one padding argument, which is how it knows not to do this again.
    """
    found = areas()
    more_args, more_env = 1, 0
    if found is not None:
        arg_start, arg_end, env_start, env_end = found
        more_args = max(1, ROOM - (arg_end - arg_start))
        more_env = max(0, ROOM - len(b"".join(os.fsencode(f"{k}={v}") + b"\0"
                                              for k, v in env.items())))
    argv = [os.fsencode(a) for a in sys.orig_argv] + [b""] * more_args
    envp = [os.fsencode(f"{k}={v}") for k, v in env.items()] + [b""] * more_env
    libc = ctypes.CDLL(None, use_errno=True)
    sys.stdout.flush()
    sys.stderr.flush()
    libc.execve(os.fsencode(sys.executable), _c_strings(argv), _c_strings(envp))


def show(argv: list[str], env: dict[str, str]) -> None:
    """Make /proc/self/cmdline and /proc/self/environ read argv and env."""
    found = areas()
    if found is None:
        return
    arg_start, arg_end, env_start, env_end = found
    _fill(arg_start, arg_end, [os.fsencode(a) for a in argv])
    _fill(env_start, env_end, [os.fsencode(f"{k}={v}") for k, v in env.items()])


def _fill(start: int, end: int, strings: list[bytes]) -> None:
    room = end - start
    data = b"".join(s + b"\0" for s in strings)
    if len(data) > room:
        data = data[:data.rfind(b"\0", 0, room) + 1]
    ctypes.memmove(start, data.ljust(room, b"\0"), room)


def _c_strings(items: list[bytes]) -> ctypes.Array[ctypes.c_char_p]:
    return (ctypes.c_char_p * (len(items) + 1))(*items, None)
