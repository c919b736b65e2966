"""Logging in Postfix's formats, to syslog or to maillog_file.

``init(config, program)`` sets the tag ``$syslog_name/program`` (so
``postfix/smtpd``); after it, ``info``, ``warning``, ``error``, ``fatal`` and
``panic`` write one line each, the latter four with Postfix's ``warning:``,
``error:``, ``fatal:``, ``panic:`` prefixes. With ``maillog_file`` set, lines go
to that file as ``Mmm dd hh:mm:ss host tag[pid]: text``, each line written with
one ``write`` on an O_APPEND descriptor so that concurrent processes do not
interleave; otherwise to syslog, facility ``syslog_facility``, with the pid.

Every line is passed through ``printable`` first, as Postfix's msg_output
does: a control character, an invalid UTF-8 byte (a surrogate escape) or
another unprintable character becomes ``?``, so nothing a client sent can
forge a line break or a terminal escape in the log.

``address(addr)`` is how every line shows an envelope address (``from=<…>``,
``to=<…>``, ``orig_to=<…>``), as Postfix's info_log_addr_form: with
``info_log_address_format = external`` (the default since Postfix 3.5) in the
external form, the local part quoted when it is not a dot-string
(``rfc822.quote_822_local``: ``"john doe"@example.net``), so that a local part
a client chose cannot pass for other fields of the line (``x>, status=sent``);
with ``internal`` as it is kept in the queue (``john doe@example.net``). The
empty address stays empty (``from=<>``). The whole line is then made
printable as every other.

``reset_in_child()`` is for a process that master forked instead of
exec'ing: it closes the syslog connection it inherited and forgets master's
log file descriptor and prefix (the child closes master's descriptors and
calls ``init`` itself).

``fatal`` logs and exits the process with status 1 (master restarts a daemon);
``panic`` does the same for a broken invariant. Commands pass ``stderr=True`` to
also print ``program: text`` on standard error, as Postfix's commands do.
"""

from __future__ import annotations

import os
import sys
import syslog
import time
from typing import NoReturn

from pymailsys.rfc822 import quote_822_local

_FACILITIES = {
    "mail": syslog.LOG_MAIL, "daemon": syslog.LOG_DAEMON, "user": syslog.LOG_USER,
    **{f"local{i}": getattr(syslog, f"LOG_LOCAL{i}") for i in range(8)},
}


class _State:
    tag = "postfix"
    program = "postfix"
    host = "localhost"
    fd: int | None = None
    use_syslog = False
    stderr = False
    prefix = "localhost postfix[0]: "  # "host tag[pid]: ", fixed per process
    stamp = ""
    stamp_second = -1
    internal_addresses = False  # info_log_address_format = internal


_state = _State()


def init(config, program: str, stderr: bool = False) -> None:  # type: ignore[no-untyped-def]
    """Configure logging for this process from main.cf."""
    name = config.get("syslog_name") or "postfix"
    _state.program = program
    _state.tag = f"{name}/{program}"
    _state.host = config.get("myhostname").split(".")[0]
    _state.stderr = stderr
    _state.prefix = f"{_state.host} {_state.tag}[{os.getpid()}]: "
    # validate refuses any other value than external or internal before a daemon runs
    _state.internal_addresses = (
        config.get("info_log_address_format").strip().lower() == "internal")
    path = config.get("maillog_file")
    if _state.fd is not None:
        os.close(_state.fd)
        _state.fd = None
    if path:
        _state.use_syslog = False
        try:
            if path == "/dev/stdout":
                _state.fd = os.dup(1)
            else:
                _state.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError:
            # An unprivileged command (sendmail run by a user) may not write the
            # mail system's log; Postfix hands such lines to postlogd. Until we
            # have one, such a command logs to syslog.
            syslog.openlog(_state.tag, syslog.LOG_PID, syslog.LOG_MAIL)
            _state.use_syslog = True
    else:
        facility = _FACILITIES.get(config.get("syslog_facility").lower(), syslog.LOG_MAIL)
        syslog.openlog(_state.tag, syslog.LOG_PID | syslog.LOG_NDELAY, facility)
        _state.use_syslog = True


def init_stderr_only(program: str) -> None:
    """Before a configuration is loaded: messages go to standard error only."""
    _state.program = program
    _state.stderr = True
    _state.use_syslog = False


def reset_in_child() -> None:
    """Forget master's logging state in a forked child, before its descriptors are closed.

    The C library's syslog socket is closed now: once its number is closed
    and reused, syslog() would write log lines into whatever took it.
    """
    global _state
    syslog.closelog()
    _state = _State()


def tag() -> str:
    return _state.tag


def printable(text: str, replacement: str = "?") -> str:
    """Postfix's printable(): every unprintable character replaced.

    Unprintable: ASCII control characters and DEL, surrogate escapes (bytes
    that were not UTF-8), and what Unicode calls Other or Separator except
    the space. Used for every log line and for client strings bound for a
    header (smtpd's HELO name).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else replacement for c in text)


def escape(data: bytes) -> str:
    """Postfix's escape(): printable ASCII kept (a backslash doubled), \\r, \\n, \\t and
    the other C escapes for their controls, every other byte as \\ooo (octal)."""
    out = []
    for ch in data:
        if 32 <= ch <= 126:
            out.append("\\\\" if ch == 92 else chr(ch))
        else:
            out.append(_C_ESCAPES.get(ch) or f"\\{ch:03o}")
    return "".join(out)


_C_ESCAPES = {7: "\\a", 8: "\\b", 12: "\\f", 10: "\\n", 13: "\\r", 9: "\\t", 11: "\\v"}


def address(addr: str) -> str:
    """An envelope address (internal form) as log lines show it: info_log_address_format.

    external: ``"john doe"@example.net``; internal: ``john doe@example.net``;
    the empty address is ``""`` either way.
    """
    if not addr or _state.internal_addresses:
        return addr
    return quote_822_local(addr)


def _emit(priority: int, text: str) -> None:
    text = printable(text)
    if _state.fd is not None:
        now = int(time.time())
        if now != _state.stamp_second:
            _state.stamp_second = now
            _state.stamp = time.strftime("%b %d %H:%M:%S", time.localtime(now))
        line = f"{_state.stamp} {_state.prefix}{text}\n"
        try:
            os.write(_state.fd, line.encode("utf-8", "replace"))
        except OSError:
            pass
    elif _state.use_syslog:
        syslog.syslog(priority, text)
    if _state.stderr and priority != syslog.LOG_INFO:
        sys.stderr.write(f"{_state.program}: {text}\n")
        sys.stderr.flush()


def info(text: str) -> None:
    _emit(syslog.LOG_INFO, text)


def warning(text: str) -> None:
    _emit(syslog.LOG_WARNING, "warning: " + text)


def error(text: str) -> None:
    _emit(syslog.LOG_ERR, "error: " + text)


def fatal(text: str, status: int = 1) -> NoReturn:
    _emit(syslog.LOG_CRIT, "fatal: " + text)
    sys.exit(status)


def panic(text: str) -> NoReturn:
    _emit(syslog.LOG_CRIT, "panic: " + text)
    sys.exit(2)


def format_delay(seconds: float) -> str:
    """Postfix's delay format: >= 10 whole seconds, >= 1 one decimal, < 1 at most two decimals.

    Trailing zeros are dropped: 12.7 -> "12", 1.25 -> "1.2", 0.018 -> "0.02", 0.004 -> "0".
    """
    if seconds >= 10:
        return str(int(seconds))
    if seconds < 0.005:  # "0.00", and a negative delay: most of the four delays
        return "0"
    return (f"{seconds:.1f}" if seconds >= 1 else f"{seconds:.2f}").rstrip("0").rstrip(".")
