"""postqueue - mail queue control for users.

SYNOPSIS
    postqueue [-v] [-c config_dir] -f | -i queue_id | -j | -p | -s site

DESCRIPTION
    -p  the queue listing in Postfix's mailq layout (``showq_format``);
    -j  the same as JSON lines (Postfix's field names).
        Both ask the showq service over public/showq. When it is down, root
        reads the queue directly after ``warning: Mail system is down --
        accessing queue directly``; other users get ``Queue report
        unavailable - mail system is down`` and exit 69.
    -f  flush: triggers F A D I to qmgr and W to pickup.
    -i  deliver one deferred message now: it moves from deferred/ to
        incoming/ with its time stamps reset and the group read bit set (qmgr
        then tries its dead destinations and its defer_transports, as
        Postfix's flush does), then qmgr is triggered (this needs the spool's
        owner or root: there is no flush daemon yet).
    -s  fast flush for a site (as ETRN): the flush service moves the site's
        deferred mail to incoming/ and wakes qmgr. A site not in
        fast_flush_domains: ``Flush service is not configured for
        destination "site"``, exit 69; the service down: ``Cannot flush mail
        queue - mail system is down``, exit 69; the service's refusal (the
        user is not in authorized_flush_users, exit 77; too many
        connections, exit 75) printed as it gives it.

SECURITY
    Root works in the queue directories (mail_owner's) only as mail_owner:
    the direct listing (as Postfix runs showq stand-alone) and -i drop root's
    rights for good first, so a link planted there reaches nothing of root's.

DIAGNOSTICS
    Exit 64 usage, 69 mail system down, 77 not allowed (authorized_mailq_users,
    authorized_flush_users), 70 malformed showq reply.

CONFIGURATION PARAMETERS
    authorized_mailq_users, authorized_flush_users, showq_service_name,
    queue_service_name, pickup_service_name, flush_service_name,
    fast_flush_domains, ipc_timeout, enable_long_queue_ids.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from typing import NoReturn

import click

from pymailsys import cli, log, server
from pymailsys import config as config_mod
from pymailsys.ipc import attr, flush, trigger
from pymailsys.queue import listing as showq_format
from pymailsys.queue import spool as queue
from pymailsys.submission import access

LISTING_LIMITS = attr.Limits(attrs=4, value=1 << 28, total=1 << 28)  # one piece from showq
USAGE = ("usage: postqueue -f | postqueue -i queueid | postqueue -j | postqueue -p "
         "| postqueue -s site")


def fatal(status: int, text: str) -> NoReturn:
    log.fatal(text, status)


def _check_acl(cfg: config_mod.Config, param: str, what: str) -> None:
    """A courtesy: the service checks the same list itself (access.service_acl)."""
    uid = os.getuid()
    if access.mail_system_uid(cfg, uid):
        return
    refused = access.user_acl(cfg, param, uid)
    if refused is not None:
        fatal(os.EX_NOPERM, f"User {refused}({uid}) is not allowed to {what}")


def _write(data: bytes) -> bool:
    """Write and flush; False once the reader has gone (``mailq | head``)."""
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except BrokenPipeError:
        return False
    return True


def show_queue(cfg: config_mod.Config, fmt: str) -> None:
    """postqueue -p (fmt "text") or -j (fmt "json")."""
    _check_acl(cfg, "authorized_mailq_users", "view the mail queue")
    spool = queue.Spool.from_config(cfg)
    service = cfg.get("showq_service_name")
    mail_name = cfg.get("mail_name")
    try:
        client = attr.SyncAttrClient(spool.public(service), timeout=cfg.get_time("ipc_timeout"))
    except OSError as e:
        why = f"Connect to the {mail_name} {service} service: {os.strerror(e.errno or 0)}"
        if e.errno in (errno.EACCES, errno.EPERM):
            fatal(os.EX_SOFTWARE, why)
        if os.geteuid() != 0:
            fatal(os.EX_UNAVAILABLE, f"Queue report unavailable - mail system is down ({why})")
        log.warning(f"Mail system is down -- accessing queue directly ({why})")
        server.drop_privileges(cfg)  # as Postfix's stand-alone showq
        for chunk in showq_format.listing_chunks(queue.Spool.from_config(cfg, root="."), fmt,
                                                 cfg.get_bool("enable_long_queue_ids"),
                                                 cfg.get("empty_address_recipient")):
            if not _write(chunk):
                return
        return
    try:
        with client:
            reply = client.request({"request": "list", "format": fmt})
            status = reply.raw("status")
            if status in (str(os.EX_NOPERM).encode(), str(os.EX_TEMPFAIL).encode()) \
                    and "reason" in reply:
                fatal(int(status), reply.text("reason"))  # showq's own refusal
            # each piece is printed as it comes: a long queue streams through
            while status == b"0" and "listing" in reply:
                if not _write(reply.raw("listing") or b""):
                    return
                if not attr.continues(reply):
                    return
                reply = client.read(LISTING_LIMITS)
                status = b"0"
    except (attr.ProtocolError, OSError):
        pass
    fatal(os.EX_SOFTWARE, "malformed showq server response")


def flush_queue(cfg: config_mod.Config) -> None:
    _check_acl(cfg, "authorized_flush_users", "flush the mail queue")
    spool = queue.Spool.from_config(cfg)
    qmgr = spool.public(cfg.get("queue_service_name"))
    if not trigger.send_trigger(qmgr, trigger.FORGET + trigger.SCAN_ALL
                                + trigger.SCAN_DEFERRED + trigger.SCAN_INCOMING):
        fatal(os.EX_UNAVAILABLE, "Cannot flush mail queue - mail system is down")
    if not trigger.send_trigger(spool.public(cfg.get("pickup_service_name")), trigger.WAKEUP):
        fatal(os.EX_UNAVAILABLE, "Cannot flush mail queue - mail system is down")


def flush_file(cfg: config_mod.Config, queue_id: str) -> None:
    _check_acl(cfg, "authorized_flush_users", "flush the mail queue")
    server.drop_privileges(cfg)  # the move below is mail_owner's work, in its directories
    spool = queue.Spool.from_config(cfg, root=".")
    path = spool.path(queue.DEFERRED, queue_id)
    if not os.path.lexists(path):
        if not os.access(spool.dir(queue.DEFERRED), os.X_OK):
            fatal(os.EX_UNAVAILABLE, "Cannot flush queue ID - the flush service is not available")
        return  # as Postfix's flush service: nothing to do
    try:
        os.utime(path, (0, 0), follow_symlinks=False)
        _mark_unthrottle(path)
        spool.move(queue_id, queue.DEFERRED, queue.INCOMING)
    except FileNotFoundError:
        return
    except OSError as e:
        fatal(os.EX_UNAVAILABLE, f"Cannot flush queue ID {queue_id}: {e.strerror}")
    trigger.send_trigger(spool.public(cfg.get("queue_service_name")), trigger.SCAN_INCOMING)


def _mark_unthrottle(path: str) -> None:
    """Ask qmgr, through the file's mode, to try the message's dead destinations and
    its defer_transports now (Postfix's flush: MAIL_QUEUE_STAT_UNTHROTTLE). fchmod on
    the file opened without following links, never chmod on the name."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode):
            os.fchmod(fd, stat.S_IMODE(st.st_mode) | queue.MODE_UNTHROTTLE)
    finally:
        os.close(fd)


def flush_site(cfg: config_mod.Config, site: str) -> None:
    _check_acl(cfg, "authorized_flush_users", "flush the mail queue")
    spool = queue.Spool.from_config(cfg)
    status, reason = flush.send_site(spool.public(cfg.get("flush_service_name")), site,
                                     float(cfg.get_time("ipc_timeout")),
                                     enabled=bool(cfg.get_list("fast_flush_domains")))
    if status == flush.OK:
        return
    if status in (flush.NOPERM, flush.TEMPFAIL) and reason:
        fatal(status, reason)  # the flush service's own refusal
    if status == flush.DENY:
        fatal(os.EX_UNAVAILABLE, f'Flush service is not configured for destination "{site}"')
    if status == flush.BAD:
        fatal(os.EX_USAGE, f'Invalid request: "{site}"')
    fatal(os.EX_UNAVAILABLE, "Cannot flush mail queue - mail system is down")


def _shorten(text: str) -> str:
    return f"{text[:100]}{'...' if len(text) > 100 else ''}"


@click.command(context_settings={"help_option_names": []})
@click.option("-c", "config_dir")
@click.option("-f", "flush_all", is_flag=True)
@click.option("-i", "queue_id")
@click.option("-j", "json_list", is_flag=True)
@click.option("-p", "mailq", is_flag=True)
@click.option("-s", "site")
@click.option("-v", "verbose", count=True)
@click.argument("extra", nargs=-1)
def command(config_dir: str | None, flush_all: bool, queue_id: str | None, json_list: bool,
            mailq: bool, site: str | None, verbose: int, extra: tuple[str, ...]) -> None:
    try:
        cfg = config_mod.load(config_dir)
        log.init(cfg, "postqueue", stderr=True)
    except (config_mod.ConfigError, OSError) as e:
        fatal(os.EX_UNAVAILABLE, str(e))
    modes = [m for m in (flush_all, queue_id is not None, json_list, mailq, site is not None) if m]
    if len(modes) != 1 or extra:
        fatal(os.EX_USAGE, USAGE)
    if site is not None and not flush.valid_site(site):
        fatal(os.EX_USAGE, f'Cannot flush mail queue - invalid destination: "{_shorten(site)}"')
    if queue_id is not None and not queue.valid_queue_id(queue_id):
        fatal(os.EX_USAGE, f'Cannot flush queue ID - invalid name: "{_shorten(queue_id)}"')
    try:
        os.chdir(cfg.get("queue_directory"))
    except OSError as e:
        fatal(os.EX_UNAVAILABLE, f"chdir {cfg.get('queue_directory')}: {e.strerror}")
    if mailq or json_list:
        show_queue(cfg, "json" if json_list else "text")
    elif flush_all:
        flush_queue(cfg)
    elif queue_id is not None:
        flush_file(cfg, queue_id)
    elif site is not None:
        flush_site(cfg, site)


def main(argv: list[str] | None = None) -> int:
    return cli.run(command, "postqueue", USAGE, argv, status=os.EX_USAGE)


if __name__ == "__main__":
    sys.exit(main())
