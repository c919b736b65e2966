"""Switching to a user for one delivery, and back (local, virtual).

``as_user(uid, gid)`` is a context manager: when the process runs as root it
gives the block the recipient's group set (its primary group only, unless
``groups`` says more), then the effective gid and uid; on exit it restores
root and root's supplementary groups exactly. Blocks nest: inside another
user's block it switches through root to the new user and, on exit, back to
the outer block's user. Each credential system call costs the kernel about
2 µs (a new credential set per call), so a switch makes only the calls that
change something: the supplementary list is set only when the group set in
force (effective gid plus supplementary groups, which is what the kernel's
access checks and NFS see) would differ; a daemon whose root has no
supplementary groups switches with two calls each way. When the process
does not run as root it does nothing (the caller has already checked that
the recipient is the current user). Python threads share credentials, so
callers never keep a thread running around a switch, and never ``await``
inside the block (another task would run with the recipient's rights).

``default_privs(config)`` resolves ``default_privs`` (Postfix: the rights for
deliveries to commands and files on behalf of no user in particular) and
``mail_owner(config)`` the owner of the queue and the daemons (the server
skeleton's privilege drop, the spool layout, the commands that check it), and
``setgid_group(config)`` the group of maildrop/ and public/; each refuses an
unknown or privileged (id 0) value, and ``check_accounts`` refuses them together
as Postfix's programs do at start-up (shared ids). ``account_of`` is the account of a uid (a
file's owner), ``user_name``/``group_name`` name an id.
These are the one place that resolves the mail system's accounts. ``subprocess_ids`` gives the keyword
arguments for running a child process as a user (set in the child, so the
parent never switches), holding none of the parent's descriptors but 0-2, and
``connect_unix`` a Unix socket connected with a user's rights.

SECURITY: uid 0 never stands for a delivery to a command or file: callers map it
to default_privs (Postfix does the same).
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
import resource
import socket
from dataclasses import dataclass

from pymailsys import config as config_mod


class PrivilegeError(Exception):
    """A user or group could not be resolved or switched to."""


@dataclass(frozen=True)
class UserIds:
    name: str
    uid: int
    gid: int
    home: str = "/"
    shell: str = "/bin/sh"

    @classmethod
    def from_pw(cls, pw: pwd.struct_passwd) -> UserIds:
        return cls(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell)


def running_as_root() -> bool:
    return os.geteuid() == 0


def current_user() -> UserIds:
    uid = os.geteuid()
    try:
        return UserIds.from_pw(pwd.getpwuid(uid))
    except KeyError:
        return UserIds(str(uid), uid, os.getegid())


def mail_owner(config: config_mod.Config) -> UserIds:
    """The mail_owner account (queue and daemon owner); PrivilegeError when unknown or
    privileged (user or group ID 0), in Postfix's words."""
    return _unprivileged_account(config, "mail_owner")


def _unprivileged_account(config: config_mod.Config, param: str) -> UserIds:
    """The account a parameter names; PrivilegeError, in Postfix's words (its
    mail_params.c), when there is none or its user or group ID is 0."""
    name = config.get(param)
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise PrivilegeError(f"file {config.main_cf}: parameter {param}: "
                             f"unknown user name value: {name}") from None
    for what, number in (("user", pw.pw_uid), ("group", pw.pw_gid)):
        if number == 0:
            raise PrivilegeError(f"file {config.main_cf}: parameter {param}: "
                                 f"user {name} has privileged {what} ID")
    return UserIds.from_pw(pw)


def setgid_group(config: config_mod.Config) -> tuple[int, str]:
    """(gid, name) of setgid_group (the group of maildrop/ and public/); PrivilegeError
    when unknown or privileged, in Postfix's words."""
    name = config.get("setgid_group")
    try:
        gr = grp.getgrnam(name)
    except KeyError:
        raise PrivilegeError(f"file {config.main_cf}: parameter setgid_group: "
                             f"unknown group name: {name}") from None
    if gr.gr_gid == 0:
        raise PrivilegeError(f"file {config.main_cf}: parameter setgid_group: "
                             f"group {name} has privileged group ID")
    return gr.gr_gid, name


def account_of(uid: int) -> UserIds | None:
    """The account of uid (getpwuid), or None when there is none: whose rights a file's
    owner has (local: an alias table's, an :include: file's)."""
    try:
        return UserIds.from_pw(pwd.getpwuid(uid))
    except KeyError:
        return None


def user_name(uid: int) -> str:
    """The user name of uid, or the number when it has none."""
    ids = account_of(uid)
    return ids.name if ids is not None else str(uid)


def group_name(gid: int) -> str:
    """The group name of gid, or the number when it has none."""
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def default_privs(config: config_mod.Config) -> UserIds:
    """The default_privs account; PrivilegeError when unknown or privileged (user or
    group ID 0), in Postfix's words."""
    return _unprivileged_account(config, "default_privs")


def check_accounts(config: config_mod.Config) -> None:
    """Postfix's start-up checks of the mail system's accounts (mail_params.c:
    check_default_privs, check_mail_owner, check_sgid_group, check_overlap), in its
    words: PrivilegeError when mail_owner, default_privs or setgid_group is unknown or
    privileged, or when default_privs shares its user or group with mail_owner, or
    a group ID with setgid_group (commands and files of aliases would run with the
    rights of the queue's owner), or mail_owner's group is setgid_group."""
    owner, privs = mail_owner(config), default_privs(config)
    sgid, group = setgid_group(config)
    where = f"file {config.main_cf}: parameters"
    if privs.name == owner.name:
        raise PrivilegeError(f"{where} default_privs and mail_owner specify the same user "
                             f"{privs.name}")
    for what, a, b in (("user", privs.uid, owner.uid), ("group", privs.gid, owner.gid)):
        if a == b:
            raise PrivilegeError(f"{where} default_privs and mail_owner: users {privs.name} "
                                 f"and {owner.name} have the same {what} ID: {a}")
    for param, user in (("default_privs", privs), ("mail_owner", owner)):
        if user.gid == sgid:
            raise PrivilegeError(f"{where} {param} and setgid_group: user {user.name} and "
                                 f"group {group} have the same group ID: {sgid}")


# the identities of the as_user blocks in force, innermost last: (uid, gid, groups)
_switched: list[tuple[int, int, list[int]]] = []
# the supplementary groups in force while a block is (read at the outermost entry)
_supplementary: list[int] = []


class as_user:  # noqa: N801  (a context manager used as a function, as contextlib's are)
    """Run the block with effective uid/gid of a user (root only; else a no-op).

    ``groups``: the block's groups besides gid (default: gid only); the group
    set in force during the block is gid plus these. Inside another
    ``as_user`` block it switches to this user, and back on exit.
    """

    __slots__ = ("target", "outer")

    def __init__(self, uid: int, gid: int, groups: list[int] | None = None) -> None:
        self.target = (uid, gid, groups if groups is not None else [gid])
        self.outer: tuple[int, int, list[int]] | None = None

    def __enter__(self) -> None:
        uid, gid = self.target[0], self.target[1]
        if uid == 0 or (not _switched and os.geteuid() != 0):
            return
        if _switched:
            outer = _switched[-1]
            os.seteuid(0)
        else:
            outer = (0, 0, os.getgroups())
            _supplementary[:] = outer[2]
        try:
            _become(self.target)
        except (OSError, OverflowError) as e:  # OverflowError: an id beyond uid_t
            _back_to(outer)
            reason = e.strerror if isinstance(e, OSError) else str(e)
            raise PrivilegeError(f"cannot switch to uid {uid} gid {gid}: {reason}") from None
        _switched.append(self.target)
        self.outer = outer

    def __exit__(self, *exc: object) -> None:
        outer = self.outer
        if outer is not None:
            self.outer = None
            _switched.pop()
            _back_to(outer)


def _become(ids: tuple[int, int, list[int]]) -> None:
    """From effective root: the groups (only when the group set changes), the gid, the uid."""
    gid, groups = ids[1], ids[2]
    if {gid, *groups} != {gid, *_supplementary}:
        os.setgroups(groups)
        _supplementary[:] = groups
    os.setegid(gid)
    os.seteuid(ids[0])


def _back_to(ids: tuple[int, int, list[int]]) -> None:
    """Back to root, then (unless ids are root's) on to ids; root's own groups exactly."""
    os.seteuid(0)
    if ids[0] == 0:
        os.setegid(0)
        if _supplementary != ids[2]:
            os.setgroups(ids[2])
            _supplementary[:] = ids[2]
    else:
        _become(ids)


def connect_unix(path: str, user: UserIds | None, timeout: float) -> socket.socket:
    """A Unix stream socket connected to path with user's effective ids (None: the
    process's own), made non-blocking for asyncio; OSError when it cannot be. The
    connect is the one step that runs with user's rights (a Unix connect only waits
    while the listener's backlog is full, at most ``timeout``): root resolving a path
    in a directory that user owns (public/, private/: mail_owner's) gains nothing
    from a symbolic link user planted there, and the server sees user's uid."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        if user is None:
            sock.connect(path)
        else:
            with as_user(user.uid, user.gid):
                sock.connect(path)
        sock.setblocking(False)
    except PrivilegeError as e:
        sock.close()
        raise OSError(errno.EPERM, str(e)) from None
    except BaseException:
        sock.close()
        raise
    return sock


def subprocess_ids(user: UserIds, file_limit: int = 0) -> dict[str, object]:
    """Keyword arguments for subprocess/asyncio: run the child as user (root only),
    with nothing of the parent's but its standard input, output and error, and
    writing no file past file_limit bytes when it is not 0.

    A ``preexec_fn`` that, in the child, marks every descriptor above 2
    close-on-exec (``_keep_only_stdio``), sets the file size limit
    (RLIMIT_FSIZE; the event loop resets signal dispositions after it, so
    ignoring SIGXFSZ as Postfix's set_file_limit does is the command line's
    business) and, when the parent is root, clears the groups and sets gid,
    then uid: uvloop refuses the ``user``/``group``/``extra_groups``
    arguments, and the callers keep no threads (the usual objection to
    preexec_fn). uvloop's spawn does not close the parent's inheritable
    descriptors as ``close_fds`` promises: without this a user's command
    would hold the daemon's listening socket and master's status pipe (which
    master hands over inheritable), and open table files.
    """
    as_root = os.geteuid() == 0
    uid, gid = user.uid, user.gid

    def become() -> None:
        _keep_only_stdio()
        if file_limit:
            hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
            limit = file_limit if hard == resource.RLIM_INFINITY else min(file_limit, hard)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        if as_root:
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)

    return {"preexec_fn": become}


def _keep_only_stdio() -> None:
    """In a child between fork and exec: every descriptor above 2 close-on-exec (never
    closed here: uvloop's child still duplicates its pipes onto 0-2 after this runs,
    and a descriptor it needs after exec is one of those)."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        fds = list(range(3, min(os.sysconf("SC_OPEN_MAX"), 65536)))
    for fd in fds:
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:  # the directory listing's own, closed by now; or not open
                pass
