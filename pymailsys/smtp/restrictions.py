"""The SMTP access restriction chain: one engine for every smtpd_*_restrictions list.

NAME
    restrictions - evaluate Postfix restriction lists

SYNOPSIS
    engine = restrictions.Engine(config)       # parses every list once (ValueError on junk)
    result = await engine.check_rcpt(request)  # Result(action, reply) or None
    result = await engine.evaluate("smtpd_client_restrictions", request)
    reply = engine.unlisted_recipient(request) # the implicit local-recipient check

DESCRIPTION
    A list is evaluated left to right. Each restriction answers OK (permit),
    REJECT, DEFER or DUNNO; the first non-DUNNO answer ends *that* list, and
    the next list still runs (Postfix semantics). ``check_rcpt`` runs, with
    smtpd_delay_reject=yes, client, helo and sender lists, then
    smtpd_relay_restrictions, then smtpd_recipient_restrictions; then, if
    nothing rejected, the implicit reject_unlisted_recipient check
    (smtpd_reject_unlisted_recipient). VRFY runs the same checks
    (``check_rcpt(req, WHERE_VRFY)``); a bare ``postmaster`` passes both.

    Restrictions implemented: permit, reject, defer, defer_if_permit,
    defer_if_reject, permit_mynetworks, permit_inet_interfaces,
    permit_sasl_authenticated (the session's SASL login),
    reject_sender_login_mismatch, reject_authenticated_sender_login_mismatch,
    reject_unauthenticated_sender_login_mismatch (smtpd_sender_login_maps: the
    logins that own a sender address), permit_auth_destination,
    reject_unauth_destination, defer_unauth_destination,
    reject_unlisted_recipient, reject_unlisted_sender, reject_non_fqdn_sender,
    reject_non_fqdn_recipient, reject_non_fqdn_helo_hostname,
    reject_invalid_helo_hostname, check_client_access, check_helo_access,
    check_sender_access, check_recipient_access; the DNS ones
    (pymailsys.smtp.dnsxl): reject_rbl_client, permit_dnswl_client,
    reject_rhsbl_client, reject_rhsbl_reverse_client, reject_rhsbl_helo,
    reject_rhsbl_sender, reject_rhsbl_recipient (``domain=127.0.0.[2..4]``
    reply filters; replies from rbl_reply_maps or default_rbl_reply),
    reject_unknown_client_hostname, reject_unknown_reverse_client_hostname,
    reject_unknown_helo_hostname, reject_unknown_sender_domain,
    reject_unknown_recipient_domain; check_etrn_access (smtpd_etrn_restrictions,
    ``check_etrn``: ``554 5.7.1 <site>: Etrn command rejected: Access
    denied``); the client certificate ones:
    check_ccert_access (the certificate's fingerprint, then its public key
    fingerprint; the reply names its CN as ``Client certificate``),
    permit_tls_clientcerts (a fingerprint in relay_clientcerts, trusted or
    not), permit_tls_all_clientcerts (any trusted certificate, or a listed
    one, as Postfix); and check_policy_service
    (pymailsys.smtp.policy), whose answer is read as an access(5) action.

    access(5) actions: OK/RELAY, an all-numerical value (OK), REJECT,
    DEFER, 4NN/5NN text, DUNNO, a restriction list (a value naming a
    ``type:table``, nesting more than RECURSION_LIMIT deep or naming no
    restriction is Postfix's ``451 4.3.5 Server configuration error``, as is
    any other value: an unknown action never passes), WARN and INFO (logged), DEFER_IF_PERMIT and
    DEFER_IF_REJECT (Postfix's deferred decisions: a pass at the end of the
    command becomes the first DEFER_IF_PERMIT reply, a 5xx becomes the
    first DEFER_IF_REJECT reply), HOLD, DISCARD (ends all lists: accepted,
    then dropped), REDIRECT, BCC, PREPEND and FILTER ``transport:destination``
    (the last one wins; cleanup writes it after the content, where it
    overrides content_filter) kept in ``req.actions`` for the message and
    reset with the transaction; each logs Postfix's
    ``NOQUEUE: hold: RCPT from ...; from=<...> to=<...> proto=... helo=<...>``.
    A FILTER without a value or without a colon is warned about and skipped,
    as Postfix does. A DNS list that cannot answer is passed
    over with a warning, as Postfix does; reject_unknown_* after a
    temporary DNS failure defer (450) unless the rest rejects.
    New restrictions register with ``@restriction("name")`` (``takes_arg``
    for ``name type:table``, ``takes_word`` for a plain argument,
    ``dns_list`` for ``domain[=filter]``); a check may be a coroutine.

    Every check that asks where an address goes (reject_unauth_destination,
    the unlisted recipient check, reject_unknown_*_domain, the sender login
    maps) judges it as cleanup will queue it: rewritten in the local context
    first (``Engine.resolve``), as Postfix's smtpd does. So do
    check_sender_access and check_recipient_access: their tables are asked for
    the resolved address in lower case (``user%remote@ourdomain`` as
    ``user@remote``), and an OK for a recipient that is still routed counts
    as DUNNO unless allow_untrusted_routing (Postfix's check_mail_access).

    The unlisted recipient (and sender) check is Postfix's check_rcpt_maps: an
    address that recipient_canonical_maps, canonical_maps or virtual_alias_maps
    rewrites is taken; one that resolves to the error or retry transport
    (virtual alias domains, transport_maps, relocated_maps, a sender-dependent
    default transport: the address is resolved with the sender) is refused
    with that nexthop's status and text (550, 450 for retry); otherwise the
    class's table, when set, must list it: local_recipient_maps (postmaster,
    MAILER-DAEMON and double-bounce always pass), virtual_mailbox_maps,
    relay_recipient_maps.

    Replies are Postfix's, e.g. ``554 5.7.1 <r>: Relay access denied`` and
    ``550 5.1.1 <r>: Recipient address rejected: User unknown in local
    recipient table``. A table that cannot answer gives ``451 4.3.0 <key>:
    Temporary lookup failure`` (never "not found").

    ``check_relay_config`` raises ``ValueError`` with Postfix's fatal text
    when neither the relay nor the recipient list can reject relaying.

REFUSES
    An unknown restriction name: ``ValueError`` at Engine() (start-up fatal).
"""

from __future__ import annotations

import functools
import itertools
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeAlias

from pymailsys import config as config_mod
from pymailsys import log, maps, passwd
from pymailsys.address import networks as netaddr
from pymailsys.address import resolve
from pymailsys.address.resolve import Resolved
from pymailsys.address.rewrite import RewriteContext, rewrite_address
from pymailsys.dsn import xtext_encode
from pymailsys.ipc import services
from pymailsys.maps import search as addr_lookup
from pymailsys.smtp import dnsxl, policy, tls_server

OK = "OK"
REJECT = "REJECT"
DEFER = "DEFER"
DUNNO = "DUNNO"

STAGE_CLIENT = "client"
STAGE_HELO = "helo"
STAGE_SENDER = "sender"
STAGE_RECIPIENT = "recipient"
STAGE_DATA = "data"
STAGE_CCERT = "ccert"  # check_ccert_access: the reply names the certificate's CN
STAGE_ETRN = "etrn"

_STAGE_CLASS = {
    STAGE_CLIENT: "Client host",
    STAGE_HELO: "Helo command",
    STAGE_SENDER: "Sender address",
    STAGE_RECIPIENT: "Recipient address",
    STAGE_DATA: "Data command",
    STAGE_CCERT: "Client certificate",
    STAGE_ETRN: "Etrn command",
}
_STAGE_TEXT = {stage: f"{name} rejected" for stage, name in _STAGE_CLASS.items()}

# Where a check runs, for the log (Postfix's state->where).
WHERE_HELO = "HELO"
WHERE_EHLO = "EHLO"
WHERE_CONNECT = "CONNECT"
WHERE_MAIL = "MAIL"
WHERE_RCPT = "RCPT"
WHERE_VRFY = "VRFY"
WHERE_DATA = "DATA"
WHERE_EOM = "END-OF-MESSAGE"
WHERE_ETRN = "ETRN"
WHERE_VRFY = "VRFY"

# Client name lookup outcomes (pymailsys.smtp.dns_client_name).
NAME_OK = "OK"
NAME_TEMP = "TEMP"
NAME_PERM = "PERM"
NAME_FORGED = "FORGED"

LIST_STAGES = {
    "smtpd_client_restrictions": STAGE_CLIENT,
    "smtpd_helo_restrictions": STAGE_HELO,
    "smtpd_sender_restrictions": STAGE_SENDER,
    "smtpd_relay_restrictions": STAGE_RECIPIENT,
    "smtpd_recipient_restrictions": STAGE_RECIPIENT,
    "smtpd_data_restrictions": STAGE_DATA,
    "smtpd_end_of_data_restrictions": STAGE_DATA,
    "smtpd_etrn_restrictions": STAGE_ETRN,
}

RECURSION_LIMIT = 100  # restriction lists in access values nested at most this deep

_DSN_RE = re.compile(r"^([245])\.\d{1,3}\.\d{1,3}$")


@dataclass(frozen=True)
class Reply:
    """An SMTP reply as a value: code, enhanced status, text."""

    code: int
    dsn: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.dsn} {self.text}"

    @property
    def temporary(self) -> bool:
        return 400 <= self.code < 500


@dataclass(frozen=True)
class Result:
    action: str  # OK, REJECT or DEFER (DUNNO is never returned from a list)
    reply: Reply | None = None


@dataclass
class MessageActions:
    """What access(5) actions ask of the message being received (reset with the transaction)."""

    hold: bool = False
    discard: bool = False
    redirect: str = ""
    filter: str = ""  # FILTER transport:destination
    bcc: list[str] = field(default_factory=list)
    prepend: list[str] = field(default_factory=list)
    policy_instance: str = ""  # the policy protocol's "instance": one per transaction

    def reset(self) -> None:
        self.policy_instance = ""
        self.hold = self.discard = False
        self.redirect = self.filter = ""
        self.bcc = []
        self.prepend = []


@dataclass
class Request:
    """What the restrictions see of one SMTP session and command."""

    client_addr: str
    client_name: str = "unknown"
    client_port: str = ""
    helo: str = ""
    sender: str | None = None  # None: no MAIL yet; "" the null sender
    recipient: str = ""
    protocol: str = "SMTP"
    sasl_username: str = ""
    sasl_method: str = ""  # with sasl_username, once AUTH succeeded
    sasl_sender: str = ""  # MAIL FROM's AUTH=, for this transaction
    tls: tls_server.SessionTLS | None = None  # once TLS is on
    queue_id: str = ""  # once the message has one
    etrn_domain: str = ""  # during ETRN's checks
    stage: str = STAGE_CLIENT
    cache: dict[str, object] = field(default_factory=dict)
    # NAME_OK/TEMP/PERM/FORGED; "" = OK for a known name, PERM for "unknown"
    client_name_status: str = ""
    reverse_client_name: str = ""  # "" = client_name
    reverse_client_name_status: str = ""
    where: str = WHERE_RCPT
    server_addr: str = ""
    server_port: str = ""
    size: int = 0  # MAIL FROM's SIZE=
    recipient_count: int = 0  # accepted recipients (DATA, END-OF-MESSAGE)
    recursion: int = 0  # restriction lists from access values being run (RECURSION_LIMIT)
    actions: MessageActions = field(default_factory=MessageActions)
    defer_if_permit: Reply | None = None
    defer_if_reject: Reply | None = None

    @property
    def client(self) -> str:
        return f"{self.client_name}[{self.client_addr}]"

    @property
    def name_status(self) -> str:
        if self.client_name_status:
            return self.client_name_status
        return NAME_PERM if self.client_name == "unknown" else NAME_OK

    @property
    def reverse_name(self) -> str:
        return self.reverse_client_name or self.client_name

    @property
    def reverse_name_status(self) -> str:
        return self.reverse_client_name_status or self.name_status


def whatsup(req: Request, what: str, text: str) -> None:
    """Postfix's log_whatsup: ``NOQUEUE: hold: RCPT from c[a]: text; from=<s> to=<r> ...``."""
    line = f"NOQUEUE: {what}: {req.where} from {req.client}: {text};"
    if req.sender is not None:
        line += f" from=<{log.address(req.sender)}>"
    if req.recipient:
        line += f" to=<{log.address(req.recipient)}>"
    line += f" proto={req.protocol}"
    if req.helo:
        line += f" helo=<{req.helo}>"
    log.info(log.printable(line))


def dsn_split(default: str, text: str) -> tuple[str, str]:
    """Postfix's dsn_split: an optional leading X.Y.Z detail code, else default."""
    word, _, rest = text.partition(" ")
    if _DSN_RE.match(word):
        return word, rest.strip()
    return default, text


def fix_dsn(code: int, dsn: str) -> str:
    """The enhanced code's class follows the reply code (4xx: 4.X.Y, 5xx: 5.X.Y)."""
    return f"{str(code)[0]}{dsn[1:]}"


# Postfix's smtpd_dsn_fix: an X.1.Y address status as it reads for a sender or a recipient
_SENDER_DSN_DETAIL = {"2": "8", "3": "7", "7": "7", "8": "8"}
_RECIPIENT_DSN_DETAIL = {"1": "1", "2": "2", "3": "3", "4": "4", "5": "5", "6": "6", "7": "3",
                         "8": "2"}


def _dsn_for_stage(dsn: str, stage: str) -> str:
    """Postfix's smtpd_dsn_fix(): X.1.Y made a sender or a recipient address status."""
    if dsn[1:4] != ".1.":
        return dsn
    details = _SENDER_DSN_DETAIL if stage == STAGE_SENDER else _RECIPIENT_DSN_DETAIL
    return f"{dsn[:4]}{details.get(dsn[4:], '0')}"


def refusal(reply: Reply) -> Result:
    return Result(DEFER if reply.temporary else REJECT, reply)


Outcome: TypeAlias = "Result | None | Awaitable[Result | None]"
Check = Callable[["Engine", Request, "_Entry"], Outcome]


@dataclass(frozen=True)
class _Spec:
    func: Check
    takes_arg: bool  # a type:table argument
    relay_guard: bool  # counts as "can reject relaying" for the start-up check
    takes_word: bool = False  # a plain argument (a DNS list domain, a policy server)
    dns_list: bool = False  # the argument is domain[=reply filter]


REGISTRY: dict[str, _Spec] = {}


def restriction(name: str, *, takes_arg: bool = False, relay_guard: bool = False,
                takes_word: bool = False, dns_list: bool = False) -> Callable[[Check], Check]:
    def deco(func: Check) -> Check:
        REGISTRY[name] = _Spec(func, takes_arg, relay_guard, takes_word or dns_list, dns_list)
        return func
    return deco


@dataclass(frozen=True)
class _Entry:
    name: str
    spec: _Spec
    arg: str = ""
    table: _LazyMaps | None = None
    reply_filter: dnsxl.ReplyFilter | None = None


def _is_fqdn(name: str) -> bool:
    n = name.rstrip(".")
    if n.startswith("[") and n.endswith("]"):
        return True
    return "." in n


_LABEL_RE = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?$")


def valid_hostname(name: str) -> bool:
    """Postfix's valid_hostname(), loosely: labels of letters, digits, - and _; or [ip]."""
    n = name.rstrip(".")
    if n.startswith("[") and n.endswith("]"):
        return netaddr.parse_address(n) is not None
    if not n or len(n) > 255:
        return False
    if netaddr.parse_address(n) is not None:
        return True
    labels = n.split(".")
    if all(label.isdigit() for label in labels):
        return False
    return all(0 < len(label) <= 63 and _LABEL_RE.match(label) for label in labels)


class Engine:
    """Every restriction list of one configuration, parsed once."""

    def __init__(self, config: config_mod.Config) -> None:
        self.config = config
        self.reject_code = config.get_int("reject_code")
        self.defer_code = config.get_int("defer_code")
        self.relay_code = config.get_int("relay_domains_reject_code")
        self.access_reject_code = config.get_int("access_map_reject_code")
        self.access_defer_code = config.get_int("access_map_defer_code")
        self.non_fqdn_code = config.get_int("non_fqdn_reject_code")
        self.invalid_hostname_code = config.get_int("invalid_hostname_reject_code")
        self.unknown_local_code = config.get_int("unknown_local_recipient_reject_code")
        self.unknown_alias_code = config.get_int("unknown_virtual_alias_reject_code")
        self.unknown_mailbox_code = config.get_int("unknown_virtual_mailbox_reject_code")
        self.unknown_relay_code = config.get_int("unknown_relay_recipient_reject_code")
        # the tables that make check_rcpt_maps take an address they rewrite (``_mapped``),
        # per stage: only those that are set, so that most sites look up nothing
        rewriting = {
            STAGE_SENDER: ["recipient_canonical_maps", "sender_canonical_maps",
                           "canonical_maps", "virtual_alias_maps"],
            STAGE_RECIPIENT: ["recipient_canonical_maps", "canonical_maps", "virtual_alias_maps"],
        }
        self.rewriting_maps = {stage: [p for p in params if config.get(p)]
                               for stage, params in rewriting.items()}
        # local parts Postfix's check_rcpt_maps never refuses in a local domain
        self.local_always = frozenset({config.get("double_bounce_sender").lower(), "postmaster",
                                       "mailer-daemon"})
        # class -> (its recipient table, the reply code and the words for one it lacks)
        tables = {
            resolve.CLASS_LOCAL: ("local_recipient_maps", self.unknown_local_code,
                                  "local recipient table"),
            resolve.CLASS_VIRTUAL: ("virtual_mailbox_maps", self.unknown_mailbox_code,
                                    "virtual mailbox table"),
            resolve.CLASS_RELAY: ("relay_recipient_maps", self.unknown_relay_code,
                                  "relay recipient table"),
        }
        self.recipient_tables = {class_: entry for class_, entry in tables.items()
                                 if config.get_list(entry[0])}
        self.rbl_code = config.get_int("maps_rbl_reject_code")
        self.rbl_template = config.raw("default_rbl_reply") or ""
        self.rbl_reply_maps = bool(config.get_list("rbl_reply_maps"))
        self.unknown_client_code = config.get_int("unknown_client_reject_code")
        self.unknown_hostname_code = config.get_int("unknown_hostname_reject_code")
        self.unknown_address_code = config.get_int("unknown_address_reject_code")
        self.unknown_address_tempfail = _tempfail_action(config, "unknown_address_tempfail_action")
        self.unknown_helo_tempfail = _tempfail_action(config,
                                                      "unknown_helo_hostname_tempfail_action")
        self.null_key = config.get("smtpd_null_access_lookup_key")
        self.allow_untrusted_routing = config.get_bool("allow_untrusted_routing")
        self.delimiter = config.get("recipient_delimiter")
        self.delay_reject = config.get_bool("smtpd_delay_reject")
        self.reject_unlisted_rcpt = (config.get_bool("smtpd_reject_unlisted_recipient") and
                                     "no_unknown_recipient_checks" not in
                                     config.get_list("receive_override_options"))
        self.reject_unlisted_sender = config.get_bool("smtpd_reject_unlisted_sender")
        self.access_parent_style = addr_lookup.parent_style(config, "smtpd_access_maps")
        self.resolved = resolve.ResolveCache(config)  # answers reused, as Postfix's resolve client
        self.rewrite_context = RewriteContext.from_config(config)
        self.mynetworks = netaddr.mynetworks(config)
        self._lazy_maps: dict[str, maps.Maps | maps.TableError] = {}
        self._policy: dict[str, policy.Client] = {}
        self.ask_ccert = config.get_bool("smtpd_tls_ask_ccert") or (
            config.get_bool("smtpd_tls_req_ccert")
            and (config.get("smtpd_tls_security_level").strip().lower() == "encrypt"
                 or config.get_bool("smtpd_tls_wrappermode")))
        self.lists: dict[str, list[_Entry]] = {
            name: self.parse(config.get_list(name)) for name in LIST_STAGES
        }

    def preopen(self) -> None:
        """Open every table now (before a privilege drop); failures stay for lookup time."""
        for param in ("local_recipient_maps", "virtual_alias_maps", "virtual_mailbox_maps",
                      "smtpd_sender_login_maps", "relay_clientcerts"):
            try:
                self._maps(param)
            except maps.TableError:
                self._lazy_maps.pop(param, None)
        for entries in self.lists.values():
            for entry in entries:
                if entry.table is not None:
                    try:
                        entry.table.get()
                    except maps.TableError:
                        pass

    def policy_client(self, name: str) -> policy.Client:
        """One client (kept connections) per policy server name and process."""
        client = self._policy.get(name)
        if client is None:
            client = self._policy[name] = policy.Client(name, self.config)
        return client

    async def close(self) -> None:
        for client in self._policy.values():
            await client.close()

    # --- parsing -------------------------------------------------------------
    def parse(self, words: list[str]) -> list[_Entry]:
        out: list[_Entry] = []
        i = 0
        while i < len(words):
            name = words[i]
            i += 1
            spec = REGISTRY.get(name.lower())
            if spec is None:
                if ":" in name:
                    raise ValueError(f'restriction "{name}": table without a check_*_access '
                                     "restriction before it")
                raise ValueError(f'unknown smtpd restriction: "{name}"')
            if not spec.takes_arg and not spec.takes_word:
                out.append(_Entry(name.lower(), spec))
                continue
            if i >= len(words):
                what = "domain name" if spec.takes_word else "a table"
                raise ValueError(f'restriction "{name}" requires {what} argument')
            arg = words[i]
            i += 1
            if spec.dns_list:
                _domain, _, pattern = arg.partition("=")
                out.append(_Entry(name.lower(), spec, arg, None,
                                  dnsxl.ReplyFilter.parse(pattern) if pattern else None))
                continue
            if spec.takes_word:
                if name.lower() == "check_policy_service":
                    self.policy_client(arg)  # a bad server name is a start-up error
                out.append(_Entry(name.lower(), spec, arg))
                continue
            out.append(_Entry(name.lower(), spec, arg, _LazyMaps(arg)))
        return out

    def check_relay_config(self) -> None:
        """Postfix's start-up fatal when relaying is not restricted."""
        for name in ("smtpd_relay_restrictions", "smtpd_recipient_restrictions"):
            if any(e.spec.relay_guard for e in self.lists[name]):
                return
        raise ValueError(
            "in parameter smtpd_relay_restrictions or smtpd_recipient_restrictions, specify "
            "at least one working instance of: reject_unauth_destination, "
            "defer_unauth_destination, reject, defer, defer_if_permit or check_relay_domains")

    # --- evaluation ------------------------------------------------------------
    async def evaluate(self, list_name: str, req: Request) -> Result | None:
        """Run one list: the first OK/REJECT/DEFER, or None when all said DUNNO."""
        entries = self.lists[list_name]
        if not entries:
            return None
        saved = req.stage
        req.stage = LIST_STAGES[list_name]
        try:
            return await self.run_entries(entries, req)
        finally:
            req.stage = saved

    async def run_entries(self, entries: list[_Entry], req: Request) -> Result | None:
        for entry in entries:
            if req.actions.discard:  # DISCARD ends every restriction list
                return None
            outcome = entry.spec.func(self, req, entry)
            if outcome is None:
                continue
            if not isinstance(outcome, Result):  # a coroutine (policy, DNS, nested list)
                outcome = await outcome
                if outcome is None:
                    continue
            return outcome
        return None

    async def check_client(self, req: Request) -> Result | None:
        """smtpd_client_restrictions alone, at connect (smtpd_delay_reject = no)."""
        return await self._check(req, WHERE_CONNECT, ("smtpd_client_restrictions",))

    async def check_helo(self, req: Request) -> Result | None:
        where = WHERE_EHLO if req.protocol.upper().startswith("E") else WHERE_HELO
        return await self._check(req, where, ("smtpd_helo_restrictions",))

    async def check_sender(self, req: Request) -> Result | None:
        return await self._check(req, WHERE_MAIL, ("smtpd_sender_restrictions",))

    async def check_rcpt(self, req: Request, where: str = WHERE_RCPT) -> Result | None:
        """RCPT TO: (delayed client/helo/sender), relay, recipient lists, then unlisted;
        VRFY (``where``) runs the same; a bare "postmaster" always passes (RFC 5321
        4.5.1), as Postfix's smtpd_check_rcpt."""
        if req.recipient.lower() == "postmaster":
            return None
        names: tuple[str, ...] = ("smtpd_relay_restrictions", "smtpd_recipient_restrictions")
        if self.delay_reject:
            names = ("smtpd_client_restrictions", "smtpd_helo_restrictions",
                     "smtpd_sender_restrictions") + names
        return await self._check(req, where, names, unlisted=True)

    async def check_data(self, req: Request) -> Result | None:
        return await self._check(req, WHERE_DATA, ("smtpd_data_restrictions",))

    async def check_end_of_data(self, req: Request) -> Result | None:
        return await self._check(req, WHERE_EOM, ("smtpd_end_of_data_restrictions",))

    async def check_etrn(self, req: Request) -> Result | None:
        """ETRN (req.etrn_domain): with smtpd_delay_reject, client and helo lists first."""
        names: tuple[str, ...] = ("smtpd_etrn_restrictions",)
        if self.delay_reject:
            names = ("smtpd_client_restrictions", "smtpd_helo_restrictions") + names
        return await self._check(req, WHERE_ETRN, names)

    async def _check(self, req: Request, where: str, names: tuple[str, ...],
                     unlisted: bool = False) -> Result | None:
        """Run lists, then Postfix's deferred decisions: a 5xx becomes the
        DEFER_IF_REJECT reply, a pass becomes the DEFER_IF_PERMIT reply."""
        req.where = where
        req.defer_if_permit = req.defer_if_reject = None
        result = None
        lists = self.lists
        for name in names:  # the first list that does not pass (a coroutine fewer inline)
            if not lists[name]:  # as evaluate() would find: nothing to say
                continue
            if name == "smtpd_sender_restrictions" and req.sender is None:
                continue
            found = await self.evaluate(name, req)
            if found is not None and found.action != OK:
                result = found
                break
        if result is None and unlisted and not req.actions.discard:
            result = self._unlisted_checks(req)
        if result is not None and result.reply is not None:
            if req.defer_if_reject is not None and not result.reply.temporary:
                return Result(DEFER, req.defer_if_reject)
            return result
        if req.defer_if_permit is not None:
            return Result(DEFER, req.defer_if_permit)
        return None

    def _unlisted_checks(self, req: Request) -> Result | None:
        if self.reject_unlisted_sender and req.sender:
            reply = self.unlisted(req, req.sender, STAGE_SENDER)
            if reply is not None:
                return refusal(reply)
        if self.reject_unlisted_rcpt:
            reply = self.unlisted(req, req.recipient, STAGE_RECIPIENT)
            if reply is not None:
                return refusal(reply)
        return None

    def runs(self, list_name: str) -> bool:
        """Whether the list has anything to run: a check of empty lists alone decides
        nothing (its caller may leave it out)."""
        return bool(self.lists[list_name])

    def defer_if(self, req: Request, permit: bool, reply: Reply) -> None:
        """Remember a deferred decision (the first one of each kind counts, as Postfix)."""
        if permit and req.defer_if_permit is None:
            req.defer_if_permit = reply
        elif not permit and req.defer_if_reject is None:
            req.defer_if_reject = reply

    def tempfail(self, req: Request, action: str, reply: Reply) -> Result | None:
        """A temporary DNS failure: defer now, or only if nothing else rejects."""
        if action == "defer":
            return Result(DEFER, reply)
        self.defer_if(req, True, reply)
        return None

    # --- replies -----------------------------------------------------------------
    def reply(self, code: int, dsn: str, req: Request, text: str, key: str | None = None,
              stage: str | None = None) -> Reply:
        stage = stage or req.stage
        if key is None:
            key = self.stage_key(req, stage)
        return Reply(code, dsn, f"<{key}>: {_STAGE_TEXT[stage]}: {text}")

    @staticmethod
    def stage_key(req: Request, stage: str) -> str:
        if stage == STAGE_CLIENT:
            return req.client
        if stage == STAGE_HELO:
            return req.helo
        if stage == STAGE_SENDER:
            return req.sender or ""
        if stage == STAGE_DATA:
            return "DATA"
        if stage == STAGE_ETRN:
            return req.etrn_domain
        return req.recipient

    def lookup_failure(self, key: str) -> Result:
        return Result(DEFER, Reply(451, "4.3.0", f"<{key}>: Temporary lookup failure"))

    def resolve(self, address: str, sender: str | None = None) -> resolve.Resolved:
        """Where the address goes once cleanup has it: rewritten in the local context
        (``user`` becomes ``user@$myorigin``, a source route is dropped, ...), then
        resolved (for sender, when given: sender-dependent tables), as Postfix's
        smtpd_resolve_addr() does. Deciding on the address as the client sent it
        would judge another address than the one delivered."""
        return self.resolved.resolve(rewrite_address(address, self.rewrite_context), sender)

    def bad_syntax(self, address: str, smtputf8: bool) -> bool:
        """Postfix's smtpd_check_addr: the address resolves to no valid domain, or to
        one in UTF-8 in a transaction without SMTPUTF8. A table that cannot answer
        is no syntax error (the restrictions defer later)."""
        if not address:
            return False
        r = self.resolve(address)
        if r.bad_syntax:
            return True
        return not smtputf8 and not r.recipient.rpartition("@")[2].isascii()

    # --- the unlisted recipient / sender check -------------------------------------
    def _maps(self, param: str) -> maps.Maps:
        cached = self._lazy_maps.get(param)
        if cached is None:
            try:
                cached = maps.Maps(self.config, param)
            except maps.TableError as e:
                cached = e
            self._lazy_maps[param] = cached
        if isinstance(cached, maps.TableError):
            raise cached
        return cached

    def unlisted(self, req: Request, address: str, stage: str) -> Reply | None:
        """Reject reply when address is in one of our domains but unknown; None when fine."""
        if not address:
            return None
        # as Postfix's check_rcpt_maps: a recipient with the sender (its sender-dependent
        # default transport may be the error transport), a sender with the recipient
        r = self.resolve(address, req.sender if stage == STAGE_RECIPIENT else req.recipient)
        if r.failed:
            return Reply(451, "4.3.0", f"<{address}>: Temporary lookup failure")
        try:
            if self._mapped(r, stage):
                return None
            if r.transport in ("error", "retry") and not r.bad_syntax:
                # the virtual alias class too: its nexthop is "5.1.1 User unknown in
                # virtual alias table", unless relocated_maps moved the address
                return self._undeliverable(req, r, address, stage)
            # the class's recipient table, when set (Postfix asks none for a class
            # without one: an LMTP store behind virtual_mailbox_domains knows its users)
            param, code, what = self.recipient_tables.get(r.class_, ("", 0, ""))
            localpart = r.recipient.rpartition("@")[0]
            if not param or not localpart:
                return None
            if r.class_ == resolve.CLASS_LOCAL and localpart.lower() in self.local_always:
                return None  # absorbed by qmgr or made by bounce, as Postfix
            # the keys of one address are one moment's lookups: a unix:passwd.byname
            # table among them checks /etc/passwd once, not once per key
            passwd.ACCOUNTS.pin()
            try:
                if addr_lookup.lookup_address(self._maps(param), r.recipient.lower(),
                                              r.class_ == resolve.CLASS_LOCAL,
                                              self.delimiter) is not None:
                    return None
            finally:
                passwd.ACCOUNTS.unpin()
        except maps.TableError as e:
            log.warning(f"{e}")
            return Reply(451, "4.3.0", f"<{address}>: Temporary lookup failure")
        dsn = "5.1.0" if stage == STAGE_SENDER else "5.1.1"
        if code < 500:
            dsn = "4" + dsn[1:]
        return self.reply(code, dsn, req, f"User unknown in {what}", key=address, stage=stage)

    def _mapped(self, r: Resolved, stage: str) -> bool:
        """Postfix's check_rcpt_maps: an address that a canonical or virtual alias table
        rewrites is taken, whatever its class (cleanup sends it elsewhere)."""
        params = self.rewriting_maps[STAGE_SENDER if stage == STAGE_SENDER else STAGE_RECIPIENT]
        if not params:
            return False
        address = r.recipient.lower()
        local = r.class_ == resolve.CLASS_LOCAL
        return any(addr_lookup.lookup_address(self._maps(param), address, local,
                                              self.delimiter) is not None for param in params)

    def _undeliverable(self, req: Request, r: Resolved, address: str,
                       stage: str) -> Reply | None:
        """Postfix's check_rcpt_maps for an address that resolves to the error or retry
        transport (a virtual alias domain, transport_maps, relocated_maps): refused now
        with the nexthop's reason (550, unknown_virtual_alias_reject_code for the virtual
        alias class, 450 for retry)."""
        retry = r.transport == "retry"
        default = ("4" if retry else "5") + (".1.0" if stage == STAGE_SENDER else ".1.1")
        dsn, text = dsn_split(default, r.nexthop)
        code = 450 if retry else self.unknown_alias_code if r.class_ == resolve.CLASS_ALIAS \
            else 550
        return self.reply(code, _dsn_for_stage(fix_dsn(code, dsn), stage), req, text,
                          key=address, stage=stage)

    def access_result(self, value: str, req: Request, key: str, stage: str,
                      table: str = "") -> Outcome:
        """Interpret an access(5) table value (Postfix's check_table_result)."""
        parts = value.strip().split(None, 1)  # the action ends at a space or a tab
        word = parts[0] if parts else ""
        rest = parts[1].strip() if len(parts) > 1 else ""
        upper = word.upper()
        rclass = _STAGE_CLASS[stage]
        if upper in ("OK", "RELAY") or (word.isdigit() and not rest
                                         and not value.strip().startswith(("4", "5"))):
            return Result(OK)
        if word.isdigit() and len(word) == 3 and word[0] in "45":
            code = int(word)
            dsn, text = dsn_split(f"{word[0]}.7.1", rest)
            if dsn[0] != word[0]:
                dsn = fix_dsn(code, dsn)
            return refusal(self.reply(code, dsn, req, text or "Access denied", key=key,
                                      stage=stage))
        if upper in ("REJECT", "DEFER", "DEFER_IF_PERMIT", "DEFER_IF_REJECT"):
            code = self.access_reject_code if upper == "REJECT" else self.access_defer_code
            dsn, text = dsn_split("5.7.1" if upper == "REJECT" else "4.7.1", rest)
            default = "Service unavailable" if upper.startswith("DEFER_IF") else "Access denied"
            reply = self.reply(code, fix_dsn(code, dsn), req, text or default, key=key,
                               stage=stage)
            if upper.startswith("DEFER_IF"):
                self.defer_if(req, upper == "DEFER_IF_PERMIT", reply)
                return None
            return refusal(reply)
        if upper == "DUNNO":
            return None
        if upper in ("WARN", "INFO"):
            whatsup(req, upper.lower(), rest)
            return None
        if upper in _MESSAGE_ACTIONS:
            return self._message_action(upper, rest, value, req, key, rclass, table)
        if upper == "PREPEND":
            if req.sender is None:
                log.warning(f"access table {table}: with smtpd_delay_reject=no, action PREPEND "
                            "is always skipped in Client host or Helo command restrictions")
            elif req.where == WHERE_EOM:
                log.warning(f"access table {table}: action PREPEND must be used before "
                            "smtpd_end_of_data_restrictions")
            elif not _HEADER_RE.match(rest) or not rest.isprintable():
                log.warning(f'access table {table} entry "{value}" requires header: text')
            else:
                req.actions.prepend.append(rest)
            return None
        return self._restriction_value(value, req, table)

    def _restriction_value(self, value: str, req: Request, table: str) -> Outcome:
        """A value that is no action: a list of restrictions, run in place. Like
        Postfix, a value that names a table, nests too deep or is no restriction
        is a server error (451 4.3.5), never a pass."""
        if ":" in value:
            log.warning(f"access table {table} has entry with lookup table: {value}")
            log.warning("do not specify lookup tables inside SMTPD access maps")
            log.warning("define a restriction class and specify its name instead.")
            return self.server_error()
        words = config_mod.split_list(value)
        if not words:
            log.warning(f"access table {table} entry {value} has empty value")
            return None
        if req.recursion >= RECURSION_LIMIT:
            log.warning(f"access table {table} entry {value} causes unreasonable recursion")
            return self.server_error()
        try:
            entries = self.parse(words)
        except ValueError as e:  # "unknown smtpd restriction: ..." and the like
            log.warning(str(e))
            return self.server_error()
        return self._run_nested(entries, req)

    async def _run_nested(self, entries: list[_Entry], req: Request) -> Result | None:
        req.recursion += 1
        try:
            return await self.run_entries(entries, req)
        finally:
            req.recursion -= 1

    @staticmethod
    def server_error() -> Result:
        """Postfix's reject_server_error: the configuration cannot say, try again later."""
        return Result(DEFER, Reply(451, "4.3.5", "Server configuration error"))

    def _message_action(self, action: str, arg: str, value: str, req: Request, key: str,
                        rclass: str, table: str) -> Result | None:
        """HOLD, DISCARD, REDIRECT, BCC, FILTER: remembered for the message."""
        if req.sender is None:
            log.warning(f"access table {table}: with smtpd_delay_reject=no, action {action} "
                        "is always skipped in Client host or Helo command restrictions")
            return None
        actions = req.actions
        if action == "FILTER":
            if not arg:
                log.warning(f'access table {table} entry "{value}" has FILTER entry without '
                            "value")
            elif ":" not in arg or services.split_content_filter(arg) is None:
                log.warning(f'access table {table} entry "{value}" requires '
                            "transport:destination")
            else:
                whatsup(req, "filter", f"<{key}>: {rclass} triggers FILTER {arg}")
                actions.filter = arg
            return None
        if action in ("REDIRECT", "BCC"):
            if "@" not in arg:
                log.warning(f'access table {table} entry "{value}" requires user@domain target')
                return None
            whatsup(req, action.lower(), f"<{key}>: {rclass} triggers {action} {arg}")
            if action == "REDIRECT":
                actions.redirect = arg
            else:
                actions.bcc.append(arg)
            return None
        if action == "HOLD":
            if actions.hold:
                return None
            whatsup(req, "hold", f"<{key}>: {rclass} {arg or 'triggers HOLD action'}")
            actions.hold = True
            return None
        whatsup(req, "discard", f"<{key}>: {rclass} {arg or 'triggers DISCARD action'}")
        actions.discard = True
        return Result(OK)

    # --- DNS lists -------------------------------------------------------------------
    async def listing(self, req: Request, entry: _Entry, query: str) -> dnsxl.Listing | None | bool:
        """The list's answer for query: a Listing that passes the entry's reply
        filter, None (not listed) or False (the DNS could not say; warned)."""
        cache = req.cache.setdefault("dnsxl", {})
        assert isinstance(cache, dict)
        if query not in cache:
            try:
                cache[query] = await dnsxl.lookup(query)
            except dnsxl.dns.DnsError:
                cache[query] = False
        found = cache[query]
        if isinstance(found, dnsxl.Listing) and entry.reply_filter is not None \
                and not entry.reply_filter.matches(found):
            return None
        return found  # type: ignore[no-any-return]

    def rbl_reply(self, req: Request, entry: _Entry, listing: dnsxl.Listing, what: str,
                  stage: str) -> Result:
        """Postfix's rbl_reject_reply: rbl_reply_maps or default_rbl_reply, expanded."""
        domain = entry.arg.partition("=")[0]
        template = None
        if self.rbl_reply_maps:
            try:
                table = self._maps("rbl_reply_maps")
                template = table.find(entry.arg)
                if template is None and entry.arg != domain:
                    template = table.find(domain)
            except maps.TableError as e:
                log.warning(f"rbl_reply_maps: {e}")
                return Result(DEFER, Reply(451, "4.3.5", "Server configuration error"))
        values = {"rbl_code": str(self.rbl_code), "rbl_domain": domain,
                  "rbl_reason": listing.reason, "rbl_txt": listing.reason, "rbl_what": what,
                  "rbl_class": _STAGE_CLASS[stage], "client_address": req.client_addr,
                  "client_name": req.client_name, "helo_name": req.helo,
                  "sender": req.sender or "", "recipient": req.recipient}
        expander = config_mod.MacroExpander(values.get, recurse=False)
        try:
            text = expander.expand(template if template is not None else self.rbl_template)
        except config_mod.ConfigError:
            log.warning(f"rbl_reject_reply: bad rbl reply template for domain {entry.arg}: "
                        f"{template}")
            text = expander.expand(self.rbl_template)
        text = log.printable(text)[:510]
        if not re.match(r"^[45]\d\d ", text):
            log.warning(f"rbl response code configuration error: {text}")
            return Result(DEFER, Reply(450, "4.7.1", "Service unavailable"))
        code = int(text[:3])
        dsn, rest = dsn_split("4.7.1", text[4:])
        return refusal(Reply(code, fix_dsn(code, dsn), rest or "Service unavailable"))


_MESSAGE_ACTIONS = frozenset(("HOLD", "DISCARD", "REDIRECT", "BCC", "FILTER"))
_HEADER_RE = re.compile(r"^[!-9;-~]+:")


def _tempfail_action(config: config_mod.Config, name: str) -> str:
    value = config.get(name).strip().lower()
    if value not in ("defer", "defer_if_permit"):
        raise ValueError(f"{name}: unknown action \"{value}\"")
    return value


class _LazyMaps:
    """A table opened at first use, so a missing table defers mail instead of killing smtpd."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self._maps: maps.Maps | None = None

    def get(self) -> maps.Maps:
        if self._maps is None:
            self._maps = maps.Maps(None, specs=[self.spec])
        return self._maps

    def find(self, key: str, partial: bool = False) -> str | None:
        return self.get().find(key, partial)

    def __bool__(self) -> bool:
        return True


# --- the restrictions ------------------------------------------------------------

@restriction("permit")
def _permit(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    return Result(OK)


@restriction("reject", relay_guard=True)
def _reject(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    return Result(REJECT, engine.reply(engine.reject_code, "5.7.1", req, "Access denied"))


@restriction("defer", relay_guard=True)
def _defer(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    return Result(DEFER, engine.reply(engine.defer_code, "4.7.1", req, "Access denied"))


@restriction("permit_mynetworks")
def _permit_mynetworks(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    try:
        return Result(OK) if engine.mynetworks.match(req.client_addr, req.client_name) else None
    except maps.TableError as e:
        log.warning(str(e))
        return engine.lookup_failure(req.client)


@functools.lru_cache(maxsize=1024)
def _canonical_address(text: str) -> str | None:
    """A client address in the form interface addresses are kept in (str of the parsed
    address: ipaddress's __str__ costs more than the rest of a restriction)."""
    ip = netaddr.parse_address(text)
    return None if ip is None else str(ip)


@restriction("permit_inet_interfaces")
def _permit_inet_interfaces(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    addr = _canonical_address(req.client_addr)
    return Result(OK) if addr is not None and addr in engine.resolved.resolver.interfaces else None


@restriction("permit_sasl_authenticated")
def _permit_sasl(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    return Result(OK) if req.sasl_username else None


def _at_rcpt(req: Request) -> bool:
    """Whether a recipient is being checked: at RCPT or VRFY, in whatever list (with
    smtpd_delay_reject, the client, helo and sender lists run there too), as
    Postfix runs its recipient checks whenever it has the recipient."""
    return req.where in (WHERE_RCPT, WHERE_VRFY) and bool(req.recipient)


def _auth_destination(engine: Engine, req: Request) -> bool | Result:
    """True when the recipient is ours (final or relay) and not routed (unless
    allow_untrusted_routing): Postfix's permit_auth_destination."""
    r = engine.resolve(req.recipient)
    if r.failed:
        return engine.lookup_failure(req.recipient)
    return r.class_ != resolve.CLASS_DEFAULT and (not r.routed or engine.allow_untrusted_routing)


@restriction("permit_auth_destination")
def _permit_auth_destination(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    if not _at_rcpt(req):
        return None
    ok = _auth_destination(engine, req)
    if isinstance(ok, Result):
        return ok
    return Result(OK) if ok else None


def _unauthorized(engine: Engine, req: Request) -> Result | bool:
    """At RCPT: a lookup Result to return as it is, or whether the recipient is one
    this system may not relay to (not a local, virtual or relay domain, or routed)."""
    if not _at_rcpt(req):
        return False
    ok = _auth_destination(engine, req)
    if isinstance(ok, Result):
        return ok
    return not ok


@restriction("reject_unauth_destination", relay_guard=True)
def _reject_unauth_destination(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    denied = _unauthorized(engine, req)
    if isinstance(denied, Result):
        return denied
    if not denied:
        return None
    return Result(REJECT, Reply(engine.relay_code, "5.7.1",
                                f"<{req.recipient}>: Relay access denied"))


@restriction("defer_unauth_destination", relay_guard=True)
def _defer_unauth_destination(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    denied = _unauthorized(engine, req)
    if isinstance(denied, Result):
        return denied
    if not denied:
        return None
    code = 400 + engine.relay_code % 100
    return Result(DEFER, Reply(code, "4.7.1", f"<{req.recipient}>: Relay access denied"))


@restriction("reject_unlisted_recipient")
def _reject_unlisted_recipient(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    if not req.recipient:
        return None
    reply = engine.unlisted(req, req.recipient, STAGE_RECIPIENT)
    return None if reply is None else Result(DEFER if reply.temporary else REJECT, reply)


@restriction("reject_unlisted_sender")
def _reject_unlisted_sender(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    if not req.sender:
        return None
    reply = engine.unlisted(req, req.sender, STAGE_SENDER)
    return None if reply is None else Result(DEFER if reply.temporary else REJECT, reply)


def _non_fqdn_address(engine: Engine, req: Request, address: str, stage: str) -> Result | None:
    if not address:
        return None
    domain = address.rpartition("@")[2] if "@" in address else ""
    if domain and _is_fqdn(domain):
        return None
    code = engine.non_fqdn_code
    return Result(DEFER if code < 500 else REJECT,
                  engine.reply(code, "4.5.2" if code < 500 else "5.5.2", req,
                               "need fully-qualified address", key=address, stage=stage))


@restriction("reject_non_fqdn_sender")
def _reject_non_fqdn_sender(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    return _non_fqdn_address(engine, req, req.sender or "", STAGE_SENDER)


@restriction("reject_non_fqdn_recipient")
def _reject_non_fqdn_recipient(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    if not _at_rcpt(req):
        return None
    return _non_fqdn_address(engine, req, req.recipient, STAGE_RECIPIENT)


@restriction("reject_non_fqdn_helo_hostname")
@restriction("reject_non_fqdn_hostname")
def _reject_non_fqdn_helo(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    if not req.helo:
        return None
    if not valid_hostname(req.helo):
        return None  # reject_invalid_helo_hostname's business
    if _is_fqdn(req.helo):
        return None
    code = engine.non_fqdn_code
    return Result(REJECT if code >= 500 else DEFER,
                  engine.reply(code, "5.5.2" if code >= 500 else "4.5.2", req,
                               "need fully-qualified hostname", key=req.helo, stage=STAGE_HELO))


@restriction("reject_invalid_helo_hostname")
@restriction("reject_invalid_hostname")
def _reject_invalid_helo(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    if not req.helo or valid_hostname(req.helo):
        return None
    code = engine.invalid_hostname_code
    return Result(REJECT if code >= 500 else DEFER,
                  engine.reply(code, "5.5.2" if code >= 500 else "4.5.2", req, "Invalid name",
                               key=req.helo, stage=STAGE_HELO))


def _access(engine: Engine, req: Request, entry: _Entry, keyfunc: Callable[[], str | None],
            reply_key: str, stage: str) -> Outcome:
    try:
        value = keyfunc()
    except maps.TableConfigError:  # an empty result: Postfix's DICT_ERR_CONFIG, warned already
        return Result(DEFER, engine.reply(451, "4.3.5", req, "Server configuration error",
                                          key=reply_key, stage=stage))
    except maps.TableError as e:
        log.warning(f"{entry.arg}: {e}")
        return engine.lookup_failure(reply_key)
    if value is None:
        return None
    return engine.access_result(value, req, reply_key, stage, entry.arg)


def _sender_owners(engine: Engine, req: Request) -> list[str] | Result | None:
    """The logins smtpd_sender_login_maps gives for the sender (mail_addr_find, on the
    resolved address), None when it has no owner, a Result when the table fails."""
    sender = req.sender or ""
    r = engine.resolve(sender)
    address = r.recipient if not r.failed else sender
    try:
        value = addr_lookup.lookup_address(engine._maps("smtpd_sender_login_maps"),
                                           address.lower(), r.class_ == resolve.CLASS_LOCAL,
                                           engine.delimiter)
    except maps.TableError as e:
        log.warning(f"smtpd_sender_login_maps: {e}")
        return engine.lookup_failure(sender)
    return None if value is None else [w for w in re.split(r"[,\s]+", value) if w]


def _login_mismatch(engine: Engine, req: Request, authenticated: bool,
                    unauthenticated: bool) -> Result | None:
    if not req.sender:  # the null sender has no owner
        return None
    if req.sasl_username and authenticated:
        owners = _sender_owners(engine, req)
        if isinstance(owners, Result):
            return owners
        if owners is None or req.sasl_username.lower() not in (o.lower() for o in owners):
            return Result(REJECT, engine.reply(
                553, "5.7.1", req, f"not owned by user {req.sasl_username}",
                key=req.sender, stage=STAGE_SENDER))
    elif not req.sasl_username and unauthenticated:
        owners = _sender_owners(engine, req)
        if isinstance(owners, Result):
            return owners
        if owners is not None:
            return Result(REJECT, engine.reply(553, "5.7.1", req, "not logged in",
                                               key=req.sender, stage=STAGE_SENDER))
    return None


@restriction("reject_sender_login_mismatch")
def _reject_sender_login_mismatch(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    return _login_mismatch(engine, req, True, True)


@restriction("reject_authenticated_sender_login_mismatch")
def _reject_authenticated_sender_login_mismatch(engine: Engine, req: Request,
                                                entry: _Entry) -> Result | None:
    return _login_mismatch(engine, req, True, False)


@restriction("reject_unauthenticated_sender_login_mismatch")
def _reject_unauthenticated_sender_login_mismatch(engine: Engine, req: Request,
                                                  entry: _Entry) -> Result | None:
    return _login_mismatch(engine, req, False, True)


@restriction("check_client_access", takes_arg=True)
def _check_client_access(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    table = entry.table
    assert table is not None
    name = "" if req.client_name == "unknown" else req.client_name
    return _access(engine, req, entry,
                   lambda: addr_lookup.lookup_client(table, name, req.client_addr,
                                                     engine.access_parent_style),
                   req.client, STAGE_CLIENT)


@restriction("check_helo_access", takes_arg=True)
def _check_helo_access(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    return _domain_access(engine, req, entry, req.helo, STAGE_HELO)


def _domain_access(engine: Engine, req: Request, entry: _Entry, domain: str,
                   stage: str) -> Outcome:
    """An access table asked for a domain name (HELO, ETRN) and its parents; nothing
    to ask without one."""
    table = entry.table
    assert table is not None
    if not domain:
        return None
    return _access(engine, req, entry,
                   lambda: addr_lookup.lookup_domain(table, domain, engine.access_parent_style),
                   domain, stage)


def _mail_access(engine: Engine, req: Request, entry: _Entry, address: str,
                 stage: str) -> Outcome:
    """Postfix's check_mail_access: the table is asked for the address as it will be
    delivered (rewritten, resolved, in lower case), not as the client spelled it, so
    that user%remote@ourdomain is looked up as user@remote. A recipient that is still
    routed (``@ % !`` in its local part) gets no OK from a table unless
    allow_untrusted_routing: the next hop could route it on."""
    table = entry.table
    assert table is not None
    r = engine.resolve(address)
    if r.failed:
        return engine.lookup_failure(address)
    resolved = r.recipient.lower()
    if "@" not in resolved:
        return None
    outcome = _access(engine, req, entry,
                      lambda: addr_lookup.lookup_mail_access(table, resolved, engine.delimiter,
                                                             engine.access_parent_style),
                      address, stage)
    if stage == STAGE_RECIPIENT and r.routed and not engine.allow_untrusted_routing:
        return _no_ok(outcome)
    return outcome


def _no_ok(outcome: Outcome) -> Outcome:
    """An outcome with its OK turned into DUNNO (refusals and deferrals stand)."""
    if outcome is None or isinstance(outcome, Result):
        return None if outcome is not None and outcome.action == OK else outcome

    async def later() -> Result | None:
        result = await outcome
        return None if result is not None and result.action == OK else result
    return later()


@restriction("check_sender_access", takes_arg=True)
def _check_sender_access(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    table = entry.table
    assert table is not None
    if req.sender is None:
        return None
    if not req.sender:
        return _access(engine, req, entry, lambda: table.find(engine.null_key), "",
                       STAGE_SENDER)
    return _mail_access(engine, req, entry, req.sender, STAGE_SENDER)


@restriction("check_recipient_access", takes_arg=True)
def _check_recipient_access(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    if not _at_rcpt(req):
        return None
    return _mail_access(engine, req, entry, req.recipient, STAGE_RECIPIENT)


@restriction("check_ccert_access", takes_arg=True)
def _check_ccert_access(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    """The certificate's fingerprint, then its public key's (trusted or not, as Postfix)."""
    table = entry.table
    assert table is not None
    cert = req.tls.cert if req.tls is not None else None
    if cert is None:
        if req.tls is not None and not engine.ask_ccert:
            log.warning('check_ccert_access is requested, but "smtpd_tls_ask_ccert = no"')
        return None
    for key in (cert.fingerprint, cert.pubkey_fingerprint):
        outcome = _access(engine, req, entry, lambda key=key: table.find(key),  # type: ignore[misc]
                          log.printable(cert.subject_cn), STAGE_CCERT)
        if outcome is not None:
            return outcome
    return None


@restriction("permit_tls_clientcerts")
@restriction("permit_tls_all_clientcerts")
def _permit_tls_clientcerts(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    """A trusted certificate (all_clientcerts), or one whose fingerprint or public key
    fingerprint relay_clientcerts lists, trusted or not."""
    if req.tls is None:
        return None
    cert = req.tls.cert
    if cert is None:
        if not engine.ask_ccert:
            log.warning(f'{entry.name} is requested, but "smtpd_tls_ask_ccert = no"')
        return None
    if cert.trusted and entry.name == "permit_tls_all_clientcerts":
        return Result(OK)
    try:
        table = engine._maps("relay_clientcerts")
        for key in (cert.fingerprint, cert.pubkey_fingerprint):
            if table.find(key) is not None:
                return Result(OK)
    except maps.TableError as e:
        log.warning(f"relay_clientcerts: lookup error for fingerprint '{cert.fingerprint}', "
                    f"pkey fingerprint {cert.pubkey_fingerprint}: {e}")
        return engine.lookup_failure(engine.stage_key(req, req.stage))
    return None


@restriction("check_etrn_access", takes_arg=True)
def _check_etrn_access(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    return _domain_access(engine, req, entry, req.etrn_domain, STAGE_ETRN)


@restriction("defer_if_permit", relay_guard=True)
@restriction("defer_if_reject")
def _defer_if(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    key = engine.stage_key(req, req.stage)
    reply = Reply(engine.defer_code, "4.7.1",
                  f"<{key}>: {_STAGE_CLASS[req.stage]} rejected: {entry.name} requested")
    engine.defer_if(req, entry.name == "defer_if_permit", reply)
    return None


# --- DNS-based restrictions (pymailsys.smtp.dnsxl) ---------------------------------

@restriction("reject_rbl_client", dns_list=True)
@restriction("reject_rbl", dns_list=True)
async def _reject_rbl_client(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    ip = netaddr.parse_address(req.client_addr)
    if ip is None:
        return None
    domain = entry.arg.partition("=")[0]
    found = await engine.listing(req, entry, dnsxl.client_query(str(ip), domain))
    if not isinstance(found, dnsxl.Listing):  # a DNS failure gives the benefit of the doubt
        return None
    return engine.rbl_reply(req, entry, found, req.client_addr, STAGE_CLIENT)


@restriction("permit_dnswl_client", dns_list=True)
async def _permit_dnswl_client(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    ip = netaddr.parse_address(req.client_addr)
    if ip is None:
        return None
    if _at_rcpt(req):  # never allow-list relaying
        ok = _auth_destination(engine, req)
        if ok is not True:
            return None
    domain = entry.arg.partition("=")[0]
    found = await engine.listing(req, entry, dnsxl.client_query(str(ip), domain))
    if found is False:
        engine.defer_if(req, False, Reply(450, "4.7.1", f"<{req.client_addr}>: "
                                          "Client host rejected: Service unavailable"))
        return None
    return Result(OK) if found else None


async def _rhsbl(engine: Engine, req: Request, entry: _Entry, what: str,
                 stage: str) -> Result | None:
    domain = what.rpartition("@")[2]
    if not domain or not valid_hostname(domain):
        return None
    query = dnsxl.domain_query(domain, entry.arg.partition("=")[0])
    if query is None:
        return None
    found = await engine.listing(req, entry, query)
    if not isinstance(found, dnsxl.Listing):
        return None
    return engine.rbl_reply(req, entry, found, what, stage)


@restriction("reject_rhsbl_client", dns_list=True)
def _reject_rhsbl_client(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    if req.client_name == "unknown":
        return None
    return _rhsbl(engine, req, entry, req.client_name, STAGE_CLIENT)


@restriction("reject_rhsbl_reverse_client", dns_list=True)
def _reject_rhsbl_reverse_client(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    if req.reverse_name == "unknown":
        return None
    return _rhsbl(engine, req, entry, req.reverse_name, STAGE_CLIENT)


@restriction("reject_rhsbl_helo", dns_list=True)
def _reject_rhsbl_helo(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    return _rhsbl(engine, req, entry, req.helo, STAGE_HELO) if req.helo else None


@restriction("reject_rhsbl_sender", dns_list=True)
def _reject_rhsbl_sender(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    return _rhsbl(engine, req, entry, req.sender, STAGE_SENDER) if req.sender else None


@restriction("reject_rhsbl_recipient", dns_list=True)
def _reject_rhsbl_recipient(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    if not _at_rcpt(req):
        return None
    return _rhsbl(engine, req, entry, req.recipient, STAGE_RECIPIENT)


@restriction("reject_unknown_client_hostname")
@restriction("reject_unknown_client")
def _reject_unknown_client(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    status = req.name_status
    if status == NAME_OK:
        return None
    code = 450 if status == NAME_TEMP else engine.unknown_client_code
    return refusal(Reply(code, fix_dsn(code, "4.7.25"),
                         f"Client host rejected: cannot find your hostname, [{req.client_addr}]"))


@restriction("reject_unknown_reverse_client_hostname")
def _reject_unknown_reverse_client(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    status = req.reverse_name_status
    if status == NAME_OK:
        return None
    code = engine.unknown_client_code if status == NAME_PERM else 450
    return refusal(Reply(code, fix_dsn(code, "4.7.1"), "Client host rejected: cannot find "
                         f"your reverse hostname, [{req.client_addr}]"))


@restriction("reject_unknown_helo_hostname")
@restriction("reject_unknown_hostname")
async def _reject_unknown_helo(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    helo = req.helo
    if not helo:
        return None
    if helo.startswith("["):
        if netaddr.parse_address(helo) is not None:
            return None
        code = engine.invalid_hostname_code
        return refusal(engine.reply(code, fix_dsn(code, "5.5.2"), req, "invalid ip address",
                                    key=helo, stage=STAGE_HELO))
    state = await dnsxl.host_state(helo)
    if state == dnsxl.OK:
        return None
    if state == dnsxl.RETRY:
        return engine.tempfail(req, engine.unknown_helo_tempfail,
                               engine.reply(450, "4.7.1", req, "Host not found", key=helo,
                                            stage=STAGE_HELO))
    code = engine.unknown_hostname_code
    return refusal(engine.reply(code, fix_dsn(code, "4.7.1"), req, "Host not found", key=helo,
                                stage=STAGE_HELO))


async def _unknown_domain(engine: Engine, req: Request, address: str, stage: str) -> Result | None:
    """Postfix's reject_unknown_address: a domain we are not final for without MX or A."""
    r = engine.resolve(address)
    if r.failed:
        return engine.lookup_failure(address)
    local, at, domain = r.recipient.rpartition("@")
    if not at or r.class_ in (resolve.CLASS_LOCAL, resolve.CLASS_ALIAS, resolve.CLASS_VIRTUAL):
        return None
    if domain.startswith("[") and domain.endswith("]"):
        return None
    sender = stage == STAGE_SENDER
    state = await dnsxl.mailhost_state(domain)
    if state == dnsxl.OK:
        return None
    if state == dnsxl.NULL_MX:
        code = 550 if sender else 556
        return refusal(engine.reply(code, "5.7.27" if sender else "5.1.10", req,
                                    f"Domain {domain} does not accept mail (nullMX)",
                                    key=address, stage=stage))
    dsn = "4.1.8" if sender else "4.1.2"
    if state == dnsxl.RETRY:
        return engine.tempfail(req, engine.unknown_address_tempfail,
                               engine.reply(450, dsn, req, "Domain not found", key=address,
                                            stage=stage))
    code = engine.unknown_address_code
    return refusal(engine.reply(code, fix_dsn(code, dsn), req, "Domain not found", key=address,
                                stage=stage))


@restriction("reject_unknown_sender_domain")
@restriction("reject_unknown_address")
def _reject_unknown_sender_domain(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    return _unknown_domain(engine, req, req.sender, STAGE_SENDER) if req.sender else None


@restriction("reject_unknown_recipient_domain")
def _reject_unknown_recipient_domain(engine: Engine, req: Request, entry: _Entry) -> Outcome:
    if not _at_rcpt(req):
        return None
    return _unknown_domain(engine, req, req.recipient, STAGE_RECIPIENT)


# --- policy delegation (pymailsys.smtp.policy) --------------------------------------

_instances = itertools.count(1)


def policy_request(engine: Engine, req: Request) -> list[tuple[str, str]]:
    """The attributes Postfix 3.7's smtpd sends a policy server, in its order."""
    if not req.actions.policy_instance:
        now = time.time()
        req.actions.policy_instance = (f"{os.getpid():x}.{int(now):x}."
                                       f"{int(now % 1 * 1e6):x}.{next(_instances):x}")
    peer = req.tls
    cert = peer.cert if peer is not None else None
    # the certificate's names only when it is trusted, in xtext; fingerprints always
    subject = xtext_encode(cert.subject_cn) if cert is not None and cert.trusted else ""
    issuer = xtext_encode(cert.issuer_cn) if cert is not None and cert.trusted else ""
    return [
        ("request", "smtpd_access_policy"), ("protocol_state", req.where),
        ("protocol_name", req.protocol), ("client_address", req.client_addr),
        ("client_name", req.client_name), ("client_port", req.client_port),
        ("reverse_client_name", req.reverse_name), ("server_address", req.server_addr),
        ("server_port", req.server_port), ("helo_name", req.helo),
        ("sender", req.sender or ""), ("recipient", req.recipient),
        ("recipient_count", str(req.recipient_count if req.where in (WHERE_DATA, WHERE_EOM)
                                else 0)),
        ("queue_id", req.queue_id),
        ("instance", req.actions.policy_instance), ("size", str(req.size)),
        ("etrn_domain", req.etrn_domain), ("stress", ""), ("sasl_method", req.sasl_method),
        ("sasl_username", req.sasl_username), ("sasl_sender", req.sasl_sender),
        ("ccert_subject", subject),
        ("ccert_issuer", issuer), ("ccert_fingerprint", cert.fingerprint if cert else ""),
        ("ccert_pubkey_fingerprint", cert.pubkey_fingerprint if cert else ""),
        ("encryption_protocol", peer.protocol if peer else ""),
        ("encryption_cipher", peer.cipher if peer else ""),
        ("encryption_keysize", str(peer.bits if peer else 0)),
    ]  # policy_context follows (policy.Client); Postfix 3.7 sends nothing more


@restriction("check_policy_service", takes_word=True)
async def _check_policy_service(engine: Engine, req: Request, entry: _Entry) -> Result | None:
    client = engine.policy_client(entry.arg)
    action = await client.ask(policy_request(engine, req))
    outcome = engine.access_result(action, req, engine.stage_key(req, req.stage), req.stage,
                                   entry.arg)
    if outcome is None or isinstance(outcome, Result):
        return outcome
    return await outcome
