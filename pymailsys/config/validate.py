"""Checking a configuration against the parameter table before anything runs on it.

NAME
    validate - every main.cf value and master.cf override, checked in one place

SYNOPSIS
    problems = validate.check(cfg, entries, table_types)   # list[Problem]
    texts = validate.refusals(cfg, program)                 # list[str]

DESCRIPTION
    ``check`` takes a loaded ``Config``, the master.cf entries (their ``-o``
    overrides are checked as the service will see them) and the known lookup
    table types (``maps.REGISTRY``; the config layer cannot import the maps
    package, so the caller passes them). It returns, in table order:

    * errors (``Problem.fatal``), one per declared parameter whose expanded
      value does not fit its kind in ``params.PARAMS``, in Postfix's words and
      naming where the value was set: ``/etc/pymailsys/main.cf, line 12: bad
      numerical configuration: message_size_limit = 10M``, ``unknown
      mynetworks mask style value "subnett" in "subnett"``, ``parameter
      max_idle: bad time value or unit: 10x``, ``invalid max_use parameter
      value 0 < 1``, ``unsupported dictionary type: foo``; and a maillog_file
      outside maillog_file_prefixes;
    * warnings: a main.cf line that sets a name again (``/etc/pymailsys/main.cf,
      line 9: overriding earlier entry: myhostname=a.example``), a parameter
      marked not implemented, or one that Postfix 3.7 knows and the table
      leaves out (``postfix_names``: ``luser_relay``, a master.cf service's
      ``relay_destination_rate_delay``), set to anything but its default
      (``parameter luser_relay is not implemented yet: ignored``), a value
      that only some of the programs that read it act on (``parameter
      notify_classes: protocol is not implemented yet for the smtp and lmtp
      clients (...): ignored there``) or that takes one value only
      (``parameter local_destination_recipient_limit: local delivers one
      recipient per request: ignored``), a qmgr scheduler parameter given
      with ``-o`` to another service (``parameter
      relay_destination_concurrency_limit: qmgr's, not smtp's: ignored here
      (set it in main.cf)``: qmgr never sees it), a max_use for the programs that do
      not count it (``MAX_USE_IGNORED``: ``parameter max_use: smtpd serves
      its clients in one long-lived process that does not count it:
      ignored``), a name that
      neither knows nor main.cf or master.cf refers to (``/etc/pymailsys/main.cf:
      unused parameter: foo=bar``, master.cf's for a ``-o`` name, as Postfix's
      postconf says at ``postfix check``), and a setting that makes a service
      refuse to run (``smtpd_milters = inet:x:1
      is not supported yet: service smtpd will refuse to run``). A setting
      that master itself cannot honour (``master_service_disable``) is an
      error: the whole system refuses to run.

    ``postfix check`` and ``postfix start`` print both and stop on an error;
    ``postfix reload`` and master's reload refuse a configuration with errors.

    ``refusals`` is what a daemon asks at start-up (the server skeleton does):
    the settings of its configuration, overrides included, that it cannot
    honour without weakening security, each as ``NAME = VALUE is not supported
    yet: refusing to run``. The daemon logs that as fatal and exits; master
    throttles the service and the rest of the system runs on.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from pymailsys.config import Config, ConfigError, MacroExpander, params, postfix_names, split_list
from pymailsys.config.master_cf import ServiceEntry

_LEVEL_RE = re.compile(r"\d+(\.\d+){0,2}")
_CHOICE_LABELS = {"mynetworks_style": "mynetworks mask style"}  # Postfix's wording
# Values of a list that some program takes and another that Postfix has act on too does
# not: name -> (those values, where they are ignored)
_PARTLY: dict[str, tuple[frozenset[str], str]] = {
    "notify_classes": (frozenset({"protocol", "data"}),
                       "the smtp and lmtp clients (no transcript of their sessions)"),
}
# Parameters of which pymailsys takes one value only: name -> (that value, why)
_ONLY: dict[str, tuple[str, str]] = {
    "local_destination_recipient_limit": ("1", "local delivers one recipient per request"),
}
# The programs that serve their clients in one long-lived process and do not count
# max_use (Postfix's exit after max_use connections): a max_use set for them is
# ignored there. local and virtual count deliveries (``pymailsys.server``); qmgr and
# anvil ignore it, as Postfix's do.
MAX_USE_IGNORED = ("smtpd", "cleanup", "pickup", "bounce", "smtp", "lmtp", "flush", "showq",
                   "spawn")
_TRUE = ("yes", "true", "1")
_BOOLEANS = (*_TRUE, "no", "false", "0")


@dataclass(frozen=True)
class Problem:
    fatal: bool
    text: str
    where: str = ""  # "/etc/pymailsys/main.cf, line 12", "file .../master.cf: line 3" or ""

    def __str__(self) -> str:
        return f"{self.where}: {self.text}" if self.where else self.text


def check(cfg: Config, entries: Iterable[ServiceEntry] = (),
          table_types: Collection[str] | None = None) -> list[Problem]:
    """Every problem of cfg and of the master.cf overrides in entries."""
    entries = list(entries)
    problems: list[Problem] = []
    for param in params.PARAMS.values():
        problems += _check_param(cfg, param, table_types)
    problems = _without_echoes(problems)
    problems += _check_maillog_file(cfg)
    problems += [Problem(False, text) for text in cfg.overridden]
    problems += _check_postfix_only(cfg, cfg.explicit(), entries)
    problems += unused(cfg, entries)
    problems += _max_use_ignored(cfg, entries)
    for entry in entries:
        for name, value in entry.overrides():
            if entry.command != "qmgr" and postfix_names.scheduler_setting(name, entries):
                problems.append(Problem(False, f"parameter {name}: qmgr's, not {entry.command}'s: "
                                               "ignored here (set it in main.cf)", entry.where()))
                continue
            service_cfg = cfg.with_overrides({name: value}, origin=entry.where())
            if name in params.PARAMS:
                problems += _check_param(service_cfg, params.PARAMS[name], table_types)
            else:
                problems += _check_postfix_only(service_cfg, {name: value}, entries)
    return problems


def unused(cfg: Config, entries: Iterable[ServiceEntry]) -> list[Problem]:
    """Postfix's postconf warning for each main.cf name and master.cf ``-o`` name that is
    neither declared nor known to Postfix 3.7 nor the administrator's own (referred to
    as ``$name``): ``/etc/pymailsys/master.cf: unused parameter: smtpd_tls_securty_level=encrypt``.
    Such a name (often a misspelt one) reaches no code."""
    entries = list(entries)
    explicit = cfg.explicit()
    own = postfix_names.user_defined(explicit, entries)

    def known(name: str) -> bool:
        return name in params.PARAMS or name in own or postfix_names.default(name, entries) is not None

    found = [(cfg.main_cf, name, value) for name, value in explicit.items() if not known(name)]
    found += [(entry.path, name, value) for entry in entries
              for name, value in entry.overrides() if not known(name)]
    return [Problem(False, f"{path}: unused parameter: {name}={value}") for path, name, value in found]


def _max_use_ignored(cfg: Config, entries: list[ServiceEntry]) -> list[Problem]:
    """A warning for a max_use that main.cf changes, and for each master.cf ``-o
    max_use`` of a service that runs one of ``MAX_USE_IGNORED``."""
    problems = []
    if cfg.is_set("max_use") and not _is_default(cfg, params.PARAMS["max_use"]):
        problems.append(Problem(
            False, f"parameter max_use: {', '.join(MAX_USE_IGNORED)} serve their clients in "
                   "long-lived processes that do not count it: ignored there",
            cfg.origin("max_use")))
    problems += [Problem(False, f"parameter max_use: {entry.command} serves its clients in "
                                "one long-lived process that does not count it: ignored",
                         entry.where())
                 for entry in entries if entry.command in MAX_USE_IGNORED
                 and any(name == "max_use" for name, _ in entry.overrides())]
    return problems


def _check_postfix_only(cfg: Config, settings: dict[str, str],
                        entries: list[ServiceEntry]) -> list[Problem]:
    """A warning for each of settings that Postfix knows, the table leaves out and
    pymailsys does not act on, when it differs from Postfix's default."""
    problems = []
    for name, value in settings.items():
        default = postfix_names.default(name, entries)
        if name in params.PARAMS or default is None or postfix_names.honoured(name, entries):
            continue
        if not _same_value(cfg, value, default, entries):
            problems.append(Problem(False, f"parameter {name} is not implemented yet: ignored",
                                    cfg.origin(name)))
    return problems


def _same_value(cfg: Config, value: str, default: str, entries: list[ServiceEntry]) -> bool:
    """value and Postfix's default mean the same once expanded (names pymailsys does not
    declare expand to Postfix's defaults)."""
    def lookup(name: str) -> str | None:
        found = cfg.raw(name)
        return found if found is not None else postfix_names.default(name, entries)

    try:
        value, default = (MacroExpander(lookup).expand(v).strip() for v in (value, default))
    except ConfigError:
        return False
    if value.lower() in _BOOLEANS and default.lower() in _BOOLEANS:
        return (value.lower() in _TRUE) == (default.lower() in _TRUE)
    return split_list(value) == split_list(default)


def _without_echoes(problems: list[Problem]) -> list[Problem]:
    """Drop a default's complaint that repeats one about a value it expands (``$alias_maps``)."""
    located = {p.text for p in problems if p.where}
    return [p for p in problems if p.where or p.text not in located]


def refusals(cfg: Config, program: str) -> list[str]:
    """The settings program cannot honour safely, as fatal log texts."""
    return [f"{param.name} = {cfg.get(param.name)} is not supported yet: refusing to run"
            for param in params.PARAMS.values()
            if program in param.service.split() and _refused(cfg, param)]


def _check_param(cfg: Config, param: params.Param,
                 table_types: Collection[str] | None) -> list[Problem]:
    where = cfg.origin(param.name)
    error = value_error(cfg, param, table_types)
    if error is not None:
        return [Problem(True, error, where)]
    if not cfg.is_set(param.name):
        return []
    if _refused(cfg, param):
        setting = f"{param.name} = {cfg.get(param.name)} is not supported yet"
        services = param.service.split()
        if "master" in services:
            return [Problem(True, f"{setting}: refusing to run", where)]
        which = f"service {services[0]}" if len(services) == 1 else f"services {', '.join(services)}"
        return [Problem(False, f"{setting}: {which} will refuse to run", where)]
    if not param.implemented and not _is_default(cfg, param):
        return [Problem(False, f"parameter {param.name} is not implemented yet: ignored", where)]
    only = _ONLY.get(param.name)
    if only and cfg.get(param.name).strip() != only[0]:
        return [Problem(False, f"parameter {param.name}: {only[1]}: ignored", where)]
    partly = _PARTLY.get(param.name)
    words = [w for w in cfg.get_list(param.name) if w.lower() in partly[0]] if partly else []
    if partly and words:
        return [Problem(False, f"parameter {param.name}: {', '.join(words)} is not implemented "
                               f"yet for {partly[1]}: ignored there", where)]
    return []


def value_error(cfg: Config, param: params.Param,
                table_types: Collection[str] | None = None) -> str | None:
    """Postfix's complaint about param's value in cfg, or None (``cfg.origin`` says where)."""
    name = param.name
    where = cfg.origin(name) + ": "
    try:
        value = cfg.get(name)
        number: int | None = None
        if param.kind == "int":
            number = cfg.get_int(name)
        elif param.kind == "size":
            number = cfg.get_size(name)
        elif param.kind == "time":
            number = cfg.get_time(name)
        elif param.kind == "bool":
            cfg.get_bool(name)
    except ConfigError as e:
        text = str(e)
        return text[len(where):] if text.startswith(where) else text
    if number is not None:
        minimum = param.minimum if param.minimum is not None else 0
        if number < minimum:
            return f"invalid {name} parameter value {number} < {minimum}"
    if param.choices:
        words = split_list(value) if param.kind == "list" else [value.strip()]
        for word in words:
            if word.lower() not in param.choices:
                label = _CHOICE_LABELS.get(name, name)
                return f'unknown {label} value "{word}" in "{value}"'
    if param.kind == "level" and not _LEVEL_RE.fullmatch(value.strip()):
        return f'malformed compatibility level syntax: "{value}"'
    if param.kind == "maps" and table_types is not None:
        for spec in split_list(value):
            problem = _table_problem(spec, table_types)
            if problem:
                return problem
    if param.kind == "type" and table_types is not None and value.strip() not in table_types:
        return f"unsupported dictionary type: {value.strip()}"
    return None


def _table_problem(spec: str, table_types: Collection[str]) -> str | None:
    if spec.startswith("{") and spec.endswith("}"):
        spec = spec[1:-1].strip()
    if ":" not in spec:
        return f'open dictionary: expecting "type:name" form instead of "{spec}"'
    type_name, _, rest = spec.partition(":")
    if type_name == "proxy" and ":" in rest:
        type_name = rest.partition(":")[0]
    if type_name not in table_types:
        return f"unsupported dictionary type: {type_name}"
    return None


def _check_maillog_file(cfg: Config) -> list[Problem]:
    path = cfg.get("maillog_file").strip()
    if not path:
        return []
    prefixes = cfg.get_list("maillog_file_prefixes")
    if any(path.startswith(prefix) for prefix in prefixes):
        return []
    return [Problem(True, f"maillog_file value '{path}' does not match any prefix in "
                          "maillog_file_prefixes", cfg.origin("maillog_file"))]


def _refused(cfg: Config, param: params.Param) -> bool:
    if not param.refuse:
        return False
    if "*" in param.refuse:
        return not _is_default(cfg, param)
    value = cfg.get(param.name).strip().lower()
    if param.kind == "bool":
        value = "yes" if value in _TRUE else "no"
    return value in param.refuse


def _is_default(cfg: Config, param: params.Param) -> bool:
    value = cfg.get(param.name).strip()
    default = cfg.expand(params.default_of(param.name)).strip()
    if param.kind == "bool":
        return (value.lower() in _TRUE) == (default.lower() in _TRUE)
    if param.kind in ("list", "maps"):
        return split_list(value) == split_list(default)
    return value == default
