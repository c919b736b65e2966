"""Configuration (re)loading: main.cf and master.cf into the set of running services.

Contract: ``load_configuration(config_dir)`` reads both files and checks every
value (``pymailsys.config.validate``) or raises ConfigError/OSError naming the
file, line and parameter, so that a bad configuration never reaches a child: at
start-up master exits, on reload it keeps the configuration it runs. It returns
main.cf's text too: ``keep_running_copy`` writes it to
``$queue_directory/$process_id_directory/running.main.cf`` (root's directory,
written and renamed into place without following links), and master points its
children there (``$PYMAILSYS_RUNNING_MAIN_CF``), so a child started after a
refused reload still runs on what master checked.
``build_services(cfg, entries, old, fatal, release)`` turns master.cf entries
into ``Service`` objects, carrying over from ``old`` what did not change:

* a listener whose address (``spec``) is unchanged is handed over, not
  re-created, so clients never see a closed port during a reload; listeners
  no longer wanted are closed (via ``release``) before new ones are bound;
* children of a service that still exists stay attached to it (they belong to
  the old generation and exit when their lifeline closes);
* services whose pymailsys daemon does not exist yet are left out, named in
  one warning per start or reload (``services not available yet, left out:
  tlsmgr, anvil, ...``), so that a stock Postfix master.cf starts; a command
  naming a full module (with a dot) that cannot be found is a mistake in
  master.cf and gets a warning of its own naming the line;
* at start-up (``fatal``) a bad address or a failed bind is an error; on
  reload it disables only that service.

The chroot column is not supported yet: one warning names the services that
asked for it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable

from pymailsys.daemons.master.children import (
    Service,
    module_exists,
    module_for,
    names_full_module,
)
from pymailsys.daemons.master.listeners import inet_bind_addresses, make_listeners

from pymailsys import config as config_mod
from pymailsys import log, maps
from pymailsys.config import Config, ConfigError, master_cf, validate
from pymailsys.config.master_cf import ServiceEntry
from pymailsys.queue import spool

Services = dict[tuple[str, str], Service]


RUNNING_COPY = "running.main.cf"


def load_configuration(config_dir: str) -> tuple[Config, list[ServiceEntry], str]:
    text = config_mod.read_main_cf(os.path.join(config_dir, "main.cf"))
    cfg = config_mod.load(config_dir, text=text)
    entries = master_cf.parse_file(os.path.join(config_dir, "master.cf"))
    errors = [str(p) for p in validate.check(cfg, entries, maps.REGISTRY) if p.fatal]
    if errors:
        raise ConfigError("; ".join(errors))
    return cfg, entries, text


def keep_running_copy(cfg: Config, text: str) -> str:
    """Put the checked main.cf text where children read it; its path, '' when that failed."""
    path = os.path.join(spool.process_id_directory(cfg), RUNNING_COPY)
    tmp = path + ".tmp"
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape") as f:
            os.fchmod(fd, 0o644)
            f.write(text)
        os.rename(tmp, path)
    except OSError as e:
        log.warning(f"{path}: {e.strerror}: daemons will read {cfg.main_cf} themselves")
        return ""
    return path


def close_listeners(svc: Service, release: Callable[[Service], None]) -> None:
    """Stop watching svc's listeners (``release``) and close them."""
    release(svc)
    for lst in svc.listeners:
        lst.close()
    svc.listeners = []


def build_services(cfg: Config, entries: list[ServiceEntry], old: Services, fatal: bool,
                   release: Callable[[Service], None]) -> Services:
    """Services for entries, reusing old listeners whose address did not change.

    ``release(svc)`` stops master from watching svc's listeners before they
    are closed or handed over.
    """
    default_limit = cfg.get_int("default_process_limit")
    queue_directory = cfg.get("queue_directory")
    wanted: list[tuple[ServiceEntry, str, int, tuple]] = []
    left_out: list[str] = []
    for entry in entries:
        module = module_for(entry.command)
        if not module_exists(module):
            if not names_full_module(entry.command):
                # "smtp" alone would hide that smtp/inet (smtpd) does run
                shared = sum(1 for e in entries if e.name == entry.name) > 1
                left_out.append(f"{entry.name}/{entry.type}" if shared else entry.name)
            else:
                log.warning(f"{entry.where()}: service {entry.name}/{entry.type}: "
                            f"no module {module} -- service disabled")
            continue
        maxproc = default_limit if entry.maxproc is None else entry.maxproc
        try:
            if entry.type == "inet":
                spec: tuple = ("inet", entry.name, tuple(inet_bind_addresses(entry, cfg)))
            else:
                spec = (entry.type, entry.socket_name(queue_directory))
        except ConfigError as e:
            if fatal:
                raise
            log.error(f"{e} -- service {entry.name}/{entry.type} disabled")
            continue
        wanted.append((entry, module, maxproc, spec))
    if left_out:
        log.warning(f"services not available yet, left out: {', '.join(left_out)}")
    chrooted = [f"{e.name}/{e.type}" for e, _m, _p, _s in wanted if e.chroot]
    if chrooted:
        log.warning(f"{os.path.join(cfg.config_dir, 'master.cf')}: the chroot column is not "
                    f"supported yet; these services run without chroot: {', '.join(chrooted)}")
    # Close the listeners that are not carried over, before binding new ones.
    keep_specs = {spec for _e, _m, _p, spec in wanted}
    for svc in old.values():
        if svc.spec not in keep_specs:
            close_listeners(svc, release)
    reusable = {svc.spec: svc for svc in old.values() if svc.listeners}
    new: Services = {}
    now = time.monotonic()
    for entry, module, maxproc, spec in wanted:
        svc = Service(entry, module, maxproc, spec)
        prev = reusable.pop(spec, None)
        if prev is not None:
            release(prev)
            svc.listeners, prev.listeners = prev.listeners, []
        else:
            try:
                svc.listeners = make_listeners(entry, cfg, maxproc)
            except (ConfigError, OSError) as e:
                text = str(e) if isinstance(e, ConfigError) else (e.strerror or str(e))
                if fatal:
                    for s in new.values():
                        close_listeners(s, release)
                    raise ConfigError(text) from None
                log.error(f"{text} -- service {entry.name}/{entry.type} disabled")
                continue
        same = old.get(entry.key)
        if same is not None:
            svc.children = same.children
            same.children = {}
            for child in svc.children.values():
                child.service = svc
            svc.used = same.used
        if entry.wakeup > 0:
            svc.next_wakeup = now + entry.wakeup if entry.wakeup_after_use else now
        new[entry.key] = svc
    for svc in reusable.values():
        close_listeners(svc, release)
    return new
