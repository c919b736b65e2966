"""The postmaster's transcript of an SMTP session with errors (notify_classes).

NAME
    transcript - smtpd's session history, mailed to error_notice_recipient

SYNOPSIS
    notices = transcript.Notices(config, cleanup_pool)   # per process (handler.Smtpd)
    t = notices.start()            # per session
    writer = t.watch(writer)       # what the session writes is recorded ("Out: ")
    t.query(line)                  # a command line the client sent ("In:  ")
    t.rejected()                   # the next error reply is a restriction's rejection
    t.reason = "lost connection"   # why the session ended early, when it did
    await t.finish(client)         # the notice, when the session's errors call for one

DESCRIPTION
    As Postfix's smtpd_chat: while notify_classes names a class that smtpd
    reports (bounce, data, policy, protocol, resource, software), each
    session keeps its history, every command line as ``In:  LINE`` and every
    reply line as ``Out: LINE``. An EHLO, an RSET or a queued message clears
    a history longer than smtpd_history_flush_threshold lines (the errors
    seen stay noted). Each error reply notes its class:

    * data: a table that could not answer (``Temporary lookup failure``);
    * software: any other 4.3.x (a server configuration problem, an
      internal error);
    * resource: cleanup could not write the queue file (``451 4.3.0 Error:
      queue file write error``), or too little space (4.3.1);
    * policy: a restriction's rejection (the session says so with
      ``rejected()`` as it logs ``NOQUEUE: reject``), or too many recipients;
    * bounce: a message refused after DATA for its size (5.3.4);
    * protocol: any other reply with an X.5.X status: bad syntax, a command
      out of sequence or unknown, an unsupported option, improper pipelining.

    When the session ends with an error of a class in notify_classes, a
    notice goes to error_notice_recipient, from double_bounce_sender, through
    cleanup (origin ``notify``), in Postfix's words::

        From: MAILER-DAEMON (Mail Delivery System)
        To: postmaster (Postmaster)
        Subject: Postfix SMTP server: errors from host[addr]

        Transcript of session follows.

         Out: 220 mx.example.com ESMTP Postfix
         In:  RCPT TO:<x@elsewhere.example>
         Out: 554 5.7.1 <x@elsewhere.example>: Relay access denied

        Session aborted, reason: lost connection

        For other details, see the local mail logfile

    Each history line starts with a space, has its control characters made
    ``?`` and wraps at 78 columns with a 4-space indent. A notice that cleanup
    cannot take is a warning (``postmaster notify: ...``), never an error of
    the session.

SECURITY
    What the client sent reaches the notice only inside those indented,
    printable lines, never as a header. The history is bounded
    (HISTORY_LIMIT lines, kept as at most ENTRY_LIMIT bytes a command line or
    reply; LINE_LIMIT characters of each line reach the notice).

CONFIGURATION PARAMETERS
    notify_classes, error_notice_recipient, double_bounce_sender, myorigin,
    mail_name, smtpd_history_flush_threshold.
"""

from __future__ import annotations

import asyncio
import re
import textwrap
from collections.abc import Callable, Iterator

from pymailsys import log
from pymailsys.config import Config
from pymailsys.ipc import services
from pymailsys.ipc.attr import AttrPool, AttrValue, ProtocolError, request_streamed

SMTPD_CLASSES = frozenset(("bounce", "data", "policy", "protocol", "resource", "software"))
HISTORY_LIMIT = 500  # lines, whatever the flush threshold
LINE_LIMIT = 512  # characters kept of one line (an SMTP command line, RFC 5321)
ENTRY_LIMIT = 4 * LINE_LIMIT  # bytes kept of one command line or reply (UTF-8: 4 a character)
EVENT_BATCH = 32  # commands and replies noted before they are taken into the history
_IN, _OUT, _REJECTED = 0, 1, 2  # the kinds of events noted
_ERROR_FIRST = frozenset((b"4", b"5"))
_STATUS = re.compile(r"[45]\d\d[ -]([45])\.(\d{1,3})\.(\d{1,3})\b")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def error_class(reply: str, rejected: bool) -> str | None:
    """The notify class of an error reply line (see the module docstring), or None."""
    m = _STATUS.match(reply)
    if m is None:
        return None
    subject, detail = m.group(2), m.group(3)
    if "Temporary lookup failure" in reply:
        return "data"
    if "queue file write error" in reply or (subject, detail) == ("3", "1"):
        return "resource"
    if (subject, detail) == ("3", "4"):
        return "bounce"
    if subject == "3":
        return "software"
    if rejected or "too many recipients" in reply:
        return "policy"
    return "protocol" if subject == "5" else None


class Notices:
    """What one smtpd process needs to write transcripts."""

    def __init__(self, config: Config, cleanup: AttrPool) -> None:
        self.classes = frozenset(c.lower() for c in config.get_list("notify_classes"))
        self.recipient = config.get("error_notice_recipient")
        self.sender = f"{config.get('double_bounce_sender')}@{config.get('myorigin')}"
        self.mail_name = config.get("mail_name")
        self.flush_threshold = config.get_int("smtpd_history_flush_threshold")
        self.cleanup = cleanup

    def start(self) -> Transcript:
        return Transcript(self, bool(self.classes & SMTPD_CLASSES))


class Transcript:
    """One session's history and the error classes it met.

    History entries are kept as the bytes that went by (``In:  `` + a command
    line, ``Out: `` + the lines of one reply) and decoded only when a notice
    is written. What goes by is first only noted, as it is (``_events``), and
    taken into the history in order (``_digest``: line counts, flushes, error
    classes) once EVENT_BATCH events wait, or when the history, the errors or
    the notice are asked for: a session without errors pays for a list append
    per command and per reply."""

    def __init__(self, notices: Notices, recording: bool) -> None:
        self.notices = notices
        self.recording = recording
        self._history: list[bytes] = []
        self._line_count = 0  # lines in history (an entry may hold a multi-line reply)
        self._errors: set[str] = set()
        self._events: list[tuple[int, bytes]] = []  # noted, not yet in the history
        self._error_noted = False  # a 4xx or 5xx reply went by
        self.reason = ""
        self._rejected = False

    @property
    def history(self) -> list[bytes]:
        self._digest()
        return self._history

    @property
    def line_count(self) -> int:
        self._digest()
        return self._line_count

    @property
    def errors(self) -> set[str]:
        self._digest()
        return self._errors

    def watch(self, writer: asyncio.StreamWriter) -> Callable[[bytes], None]:
        """From now on writer's writes are recorded as replies; returns the function
        that writes on it (and records): its transport's write underneath, without
        StreamWriter.write's call in between (that one is only transport.write)."""
        write = writer.transport.write
        if self.recording:
            events = self._events

            def recorded(data: bytes | bytearray | memoryview) -> None:
                events.append((_OUT, data if type(data) is bytes else bytes(data)))
                if data[:1] in _ERROR_FIRST:
                    self._error_noted = True
                if len(events) >= EVENT_BATCH:
                    self._digest()
                write(data)

            writer.write = recorded  # type: ignore[method-assign]
            return recorded
        return write

    def unwatch(self, writer: asyncio.StreamWriter) -> None:
        """writer no longer recorded (its wrapper and the writer hold each other)."""
        writer.__dict__.pop("write", None)

    def query(self, line: bytes) -> None:
        """A command line the client sent."""
        if self.recording:  # _note, inline (a call per command costs as much as the rest)
            events = self._events
            events.append((_IN, line))
            if len(events) >= EVENT_BATCH:
                self._digest()

    def rejected(self) -> None:
        """The next error reply is a restriction's rejection."""
        if self.recording:
            self._note(_REJECTED, b"")

    def _note(self, kind: int, data: bytes) -> None:
        events = self._events
        events.append((kind, data))
        if len(events) >= EVENT_BATCH:
            self._digest()

    def _digest(self) -> None:
        """Take the noted events into the history, in the order they happened."""
        events = self._events
        for kind, data in events:
            if kind == _OUT:
                self._replies(data)
            elif kind == _IN:
                self._query(data)
            else:
                self._rejected = True
        events.clear()

    def _query(self, line: bytes) -> None:
        if self._line_count < HISTORY_LIMIT:
            self._history.append(b"In:  " + line[:ENTRY_LIMIT].rstrip(b"\r\n"))
            self._line_count += 1
        if line[:4].upper() in (b"EHLO", b"RSET"):
            self._flush()

    def _replies(self, data: bytes) -> None:
        if self._line_count < HISTORY_LIMIT:
            self._history.append(b"Out: " + data[:ENTRY_LIMIT])
            self._line_count += data.count(b"\n") or 1
        first = data[:1]
        if first == b"4" or first == b"5":
            for raw in data.split(b"\r\n"):
                if raw[:1] in (b"4", b"5"):
                    found = error_class(raw.decode("utf-8", "replace"), self._rejected)
                    if found is not None:
                        self._errors.add(found)
                    if raw[3:4] != b"-":
                        self._rejected = False
        elif data.startswith(b"250 ") and b" queued as " in data:
            self._flush()

    def _flush(self) -> None:
        if self._line_count > self.notices.flush_threshold:
            self._history.clear()
            self._line_count = 0

    def history_lines(self) -> Iterator[str]:
        """The history as text, one line each (``In:  ...``, ``Out: ...``)."""
        for entry in self.history:  # digested
            prefix, body = entry[:5], entry[5:]
            parts = [body] if prefix == b"In:  " else [p for p in body.split(b"\r\n") if p]
            for part in parts:
                yield (prefix + part).decode("utf-8", "replace")[:LINE_LIMIT]

    def due(self) -> bool:
        if not self.recording:
            return False
        if not self._error_noted:
            return False  # no error reply: nothing to digest for the answer
        return bool(self.errors & self.notices.classes)

    def lines(self, client: str) -> Iterator[str]:
        """The notice, header and body (module docstring)."""
        n = self.notices
        yield "From: MAILER-DAEMON (Mail Delivery System)"
        yield f"To: {_CONTROL.sub('?', n.recipient)} (Postmaster)"
        yield f"Subject: {n.mail_name} SMTP server: errors from {client}"
        yield ""
        yield "Transcript of session follows."
        yield ""
        for line in self.history_lines():
            for part in textwrap.wrap(_CONTROL.sub("?", line), 78, subsequent_indent="    ",
                                      break_long_words=False, break_on_hyphens=False) or [""]:
                yield " " + part
        yield ""
        if self.reason:
            yield f"Session aborted, reason: {self.reason}"
        yield ""
        yield "For other details, see the local mail logfile"

    async def finish(self, client: str) -> None:
        """Queue the notice when it is due; a warning when cleanup cannot take it."""
        if not self.due():
            return
        n = self.notices
        attrs: list[tuple[str, AttrValue]] = [
            ("origin", "notify"), ("sender", n.sender), ("rcpt", n.recipient),
            ("rewrite_context", "local"), ("flags", services.CLEANUP_FLAG_MAP_OK)]
        content = ("".join(line + "\n" for line in self.lines(client))).encode(
            "utf-8", "surrogateescape")
        try:
            reply = await request_streamed(n.cleanup, attrs, "content", [content])
        except (ProtocolError, OSError, TimeoutError) as e:
            log.warning(f"postmaster notify: {e}")
            return
        if reply.number("status", -1) != services.CLEANUP_OK:
            log.warning(f"postmaster notify: {reply.text('dsn')} {reply.text('reason')}")
