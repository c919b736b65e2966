"""Postfix's TLS protocol and cipher settings, as Python's ssl takes them.

``protocol_range(text)`` reads a protocols setting (``smtpd_tls_protocols``,
``smtp_tls_mandatory_protocols``, ...) in any of Postfix's forms: ``>=TLSv1.2``,
``<=TLSv1.2``, ``!SSLv2, !SSLv3`` (exclusions), ``TLSv1.2 TLSv1.3`` (the
ones allowed), and gives the (lowest, highest) ``ssl.TLSVersion`` it allows;
OpenSSL enables a contiguous range, so a hole (``!TLSv1.1`` between allowed
versions) widens to the range around it, as Postfix's own range does.
``cipher_list(config, grade, excludes)`` is the OpenSSL cipher string of a
grade (``high``, ``medium``, ``low``, ``export``, ``null``: the
``tls_GRADE_cipherlist`` parameter) less the ciphers named in ``excludes``.

Both raise ``ValueError`` with Postfix's wording on a word they do not know:
a setting is obeyed or refused, never dropped.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable

from pymailsys import config as config_mod

# Postfix's names, oldest first. SSLv2 and SSLv3 are known (so that !SSLv3 reads)
# but never enabled: Python's ssl builds without them.
VERSIONS: dict[str, ssl.TLSVersion] = {
    "SSLv2": ssl.TLSVersion.SSLv3,
    "SSLv3": ssl.TLSVersion.SSLv3,
    "TLSv1": ssl.TLSVersion.TLSv1,
    "TLSv1.1": ssl.TLSVersion.TLSv1_1,
    "TLSv1.2": ssl.TLSVersion.TLSv1_2,
    "TLSv1.3": ssl.TLSVersion.TLSv1_3,
}
_ORDER = list(VERSIONS)
GRADES = {"high": "tls_high_cipherlist", "medium": "tls_medium_cipherlist",
          "low": "tls_low_cipherlist", "export": "tls_export_cipherlist",
          "null": "tls_null_cipherlist"}


def protocol_range(text: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    """(minimum, maximum) version a Postfix protocols setting allows."""
    allowed = set(_ORDER)
    included: set[str] = set()
    for word in config_mod.split_list(text):
        if word.startswith(">="):
            name = _known(word[2:], text)
            allowed -= set(_ORDER[:_ORDER.index(name)])
        elif word.startswith("<="):
            name = _known(word[2:], text)
            allowed -= set(_ORDER[_ORDER.index(name) + 1:])
        elif word.startswith("!"):
            allowed.discard(_known(word[1:], text))
        else:
            included.add(_known(word, text))
    if included:
        allowed &= included
    allowed -= {"SSLv2", "SSLv3"}
    if not allowed:
        raise ValueError(f'no TLS protocols left after "{text}"')
    enabled = [name for name in _ORDER if name in allowed]
    return VERSIONS[enabled[0]], VERSIONS[enabled[-1]]


def _known(name: str, text: str) -> str:
    if name not in VERSIONS:
        raise ValueError(f'Invalid TLS protocol list "{text}": unknown protocol "{name}"')
    return name


def cipher_list(config: config_mod.Config, grade: str, excludes: Iterable[str] = ()) -> str:
    """The OpenSSL cipher string of ``grade`` without ``excludes``."""
    grade = grade.strip().lower()
    if grade not in GRADES:
        raise ValueError(f'invalid TLS cipher grade: "{grade}"')
    ciphers = config.get(GRADES[grade])
    for name in excludes:
        ciphers += f":!{name}"
    return ciphers
