"""Shared fixtures: real instances on free loopback ports, root-only marks, tool checks."""

from __future__ import annotations

import contextlib
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
from harness import EVIDENCE_SYSTEMS, IS_ROOT, Instance, live_systems


def pytest_sessionstart(session: pytest.Session) -> None:
    # Commands run as `python -m pymailsys...` put the working directory first on
    # sys.path; from the checkout's top, its pymailsys/ (the library alone) would
    # shadow the installed package. Tests and the commands they start run from here
    # (changed once testpaths is resolved, which is relative to the checkout's top).
    os.chdir(os.path.dirname(os.path.abspath(__file__)))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_ROOT:
        return
    skip = pytest.mark.skip(reason="needs root (CI runs the suite as root)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


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
    after, if it is still there."""
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
