"""getpwnam, remembered: a process's one cache of UNIX accounts.

NAME
    passwd - the accounts local delivers to and unix:passwd.byname answers from

SYNOPSIS
    from pymailsys import passwd
    pw = passwd.ACCOUNTS.find(name)    # pwd.struct_passwd, or None: no such account

DESCRIPTION
    ``Accounts.find`` is getpwnam with its answers kept: an entry is used again
    while the password file (/etc/passwd) is the same file, unchanged (device,
    inode, size, modification and change times in nanoseconds), and for at
    most ``ttl`` seconds (ACCOUNT_TTL), so an entry that came from another
    nsswitch source (LDAP, systemd) is at most that old. "No such account" is
    kept too, but each caller says how old an answer it accepts
    (``find(name, missing_ttl)``): local takes none (the default: an account
    added a moment ago is found at once, before a delivery bounces), the
    unix:passwd.byname table one second (MISSING_TTL: smtpd's
    local_recipient_maps asks for ``user@domain`` before ``user``, a miss
    for every RCPT, and each miss walks every nsswitch source: with
    systemd's userdb module, some 20 system calls). A name that getpwnam
    cannot take (one with a NUL) is no account.

    Between ``pin()`` and ``unpin()``, the file is checked at the first find
    only: smtpd's RCPT asks for ``user@domain`` and then ``user``, one moment's
    lookups with nothing else of the process run between them, which need
    one stat, not one each (as if the file changed after the last, which
    another process's change that close could not tell apart).

    Each find costs one stat of the file instead of getpwnam's six system
    calls and its parse of the whole file (6% of local's instructions per
    delivery). Postfix's local keeps its last entry for the process's life;
    its smtpd asks getpwnam for each RCPT.

    ``ACCOUNTS`` is the process's cache: local's recipients and the
    unix:passwd.byname table (local_recipient_maps in smtpd) share it.

SECURITY
    Bounded: at most ``limit`` entries; a full cache is emptied.
"""

from __future__ import annotations

import os
import pwd
import time

PASSWD = "/etc/passwd"
ACCOUNT_TTL = 60.0  # seconds an account from a source other than the file may be old
ACCOUNT_LIMIT = 1024  # entries kept
MISSING_TTL = 1.0  # seconds a table lookup trusts "no such account" (see above)


class Accounts:
    """getpwnam, remembered while ``path`` is unchanged and for at most ``ttl`` seconds."""

    def __init__(self, path: str = PASSWD, ttl: float = ACCOUNT_TTL,
                 limit: int = ACCOUNT_LIMIT) -> None:
        self.path = path
        self.ttl = ttl
        self.limit = limit
        self.version: tuple[int, ...] | None = None
        self.entries: dict[str, tuple[float, pwd.struct_passwd | None]] = {}
        self.pinned = False  # pin(): the file is checked at the first find only
        self.checked = False  # pinned, and checked since

    def pin(self) -> None:
        """Until ``unpin``, the finds are one moment's: the file is checked at the first."""
        self.pinned = True

    def unpin(self) -> None:
        """Each find checks the file again."""
        self.pinned = self.checked = False

    def find(self, name: str, missing_ttl: float = 0.0) -> pwd.struct_passwd | None:
        """The account, or None; a kept "no such account" only when at most
        ``missing_ttl`` seconds old (0: never)."""
        if not self.checked:
            try:
                st = os.stat(self.path)
                version: tuple[int, ...] | None = (st.st_dev, st.st_ino, st.st_size,
                                                   st.st_mtime_ns, st.st_ctime_ns)
            except OSError:
                version = None
            if version is None or version != self.version:
                self.entries.clear()
                self.version = version
            self.checked = self.pinned
        now = time.monotonic()
        entry = self.entries.get(name)
        if entry is not None and now - entry[0] < (self.ttl if entry[1] is not None
                                                   else missing_ttl):
            return entry[1]
        pw: pwd.struct_passwd | None
        try:
            pw = pwd.getpwnam(name)
        except (KeyError, ValueError):  # ValueError: a NUL in the name
            pw = None
        if self.version is not None:
            if len(self.entries) >= self.limit:
                self.entries.clear()
            self.entries[name] = (now, pw)
        return pw


ACCOUNTS = Accounts()
