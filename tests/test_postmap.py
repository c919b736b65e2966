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


DEBIAN = {"postmap": "/usr/sbin/postmap", "postalias": "/usr/sbin/postalias"}


@pytest.fixture(params=["ours", "debian"])
def argv(request):
    """Our postmap, then Debian's (skipped when it is not installed)."""
    if request.param == "ours":
        return POSTMAP
    if not os.path.exists(DEBIAN["postmap"]):
        pytest.skip("Debian's postfix is not installed")
    return [DEBIAN["postmap"]]

# Sources whose keys and names Postfix reads in ways easy to get wrong: a key ends at
# white space outside quotes and not after a backslash (and keeps both), an unbalanced
# quote drops the line, a "key:" is warned about; an alias name is RFC 822 tokens
# before the first ":" (quotes and backslashes removed), a name with "@" or "%" or a
# "," is refused, comments stay; duplicate warnings come in line order.
POSTMAP_SOURCE = ('a\\ b c\n"x y"z v\n"unbal x\nk: v\n\\"q v2\nk\\\n  cont\nUPPER V\n'
                  'Foo@Example.COM value1\nfoo@example.com dupvalue\n  cont\n"q2 x"yy\n'
                  "  leading ws line\nnokey\nkey3 v3 # not a comment\n")
POSTALIAS_SOURCE = """Root: admin, "quoted user"@x
"Quoted Name": v1
"with:colon" : v2
inc: :include:/etc/foo
cont: a,
  b,
\tc
noval:
dup: one
DUP: two
a\\:b: esc
user@example.com: x
user%host: y
a, b: z
"a b"@x: w
name (comment): c1
<angle>: c2
e: ""
x:y:z
esc\\"q: v
@: at
"""


def _built(argv: list[str], conf, program: str, source: str) -> tuple[list[str], list[str]]:
    """Build conf/NAME from source with argv; (postmap -s lines, warnings)."""
    src = conf / program
    src.write_text(source)
    built = subprocess.run([*argv, "-c", str(conf), str(src)], capture_output=True, text=True,
                           timeout=60)
    assert built.returncode == 0, built.stderr
    dump = subprocess.run([*argv, "-c", str(conf), "-s", str(src)], capture_output=True,
                          text=True, timeout=60)
    entries = sorted(line for line in dump.stdout.splitlines() if not line.startswith("YP_"))
    warnings = [line.split(": warning: ", 1)[1].replace(".db: ", ".lmdb: ")
                for line in built.stderr.splitlines()]
    return entries, warnings


@pytest.mark.parametrize("program", ["postmap", "postalias"])
def test_sources_read_as_debian_postfix(conf, program):
    source = POSTMAP_SOURCE if program == "postmap" else POSTALIAS_SOURCE
    ours = _built(POSTMAP if program == "postmap" else POSTALIAS, conf, program, source)
    src = conf / program
    expected = {
        "postmap": (sorted([
            '"q2 x"yy\tleading ws line', '"x y"z\tv', '\\"q\tv2', "a\\ b\tc", "foo@example.com\tvalue1",
            "k:\tv", "k\\ \tcont", "key3\tv3 # not a comment", "upper\tV"]), [
            f"{src}, line 3: unbalanced '\"' in '\"unbal x' -- ignoring this line",
            f'{src}, line 4: record is in "key: value" format; is this an alias file?',
            f'{src}.lmdb: duplicate entry: "foo@example.com"',
            f"{src}, line 14: expected format: key whitespace value"]),
        "postalias": (sorted([
            "@:\t@", "a:b:\tesc", "cont:\ta, b, c", "dup:\tone", "inc:\t:include:/etc/foo",
            "quoted name:\tv1", 'root:\tadmin, "quoted user"@x', "with:colon:\tv2",
            "name (comment):\tc1", "<angle>:\tc2", 'e:\t""', "x:\ty:z", 'esc"q:\tv']), [
            f"{src}, line 8: need name:value pair",
            f'{src}.lmdb: duplicate entry: "dup"',
            f"{src}, line 12: name must be local",
            f"{src}, line 13: name must be local",
            f"{src}, line 14: need name:value pair",
            f"{src}, line 15: name must be local",
            f"{src}, line 21: name must be local"]),
    }[program]
    assert ours == expected
    if os.path.exists(DEBIAN[program]):
        assert _built([DEBIAN[program]], conf, program, source) == expected


def test_texthash_reads_as_postmap_and_warns_of_duplicates(conf):
    src = conf / "t"
    src.write_text('a v1\nA v2\nb\n"x y" q\nk: v\n')
    os.utime(src, (time.time() - 3600,) * 2)  # Postfix rereads a file changed this second
    for argv in [POSTMAP] + ([["/usr/sbin/postmap"]] if os.path.exists(DEBIAN["postmap"]) else []):
        got = run(argv, conf, "-q", "-", f"texthash:{src}", stdin='a\n"x y"\nk:\nb\n')
        assert got.stdout == 'a\tv1\n"x y"\tq\nk:\tv\n'
        assert [line.split(": warning: ", 1)[1] for line in got.stderr.splitlines()] == [
            f'{src}, line 2: duplicate entry: "A"',
            f"{src}, line 3: expected format: key whitespace value -- ignoring this line",
            f'{src}, line 5: record is in "key: value" format; is this an alias file?']


MESSAGE_TABLE = "/^$/ empty\n/^(.*)$/ any[$1]\n"
MESSAGES = {
    "Subject: hello\nX-Folded: a\n\tb\nTo: x\n\nbody line\n\nlast\n": {
        "-h": ["Subject: hello\tany[Subject: hello]", "X-Folded: a\n\tb\tany[X-Folded: a\n\tb]",
               "To: x\tany[To: x]"],
        "-b": ["\tempty", "body line\tany[body line]", "\tempty", "last\tany[last]"]},
    "Subject: x\nnot a header\nY: z\n\nb\n": {
        "-h": ["Subject: x\tany[Subject: x]"],
        "-b": ["\tempty", "not a header\tany[not a header]", "Y: z\tany[Y: z]", "\tempty",
               "b\tany[b]"]},
    "Subject: x\n": {"-h": ["Subject: x\tany[Subject: x]"], "-b": []},
}


def test_query_message_headers_and_body(conf, argv):
    """-h / -b with -q -: a message's primary headers (a folded one is one key) / body
    lines as keys, as header_checks and body_checks see them; -q - takes each line as
    it is, white space and empty lines too."""
    table = conf / "checks"
    table.write_text(MESSAGE_TABLE)
    spec = f"regexp:{table}"
    for message, expected in MESSAGES.items():
        for flags in ("-h", "-b", "-hb"):
            got = run(argv, conf, flags, "-q", "-", spec, stdin=message)
            want = expected["-h"] * ("h" in flags) + expected["-b"] * ("b" in flags)
            assert got.stdout == "".join(line + "\n" for line in want), (message, flags)
    assert run(argv, conf, "-q", "-", spec, stdin=" a \n\nb\n").stdout == (
        " a \tany[ a ]\n\tempty\nb\tany[b]\n")
    refused = run(argv, conf, "-h", "-q", "x", spec)
    assert refused.returncode == 1
    assert refused.stderr.endswith('fatal: specify -b -h or -m only with "-q -"\n')
    alone = run(argv, conf, "-m", "-q", "-", spec, stdin="x\n")
    assert alone.stdout == "x\tany[x]\n"
    assert alone.stderr.endswith("warning: ignoring -m option without -b or -h\n")


# table specs that Postfix refuses, and why; and ones it takes
SPEC_ANSWERS = {
    "inline:{ }": 'fatal: empty table: "inline:{ }"; need "inline:{name=value...}"',
    "inline:{a}": "fatal: missing '=' after attribute name: \"inline:{a}\"; "
                  'need "inline:{name=value...}"',
    "inline:{a=1": 'fatal: bad syntax: "inline:{a=1"; need "inline:{name=value...}"',
    "static:": 'fatal: open dictionary: expecting "type:name" form instead of "static:"',
    "static:{a": "fatal: bad static:name syntax: missing '}' in \"{a\"",
    "static:{a}b": "fatal: bad static:name syntax: syntax error after '}' in \"{a}b\"",
    "static:{ a b }": "a b",
    "inline:{A=1, { b = x y }}": "x y",
}


def test_inline_and_static_specs_as_postfix(conf, argv):
    for spec, answer in SPEC_ANSWERS.items():
        got = run(argv, conf, "-q", "b", spec)
        if answer.startswith("fatal: "):
            assert (got.returncode, got.stdout) == (1, ""), spec
            assert got.stderr == f"postmap: {answer}\n", spec
        else:
            assert (got.returncode, got.stdout) == (0, answer + "\n"), spec


def test_dump_of_a_table_that_cannot_be_listed_is_refused(conf, argv):
    table = conf / "r"
    table.write_text("/a/ b\n")
    for spec in (f"regexp:{table}", f"pcre:{table}", "static:x"):
        got = run(argv, conf, "-s", spec)
        assert (got.returncode, got.stdout) == (1, ""), spec
        assert got.stderr == f"postmap: fatal: table {spec}: sequence operation is not supported\n"
    # a table that can be listed is (in an order of its own: Debian's varies)
    listed = run(argv, conf, "-s", "inline:{b=1, a=2}").stdout
    assert sorted(listed.splitlines()) == ["a\t2", "b\t1"], listed


@pytest.mark.parametrize("program", ["postmap", "postalias"])
@pytest.mark.parametrize("ours", [True, False], ids=["ours", "debian"])
def test_non_utf8_source_lines_are_skipped_with_smtputf8(conf, program, ours):
    """With smtputf8_enable (the default from compatibility level 1), a source line that
    is not UTF-8 is skipped with Postfix's warning; without it, it is kept as it is."""
    argv = (POSTMAP if program == "postmap" else POSTALIAS) if ours else [DEBIAN[program]]
    if not os.path.exists(argv[0]):
        pytest.skip("Debian's postfix is not installed")
    sep = " " if program == "postmap" else ": "
    src = conf / "t"
    src.write_bytes(f"a{sep}1\nb\xff{sep}2\nc{sep}\u00e9\n".encode("utf-8", "surrogateescape")
                    .replace(b"\xc3\xbf", b"\xff"))
    for setting, kept in (("yes", False), ("no", True)):
        (conf / "main.cf").write_text(f"smtputf8_enable = {setting}\n")
        built = subprocess.run([*argv, "-c", str(conf), str(src)], capture_output=True,
                               timeout=60)
        warned = [line.split(b": warning: ", 1)[1] for line in built.stderr.splitlines()]
        assert warned == ([] if kept else [f'{src}, line 2: non-UTF-8 input "b?{sep}2" -- '
                                           "ignoring this line".encode()])
        found = subprocess.run([*argv, "-c", str(conf), "-q", "b\udcff".encode(
            "utf-8", "surrogateescape"), str(src)], capture_output=True, timeout=60)
        assert (found.returncode == 0) == kept
        assert subprocess.run([*argv, "-c", str(conf), "-q", "c", str(src)],
                              capture_output=True, timeout=60).stdout == "\u00e9\n".encode()


def test_delete_keys_from_stdin_as_written(conf, argv):
    """``-d -`` takes each line as the key, white space included, as Postfix does."""
    src = conf / "t"
    src.write_text("a 1\nb 2\n")
    assert run(argv, conf, str(src)).returncode == 0
    assert run(argv, conf, "-d", "-", str(src), stdin=" a\n\n").returncode == 1
    assert run(argv, conf, "-q", "a", str(src)).stdout == "1\n"
    assert run(argv, conf, "-d", "-", str(src), stdin="a\n").returncode == 0
    assert run(argv, conf, "-q", "a", str(src)).returncode == 1
