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
should use "1.2.3.0/24" instead: skipping this rule``. ``#`` lines and blank
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


_NEVER: Network = ipaddress.ip_network("0.0.0.0/32")  # placeholder for a broken IF


class _SkipRule(Exception):
    pass


def _parse_network(text: str) -> Network:
    """Parse ``addr``, ``addr/len``, ``[addr]``, ``[addr]/len`` strictly; raise ValueError."""
    addr, slash, length = text.partition("/")
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    if slash and not length.isdigit():
        raise ValueError(f'bad net/mask pattern: "{text}"')
    return ipaddress.ip_network(addr + (slash + length if slash else ""), strict=True)


def _negations(text: str) -> tuple[bool, str]:
    """Leading ``!`` marks, white space allowed after each (``! 10.0.0.0/8``): each one
    toggles the match; returns (negated, the rest)."""
    negate = False
    text = text.lstrip()
    while text.startswith("!"):
        negate = not negate
        text = text[1:].lstrip()
    return negate, text


class CidrTable(Table):
    fold = False
    fixed = False

    def __init__(self, type_name: str, name: str) -> None:
        super().__init__(type_name, name)
        text, self.owner = read_source(name)
        self.rules: list[_Rule] = []
        open_ifs: list[int] = []
        for lineno, line in logical_lines(text, name):
            word = line.split(None, 1)[0].lower()
            if word == "endif":
                if not open_ifs:
                    self._warn(lineno, "ignoring ENDIF without matching IF")
                    continue
                self.rules[open_ifs.pop()].end = len(self.rules)
                continue
            is_if = word == "if" and len(line) > 2 and line[2].isspace()
            negate, rest = _negations(line[2:] if is_if else line)
            words = rest.split(None, 1)
            if not words:
                self._warn(lineno, "no address pattern")
                continue
            if is_if:
                try:
                    network = self._pattern(lineno, words[0])
                except _SkipRule:
                    network = _NEVER  # a broken IF skips its whole block
                    negate = False
                open_ifs.append(len(self.rules))
                self.rules.append(_Rule(lineno, network, negate))
                continue
            try:
                network = self._pattern(lineno, words[0])
            except _SkipRule:
                continue
            result = words[1].strip() if len(words) > 1 else ""
            if not result:
                self._warn(lineno, "no lookup result: skipping this rule")
                continue
            self.rules.append(_Rule(lineno, network, negate, result))
        for index in open_ifs:
            self._warn(self.rules[index].line, "IF has no matching ENDIF")
            self.rules[index].end = len(self.rules)

    def _warn(self, line: int, text: str) -> None:
        log.warning(f"cidr map {self.name}, line {line}: {text}")

    def _pattern(self, lineno: int, text: str) -> Network:
        try:
            return _parse_network(text)
        except ValueError:
            pass
        # Tell a pattern with host bits set apart from a malformed one.
        try:
            addr = text.partition("/")[0].strip("[]")
            loose = ipaddress.ip_network(
                addr + "/" + text.partition("/")[2], strict=False)
        except ValueError:
            self._warn(lineno, f'bad net/mask pattern: "{text}": skipping this rule')
            raise _SkipRule from None
        self._warn(lineno, f'non-null host address bits in "{text}", perhaps you should '
                   f'use "{loose.network_address}/{loose.prefixlen}" instead: skipping this rule')
        raise _SkipRule

    def lookup(self, key: str) -> str | None:
        try:
            addr = ipaddress.ip_address(key)
        except ValueError:
            return None
        i = 0
        rules = self.rules
        while i < len(rules):
            rule = rules[i]
            if rule.network is _NEVER or rule.network.version != addr.version:
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
