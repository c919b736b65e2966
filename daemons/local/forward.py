"""The account's .forward file: find it along forward_path, check it, expand it.

Takes a recipient that is a UNIX account; promises Postfix's behaviour: the
first ``forward_path`` entry that exists (``local_expand``: ``$home``,
``$user``, ``$shell``, ``$local``, ``$domain``, ``$recipient``,
``$extension``, ``$recipient_delimiter``, ``${name?value}``,
``${name:value}``; an entry naming an undefined attribute is skipped; values
pass ``forward_expansion_filter``), looked up and read as the user
(``alias.read_file``: never through a symbolic link, never blocking, at most
``alias.FILE_SIZE_LIMIT`` bytes, within ``alias.FILE_READ_TIMEOUT``; a read
that runs out of time defers). A file that is not a regular file, is larger than that, is
owned by neither the user nor root, or is world-writable is ignored with a
warning; one that names nobody (empty,
comments only) means no forwarding. The contents expand as an alias value
(``alias``, origin ``forward``) with the user's rights. ``deliver`` returns
None when the mailbox should get the mail instead.
"""

from __future__ import annotations

import os
import pwd
import re
import stat
from typing import TYPE_CHECKING

from pymailsys.daemons.local import alias, results

from pymailsys import log, privileges
from pymailsys.bounded_read import FileRefused
from pymailsys.delivery.agent import DeliveryRequest, DeliveryResult, QueueContent

if TYPE_CHECKING:
    from pymailsys.daemons.local.agent import LocalAgent, Recipient

_NAME_RE = re.compile(r"[A-Za-z0-9_]+")


def expansion_attrs(agent: LocalAgent, rcpt: Recipient,
                    pw: pwd.struct_passwd) -> dict[str, str]:
    """Postfix's local_expand attributes (an undefined one is absent)."""
    attrs = {"user": pw.pw_name, "home": pw.pw_dir, "shell": pw.pw_shell,
             "local": rcpt.localpart, "recipient": rcpt.address}
    if rcpt.domain:
        attrs["domain"] = rcpt.domain
    extension = rcpt.extension
    if extension and "/" in extension:
        log.warning(f"address with illegal extension: {rcpt.address}")
        extension = ""
    if extension:
        attrs["extension"] = extension
        attrs["recipient_delimiter"] = rcpt.localpart[len(rcpt.user)]
    elif agent.delimiters:
        attrs["recipient_delimiter"] = agent.delimiters[0]
    return attrs


async def deliver(agent: LocalAgent, req: DeliveryRequest, rcpt: Recipient,
                  content: QueueContent) -> DeliveryResult | None:
    """Deliver per the user's .forward file (the first forward_path entry that exists);
    None when there is none, it is unsafe (a warning, as Postfix) or it names nobody:
    then the mailbox gets the mail."""
    try:
        pw = pwd.getpwnam(rcpt.user)
    except KeyError:
        return None  # the mailbox delivery reports the unknown user
    if not agent.root and pw.pw_uid != agent.me.uid:
        return None  # the mailbox delivery defers
    attrs = expansion_attrs(agent, rcpt, pw)
    found: tuple[str, os.stat_result] | None = None
    try:
        with privileges.as_user(pw.pw_uid, pw.pw_gid):
            for entry in re.split(r"[,\s]+", agent.forward_path):
                path = local_expand(entry, attrs, agent.forward_filter) if entry else None
                if not path:
                    continue
                try:
                    found = path, os.lstat(path)
                    break
                except OSError:
                    continue
            if found is None:
                return None
            path, lst = found
            if not stat.S_ISREG(lst.st_mode):
                log.warning(f"file {path} is not a regular file")
                return None
            try:
                text, st = alias.read_file(path, follow_links=False)
            except FileRefused as e:
                log.warning(f"file {path} is {e}")
                return None
            except TimeoutError as e:
                return agent.done(req, results.failure(e, f"cannot read file {path}: "))
            except OSError as e:
                log.warning(f"cannot open file {path}: {e.strerror}")
                return None
            if st.st_uid not in (0, pw.pw_uid):
                log.warning(f"file {path} has bad owner uid {st.st_uid}")
                return None
            if st.st_mode & stat.S_IWOTH:
                log.warning(f"file {path} is world writable")
                return None
    except privileges.PrivilegeError as e:
        return agent.done(req, results.failure(e))
    value = alias.value_of_lines(text)
    if not alias.split_alias_value(value):
        return None  # an empty .forward: no forwarding
    return await alias.expand(agent, req, rcpt, value, content, "forward",
                              rights=privileges.UserIds.from_pw(pw))


def local_expand(text: str, attrs: dict[str, str], allowed: set[str]) -> str | None:
    """Postfix's local_expand: $name, ${name}, $(name), ${name?value}, ${name:value}, $$.

    Attribute values have characters outside ``allowed`` replaced with ``_``
    (forward_expansion_filter). A plain reference to an undefined attribute makes
    the result None (a forward_path entry is then skipped), and so does a syntax
    error.
    """
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if i + 1 < n and text[i + 1] == "$":
            out.append("$")
            i += 2
            continue
        if i + 1 < n and text[i + 1] in "{(":
            close = "}" if text[i + 1] == "{" else ")"
            depth, j = 0, i + 1
            while j < n:
                if text[j] == text[i + 1]:
                    depth += 1
                elif text[j] == close:
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j >= n:
                return None
            inner = text[i + 2:j]
            i = j + 1
            m = _NAME_RE.match(inner)
            if not m:
                return None
            name, rest = m.group(0), inner[m.end():]
            value = attrs.get(name)
            if rest[:1] in ("?", ":"):
                branch = rest[1:]
                if branch.startswith("{") and branch.endswith("}"):
                    branch = branch[1:-1]
                if (value is not None) == (rest[0] == "?"):
                    sub = local_expand(branch, attrs, allowed)
                    if sub is None:
                        return None
                    out.append(sub)
                continue
            if rest:
                return None
        else:
            m = _NAME_RE.match(text, i + 1)
            if not m:
                out.append("$")
                i += 1
                continue
            name, value = m.group(0), attrs.get(m.group(0))
            i = m.end()
        if value is None:
            return None
        out.append("".join(c if c in allowed else "_" for c in value))
    return "".join(out)
