"""postfix: start, stop and check the mail system (Postfix's postfix + postfix-script).

NAME
    postfix - pymailsys control program

SYNOPSIS
    postfix [-c config_dir] [-Dv] command

DESCRIPTION
    Commands, as Postfix's:

    start            refuse if master runs (``the Postfix mail system is
                     already running``, exit 1); ``check``; log ``starting the
                     Postfix mail system``; start master detached (``master
                     -w``: python-daemon, then wait until master has locked
                     its pid file and bound its listeners). Exit 0 when master
                     is up, 1 (``mail system startup failed``, with master's
                     reason) otherwise.
    start-fg         the same checks, then run master in the foreground (this
                     process becomes master).
    stop             SIGTERM to master; wait up to 5 s while it still holds
                     its pid-file lock (``waiting for the Postfix mail system
                     to terminate``), then SIGKILL its process group
                     (``stopping the Postfix mail system with force``).
    abort            SIGTERM to master, no wait.
    reload           the configuration checks of ``check`` (a bad value:
                     fatal, nothing signalled, the running configuration
                     stays), then SIGHUP to master (``refreshing the Postfix
                     mail system``).
    status           exit 0 with ``the Postfix mail system is running: PID:
                     N`` or 1 with ``the Postfix mail system is not running``.
    check            create missing queue directories, verify master.cf,
                     every main.cf value and master.cf ``-o`` override
                     (``pymailsys.config.validate``: a bad value is fatal,
                     naming file, line and parameter; a parameter that is
                     not implemented yet, or a setting that makes a service
                     refuse to run, is a warning) and the owners and modes of
                     the tree (warnings), exit 0; a fatal problem exits 1.
    set-permissions  set the owners and modes of the tree.
    flush            ``postqueue -f`` (or, without that command, the triggers
                     ``FADI`` to public/qmgr and ``W`` to public/pickup).

    stop, abort and reload exit 1 with ``the Postfix mail system is not
    running`` when it is not. Messages go to the log as
    ``postfix/postfix-script`` and to standard error as
    ``postfix/postfix-script: TEXT``. The configuration directory is ``-c``,
    else ``$MAIL_CONFIG``, else /etc/pymailsys.

SECURITY
    The command is reserved for the superuser, except for an instance whose
    mail_owner is the invoking user (an embedded, non-root instance), and
    except for ``status``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
import sys
import time

import click

from pymailsys import config as config_mod
from pymailsys import log, maps, module_argv, pidfile, privileges
from pymailsys.config import Config, ConfigError, master_cf, validate
from pymailsys.ipc import trigger
from pymailsys.queue import setup as spool_setup

MASTER_MODULE = "pymailsys.daemons.master"
POSTQUEUE_MODULE = "pymailsys.tools.postqueue"
COMMANDS = ("start", "start-fg", "stop", "abort", "reload", "status", "check",
            "set-permissions", "flush")
STOP_WAIT = 5.0


class Script:
    """postfix-script: messages to the log and to standard error."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.tag = f"{cfg.get('syslog_name') or 'postfix'}/postfix-script"
        self.logging = False
        if os.geteuid() == 0:
            with contextlib.suppress(spool_setup.SetupError, ConfigError, OSError):
                spool_setup.prepare_maillog(cfg)
        try:
            log.init(cfg, "postfix-script")
            self.logging = True
        except (OSError, ConfigError):
            pass

    def _say(self, text: str) -> None:
        sys.stderr.write(f"{self.tag}: {text}\n")
        sys.stderr.flush()

    def info(self, text: str) -> None:
        if self.logging:
            log.info(text)
        self._say(text)

    def warning(self, text: str) -> None:
        if self.logging:
            log.warning(text)
        self._say("warning: " + text)

    def fatal(self, text: str, status: int = 1) -> None:
        self.fatal_line(text)
        sys.exit(status)

    def fatal_line(self, text: str) -> None:
        """A fatal message without the exit, for reporting several before stopping."""
        if self.logging:
            with contextlib.suppress(SystemExit):  # log.fatal exits; we exit with our status
                log.fatal(text)
        self._say("fatal: " + text)


def _die(text: str, status: int = 1) -> None:
    sys.stderr.write(f"postfix: fatal: {text}\n")
    sys.exit(status)


def check_fatal(cfg: Config, script: Script) -> None:
    """What must be right before master may start: every value, master.cf, the tree."""
    check_config(cfg, script)
    try:
        spool_setup.create_missing(cfg)
        spool_setup.prepare_maillog(cfg)
    except spool_setup.SetupError as e:
        script.fatal(str(e))


def check_config(cfg: Config, script: Script) -> None:
    """master.cf parses and every value fits the parameter table; warnings for the rest."""
    master_path = os.path.join(cfg.config_dir, "master.cf")
    if not os.path.isfile(master_path):
        script.fatal(f"no {master_path} file found")
    try:
        entries = master_cf.parse_file(master_path)
    except ConfigError as e:
        script.fatal(str(e))
        return
    problems = validate.check(cfg, entries, maps.REGISTRY)
    for problem in problems:
        if not problem.fatal:
            script.warning(str(problem))
    errors = [problem for problem in problems if problem.fatal]
    for problem in errors:
        script.fatal_line(str(problem))
    if errors:
        sys.exit(1)


def check_warn(cfg: Config, script: Script) -> None:
    try:
        problems = spool_setup.check(cfg)
    except spool_setup.SetupError as e:
        script.fatal(str(e))
        return
    for text in problems:
        script.warning(text)
    corrupt = os.path.join(cfg.get("queue_directory"), "corrupt")
    with contextlib.suppress(OSError):
        for name in sorted(os.listdir(corrupt)):
            script.warning(f"damaged message: corrupt/{name}")


def _master_argv(config_dir: str, *flags: str) -> list[str]:
    return module_argv(MASTER_MODULE, "-c", config_dir, *flags)


def _signal_master(script: Script, pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        script.fatal("the Postfix mail system is not running")
    except PermissionError:
        script.fatal(f"kill {pid}: Operation not permitted")


def do_start(cfg: Config, script: Script, foreground: bool) -> None:
    if pidfile.master_pid(cfg) is not None:
        script.fatal("the Postfix mail system is already running")
    check_fatal(cfg, script)
    check_warn(cfg, script)
    script.info("starting the Postfix mail system")
    sys.stdout.flush()
    sys.stderr.flush()
    if foreground:
        os.execv(sys.executable, _master_argv(cfg.config_dir, "-s"))
    result = subprocess.run(_master_argv(cfg.config_dir, "-w"))
    if result.returncode != 0:
        script.fatal("mail system startup failed")


def do_stop(cfg: Config, script: Script) -> None:
    pid = pidfile.master_pid(cfg)
    if pid is None:
        script.fatal("the Postfix mail system is not running")
        return
    script.info("stopping the Postfix mail system")
    _signal_master(script, pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_WAIT
    next_note = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        if pidfile.master_pid(cfg) is None:
            return
        if time.monotonic() >= next_note:
            script.info("waiting for the Postfix mail system to terminate")
            next_note += 1.0
        time.sleep(0.05)
    if pidfile.master_pid(cfg) is None:
        return
    script.warning("stopping the Postfix mail system with force")
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def do_flush(cfg: Config, script: Script) -> None:
    if importlib.util.find_spec(POSTQUEUE_MODULE) is not None:
        result = subprocess.run(module_argv(POSTQUEUE_MODULE, "-c", cfg.config_dir, "-f"))
        sys.exit(result.returncode)
    if pidfile.master_pid(cfg) is None:
        script.fatal("Cannot flush mail queue - mail system is down", 69)
    queue_directory = cfg.get("queue_directory")
    qmgr = os.path.join(queue_directory, "public", cfg.get("queue_service_name"))
    pickup = os.path.join(queue_directory, "public", cfg.get("pickup_service_name"))
    if not trigger.send_trigger(qmgr, b"FADI"):
        script.fatal(f"Cannot flush mail queue - {qmgr}: cannot connect", 75)
    trigger.send_trigger(pickup, trigger.WAKEUP)


def _allowed(cfg: Config) -> bool:
    if os.geteuid() == 0:
        return True
    try:
        return privileges.mail_owner(cfg).uid == os.geteuid()
    except privileges.PrivilegeError:
        return False


@click.command(context_settings={"ignore_unknown_options": True,
                                 "help_option_names": ["--help"]})
@click.option("-c", "config_dir", default=None, help="configuration directory")
@click.option("-v", "verbose", count=True, help="more verbose logging (accepted)")
@click.option("-D", "debug", is_flag=True, help="debugger mode (accepted, ignored)")
@click.argument("command", required=False)
@click.argument("extra", nargs=-1, type=click.UNPROCESSED)
def cli(config_dir: str | None, verbose: int, debug: bool, command: str | None,
        extra: tuple[str, ...]) -> None:
    """Start, stop and check the pymailsys mail system."""
    if command is None:
        _die("usage: postfix [-c config_dir] [-Dv] command")
        return
    directory = os.path.abspath(config_mod.resolve_config_dir(config_dir))
    os.environ["MAIL_CONFIG"] = directory
    main_cf = os.path.join(directory, "main.cf")
    if not os.path.isfile(main_cf):
        _die(f"open {main_cf}: No such file or directory")
    try:
        cfg = config_mod.load(directory)
        cfg.get("queue_directory")
    except ConfigError as e:
        _die(str(e))
        return
    if command != "status" and not _allowed(cfg):
        _die("the postfix command is reserved for the superuser", 1)
    script = Script(cfg)
    if command not in COMMANDS:
        script.fatal(f"unknown command: '{command}'. Usage: postfix start (or start-fg, stop, "
                     "reload, abort, flush, check, status, set-permissions)")
    try:
        run(command, cfg, script)
    except (ConfigError, spool_setup.SetupError) as e:
        script.fatal(str(e))
    sys.exit(0)


def run(command: str, cfg: Config, script: Script) -> None:
    if command in ("start", "start-fg"):
        do_start(cfg, script, command == "start-fg")
    elif command == "stop":
        do_stop(cfg, script)
    elif command in ("abort", "reload"):
        pid = pidfile.master_pid(cfg)
        if pid is None:
            script.fatal("the Postfix mail system is not running")
            return
        if command == "abort":
            script.info("aborting the Postfix mail system")
            _signal_master(script, pid, signal.SIGTERM)
        else:
            check_config(cfg, script)
            script.info("refreshing the Postfix mail system")
            _signal_master(script, pid, signal.SIGHUP)
    elif command == "status":
        pid = pidfile.master_pid(cfg)
        if pid is None:
            script.info("the Postfix mail system is not running")
            sys.exit(1)
        script.info(f"the Postfix mail system is running: PID: {pid}")
    elif command == "check":
        check_fatal(cfg, script)
        check_warn(cfg, script)
    elif command == "set-permissions":
        for path in spool_setup.fix(cfg):
            script.info(f"set owner and permissions: {path}")
        spool_setup.prepare_maillog(cfg)
    elif command == "flush":
        do_flush(cfg, script)


def main() -> None:
    cli(prog_name="postfix")


if __name__ == "__main__":
    main()
