"""Postfix's date format for headers and notices, done one way.

NAME
    mail_date - ``Sat,  5 Dec 2026 05:00:00 +0000 (UTC)``

SYNOPSIS
    mail_date(when)     # seconds since the epoch -> local time, Postfix 3.7's mail_date()

DESCRIPTION
    RFC 5322 date-time as Postfix's mail_date() writes it: the day of the
    month padded with a space (``%e``), the numeric offset from UTC computed
    from the local and UTC broken-down times, and the zone's abbreviation in
    parentheses. cleanup's Date: and Received: headers and the Arrival-Date
    and Will-Retry-Until of bounce's notices use it.
"""

from __future__ import annotations

import time

_last: tuple[int, str] = (-1, "")


def mail_date(when: float) -> str:
    """Postfix 3.7's mail_date(): ``Sat, 22 Aug 2026 16:28:33 +1000 (AEST)``, %e day.

    The text of the last second asked for is kept: cleanup asks once per message."""
    global _last
    t = int(when)
    if _last[0] == t:
        return _last[1]
    text = _format(t)
    _last = (t, text)
    return text


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def _format(t: int) -> str:
    """From one localtime(): its tm_gmtoff is the offset when it is whole minutes, and
    its tm_zone is what strftime's %Z writes. (gmtime and strftime each cost as much
    as localtime: a struct_time, its tm_zone decoded by the locale's codec.)"""
    lt = time.localtime(t)
    gmtoff = lt.tm_gmtoff
    zone = lt.tm_zone
    if gmtoff % 60 or zone is None or not -86400 < gmtoff < 86400:
        off, zone = _postfix_offset(t, lt), time.strftime("%Z", lt)
    else:
        off = gmtoff // 60
    hours = int(off / 60)  # C division truncates toward zero
    return (f"{_DAYS[lt.tm_wday]}, {lt.tm_mday:2d} {_MONTHS[lt.tm_mon - 1]} {lt.tm_year} "
            f"{lt.tm_hour:02d}:{lt.tm_min:02d}:{lt.tm_sec:02d} "
            f"{hours:+03d}{abs(off) % 60:02d} ({zone})")


def _postfix_offset(t: int, lt: time.struct_time) -> int:
    """Postfix's offset in minutes: from the local and UTC broken-down times (the same
    as tm_gmtoff in whole minutes; for an offset with seconds, it follows the time's
    seconds)."""
    gmt = time.gmtime(t)
    off = (lt.tm_hour - gmt.tm_hour) * 60 + lt.tm_min - gmt.tm_min
    if lt.tm_year < gmt.tm_year:
        off -= 1440
    elif lt.tm_year > gmt.tm_year:
        off += 1440
    elif lt.tm_yday < gmt.tm_yday:
        off -= 1440
    elif lt.tm_yday > gmt.tm_yday:
        off += 1440
    return off
