"""Make, check and fix the queue directory tree (what ``postfix check`` does).

NAME
    spool_setup - create and verify queue_directory and data_directory

SYNOPSIS
    layout = spool_setup.expected_layout(config)   # list[Expected]
    created = spool_setup.create_missing(config)   # paths made
    problems = spool_setup.check(config)           # list[str], Postfix warning texts
    fixed = spool_setup.fix(config)                # set owners and modes

DESCRIPTION
    The tree is queue_directory with the subdirectories of
    ``pymailsys.queue.spool.SPOOL_DIRS`` (Postfix's owners and modes: pid root 0755,
    maildrop mail_owner:setgid_group 1733, public mail_owner:setgid_group 0711
    (no setgid programs here: each public service checks SO_PEERCRED),
    the queues mail_owner 0700), the top directory root 0755, and
    data_directory mail_owner 0700.

    Owners: run as root, ``root`` is uid/gid 0, ``mail_owner`` is that user
    and its primary group, ``setgid_group`` that group. Run as another user
    (development, tests, the quick start), every owner and group is the
    current user's, with the same modes.

    ``create_missing`` creates absent directories (parents included) with the
    expected owner and mode and never touches existing ones. ``check``
    returns one warning text per problem, worded like postfix-script's
    (``not owned by postfix: PATH``, ``not owned by group postdrop: PATH``,
    ``group or other writable: PATH``) plus ``wrong permissions 0755 (should
    be 0700): PATH``. ``fix`` sets owners and modes (``postfix
    set-permissions``).

SECURITY
    Run as root. Owners and modes are set through a descriptor opened with
    O_NOFOLLOW, so a symbolic link in place of a directory (which mail_owner
    can plant when queue_directory is wrongly its own) is refused with
    ``not a directory: PATH``, and root's files elsewhere are never changed.

DIAGNOSTICS
    ``SetupError`` for an unknown mail_owner or setgid_group, a mail_owner
    with uid 0, or a directory that cannot be made (texts as Postfix's).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass

from pymailsys import privileges
from pymailsys.config import Config
from pymailsys.queue.spool import SPOOL_DIRS


class SetupError(Exception):
    """The tree cannot be made or the owners cannot be resolved."""


@dataclass(frozen=True)
class Expected:
    path: str
    uid: int
    gid: int
    mode: int
    owner_name: str
    group_name: str


def _ids(config: Config) -> dict[str, tuple[int, str]]:
    """Role -> (id, name) for the owners and groups of the tree."""
    if os.geteuid() != 0:
        uid = os.geteuid()
        gid = os.getegid()
        user = privileges.user_name(uid)
        group = privileges.group_name(gid)
        return {"root": (uid, user), "root_group": (gid, group), "mail_owner": (uid, user),
                "mail_owner_group": (gid, group), "setgid_group": (gid, group)}
    try:
        privileges.check_accounts(config)
        owner = privileges.mail_owner(config)
        setgid_gid, group = privileges.setgid_group(config)
    except privileges.PrivilegeError as e:
        raise SetupError(str(e)) from None
    return {"root": (0, "root"), "root_group": (0, "root"), "mail_owner": (owner.uid, owner.name),
            "mail_owner_group": (owner.gid, privileges.group_name(owner.gid)),
            "setgid_group": (setgid_gid, group)}


def expected_layout(config: Config) -> list[Expected]:
    """Every directory of the tree with its owner, group and mode, top first."""
    ids = _ids(config)
    queue_directory = config.get("queue_directory")
    root_uid, root_name = ids["root"]
    root_gid, root_group = ids["root_group"]
    out = [Expected(queue_directory, root_uid, root_gid, 0o755, root_name, root_group)]
    for d in SPOOL_DIRS:
        uid, uname = ids["root"] if d.owner == "root" else ids["mail_owner"]
        gid, gname = {"root": ids["root_group"], "mail_owner": ids["mail_owner_group"],
                      "setgid_group": ids["setgid_group"]}[d.group]
        out.append(Expected(os.path.join(queue_directory, d.name), uid, gid, d.mode, uname, gname))
    data = config.get("data_directory")
    uid, uname = ids["mail_owner"]
    gid, gname = ids["mail_owner_group"]
    out.append(Expected(data, uid, gid, 0o700, uname, gname))
    return out


def _make(exp: Expected) -> None:
    parent = os.path.dirname(exp.path.rstrip("/"))
    if parent and not os.path.isdir(parent):
        os.makedirs(parent, 0o755, exist_ok=True)
    os.mkdir(exp.path, 0o700)
    _apply(exp)


def _apply(exp: Expected) -> None:
    """Set owner and mode through a descriptor of the directory itself: a symbolic
    link put in its place (mail_owner writes a wrongly owned queue_directory) is
    refused, never followed to whatever it names."""
    try:
        fd = os.open(exp.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SetupError(f"not a directory: {exp.path}: owner and mode left alone") from None
        raise
    try:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (exp.uid, exp.gid) and os.geteuid() == 0:
            os.fchown(fd, exp.uid, exp.gid)
        if stat.S_IMODE(st.st_mode) != exp.mode:
            os.fchmod(fd, exp.mode)
    finally:
        os.close(fd)


def create_missing(config: Config) -> list[str]:
    """Create absent directories of the tree; returns the paths made."""
    made: list[str] = []
    for exp in expected_layout(config):
        if os.path.isdir(exp.path):
            continue
        if os.path.lexists(exp.path):
            raise SetupError(f"{exp.path}: exists and is not a directory")
        try:
            _make(exp)
        except OSError as e:
            raise SetupError(f"unable to create missing queue directories: "
                             f"mkdir {exp.path}: {e.strerror}") from None
        made.append(exp.path)
    return made


def check(config: Config) -> list[str]:
    """Problems with the existing tree, as warning texts (no changes made)."""
    problems: list[str] = []
    for exp in expected_layout(config):
        try:
            st = os.lstat(exp.path)
        except FileNotFoundError:
            problems.append(f"missing directory: {exp.path}")
            continue
        if not stat.S_ISDIR(st.st_mode):
            problems.append(f"not a directory: {exp.path}")
            continue
        if st.st_uid != exp.uid:
            problems.append(f"not owned by {exp.owner_name}: {exp.path}")
        if st.st_gid != exp.gid and os.geteuid() == 0:
            problems.append(f"not owned by group {exp.group_name}: {exp.path}")
        mode = stat.S_IMODE(st.st_mode)
        if mode != exp.mode:
            if mode & 0o022 and not exp.mode & 0o022:
                problems.append(f"group or other writable: {exp.path}")
            problems.append(f"wrong permissions {mode:04o} (should be {exp.mode:04o}): {exp.path}")
    return problems


def fix(config: Config) -> list[str]:
    """Create what is missing and set every owner and mode; returns paths changed."""
    changed = create_missing(config)
    for exp in expected_layout(config):
        st = os.lstat(exp.path)
        wrong_owner = (st.st_uid, st.st_gid) != (exp.uid, exp.gid) and os.geteuid() == 0
        if wrong_owner or stat.S_IMODE(st.st_mode) != exp.mode:
            try:
                _apply(exp)
            except OSError as e:
                raise SetupError(f"{exp.path}: {e.strerror}") from None
            if exp.path not in changed:
                changed.append(exp.path)
    return changed


def prepare_maillog(config: Config) -> str | None:
    """Create maillog_file when it is set and absent, writable by every daemon.

    Every pymailsys process appends to maillog_file itself, so a file created
    by root would lock out the daemons that run as mail_owner: run as root,
    a new file is made mail_owner-owned, mode 0644. An existing file is left
    alone. Returns the path created, or None.
    """
    path = config.get("maillog_file")
    if not path or path.startswith("/dev/") or os.path.lexists(path):
        return None
    ids = _ids(config)
    try:
        os.makedirs(os.path.dirname(path) or ".", 0o755, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        try:
            if os.geteuid() == 0:
                os.fchown(fd, ids["mail_owner"][0], ids["mail_owner_group"][0])
            os.fchmod(fd, 0o644)
        finally:
            os.close(fd)
    except FileExistsError:
        return None
    except OSError as e:
        raise SetupError(f"create {path}: {e.strerror}") from None
    return path
