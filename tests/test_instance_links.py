"""`instance create` never writes through a symbolic link, and as root never into a
directory another account can write (security: root was made to overwrite and
chmod 0644 a root-only file through a link planted in DIR/etc)."""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SECRET = "root-only content\n"


def create(directory: Path | str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pymailsys.tools.instance", "create",
                           str(directory), "--port", "2999"], capture_output=True, text=True)


def secret_file(path: Path) -> Path:
    path.write_text(SECRET)
    os.chmod(path, 0o600)
    return path


def assert_untouched(target: Path) -> None:
    assert target.read_text() == SECRET
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


@pytest.mark.parametrize("name", ["main.cf", "master.cf", "aliases"])
def test_a_link_in_place_of_a_file_is_replaced_not_followed(tmp_path: Path, name: str) -> None:
    target = secret_file(tmp_path / "target")
    base = tmp_path / "inst"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / name).symlink_to(target)
    result = create(base)
    assert result.returncode == 0, result.stderr
    assert_untouched(target)
    written = base / "etc" / name
    assert not written.is_symlink()
    assert stat.S_IMODE(written.stat().st_mode) == 0o644
    assert "postmaster" in (base / "etc" / "aliases").read_text()


def test_etc_as_a_link_to_another_directory_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = tmp_path / "inst"
    base.mkdir()
    (base / "etc").symlink_to(elsewhere)
    result = create(base)
    assert result.returncode == 1
    assert f"instance: fatal: {base}/etc: " in result.stderr
    assert "symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []


@pytest.fixture
def user_dir(tmp_path: Path, throwaway_user: str) -> Path:
    """tmp_path/inst owned by a throw-away account (mode 0755), its etc/ too."""
    pw = pwd.getpwnam(throwaway_user)
    os.chmod(tmp_path, 0o755)
    base = tmp_path / "inst"
    (base / "etc").mkdir(parents=True)
    for path in (base, base / "etc"):
        os.chown(path, pw.pw_uid, pw.pw_gid)
    return base


@pytest.mark.parametrize("name", ["main.cf", "master.cf", "aliases"])
def test_root_refuses_a_directory_another_account_owns(user_dir: Path, tmp_path: Path,
                                                       name: str) -> None:
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    target = secret_file(secret / "file")
    (user_dir / "etc" / name).symlink_to(target)
    result = create(user_dir)
    assert result.returncode == 1
    assert f"instance: fatal: {user_dir}: owned by " in result.stderr
    assert_untouched(target)
    assert (user_dir / "etc" / name).is_symlink()


def test_root_writes_nothing_through_etc_linked_elsewhere(user_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (user_dir / "etc").rmdir()
    (user_dir / "etc").symlink_to(elsewhere)
    result = create(user_dir)
    assert result.returncode == 1
    assert list(elsewhere.iterdir()) == []


def test_root_refuses_a_link_another_account_planted_above_dir(user_dir: Path,
                                                               tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (user_dir / "up").symlink_to(real)
    result = create(user_dir / "up" / "inst")
    assert result.returncode == 1
    assert f"instance: fatal: {user_dir}: owned by " in result.stderr
    assert list(real.iterdir()) == []


def test_root_refuses_a_link_another_account_made_in_a_sticky_directory(
        tmp_path: Path, throwaway_user: str) -> None:
    """As Linux's protected_symlinks does, but whatever that sysctl says."""
    os.chmod(tmp_path, 0o755)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    real = tmp_path / "real"
    real.mkdir(mode=0o755)
    (sticky / "x").symlink_to(real)
    pw = pwd.getpwnam(throwaway_user)
    os.lchown(sticky / "x", pw.pw_uid, pw.pw_gid)
    result = create(sticky / "x" / "inst")
    assert result.returncode == 1
    assert f"instance: fatal: {sticky}/x: a symbolic link another account made" in result.stderr
    assert list(real.iterdir()) == []


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_root_refuses_to_make_dir_in_a_directory_others_can_write(tmp_path: Path,
                                                                  mode: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, mode)
    result = create(shared / "inst")
    assert result.returncode == 1
    assert f"instance: fatal: {shared}: writable by group or other" in result.stderr
    assert list(shared.iterdir()) == []


@pytest.mark.parametrize("sub", ["mail", "log"])
def test_mail_or_log_as_a_link_is_refused(tmp_path: Path, sub: str) -> None:
    """Root writes maillog and mailboxes there later: a link is refused at once."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    base = tmp_path / "inst"
    base.mkdir()
    (base / sub).symlink_to(elsewhere)
    result = create(base)
    assert result.returncode == 1
    assert f"instance: fatal: {base}/{sub}: " in result.stderr
    assert list(elsewhere.iterdir()) == []
