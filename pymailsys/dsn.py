"""Delivery status notification parameters (RFC 3461): NOTIFY, RET, ENVID, ORCPT.

The one place that parses and formats them, for smtpd (MAIL and RCPT
parameters), sendmail (-N, -R, -V), cleanup (the queue file's records), the
smtp client (passing them on) and the bounce service (reporting them).

NOTIFY is a bit mask as in Postfix's dsn_mask.h (``NOTIFY_NEVER`` 1,
``NOTIFY_SUCCESS`` 2, ``NOTIFY_FAILURE`` 4, ``NOTIFY_DELAY`` 8; 0 means the
sender asked nothing: failures and delays are reported); RET is ``RET_FULL``
1 or ``RET_HDRS`` 2 (0: not given). ``parse_notify`` takes the words, case
blind, separated by commas (sendmail also takes blanks; empty words are
skipped, as Postfix's name_mask_opt), and refuses (ValueError) an unknown
word, an empty list and NEVER with anything else.

ENVID and ORCPT travel in xtext (``xtext_encode``/``xtext_decode``) on the
wire and are kept decoded in the queue, as Postfix keeps them, so each hop
encodes them exactly once. ``parse_envid`` and ``parse_orcpt`` take the
parameter values as an SMTP client sends them and return them decoded
(ORCPT as ``type;address``), refusing (ValueError) what Postfix's smtpd
refuses: bad xtext (a + without two hex digits, either case), an ENVID
that is not printable ASCII, an ORCPT without a type. Like Postfix's smtpd,
neither has a length limit (sendmail -V has RFC 3461's 100 characters,
``valid_envid``); an ORCPT of the type utf-8 is in unitext (RFC 6533,
``uxtext_decode``/``uxtext_encode``), and is passed on so.
"""

from __future__ import annotations

import re

from pymailsys import log

NOTIFY_NEVER = 1
NOTIFY_SUCCESS = 2
NOTIFY_FAILURE = 4
NOTIFY_DELAY = 8
NOTIFY_MASK = NOTIFY_NEVER | NOTIFY_SUCCESS | NOTIFY_FAILURE | NOTIFY_DELAY
RET_FULL = 1
RET_HDRS = 2

ENVID_MAX = 100

_NOTIFY_WORDS = (("NEVER", NOTIFY_NEVER), ("SUCCESS", NOTIFY_SUCCESS),
                 ("FAILURE", NOTIFY_FAILURE), ("DELAY", NOTIFY_DELAY))
_RET_WORDS = {"FULL": RET_FULL, "HDRS": RET_HDRS}
_XTEXT_ESCAPE = re.compile(rb"\+([0-9A-Fa-f]{2})")
_HEX_DIGITS = "0123456789abcdefABCDEF"


def parse_notify(text: str, blanks: bool = False) -> int:
    """The bit mask of a NOTIFY value ("SUCCESS,DELAY"); blanks also separate words
    when ``blanks`` (sendmail -N)."""
    # as Postfix's name_mask_opt(): empty words (",,") are skipped
    words = text.replace(",", " ").split() if blanks else [w for w in text.split(",") if w]
    mask = 0
    for word in words:
        bit = dict(_NOTIFY_WORDS).get(word.strip().upper())
        if bit is None:
            raise ValueError(f"bad NOTIFY word: {word!r}")
        mask |= bit
    if not mask or (mask & NOTIFY_NEVER and mask != NOTIFY_NEVER):
        raise ValueError(f"bad NOTIFY value: {text!r}")
    return mask


def notify_names(mask: int) -> str:
    """A NOTIFY bit mask as the RCPT TO parameter value ("SUCCESS,FAILURE")."""
    return ",".join(name for name, bit in _NOTIFY_WORDS if mask & bit)


def wants(mask: int, bit: int) -> bool:
    """Whether a recipient with these NOTIFY flags gets a notice of this kind
    (no flags: failures and delays, as RFC 3461 leaves it to the MTA and Postfix does)."""
    if not mask:
        return bit in (NOTIFY_FAILURE, NOTIFY_DELAY)
    return bool(mask & bit)


def parse_ret(text: str) -> int:
    """RET_FULL or RET_HDRS from "FULL"/"HDRS" (any case); ValueError otherwise."""
    try:
        return _RET_WORDS[text.strip().upper()]
    except KeyError:
        raise ValueError(f"bad RET value: {text!r}") from None


def ret_name(value: int) -> str:
    """"FULL", "HDRS" or "" for a RET value."""
    return {RET_FULL: "FULL", RET_HDRS: "HDRS"}.get(value, "")


def xtext_encode(text: str) -> str:
    """RFC 3461 xtext: characters outside ! to ~, and + and =, as +XX (UTF-8 bytes)."""
    return "".join(ch if 33 <= ord(ch) <= 126 and ch not in "+=" else
                   "".join(f"+{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
                   for ch in text)


def xtext_decode(text: str) -> str:
    """The text an xtext stands for, as Postfix's xtext_unquote() reads it: a + and two
    hex digits (either case) for a byte, every other character for itself; ValueError
    for a + without two hex digits."""
    if "+" not in text:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    decoded, escapes = _XTEXT_ESCAPE.subn(lambda m: bytes((int(m[1], 16),)), raw)
    if escapes != raw.count(b"+"):
        raise ValueError(f"bad xtext escape in {text!r}")
    return decoded.decode("utf-8", "surrogateescape")


def _printable(text: str) -> bool:
    return all(32 <= ord(ch) <= 126 for ch in text)


def parse_envid(value: str) -> str:
    """The ENVID parameter value (xtext), decoded: printable ASCII, of any length (Postfix's
    smtpd sets no limit); a null byte is refused (Postfix 3.7 cut the value there)."""
    envid = xtext_decode(value)
    if not envid or not _printable(envid):
        raise ValueError("ENVID is not printable ASCII")
    return envid


def valid_envid(envid: str, limit: int | None = ENVID_MAX) -> bool:
    """Whether a decoded envelope ID is acceptable: printable ASCII and, for sendmail -V,
    at most ``limit`` characters (None: any length, as smtpd takes it)."""
    return bool(envid) and (limit is None or len(envid) <= limit) and _printable(envid)


def parse_orcpt(value: str) -> str:
    """The ORCPT parameter value, decoded as Postfix's smtpd reads it: ``type;address``
    with a type that is not empty and the address in xtext, or in unitext (``\\x{E9}``,
    RFC 6533) for the type utf-8; any length, any address (even none). An unprintable
    character is kept as "?", as Postfix's bounce service shows it."""
    addr_type, sep, address = value.partition(";")
    if not sep or not addr_type:
        raise ValueError("bad ORCPT syntax")
    decoded = uxtext_decode(address) if addr_type.lower() == "utf-8" else xtext_decode(address)
    return log.printable(f"{addr_type};{decoded}")


def valid_orcpt(orcpt: str) -> bool:
    """Whether a stored ``type;address`` (decoded) is what parse_orcpt returns."""
    addr_type, sep, _ = orcpt.partition(";")
    return bool(sep and addr_type) and orcpt.isprintable()


def uxtext_decode(text: str) -> str:
    """RFC 6533's unitext as Postfix's uxtext_unquote() reads it: ``\\x{HEX}`` for a code
    point (ValueError without hex digits up to the }, or past U+10FFFF), every other
    character for itself."""
    first, *escaped = text.split("\\x{")
    out = [first]
    for part in escaped:
        digits, brace, rest = part.partition("}")
        if not brace or digits.strip(_HEX_DIGITS) or int(digits or "0", 16) > 0x10FFFF:
            raise ValueError(f"bad unitext escape in {text!r}")
        out += [chr(int(digits or "0", 16)), rest]
    return "".join(out)


def uxtext_encode(text: str) -> str:
    """Unitext as Postfix's uxtext_quote(..., "+="): characters outside ! to ~, and \\,
    + and =, as ``\\x{HEX}``."""
    return "".join(ch if 33 <= ord(ch) <= 126 and ch not in "\\+=" else f"\\x{{{ord(ch):02X}}}"
                   for ch in text)


def orcpt_param(orcpt: str) -> str:
    """A stored ``type;address`` as the ORCPT parameter value (the address in xtext)."""
    addr_type, _, address = orcpt.partition(";")
    if addr_type.lower() == "utf-8":  # as Postfix's smtp client: the type's own encoding
        return f"{addr_type};{uxtext_encode(address)}"
    return f"{addr_type};{xtext_encode(address)}"
