"""access - may this local user submit, list, flush, or use this sender?

``user_acl(config, param, uid)`` applies one of Postfix's authorized_*_users
lists (authorized_submit_users, authorized_mailq_users,
authorized_flush_users) to the login name of ``uid``, as Postfix's
check_user_acl_byuid: patterns are names, ``!name``, ``/file`` and
``type:table``; the first match decides; no match refuses; ``static:``
anything allows all. It returns None when allowed, else the name refused.

``login_sender_ok(config, uid, sender)`` applies local_login_sender_maps
(``*``, ``@domain``, the empty-address key, addresses with the recipient
delimiter extension stripped).

``mail_system_uid(config, uid)`` is True for root and mail_owner, whom
Postfix's postqueue and its services never refuse; ``trusted_peer`` adds the
service's own uid (an unprivileged instance). ``service_acl(config, param,
uid)`` is the check a public service (showq, qmgr's flush trigger) applies
to its peer's SO_PEERCRED uid: a trusted peer always may, anyone else as
``user_acl``. ``service_refusal(config, param, uid, what)`` is what such a
service answers a peer that the list refuses, as Postfix's commands word it
(EX_NOPERM, ``User NAME(UID) is not allowed to WHAT``; EX_TEMPFAIL when a
table cannot answer), logged as a warning that names the uid; None when the
peer may.

A table that cannot answer raises ``maps.TableError``: the caller defers or
refuses, never allows.
"""

from __future__ import annotations

import os
from typing import Any

from pymailsys import log, maps, privileges
from pymailsys.config import Config, split_list
from pymailsys.submission.login import login_name


def user_acl(config: Config, param: str, uid: int) -> str | None:
    """None when uid may (Postfix check_user_acl_byuid), else the user name refused."""
    acl = config.get(param).strip()
    if acl.startswith("static:"):
        return None
    name = login_name(uid) or "unknown"
    for pattern in config.get_list(param):
        negate = pattern.startswith("!")
        if negate:
            pattern = pattern[1:]
        matched = False
        if pattern.startswith("/"):
            try:
                with open(pattern) as f:
                    words = f.read().split()
            except OSError:
                words = []
            matched = name.lower() in (w.lower() for w in words)
        elif ":" in pattern:
            matched = maps.Maps(None, specs=[pattern]).find(name) is not None
        else:
            matched = pattern.lower() == name.lower()
        if matched:
            return name if negate else None
    return name


def mail_system_uid(config: Config, uid: int) -> bool:
    """root or mail_owner."""
    if uid == 0:
        return True
    try:
        return uid == privileges.mail_owner(config).uid
    except privileges.PrivilegeError:
        return False


def trusted_peer(config: Config, uid: int) -> bool:
    """A public service's peer that is the mail system: root, mail_owner, or our own uid."""
    return uid == os.geteuid() or mail_system_uid(config, uid)


def service_acl(config: Config, param: str, uid: int) -> str | None:
    """user_acl for a public service's peer; a trusted peer always may."""
    if trusted_peer(config, uid):
        return None
    return user_acl(config, param, uid)


def service_refusal(config: Config, param: str, uid: int, what: str) -> dict[str, Any] | None:
    """The reply of a public service to a peer that ``param`` refuses (logged), else None."""
    try:
        refused = service_acl(config, param, uid)
    except maps.TableError as e:
        log.warning(f"uid={uid}: {param} lookup error: {e}")
        return {"status": os.EX_TEMPFAIL, "reason": f"{param} lookup error"}
    if refused is None:
        return None
    why = f"User {refused}({uid}) is not allowed to {what}"
    log.warning(f"uid={uid}: {why}")
    return {"status": os.EX_NOPERM, "reason": why}


def login_sender_ok(config: Config, uid: int, sender: str) -> bool:
    """local_login_sender_maps: may this user use this envelope sender?

    Raises maps.TableError when a table cannot answer (the caller defers).
    """
    specs = config.get_list("local_login_sender_maps")
    user = login_name(uid) or f"uid:{uid}"
    patterns = maps.Maps(None, specs=specs).find(user)
    if patterns is None:
        return False
    delim = config.get("recipient_delimiter")
    null_key = config.get("empty_address_local_login_sender_maps_lookup_key")
    for pattern in split_list(patterns):
        if pattern.startswith("@"):
            at = sender.rfind("@")
            if at >= 0 and sender[at:].lower() == pattern.lower():
                return True
        elif pattern == "*":
            return True
        elif pattern.lower() == null_key.lower():
            if sender == "":
                return True
        else:
            local, sep, domain = sender.rpartition("@") if "@" in sender else (sender, "", "")
            if delim and local:
                for d in delim:
                    if d in local:
                        local = local.split(d, 1)[0]
                        break
            stripped = f"{local}@{domain}" if sep else local
            if pattern.lower() == stripped.lower():
                return True
    return False
