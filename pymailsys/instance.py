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

    Existing configuration files are overwritten. Returns the list of paths
    written, in order. Used by ``python3 -m pymailsys.tools.instance create``,
    the quick start and the test harness.

DIAGNOSTICS
    OSError when DIR cannot be written.
"""

from __future__ import annotations

import os
import re
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


def build_aliases_db(path: str) -> str | None:
    """Index the aliases file as postalias does (path.lmdb); None when impossible."""
    try:
        from pymailsys import maps
    except ImportError:
        return None
    with open(path, encoding="utf-8") as f:
        items = [(name, value) for _line, name, value in maps.parse_alias_source(f.read(), path)]
    maps.write_lmdb(path + ".lmdb", items, mode=0o644)
    return path + ".lmdb"


def create(directory: str, port: int = 2525, host: str = "127.0.0.1",
           maildir: bool = False) -> list[str]:
    """Write an embedded instance under directory; returns the paths written."""
    directory = os.path.abspath(directory)
    made: list[str] = []
    for sub in ("", "etc", "mail", "log"):
        path = os.path.join(directory, sub)
        if not os.path.isdir(path):
            os.makedirs(path, 0o755)
            made.append(path.rstrip("/") + "/")
    etc = os.path.join(directory, "etc")
    files = {
        "main.cf": main_cf_text(directory, host, maildir),
        "master.cf": master_cf_text(host, port),
        "aliases": aliases_text(),
    }
    for name, text in files.items():
        path = os.path.join(etc, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(path, 0o644)
        made.append(path)
    db = build_aliases_db(os.path.join(etc, "aliases"))
    if db:
        made.append(db)
    return made
