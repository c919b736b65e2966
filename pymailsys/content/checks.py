"""header_checks, mime_header_checks, nested_header_checks and body_checks (header_checks(5)).

``CheckTables.from_config(config)`` opens the four parameters' tables once
(mime_header_checks and nested_header_checks default to $header_checks);
``MessageChecks(tables, where)`` applies them to one message: ``header(kind,
lines)`` for one complete header (its lines without line ends; ``kind`` is
``PRIMARY``, ``MULTIPART`` or ``NESTED``: the lines to write before it, and
its own lines, None when dropped; as in Postfix's cleanup, a MIME header
(Content-Type, Content-Transfer-Encoding, Content-Disposition, Content-ID,
Content-Description, MIME-Version) is a mime_header_checks one in any header
block) and ``body(line)`` for one body line or
piece of a long line (likewise). The whole header, folded lines joined with newlines, is one
lookup key, a FULL lookup of the maps registry (regexp:, pcre: or any table).

Actions, as Postfix 3.7's cleanup_act(); the word is case-insensitive, the
text after it optional unless said:

* REJECT [text]: the message is refused with ``5.7.1 text`` (default
  ``message content rejected``; a text that starts with a DSN code keeps it,
  a 4.x.x one defers); no further checks;
* DISCARD [text]: accepted and thrown away; no further checks;
* HOLD [text]: placed in hold/ (logged once);
* REDIRECT user@domain: every recipient is replaced; no further checks;
* BCC user@domain: one more recipient (DSN NOTIFY=NEVER), once per address
  however many lines match (Postfix's duplicate filter drops the copies), and
  at most BCC_KEPT addresses per message (the rest warned about once);
* FILTER transport:destination: recorded in ``filter`` for the caller (the
  last one wins; one that cannot name a transport is warned and skipped);
* PREPEND text: a header (``name: value``) or body line before this one;
* REPLACE text: this header (``name: value``) or body line replaced;
* IGNORE: this header or body line deleted;
* STRIP [text]: the same, logged;
* WARN [text], INFO [text]: logged only; DUNNO, OK: nothing.

Every action but IGNORE, DUNNO and OK logs, as Postfix does,
``ID: ACTION: header|body CONTENT from ORIGIN; from=<s> to=<r> proto=P helo=<h>: TEXT``
(CONTENT cut at 200 characters, control characters replaced); a malformed
action logs Postfix's warning and passes the line. body_checks see only the
first body_checks_size_limit bytes of each body part (0: no limit).

MIME errors, as Postfix 3.7's mime_state and cleanup report them (``mime_error``):
each kind is logged once, when first seen, ``ID: reject: mime-error WHAT: TEXT
from ORIGIN; from=<s> to=<r>`` (TEXT cut at 100 characters), and once the
content ended (``finish``) the most serious one rejects the message with
``5.6.0 WHAT``, unless a rule already rejected or discarded it:

* ``MIME nesting exceeds safety limit``: a multipart nested deeper than
  mime_nesting_limit (``mime.MimeState``), with any header table or strict_*
  setting (with body_checks alone the deeper parts are body text, unreported);
* ``improper use of 8-bit data in message header``: a header of any header
  block with a byte above 127 (strict_7bit_headers or strict_8bitmime);
* ``improper use of 8-bit data in message body``: such a byte in a body line
  whose part's Content-Transfer-Encoding is 7bit, said or implied
  (strict_8bitmime_body or strict_8bitmime);
* ``invalid message/* or multipart/* encoding domain``: a multipart or
  message/rfc822 that says base64 or quoted-printable, a message/partial or
  message/external-body that says 8bit or binary (strict_mime_encoding_domain).

None of them applies with disable_mime_input_processing, as in Postfix.

A table that cannot answer sets ``failed`` (the caller defers the message,
as for any table failure). Memory: the checks keep only the verdicts, none
of them growing with the number of matching lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from pymailsys import log, maps
from pymailsys.ipc import services

PRIMARY = "primary"
MULTIPART = "multipart"
NESTED = "nested"

_PARAM_OF = {PRIMARY: "header_checks", MULTIPART: "mime_header_checks",
             NESTED: "nested_header_checks"}
_DSN = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?=\s|$)")
_IS_HEADER = re.compile(r"[!-9;-~]+[ \t]*:")
# the headers Postfix's header_opts flags HDR_OPT_MIME
_MIME_HEADER = re.compile(rb"(?i)(?:content-(?:description|disposition|id|transfer-encoding|type)"
                          rb"|mime-version)[ \t]*:")
DEFAULT_REJECT = "5.7.1 message content rejected"
# Postfix's mime_err_detail, the most serious first
MIME_NESTING = "MIME nesting exceeds safety limit"
MIME_8BIT_HEADER = "improper use of 8-bit data in message header"
MIME_8BIT_BODY = "improper use of 8-bit data in message body"
MIME_ENCODING_DOMAIN = "invalid message/* or multipart/* encoding domain"
_MIME_ERRORS = (MIME_NESTING, MIME_8BIT_HEADER, MIME_8BIT_BODY, MIME_ENCODING_DOMAIN)
BCC_KEPT = 1000  # distinct BCC addresses one message's checks may add


def dsn_prepend(default: str, text: str) -> str:
    """Postfix's dsn_prepend(): text that starts with a DSN code keeps it, else default goes first."""
    if _DSN.match(text):
        return text
    return f"{default} {text}"


@dataclass
class CheckTables:
    """The opened check tables of one configuration (empty ones are None)."""

    headers: dict[str, maps.Maps | None]
    body: maps.Maps | None
    body_limit: int
    strict_header: bool = False  # 8-bit headers rejected (strict_7bit_headers)
    strict_body: bool = False  # 8-bit in a 7bit body rejected (strict_8bitmime_body)
    strict_domain: bool = False  # strict_mime_encoding_domain

    @classmethod
    def from_config(cls, config) -> CheckTables:  # type: ignore[no-untyped-def]
        headers: dict[str, maps.Maps | None] = {
            PRIMARY: maps.Maps(config, "header_checks") or None,
            MULTIPART: maps.Maps(config, "mime_header_checks") or None,
            NESTED: maps.Maps(config, "nested_header_checks") or None,
        }
        # as Postfix's cleanup_message: no MIME error is looked for without MIME processing
        mime = not config.get_bool("disable_mime_input_processing")
        both = mime and config.get_bool("strict_8bitmime")
        return cls(headers, maps.Maps(config, "body_checks") or None,
                   config.get_size("body_checks_size_limit"),
                   both or mime and config.get_bool("strict_7bit_headers"),
                   both or mime and config.get_bool("strict_8bitmime_body"),
                   mime and config.get_bool("strict_mime_encoding_domain"))

    @property
    def strict(self) -> bool:
        return self.strict_header or self.strict_body or self.strict_domain

    @property
    def active(self) -> bool:
        return (self.body is not None or any(m is not None for m in self.headers.values())
                or self.strict)

    @property
    def mime_aware(self) -> bool:
        """Lines past the primary header need the MIME structure: part headers, body
        lines, or (with any header table or strict_* setting) the nesting depth, as
        ``report_nesting``."""
        return self.active

    @property
    def report_nesting(self) -> bool:
        """MIME nesting past mime_nesting_limit rejects the message: with any header
        table or strict_* setting, as Postfix's MIME_OPT_REPORT_NESTING (not with
        body_checks alone)."""
        return self.strict or any(m is not None for m in self.headers.values())


@dataclass
class Where:
    """The message facts the log lines name (Postfix's log_* attributes)."""

    queue_id: str
    origin: str  # "host[addr]" or "local"
    sender: str
    recipient: str | None
    protocol: str = ""
    helo: str = ""

    def line(self, action: str, context: str, content: str, text: str) -> str:
        out = f"{self.queue_id}: {action}: {context} {content[:200]} from {self.origin};"
        out += f" from=<{log.address(self.sender)}>"
        if self.recipient is not None:
            out += f" to=<{log.address(self.recipient)}>"
        if self.protocol:
            out += f" proto={self.protocol}"
        if self.helo:
            out += f" helo=<{self.helo}>"
        if text:
            out += f": {text}"
        return log.printable(out)


@dataclass
class MessageChecks:
    """The checks of one message and what they decided."""

    tables: CheckTables
    where: Where
    reject: str = ""  # "5.7.1 text" once a REJECT matched
    discard: bool = False
    hold: bool = False
    redirect: str = ""
    filter: str = ""
    bcc: list[str] = field(default_factory=list)  # distinct, at most BCC_KEPT, in order
    failed: str = ""  # why a table could not answer
    stopped: bool = False  # REJECT, DISCARD, REDIRECT: no further checks
    body_seen: int = 0  # bytes of the current body part looked at
    mime_errors: set[str] = field(default_factory=set)  # the MIME errors logged
    _bcc_seen: set[str] = field(default_factory=set, repr=False)  # the addresses in bcc
    _bcc_full: bool = field(default=False, repr=False)  # BCC_KEPT reached, warned

    def header(self, kind: str, lines: list[bytes]) -> tuple[list[bytes], list[bytes] | None]:
        """(header lines to write before this one, this header's lines or None when IGNOREd)."""
        if self.tables.strict_header and MIME_8BIT_HEADER not in self.mime_errors:
            joined = b"\n".join(lines)
            if not joined.isascii():
                self.mime_error(MIME_8BIT_HEADER, joined)
        if kind != MULTIPART and _MIME_HEADER.match(lines[0]):
            kind = MULTIPART
        table = self.tables.headers[kind]
        if table is None or self.stopped:
            return [], lines
        text = b"\n".join(lines).decode("utf-8", "surrogateescape")
        result = self._act(table, _PARAM_OF[kind], "header", text)
        if result is None:
            return [], lines
        prepend, replacement = result
        if replacement is None:
            return prepend, lines
        return prepend, [replacement] if replacement else None

    def mime_nesting(self, lines: list[bytes]) -> None:
        """A multipart header went deeper than mime_nesting_limit: with ``report_nesting``
        a MIME error."""
        if self.tables.report_nesting:
            self.mime_error(MIME_NESTING, b"\n".join(lines))

    def mime_error(self, what: str, text: bytes) -> None:
        """A MIME error (what: one of _MIME_ERRORS) in this text: logged the first time,
        as Postfix's cleanup_mime_error_callback."""
        if what in self.mime_errors:
            return
        self.mime_errors.add(what)
        where = self.where
        log.info(log.printable(
            f"{where.queue_id}: reject: mime-error {what}: "
            f"{text[:100].decode('utf-8', 'surrogateescape')} from "
            f"{where.origin}; from=<{log.address(where.sender)}> "
            f"to=<{log.address(where.recipient or 'unknown')}>"))

    def finish(self) -> None:
        """The content ended: the most serious MIME error rejects the message, unless
        a rule rejected or discarded it, or a table failed (Postfix's cleanup sets its
        reason only when none is set, and a DISCARD clears the errors)."""
        if self.mime_errors and not (self.reject or self.discard or self.failed):
            self.reject = "5.6.0 " + next(e for e in _MIME_ERRORS if e in self.mime_errors)
            self.stopped = True

    def new_part(self) -> None:
        """A new body part starts: body_checks_size_limit counts again."""
        self.body_seen = 0

    def body(self, line: bytes) -> tuple[list[bytes], bytes | None]:
        """(lines to write before this body line or piece, the line itself or None when dropped)."""
        table = self.tables.body
        if table is None or self.stopped:
            return [], line
        limit = self.tables.body_limit
        if limit and self.body_seen >= limit:
            return [], line
        self.body_seen += len(line) + 1
        text = line.decode("utf-8", "surrogateescape")
        result = self._act(table, "body_checks", "body", text)
        if result is None:
            return [], line
        prepend, replacement = result
        if replacement is None:
            return prepend, line
        return prepend, replacement or None

    def _act(self, table: maps.Maps, param: str, context: str,
             text: str) -> tuple[list[bytes], bytes | None] | None:
        """(lines to prepend, replacement: None kept, b"" dropped), or None for no change."""
        try:
            value = table.find(text)
        except maps.TableError as e:
            why = "" if isinstance(e, maps.TableConfigError) else f" ({e})"  # else logged
            log.warning(f"{self.where.queue_id}: {param} map lookup problem -- "
                        f"message not accepted, try again later{why}")
            self.failed = str(e)
            self.stopped = True
            return None
        if value is None:
            return None
        word, _, rest = value.strip().partition(" ")
        if "\t" in word:
            word, _, more = word.partition("\t")
            rest = f"{more} {rest}" if rest else more
        rest = rest.strip(" \t")
        action = word.upper()
        where = self.where
        if action == "REJECT":
            reason = dsn_prepend("5.7.1", rest) if rest else DEFAULT_REJECT
            if reason[0] not in "45":
                log.warning(f"bad DSN action in {rest} -- need 4.x.x or 5.x.x")
                reason = "4" + reason[1:]
            self.reject = reason
            self.stopped = True
            log.info(where.line("reject", context, text, reason))
        elif action in ("WARN", "INFO"):
            log.info(where.line("warning" if action == "WARN" else "info", context, text, rest))
        elif action == "FILTER":
            if not rest:
                log.warning(f"missing FILTER command argument in {param} map")
            elif ":" not in rest or services.split_content_filter(rest) is None:
                log.warning(f"bad FILTER command {rest} in {param} -- need transport:destination")
            else:
                self.filter = rest
                log.info(where.line("filter", context, text, rest))
        elif action == "DISCARD":
            log.info(where.line("discard", context, text, rest))
            self.discard = True
            self.stopped = True
        elif action == "HOLD":
            if not self.hold and not self.discard:
                log.info(where.line("hold", context, text, rest))
                self.hold = True
        elif action in ("PREPEND", "REPLACE"):
            if not rest:
                log.warning(f"{action} action without text in {param} map")
            elif context == "header" and not _IS_HEADER.match(rest):
                log.warning(f'bad {action} header text "{rest}" in {param} map -- '
                            'need "headername: headervalue"')
            else:
                log.info(where.line(action.lower(), context, text, rest))
                new = rest.encode("utf-8", "surrogateescape")
                return ([new], None) if action == "PREPEND" else ([], new)
        elif action in ("REDIRECT", "BCC"):
            if "@" not in rest:
                what = "target" if action == "REDIRECT" else "address"
                log.warning(f'bad {action} {what} "{rest}" in {param} map -- need user@domain')
            elif action == "REDIRECT":
                self.redirect = rest
                self.stopped = True
                log.info(where.line("redirect", context, text, rest))
            else:
                log.info(where.line("bcc", context, text, rest))
                self._add_bcc(rest)
        elif action == "STRIP":  # IGNORE, logged
            log.info(where.line("strip", context, text, rest))
            return [], b""
        elif action == "IGNORE":
            return [], b""
        elif action not in ("DUNNO", "OK"):
            log.warning(f"unknown command in {param} map: {value}")
        return None

    def _add_bcc(self, address: str) -> None:
        if address in self._bcc_seen:
            return
        if len(self.bcc) >= BCC_KEPT:
            if not self._bcc_full:
                self._bcc_full = True
                log.warning(f"{self.where.queue_id}: more than {BCC_KEPT} BCC addresses "
                            "from header/body checks -- the rest not added")
            return
        self._bcc_seen.add(address)
        self.bcc.append(address)
