"""EHLO keywords by Postfix's names (its ehlo_mask table), for the server and the client.

Contract: ``discarded(words)`` takes a ``*_discard_ehlo_keywords`` list (any case,
unknown words kept: they match nothing) and gives the lower-case set;
``discard_notice(discarded)`` is the info line Postfix's smtpd and smtp log at
each EHLO when that list discards keywords it knows: ``discarding EHLO
keywords: PIPELINING DSN``, the names in its table's order (Postfix 3.7 prints
SMTPUTF8 as ``EHLO_MASK_SMTPUTF8``), or "" when it names none it knows or has
``silent-discard``.
"""

from __future__ import annotations

from collections.abc import Iterable

NAMES = {  # in Postfix's ehlo_mask table order: keyword (lower case) -> name logged
    "8bitmime": "8BITMIME", "auth": "AUTH", "etrn": "ETRN", "pipelining": "PIPELINING",
    "size": "SIZE", "verp": "VERP", "vrfy": "VRFY", "xclient": "XCLIENT",
    "xforward": "XFORWARD", "starttls": "STARTTLS",
    "enhancedstatuscodes": "ENHANCEDSTATUSCODES", "dsn": "DSN",
    "smtputf8": "EHLO_MASK_SMTPUTF8", "chunking": "CHUNKING",
}
SILENT = "silent-discard"


def discarded(words: Iterable[str]) -> frozenset[str]:
    return frozenset(word.lower() for word in words)


def discard_notice(discard: frozenset[str]) -> str:
    if SILENT in discard:
        return ""
    names = [name for word, name in NAMES.items() if word in discard]
    return f"discarding EHLO keywords: {' '.join(names)}" if names else ""
