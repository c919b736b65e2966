"""local: the local delivery agent.

NAME
    local - deliver mail to local accounts, aliases, commands and files

SYNOPSIS
    python3 -m pymailsys.daemons.local [generic daemon options]
    (master.cf: ``local unix - n n - - local``)

DESCRIPTION
    local serves ``private/local`` with the delivery-request contract of
    ``pymailsys.ipc.services``: one request per recipient, pipelined on a long-lived
    connection from qmgr, one reply (sent, deferred or bounced) per request, and
    one Postfix log line per delivery. The message is read from the queue file
    named in the request (under a shared lock), from the data offset on; the
    envelope travels in the request and is not re-read.

    Per recipient (local part lower-cased, ``recipient_delimiter`` splitting
    ``user+extension``):

    1. a ``Delivered-To:`` header equal to the recipient bounces the mail with
       5.4.6 ``mail forwarding loop for ADDR``;
    2. ``alias_maps`` is searched for ``user+extension``, then ``user``. An alias
       value is a comma list of addresses (re-submitted through
       ``public/cleanup`` as one new message with the same envelope sender and
       content and a ``Delivered-To:`` header; an address that names the alias
       itself goes to the user: its .forward, then the mailbox; ``\\user`` to the
       mailbox directly), ``|command``, ``/file`` (``/dir/`` =
       Maildir) and ``:include:/path`` (one level of the same syntax, read as
       default_privs; commands and files from includes only when
       ``allow_mail_to_commands``/``allow_mail_to_files`` list ``include``).
       A table that cannot answer defers the mail (4.3.0);
    3. the account's ``.forward``: the first ``forward_path`` entry that exists
       (``$home``, ``$user``, ``$shell``, ``$local``, ``$domain``, ``$recipient``,
       ``$extension``, ``$recipient_delimiter``, ``${name?value}``,
       ``${name:value}``; an entry naming an undefined one is skipped; values
       pass ``forward_expansion_filter``), looked up and read as the user. As
       Postfix, a file that is not a regular file, is owned by neither the user
       nor root, or is world-writable is ignored with a warning; one that names
       nobody (empty, comments only) means no forwarding. Its contents are an
       alias value (origin ``forward`` for allow_mail_to_commands/_files);
       commands, files and includes run with the user's rights (uid 0:
       default_privs); an address naming the user itself, or ``\\user``, goes
       to the mailbox (loop guard); forwarded copies carry ``Delivered-To:``;
    4. the mailbox of the UNIX account: ``mailbox_command`` (no ``$name``
       expansion, as Postfix; run as the user like a .forward command, same
       environment and exit codes), else ``home_mailbox`` (relative to the home
       directory; ``/`` at the end = Maildir), else ``mail_spool_directory/USER``
       (``/`` at the end of the directory = Maildir). An unknown account bounces
       with 5.1.1 ``unknown user: "name"``. mailbox_command_maps,
       mailbox_transport, fallback_transport and luser_relay are not supported
       yet.

    Prepended: mbox ``From SENDER  DATE``, ``Return-Path:``, ``X-Original-To:``,
    ``Delivered-To:``, the message with ``>From `` quoting and an empty last
    line; Maildir the same headers without the From_ line and quoting; commands
    the From_ line and headers, no quoting.

    Commands run through ``/bin/sh -c`` only when they contain shell
    metacharacters, with SHELL HOME USER LOGNAME LOCAL EXTENSION DOMAIN
    RECIPIENT SENDER ORIGINAL_RECIPIENT PATH in the environment, killed after
    ``command_time_limit``. Exit 0 is success; output starting with ``X.Y.Z``
    decides; 75 (EX_TEMPFAIL), 71 (EX_OSERR) and death by a signal defer;
    any other status bounces with the command's output.

    Maildir deliveries are crash-idempotent (``pymailsys.delivery.mailbox``): markers
    under ``$data_directory/local-markers`` record which (queue file,
    recipient, Maildir) deliveries reached their final step; they are
    removed once the queue file is gone.

SECURITY
    local runs as root when the system runs as root (master.cf unprivileged
    column ``n``). Mailbox and Maildir writes happen with the recipient's
    effective uid and gid (in the spool directory: a world-writable directory
    gives the recipient's ids, a group-writable one the recipient's uid and
    the directory's group, otherwise root creates the file and gives it to the
    recipient); commands and files from aliases run as ``default_privs``,
    those from .forward files and mailbox_command as the recipient;
    uid 0 never runs a command or writes a file on an alias's behalf. Mailbox
    files are never opened through symbolic links, must be regular files with
    one link, and are created with O_EXCL mode 0600. Run as another user, local
    defers mail for every account but its own.

CONFIGURATION PARAMETERS
    alias_maps, recipient_delimiter, forward_path, forward_expansion_filter,
    mailbox_command, home_mailbox, mail_spool_directory,
    mailbox_delivery_lock, deliver_lock_attempts, deliver_lock_delay,
    stale_lock_time, mailbox_size_limit, strict_mailbox_ownership,
    command_time_limit, allow_mail_to_commands, allow_mail_to_files,
    default_privs, myhostname, mydestination, data_directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import pwd
import re
import signal
import stat
from dataclasses import dataclass

from pymailsys import log, privileges, server
from pymailsys.delivery import mailbox
from pymailsys.delivery.agent import (
    ContentError,
    DeliveryRequest,
    DeliveryResult,
    QueueContent,
    header_lines,
    log_line,
)
from pymailsys.ipc.attr import AttrClient, AttrList, ProtocolError, serve_pipelined
from pymailsys.ipc.services import (
    CLEANUP,
    CLEANUP_FLAG_MAP_OK,
    CLEANUP_OK,
    STATUS_BOUNCED,
    STATUS_DEFERRED,
)
from pymailsys.maps import Maps, TableError
from pymailsys.queue import spool as queue_mod

PROGRAM = "local"
SHELL_METACHARS = set("`~!#$^&*()=|\\{}[];:'\"<>?\n\r")
EX_OSERR = 71
EX_TEMPFAIL = 75
MARKER_GC_INTERVAL = 60.0
_DSN_RE = re.compile(rb"^\s*([245]\.\d{1,3}\.\d{1,3})\b")


@dataclass
class Recipient:
    address: str  # as in the request
    user: str  # local part without extension, lower case
    extension: str
    localpart: str  # user[+extension], lower case
    domain: str


class LocalAgent:
    def __init__(self, ctx: server.Context) -> None:
        self.ctx = ctx
        cfg = ctx.config
        self.config = cfg
        self.spool = ctx.spool
        self.delimiters = cfg.get("recipient_delimiter")
        self.home_mailbox = cfg.get("home_mailbox")
        # raw: $home, $user, $extension... are the recipient's, expanded per delivery
        self.forward_path = cfg.raw("forward_path") or ""
        self.forward_filter = set(cfg.get("forward_expansion_filter"))
        self.mailbox_command = cfg.raw("mailbox_command") or ""
        self.spool_dir = cfg.get("mail_spool_directory")
        self.locks = cfg.get_list("mailbox_delivery_lock")
        self.lock_attempts = cfg.get_int("deliver_lock_attempts")
        self.lock_delay = float(cfg.get_time("deliver_lock_delay"))
        self.stale = float(cfg.get_time("stale_lock_time"))
        self.size_limit = cfg.get_size("mailbox_size_limit")
        self.strict_owner = cfg.get_bool("strict_mailbox_ownership")
        self.command_time_limit = float(cfg.get_time("command_time_limit"))
        self.allow_commands = {x.lower() for x in cfg.get_list("allow_mail_to_commands")}
        self.allow_files = {x.lower() for x in cfg.get_list("allow_mail_to_files")}
        self.hostname = cfg.get("myhostname")
        self.destinations = {d.lower() for d in cfg.get_list("mydestination")}
        self.root = privileges.running_as_root()
        self.me = privileges.current_user()
        self.alias_error: str | None = None
        try:
            self.aliases: Maps | None = Maps(cfg, "alias_maps")
        except TableError as e:
            self.aliases = None
            self.alias_error = str(e)
            log.warning(f"alias_maps: {e}")
        self.cleanup = AttrClient(self.spool.public(CLEANUP), timeout=300)
        self.markers: mailbox.MarkerStore | None = None
        marker_dir = os.path.join(cfg.get("data_directory"), "local-markers")
        try:
            os.makedirs(marker_dir, mode=0o700, exist_ok=True)
            self.markers = mailbox.MarkerStore(marker_dir, privileges.as_self)
        except OSError as e:
            log.warning(f"mkdir {marker_dir}: {e.strerror}; Maildir redelivery after a crash "
                        f"may store a second copy")

    # --- the service ------------------------------------------------------------

    async def handle(self, attrs: AttrList) -> dict[str, str]:
        try:
            return await self._handle(attrs)
        except Exception as e:  # a bug must not stall the pipelined connection
            log.error(f"local: unexpected error: {e!r}")
            return DeliveryResult.deferred("local delivery agent error").reply()

    async def _handle(self, attrs: AttrList) -> dict[str, str]:
        try:
            req = DeliveryRequest.from_attrs(attrs)
        except (ProtocolError, ValueError) as e:
            log.warning(f"bad delivery request: {e}")
            return DeliveryResult.deferred("bad delivery request").reply()
        path = self.spool.path(req.queue_name, req.queue_id)
        try:
            content = QueueContent(path, req.data_offset, req.content_size)
        except ContentError as e:
            log.warning(f"{req.queue_id}: {e}")
            result = DeliveryResult.deferred("cannot read queue file", "4.3.0")
            self._log(req, result)
            return result.reply()
        with content:
            result = await self.deliver(req, content.lines)
        return result.reply()

    def _log(self, req: DeliveryRequest, result: DeliveryResult) -> None:
        log.info(log_line(req.queue_id, req.rcpt, req.orig_rcpt, "local", req.arrival_time,
                          req.active_time, req.start_time, result))

    def parse_recipient(self, address: str) -> Recipient:
        local, at, domain = address.rpartition("@")
        if not at:
            local, domain = address, ""
        localpart = local.lower()
        user, extension = localpart, ""
        if self.delimiters:
            for i, ch in enumerate(localpart):
                if ch in self.delimiters and i > 0:
                    user, extension = localpart[:i], localpart[i + 1:]
                    break
        return Recipient(address, user, extension, localpart, domain.lower())

    async def deliver(self, req: DeliveryRequest, lines: list[bytes]) -> DeliveryResult:
        rcpt = self.parse_recipient(req.rcpt)
        loop_key = req.rcpt.lower().encode("utf-8", "surrogateescape")
        for h in header_lines(lines):
            if h[:13].lower() == b"delivered-to:" and h[13:].strip().lower() == loop_key:
                return self._done(req, DeliveryResult.bounced(
                    f"mail forwarding loop for {req.rcpt}", "5.4.6"))
        if self.alias_error is not None:
            return self._done(req, DeliveryResult.deferred("alias database unavailable"))
        value = None
        if self.aliases:
            try:
                if rcpt.extension:
                    value = self.aliases.find(rcpt.localpart)
                if value is None:
                    value = self.aliases.find(rcpt.user)
            except TableError as e:
                log.warning(f"alias_maps lookup of {rcpt.user}: {e}")
                return self._done(req, DeliveryResult.deferred("alias database unavailable"))
        if value is not None:
            return await self.deliver_alias(req, rcpt, value, lines)
        return await self.deliver_user(req, rcpt, lines)

    async def deliver_user(self, req: DeliveryRequest, rcpt: Recipient, lines: list[bytes],
                           forward: bool = True) -> DeliveryResult:
        """The account's .forward file if it has one (unless forward is false), else its
        mailbox; the result is logged."""
        if forward and self.forward_path:
            result = await self.deliver_forward(req, rcpt, lines)
            if result is not None:
                return result
        return self._done(req, await self.deliver_mailbox(req, rcpt, lines))

    def _done(self, req: DeliveryRequest, result: DeliveryResult) -> DeliveryResult:
        self._log(req, result)
        return result

    # --- aliases ----------------------------------------------------------------

    async def deliver_alias(self, req: DeliveryRequest, rcpt: Recipient, value: str,
                            lines: list[bytes], origin: str = "alias", depth: int = 0,
                            rights: privileges.UserIds | None = None) -> DeliveryResult:
        """Expand an alias value (or .forward or :include: contents). ``rights``: the user
        whose rights commands, files and includes get (None: default_privs, as for an
        alias); ``origin`` (alias, forward, include) is checked against
        allow_mail_to_commands/_files."""
        addresses: list[str] = []
        results: list[DeliveryResult] = []
        skip_forward = origin != "alias"
        for item in split_alias_value(value):
            if item.startswith("|"):
                if origin not in self.allow_commands:
                    results.append(self._done(req, DeliveryResult.bounced(
                        "mail to command is restricted", "5.7.1")))
                    continue
                results.append(self._done(req, await self.deliver_command(
                    req, rcpt, item[1:], lines, rights)))
            elif item.startswith("/"):
                if origin not in self.allow_files:
                    results.append(self._done(req, DeliveryResult.bounced(
                        "mail to file is restricted", "5.7.1")))
                    continue
                results.append(self._done(req, self.deliver_file(req, item, lines, rights)))
            elif item.lower().startswith(":include:"):
                if depth >= 10:
                    results.append(self._done(req, DeliveryResult.bounced(
                        f"alias database loop for {rcpt.user}", "5.4.6")))
                    continue
                results.append(await self.deliver_include(req, rcpt, item[9:].strip(), lines,
                                                          depth, rights))
            elif item:
                addresses.append(item)
        self_reference = False
        forward: list[str] = []
        for addr in addresses:
            # \user: that user's mailbox, no further alias or .forward expansion
            backslash = addr.startswith("\\")
            addr = addr.lstrip("\\")
            if not addr:
                continue
            local, at, domain = addr.rpartition("@")
            if not at:
                local, domain = addr, ""
            if local.lower() == rcpt.user and (not domain or domain.lower() in self.destinations):
                self_reference = True  # loop guard: the user's own mailbox
                if backslash or origin != "alias":
                    skip_forward = True
            else:
                forward.append(addr)
        if forward:
            results.append(self._done(req, await self.forward(req, forward, lines)))
        if self_reference:
            # from an alias, the user's .forward still applies (Postfix's alias "joe: joe,
            # ..." keeps a copy for joe); from a .forward or with \user, the mailbox
            results.append(await self.deliver_user(req, rcpt, lines,
                                                   forward=not skip_forward))
        if not results:
            return DeliveryResult.sent("alias expanded to nothing")
        for status in (STATUS_DEFERRED, STATUS_BOUNCED):
            for r in results:
                if r.status == status:
                    return r
        return results[-1]

    async def deliver_include(self, req: DeliveryRequest, rcpt: Recipient, path: str,
                              lines: list[bytes], depth: int,
                              rights: privileges.UserIds | None = None) -> DeliveryResult:
        try:
            ids = self.file_user(rights)
            with privileges.as_user(ids.uid, ids.gid):
                st = os.stat(path)
                with open(path, encoding="utf-8", errors="surrogateescape") as f:
                    text = f.read()
        except privileges.PrivilegeError as e:
            return self._done(req, DeliveryResult.deferred(str(e)))
        except OSError as e:
            dsn = "5.3.5" if e.errno == errno.ENOENT else "4.3.0"
            result = (DeliveryResult.bounced if dsn[0] == "5" else DeliveryResult.deferred)(
                f"cannot open include file {path}: {e.strerror}", dsn)
            return self._done(req, result)
        if st.st_mode & stat.S_IWOTH:
            return self._done(req, DeliveryResult.bounced(
                f"mail system configuration error: include file {path} is world writable",
                "5.3.5"))
        value = ", ".join(line.strip() for line in text.splitlines()
                          if line.strip() and not line.lstrip().startswith("#"))
        return await self.deliver_alias(req, rcpt, value, lines, "include", depth + 1, rights)

    def file_user(self, rights: privileges.UserIds | None = None) -> privileges.UserIds:
        """The rights for commands and files: an alias's (rights None) are default_privs;
        a user's (.forward, mailbox_command) are the user's, except that uid 0 becomes
        default_privs too."""
        if not self.root:
            return self.me
        if rights is None or rights.uid == 0:
            return privileges.default_privs(self.config)
        return rights

    # --- .forward ---------------------------------------------------------------------

    def expansion_attrs(self, rcpt: Recipient, pw: pwd.struct_passwd) -> dict[str, str]:
        """Postfix's local_expand attributes (an undefined one is absent)."""
        attrs = {"user": pw.pw_name, "home": pw.pw_dir, "shell": pw.pw_shell,
                 "local": rcpt.localpart, "recipient": rcpt.address}
        if rcpt.domain:
            attrs["domain"] = rcpt.domain
        extension = rcpt.extension
        if extension and "/" in extension:
            log.warning(f"address with illegal extension: {rcpt.address}")
            extension = ""
        if extension:
            attrs["extension"] = extension
            attrs["recipient_delimiter"] = rcpt.localpart[len(rcpt.user)]
        elif self.delimiters:
            attrs["recipient_delimiter"] = self.delimiters[0]
        return attrs

    async def deliver_forward(self, req: DeliveryRequest, rcpt: Recipient,
                              lines: list[bytes]) -> DeliveryResult | None:
        """Deliver per the user's .forward file (the first forward_path entry that exists);
        None when there is none, it is unsafe (a warning, as Postfix) or it names nobody:
        then the mailbox gets the mail."""
        try:
            pw = pwd.getpwnam(rcpt.user)
        except KeyError:
            return None  # the mailbox delivery reports the unknown user
        if not self.root and pw.pw_uid != self.me.uid:
            return None  # the mailbox delivery defers
        attrs = self.expansion_attrs(rcpt, pw)
        found: tuple[str, os.stat_result] | None = None
        try:
            with privileges.as_user(pw.pw_uid, pw.pw_gid):
                for entry in re.split(r"[,\s]+", self.forward_path):
                    path = local_expand(entry, attrs, self.forward_filter) if entry else None
                    if not path:
                        continue
                    try:
                        found = path, os.lstat(path)
                        break
                    except OSError:
                        continue
                if found is None:
                    return None
                path, st = found
                if not stat.S_ISREG(st.st_mode):
                    log.warning(f"file {path} is not a regular file")
                    return None
                if st.st_uid not in (0, pw.pw_uid):
                    log.warning(f"file {path} has bad owner uid {st.st_uid}")
                    return None
                if st.st_mode & stat.S_IWOTH:
                    log.warning(f"file {path} is world writable")
                    return None
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
                except OSError as e:
                    log.warning(f"cannot open file {path}: {e.strerror}")
                    return None
                with os.fdopen(fd, "rb") as f:
                    fst = os.fstat(f.fileno())
                    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
                        log.warning(f"file {path} changed while it was opened")
                        return None
                    text = f.read(1 << 20).decode("utf-8", "surrogateescape")
        except privileges.PrivilegeError as e:
            return self._done(req, DeliveryResult.deferred(str(e)))
        value = ", ".join(line.strip() for line in text.splitlines()
                          if line.strip() and not line.lstrip().startswith("#"))
        if not split_alias_value(value):
            return None  # an empty .forward: no forwarding
        return await self.deliver_alias(req, rcpt, value, lines, "forward",
                                        rights=privileges.UserIds.from_pw(pw))

    # --- forwarding ---------------------------------------------------------------

    async def forward(self, req: DeliveryRequest, addresses: list[str],
                      lines: list[bytes]) -> DeliveryResult:
        delivered = f"Delivered-To: {req.rcpt.lower()}\n".encode("utf-8", "surrogateescape")
        content = delivered + b"".join(line + b"\n" for line in lines)
        try:
            reply = await self.cleanup.request({
                "origin": "local", "sender": req.sender, "rcpt": addresses,
                "content": content, "rewrite_context": "local", "flags": CLEANUP_FLAG_MAP_OK})
        except (ProtocolError, OSError) as e:
            log.warning(f"{req.queue_id}: cleanup service: {e}")
            return DeliveryResult.deferred("mail forwarding failed: cleanup service unavailable")
        if reply.number("status", -1) != CLEANUP_OK:
            dsn = reply.text("dsn") or "4.3.0"
            text = reply.text("reason") or "cleanup error"
            if dsn.startswith("5"):
                return DeliveryResult.bounced(text, dsn)
            return DeliveryResult.deferred(text, dsn if dsn.startswith("4") else "4.3.0")
        return DeliveryResult.sent(f"forwarded as {reply.text('queue_id')}")

    # --- commands and files ---------------------------------------------------------

    def _prefix(self, req: DeliveryRequest, from_line: bool) -> bytes:
        headers = mailbox.prepended_headers(req.sender, req.orig_rcpt or req.rcpt, req.rcpt)
        return (mailbox.from_line(req.sender) if from_line else b"") + headers

    async def deliver_command(self, req: DeliveryRequest, rcpt: Recipient, command: str,
                              lines: list[bytes],
                              rights: privileges.UserIds | None = None) -> DeliveryResult:
        command = command.strip()
        if command.startswith('"') and command.endswith('"'):
            command = command[1:-1]
        try:
            ids = self.file_user(rights)
        except privileges.PrivilegeError as e:
            return DeliveryResult.deferred(str(e))
        home_of = rights or ids  # HOME and SHELL: the user's, even when uid 0 runs as nobody
        data = self._prefix(req, True) + b"".join(line + b"\n" for line in lines)
        if any(ch in SHELL_METACHARS for ch in command):
            argv = ["/bin/sh", "-c", command]
        else:
            argv = command.split()
        if not argv:
            return DeliveryResult.bounced("empty command", "5.3.5")
        env = {
            "PATH": "/usr/bin:/bin", "SHELL": home_of.shell or "/bin/sh",
            "HOME": home_of.home or "/",
            "USER": rcpt.user, "LOGNAME": rcpt.user, "LOCAL": rcpt.localpart,
            "EXTENSION": rcpt.extension, "DOMAIN": rcpt.domain, "RECIPIENT": req.rcpt,
            "SENDER": req.sender, "ORIGINAL_RECIPIENT": req.orig_rcpt or req.rcpt,
        }
        for name in ("TZ", "LANG"):
            if name in os.environ:
                env[name] = os.environ[name]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, env=env, cwd="/", start_new_session=True,
                **privileges.subprocess_ids(ids))  # type: ignore[arg-type]
        except OSError as e:
            return DeliveryResult.deferred(f"cannot execute command \"{command}\": {e.strerror}")
        try:
            output = await asyncio.wait_for(_converse(proc, data), self.command_time_limit)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return DeliveryResult.deferred(f'Command time limit exceeded: "{command}"')
        status = proc.returncode or 0
        text = output[:1000].decode("utf-8", "replace").strip().replace("\n", " ")
        detail = f". Command output: {text}" if text else ""
        if status == 0:
            return DeliveryResult.sent(f"delivered to command: {command}")
        m = _DSN_RE.match(output)
        if status < 0:
            return DeliveryResult.deferred(f'Command died with signal {-status}: "{command}"'
                                           + detail)
        if m is not None:
            dsn = m.group(1).decode()
            if dsn.startswith("2"):
                return DeliveryResult.sent(f"delivered to command: {command}", dsn)
            if dsn.startswith("4"):
                return DeliveryResult.deferred(text, dsn)
            return DeliveryResult.bounced(text, dsn)
        reason = f'Command died with status {status}: "{command}"' + detail
        if status in (EX_TEMPFAIL, EX_OSERR):
            return DeliveryResult.deferred(reason, "4.3.0")
        return DeliveryResult.bounced(reason, "5.3.0")

    def deliver_file(self, req: DeliveryRequest, path: str, lines: list[bytes],
                     rights: privileges.UserIds | None = None) -> DeliveryResult:
        try:
            ids = self.file_user(rights)
        except privileges.PrivilegeError as e:
            return DeliveryResult.deferred(str(e))
        try:
            with privileges.as_user(ids.uid, ids.gid):
                if path.endswith("/"):
                    data = mailbox.plain_text(self._prefix(req, False), lines)
                    mailbox.deliver_maildir(path, data, host=self.hostname,
                                            size_limit=self.size_limit)
                    return DeliveryResult.sent("delivered to maildir")
                data = mailbox.mbox_text(mailbox.from_line(req.sender), self._prefix(req, False),
                                         lines)
                mailbox.deliver_mbox(path, data, locks=self.locks, size_limit=self.size_limit,
                                     attempts=self.lock_attempts, delay=self.lock_delay,
                                     stale=self.stale)
        except mailbox.MailboxError as e:
            reason = f"cannot append message to file {path}: {e.text}"
            if e.temporary:
                return DeliveryResult.deferred(reason, e.dsn)
            return DeliveryResult.bounced(reason, e.dsn)
        except privileges.PrivilegeError as e:
            return DeliveryResult.deferred(str(e))
        return DeliveryResult.sent(f"delivered to file: {path}")

    # --- the mailbox ----------------------------------------------------------------

    async def deliver_mailbox(self, req: DeliveryRequest, rcpt: Recipient,
                              lines: list[bytes]) -> DeliveryResult:
        try:
            pw = pwd.getpwnam(rcpt.user)
        except KeyError:
            return DeliveryResult.bounced(f'unknown user: "{rcpt.user}"', "5.1.1")
        if not self.root and pw.pw_uid != self.me.uid:
            return DeliveryResult.deferred(
                f"cannot deliver to user {pw.pw_name}: the mail system runs as {self.me.name}")
        if self.mailbox_command:  # as Postfix: no $name expansion, the shell's $HOME etc.
            return await self.deliver_command(req, rcpt, self.mailbox_command, lines,
                                              privileges.UserIds.from_pw(pw))
        return self.write_mailbox(req, rcpt, pw, lines)

    def write_mailbox(self, req: DeliveryRequest, rcpt: Recipient, pw: pwd.struct_passwd,
                      lines: list[bytes]) -> DeliveryResult:
        if self.home_mailbox:
            path = os.path.join(pw.pw_dir, self.home_mailbox)
            maildir = self.home_mailbox.endswith("/")
            ids = (pw.pw_uid, pw.pw_gid, [pw.pw_gid])
            chown: tuple[int, int] | None = None
        else:
            maildir = self.spool_dir.endswith("/")
            path = os.path.join(self.spool_dir, pw.pw_name) + ("/" if maildir else "")
            ids, chown = self._spool_ids(pw, maildir)
        headers = mailbox.prepended_headers(req.sender, req.orig_rcpt or req.rcpt, req.rcpt)
        try:
            with privileges.as_user(ids[0], ids[1], ids[2]):
                if maildir:
                    key = mailbox.delivery_key(req.queue_id, req.arrival_time, req.rcpt_offset,
                                               path)
                    mailbox.deliver_maildir(path, mailbox.plain_text(headers, lines),
                                            host=self.hostname, key=key, marker=self.markers,
                                            size_limit=self.size_limit)
                    return DeliveryResult.sent("delivered to maildir")
                data = mailbox.mbox_text(mailbox.from_line(req.sender), headers, lines)
                mailbox.deliver_mbox(path, data, chown_to=chown,
                                     expect_uid=pw.pw_uid if self.strict_owner else None,
                                     locks=self.locks, size_limit=self.size_limit,
                                     attempts=self.lock_attempts, delay=self.lock_delay,
                                     stale=self.stale)
                return DeliveryResult.sent("delivered to mailbox")
        except mailbox.MailboxError as e:
            if maildir:
                reason = f"maildir delivery failed: {e.text}"
            else:
                reason = f"cannot update mailbox {path} for user {pw.pw_name}. {e.text}"
            if e.temporary:
                return DeliveryResult.deferred(reason, e.dsn)
            return DeliveryResult.bounced(reason, e.dsn)
        except privileges.PrivilegeError as e:
            return DeliveryResult.deferred(str(e))

    def _spool_ids(self, pw: pwd.struct_passwd,
                   maildir: bool) -> tuple[tuple[int, int, list[int]], tuple[int, int] | None]:
        """Postfix's spool rights: (euid, egid, groups) for the write, and a chown target."""
        user = (pw.pw_uid, pw.pw_gid, [pw.pw_gid])
        if not self.root:
            return user, None
        try:
            st = os.stat(self.spool_dir.rstrip("/") or "/")
        except OSError:
            return user, None
        if maildir or st.st_mode & stat.S_IWOTH:
            return user, None
        if st.st_mode & stat.S_IWGRP:
            return (pw.pw_uid, st.st_gid, [st.st_gid, pw.pw_gid]), (pw.pw_uid, pw.pw_gid)
        return (0, 0, []), (pw.pw_uid, pw.pw_gid)

    # --- markers ----------------------------------------------------------------------

    def collect_markers(self) -> int:
        """Remove markers whose queue file no longer exists; returns how many."""
        if self.markers is None:
            return 0
        removed = 0
        queues = (queue_mod.INCOMING, queue_mod.ACTIVE, queue_mod.DEFERRED, queue_mod.HOLD)
        for key in self.markers.keys():
            queue_id = key.split(".", 1)[0]
            if self.spool.find(queue_id, queues) is None:
                self.markers.remove(key)
                removed += 1
        return removed


async def _converse(proc: asyncio.subprocess.Process, data: bytes) -> bytes:
    """Feed data to a command and collect its output; a command may stop reading early."""
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout

    async def feed() -> None:
        try:
            stdin.write(data)
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError, RuntimeError):
            pass  # the command exited or closed its input (uvloop: RuntimeError)
        finally:
            with contextlib.suppress(Exception):
                stdin.close()

    _, output = await asyncio.gather(feed(), stdout.read())
    await proc.wait()
    return output


_NAME_RE = re.compile(r"[A-Za-z0-9_]+")


def local_expand(text: str, attrs: dict[str, str], allowed: set[str]) -> str | None:
    """Postfix's local_expand: $name, ${name}, $(name), ${name?value}, ${name:value}, $$.

    Attribute values have characters outside ``allowed`` replaced with ``_``
    (forward_expansion_filter). A plain reference to an undefined attribute makes
    the result None (a forward_path entry is then skipped), and so does a syntax
    error.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if i + 1 < n and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if i + 1 < n and text[i + 1] in "{(":
            close = "}" if text[i + 1] == "{" else ")"
            depth, j = 0, i + 1
            while j < n:
                if text[j] == text[i + 1]:
                    depth += 1
                elif text[j] == close:
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= n:
                return None
            inner = text[i + 2:j]
            i = j + 1
            m = _NAME_RE.match(inner)
            if not m:
                return None
            name, rest = m.group(0), inner[m.end():]
            value = attrs.get(name)
            if rest[:1] in ("?", ":"):
                branch = rest[1:]
                if branch.startswith("{") and branch.endswith("}"):
                    branch = branch[1:-1]
                if (value is not None) == (rest[0] == "?"):
                    sub = local_expand(branch, attrs, allowed)
                    if sub is None:
                        return None
                    out.append(sub)
                continue
            if rest:
                return None
        else:
            m = _NAME_RE.match(text, i + 1)
            if not m:
                out.append("$")
                i += 1
                continue
            name, value = m.group(0), attrs.get(m.group(0))
            i = m.end()
        if value is None:
            return None
        out.append("".join(c if c in allowed else "_" for c in value))
    return "".join(out)


def split_alias_value(value: str) -> list[str]:
    """Split an alias value on commas and white space, keeping "quoted items" whole."""
    items: list[str] = []
    current: list[str] = []
    quote = False
    for ch in value:
        if ch == '"':
            quote = not quote
            continue
        if not quote and (ch == "," or ch in " \t\r\n"):
            if ch == "," or (current and current[0] not in "|"):
                if current:
                    items.append("".join(current).strip())
                    current = []
                continue
        current.append(ch)
    if current:
        items.append("".join(current).strip())
    return [i for i in items if i]


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ctx: server.Context) -> None:
    agent: LocalAgent = ctx.state["agent"]
    await serve_pipelined(reader, writer, agent.handle)


async def _start(ctx: server.Context) -> None:
    agent = LocalAgent(ctx)
    ctx.state["agent"] = agent

    async def gc() -> None:
        while not ctx.stopping.is_set():
            try:
                agent.collect_markers()
            except OSError as e:
                log.warning(f"delivery markers: {e}")
            await asyncio.sleep(MARKER_GC_INTERVAL)

    ctx.state["gc"] = asyncio.ensure_future(gc())


async def _stop(ctx: server.Context) -> None:
    task = ctx.state.get("gc")
    if task is not None:
        task.cancel()


def main(argv: list[str] | None = None) -> None:
    os.umask(0o077)
    server.run(PROGRAM, serve=_serve, on_start=_start, on_stop=_stop, client_limit=1, argv=argv)


if __name__ == "__main__":
    main()

