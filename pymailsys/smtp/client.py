"""The SMTP and LMTP client protocol: one session with one server.

NAME
    client - speak SMTP or LMTP to one server, as Postfix's smtp(8) does

SYNOPSIS
    session = await client.connect(peer, settings)      # greeting read
    await session.hello()                               # EHLO/LHLO, HELO fallback
    outcome = await session.send(envelope, text)        # one mail transaction
    await session.reset() / await session.quit()

DESCRIPTION
    ``connect`` opens a TCP connection (``Peer.port`` > 0) or a Unix socket
    (``Peer.path``) within the connect timeout and reads the greeting.
    ``hello`` sends EHLO (LHLO for LMTP) and remembers the extensions; an
    SMTP server that rejects EHLO gets HELO instead; the keywords of
    ``Settings.discard_ehlo`` are taken as not offered, and each EHLO then logs
    Postfix's ``discarding EHLO keywords: ...`` (``ehlo_mask``). ``send`` runs one
    transaction: MAIL FROM (SIZE=, BODY=8BITMIME or BODY=7BIT as the message
    was declared, and ENVID= and RET= when the server offers them; to a server
    that does not offer 8BITMIME, a message not declared 7bit goes through
    ``pymailsys.content.downgrade`` (8-bit MIME parts as quoted-printable,
    without SIZE=, as Postfix) unless ``Settings.mime_downgrade`` is off
    (disable_mime_output_conversion); content it cannot convert (MIME nesting
    past the limit) ends the connection and fails the recipients with 5.6.0),
    one RCPT TO per recipient (ORCPT= and NOTIFY=
    to a server that offers DSN), DATA, the message, and the end of
    data; with PIPELINING the commands up to DATA go out in one write (and
    when the server answers 354 to DATA though it refused every recipient,
    just "." goes, as RFC 2197 and Postfix say). A
    message larger than the server's SIZE is not sent (5.3.4). A message
    whose client asked for SMTPUTF8 goes with MAIL FROM's SMTPUTF8 to a
    server that offers it; when the server does not and the message needs
    it (UTF-8 in the envelope or a header: ``Envelope.smtputf8``, the
    queue file's flags), it is not sent: "SMTPUTF8 is required, but was not
    offered by host H[A]" (5.6.7), as Postfix. The message
    is given as chunks of LF-terminated lines (``QueueContent.text``, read
    from the queue file as it goes); each chunk is written with CRLF endings
    and dot-stuffing within the data transfer timeout, so memory does not
    grow with the message.

    The connection's ``tls.Policy`` (``pymailsys.smtp.tls``) decides
    STARTTLS: at ``may`` and above a server that offers it gets it after
    EHLO, then EHLO again; from ``encrypt`` up a server that does not offer
    it (or that took HELO only) fails the session (4.7.4 "TLS is required,
    but was not offered by host H[A]") before anything is sent in
    plaintext, and so does one that refuses STARTTLS ("TLS is required, but
    host H[A] refused to start TLS: REPLY"); at ``may`` the session then
    goes on in plaintext. A failed handshake, or one not done within
    smtp_starttls_timeout (``Timeouts.starttls``), is "Cannot start TLS:
    handshake failure", after Postfix's "SSL_connect error to H[A]:P:
    Connection timed out" (or "lost connection") at any smtp_tls_loglevel
    (``SessionError.tls_failed``: at ``may`` the caller
    may try the server again without TLS, as Postfix does). At ``verify`` and
    ``secure`` a certificate chain that does not verify fails the session
    with "Server certificate not trusted", and a certificate whose names do
    not match the policy's patterns with "Server certificate not verified"
    (4.7.5, after a polite QUIT), as Postfix. ``Session.tls_info`` is
    Postfix's "Untrusted/Trusted/Verified TLS connection established to
    ..." text.

    Every wait has its timeout (``Timeouts``: Postfix's smtp_*_timeout
    parameters). A reply is a value: code, enhanced status (from the text,
    or derived from the code) and text with control characters (and bytes
    that are not UTF-8) shown as "?", at most line_length_limit characters
    of it kept (``Settings.reply_limit``). As
    in Postfix, the code and the enhanced status are the last line's, and a
    reply whose class is not 2, 4 or 5 (199 to RCPT, 354 to the end of data,
    699) has the status 5.5.0: a hard failure, never a retry forever.

    Failures are classified where they happen:

    * ``SessionError`` - the session is unusable (connect failure, timeout,
      lost connection, greeting or HELO rejected, MAIL FROM rejected). Its
      ``reply`` is the server's answer if there was one; ``retry_other``
      says whether another server of the same destination may do better
      (Postfix: a broken connection, a 4xx, or a 5xx greeting when
      smtp_skip_5xx_greeting is on); ``text`` is Postfix's reason
      ("connect to H[A]:P: Connection refused", "host H[A] refused to talk
      to me: ..." for a refused greeting, EHLO, HELO or LHLO, "host H[A]
      said: ... (in reply to MAIL FROM command)", "conversation with H[A]
      timed out while ...", "lost connection with H[A] while ..."). Raised
      inside a transaction, its ``outcome`` holds the recipients a reply
      already decided (a refused RCPT TO, an LMTP end-of-data reply), which
      stand as Postfix's smtp_rcpt_fail/smtp_rcpt_done made them stand; the
      rest share the session's failure.
    * ``Outcome`` - per recipient, the server's answer (RCPT TO, or for
      LMTP the per-recipient reply after the end of data; otherwise the
      end-of-data reply), Postfix's reason text and the enhanced status that
      decides: 2.x.x delivered, 4.x.x try again, 5.x.x bounce. Only a 2xx
      reply to RCPT TO and then to the end of data (per recipient for LMTP)
      is a success: a reply to DATA that is not 3xx fails the accepted
      recipients, and when it is a 2xx it is Postfix's "Protocol error:
      host H[A] said: ..." (5.5.0, a bounce: no content was sent, and the
      server is out of step); the session is then not cached
      (``Session.dont_cache``), QUIT is sent.

REFUSES
    A reply line longer than ``MAX_REPLY_LINE`` or a reply of more than
    ``MAX_REPLY_LINES`` lines (the session fails as a protocol error).
"""

from __future__ import annotations

import asyncio
import re
import socket
import ssl
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from pymailsys import dsn, log
from pymailsys.content import downgrade
from pymailsys.log import printable
from pymailsys.queue.records import SMTPUTF8_REQUESTED
from pymailsys.rfc822 import quote_822_local
from pymailsys.smtp import ehlo_mask, tls

MAX_REPLY_LINE = 4096  # a longer reply line ends the session
MAX_REPLY_LINES = 100

_ENHANCED = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")


@dataclass(frozen=True)
class Timeouts:
    """Postfix's client timeouts, seconds (0 = no limit, as lmtp_connect_timeout)."""

    connect: float = 30
    helo: float = 300
    mail: float = 300
    rcpt: float = 300
    data_init: float = 120
    data_xfer: float = 180
    data_done: float = 600
    quit: float = 300
    starttls: float = 300  # the TLS handshake after STARTTLS


@dataclass(frozen=True)
class Peer:
    """One server: its name, address and port, or a Unix socket path."""

    name: str
    addr: str = ""
    port: int = 0
    path: str = ""

    @property
    def label(self) -> str:
        """``name[addr]`` as in Postfix's reasons."""
        return f"{self.name}[{self.path or self.addr}]"

    @property
    def relay(self) -> str:
        """``name[addr]:port`` as in Postfix's relay= (no port for a Unix socket)."""
        return self.label if self.path else f"{self.label}:{self.port}"


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...] = ()  # the text kept (``Settings.reply_limit``)
    last: str = ""  # the last line's text, whose enhanced status counts, kept or not

    @property
    def text(self) -> str:
        """The lines joined with spaces, control characters replaced."""
        return printable(" ".join(t for t in self.lines if t))

    @property
    def dsn(self) -> str:
        """The enhanced status, as Postfix's smtp_chat_resp takes it: from the last line
        (the code is the last line's too), only when the reply's class is 2, 4 or 5 and
        the status's class is the same; X.0.0 for such a reply without one, and 5.5.0
        (a protocol error) for any other class (1xx, 3xx, 6xx...)."""
        klass = f"{self.code:03d}"[0]
        if klass not in "245":
            return "5.5.0"
        last = self.last or (self.lines[-1] if self.lines else "")
        m = _ENHANCED.match(last.lstrip(" "))
        if m and m.group(1) == klass:
            return m.group(0)
        return f"{klass}.0.0"

    @property
    def kind(self) -> int:
        return self.code // 100

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


class SessionError(Exception):
    """The session with this server failed; see the module docstring."""

    def __init__(self, text: str, reply: Reply | None = None, retry_other: bool = True,
                 dsn: str = "", tls_failed: bool = False, connected: bool = True) -> None:
        super().__init__(text)
        self.text = text
        self.reply = reply
        self.retry_other = retry_other
        self._dsn = dsn
        self.tls_failed = tls_failed  # the TLS handshake failed: the connection is lost
        # False: no connection was made; else the log's relay= names the server (Postfix
        # logs the session's host[addr]:port for every failure after the connect)
        self.connected = connected
        # Raised inside a transaction: the recipients whose fate a reply already decided
        # (``Outcome.replies[i]`` not None: a refused RCPT TO, an LMTP end-of-data
        # reply), as Postfix's smtp_rcpt_fail/smtp_rcpt_done mark them as replies come.
        self.outcome: Outcome | None = None

    @property
    def dsn(self) -> str:
        if self._dsn:
            return self._dsn
        return self.reply.dsn if self.reply is not None else "4.4.2"

    @property
    def permanent(self) -> bool:
        return self.dsn.startswith("5")


@dataclass(frozen=True)
class Envelope:
    """One transaction's envelope; the DSN fields go out only to a server that offers
    DSN: ``ret`` "FULL" or "HDRS", ``envid``, and per recipient (in the order of
    ``recipients``, or empty) ``orcpts`` ("rfc822;addr") and ``notifies`` (bit masks)."""

    sender: str
    recipients: list[str]
    size: int = 0
    encoding: str = ""  # the queue file's: "8bit" (BODY=8BITMIME), "7bit" (BODY=7BIT) or ""
    ret: str = ""
    envid: str = ""
    orcpts: list[str] = field(default_factory=list)
    notifies: list[int] = field(default_factory=list)
    smtputf8: int = 0  # the queue file's SMTPUTF8 flags (pymailsys.queue.records)


@dataclass
class Outcome:
    """Per recipient of one transaction: the deciding reply and Postfix's reason text."""

    replies: list[Reply | None] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    dsns: list[str] = field(default_factory=list)  # "2...": delivered, "4...", "5...": failed
    delivered: set[int] = field(default_factory=set)  # 2xx to the end of data: final

    def decided(self) -> Outcome:
        """The outcome of a transaction that broke: a recipient counts only when a reply
        decided it (refused, or delivered by an end-of-data reply); one accepted at RCPT
        TO and not yet delivered is undecided (reply None)."""
        replies = [None if d.startswith("2") and i not in self.delivered else r
                   for i, (r, d) in enumerate(zip(self.replies, self.dsns, strict=True))]
        return Outcome(replies, list(self.reasons), list(self.dsns), set(self.delivered))

    def accepted(self) -> list[int]:
        """The recipients that are, so far, a success."""
        return [i for i, d in enumerate(self.dsns) if d.startswith("2")]


@dataclass(frozen=True)
class Settings:
    helo_name: str
    lmtp: bool = False
    timeouts: Timeouts = field(default_factory=Timeouts)
    skip_5xx_greeting: bool = True
    # smtp_discard_ehlo_keywords (lmtp_discard_lhlo_keywords), lower case: the server's
    # keywords taken as not offered, each EHLO logging Postfix's "discarding EHLO keywords"
    discard_ehlo: frozenset[str] = frozenset()
    reply_limit: int = 2048  # line_length_limit: reply text kept, all lines together
    # address family -> the local address connections of that family are made from
    # (smtp_bind_address(6), else inet_interfaces' only address of the family:
    # networks.source_addresses); bind_enforce: a failed bind defers (4.4.0)
    source: dict[int, str] = field(default_factory=dict)
    bind_enforce: bool = False
    # 8-bit content to a server without 8BITMIME goes quoted-printable (not with
    # disable_mime_output_conversion), within these limits (``pymailsys.content.downgrade``)
    mime_downgrade: bool = True
    mime_limits: downgrade.Limits = field(default_factory=downgrade.Limits)


class Session:
    """An open connection whose greeting has been read."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: Peer,
                 settings: Settings, tls_policy: tls.Policy | None = None,
                 nexthop: str = "") -> None:
        self.reader = reader
        self.writer = writer
        self.peer = peer
        self.settings = settings
        self.tls = tls_policy or tls.Policy()
        self.nexthop = nexthop  # the nexthop domain, for certificate name matching
        self.timeouts = settings.timeouts
        self.extensions: dict[str, str] = {}
        self._size_limit = 0
        self.uses = 0
        self.broken = False
        self.dont_cache = False  # a protocol error: QUIT, not RSET and the cache
        self.opened = time.monotonic()
        self.tls_info = ""  # Postfix's "... TLS connection established to ..." text

    # --- low level ---------------------------------------------------------------

    async def _wait(self, coro, timeout: float, stage: str):  # type: ignore[no-untyped-def]
        try:
            if timeout > 0:
                return await asyncio.wait_for(coro, timeout)
            return await coro
        except TimeoutError:
            self.broken = True
            raise SessionError(f"conversation with {self.peer.label} timed out while {stage}",
                               dsn="4.4.2") from None
        except ssl.SSLError:
            raise  # the TLS handshake's caller classifies it
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            self.broken = True
            raise SessionError(f"lost connection with {self.peer.label} while {stage}",
                               dsn="4.4.2") from None

    async def _read_reply(self) -> Reply:
        """One reply. As Postfix's smtp_chat_resp, at most about line_length_limit
        (``Settings.reply_limit``) characters of text are kept (a line while less is
        kept, each line cut there); the rest is read and skipped, so that the protocol
        stays in step. Bytes that are not UTF-8 are kept as surrogate escapes, which
        ``Reply.text`` shows as "?" (Postfix's printable()). A line longer than
        MAX_REPLY_LINE or more than MAX_REPLY_LINES lines fail the session."""
        limit = self.settings.reply_limit
        lines: list[str] = []
        kept = count = 0
        while True:
            try:
                raw = await self.reader.readuntil(b"\n")
            except asyncio.LimitOverrunError:
                raise ConnectionError("reply line too long") from None
            if len(raw) > MAX_REPLY_LINE or count >= MAX_REPLY_LINES:
                raise ConnectionError("reply too long")
            count += 1
            line = raw.rstrip(b"\r\n").decode("utf-8", "surrogateescape")
            if len(line) < 3 or not line[:3].isdigit() or not line[:3].isascii() \
                    or (len(line) > 3 and line[3] not in " -"):
                raise ConnectionError("malformed reply")
            text = line[4:4 + limit]
            if kept < limit:
                lines.append(text)
                kept += len(text) + 1
            elif count == len(lines) + 1:  # the first line skipped: warn once, as Postfix
                log.warning(f"{self.peer.relay}: multi-line response longer than "
                            f"{limit} {printable(' '.join(lines))[:30]}...")
            if len(line) == 3 or line[3] == " ":
                return Reply(int(line[:3]), tuple(lines), text)

    async def reply(self, timeout: float, stage: str) -> Reply:
        return await self._wait(self._read_reply(), timeout, stage)  # type: ignore[no-any-return]

    async def _write(self, data: bytes, timeout: float, stage: str) -> None:
        self.writer.write(data)
        await self._wait(self.writer.drain(), timeout, stage)

    def _refused(self, reply: Reply) -> SessionError:
        """A refused EHLO/HELO/LHLO, in Postfix's words (smtp_helo). As Postfix 3.7's, a
        5xx is final: no other server (nor a fallback relay) is tried, the mail bounces."""
        return SessionError(f"host {self.peer.label} refused to talk to me: {reply}", reply,
                            retry_other=reply.kind != 5)

    def said(self, reply: Reply, command: str) -> str:
        return f"host {self.peer.label} said: {reply} (in reply to {command} command)"

    # --- the protocol ------------------------------------------------------------

    async def hello(self) -> None:
        t = self.timeouts
        verb = "LHLO" if self.settings.lmtp else "EHLO"
        name = self.settings.helo_name
        await self._write(f"{verb} {name}\r\n".encode(), t.helo,
                          f"performing the {verb} handshake")
        reply = await self.reply(t.helo, f"performing the {verb} handshake")
        if reply.kind == 2:
            self._take_extensions(reply)
            await self._starttls(verb)
            return
        if self.settings.lmtp or reply.code == 421:
            raise self._refused(reply)
        await self._write(f"HELO {name}\r\n".encode(), t.helo, "performing the HELO handshake")
        reply = await self.reply(t.helo, "performing the HELO handshake")
        if reply.kind != 2:
            raise self._refused(reply)
        self.extensions = {}
        self._size_limit = 0
        await self._starttls("HELO")  # no STARTTLS after HELO: fails when TLS is required

    async def _starttls(self, verb: str) -> None:
        """STARTTLS and a new EHLO/LHLO, as the TLS policy asks (module docstring)."""
        if self.tls.level == "none":  # (over a Unix socket, "may" is "none": smtp_agent)
            return
        if "STARTTLS" not in self.extensions:
            if self.tls.required:
                raise SessionError(f"TLS is required, but was not offered by host "
                                   f"{self.peer.label}", dsn="4.7.4")
            return
        t = self.timeouts
        await self._write(b"STARTTLS\r\n", t.helo, "sending STARTTLS")
        reply = await self.reply(t.helo, "sending STARTTLS")
        if reply.kind != 2:
            if self.tls.required:
                raise SessionError(f"TLS is required, but host {self.peer.label} refused to "
                                   f"start TLS: {reply}", reply)
            return  # opportunistic: the session goes on in plaintext, as Postfix's

        try:  # within smtp_starttls_timeout, as Postfix's tls_client_start
            await asyncio.wait_for(self.writer.start_tls(
                self.tls.context(), server_hostname=self.tls.sni(self.peer.name, self.nexthop)),
                t.starttls or None)
        except ssl.SSLCertVerificationError as e:
            self.broken = True
            log.info(f"server certificate verification failed for {self.peer.relay}: "
                     f"num={e.verify_code}:{e.verify_message}")
            raise SessionError("Server certificate not trusted", dsn="4.7.5") from None
        except (OSError, asyncio.IncompleteReadError) as e:  # an alert, a reset or a timeout
            self.broken = True
            if not isinstance(e, ssl.SSLError):  # logged at any smtp_tls_loglevel, as Postfix
                why = "Connection timed out" if isinstance(e, TimeoutError) else \
                    getattr(e, "strerror", None) or "lost connection"
                log.info(f"SSL_connect error to {self.peer.relay}: {why}")
            elif self.tls.loglevel:
                log.info(f"SSL_connect error to {self.peer.relay}: {e.reason or e}")
            raise SessionError("Cannot start TLS: handshake failure", dsn="4.7.5",
                               tls_failed=True) from None
        ssl_object = self.writer.get_extra_info("ssl_object")
        matched = False
        if ssl_object is not None:
            trust = "Untrusted" if ssl_object.getpeercert(binary_form=True) else "Anonymous"
            if self.tls.verifies:
                matched = self.tls.matches(ssl_object.getpeercert() or {}, self.peer.name,
                                           self.nexthop)
                trust = "Verified" if matched else "Trusted"
            elif self.tls.loglevel and await tls.chain_trusted(ssl_object, self.tls.ca_file,
                                                              self.tls.ca_path):
                trust = "Trusted"
            self.tls_info = tls.summary(trust, self.peer.relay, ssl_object)
            if self.tls.loglevel:
                log.info(self.tls_info)
        if self.tls.verifies and not matched:
            await self.quit()
            raise SessionError("Server certificate not verified", dsn="4.7.5")
        await self._write(f"{verb} {self.settings.helo_name}\r\n".encode(), t.helo,
                          f"performing the {verb} handshake")
        reply = await self.reply(t.helo, f"performing the {verb} handshake")
        if reply.kind != 2:
            raise self._refused(reply)
        self._take_extensions(reply)

    @property
    def offers_dsn(self) -> bool:
        """Whether the server announced DSN (RFC 3461): it then takes NOTIFY and the rest."""
        return "DSN" in self.extensions

    def size_limit(self) -> int:
        """The server's SIZE limit, 0 when it gave none (or a bad one)."""
        return self._size_limit

    def _take_extensions(self, reply: Reply) -> None:
        """The EHLO/LHLO extensions, and SIZE's limit as Postfix reads it: the first
        word, ASCII digits only; anything else ("SIZE ²", Arabic-Indic digits) is
        "bad EHLO SIZE limit" and no limit (SIZE= still goes with MAIL FROM)."""
        self.extensions = _extensions(reply)
        discard = self.settings.discard_ehlo
        if discard:
            notice = ehlo_mask.discard_notice(discard)
            if notice:
                log.info(notice)
            self.extensions = {name: value for name, value in self.extensions.items()
                               if name.lower() not in discard}
        self._size_limit = 0
        words = self.extensions.get("SIZE", "").split()
        if words:
            if words[0].isascii() and words[0].isdigit():
                self._size_limit = int(words[0])
            else:
                log.warning(f'bad EHLO SIZE limit "{printable(words[0])}" from '
                            f"{self.peer.relay}")

    async def send(self, env: Envelope, text: Iterable[bytes]) -> Outcome:
        """One mail transaction; SessionError when it cannot start or the session broke,
        with the recipients already decided in its ``outcome``."""
        outcome = Outcome()
        try:
            return await self._transaction(env, text, outcome)
        except SessionError as e:
            e.outcome = outcome.decided()
            raise

    async def _transaction(self, env: Envelope, text: Iterable[bytes], outcome: Outcome) -> Outcome:
        t = self.timeouts
        limit = self.size_limit()
        if limit and env.size > limit:
            raise SessionError(f"message size {env.size} exceeds size limit {limit} of server "
                               f"{self.peer.label}", retry_other=False, dsn="5.3.4")
        utf8 = "SMTPUTF8" in self.extensions and bool(env.smtputf8 & SMTPUTF8_REQUESTED)
        if env.smtputf8 & SMTPUTF8_REQUESTED and env.smtputf8 & ~SMTPUTF8_REQUESTED \
                and not utf8:
            raise SessionError(f"SMTPUTF8 is required, but was not offered by host "
                               f"{self.peer.label}", retry_other=False, dsn="5.6.7")
        self.uses += 1
        # as Postfix's SMTP_MIME_DOWNGRADE: content not declared 7bit, to a server without
        # 8BITMIME, is made 7-bit where its MIME headers say 8bit (and SIZE is not sent)
        downgrading = (self.settings.mime_downgrade and "8BITMIME" not in self.extensions
                       and env.encoding != "7bit")
        mail = f"MAIL FROM:<{quote_822_local(env.sender) if env.sender else ''}>"
        if "SIZE" in self.extensions and not downgrading:
            mail += f" SIZE={env.size}"
        if "8BITMIME" in self.extensions and env.encoding in ("8bit", "7bit"):
            mail += " BODY=8BITMIME" if env.encoding == "8bit" else " BODY=7BIT"
        if utf8:
            mail += " SMTPUTF8"
        offers_dsn = self.offers_dsn
        if offers_dsn and env.envid:
            mail += f" ENVID={dsn.xtext_encode(env.envid)}"
        if offers_dsn and env.ret:
            mail += f" RET={env.ret}"
        commands = [mail]
        for i, rcpt in enumerate(env.recipients):
            command = f"RCPT TO:<{quote_822_local(rcpt)}>"
            if offers_dsn and i < len(env.orcpts) and env.orcpts[i]:
                command += f" ORCPT={dsn.orcpt_param(env.orcpts[i])}"
            if offers_dsn and i < len(env.notifies) and env.notifies[i]:
                command += f" NOTIFY={dsn.notify_names(env.notifies[i])}"
            commands.append(command)
        pipelining = "PIPELINING" in self.extensions
        if pipelining:
            data = "".join(c + "\r\n" for c in commands) + "DATA\r\n"
            await self._write(data.encode("utf-8", "surrogateescape"), t.mail,
                              "sending MAIL FROM")
        accepted = 0
        for i, command in enumerate(commands):
            is_mail = i == 0
            stage = "MAIL FROM" if is_mail else "RCPT TO"
            timeout = t.mail if is_mail else t.rcpt
            if not pipelining:
                await self._write(command.encode("utf-8", "surrogateescape") + b"\r\n", timeout,
                                  f"sending {stage}")
            reply = await self.reply(timeout, f"receiving the {stage} reply" if pipelining
                                     else f"sending {stage}")
            if is_mail:
                if reply.kind != 2:
                    if pipelining:
                        await self._drain_replies(len(commands))
                    raise SessionError(self.said(reply, "MAIL FROM"), reply,
                                       retry_other=reply.kind == 4)
                continue
            outcome.replies.append(reply)
            if reply.kind == 2:
                outcome.reasons.append("")
                outcome.dsns.append(reply.dsn)
                accepted += 1
            else:
                dsn_, reason = self._failure(reply, "RCPT TO")
                outcome.reasons.append(reason)
                outcome.dsns.append(dsn_)
        if not pipelining and accepted:
            await self._write(b"DATA\r\n", t.data_init, "sending DATA command")
        if pipelining or accepted:
            reply = await self.reply(t.data_init, "sending DATA command")
            if reply.kind != 3:
                if accepted:  # a 2xx included: nothing was sent (Postfix's smtp_mesg_fail)
                    self._fail_accepted(outcome, reply, "DATA")
                return outcome
        if not accepted:
            if pipelining:  # a 354 though every RCPT TO failed: the server is in data mode
                await self._empty_data()
            return outcome
        try:
            await self._send_content(_downgraded(text, self.settings.mime_limits)
                                     if downgrading else text)
        except downgrade.MimeError as e:  # no way to cancel the data but to hang up
            self.close()
            raise SessionError(e.text, retry_other=False, dsn=e.dsn) from None
        await self._end_of_data(outcome)
        return outcome

    async def _empty_data(self) -> None:
        """End the data the server now waits for with just "." and read its reply (RFC
        2197, as Postfix), which decides nothing: every recipient has failed already."""
        stage = "sending end of data -- message may be sent more than once"
        await self._write(b".\r\n", self.timeouts.data_xfer, stage)
        reply = await self.reply(self.timeouts.data_done, stage)
        if reply.kind == 2:  # the server took an empty message: do not use it again
            self.dont_cache = True

    async def _drain_replies(self, count: int) -> None:
        """After a rejected MAIL FROM in a pipeline: read the RCPT and DATA replies."""
        for _ in range(count):
            await self.reply(self.timeouts.rcpt, "receiving the RCPT TO reply")

    def _failure(self, reply: Reply, command: str) -> tuple[str, str]:
        """The status and reason of a reply that fails a recipient, as Postfix's
        smtp_trouble: a status that is not 4.x.x or 5.x.x (a 2xx where no success can
        be) is "Protocol error: ..." with 5.5.0, and the session is not cached."""
        reason = self.said(reply, command)
        status = reply.dsn
        if status[0] not in "45":
            self.dont_cache = True
            return "5.5.0", f"Protocol error: {reason}"
        return status, reason

    def _fail_accepted(self, outcome: Outcome, reply: Reply, command: str) -> None:
        """Fail the recipients accepted so far with this reply to ``command``."""
        status, reason = self._failure(reply, command)
        for i in outcome.accepted():
            outcome.replies[i] = reply
            outcome.reasons[i] = reason
            outcome.dsns[i] = status

    async def _send_content(self, text: Iterable[bytes]) -> None:
        """The message (chunks of LF-terminated lines, a line possibly split between
        chunks) with CRLF line ends and dot-stuffing, one write per chunk, then the end."""
        stage = "sending message body"
        timeout = self.timeouts.data_xfer
        at_line_start = True
        for chunk in text:
            if not chunk:
                continue
            data = chunk.replace(b"\n", b"\r\n").replace(b"\r\n.", b"\r\n..")
            if at_line_start and data[:1] == b".":
                data = b"." + data
            at_line_start = chunk.endswith(b"\n")
            await self._write(data, timeout, stage)
        await self._write(b".\r\n" if at_line_start else b"\r\n.\r\n", timeout, stage)

    async def _end_of_data(self, outcome: Outcome) -> None:
        stage = "sending end of data -- message may be sent more than once"
        accepted = outcome.accepted()
        for n, i in enumerate(accepted if self.settings.lmtp else accepted[:1]):
            try:
                reply = await self.reply(self.timeouts.data_done, stage)
            except SessionError as e:
                for j in accepted[n:]:
                    outcome.replies[j] = None
                    outcome.reasons[j] = e.text
                    outcome.dsns[j] = "4.4.2"
                raise
            if reply.kind == 2:
                done = accepted if not self.settings.lmtp else [i]
                for j in done:
                    outcome.replies[j], outcome.reasons[j] = reply, str(reply)
                    outcome.dsns[j] = reply.dsn
                    outcome.delivered.add(j)
            elif not self.settings.lmtp:
                self._fail_accepted(outcome, reply, "end of DATA")
            else:
                outcome.replies[i] = reply
                outcome.dsns[i], outcome.reasons[i] = self._failure(reply, "end of DATA")

    async def reset(self) -> bool:
        """RSET, so that the connection can be cached; False when it is no longer usable."""
        if self.broken or self.dont_cache:
            return False
        try:
            await self._write(b"RSET\r\n", self.timeouts.helo, "sending RSET")
            return (await self.reply(self.timeouts.helo, "sending RSET")).kind == 2
        except SessionError:
            return False

    async def quit(self) -> None:
        if not self.broken:
            try:
                await self._write(b"QUIT\r\n", self.timeouts.quit, "sending QUIT")
                await self.reply(self.timeouts.quit, "sending QUIT")
            except SessionError:
                pass
        self.close()

    def close(self) -> None:
        self.broken = True
        self.writer.close()


def _downgraded(text: Iterable[bytes], limits: downgrade.Limits) -> Iterator[bytes]:
    """The message made 7-bit (``pymailsys.content.downgrade``), chunk by chunk."""
    converter = downgrade.Downgrade(limits)
    for chunk in text:
        yield converter.feed(chunk)
    yield converter.end()


def _extensions(reply: Reply) -> dict[str, str]:
    """EHLO keywords from the reply (the first 'line' is the server's name)."""
    out: dict[str, str] = {}
    for line in reply.lines[1:]:
        keyword, _, value = line.strip().partition(" ")
        out[keyword.upper()] = value.strip()
    return out


class BindError(Exception):
    """The source address could not be bound and smtp_bind_address_enforce is on."""


async def _open_inet(peer: Peer, source: dict[int, str], enforce: bool = False
                     ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TCP connection to peer, from source's address of the peer's family when there is
    one; a failed bind is a warning and the connection goes from the kernel's choice (or,
    with ``enforce``, ``BindError``), as Postfix's smtp_connect_addr."""
    family = socket.AF_INET6 if ":" in peer.addr else socket.AF_INET
    local = source.get(family)
    if local is None:
        return await asyncio.open_connection(peer.addr, peer.port, limit=MAX_REPLY_LINE * 2)
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.bind((local, 0))
        except OSError as e:
            log.warning(f"smtp_connect_addr: bind {local}: {e.strerror}")
            if enforce:
                raise BindError(local) from None
        await asyncio.get_running_loop().sock_connect(sock, (peer.addr, peer.port))
    except BaseException:
        sock.close()
        raise
    return await asyncio.open_connection(sock=sock, limit=MAX_REPLY_LINE * 2)


async def connect(peer: Peer, settings: Settings, tls_policy: tls.Policy | None = None,
                  nexthop: str = "") -> Session:
    """Open the connection and read the greeting; SessionError on failure. ``nexthop``
    is the destination's domain, which certificate names may have to match."""
    timeout = settings.timeouts.connect or None
    where = peer.path if peer.path else f"{peer.label}:{peer.port}"
    try:
        if peer.path:
            opener = asyncio.open_unix_connection(peer.path, limit=MAX_REPLY_LINE * 2)
        else:
            opener = _open_inet(peer, settings.source, settings.bind_enforce)
        reader, writer = await asyncio.wait_for(opener, timeout)
    except BindError:
        raise SessionError("server configuration error", dsn="4.4.0", connected=False) from None
    except TimeoutError:
        raise SessionError(f"connect to {where}: Connection timed out", dsn="4.4.1",
                           connected=False) from None
    except OSError as e:
        raise SessionError(f"connect to {where}: {e.strerror or e}", dsn="4.4.1",
                           connected=False) from None
    sock = writer.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    session = Session(reader, writer, peer, settings, tls_policy, nexthop)
    try:
        greeting = await session.reply(settings.timeouts.helo,
                                       "receiving the initial server greeting")
    except SessionError:
        session.close()
        raise
    if greeting.kind != 2:
        session.close()
        retry = greeting.kind == 4 or settings.skip_5xx_greeting
        # smtp_skip_5xx_greeting: a 5xx greeting is a temporary failure, as in Postfix
        dsn = "4" + greeting.dsn[1:] if greeting.kind == 5 and retry else ""
        raise SessionError(f"host {peer.label} refused to talk to me: {greeting}", greeting,
                           retry_other=retry, dsn=dsn)
    return session
