"""login - who a local submitter is, from the password database.

``login_name(uid)`` is the account name (None when the uid has none);
``default_full_name(uid)`` is $NAME, else the GECOS name with ``&`` expanded,
as Postfix's sendmail fills the full name. Neither trusts anything but the
uid it is given. ``clean_full_name`` makes any full name one line of text.
"""

from __future__ import annotations

import os
import pwd
import re


def login_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def default_full_name(uid: int) -> str:
    name = os.environ.get("NAME")
    if name:
        return name
    try:
        pw = pwd.getpwuid(uid)
    except KeyError:
        return ""
    gecos = pw.pw_gecos.split(",", 1)[0]
    return gecos.replace("&", pw.pw_name.capitalize())


_CONTROLS = re.compile("[\x00-\x1f\x7f]")


def clean_full_name(text: str) -> str:
    """A full name as text for the From: header: control characters (a line break) are
    blanks, runs of blanks one. As Postfix's sendmail, never a reason to refuse."""
    return " ".join(_CONTROLS.sub(" ", text).split())
