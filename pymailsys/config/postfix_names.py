"""Postfix 3.7's parameter names: what Postfix knows beyond pymailsys's own table.

NAME
    postfix_names - the names Postfix 3.7 takes in main.cf and master.cf ``-o``

SYNOPSIS
    postfix_names.default(name, entries)    # Postfix's default (unexpanded), or None
    postfix_names.honoured(name, entries)   # a service-defined name pymailsys acts on
    postfix_names.user_defined(values, entries)  # names Postfix takes as the user's own

DESCRIPTION
    ``postfix_names.txt`` beside this module holds Postfix 3.7's built-in
    parameters and their defaults as ``postconf -d`` prints them (its first
    line says how it was made; ``scripts/postfix-names`` makes it again), so
    that pymailsys knows them with no Postfix installed. Postfix also knows:

    * legacy names its defaults refer to (``authorized_verp_clients`` in
      ``smtpd_authorized_verp_clients = $authorized_verp_clients``): default empty;
    * service-defined names (Postfix's postconf_service.c): for each master.cf
      service whose command is local, error, virtual, smtp or lmtp,
      ``SERVICE_<suffix>`` for each of qmgr's per-transport suffixes (default
      ``$default_...``); pipe services have those and ``SERVICE_time_limit``,
      spawn services ``SERVICE_time_limit`` (default ``$command_time_limit``);
    * user-defined names (``user_defined``): those a main.cf or master.cf
      value refers to as ``$name``, and the smtpd_restriction_classes.

    ``default`` answers for the first three (None: a name Postfix does not
    know either). ``honoured`` says which service-defined names pymailsys
    reads: qmgr's scheduler takes the suffixes in ``SCHEDULER_SUFFIXES`` for
    any transport, spawn its ``_time_limit``. ``pymailsys.config.validate``
    warns about the rest when they are set; postconf says ``unused
    parameter`` only for names that ``default`` does not know and that are
    not user-defined.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from importlib import resources

from pymailsys.config import split_list
from pymailsys.config.master_cf import ServiceEntry

DATA_FILE = "postfix_names.txt"

# suffix -> the parameter whose value is the default ($name)
_DELIVERY_SUFFIXES = {
    "recipient_limit": "default_recipient_limit",
    "extra_recipient_limit": "default_extra_recipient_limit",
    "recipient_refill_limit": "default_recipient_refill_limit",
    "recipient_refill_delay": "default_recipient_refill_delay",
    "delivery_slot_cost": "default_delivery_slot_cost",
    "delivery_slot_loan": "default_delivery_slot_loan",
    "delivery_slot_discount": "default_delivery_slot_discount",
    "minimum_delivery_slots": "default_minimum_delivery_slots",
    "initial_destination_concurrency": "initial_destination_concurrency",
    "destination_concurrency_limit": "default_destination_concurrency_limit",
    "destination_recipient_limit": "default_destination_recipient_limit",
    "destination_concurrency_positive_feedback": "default_destination_concurrency_positive_feedback",
    "destination_concurrency_negative_feedback": "default_destination_concurrency_negative_feedback",
    "destination_concurrency_failed_cohort_limit":
        "default_destination_concurrency_failed_cohort_limit",
    "destination_rate_delay": "default_destination_rate_delay",
    "transport_rate_delay": "default_transport_rate_delay",
}
_TIME_LIMIT = {"time_limit": "command_time_limit"}
_SERVICE_SUFFIXES: dict[str, dict[str, str]] = {
    **dict.fromkeys(("local", "error", "virtual", "smtp", "lmtp"), _DELIVERY_SUFFIXES),
    "pipe": {**_TIME_LIMIT, **_DELIVERY_SUFFIXES},
    "spawn": _TIME_LIMIT,
}
# what qmgr's scheduler reads per transport (daemons/qmgr.py: limits(), policy())
SCHEDULER_SUFFIXES = frozenset({
    "recipient_limit", "initial_destination_concurrency", "destination_concurrency_limit",
    "destination_recipient_limit", "destination_concurrency_positive_feedback",
    "destination_concurrency_negative_feedback", "destination_concurrency_failed_cohort_limit",
    "destination_rate_delay",
})
_REF_RE = re.compile(r"\$(?:\{|\()?([A-Za-z0-9_]+)")


@functools.cache
def builtin() -> dict[str, str]:
    """Postfix 3.7's built-in parameters: name -> default, as ``postconf -d`` prints them."""
    text = resources.files(__package__).joinpath(DATA_FILE).read_text(encoding="utf-8")
    table: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition(" =")
            table[name] = value.strip()
    return table


@functools.cache
def _legacy() -> frozenset[str]:
    table = builtin()
    return frozenset(referenced(table.values())) - set(table)


def referenced(values: Iterable[str]) -> set[str]:
    """The names that values refer to as ``$name``, ``${name...}`` or ``$(name)``."""
    found: set[str] = set()
    for value in values:
        found.update(_REF_RE.findall(value))
    return found


def user_defined(values: Mapping[str, str], entries: Iterable[ServiceEntry] = ()) -> set[str]:
    """Names Postfix takes as the administrator's own: referred to by main.cf's values or
    by entries' ``-o`` values, or listed in smtpd_restriction_classes."""
    texts = [*values.values(), *(value for entry in entries for _, value in entry.overrides())]
    return referenced(texts) | set(split_list(values.get("smtpd_restriction_classes", "")))


def _service_suffix(name: str, entries: Iterable[ServiceEntry]) -> tuple[ServiceEntry, str] | None:
    for entry in entries:
        prefix = entry.name + "_"
        suffixes = _SERVICE_SUFFIXES.get(entry.command, {})
        if name.startswith(prefix) and name[len(prefix):] in suffixes:
            return entry, name[len(prefix):]
    return None


def scheduler_setting(name: str, entries: Iterable[ServiceEntry]) -> bool:
    """True for a parameter of qmgr's scheduler: a transport's ``<transport>_<suffix>``
    (``relay_destination_concurrency_limit``) or the default it falls back on
    (``default_destination_concurrency_limit``). qmgr reads them in its own
    configuration: a delivery agent's ``-o`` never reaches it."""
    return name in _DELIVERY_SUFFIXES.values() or (
        (found := _service_suffix(name, entries)) is not None
        and found[1] in _DELIVERY_SUFFIXES)


def default(name: str, entries: Iterable[ServiceEntry] = ()) -> str | None:
    """Postfix's unexpanded default of name (given master.cf's entries), or None when
    Postfix does not know the name."""
    table = builtin()
    if name in table:
        return table[name]
    if name in _legacy():
        return ""
    found = _service_suffix(name, entries)
    if found is None:
        return None
    entry, suffix = found
    return "$" + _SERVICE_SUFFIXES[entry.command][suffix]


def honoured(name: str, entries: Iterable[ServiceEntry]) -> bool:
    """True for a service-defined name that pymailsys reads (qmgr's, spawn's)."""
    found = _service_suffix(name, entries)
    if found is None:
        return False
    entry, suffix = found
    return suffix in SCHEDULER_SUFFIXES if entry.command != "spawn" else True
