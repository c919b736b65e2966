"""Embedded instances: a complete, self-contained configuration under one directory.

NAME
    instance - write an embedded, non-root-friendly pymailsys instance

SYNOPSIS
    made = instance.create(directory, port=2525, host="127.0.0.1", maildir=False)

DESCRIPTION
    ``create`` writes, under DIR (made absolute):

    * ``DIR/etc/main.cf``: config_directory = DIR/etc, queue_directory =
      DIR/spool, data_directory = DIR/data, mail_spool_directory = DIR/mail
      (``DIR/mail/`` with a trailing slash when maildir is true: Maildirs
      under the spool; otherwise mbox files), maillog_file = DIR/log/maillog
      (and maillog_file_prefixes = DIR), inet_interfaces = 127.0.0.1,
      mydestination = $myhostname, localhost.$mydomain, localhost,
      alias_maps = alias_database = hash:DIR/etc/aliases; run by a non-root
      user, also mail_owner and setgid_group = that user and group.
    * ``DIR/etc/master.cf``: the shipped master.cf with the ``smtp inet``
      service changed to ``HOST:PORT``.
    * ``DIR/etc/aliases``: the shipped aliases; for a non-root user root's
      mail goes to that user. Its indexed form ``aliases.lmdb`` is built too.
    * the empty directories DIR/mail and DIR/log; DIR/spool and DIR/data,
      with their owners and modes, are made by ``postfix check`` (which
      ``postfix start`` runs).

    Existing configuration files are replaced. Returns the list of paths
    written, in order. Used by ``python3 -m pymailsys.tools.instance create``,
    the quick start and the test harness.

SECURITY
    Nothing below DIR is reached through a symbolic link: etc, mail and log
    are opened (or made) with O_NOFOLLOW relative to DIR's descriptor, and a
    link or other non-directory there is refused. Each file is written as a
    new file in etc's descriptor (O_CREAT|O_EXCL|O_NOFOLLOW under a random
    name, fchmod 0644) and renamed over the old name, so a link in its place
    is replaced, never followed; aliases.lmdb goes through
    ``maps.write_lmdb`` into the same descriptor (/proc/self/fd).

    DIR itself is walked from / one name at a time (a symbolic link on the
    way is read and walked in turn). Run as root, every directory a name is
    looked up or made in must be root's and not writable by group or other
    (a sticky one such as /tmp is allowed there, but not a symbolic link
    another account made in it), and DIR and DIR/etc must be
    root's and not writable by group or other at all: root never works in a
    directory another account can change. Run by another user, the same
    links are refused but owners and modes are that user's own business.

DIAGNOSTICS
    OSError when DIR cannot be written; its subclass UnsafePath (filename:
    the directory, strerror: why) for a directory refused as above.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from importlib import resources

from pymailsys import privileges

SMTP_INET_RE = re.compile(r"^(?P<name>\S+)(?P<gap>\s+)inet(?P<rest>\s.*?\s(?P<cmd>smtpd)(\s.*)?)$")


def shipped(name: str) -> str:
    """The text of a shipped configuration file (conf/main.cf, master.cf, aliases)."""
    return resources.files("pymailsys.conf").joinpath(name).read_text(encoding="utf-8")


def master_cf_text(host: str, port: int) -> str:
    """The shipped master.cf with its (first, uncommented) smtp inet service on host:port."""
    out = []
    done = False
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    for line in shipped("master.cf").splitlines():
        m = SMTP_INET_RE.match(line)
        if not done and m and m.group("name") == "smtp":
            gap = " " * max(1, 10 - len(address))
            line = f"{address}{gap}inet{m.group('rest')}"
            done = True
        out.append(line)
    if not done:
        out.append(f"{address} inet  n       -       n       -       -       smtpd")
    return "\n".join(out) + "\n"


def main_cf_text(directory: str, host: str, maildir: bool) -> str:
    etc = os.path.join(directory, "etc")
    aliases = os.path.join(etc, "aliases")
    lines = [
        "# Embedded pymailsys instance written by `python3 -m pymailsys.tools.instance create`.",
        "# Everything lives under " + directory + ".",
        "compatibility_level = 3.6",
        f"config_directory = {etc}",
        f"queue_directory = {os.path.join(directory, 'spool')}",
        f"data_directory = {os.path.join(directory, 'data')}",
        f"mail_spool_directory = {os.path.join(directory, 'mail')}{'/' if maildir else ''}",
        f"maillog_file = {os.path.join(directory, 'log', 'maillog')}",
        f"maillog_file_prefixes = {directory}",
        f"inet_interfaces = {host}",
        "mydestination = $myhostname, localhost.$mydomain, localhost",
        f"alias_maps = hash:{aliases}",
        f"alias_database = hash:{aliases}",
    ]
    if os.geteuid() != 0:
        user = privileges.user_name(os.geteuid())
        group = privileges.group_name(os.getegid())
        lines += [
            "# Started by a non-root user: every process runs as this user.",
            f"mail_owner = {user}",
            f"setgid_group = {group}",
        ]
    return "\n".join(lines) + "\n"


def aliases_text() -> str:
    text = shipped("aliases")
    if os.geteuid() != 0:
        user = privileges.user_name(os.geteuid())
        text = text.replace("#root:\t\tyou", f"root:\t\t{user}")
    return text


def _alias_items(text: str, path: str) -> list[tuple[str, str]]:
    from pymailsys import maps

    return [(name, value) for _line, name, value in maps.parse_alias_source(text, path)]


def build_aliases_db(path: str) -> str | None:
    """Index the aliases file as postalias does (path.lmdb); None when impossible."""
    try:
        from pymailsys import maps
    except ImportError:
        return None
    with open(path, encoding="utf-8") as f:
        items = _alias_items(f.read(), path)
    maps.write_lmdb(path + ".lmdb", items, mode=0o644)
    return path + ".lmdb"


class UnsafePath(OSError):
    """A directory create will not work in: filename names it, strerror says why."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(errno.EPERM, why, path)


DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_LINKS = 40


def _check_trusted(fd: int, path: str, sticky_ok: bool) -> None:
    """As root: refuse a directory another account owns or can write (a sticky
    directory such as /tmp only where sticky_ok, for looking names up and
    making new directories). Another user's run is its own business."""
    if os.geteuid() != 0:
        return
    st = os.fstat(fd)
    if st.st_uid != 0:
        owner = f"{privileges.user_name(st.st_uid)} (uid {st.st_uid})"
        raise UnsafePath(path, f"owned by {owner}, not by root: refusing to work in it as root")
    if st.st_mode & 0o022 and not (sticky_ok and st.st_mode & stat.S_ISVTX):
        raise UnsafePath(path, f"writable by group or other (mode {stat.S_IMODE(st.st_mode):04o}):"
                               " refusing to work in it as root")


def _open_child(parent: int, parent_path: str, name: str) -> tuple[int, bool]:
    """parent/name, a directory that is not a symbolic link, made (0755) when
    missing; (its O_PATH descriptor, whether it was made)."""
    path = os.path.join(parent_path, name)
    made = False
    while True:
        try:
            return os.open(name, DIR_FLAGS, dir_fd=parent), made
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            why = "a symbolic link: refusing to follow it" if os.path.islink(path) else "not a directory"
            raise UnsafePath(path, why) from None
        try:
            os.mkdir(name, 0o755, dir_fd=parent)
            made = True
        except FileExistsError:
            pass


def _open_directory(path: str) -> tuple[int, bool]:
    """The absolute directory path (made where missing), walked from / one name at
    a time: a symbolic link on the way is read and walked in turn, never handed to
    the kernel. As root every directory a name is looked up in must be root's and
    not writable by others (sticky ones allowed), and a link another account made
    in a sticky one is refused. (descriptor, whether the last directory was made)."""
    fd = os.open("/", DIR_FLAGS)
    where = "/"
    made = False
    names = path.split("/")
    links = 0
    try:
        while names:
            name = names.pop(0)
            if name in ("", "."):
                continue
            _check_trusted(fd, where, sticky_ok=True)
            try:
                st: os.stat_result | None = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                if os.geteuid() == 0 and st.st_uid != 0 and os.fstat(fd).st_mode & 0o022:
                    raise UnsafePath(os.path.join(where, name), "a symbolic link another account"
                                     " made in a directory others can write: refusing to follow it")
                links += 1
                if links > MAX_LINKS:
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
                target = os.readlink(name, dir_fd=fd)
                names = target.split("/") + names
                made = False
                if target.startswith("/"):
                    os.close(fd)
                    fd, where = -1, "/"
                    fd = os.open("/", DIR_FLAGS)
                continue
            child, made = _open_child(fd, where, name)
            os.close(fd)
            fd, where = child, os.path.normpath(os.path.join(where, name))
        return fd, made
    except BaseException:
        if fd >= 0:
            os.close(fd)
        raise


def _replace_file(dir_fd: int, dir_path: str, name: str, text: str) -> None:
    """dir_fd/name (dir_path/name in messages) becomes a new file holding text,
    mode 0644: written under a new name (O_EXCL|O_NOFOLLOW), then renamed over
    what was there (a symbolic link in its place is replaced, never followed)."""
    tmp = f".{name}.{os.urandom(6).hex()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=dir_fd)
    except OSError as e:
        raise OSError(e.errno, e.strerror, os.path.join(dir_path, name)) from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8", closefd=False) as f:
            f.write(text)
        os.fchmod(fd, 0o644)
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)  # removes a link, never what it names
        if isinstance(e, OSError):
            raise OSError(e.errno, e.strerror, os.path.join(dir_path, name)) from None
        raise
    finally:
        os.close(fd)


def _index_aliases(etc_fd: int, etc: str, text: str) -> str | None:
    """aliases.lmdb in the directory etc_fd holds (reached through /proc/self/fd,
    so no name on the way is looked up again); None without lmdb."""
    try:
        from pymailsys import maps
    except ImportError:
        return None
    path = os.path.join(etc, "aliases")
    by_fd = f"/proc/self/fd/{etc_fd}"
    where = by_fd if os.path.isdir(by_fd) else etc
    try:
        maps.write_lmdb(os.path.join(where, "aliases.lmdb"), _alias_items(text, path), mode=0o644)
    except OSError as e:
        e.filename = path + ".lmdb"
        raise
    return path + ".lmdb"


def create(directory: str, port: int = 2525, host: str = "127.0.0.1",
           maildir: bool = False) -> list[str]:
    """Write an embedded instance under directory; returns the paths written."""
    directory = os.path.abspath(directory)
    made: list[str] = []
    top, top_made = _open_directory(directory)
    try:
        if top_made:
            made.append(directory.rstrip("/") + "/")
        _check_trusted(top, directory, sticky_ok=False)
        subs: dict[str, int] = {}
        try:
            for sub in ("etc", "mail", "log"):
                subs[sub], sub_made = _open_child(top, directory, sub)
                if sub_made:
                    made.append(os.path.join(directory, sub) + "/")
            etc = os.path.join(directory, "etc")
            _check_trusted(subs["etc"], etc, sticky_ok=False)
            files = {
                "main.cf": main_cf_text(directory, host, maildir),
                "master.cf": master_cf_text(host, port),
                "aliases": aliases_text(),
            }
            for name, text in files.items():
                _replace_file(subs["etc"], etc, name, text)
                made.append(os.path.join(etc, name))
            db = _index_aliases(subs["etc"], etc, files["aliases"])
            if db:
                made.append(db)
        finally:
            for fd in subs.values():
                os.close(fd)
    finally:
        os.close(top)
    return made
