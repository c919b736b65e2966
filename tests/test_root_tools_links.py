"""Root's commands never follow a link planted in the queue directories (issue #11).

mail_owner (or whoever else can write a queue directory) plants symbolic links
there to a file and to a directory of root's outside the spool; postsuper,
postqueue's direct listing and -i, postcat -q and postfix set-permissions, run
as root, must leave root's things untouched.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import sys
import threading
from pathlib import Path

import pytest
from qf_helpers import make_spool, queue_file, tool

from pymailsys.queue import spool as queue
from pymailsys.queue import status_log

pytestmark = pytest.mark.root

SECRET = b"root's own file\n"


class RootThings:
    """A file and a directory of root's, outside the spool, and what they look like."""

    def __init__(self, base: Path) -> None:
        self.file = base / "root-file"
        self.file.write_bytes(SECRET)
        os.chmod(self.file, 0o600)
        os.utime(self.file, (1_700_000_000, 1_700_000_000))
        self.dir = base / "root-dir"
        self.dir.mkdir(mode=0o755)
        os.chmod(self.dir, 0o755)
        self.before = self.state()

    def state(self) -> tuple[object, ...]:
        f = os.lstat(self.file)
        d = os.lstat(self.dir)
        return (self.file.read_bytes(), f.st_uid, f.st_gid, stat.S_IMODE(f.st_mode), f.st_mtime,
                d.st_uid, stat.S_IMODE(d.st_mode), sorted(os.listdir(self.dir)))

    def untouched(self) -> bool:
        return self.state() == self.before


def plant(link: Path, target: Path, owner: pwd.struct_passwd) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    os.lchown(link, owner.pw_uid, owner.pw_gid)


def other_id(queue_id: str) -> str:
    """A well-formed queue ID hashed elsewhere than queue_id (depth 1)."""
    first = "A" if queue_id[0] != "A" else "B"
    return first + "0000" + queue_id[5:]


def hand_over(spool: Path, owner: pwd.struct_passwd) -> None:
    """Every queue directory and what is in it belongs to owner (pid/ stays root's)."""
    for d in queue.SPOOL_DIRS:
        if d.owner == "root":
            continue
        os.lchown(spool / d.name, owner.pw_uid, owner.pw_gid)
        for dirpath, dirnames, filenames in os.walk(spool / d.name):
            for name in dirnames + filenames:
                os.lchown(os.path.join(dirpath, name), owner.pw_uid, owner.pw_gid)


@pytest.mark.parametrize("spool_owner", ["mail_owner", "another account"])
def test_postsuper_works_as_mail_owner(tmp_path: Path, throwaway_user: str,
                                       spool_owner: str) -> None:
    """Postfix's postsuper becomes mail_owner whoever owns the directories; a held
    message released into a hashed deferred/ subdirectory that is a link to root's
    directory, and links to root's file in every queue, change nothing of root's."""
    etc, spool = make_spool(tmp_path)
    root = RootThings(tmp_path)
    owner = pwd.getpwnam("postfix" if spool_owner == "mail_owner" else throwaway_user)
    held = queue_file(spool, "hold", "a@x", ["r@y"], [b"x"])
    plant(spool / "deferred" / queue.hash_prefix(held, 1)[0], root.dir, owner)
    fake = other_id(held)
    for qname in ("deferred", "active", "incoming", "hold"):
        plant(Path(queue.Spool(str(spool)).path(qname, fake)), root.file, owner)
    plant(spool / "defer" / queue.hash_prefix(fake, 1)[0] / fake, root.file, owner)
    hand_over(spool, owner)
    for args in (["-H", "ALL"], ["-s"], ["-e", "ALL"], ["-H", held], ["-h", "ALL"],
                 ["-r", "ALL"], ["-r", fake], ["-d", fake], ["-d", "ALL"]):
        out = tool("postsuper", "-c", str(etc), *args)
        assert "Traceback" not in out.stderr.decode(), out.stderr
        assert root.untouched(), args
    assert root.file.read_bytes() == SECRET


def test_postsuper_fixes_structure_as_mail_owner(tmp_path: Path) -> None:
    """The ordinary work still gets done as mail_owner: a file in the wrong hashed
    subdirectory moves where it belongs (made by mail_owner)."""
    etc, spool = make_spool(tmp_path)
    qid = queue_file(spool, "deferred", "a@x", ["r@y"], [b"x"])
    right = Path(queue.Spool(str(spool)).path("deferred", qid))
    wrong = spool / "deferred" / ("A" if right.parent.name != "A" else "B")
    wrong.mkdir()
    right.rename(wrong / qid)
    shutil.chown(wrong, "postfix", "postfix")
    right.parent.rmdir()
    out = tool("postsuper", "-c", str(etc), "-s")
    assert out.returncode == 0, out.stderr
    assert right.is_file() and os.stat(right.parent).st_uid == pwd.getpwnam("postfix").pw_uid


def test_direct_listing_reads_as_mail_owner(tmp_path: Path) -> None:
    """With the system down root's mailq lists the queue itself, as Postfix's
    stand-alone showq does: as mail_owner, so a defer log linked to root's file
    shows nothing of it (and no traceback)."""
    etc, spool = make_spool(tmp_path)
    root = RootThings(tmp_path)
    root.file.write_bytes(status_log.Entry("secret@root.example", "4.0.0", "delayed",
                                           "TOPSECRET", "secret@root.example").encode())
    root.before = root.state()
    qid = queue_file(spool, "deferred", "a@x", ["r@y"], [b"x"])
    owner = pwd.getpwnam("postfix")
    plant(Path(queue.Spool(str(spool)).path("defer", qid)), root.file, owner)
    out = tool("postqueue", "-c", str(etc), "-p")
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert qid in text and "r@y" in text
    assert "TOPSECRET" not in text and "secret@root.example" not in text
    assert root.untouched()


def test_postqueue_i_does_not_touch_a_linked_file(tmp_path: Path) -> None:
    etc, spool = make_spool(tmp_path)
    root = RootThings(tmp_path)
    fake = "ABCDEF1234"
    plant(Path(queue.Spool(str(spool)).path("deferred", fake)), root.file, pwd.getpwnam("postfix"))
    hand_over(spool, pwd.getpwnam("postfix"))
    out = tool("postqueue", "-c", str(etc), "-i", fake)
    assert "Traceback" not in out.stderr.decode()
    assert root.untouched()


def test_postcat_q_refuses_a_linked_queue_file(tmp_path: Path) -> None:
    etc, spool = make_spool(tmp_path)
    root = RootThings(tmp_path)
    fake = "ABCDEF1234"
    plant(Path(queue.Spool(str(spool)).path("deferred", fake)), root.file, pwd.getpwnam("postfix"))
    out = tool("postcat", "-c", str(etc), "-q", fake)
    assert out.returncode == 1
    assert SECRET not in out.stdout
    assert f"postcat: fatal: open queue file {fake}: " in out.stderr.decode()
    # a linked hashed subdirectory is refused as well
    target = tmp_path / "root-dir"
    other = "BCDEF12345"
    (target / other).write_bytes(SECRET)
    plant(spool / "deferred" / "B", target, pwd.getpwnam("postfix"))
    out = tool("postcat", "-c", str(etc), "-q", other)
    assert out.returncode == 1 and SECRET not in out.stdout


def test_set_permissions_refuses_a_linked_queue_directory(tmp_path: Path) -> None:
    """queue_directory wrongly mail_owner's: a link planted in place of maildrop/ is
    refused by postfix set-permissions, and the directory it names keeps its mode."""
    etc, spool = make_spool(tmp_path)
    root = RootThings(tmp_path)
    with open(etc / "main.cf", "a") as f:
        f.write(f"data_directory = {tmp_path / 'data'}\n")
    owner = pwd.getpwnam("postfix")
    os.chown(spool, owner.pw_uid, owner.pw_gid)
    os.rmdir(spool / "maildrop")
    plant(spool / "maildrop", root.dir, owner)
    out = tool("postfix", "-c", str(etc), "set-permissions")
    assert out.returncode == 1
    assert f"fatal: not a directory: {spool / 'maildrop'}: owner and mode left alone" \
        in out.stderr.decode()
    assert root.untouched()
    assert os.stat(spool).st_uid == 0  # what comes before the link is fixed


def test_pid_file_is_not_opened_through_a_link(tmp_path: Path) -> None:
    """master's pid file: locking and reading it never follow a link or wait on a FIFO."""
    from pymailsys import pidfile

    root = RootThings(tmp_path)
    link = tmp_path / "master.pid"
    plant(link, root.file, pwd.getpwnam("postfix"))
    with pytest.raises(pidfile.PidFileError, match="cannot open file"):
        pidfile.lock(str(link), 12345)
    assert pidfile.holder(str(link)) is None
    fifo = tmp_path / "fifo.pid"
    os.mkfifo(fifo)
    with pytest.raises(pidfile.PidFileError, match="not a regular file"):
        pidfile.lock(str(fifo), 12345)
    assert pidfile.holder(str(fifo)) is None
    assert root.untouched()


def test_postmap_temporary_file_never_follows_a_link(tmp_path: Path) -> None:
    """Root builds a table whose (root-owned) source sits in a directory anyone can
    write, while another process keeps renaming links to root's file over every
    temporary name there (and the old predictable one): root's file keeps its
    bytes and mode over 200 builds."""
    from pymailsys.maps import build

    root = RootThings(tmp_path)
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    (shared / "table").write_text("key value\n")
    aside = shared / "aside"
    predictable = f"table.lmdb.tmp.{os.getpid()}"
    stop = threading.Event()

    def planter() -> None:
        while not stop.is_set():
            for name in set(os.listdir(shared)) - {"table", "table.lmdb", "aside"} | {predictable}:
                with contextlib.suppress(OSError):
                    os.symlink(root.file, aside)
                with contextlib.suppress(OSError):
                    os.rename(aside, shared / name)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    thread = threading.Thread(target=planter)
    thread.start()
    try:
        for _ in range(200):
            with contextlib.suppress(build.BuildError, OSError):
                build.build_table(f"hash:{shared / 'table'}")
            if not root.untouched():
                break
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(switch)
    assert root.untouched()


def test_trigger_never_writes_through_a_link(tmp_path: Path) -> None:
    """postqueue -f as root wakes qmgr through public/qmgr: a link planted there to
    root's FIFO (or file) receives nothing."""
    etc, spool = make_spool(tmp_path)
    root = RootThings(tmp_path)
    fifo = tmp_path / "root.fifo"
    os.mkfifo(fifo, 0o600)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        owner = pwd.getpwnam("postfix")
        plant(spool / "public" / "qmgr", fifo, owner)
        plant(spool / "public" / "pickup", root.file, owner)
        out = tool("postqueue", "-c", str(etc), "-f")
        assert "Cannot flush mail queue - mail system is down" in out.stderr.decode()
        try:
            got = os.read(reader, 64)
        except BlockingIOError:
            got = b""
        assert got == b""
    finally:
        os.close(reader)
    assert root.untouched()
