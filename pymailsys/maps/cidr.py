"""cidr: lookup tables (Postfix's cidr_table(5)).

Takes a file of rules, read once when the table is opened:

    192.0.2.0/24      result     a network, IPv4 or IPv6; the first match wins
    192.0.2.7         result     one address
    [2001:db8::]/32   result     brackets around the address are allowed
    !192.0.2.0/24     result     matches an address of the same family outside it
    if 10.0.0.0/8                the rules up to endif apply inside the network
    ...
    endif

A ``!`` may be followed by white space (``! 192.0.2.0/24``); each ``!``
toggles the match. A rule without a result is skipped with Postfix's warning
``cidr map /path, line N: no lookup result: skipping this rule``.
A network with bits set after the prefix (``1.2.3.4/24``) is skipped with
Postfix's warning ``non-null host address bits in "1.2.3.4/24", perhaps you
should use "1.2.3.0/24" instead: skipping this rule``, any other line that is
no rule with Postfix's reason (``bad address pattern``, ``bad mask length``,
``ENDIF without IF``...). An ``if`` whose network is broken is no ``if``, as
in Postfix: the rules after it apply unconditionally and its ``endif`` is
skipped with a warning. ``#`` lines and blank
lines are ignored; a line that starts with white space continues the one
before. A lookup key that is not an IP address is not found. IPv4 and IPv6
never match each other (``::ffff:192.0.2.1`` is an IPv6 key). This is a
pattern table: the address search order asks it only with the full key.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from pymailsys import log
from pymailsys.maps.base import Table, logical_lines, read_source, register

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass
class _Rule:
    line: int
    network: Network
    negate: bool
    result: str | None = None  # None: an "if" rule
    end: int = 0


_ENDIF = object()


class _SkipRule(Exception):
    """A line that is no rule: the reason, for Postfix's warning."""


def _ascii_alnum(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


def _negations(text: str) -> tuple[bool, str]:
    """Leading ``!`` marks, white space allowed around each (``! 10.0.0.0/8``): each one
    toggles the match; returns (negated, the rest)."""
    negate = False
    i = 0
    while i < len(text) and (text[i] == "!" or text[i].isspace()):
        if text[i] == "!":
            negate = not negate
        i += 1
    return negate, text[i:]


def _inet_pton(text: str, version: int) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """inet_pton(): an address of that family in its strict text form, else None."""
    if "%" in text:  # Python takes an IPv6 scope (fe80::1%eth0); inet_pton does not
        return None
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return addr if addr.version == version else None


def parse_cidr(pattern: str) -> Network:
    """Postfix's cidr_match_parse(): ``addr``, ``addr/len``, ``[addr]``, ``[addr]/len``
    or ``[addr/len]``; ``_SkipRule`` with Postfix's reason when it is none of them."""
    if pattern.startswith("["):
        pattern, bracket, after = pattern[1:].partition("]")
        if not bracket:
            raise _SkipRule(f'missing \']\' character after "[{pattern}"')
        if after.startswith("/"):
            mask_search = after
        elif after:
            raise _SkipRule(f'garbage after "[{pattern}]"')
        else:
            mask_search = pattern
    else:
        mask_search = pattern
    if "/" in mask_search:
        mask = mask_search.partition("/")[2]
        if mask_search is pattern:
            pattern = pattern.partition("/")[0]
        version = 6 if ":" in pattern else 4
        bits = 128 if version == 6 else 32
        addr = None
        if not (mask.isascii() and mask.isdigit()):
            error = "bad mask value"
        elif int(mask) > bits:
            error = "bad mask length"
        else:
            addr = _inet_pton(pattern, version)
            error = "bad network value"
        if addr is None:
            raise _SkipRule(f'{error} in "{pattern}/{mask}"')
        network = ipaddress.ip_network((addr, int(mask)), strict=False)
        if network.network_address != addr:
            raise _SkipRule(f'non-null host address bits in "{pattern}/{mask}", perhaps you '
                            f'should use "{network.network_address}/{network.prefixlen}" instead')
        return network
    addr = _inet_pton(pattern, 6 if ":" in pattern else 4)
    if addr is None:
        raise _SkipRule(f'bad address pattern: "{pattern}"')
    return ipaddress.ip_network(addr)


class CidrTable(Table):
    fold = False
    fixed = False

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        text, self.owner = read_source(name, inline=True)
        self.rules: list[_Rule] = []
        open_ifs: list[int] = []
        for lineno, line in logical_lines(text, name):
            try:
                rule = self._parse_rule(line, len(open_ifs))
            except _SkipRule as why:
                log.warning(f"cidr map {name}, line {lineno}: {why}: skipping this rule")
                continue
            if rule is _ENDIF:
                self.rules[open_ifs.pop()].end = len(self.rules)
                continue
            assert isinstance(rule, _Rule)
            rule.line = lineno
            if rule.result is None:
                open_ifs.append(len(self.rules))
            self.rules.append(rule)
        for index in reversed(open_ifs):
            log.warning(f"cidr map {name}, line {self.rules[index].line}: "
                        "IF has no matching ENDIF")
            self.rules[index].end = len(self.rules)

    @staticmethod
    def _parse_rule(line: str, nesting: int) -> _Rule | object:
        """Postfix's dict_cidr_parse_rule(): a rule, an IF rule or _ENDIF; _SkipRule
        with the reason for a line that is none (a broken IF is no IF: the rules
        after it apply unconditionally and its ENDIF is skipped with a warning)."""
        if line[:2].lower() == "if" and not _ascii_alnum(line[2:3] or " "):
            negate, pattern = _negations(line[2:])
            if not pattern:
                raise _SkipRule("no address pattern")
            return _Rule(0, parse_cidr(pattern.rstrip()), negate)
        if line[:5].lower() == "endif" and not _ascii_alnum(line[5:6] or " "):
            if line[5:].strip():
                raise _SkipRule("garbage after ENDIF")
            if nesting == 0:
                raise _SkipRule("ENDIF without IF")
            return _ENDIF
        negate, rest = _negations(line)
        words = rest.split(None, 1)
        if not words:
            raise _SkipRule("no address pattern")
        network = parse_cidr(words[0])
        result = words[1].strip() if len(words) > 1 else ""
        if not result:
            raise _SkipRule("no lookup result")
        return _Rule(0, network, negate, result)

    def lookup(self, key: str) -> str | None:
        addr = _inet_pton(key, 6 if ":" in key else 4)
        if addr is None:
            return None
        i = 0
        rules = self.rules
        while i < len(rules):
            rule = rules[i]
            if rule.network.version != addr.version:
                matched = False
            else:
                matched = (addr in rule.network) != rule.negate
            if rule.result is None:
                i = i + 1 if matched else rule.end
                continue
            if matched:
                return rule.result
            i += 1
        return None


register("cidr")(CidrTable)
