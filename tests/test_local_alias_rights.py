"""Whose rights an alias's commands and files run with (root only, as CI runs).

Postfix's local(8) (alias.c, include.c): an alias in a root-owned table runs its
|commands and /files as default_privs; one in a table another user owns, as
that owner; an :include: file another user owns, listed with root's rights, as
the file's owner; an owner that cannot be told defers with a warning. The
owner of one table or file must never get default_privs' account.

Runs the real cleanup, qmgr and local standalone (test_qmgr's ``Standalone``)
with tables and files owned by conftest's throw-away account; each command
writes its ``id -u``, ``id -g`` and ``$HOME`` to a shared directory.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import local_account
from test_local import _shared_dir
from test_qmgr import BODY, Standalone, standalone_systems

from pymailsys.instance import build_aliases_db

pytestmark = pytest.mark.root

ALLOW_ALL = "alias, forward, include"


@pytest.fixture
def system():  # type: ignore[no-untyped-def]
    yield from standalone_systems()


@pytest.fixture
def shared() -> object:
    path = Path(_shared_dir())
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _command(shared: Path, name: str) -> str:
    """An alias value: a command that records whose rights it ran with in NAME.id."""
    return f'"|cat >/dev/null; echo $(id -u) $(id -g) $HOME > {shared}/{name}.id"'


def _ran_as(shared: Path, name: str) -> list[str]:
    return (shared / f"{name}.id").read_text().split()


def _ids(name: str) -> list[str]:
    pw = pwd.getpwnam(name)
    return [str(pw.pw_uid), str(pw.pw_gid)]


def _table(s: Standalone, name: str, text: str, uid: int) -> Path:
    """etc/NAME, indexed as postalias does, source and index owned by uid."""
    path = s.etc / name
    path.write_text(text)
    build_aliases_db(str(path))
    for owned in (path, s.etc / f"{name}.lmdb"):
        os.chown(owned, uid, -1)
    return path


def _file(path: Path, text: str, uid: int) -> Path:
    path.write_text(text)
    os.chmod(path, 0o644)
    os.chown(path, uid, -1)
    return path


def _no_account_uid() -> int:
    return next(uid for uid in range(61000, 65000) if not _has_account(uid))


def _has_account(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_alias_in_a_users_table_runs_as_that_user(system, shared: Path,  # type: ignore[no-untyped-def]
                                                  throwaway_user: str) -> None:
    user = pwd.getpwnam(throwaway_user)
    s = system()
    s.aliases(f"rootcmd: {_command(shared, 'root')}\n")
    lists = _table(s, "listaliases",
                   f"listcmd: {_command(shared, 'list')}\n"
                   f"listfile: {shared}/list.mbox\n"
                   f"listincl: :include:{shared}/root.inc\n", user.pw_uid)
    _file(shared / "root.inc", f"{_command(shared, 'rootinc')}\n", 0)
    s.set(alias_maps=f"hash:{s.etc / 'aliases'}, hash:{lists}",
          allow_mail_to_commands=ALLOW_ALL)
    s.start()
    for rcpt, reason in (("rootcmd", "delivered to command: "),
                         ("listcmd", "delivered to command: "),
                         ("listfile", f"delivered to file: {shared}/list.mbox"),
                         ("listincl", "delivered to command: ")):
        qid = s.queue("alice@example.org", [f"{rcpt}@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<{rcpt}@localhost>, .*status=sent \({re.escape(reason)}")
    assert _ran_as(shared, "root") == _ids("nobody")  # root's table: default_privs, no HOME
    assert _ran_as(shared, "list") == [*_ids(throwaway_user), user.pw_dir]
    st = os.stat(shared / "list.mbox")
    assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid)
    # a root-owned :include: in the user's table keeps the user's rights
    assert _ran_as(shared, "rootinc") == [*_ids(throwaway_user), user.pw_dir]


def test_include_file_of_a_user_runs_as_its_owner(system, shared: Path,  # type: ignore[no-untyped-def]
                                                  throwaway_user: str) -> None:
    user = pwd.getpwnam(throwaway_user)
    s = system()
    s.aliases(f"incl: :include:{shared}/list.inc\n"
              f"rootincl: :include:{shared}/root.inc\n")
    _file(shared / "list.inc", f"{_command(shared, 'inc')}\n{shared}/inc.mbox\n", user.pw_uid)
    _file(shared / "root.inc", f"{_command(shared, 'rootinc')}\n", 0)
    s.set(allow_mail_to_commands=ALLOW_ALL, allow_mail_to_files=ALLOW_ALL)
    s.start()
    qid = s.queue("alice@example.org", ["incl@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<incl@localhost>, .*status=sent \(delivered to command: ")
    s.wait_log(rf"{qid}: to=<incl@localhost>, .*status=sent \(delivered to file: ")
    assert _ran_as(shared, "inc") == [*_ids(throwaway_user), user.pw_dir]
    st = os.stat(shared / "inc.mbox")
    assert (st.st_uid, st.st_gid) == (user.pw_uid, user.pw_gid)
    qid = s.queue("alice@example.org", ["rootincl@localhost"], BODY)
    s.wait_log(rf"{qid}: to=<rootincl@localhost>, .*status=sent \(delivered to command: ")
    assert _ran_as(shared, "rootinc") == _ids("nobody")


def test_owner_that_cannot_be_told_defers_with_a_warning(system, shared: Path,  # type: ignore[no-untyped-def]
                                                         throwaway_user: str) -> None:
    stranger = _no_account_uid()
    s = system()
    s.aliases(f"incl: :include:{shared}/stranger.inc\n")
    _file(shared / "stranger.inc", f"{_command(shared, 'inc')}\n", stranger)
    orphan = _table(s, "orphan", f"orphan: {_command(shared, 'orphan')}\n", stranger)
    mine = _table(s, "mine", f"mixed: {_command(shared, 'mixed')}\n",
                  pwd.getpwnam(throwaway_user).pw_uid)
    union = f"unionmap:{{hash:{mine}, hash:{orphan}}}"
    s.set(alias_maps=f"hash:{s.etc / 'aliases'}, hash:{orphan}, {union}",
          allow_mail_to_commands=ALLOW_ALL)
    s.start()
    qid = s.queue("alice@example.org", ["orphan@localhost"], BODY)
    s.wait_log(rf"warning: cannot find alias database owner for hash:{re.escape(str(orphan))}$")
    s.wait_log(rf"{qid}: to=<orphan@localhost>, .*dsn=4\.3\.0, status=deferred "
               r"\(cannot find alias database owner\)")
    # two users' tables in one: whose the value is cannot be told
    qid = s.queue("alice@example.org", ["mixed@localhost"], BODY)
    s.wait_log(r"warning: deliver_alias: no owner UID for alias database "
               rf"{re.escape(union)}$")
    s.wait_log(rf"{qid}: to=<mixed@localhost>, .*dsn=4\.3\.0, status=deferred "
               r"\(mail system configuration error\)")
    qid = s.queue("alice@example.org", ["incl@localhost"], BODY)
    s.wait_log(rf"warning: cannot find username for uid {stranger}$")
    s.wait_log(rf"warning: {shared}/stranger\.inc: cannot find :include: file owner username$")
    s.wait_log(rf"{qid}: to=<incl@localhost>, .*dsn=4\.3\.5, status=deferred "
               r"\(mail system configuration error\)")
    assert sorted(os.listdir(shared)) == ["stranger.inc"]  # no command ran


@pytest.mark.accounts
def test_owner_in_group_root_runs_with_default_privs_group(system, shared: Path) -> None:  # type: ignore[no-untyped-def]
    # Postfix's command.c and file.c: gid 0 becomes default_privs' gid, as uid 0 its uid
    with local_account("pmg" + uuid.uuid4().hex[:8], group="0") as name:
        uid = pwd.getpwnam(name).pw_uid
        s = system()
        lists = _table(s, "listaliases", f"listcmd: {_command(shared, 'list')}\n", uid)
        s.set(alias_maps=f"hash:{s.etc / 'aliases'}, hash:{lists}")
        s.start()
        qid = s.queue("alice@example.org", ["listcmd@localhost"], BODY)
        s.wait_log(rf"{qid}: to=<listcmd@localhost>, .*status=sent \(delivered to command: ")
        assert _ran_as(shared, "list") == [str(uid), _ids("nobody")[1], f"/nonexistent/{name}"]


@pytest.mark.accounts
def test_account_with_uid_0_runs_as_default_privs_in_its_own_group(system, shared: Path) -> None:  # type: ignore[no-untyped-def]
    """An account with uid 0 and another group (a "toor"): its mailbox_command runs with
    default_privs' uid and the account's own group, as Debian's Postfix runs it
    (command.c swaps each id 0 on its own); never as root."""
    with local_account("pmg" + uuid.uuid4().hex[:8]) as owner:
        gid = pwd.getpwnam(owner).pw_gid
        name = "pmz" + uuid.uuid4().hex[:8]
        subprocess.run(["useradd", "--non-unique", "--uid", "0", "--gid", str(gid),
                        "--no-create-home", "--home-dir", f"/nonexistent/{name}",
                        "--shell", "/usr/sbin/nologin", name], check=True,
                       stderr=subprocess.DEVNULL)
        try:
            s = system(mailbox_command=_command(shared, "toor").strip('"|'))
            s.start()
            qid = s.queue("alice@example.org", [f"{name}@localhost"], BODY)
            s.wait_log(rf"{qid}: to=<{name}@localhost>, .*status=sent \(delivered to command: ")
            assert _ran_as(shared, "toor") == [_ids("nobody")[0], str(gid), f"/nonexistent/{name}"]
        finally:
            # --force: plain userdel refuses an account whose uid (0) has processes
            subprocess.run(["userdel", "--force", name], check=False, stderr=subprocess.DEVNULL)


@pytest.mark.accounts
@pytest.mark.parametrize("bad", ["group root", "mail_owner", "root"])
def test_local_refuses_to_start_with_a_privileged_default_privs(system, shared: Path,  # type: ignore[no-untyped-def]
                                                                bad: str) -> None:
    """Postfix's programs refuse to run when default_privs has user or group ID 0 or is
    mail_owner (mail_params.c): local would run a root-owned alias's commands and files
    in group root, or as the owner of the queue. local exits at start with Postfix's
    words; no command runs."""
    with contextlib.ExitStack() as stack:
        name = {"group root": lambda: stack.enter_context(
                    local_account("pmg" + uuid.uuid4().hex[:8], group="0")),
                "mail_owner": lambda: "postfix", "root": lambda: "root"}[bad]()
        s = system()
        s.aliases(f"postmaster: root\ncmd: {_command(shared, 'cmd')}\n")
        s.set(default_privs=name)
        sock = s.queue_dir / "private" / "local"
        proc = subprocess.Popen([sys.executable, "-m", "pymailsys.daemons.local", "-c", str(s.etc),
                                 "-n", "local", "-L", str(sock)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            assert proc.wait(30) == 1
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        main_cf = re.escape(str(s.etc / "main.cf"))
        reason = {"group root": f"parameter default_privs: user {name} has privileged group ID",
                  "mail_owner": "parameters default_privs and mail_owner specify the same user "
                                "postfix",
                  "root": "parameter default_privs: user root has privileged user ID"}[bad]
        s.wait_log(rf"postfix/local\[\d+\]: fatal: file {main_cf}: {reason}$")
        assert os.listdir(shared) == []
