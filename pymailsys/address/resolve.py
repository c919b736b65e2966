"""Address resolution: Postfix's trivial-rewrite resolve, as a library.

NAME
    resolve - classify an address and find its transport and next hop

SYNOPSIS
    r = resolve.resolve(config, "user@example.com"[, sender])
    r.class_, r.transport, r.nexthop, r.recipient, r.flags
    resolve.Resolver(config).resolve(address)       # the same, explicit
    cache = resolve.ResolveCache(config); cache.resolve(address[, sender])

DESCRIPTION
    Takes an envelope address in internal (unquoted) form and returns a
    ``Resolved``. Used by smtpd (reject_unauth_destination, the local
    recipient check) and by qmgr (where to deliver); it knows nothing of
    either. Rules, as Postfix's resolve_addr():

    * A source route ``@a,@b:user@domain`` is dropped.
    * A trailing dot of the domain is dropped. A local domain (below) is
      stripped; when what remains has ``@``, ``%`` (allow_percent_hack) or
      ``!`` (swap_bangpath: ``a!b`` becomes ``b@a``) it is resolved again.
      An address without a domain is local. An empty local part (``@ourdomain``,
      ``""@ourdomain``) is $empty_address_recipient (MAILER-DAEMON), resolved
      again, as Postfix's resolve_addr() does.
    * Class, checked in this order on the final domain:
      ``local`` (mydestination, or ``[ip]`` of inet_interfaces /
      proxy_interfaces), ``alias`` (virtual_alias_domains: transport
      ``error``, nexthop ``5.1.1 User unknown in virtual alias table``),
      ``virtual`` (virtual_mailbox_domains), ``relay`` (relay_domains,
      subdomains included), ``default``.
    * Transport and nexthop from local_transport / virtual_transport /
      relay_transport / default_transport (``transport:nexthop``); without
      a nexthop there: local uses the domain, relay and default use the
      sender's sender_dependent_relayhost_maps entry when a sender is given
      and has one other than DUNNO, else $relayhost when set, else the
      domain; virtual uses the domain. For class default, the sender's
      sender_dependent_default_transport_maps entry (not DUNNO) stands for
      default_transport, its nexthop before any relayhost. Both tables are
      searched as Postfix's mail_addr_find(): ``user+ext@domain``,
      ``user@domain``, ``user+ext`` and ``user`` when the domain is local,
      ``@domain``; the null sender is the key
      empty_address_relayhost_maps_lookup_key (resp.
      empty_address_default_transport_maps_lookup_key); an empty value is
      ignored with a warning.
    * An empty transport there (``default_transport = :[relay]``) is FAIL,
      with trivial-rewrite's warning ``file /etc/pymailsys/main.cf:
      parameter default_transport: null transport is not allowed``.
    * With helpful_warnings, a domain found in two of the classes' lists is
      logged at each resolve, as trivial-rewrite does: ``do not list domain D
      in BOTH mydestination and virtual_alias_domains`` (and for
      mydestination/virtual_mailbox_domains, virtual_alias_domains/
      virtual_mailbox_domains, virtual_alias_domains/relay_domains,
      virtual_mailbox_domains/relay_domains). A domain in both mydestination
      and relay_domains is local, without a warning, as in Postfix.
    * transport_maps (not for class alias): ``user+ext@domain``,
      ``user@domain``, ``domain``, ``.parent`` ..., ``*``. A value
      ``transport:nexthop`` replaces what it gives; an empty transport keeps
      the class's transport and, without a nexthop, its nexthop (``:`` keeps
      relayhost); a transport without a nexthop goes to the recipient domain
      (``error:``/``retry:``: ``Address is undeliverable``), as Postfix's
      update_entry().
    * relocated_maps, last, for any class: an entry for the recipient
      (searched as Postfix's mail_addr_find(), the localpart alone only in a
      local domain) makes it transport ``error``, nexthop ``5.1.6 User has
      moved to VALUE``.
    * ``recipient`` is ``localpart@domain``; without a domain
      ``@$myhostname`` is appended (for a stripped local domain, that one).
    * ``flags``: ROUTED when the result, of any class, still has ``@ % !``
      in its localpart (also when allow_percent_hack or swap_bangpath do not
      take them: the next hop may); FAIL when a table could not answer
      (logged as trivial-rewrite does: ``warning: transport_maps lookup
      failure``, after the table's error), or the address needs more
      rewriting turns than it has characters (the caller defers, without
      logging again; ``error`` says why); ERROR (Postfix's
      RESOLVE_FLAG_ERROR) when the domain it comes to is no host name
      (``valid_hostname``; in UTF-8 only with smtputf8_enable) and no address
      literal ``[a.b.c.d]``/``[IPv6:...]`` (``mailhost_literal``), or is empty
      (``user@``): transport ``error``, nexthop ``5.1.3 bad address syntax``
      (smtpd answers 501). Only one trailing dot is dropped, not ``..``.

    ``ResolveCache`` is Postfix's resolve client for a long-lived process
    (smtpd, qmgr): an answer is reused for RESOLVE_TTL (30) seconds, as the
    client reuses its last one; it keeps at most RESOLVE_CACHE_SIZE answers
    (all forgotten when full), never a failure (a table that did not answer is
    asked again). The key is the address, and the sender only when
    a sender-dependent table can make it matter (the null sender and
    no sender differ there); nothing else of a request changes the answer.
    A reused answer does not repeat the helpful_warnings nag.

    Domain lists take Postfix's patterns: a name, ``!pattern``, ``/file``,
    ``type:table`` (the domain is the key; tables open at first use, so a
    missing one fails lookups, not start-up). mydestination,
    virtual_alias_domains and virtual_mailbox_domains are string lists, as in
    Postfix 3.x: a name or a table key matches that domain only, never a
    subdomain (``.name`` matches nothing real). relay_domains is a domain list:
    ``.name`` matches subdomains, and when it is named in
    parent_domain_matches_subdomains (the default) so does a bare name, and a
    fixed-key table is asked for the domain's parents (``example.com``),
    otherwise for ``.example.com``, as Postfix's match_hostname.

REFUSES
    Nothing: an address whose domain is malformed resolves to the error
    transport (ERROR above), anything else as best it can, like Postfix.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass

from pymailsys import config as config_mod
from pymailsys import log, maps
from pymailsys.address import networks as netaddr
from pymailsys.maps import search as addr_lookup

CLASS_LOCAL = "local"
CLASS_ALIAS = "alias"
CLASS_VIRTUAL = "virtual"
CLASS_RELAY = "relay"
CLASS_DEFAULT = "default"

FLAG_ROUTED = 1 << 0
FLAG_FAIL = 1 << 1
FLAG_ERROR = 1 << 2  # bad address syntax: no delivery anywhere

BAD_SYNTAX = "5.1.3 bad address syntax"

ALIAS_NEXTHOP = "5.1.1 User unknown in virtual alias table"
UNDELIVERABLE = "Address is undeliverable"  # the error/retry nexthop a transport entry left out
RESOLVE_TTL = 30.0  # seconds an answer is reused, as Postfix's resolve client's cache
RESOLVE_CACHE_SIZE = 256


@dataclass(frozen=True)
class Resolved:
    class_: str
    transport: str
    nexthop: str
    recipient: str
    flags: int = 0
    error: str = ""

    @property
    def routed(self) -> bool:
        return bool(self.flags & FLAG_ROUTED)

    @property
    def failed(self) -> bool:
        return bool(self.flags & FLAG_FAIL)

    @property
    def bad_syntax(self) -> bool:
        return bool(self.flags & FLAG_ERROR)


def mailhost_literal(domain: str) -> netaddr.IPAddress | None:
    """The address of ``[a.b.c.d]`` or ``[IPv6:...]`` (Postfix's valid_mailhost_literal:
    an IPv6 address needs its tag, nothing else is allowed inside), else None."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    text, version = (inner[5:], 6) if inner[:5].lower() == "ipv6:" else (inner, 4)
    if version == 4:  # Postfix's valid_ipv4_hostaddr: leading zeros are decimal
        octets = [o.lstrip("0") or ("0" if o else "") for o in text.split(".")]
        if len(octets) != 4 or not all(o.isascii() and o.isdigit() and len(o) <= 3
                                       and int(o) <= 255 for o in octets):
            return None
        if octets[0] == "0" and any(o != "0" for o in octets[1:]):
            return None  # a bad initial octet: 0.x.y.z, but for 0.0.0.0
        return ipaddress.IPv4Address(".".join(octets))
    if "%" in text:  # no scope
        return None
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return ip if ip.version == 6 else None


def valid_hostname(name: str) -> bool:
    """Postfix's valid_hostname(): labels of letters, digits and ``_``, with ``-``
    inside a label, 1 to 63 characters each, 255 in all, not all digits."""
    if not name or len(name) > 255 or not name.isascii():
        return False
    labels = name.split(".")
    for label in labels:
        if not 0 < len(label) <= 63 or label[0] == "-" or label[-1] == "-" \
                or not label.replace("-", "").replace("_", "").isalnum():
            return False
    return not all(label.isdigit() for label in labels)


class DomainList:
    """Postfix's domain list (match_list of domain names); with ``strings``, its string
    list (string_list: masquerade_exceptions), where a name matches only itself and a
    table is asked for the string alone."""

    def __init__(self, patterns: list[str], parent_matches: bool = False, name: str = "",
                 strings: bool = False) -> None:
        self.name = name  # the parameter it came from, for warnings
        self.parent_matches = parent_matches
        self.strings = strings
        self.items: list[tuple[bool, str, object]] = []
        for p in patterns:
            self._add(p)

    def _add(self, pattern: str) -> None:
        negate = False
        while pattern.startswith("!"):
            negate, pattern = not negate, pattern[1:]
        if pattern.startswith("/"):
            try:
                with open(pattern, encoding="utf-8", errors="surrogateescape") as f:
                    words = [w for line in f for w in
                             config_mod.split_list(line.split("#", 1)[0])]
            except OSError as e:
                raise maps.TableError(f"open {pattern}: {e.strerror}") from None
            for w in words:
                self._add(("!" if negate else "") + w)
            return
        if ":" in pattern and not pattern.startswith("["):
            self.items.append((negate, "table", pattern))  # opened at first use
        else:
            self.items.append((negate, "name", pattern.lower() if self.strings
                               else pattern.lower().rstrip(".")))

    def __bool__(self) -> bool:
        return bool(self.items)

    def match(self, domain: str) -> bool:
        """True when domain is in the list; TableError when a table cannot answer.
        Postfix's match_hostname: parent_matches is the list's parent_domain_matches_subdomains
        style."""
        d = domain.lower()
        for negate, kind, value in self.items:
            if kind == "name":
                pat = str(value)
                if d == pat:
                    hit = True
                elif self.strings:
                    hit = False
                elif self.parent_matches:
                    hit = d.endswith("." + pat)
                else:
                    hit = pat.startswith(".") and d.endswith(pat)
            else:
                table = maps.open_table(str(value))
                keys = [d] if self.strings else addr_lookup.domain_keys(d, self.parent_matches)
                if not table.fixed:
                    keys = keys[:1]  # never a parent of a regexp or pcre table
                hit = any(table.lookup(key) is not None for key in keys)
            if hit:
                return not negate
        return False


def domain_list(config: config_mod.Config, name: str) -> DomainList:
    """The domain list of parameter name, in its parent_domain_matches_subdomains style."""
    return DomainList(config.get_list(name), parent_matches=addr_lookup.parent_style(config, name),
                      name=name)


def string_list(config: config_mod.Config, name: str) -> DomainList:
    """The list of parameter name as Postfix's string_list: names and table keys match
    the whole domain only, never a subdomain, whatever parent_domain_matches_subdomains."""
    return DomainList(config.get_list(name), name=name, strings=True)


def _split_transport(spec: str) -> tuple[str, str]:
    transport, _, nexthop = spec.partition(":")
    return transport.strip(), nexthop.strip()


class Resolver:
    """Resolution rules of one configuration, lists and tables opened once."""

    def __init__(self, config: config_mod.Config) -> None:
        self.config = config
        self.myhostname = config.get("myhostname")
        # string lists in Postfix (resolve_local, resolve_init): a name matches itself only
        self.mydestination = string_list(config, "mydestination")
        self.alias_domains = string_list(config, "virtual_alias_domains")
        self.virtual_domains = string_list(config, "virtual_mailbox_domains")
        self.relay_domains = domain_list(config, "relay_domains")
        self._interfaces: set[str] | None = None
        self.percent_hack = config.get_bool("allow_percent_hack")
        self.helpful_warnings = config.get_bool("helpful_warnings")
        self.swap_bangpath = config.get_bool("swap_bangpath")
        self.empty_recipient = config.get("empty_address_recipient")
        self.smtputf8 = config.get_bool("smtputf8_enable")
        self.relayhost = config.get("relayhost").strip()
        self.local_transport = _split_transport(config.get("local_transport"))
        self.virtual_transport = _split_transport(config.get("virtual_transport"))
        self.relay_transport = _split_transport(config.get("relay_transport"))
        self.default_transport = _split_transport(config.get("default_transport"))
        self._transport_maps: maps.Maps | None = None
        self.has_relocated = bool(config.get("relocated_maps"))
        self._relocated_maps: maps.Maps | None = None
        self.delimiter = config.get("recipient_delimiter")
        self.has_transport_maps = bool(config.get("transport_maps"))
        self.transport_parent_style = addr_lookup.parent_style(config, "transport_maps")
        self.has_sender_relayhosts = bool(config.get("sender_dependent_relayhost_maps"))
        self._sender_relayhosts: maps.Maps | None = None
        self.has_sender_transports = bool(config.get("sender_dependent_default_transport_maps"))
        self._sender_transports: maps.Maps | None = None
        self._last_query: tuple[str, str | None] | None = None
        self._stage = ""  # the parameter whose lookup runs: named when it fails
        self._blame = ""  # the parameter the class's transport comes from
        self._nag = False

    @property
    def interfaces(self) -> set[str]:
        if self._interfaces is None:
            self._interfaces = netaddr.interface_addresses(self.config)
        return self._interfaces

    def is_local_domain(self, domain: str) -> bool:
        """mydestination or an [ip] literal of our interfaces. TableError on lookup failure."""
        if not domain:
            return True
        if domain.startswith("[") and domain.endswith("]"):
            ip = mailhost_literal(domain)
            return ip is not None and str(netaddr.parse_address(str(ip))) in self.interfaces
        return self.mydestination.match(domain)

    def valid_domain(self, domain: str) -> bool:
        """A domain mail can go to: a host name or an address literal; a name in UTF-8
        only with smtputf8_enable (then taken as it is: no IDNA check here)."""
        if domain.startswith("["):
            return mailhost_literal(domain) is not None
        if not domain.isascii():
            return self.smtputf8 and all(domain.split(".")) and domain.isprintable() \
                and " " not in domain
        return valid_hostname(domain)

    def resolve(self, address: str, sender: str | None = None) -> Resolved:
        # Postfix's resolve client remembers its last answer, so trivial-rewrite
        # nags once when the same address is resolved again and again.
        self._nag = self.helpful_warnings and self._last_query != (address, sender)
        self._last_query = (address, sender)
        self._stage = "mydestination"
        try:
            return self._resolve(address, sender)
        except maps.TableError as e:
            # trivial-rewrite's warning; the caller defers (smtpd 451, qmgr 4.3.0)
            log.warning(f"{self._stage}: {log.printable(str(e))}")
            log.warning(f"{self._stage} lookup failure")
            return Resolved(CLASS_DEFAULT, "", "", address, FLAG_FAIL, str(e))

    def relayhost_for(self, sender: str | None) -> str:
        """The sender's sender_dependent_relayhost_maps entry (not DUNNO), else relayhost."""
        if sender is None or not self.has_sender_relayhosts:
            return self.relayhost
        self._stage = "sender_dependent_relayhost_maps"
        if self._sender_relayhosts is None:
            self._sender_relayhosts = maps.Maps(self.config, "sender_dependent_relayhost_maps")
        found = self._sender_lookup(self._sender_relayhosts, sender,
                                    "empty_address_relayhost_maps_lookup_key")
        return found or self.relayhost

    def default_transport_for(self, sender: str | None) -> tuple[str, str]:
        """The sender's sender_dependent_default_transport_maps entry (not DUNNO), else
        default_transport, as (transport, nexthop)."""
        if sender is None or not self.has_sender_transports:
            return self.default_transport
        self._stage = "sender_dependent_default_transport_maps"
        if self._sender_transports is None:
            self._sender_transports = maps.Maps(self.config,
                                                "sender_dependent_default_transport_maps")
        found = self._sender_lookup(self._sender_transports, sender,
                                    "empty_address_default_transport_maps_lookup_key")
        if not found:
            return self.default_transport
        self._blame = "sender_dependent_default_transport_maps"
        return _split_transport(found)

    def _sender_lookup(self, table: maps.Maps, sender: str, null_key: str) -> str:
        """Postfix's mail_addr_find() of the sender (the null sender: the null_key
        parameter's value) in a sender-dependent table: the value, or "" for none or
        DUNNO; an empty value is ignored with Postfix's warning."""
        key = sender or self.config.get(null_key)
        domain = key.rpartition("@")[2] if "@" in key else ""
        match = addr_lookup.find_address(
            table, key, local_domain=not domain or self.is_local_domain(domain),
            delimiter=self.delimiter)
        value = match.value.strip() if match is not None else ""
        if match is not None and not value:
            log.warning(f"{table.param}: ignoring null lookup result for {log.printable(key)}")
        return "" if value.upper() == "DUNNO" else value

    def _resolve(self, address: str, sender: str | None = None) -> Resolved:
        flags = 0
        addr = address
        saved_domain = ""
        surrogate = False  # the empty local part was replaced
        if addr.startswith("@"):
            colon = addr.find(":")
            if colon > 0:
                addr = addr[colon + 1:]
        # each turn takes away a local domain or a routing operator: as in Postfix, more
        # turns than that mean a bug, and the address fails rather than resolves half-way
        turns = len(addr) + 100
        for _ in range(turns):
            local, at, domain = addr.rpartition("@")
            if not at:
                local, domain = addr, ""
            elif not domain:  # user@: resolve_null_domain = no
                return self._bad_syntax(address)
            domain = _strip_dot(domain)
            if domain and not self.is_local_domain(domain):
                break
            if domain:
                saved_domain = domain
            if "@" in local:
                addr = local
                continue
            if self.percent_hack and "%" in local:
                i = local.rfind("%")
                addr = local[:i] + "@" + local[i + 1:]
                continue
            if self.swap_bangpath and "!" in local:
                host, _, user = local.partition("!")
                if host and user:
                    addr = f"{user}@{host}"
                    continue
            if not local and not surrogate:  # resolved again, in case it has a domain
                addr, surrogate = self.empty_recipient, True
                continue
            addr, domain = local, ""
            break
        else:
            shown = log.printable(address)
            log.warning(f"resolve_addr: <{shown}>: giving up after {turns} iterations")
            return Resolved(CLASS_DEFAULT, "", "", address, FLAG_FAIL,
                            f"{shown}: address resolution failed")
        local, at, domain = addr.rpartition("@")
        if not at:
            local, domain = addr, ""
        domain = _strip_dot(domain)
        if domain and not self.valid_domain(domain):
            return self._bad_syntax(address)
        # Postfix's RESOLVE_FLAG_ROUTED, for every class: routing operators left in the
        # local part (even those not taken here, as % without allow_percent_hack), which
        # the next hop could act on
        if any(c in local for c in "@%!"):
            flags |= FLAG_ROUTED
        if not domain:
            if self._nag:
                self._warn_listed_twice(saved_domain or self.myhostname, "mydestination",
                                        [self.alias_domains, self.virtual_domains])
            recipient = f"{local}@{saved_domain or self.myhostname}" if local else ""
            self._blame = "local_transport"
            return self._finish(CLASS_LOCAL, self.local_transport, self.myhostname,
                                recipient, local, saved_domain or self.myhostname, flags)
        self._stage = self._blame = "virtual_alias_domains"
        if self.alias_domains.match(domain):
            if self._nag:
                self._warn_listed_twice(domain, "virtual_alias_domains",
                                        [self.virtual_domains, self.relay_domains])
            class_, (transport, nexthop) = CLASS_ALIAS, ("error", ALIAS_NEXTHOP)
        elif self._at("virtual_mailbox_domains") and self.virtual_domains.match(domain):
            if self._nag:
                self._warn_listed_twice(domain, "virtual_mailbox_domains", [self.relay_domains])
            class_, (transport, nexthop) = CLASS_VIRTUAL, self.virtual_transport
            nexthop = nexthop or domain
            self._blame = "virtual_transport"
        elif self._at("relay_domains") and self.relay_domains.match(domain):
            class_, (transport, nexthop) = CLASS_RELAY, self.relay_transport
            nexthop = nexthop or self.relayhost_for(sender) or domain
            self._blame = "relay_transport"
        else:
            self._blame = "default_transport"
            class_, (transport, nexthop) = CLASS_DEFAULT, self.default_transport_for(sender)
            nexthop = nexthop or self.relayhost_for(sender) or domain
        recipient = f"{local}@{domain}"
        return self._finish(class_, (transport, nexthop), nexthop, recipient, local, domain, flags)

    def _at(self, stage: str) -> bool:
        """Note the parameter whose lookup runs next (for the failure warning)."""
        self._stage = stage
        return True

    @staticmethod
    def _bad_syntax(address: str) -> Resolved:
        """Postfix's RESOLVE_FLAG_ERROR: smtpd refuses the address (501), qmgr bounces
        it through the error transport."""
        return Resolved(CLASS_DEFAULT, "error", BAD_SYNTAX, address, FLAG_ERROR)

    @staticmethod
    def _warn_listed_twice(domain: str, chosen: str, others: list[DomainList]) -> None:
        """trivial-rewrite's nag: the class of a domain in two lists is implementation-defined."""
        for other in others:
            try:
                listed = bool(other) and other.match(domain)
            except maps.TableError:
                listed = False  # the warning is no reason to fail the resolve
            if listed:
                log.warning(f"do not list domain {domain} in BOTH {chosen} and {other.name}")

    def _finish(self, class_: str, spec: tuple[str, str], nexthop: str, recipient: str,
                local: str, domain: str, flags: int) -> Resolved:
        transport = spec[0]
        if not transport:  # "local_transport = :host" and the like: trivial-rewrite's check
            why = f"parameter {self._blame}: null transport is not allowed"
            log.warning(f"file {self.config.main_cf}: {why}")
            return Resolved(CLASS_DEFAULT, "", "", recipient, FLAG_FAIL, why)
        if class_ == CLASS_LOCAL:  # the domain, unless local_transport names a nexthop
            nexthop = spec[1] or domain
        if class_ != CLASS_ALIAS and self.has_transport_maps:
            found = self._transport_lookup(local, domain)
            if found is not None:
                transport, nexthop = transport_entry(found, transport, nexthop, domain)
        if self.has_relocated and recipient:
            moved = self._relocated(recipient, class_ == CLASS_LOCAL)
            if moved is not None:
                transport, nexthop = "error", moved
        return Resolved(class_, transport, nexthop, recipient, flags)

    def _relocated(self, recipient: str, local_domain: bool) -> str | None:
        """The error nexthop of a relocated_maps entry for recipient, or None."""
        self._stage = "relocated_maps"
        if self._relocated_maps is None:
            self._relocated_maps = maps.Maps(self.config, "relocated_maps")
        match = addr_lookup.find_address(self._relocated_maps, recipient,
                                         local_domain=local_domain, delimiter=self.delimiter)
        if match is None:
            return None
        return f"5.1.6 User has moved to {match.value}"

    def _transport_lookup(self, local: str, domain: str) -> str | None:
        self._stage = "transport_maps"
        if self._transport_maps is None:
            self._transport_maps = maps.Maps(self.config, "transport_maps")
        return addr_lookup.lookup_transport(
            self._transport_maps, f"{local}@{domain}", self.delimiter,
            self.transport_parent_style)


def transport_entry(value: str, transport: str, nexthop: str, domain: str) -> tuple[str, str]:
    """(transport, nexthop) after a transport_maps value, as Postfix's update_entry():
    ``:`` and ``:nexthop`` keep the transport (and, without a nexthop, the nexthop too:
    relayhost stays); ``transport:`` resets the nexthop to the recipient domain, or, for
    the error and retry transports, to ``Address is undeliverable``."""
    new_transport, _, new_nexthop = value.partition(":")
    new_transport, new_nexthop = new_transport.strip(), new_nexthop.strip()
    if not new_transport:
        return transport, new_nexthop or nexthop
    if new_nexthop:
        return new_transport, new_nexthop
    if new_transport in ("error", "retry"):
        return new_transport, UNDELIVERABLE
    return new_transport, domain


def _strip_dot(domain: str) -> str:
    """One trailing dot goes, not one of ``..`` (that stays a bad domain), as Postfix."""
    if domain.endswith(".") and not domain.endswith("..") and domain != ".":
        return domain[:-1]
    return domain


_resolvers: dict[int, tuple[config_mod.Config, Resolver]] = {}


def resolver_for(config: config_mod.Config) -> Resolver:
    """The Resolver of this configuration object (built on first use)."""
    entry = _resolvers.get(id(config))
    if entry is None or entry[0] is not config:
        entry = (config, Resolver(config))
        _resolvers[id(config)] = entry
    return entry[1]


class ResolveCache:
    """Answers of the last RESOLVE_TTL seconds, at most RESOLVE_CACHE_SIZE of them
    (see the module docstring)."""

    def __init__(self, config: config_mod.Config) -> None:
        self.resolver = resolver_for(config)
        self.by_sender = self.resolver.has_sender_relayhosts or self.resolver.has_sender_transports
        self.answers: dict[tuple[str, str | None], tuple[float, Resolved]] = {}

    def resolve(self, address: str, sender: str | None = None) -> Resolved:
        key = (address, sender if self.by_sender else None)
        now = time.monotonic()
        hit = self.answers.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        answer = self.resolver.resolve(address, sender)
        if not answer.failed:
            if len(self.answers) >= RESOLVE_CACHE_SIZE:
                self.answers.clear()
            self.answers[key] = (now + RESOLVE_TTL, answer)
        return answer


def resolve(config: config_mod.Config, address: str, sender: str | None = None) -> Resolved:
    """Resolve one address with this configuration (see the module docstring)."""
    return resolver_for(config).resolve(address, sender)
