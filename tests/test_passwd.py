"""passwd.Accounts, the one account cache of a process (local's recipients and the
unix:passwd.byname table): an answer is kept while the password file is the same
file, unchanged, and for at most ttl seconds; "no such account" only as long as the
caller accepts (local: never; the table: a second); the cache is bounded. A kept answer is the very object getpwnam returned the first time;
a fresh one is a new object (getpwnam builds one per call)."""

from __future__ import annotations

import os
import pwd
import subprocess
import uuid
from pathlib import Path

import pytest
from conftest import local_account

from pymailsys import maps, passwd


@pytest.fixture
def accounts(tmp_path: Path) -> passwd.Accounts:
    """A cache whose password file is a scratch file (the accounts still come from getpwnam)."""
    path = tmp_path / "passwd"
    path.write_text("one\n")
    return passwd.Accounts(str(path))


def test_kept_while_the_file_is_unchanged(accounts: passwd.Accounts) -> None:
    first = accounts.find("root")
    assert first == pwd.getpwnam("root")
    assert accounts.find("root") is first


@pytest.mark.parametrize("change", ["content", "mtime", "replaced"])
def test_any_change_of_the_file_is_seen(accounts: passwd.Accounts, change: str) -> None:
    path = Path(accounts.path)
    first = accounts.find("root")
    if change == "content":
        path.write_text("two\n")  # the size changes
    elif change == "mtime":
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    else:  # another file of the same size and times in its place (a new inode)
        st = path.stat()
        new = path.with_name("passwd.new")
        new.write_text("one\n")
        os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
        new.rename(path)
    again = accounts.find("root")
    assert again == first and again is not first
    assert accounts.find("root") is again


def test_at_most_ttl_seconds(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("one\n")
    accounts = passwd.Accounts(str(path), ttl=0.0)
    first = accounts.find("root")
    assert accounts.find("root") is not first


def test_without_the_file_nothing_is_kept(tmp_path: Path) -> None:
    accounts = passwd.Accounts(str(tmp_path / "missing"))
    first = accounts.find("root")
    assert first == pwd.getpwnam("root")
    assert accounts.find("root") is not first


def test_bounded(tmp_path: Path) -> None:
    path = tmp_path / "passwd"
    path.write_text("one\n")
    accounts = passwd.Accounts(str(path), limit=2)
    root, daemon = accounts.find("root"), accounts.find("daemon")
    assert accounts.find("root") is root and accounts.find("daemon") is daemon
    accounts.find("nobody")  # a third entry: the full cache is emptied first
    assert len(accounts.entries) <= 2
    assert accounts.find("root") is not root


def test_no_account_and_names_getpwnam_cannot_take(accounts: passwd.Accounts) -> None:
    assert accounts.find("no-such-user-" + uuid.uuid4().hex[:8]) is None
    assert accounts.find("ro\0ot") is None


@pytest.mark.accounts
@pytest.mark.root
def test_no_such_account_is_never_kept(accounts: passwd.Accounts) -> None:
    """An account added after a lookup that did not find it is found at once, although
    the cache's file did not change."""
    name = "pmt" + uuid.uuid4().hex[:8]
    assert accounts.find(name) is None
    with local_account(name):
        found = accounts.find(name)
        assert found is not None and found.pw_name == name


@pytest.mark.accounts
@pytest.mark.root
def test_no_such_account_is_kept_as_long_as_the_caller_accepts(accounts: passwd.Accounts) -> None:
    """A caller that accepts an old "no such account" (the table: smtpd asks for
    user@domain, a miss, at every RCPT) gets it from the cache while the file is
    unchanged; one that does not (local) finds the account added meanwhile; a change
    of the file drops the kept miss for everyone."""
    name = "pmt" + uuid.uuid4().hex[:8]
    assert accounts.find(name, missing_ttl=3600) is None
    with local_account(name):
        assert accounts.find(name, missing_ttl=3600) is None  # kept: getpwnam not asked
        found = accounts.find(name)
        assert found is not None and found.pw_name == name
        assert accounts.find(name, missing_ttl=3600) is found  # the fresh answer is kept
        subprocess.run(["userdel", name], check=True)
        assert accounts.find(name, missing_ttl=3600) is found  # the scratch file is unchanged
        Path(accounts.path).write_text("two\n")
        assert accounts.find(name, missing_ttl=3600) is None


@pytest.mark.accounts
@pytest.mark.root
def test_an_account_added_to_the_file_is_found_by_the_table_at_once() -> None:
    """unix:passwd.byname keeps a miss for a second, but useradd changes /etc/passwd:
    the next lookup asks getpwnam again."""
    table = maps.PasswdTable("unix", "passwd.byname")
    name = "pmt" + uuid.uuid4().hex[:8]
    assert table.lookup(name) is None
    with local_account(name):
        line = table.lookup(name)
        assert line is not None and line.startswith(f"{name}:")


def test_passwd_table_answers_the_passwd_line() -> None:
    """unix:passwd.byname (local_recipient_maps) answers through the process's cache."""
    table = maps.PasswdTable("unix", "passwd.byname")
    root = pwd.getpwnam("root")
    assert table.lookup("root") == (f"root:{root.pw_passwd}:0:{root.pw_gid}:{root.pw_gecos}:"
                                    f"{root.pw_dir}:{root.pw_shell}")
    assert table.lookup("no-such-user-" + uuid.uuid4().hex[:8]) is None
    assert table.lookup("ro\0ot") is None
    assert passwd.ACCOUNTS.find("root") is passwd.ACCOUNTS.find("root")


def test_pinned_finds_check_the_file_once(accounts: passwd.Accounts) -> None:
    """smtpd's keys of one recipient are one moment's lookups (pin): the file is
    checked at the first; after unpin a change is seen at once, as before."""
    path = Path(accounts.path)
    accounts.pin()
    first = accounts.find("root")
    path.write_text("two\n")
    assert accounts.find("root") is first  # the same moment: not checked again
    accounts.unpin()
    again = accounts.find("root")
    assert again == first and again is not first  # the change, seen at the next find
    path.write_text("three\n")
    assert accounts.find("root") is not again  # unpinned: every find checks
