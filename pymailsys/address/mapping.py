"""Address mapping in cleanup: canonical(5), virtual(5) alias expansion, masquerading, BCC.

``Mapper.from_config(config)`` opens canonical_maps, sender_canonical_maps,
recipient_canonical_maps, virtual_alias_maps, sender_bcc_maps and
recipient_bcc_maps once and reads canonical_classes, masquerade_domains,
masquerade_exceptions, masquerade_classes, always_bcc,
propagate_unmatched_extensions, recipient_delimiter and the virtual alias
limits. Addresses go in and come out in internal (unquoted) form. Postfix
3.7's cleanup(8) steps, per address:

* ``sender(addr, cls)`` / ``recipient(addr, cls)`` (``cls``: ``envelope`` or
  ``header``): sender_canonical_maps (recipient_canonical_maps) when the class
  is in canonical_classes, then canonical_maps, then masquerading when the
  class is in masquerade_classes;
* ``expand(addr)``: virtual alias expansion (cleanup_map1n): each address is
  looked up again in what it expanded to, at most virtual_alias_recursion_limit
  levels deep and virtual_alias_expansion_limit addresses wide; an address that
  expands to itself stops there; an address that is not found is kept;
* ``bcc(sender, recipients)``: sender_bcc_maps for the sender, recipient_bcc_maps
  for each recipient, and always_bcc.

Table lookups are Postfix's mail_addr_find order (``pymailsys.maps.search``):
``user+ext@domain``, ``user@domain``, ``user+ext`` and ``user`` only when the
domain is $myorigin, $mydestination or one of our interface addresses, then
``@domain``. A value that starts with ``@`` (``@old.example @new.example``)
gets the address's local part, without its extension, in front; each result
address is rewritten in the local context (``user`` -> ``user@$myorigin``), as
Postfix's mail_addr_crunch does. A match found without the extension gets it
back (with the delimiter the address used) on every result address when
propagate_unmatched_extensions lists ``canonical`` (``virtual``).
A canonical result is mapped again up to 10 times, as Postfix does (then a
warning, and the mail goes on with the last result); a canonical value with
several addresses is a warning and its first one is used.

Masquerading: the address's domain is compared with masquerade_domains in
order; the first entry that is the domain itself leaves it alone, the first
that is a parent domain replaces it (``!name``: leave it alone); local parts
in masquerade_exceptions (a string list: names, ``type:table``, ``/file``,
``!`` to negate) are never masqueraded.

Failures: a table that cannot answer, a value with no address in it, or a
virtual alias limit reached (virtual_alias_recursion_limit,
virtual_alias_expansion_limit: checked each time a lookup would grow the list,
so that nested one-to-many entries never build more than the limit;
virtual_alias_address_length_limit) raises ``MappingError`` with Postfix's
warning text; the caller logs it and defers the message (``4.6.0 Alias
expansion error`` for virtual aliases).
"""

from __future__ import annotations

from dataclasses import dataclass

from pymailsys import maps, rfc822
from pymailsys.address import resolve, rewrite
from pymailsys.maps import search

ENVELOPE = "envelope"
HEADER = "header"
CANONICAL_NESTING = 10  # Postfix's MAX_RECURSION for canonical maps


class MappingError(Exception):
    """A table could not answer or a limit was reached: the message must wait
    (``alias``: in virtual alias expansion)."""

    def __init__(self, text: str, alias: bool = False) -> None:
        super().__init__(text)
        self.alias = alias


@dataclass(frozen=True)
class _Lookup:
    """One parameter's tables and how results get the unmatched extension back."""

    title: str
    tables: maps.Maps
    propagate: bool


class Mapper:
    def __init__(self, config, resolver: resolve.Resolver | None = None) -> None:  # type: ignore[no-untyped-def]
        self.delimiter = config.get("recipient_delimiter")
        self.origin = config.get("myorigin").lower()
        self.resolver = resolver or resolve.resolver_for(config)
        self.rewrite_ctx = rewrite.RewriteContext.from_config(config, rewrite.CONTEXT_LOCAL)
        propagate = set(config.get_list("propagate_unmatched_extensions"))

        def lookup(param: str, kind: str) -> _Lookup | None:
            tables = maps.Maps(config, param)
            return _Lookup(param, tables, kind in propagate) if tables else None

        self.canonical = lookup("canonical_maps", "canonical")
        self.sender_canonical = lookup("sender_canonical_maps", "canonical")
        self.recipient_canonical = lookup("recipient_canonical_maps", "canonical")
        self.virtual = lookup("virtual_alias_maps", "virtual")
        self.sender_bcc = lookup("sender_bcc_maps", "")
        self.recipient_bcc = lookup("recipient_bcc_maps", "")
        self.always_bcc = config.get("always_bcc").strip()
        self.canonical_classes = set(config.get_list("canonical_classes"))
        self.masquerade_classes = set(config.get_list("masquerade_classes"))
        self.masquerade_domains = [d.lower() for d in config.get_list("masquerade_domains")]
        self.masquerade_exceptions = resolve.DomainList(
            config.get_list("masquerade_exceptions"), name="masquerade_exceptions", strings=True)
        self.recursion_limit = config.get_int("virtual_alias_recursion_limit")
        self.expansion_limit = config.get_int("virtual_alias_expansion_limit")
        self.address_length_limit = config.get_int("virtual_alias_address_length_limit")
        # Header addresses are mapped without a table lookup: the result depends on the
        # address alone for the process's life (cleanup may keep it).
        self.headers_without_tables = not any(
            cls in self.canonical_classes and (specific is not None or self.canonical is not None)
            for cls, specific in (("header_sender", self.sender_canonical),
                                  ("header_recipient", self.recipient_canonical))
        ) and not any(kind == "table" for _, kind, _ in self.masquerade_exceptions.items)
        # An envelope recipient that no step changes (no canonical table or masquerade
        # domain applies to its class, no virtual alias table) and no automatic BCC:
        # cleanup keeps a lone recipient as rewritten, with no call here.
        self.recipients_kept = (
            self._unchanged(ENVELOPE + "_recipient", self.recipient_canonical)
            and self.virtual is None)
        self.no_bcc = (self.sender_bcc is None and self.recipient_bcc is None
                       and not self.always_bcc)

    def _unchanged(self, cls: str, specific: _Lookup | None) -> bool:
        """Whether ``_map`` returns every address of class cls as it is, with no warning."""
        return ((cls not in self.canonical_classes
                 or (specific is None and self.canonical is None))
                and (cls not in self.masquerade_classes or not self.masquerade_domains))

    # -- lookups ----------------------------------------------------------------------

    def _local(self, domain: str) -> bool:
        return domain.lower() == self.origin or self.resolver.is_local_domain(domain)

    def _find(self, lookup: _Lookup, addr: str) -> list[str] | None:
        """The addresses addr maps to, or None; MappingError when a table fails."""
        local, at, domain = addr.rpartition("@")
        try:
            match = search.find_address(lookup.tables, rfc822.quote_822_local(addr),
                                        local_domain=bool(at) and self._local(domain),
                                        delimiter=self.delimiter)
        except maps.TableError as e:
            raise MappingError(f"{lookup.title} map lookup problem for {addr} ({e})",
                               lookup is self.virtual) from None
        if match is None:
            return None
        # the unmatched extension with the delimiter the address used (Postfix's strip_addr)
        localpart = local if at else addr
        extension = None
        if match.extension is not None:
            extension = localpart[len(localpart) - len(match.extension) - 1:]
        value = match.value.strip()
        if value.startswith("@"):  # "@otherdomain": the address's user at that domain
            user = localpart[:len(localpart) - len(extension)] if extension else localpart
            # to the first word only: Postfix quotes "user@d1, u2@d2" whole, as one
            # broken local part; the other addresses of the value stay as written
            end = len(value.split(",", 1)[0].split(None, 1)[0])
            value = rfc822.quote_822_local(user + value[:end]) + value[end:]
        # each result is canonicalized (@$myorigin...) as mail_addr_crunch does
        results = [rewrite.rewrite_address(r, self.rewrite_ctx)
                   for r in rfc822.address_list(value)]
        if not results:
            raise MappingError(f"{lookup.title} lookup of {addr} returns non-address result "
                               f'"{match.value}"', lookup is self.virtual)
        if extension is not None and lookup.propagate:
            results = [_with_extension(r, extension) for r in results]
        return results

    def _map11(self, lookup: _Lookup | None, addr: str) -> tuple[str, list[str]]:
        """canonical mapping: (new address, warnings)."""
        warnings: list[str] = []
        if lookup is None or not addr:
            return addr, warnings
        for _ in range(CANONICAL_NESTING):
            found = self._find(lookup, addr)
            if not found:
                return addr, warnings
            if len(found) > 1:
                warnings.append(f"multi-valued {lookup.title} entry for {addr}")
            new = found[0]
            if new.lower() == addr.lower():
                return new, warnings
            addr = new
        # Postfix's cleanup_map11 only warns: the message goes on with the last result
        warnings.append(f"unreasonable {lookup.title} map nesting for {addr} -- "
                        "message not accepted, try again later")
        return addr, warnings

    # -- the steps ----------------------------------------------------------------------

    def sender(self, addr: str, cls: str = ENVELOPE) -> tuple[str, list[str]]:
        """canonical and masquerading for a sender address: (address, warnings)."""
        return self._map(addr, cls + "_sender", self.sender_canonical)

    def recipient(self, addr: str, cls: str = ENVELOPE) -> tuple[str, list[str]]:
        """canonical and masquerading for a recipient address: (address, warnings)."""
        return self._map(addr, cls + "_recipient", self.recipient_canonical)

    def _map(self, addr: str, cls: str, specific: _Lookup | None) -> tuple[str, list[str]]:
        warnings: list[str] = []
        if cls in self.canonical_classes:
            for lookup in (specific, self.canonical):
                addr, more = self._map11(lookup, addr)
                warnings += more
        if cls in self.masquerade_classes:
            addr = self.masquerade(addr)
        return addr, warnings

    def masquerade(self, addr: str) -> str:
        """addr with masquerade_domains applied; MappingError when a masquerade_exceptions
        table cannot answer."""
        local, at, domain = addr.rpartition("@")
        if not at or not self.masquerade_domains:
            return addr
        try:
            if self.masquerade_exceptions.match(local):
                return addr
        except maps.TableError as e:
            raise MappingError(f"masquerade_exceptions map lookup problem ({e})") from None
        folded = domain.lower()
        for entry in self.masquerade_domains:
            truncate = True
            while entry.startswith("!"):
                truncate, entry = not truncate, entry[1:]
            if not entry:
                continue
            if entry == folded:
                return addr
            if folded.endswith("." + entry):
                return f"{local}@{entry}" if truncate else addr
        return addr

    def expand(self, addr: str) -> list[str]:
        """Virtual alias expansion of one recipient (cleanup_map1n_internal)."""
        lookup = self.virtual
        if lookup is None or not addr:
            return [addr]
        out = [addr]
        expanded_to_self: set[str] = set()
        i = 0
        while i < len(out):
            if len(out) > self.expansion_limit:
                raise MappingError(f"unreasonable {lookup.title} map expansion size for {addr}",
                                   True)
            for count in range(self.recursion_limit + 1):
                current = out[i]
                if current.lower() in expanded_to_self:
                    break
                if count >= self.recursion_limit:
                    raise MappingError(f"unreasonable {lookup.title} map nesting for {addr}", True)
                found = self._find(lookup, current)
                if not found:
                    break
                for result in found:
                    if len(result) > self.address_length_limit:
                        raise MappingError(f"unreasonable {lookup.title} result "
                                           f"{result[:300]}...", True)
                if len(out) + len(found) - 1 > self.expansion_limit:
                    # what Postfix finds at the next address, found before the list grows
                    # further: a nested one-to-many map cannot make it grow without bound
                    raise MappingError(
                        f"unreasonable {lookup.title} map expansion size for {addr}", True)
                out[i] = found[0]
                out.extend(found[1:])
                if any(f.lower() == current.lower() for f in found):
                    expanded_to_self.add(current.lower())
            i += 1
        return out

    def bcc(self, sender: str, recipients: list[str]) -> list[str]:
        """The automatic BCC recipients: sender_bcc_maps, recipient_bcc_maps, always_bcc."""
        out: list[str] = []
        if self.sender_bcc is not None and sender:
            out += (self._find(self.sender_bcc, sender) or [])[:1]
        if self.recipient_bcc is not None:
            for rcpt in recipients:
                if rcpt:
                    out += (self._find(self.recipient_bcc, rcpt) or [])[:1]
        if self.always_bcc:
            out.append(self.always_bcc)
        return out


def _with_extension(addr: str, extension: str) -> str:
    """addr with extension (its delimiter included) before the last @."""
    local, at, domain = addr.rpartition("@")
    if not at:
        return f"{addr}{extension}"
    return f"{local}{extension}@{domain}"
