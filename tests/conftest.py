"""Shared fixtures: real instances on free loopback ports, root-only marks, tool checks."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from harness import EVIDENCE_SYSTEMS, IS_ROOT, Instance, live_systems, use_worker_ports


def pytest_configure(config: pytest.Config) -> None:
    workerinput = getattr(config, "workerinput", None)  # in a pytest-xdist worker only
    if workerinput is not None:
        use_worker_ports(int(workerinput["workerid"].removeprefix("gw")))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtestloop(session: pytest.Session) -> Iterator[None]:
    # Commands run as `python -m pymailsys...` put the working directory first on
    # sys.path; from the checkout's top, its pymailsys/ (the library alone) would
    # shadow the installed package. Tests and the commands they start run from here
    # (changed once the tests are collected: the paths to collect, and testpaths, are
    # relative to the checkout's top, in an xdist worker too).
    os.chdir(os.path.dirname(os.path.abspath(__file__)))
    yield


# scripts/check runs the suite in pytest-xdist workers, and they share /etc/passwd.
# Tests that add, change or delete local accounts (useradd, usermod, userdel) are
# marked "accounts" (or get the mark from one of ACCOUNT_FIXTURES) and hold
# ACCOUNTS_LOCK shared while they run (useradd and userdel lock /etc/passwd
# themselves); one that needs /etc/passwd unchanged while it runs is marked
# "passwd_unchanged" and holds it exclusively. local_account() fails a test that has
# no mark. The lock is a file in /tmp: it holds across runs too.
ACCOUNT_FIXTURES = frozenset({"throwaway_user", "python_user", "make_user", "accounts"})
ACCOUNTS_LOCK = "/tmp/pymailsys-tests-accounts.lock"

_running: pytest.Item | None = None  # the test being run, for local_account's check


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if ACCOUNT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.accounts)
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (CI runs the suite as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _accounts_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """ACCOUNTS_LOCK, shared for an "accounts" test, exclusive for "passwd_unchanged"
    (autouse: set up before, and torn down after, the fixture that makes the account)."""
    node = request.node
    exclusive = node.get_closest_marker("passwd_unchanged") is not None
    if not exclusive and node.get_closest_marker("accounts") is None:
        yield
        return
    fd = os.open(ACCOUNTS_LOCK, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[None]:
    global _running
    _running = item
    yield
    _running = None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test that failed in its setup or call: each live instance's evidence (its log's
    tail, queue and mailboxes) goes with the failure report, before teardown removes it."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and report.when in ("setup", "call"):
        for system in live_systems()[-EVIDENCE_SYSTEMS:]:
            report.sections.append((f"pymailsys evidence ({report.when})", system.evidence()))


def require_tool(path: str) -> str:
    """The tool's path; in CI a missing tool fails the test instead of skipping it."""
    found = shutil.which(path) or (path if os.path.exists(path) else None)
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail(f"{path} is not installed (scripts/check installs it as root)")
    pytest.skip(f"{path} is not installed")


def bench_module(name: str) -> ModuleType:
    """tests/bench/NAME.py as a module (the benchmarks are scripts, not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    path = Path(__file__).resolve().parent / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def pmsfixtures_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Daemons that master starts can import tests/pmsfixtures (echo services and the like)."""
    tests = os.path.dirname(os.path.abspath(__file__))
    monkeypatch.setenv("PYTHONPATH",
                       os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")])))


@pytest.fixture
def new_instance() -> Iterator[list[Instance]]:
    """Make instances with new_instance(...); all are stopped and removed afterwards."""
    made: list[Instance] = []

    class Factory(list):
        def __call__(self, **kwargs: object) -> Instance:
            inst = Instance(**kwargs)  # type: ignore[arg-type]
            made.append(inst)
            return inst

    yield Factory()  # type: ignore[misc]
    for inst in made:
        inst.cleanup()


@pytest.fixture
def instance(new_instance) -> Instance:  # type: ignore[no-untyped-def]
    """A started instance with Maildir delivery for the current user."""
    inst = new_instance(maildir=True)
    inst.start()
    return inst


@pytest.fixture
def mbox_instance(new_instance) -> Instance:  # type: ignore[no-untyped-def]
    inst = new_instance(maildir=False)
    inst.start()
    return inst


@pytest.fixture
def throwaway_user() -> Iterator[str]:
    """A throw-away local account (root only): no home directory, no login shell,
    created with useradd and deleted (with its group) afterwards."""
    if not IS_ROOT:
        pytest.skip("needs root")
    with local_account("pmt" + uuid.uuid4().hex[:8]) as name:
        yield name


@contextlib.contextmanager
def local_account(name: str, group: str | None = None) -> Iterator[str]:
    """Make the local account ``name`` (root only; no home directory, no login shell;
    its own new group, or ``group``) for the block, and delete it (with its own group)
    after, if it is still there. The test must be marked ``accounts`` (see ACCOUNTS_LOCK)."""
    if _running is not None and not _running.get_closest_marker("accounts"):
        pytest.fail(f"{_running.nodeid} makes an account: mark it @pytest.mark.accounts")
    subprocess.run(["useradd", "--no-create-home", "--home-dir", f"/nonexistent/{name}",
                    "--shell", "/usr/sbin/nologin", *(["--gid", group] if group else []), name],
                   check=True)
    try:
        yield name
    finally:
        subprocess.run(["userdel", name], check=False, stderr=subprocess.DEVNULL)


@pytest.fixture
def python_user(throwaway_user: str) -> str:
    """throwaway_user, when it can run sys.executable with pymailsys (skips otherwise)."""
    probe = subprocess.run(["runuser", "-u", throwaway_user, "--", sys.executable, "-c",
                            "import pymailsys"], capture_output=True, cwd="/")
    if probe.returncode != 0:
        pytest.skip(f"{sys.executable} with pymailsys is not usable by other users")
    return throwaway_user
