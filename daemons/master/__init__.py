"""master: the resident supervisor that runs every service of master.cf.

NAME
    master - pymailsys master process

SYNOPSIS
    python3 -m pymailsys.daemons.master [-c config_dir] [-d|-s] [-t] [-w] [-v]

DESCRIPTION
    master reads main.cf and master.cf (``pymailsys.config.master_cf``),
    creates the listening endpoint of every service and starts service
    processes on demand, as Postfix's master does. The package is split by
    concern:

    listeners     the sockets and FIFOs of master.cf services
    children      services, child processes, how one is started, status pipes
    reload        main.cf + master.cf into running services, carried over on reload
    stderr_relay  the children's stderr, logged line by line
    supervisor    the event loop: demand, wake-ups, exits, signals, stop
    daemonize     ``-w``: detach and report how initialization went

    Services whose daemon pymailsys does not have yet are left out (no
    listener is created) and named in one warning at every start and reload,
    so a stock Postfix master.cf with tlsmgr, anvil, scache or pipe services
    starts. Children get the
    descriptors of ``pymailsys.ipc.master_status``.

    Children are forked from master's image, with the library and the
    daemon modules preloaded (``forking``, ``proctitle``): ``ps`` and
    ``/proc/PID/cmdline`` show each
    one as ``python3 -P -m pymailsys.daemons.NAME ...``. A package upgrade
    therefore needs ``postfix stop; postfix start``, not a reload. Since
    children share master's memory, master first re-executes itself with
    only the environment import_environment lets through (as Postfix's
    master strips its environment), so nothing else of the environment it
    was started with is anywhere in a child's memory.

    Signals: SIGHUP reloads (main.cf and master.cf re-read, the old lifeline
    closed so old children finish what they hold and exit, those still
    running 60 s later terminated; listeners created or closed as the
    services changed, children of removed services terminated; a broken new
    configuration is logged and the old one kept); SIGTERM (and SIGINT)
    logs ``terminating on signal 15``, terminates all children, waits up to
    3 s, kills what is left and exits 0.

    The pid file ``queue_directory/pid/master.pid`` (``pymailsys.pidfile``)
    holds the pid right aligned in 32 columns plus a newline and stays
    flock()ed exclusively while master runs; ``master -t`` exits 0 when the
    file is absent or not locked (master not running), 1 otherwise.

OPTIONS
    -c dir   configuration directory (else $MAIL_CONFIG, else the default)
    -d, -s   stay in the foreground (start-fg)
    -w       detach with python-daemon and wait until the master has
             initialized; exit 0 on success, 1 with the reason on stderr
    -t       test mode, see above
    -v       accepted, ignored

SECURITY
    Started as root, master stays root (it binds privileged ports and makes
    the sockets); children with unpriv ``y`` drop to mail_owner themselves
    (``-u``). Started as another user, everything runs as that user and
    master logs one warning saying so.

CONFIGURATION PARAMETERS
    queue_directory, process_id_directory, daemon_directory,
    default_process_limit, service_throttle_time, inet_interfaces,
    inet_protocols, import_environment, maillog_file, syslog_name.
"""

from __future__ import annotations

import getopt
import os
import sys

from pymailsys.daemons.master import proctitle

USAGE = "usage: master [-c config_dir] [-d] [-s] [-t] [-w] [-v]"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    padded = bool(args) and args[-1] == ""
    while args and args[-1] == "":  # the padding of proctitle.start_clean
        args = args[:-1]
    try:
        opts, rest = getopt.getopt(args, "c:dDe:istvw")
    except getopt.GetoptError as e:
        sys.stderr.write(f"postfix/master: fatal: {e}\n")
        return 1
    flags = dict(opts)
    if rest:
        sys.stderr.write(f"postfix/master: fatal: {USAGE}\n")
        return 1
    config_dir = flags.get("-c")

    from pymailsys import config as config_mod
    from pymailsys import pidfile
    from pymailsys.config import ConfigError

    if argv is None and "-t" not in flags and not padded:
        try:
            cfg = config_mod.load(config_dir)
        except ConfigError:
            pass  # reported below, by the master that runs
        else:
            from pymailsys.daemons.master.children import imported_environment

            proctitle.start_clean(imported_environment(cfg))  # does not return
    from pymailsys.daemons.master.daemonize import start_detached
    from pymailsys.daemons.master.supervisor import Master

    if config_dir:
        os.environ["MAIL_CONFIG"] = config_dir
    if "-t" in flags:
        try:
            cfg = config_mod.load(config_dir)
        except ConfigError as e:
            sys.stderr.write(f"postfix/master: fatal: {e}\n")
            return 1
        return 0 if pidfile.master_pid(cfg) is None else 1
    if "-w" in flags:
        return start_detached(config_dir, lambda init_fd: Master(config_dir, init_fd).run())
    return Master(config_dir).run()
