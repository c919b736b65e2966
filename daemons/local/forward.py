"""The account's .forward file: find it along forward_path, check it, expand it.

Takes a recipient that is a UNIX account; promises Postfix's behaviour: the
first ``forward_path`` entry that exists (``local_expand``: ``$home``,
``$user``, ``$shell``, ``$local``, ``$domain``, ``$recipient``,
``$extension``, ``$recipient_delimiter``, ``${name?value}``,
``${name:value}``; an entry naming an undefined attribute is skipped; values
pass ``forward_expansion_filter``), looked up and read as the user
(``alias.read_file``: never through a symbolic link, never blocking, at most
``alias.FILE_SIZE_LIMIT`` bytes, within ``alias.FILE_READ_TIMEOUT``; a read
that runs out of time defers). Running as root, local first asks lstat, as
root, whether any entry is there at all: only "no such file" for every entry
skips the lookup as the user (most accounts have no .forward, and the switch
to the user and back is four credential calls); root opens and reads nothing
in the user's directories, and any other answer (a file, a permission or NFS
error) is looked up as the user, as always. A file that is not a regular file, is larger than that, is
owned by neither the user nor root, or is world-writable is ignored with a
warning; one that names nobody (empty,
comments only) means no forwarding. The contents expand as an alias value
(``alias``, origin ``forward``) with the user's rights, in the same request
(when propagate_unmatched_extensions lists ``forward``, its addresses get the
recipient's extension unless the file found was named with ``$extension``):
members other than the user leave as the forwarded copy, the user itself (its
own address or ``\\user``) gets its mailbox. ``deliver`` returns False when
the mailbox should get the mail instead.
"""

from __future__ import annotations

import functools
import os
import pwd
import re
import stat
from typing import TYPE_CHECKING

from pymailsys.daemons.local import alias, results

from pymailsys import log, privileges, rfc822
from pymailsys.bounded_read import FileRefused
from pymailsys.config import ConfigError, MacroExpander

if TYPE_CHECKING:
    from pymailsys.daemons.local.agent import Level, LocalAgent, Recipient, Session

_EXTENSION_RE = re.compile(r"\$[{(]?extension\b")  # an entry that uses the extension


def expansion_attrs(rcpt: Recipient, pw: pwd.struct_passwd | None) -> dict[str, str]:
    """Postfix's local_expand attributes (an undefined one is absent: ``home`` and
    ``shell`` without an account, ``recipient_delimiter`` when the address has
    none)."""
    attrs = {"user": pw.pw_name if pw else rcpt.user, "local": rcpt.localpart,
             "mailbox": rcpt.localpart, "recipient": rcpt.address}
    if pw:
        attrs.update(home=pw.pw_dir, shell=pw.pw_shell)
    if rcpt.domain:
        attrs["domain"] = rcpt.domain
    if rcpt.has_extension:  # never with a "/" (LocalAgent.parse_recipient); "" for "user+"
        attrs["extension"] = rcpt.extension
    if len(rcpt.localpart) > len(rcpt.user):  # Postfix 2.11 and later: the one found
        attrs["recipient_delimiter"] = rcpt.localpart[len(rcpt.user)]
    return attrs


async def deliver(agent: LocalAgent, s: Session, lvl: Level, rcpt: Recipient) -> bool:
    """Deliver per the user's .forward file (the first forward_path entry that exists);
    False when there is none, it is unsafe (a warning, as Postfix) or it names nobody:
    then the mailbox gets the mail. Its members that are not this user are forwarded;
    the user itself (or ``\\user``) goes to the mailbox (Postfix's loop guard: the
    same .forward is not expanded twice in one request)."""
    req = lvl.req
    pw = rcpt.account
    if pw is None:
        return False  # the mailbox delivery reports the unknown user
    if not agent.root and pw.pw_uid != agent.me.uid:
        return False  # the mailbox delivery defers
    paths = forward_paths(agent.forward_path, tuple(expansion_attrs(rcpt, pw).items()),
                          agent.forward_filter)
    if agent.root and all(_absent(path) for path in paths):
        return False
    found: tuple[str, os.stat_result] | None = None
    try:
        with privileges.as_user(pw.pw_uid, pw.pw_gid):
            for path in paths:
                try:
                    found = path, os.lstat(path)
                    break
                except OSError:
                    continue
            if found is None:
                return False
            path, lst = found
            if s.been_here(f"forward {path}"):
                return f"forward-done {path}".lower() in s.seen
            if not stat.S_ISREG(lst.st_mode):
                log.warning(f"file {path} is not a regular file")
                return False
            try:
                text, st = alias.read_file(path, follow_links=False)
            except FileRefused as e:
                log.warning(f"file {path} is {e}")
                return False
            except TimeoutError as e:
                s.done(req, results.failure(e, f"cannot read file {path}: "))
                return True
            except OSError as e:
                log.warning(f"cannot open file {path}: {e.strerror}")
                return False
            if st.st_uid not in (0, pw.pw_uid):
                log.warning(f"file {path} has bad owner uid {st.st_uid}")
                return False
            if st.st_mode & stat.S_IWOTH:
                log.warning(f"file {path} is world writable")
                return False
    except privileges.PrivilegeError as e:
        s.done(req, results.failure(e))
        return True
    value = alias.value_of_lines(text)
    if not rfc822.address_list(value):
        return False  # an empty .forward: no forwarding
    unmatched = ""
    if rcpt.extension and alias.FORWARD in agent.propagate and path not in forward_paths(
            tuple(e for e in agent.forward_path if _EXTENSION_RE.search(e)),
            tuple(expansion_attrs(rcpt, pw).items()), agent.forward_filter):
        unmatched = rcpt.localpart[len(rcpt.user):]  # the file found did not use $extension
    member = lvl.deeper(exp_type=alias.FORWARD, exp_from=rcpt.localpart, owner=rcpt.user,
                        rights=privileges.UserIds.from_pw(pw), unmatched=unmatched)
    await alias.expand(agent, s, member, value)
    s.been_here(f"forward-done {path}")
    return True


def _absent(path: str) -> bool:
    """Whether root's lstat finds no such file at path (nor a directory on the way)."""
    try:
        os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return True
    except OSError:
        return False
    return False


@functools.lru_cache(maxsize=1024)
def forward_paths(entries: tuple[str, ...], attrs: tuple[tuple[str, str], ...],
                  allowed: frozenset[str]) -> tuple[str, ...]:
    """The forward_path entries as ``local_expand`` expands them for one recipient's
    attributes, those it skips left out. Remembered (a pure function of its arguments,
    at most 1024 recipients' worth): the expansion cost a tenth of local's CPU per
    delivery, the same for every message to a recipient."""
    found = (local_expand(entry, dict(attrs), allowed) if entry else None for entry in entries)
    return tuple(path for path in found if path)


def local_expand(text: str, attrs: dict[str, str], allowed: set[str] | frozenset[str]) -> str | None:
    """Postfix's local_expand: config's $name engine over the recipient's attributes.

    Attribute values have characters outside ``allowed`` replaced with ``_``
    (forward_expansion_filter). A plain reference to an undefined attribute makes
    the result None (a forward_path entry is then skipped), and so does a syntax
    error.
    """
    expander = MacroExpander(attrs.get, recurse=False, allowed=allowed)
    try:
        result = expander.expand(text)
    except ConfigError:
        return None
    return None if expander.undefined else result
