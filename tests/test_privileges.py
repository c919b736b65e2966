"""pymailsys.privileges: the one place that resolves the mail system's accounts."""

from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from pathlib import Path

import pytest

from pymailsys import config, privileges
from pymailsys.queue import setup as spool_setup


def load(tmp_path: Path, **values: str) -> config.Config:
    (tmp_path / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
    return config.load(str(tmp_path))


def test_accounts_resolve_or_are_refused_in_postfix_words(tmp_path: Path) -> None:
    me, my_group = pwd.getpwuid(os.geteuid()).pw_name, grp.getgrgid(os.getegid()).gr_name
    cfg = load(tmp_path, mail_owner=me, setgid_group=my_group)
    if os.geteuid() != 0:
        assert privileges.mail_owner(cfg).uid == os.geteuid()
        assert privileges.setgid_group(cfg) == (os.getegid(), my_group)
    cfg = load(tmp_path, mail_owner="no-such-user-pms", setgid_group="no-such-group-pms")
    main_cf = tmp_path / "main.cf"
    with pytest.raises(privileges.PrivilegeError, match=f"file {main_cf}: parameter mail_owner: "
                       "unknown user name value: no-such-user-pms"):
        privileges.mail_owner(cfg)
    with pytest.raises(privileges.PrivilegeError, match=f"file {main_cf}: parameter setgid_group: "
                       "unknown group name: no-such-group-pms"):
        privileges.setgid_group(cfg)
    cfg = load(tmp_path, mail_owner="root", setgid_group="root")
    with pytest.raises(privileges.PrivilegeError, match="user root has privileged user ID"):
        privileges.mail_owner(cfg)
    with pytest.raises(privileges.PrivilegeError, match="group root has privileged group ID"):
        privileges.setgid_group(cfg)
    assert privileges.user_name(0) == "root" and privileges.group_name(0) == "root"
    assert privileges.user_name(2**31 - 3) == str(2**31 - 3)


@pytest.mark.root
def test_spool_setup_refuses_an_unknown_setgid_group(tmp_path: Path) -> None:
    cfg = load(tmp_path, queue_directory=str(tmp_path / "q"), data_directory=str(tmp_path / "d"),
               mail_owner="nobody", setgid_group="no-such-group-pms")
    with pytest.raises(spool_setup.SetupError, match="parameter setgid_group: unknown group name"):
        spool_setup.expected_layout(cfg)


@pytest.mark.root
def test_spool_setup_refuses_shared_or_privileged_accounts(tmp_path: Path) -> None:
    """postfix check/start refuse the accounts Postfix's programs refuse at start-up."""
    main_cf = tmp_path / "main.cf"
    for values, reason in (
            ({"default_privs": "postfix"}, "parameters default_privs and mail_owner specify "
                                           "the same user postfix"),
            ({"default_privs": "root"}, "parameter default_privs: user root has privileged "
                                        "user ID"),
            ({"default_privs": "nobody", "setgid_group": grp.getgrgid(
                pwd.getpwnam("nobody").pw_gid).gr_name},
             "parameters default_privs and setgid_group: user nobody and group .* have the "
             "same group ID")):
        cfg = load(tmp_path, queue_directory=str(tmp_path / "q"),
                   data_directory=str(tmp_path / "d"), mail_owner="postfix", **values)
        with pytest.raises(spool_setup.SetupError, match=f"^file {main_cf}: {reason}"):
            spool_setup.expected_layout(cfg)


@pytest.mark.root
def test_as_user_blocks_nest_and_each_exit_restores_the_outer_user(throwaway_user: str) -> None:
    """as_user blocks nest (a step run as another user inside a user's block, as local
    kept its markers until 2026-12-06). Inside a block the group set in force
    (effective gid and supplementary groups, what access checks see) is exactly the
    user's; after the last one root's groups are back."""
    pw, nobody = pwd.getpwnam(throwaway_user), pwd.getpwnam("nobody")
    root_groups = sorted(os.getgroups())

    def ids() -> tuple[int, int, set[int]]:
        return os.geteuid(), os.getegid(), {os.getegid(), *os.getgroups()}

    with privileges.as_user(pw.pw_uid, pw.pw_gid):
        assert ids() == (pw.pw_uid, pw.pw_gid, {pw.pw_gid})
        with privileges.as_user(nobody.pw_uid, nobody.pw_gid, [nobody.pw_gid, 0]):
            assert ids() == (nobody.pw_uid, nobody.pw_gid, {nobody.pw_gid, 0})
        assert ids() == (pw.pw_uid, pw.pw_gid, {pw.pw_gid})
        with pytest.raises(RuntimeError), privileges.as_user(nobody.pw_uid, nobody.pw_gid):
            raise RuntimeError("the block fails")
        assert ids() == (pw.pw_uid, pw.pw_gid, {pw.pw_gid})
    assert (os.geteuid(), os.getegid(), sorted(os.getgroups())) == (0, 0, root_groups)


SWITCHES = """
import os, sys
from pymailsys import privileges
os.setgroups([int(g) for g in sys.argv[3:]])
uid, gid = int(sys.argv[1]), int(sys.argv[2])
for _ in range(3):
    with privileges.as_user(uid, gid):
        assert (os.geteuid(), os.getegid()) == (uid, gid)
        assert {os.getegid(), *os.getgroups()} == {gid}, os.getgroups()
        with privileges.as_user(65534, 65534):
            assert {os.getegid(), *os.getgroups()} == {65534}, os.getgroups()
        assert {os.getegid(), *os.getgroups()} == {gid}, os.getgroups()
assert sorted(os.getgroups()) == sorted(int(g) for g in sys.argv[3:]), os.getgroups()
"""


@pytest.mark.root
@pytest.mark.parametrize("root_groups, setgroups_calls", [([], 0), ([0, 4], 12)])
def test_as_user_sets_the_groups_only_when_the_group_set_changes(
        throwaway_user: str, tmp_path: Path, root_groups: list[int], setgroups_calls: int) -> None:
    """Each credential call costs the kernel a new credential set: a daemon whose root has
    no supplementary groups (local, virtual under master) switches without setgroups; one
    whose root has some gets the user's group set and root's back exactly."""
    pw = pwd.getpwnam(throwaway_user)
    trace = tmp_path / "strace.txt"
    result = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=setgroups", "-o", str(trace), sys.executable,
         "-c", SWITCHES, str(pw.pw_uid), str(pw.pw_gid), *map(str, root_groups)],
        capture_output=True, text=True, timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    calls = [line for line in trace.read_text().splitlines() if "setgroups(" in line]
    assert len(calls) - 1 == setgroups_calls, calls  # the script's own setgroups first


BEYOND_UID_T = """
import os
from pymailsys import privileges
for uid, gid in ((1 << 33, 5000), (5000, 1 << 33), (0xFFFFFFFF, 5000)):
    try:
        with privileges.as_user(uid, gid):
            raise SystemExit(f"switched to {uid}/{gid}")
    except privileges.PrivilegeError as e:
        print(e)
    assert (os.geteuid(), os.getegid(), os.getgroups()) == (0, 0, [0]), os.getgroups()
"""


@pytest.mark.root
def test_as_user_refuses_an_id_beyond_uid_t_and_stays_root() -> None:
    """An id that is no uid_t (a table's huge number) is a PrivilegeError, and the
    process keeps root's own ids and groups (an OverflowError used to escape after
    the groups and the gid had changed, leaving root with the user's groups)."""
    result = subprocess.run([sys.executable, "-c", "import os; os.setgroups([0])\n" + BEYOND_UID_T],
                            capture_output=True, text=True, timeout=60, cwd="/")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("cannot switch to uid ") for line in lines)
    assert "Invalid argument" in lines[2]
