"""postmap and postalias, run as commands: builds, queries, edits, errors."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time

import pytest

POSTMAP = [sys.executable, "-m", "pymailsys.tools.postmap"]
POSTALIAS = [sys.executable, "-c",
             "from pymailsys.tools.postmap import postalias_main; postalias_main()"]


def run(cmd, conf, *args, stdin=""):
    return subprocess.run([*cmd, "-c", str(conf), *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "main.cf").write_text("")
    return tmp_path


def test_build_and_query(conf):
    src = conf / "t"
    src.write_text('Key1 value one\n  more\tstuff\nkey1 dup\n"a b" c\nnovalue\nK2\tv2 \n')
    p = run(POSTMAP, conf, f"hash:{src}")
    assert p.returncode == 0
    assert p.stderr.splitlines() == [
        f'postmap: warning: {src}.lmdb: duplicate entry: "key1"',
        f"postmap: warning: {src}, line 5: expected format: key whitespace value",
    ] or sorted(p.stderr.splitlines()) == sorted([
        f'postmap: warning: {src}.lmdb: duplicate entry: "key1"',
        f"postmap: warning: {src}, line 5: expected format: key whitespace value"])
    assert os.path.exists(f"{src}.lmdb")
    q = run(POSTMAP, conf, "-q", "KEY1", str(src))  # type-less: default_database_type
    assert (q.returncode, q.stdout) == (0, "value one  more\tstuff\n")
    assert run(POSTMAP, conf, "-q", '"a b"', str(src)).stdout == "c\n"
    assert run(POSTMAP, conf, "-q", "nope", str(src)).returncode == 1
    many = run(POSTMAP, conf, "-q", "-", str(src), stdin="key1\nnone\nk2\n")
    assert (many.returncode, many.stdout) == (0, "key1\tvalue one  more\tstuff\nk2\tv2\n")
    assert run(POSTMAP, conf, "-q", "-", str(src), stdin="none\n").returncode == 1
    dump = run(POSTMAP, conf, "-s", str(src))
    assert dump.stdout == '"a b"\tc\nk2\tv2\nkey1\tvalue one  more\tstuff\n'


def test_duplicates_replace_and_ignore(conf):
    src = conf / "t"
    src.write_text("a 1\na 2\n")
    p = run(POSTMAP, conf, "-r", str(src))
    assert p.stderr == ""
    assert run(POSTMAP, conf, "-q", "a", str(src)).stdout == "2\n"
    p = run(POSTMAP, conf, "-w", str(src))
    assert p.stderr == ""
    assert run(POSTMAP, conf, "-q", "a", str(src)).stdout == "1\n"


def test_no_folding(conf):
    src = conf / "t"
    src.write_text("MixedKey v\n")
    run(POSTMAP, conf, "-f", str(src))
    assert run(POSTMAP, conf, "-f", "-q", "MixedKey", str(src)).stdout == "v\n"
    assert run(POSTMAP, conf, "-f", "-q", "mixedkey", str(src)).returncode == 1


def test_incremental_and_delete(conf):
    src = conf / "t"
    src.write_text("k2 v2\nkey1 v1\n")
    run(POSTMAP, conf, str(src))
    p = run(POSTMAP, conf, "-i", str(src), stdin="new val\nk2 other\n")
    assert p.returncode == 0
    assert 'duplicate entry: "k2"' in p.stderr
    assert run(POSTMAP, conf, "-s", str(src)).stdout == "k2\tv2\nkey1\tv1\nnew\tval\n"
    assert run(POSTMAP, conf, "-d", "KEY1", str(src)).returncode == 0
    assert run(POSTMAP, conf, "-d", "key1", str(src)).returncode == 1
    assert run(POSTMAP, conf, "-s", str(src)).stdout == "k2\tv2\nnew\tval\n"


def test_pattern_tables_query(conf):
    src = conf / "re"
    src.write_text("/^(.*)@example\\.com$/ local:$1\n")
    q = run(POSTMAP, conf, "-q", "bob@example.com", f"regexp:{src}")
    assert (q.returncode, q.stdout) == (0, "local:bob\n")
    b = run(POSTMAP, conf, f"regexp:{src}")
    assert b.returncode == 1
    assert b.stderr == ("postmap: fatal: unsupported dictionary type: regexp does not "
                        "support bulk-mode creation.\n")


def test_errors(conf):
    p = run(POSTMAP, conf, "/nonexist/x")
    assert (p.returncode, p.stderr) == (1, "postmap: fatal: open /nonexist/x: No such file or directory\n")
    p = run(POSTMAP, conf, "-q", "x", "hash:/nonexist/x")
    assert (p.returncode, p.stderr) == (
        1, "postmap: fatal: open database /nonexist/x.lmdb: No such file or directory\n")
    p = run(POSTMAP, conf, "-q", "x", "foo:/x")
    assert (p.returncode, p.stderr) == (1, "postmap: fatal: unsupported dictionary type: foo\n")
    p = run(POSTMAP, conf)
    assert p.returncode == 1 and p.stderr.startswith("postmap: fatal: usage: postmap")


def test_mode_follows_source(conf):
    src = conf / "t"
    src.write_text("a b\n")
    os.chmod(src, 0o640)
    run(POSTMAP, conf, str(src))
    assert stat.S_IMODE(os.stat(f"{src}.lmdb").st_mode) == 0o640
    os.chmod(src, 0o600)
    run(POSTMAP, conf, str(src))
    assert stat.S_IMODE(os.stat(f"{src}.lmdb").st_mode) == 0o600
    os.chmod(src, 0o664)
    run(POSTMAP, conf, str(src))
    assert stat.S_IMODE(os.stat(f"{src}.lmdb").st_mode) == 0o644


@pytest.mark.root
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_root_builds_as_source_owner(conf):
    import pwd
    import tempfile

    nobody = pwd.getpwnam("nobody")
    # The source owner must be able to reach the directory (pytest's is root-only).
    conf = type(conf)(tempfile.mkdtemp(prefix="postmap-owner-"))
    os.chmod(conf, 0o777)
    (conf / "main.cf").write_text("")
    src = conf / "t"
    src.write_text("a b\n")
    os.chown(src, nobody.pw_uid, nobody.pw_gid)
    assert run(POSTMAP, conf, str(src)).returncode == 0
    st = os.stat(f"{src}.lmdb")
    assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid)
    import shutil

    shutil.rmtree(conf)


def test_postalias(conf):
    src = conf / "aliases"
    src.write_text('Root: a, b\n  c\n"x y": z\nbad line\npostmaster:root\nroot: dup\n')
    p = run(POSTALIAS, conf, str(src))
    assert p.returncode == 0
    assert f"postalias: warning: {src}, line 4: need name:value pair" in p.stderr
    assert f'postalias: warning: {src}.lmdb: duplicate entry: "root"' in p.stderr
    assert run(POSTALIAS, conf, "-q", "ROOT", str(src)).stdout == "a, b c\n"
    assert run(POSTALIAS, conf, "-q", "@", str(src)).stdout == "@\n"
    assert run(POSTALIAS, conf, "-s", str(src)).stdout == (
        "@:\t@\npostmaster:\troot\nroot:\ta, b c\nx y:\tz\n")


def test_library_build_aliases(conf):
    from pymailsys import maps
    from pymailsys.maps import build as mapbuild

    src = conf / "aliases"
    src.write_text("postmaster: root\n")
    assert mapbuild.build_aliases(f"hash:{src}") == 2
    maps._cache.clear()
    assert maps.open_table(f"hash:{src}").lookup("postmaster") == "root"
    maps._cache.clear()


def test_keys_longer_than_lmdb_limit(conf):
    """Keys over lmdb's 511 bytes work, as in Postfix's hash: (no traceback)."""
    long_key, other = "k" * 600, "L" + "x" * 599
    src = conf / "t"
    src.write_text(f"{long_key} v600\nshort vs\n")
    p = run(POSTMAP, conf, f"hash:{src}")
    assert (p.returncode, p.stderr) == (0, "")
    assert run(POSTMAP, conf, "-q", long_key.upper(), str(src)).stdout == "v600\n"
    assert run(POSTMAP, conf, "-q", long_key + "k", str(src)).returncode == 1
    assert run(POSTMAP, conf, "-q", "short", str(src)).stdout == "vs\n"
    p = run(POSTMAP, conf, "-i", str(src), stdin=f"{other} v2\n")
    assert (p.returncode, p.stderr) == (0, "")
    assert run(POSTMAP, conf, "-q", other, str(src)).stdout == "v2\n"
    assert run(POSTMAP, conf, "-s", str(src)).stdout.splitlines() == [
        f"{long_key}\tv600", f"{other.lower()}\tv2", "short\tvs"]
    assert run(POSTMAP, conf, "-d", long_key, str(src)).returncode == 0
    assert run(POSTMAP, conf, "-q", long_key, str(src)).returncode == 1
    assert run(POSTMAP, conf, "-q", other, str(src)).stdout == "v2\n"
    aliases = conf / "aliases"
    aliases.write_text(f"{long_key}: root\nab: cd\n")
    p = run(POSTALIAS, conf, str(aliases))
    assert (p.returncode, p.stderr) == (0, "")
    assert run(POSTALIAS, conf, "-q", long_key, str(aliases)).stdout == "root\n"
    assert run(POSTALIAS, conf, "-q", "ab", str(aliases)).stdout == "cd\n"


def test_lmdb_errors_are_build_errors(conf, monkeypatch):
    """lmdb's own errors (MapFullError ...) end as a BuildError, not a traceback."""
    import lmdb

    from pymailsys import maps
    from pymailsys.maps import build as mapbuild

    def full(*_a, **_k):
        raise lmdb.MapFullError("mdb_put: MDB_MAP_FULL")

    monkeypatch.setattr(maps, "write_lmdb", full)
    src = conf / "t"
    src.write_text("a b\n")
    with pytest.raises(mapbuild.BuildError, match=r"write database .*t\.lmdb: mdb_put"):
        mapbuild.build_table(str(src))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_while_writing(conf, sig):
    """A signal while the table is written waits until the new table is in place
    (as Postfix blocks signals around the update): then the process dies by it,
    with no temporary file left and no traceback."""
    src = conf / "big"
    src.write_text("old value\n")
    assert run(POSTMAP, conf, str(src)).returncode == 0
    with open(src, "w") as f:
        for i in range(400_000):
            f.write(f"key{i:08d}@example.com value-{i}-xxxxxxxxxxxxxxxxxxxxxxxx\n")
    # A shell that starts a job in the background has it ignore SIGINT (and Python
    # then never turns SIGINT into KeyboardInterrupt): give the tool default handling.
    p = subprocess.Popen([*POSTMAP, "-c", str(conf), str(src)], stderr=subprocess.PIPE,
                         text=True, preexec_fn=lambda: signal.signal(sig, signal.SIG_DFL))
    deadline = time.monotonic() + 30
    while not list(conf.glob("big.lmdb.*.tmp")):
        assert p.poll() is None and time.monotonic() < deadline, "no temporary file seen"
        time.sleep(0.001)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode == -sig
    assert "Traceback" not in err and err == ""
    assert list(conf.glob("big.lmdb.*")) == []
    q = run(POSTMAP, conf, "-q", "key00399999@example.com", str(src))
    assert q.stdout == "value-399999-xxxxxxxxxxxxxxxxxxxxxxxx\n"
