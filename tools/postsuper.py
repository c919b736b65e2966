"""postsuper - Postfix superintendent: delete, hold, release, requeue, expire, repair.

SYNOPSIS
    postsuper [-psSv] [-c config_dir] [-d queue_id] [-e queue_id] [-f queue_id]
              [-h queue_id] [-H queue_id] [-r queue_id] [queue...]

DESCRIPTION
    As Postfix's postsuper. queue_id is a queue ID, ``ALL`` (upper case) for
    every message, or ``-`` to read IDs from standard input, one per line.
    Trailing queue names restrict the operation (``postsuper -d ALL
    deferred``); the default is every queue. Operations run in command-line
    order; -s and -p (the default when nothing else is asked) run first.

    -d  delete (with the message's bounce/defer/trace logs): ``ID: removed``
    -h  put on hold (not maildrop, not hold): ``ID: placed on hold``
    -H  release from hold to deferred: ``ID: released from hold``
    -r  requeue through maildrop, so that pickup and cleanup process it again
        (pickup logs ``orig_id=``): ``ID: requeued``
    -e  force expiry (g+x): ``ID: expired``; -f expire and release
    -s  structure check: files in the wrong hashed subdirectory are moved
        back where they belong
    -p  purge temporary files (incomplete message files older than a week)

    Each message file is locked (flock, exclusive, non-blocking) while it is
    acted on; a file another process holds (being delivered) is skipped
    with ``ID: skipped, still being delivered``. At the end postsuper says
    what it changed: ``Deleted: N messages``, ``Placed on hold: N
    messages``, ``Released from hold: N messages``, ``Requeued: N
    messages``, ``Force-expired: N messages``. Messages go to standard error
    and to the mail log.

SECURITY
    Reserved for the superuser (or, for an unprivileged instance, the owner
    of its queue directory). Started as root, it changes to queue_directory
    and then becomes mail_owner (groups cleared) for good, as Postfix's
    postsuper does, whoever owns the queue directories: mail_owner can write
    them, so nothing there may steer root (a planted symbolic link to a file
    or a hashed subdirectory reaches only what mail_owner may touch). Paths
    are relative to queue_directory, whose parents mail_owner may not be able
    to search.

CONFIGURATION PARAMETERS
    queue_directory, hash_queue_names, hash_queue_depth, mail_owner.
"""

from __future__ import annotations

import fcntl
import os
import stat
import sys
import time
from collections.abc import Iterator

import click

from pymailsys import cli, log, server
from pymailsys import config as config_mod
from pymailsys.queue import spool as queue

MESSAGE_QUEUES = (queue.MAILDROP, queue.INCOMING, queue.ACTIVE, queue.DEFERRED, queue.HOLD)
KNOWN_QUEUES = MESSAGE_QUEUES + (queue.TRACE, queue.DEFER, queue.BOUNCE, queue.FLUSH)
DEFAULT_QUEUES = (queue.DEFER, queue.BOUNCE, queue.MAILDROP, queue.INCOMING, queue.ACTIVE,
                  queue.DEFERRED, queue.HOLD, queue.FLUSH)
LOG_QUEUES = (queue.BOUNCE, queue.DEFER, queue.TRACE)
MAX_TEMP_AGE = 7 * 86400
USAGE = ("usage: postsuper [-c config_dir] [-d queue_id (delete)] "
         "[-e queue_id (expire)] [-f queue_id (expire and/or un-hold)] "
         "[-h queue_id (hold)] [-H queue_id (un-hold)] "
         "[-p (purge temporary files)] [-r queue_id (requeue)] "
         "[-s (structure fix)] [-S (redundant structure fix)][-v (verbose)] [queue...]")


def say(text: str) -> None:
    """msg_info as in Postfix's commands: to the log and to standard error."""
    log.info(text)
    sys.stderr.write(f"postsuper: {text}\n")
    sys.stderr.flush()


def ready(st: os.stat_result) -> bool:
    """A complete message file (queue.is_complete), not one still being written."""
    return stat.S_ISREG(st.st_mode) and queue.is_complete(st.st_mode)


class Locked(Exception):
    pass


class Super:
    def __init__(self, cfg: config_mod.Config, queues: list[str]) -> None:
        self.cfg = cfg
        self.spool = queue.Spool.from_config(cfg, root=".")  # the caller chdir'ed there
        self.queues = queues
        self.counts = {"deleted": 0, "requeued": 0, "held": 0, "released": 0, "expired": 0}

    # --- locking -----------------------------------------------------------------
    def lock(self, path: str) -> int | None:
        """An fd holding an exclusive lock on path; None when the file is gone.

        Raises Locked when another process holds a lock on it."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (FileNotFoundError, OSError):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Locked(path) from None
        return fd

    def _open_ok(self, qname: str, queue_id: str) -> str | None:
        path = self.spool.path(qname, queue_id)
        try:
            st = os.lstat(path)
        except OSError:
            return None
        return path if ready(st) else None

    def _act(self, queue_id: str, skip: tuple[str, ...], only: tuple[str, ...] | None,
             action) -> bool:  # type: ignore[no-untyped-def]
        if not queue.valid_queue_id(queue_id):
            log.warning(f"invalid mail queue id: {queue_id}")
            return False
        for qname in self.queues:
            if qname not in MESSAGE_QUEUES or qname in skip or (only and qname not in only):
                continue
            path = self._open_ok(qname, queue_id)
            if path is None:
                continue
            try:
                fd = self.lock(path)
            except Locked:
                log.warning(f"{queue_id}: skipped, still being delivered")
                return False
            if fd is None:
                continue
            try:
                if action(qname, path, fd):
                    return True
            finally:
                os.close(fd)
        return False

    # --- one message ---------------------------------------------------------------
    def delete_one(self, queue_id: str) -> None:
        def act(qname: str, path: str, fd: int) -> bool:
            for lq in LOG_QUEUES:
                try:
                    os.unlink(self.spool.path(lq, queue_id))
                except FileNotFoundError:
                    pass
            try:
                os.unlink(path)
            except FileNotFoundError:
                return False
            say(f"{queue_id}: removed")
            return True

        self.counts["deleted"] += self._act(queue_id, (), None, act)

    def requeue_one(self, queue_id: str) -> None:
        def act(qname: str, path: str, fd: int) -> bool:
            new = self.spool.path(queue.MAILDROP, queue_id)
            try:
                os.rename(path, new)
            except OSError:
                return False
            now = time.time()
            try:
                os.utime(new, (now, now))
            except OSError as e:
                log.warning(f"{new}: reset time stamps: {e.strerror}")
            say(f"{queue_id}: requeued")
            return True

        self.counts["requeued"] += self._act(queue_id, (queue.MAILDROP,), None, act)

    def hold_one(self, queue_id: str) -> None:
        def act(qname: str, path: str, fd: int) -> bool:
            try:
                self.spool.move(queue_id, qname, queue.HOLD)
            except OSError:
                return False
            say(f"{queue_id}: placed on hold")
            return True

        self.counts["held"] += self._act(queue_id, (queue.MAILDROP, queue.HOLD), None, act)

    def release_one(self, queue_id: str) -> None:
        def act(qname: str, path: str, fd: int) -> bool:
            try:
                self.spool.move(queue_id, queue.HOLD, queue.DEFERRED)
            except OSError:
                return False
            say(f"{queue_id}: released from hold")
            return True

        self.counts["released"] += self._act(queue_id, (), (queue.HOLD,), act)

    def expire_one(self, queue_id: str) -> None:
        def act(qname: str, path: str, fd: int) -> bool:
            try:
                os.fchmod(fd, os.fstat(fd).st_mode & 0o7777 | queue.MODE_EXPIRE)
            except OSError as e:
                log.warning(f"expire file {path}: cannot set permission: {e.strerror}")
                return False
            say(f"{queue_id}: expired")
            return True

        self.counts["expired"] += self._act(queue_id, (queue.MAILDROP,), None, act)

    # --- everything ------------------------------------------------------------------
    def files(self, qname: str) -> Iterator[tuple[str, str]]:
        """(name, path) of every file in a queue, subdirectories included (not in
        maildrop/), as the directories are read: no list of a million names."""
        for entry in queue.walk_files(self.spool.dir(qname), descend=qname != queue.MAILDROP):
            yield entry.name, entry.path

    def mass(self, action: str) -> None:
        for qname in self.queues:
            is_msg = qname in MESSAGE_QUEUES
            for name, path in self.files(qname):
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                fd = None
                if is_msg and stat.S_ISREG(st.st_mode):
                    try:
                        fd = self.lock(path)
                    except Locked:
                        log.warning(f"{name}: skipped, still being delivered")
                        continue
                    if fd is None:
                        continue
                try:
                    self._mass_one(action, qname, is_msg, name, path, st, fd)
                finally:
                    if fd is not None:
                        os.close(fd)

    def _mass_one(self, action: str, qname: str, is_msg: bool, name: str, path: str,
                  st: os.stat_result, fd: int | None) -> None:
        if action == "delete":
            try:
                os.unlink(path)
            except OSError:
                return
            if is_msg and ready(st):
                self.counts["deleted"] += 1
            return
        if not is_msg or not queue.valid_queue_id(name):
            return
        if action == "requeue" and qname != queue.MAILDROP:
            try:
                os.rename(path, self.spool.path(queue.MAILDROP, name))
                self.counts["requeued"] += 1
            except OSError:
                pass
        elif action == "expire" and ready(st) and qname != queue.MAILDROP and fd is not None:
            os.fchmod(fd, st.st_mode & 0o7777 | queue.MODE_EXPIRE)
            self.counts["expired"] += 1
        elif action == "hold" and qname not in (queue.MAILDROP, queue.HOLD):
            try:
                os.rename(path, self.spool.path(queue.HOLD, name))
                self.counts["held"] += 1
            except OSError:
                pass
        elif action == "release" and qname == queue.HOLD:
            try:
                self.spool.ensure_hash_dirs(queue.DEFERRED, name)
                os.rename(path, self.spool.path(queue.DEFERRED, name))
                self.counts["released"] += 1
            except OSError:
                pass

    def repair(self, purge: bool, structure: bool) -> None:
        now = time.time()
        for qname in self.queues:
            is_msg = qname in MESSAGE_QUEUES
            base = self.spool.dir(qname)
            for name, path in self.files(qname):
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                if not stat.S_ISREG(st.st_mode) or (
                        purge and is_msg and not ready(st) and now > st.st_mtime + MAX_TEMP_AGE):
                    try:
                        os.unlink(path)
                    except OSError:
                        pass
                    continue
                if not queue.valid_queue_id(name):
                    log.warning(f"bogus file name: {os.path.relpath(path, self.spool.root)}")
                    continue
                if structure:
                    wanted = self.spool.path(qname, name)
                    if os.path.normpath(path) != os.path.normpath(wanted):
                        self.spool.ensure_hash_dirs(qname, name)
                        try:
                            os.rename(path, wanted)
                        except OSError as e:
                            log.warning(f"rename {path} to {wanted}: {e.strerror}")
            if structure:
                for dirpath, _dirs, _files in os.walk(base, topdown=False):
                    if dirpath != base and qname not in self.spool.hashed:
                        try:
                            os.rmdir(dirpath)
                        except OSError:
                            pass

    def report(self, asked: set[str]) -> None:
        def n(count: int) -> str:
            return f"{count} message{'' if count == 1 else 's'}"

        c = self.counts
        if "r" in asked:
            say(f"Requeued: {n(c['requeued'])}")
        if "d" in asked:
            say(f"Deleted: {n(c['deleted'])}")
        if "e" in asked or "f" in asked:
            say(f"Force-expired: {n(c['expired'])}")
        if "h" in asked:
            say(f"Placed on hold: {n(c['held'])}")
        if "H" in asked or "f" in asked:
            say(f"Released from hold: {n(c['released'])}")


def _ordered_actions(args: list[str]) -> list[tuple[str, str]]:
    """The -d/-e/-f/-h/-H/-r options in command-line order (getopt rules), which
    Postfix follows when it runs them and click does not keep across names."""
    with_value = set("cdefhHr")
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--" or not a.startswith("-") or a == "-":
            break
        for j in range(1, len(a)):
            c = a[j]
            if c in with_value:
                if j + 1 < len(a):
                    value = a[j + 1:]
                else:
                    i += 1
                    value = args[i] if i < len(args) else ""
                if c != "c":
                    out.append((c, value))
                break
        i += 1
    return out


@click.command(context_settings={"help_option_names": []})
@click.option("-c", "config_dir")
@click.option("-d", "delete", multiple=True)
@click.option("-e", "expire", multiple=True)
@click.option("-f", "exp_rel", multiple=True)
@click.option("-h", "hold", multiple=True)
@click.option("-H", "release", multiple=True)
@click.option("-r", "requeue", multiple=True)
@click.option("-p", "purge", is_flag=True)
@click.option("-s", "structure", is_flag=True)
@click.option("-S", "structure_red", is_flag=True)
@click.option("-v", "verbose", count=True)
@click.argument("queues", nargs=-1)
@click.pass_context
def command(ctx: click.Context, config_dir: str | None, delete: tuple[str, ...],
            expire: tuple[str, ...], exp_rel: tuple[str, ...], hold: tuple[str, ...],
            release: tuple[str, ...], requeue: tuple[str, ...], purge: bool, structure: bool,
            structure_red: bool, verbose: int, queues: tuple[str, ...]) -> None:
    if config_dir is not None and not config_dir.startswith("/"):
        log.fatal("-c requires absolute pathname")
    try:
        cfg = config_mod.load(config_dir)
        log.init(cfg, "postsuper", stderr=True)
    except (config_mod.ConfigError, OSError) as e:
        log.fatal(str(e))
    qdir = cfg.get("queue_directory")
    try:
        qdir_owner = os.stat(qdir).st_uid
    except OSError as e:
        log.fatal(f"chdir {qdir}: {e.strerror}")
    uid = os.getuid()
    if uid != 0 and uid != qdir_owner:
        log.fatal("use of this command is reserved for the superuser")
    os.chdir(qdir)
    # As Postfix's postsuper: all queue work as mail_owner, whoever owns the
    # directories, so that a link mail_owner plants there cannot steer root.
    server.drop_privileges(cfg)
    for q in queues:
        if q not in KNOWN_QUEUES:
            log.fatal(f"invalid directory name: {q}")
    sup = Super(cfg, list(queues) if queues else list(DEFAULT_QUEUES))
    ordered = ctx.obj if ctx.obj is not None else []
    asked = {c for c, _v in ordered}
    any_action = bool(asked) or purge or structure or structure_red
    if not any_action:
        purge = structure = True
    if purge or structure or structure_red:
        sup.repair(purge, structure or structure_red)
    one = {"d": sup.delete_one, "e": sup.expire_one, "h": sup.hold_one, "H": sup.release_one,
           "r": sup.requeue_one}
    mass = {"d": "delete", "e": "expire", "h": "hold", "H": "release", "r": "requeue"}
    for c, value in ordered:
        ops = ["e", "H"] if c == "f" else [c]
        if value == "ALL":
            for op in ops:
                sup.mass(mass[op])
        elif value == "-":
            for line in sys.stdin:
                qid = line.strip()
                if qid:
                    for op in ops:
                        one[op](qid)
        else:
            for op in ops:
                one[op](value)
    sup.report(asked)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return cli.run(command, "postsuper", USAGE, args, obj=_ordered_actions(args))


if __name__ == "__main__":
    sys.exit(main())
