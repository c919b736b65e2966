"""Lookup tables: regexp, pcre, cidr, unionmap, pipemap and the key search orders.

Pattern-table results are compared with what Debian's Postfix postmap answers
for the same source file (``/usr/sbin/postmap -q KEY type:FILE``); the
expected values are also written out so the tests still say what they check.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from pymailsys import log, maps
from pymailsys.maps import search as addr_lookup

POSTFIX_POSTMAP = "/usr/sbin/postmap"

REGEXP_SOURCE = r"""# comment
if /^a/
/^ab(c)?/	AB[$1]
endif
/^(.*)@example\.com$/	local:$1 ${1}x $$
/^Upper/	up
/^Case/i	case
  continued
/x\/y/	slash
/^m(.)(.)(.)/	$3$2$1 ${3}
/bad(/	x
/^z/	$2
!/^n(a)/	$1
/^[[:digit:]]+$/	digits
/\<word\>/	word
!/^not/	other
"""

REGEXP_CASES = {
    "abd": "AB[]", "abc": "AB[c]", "bob@example.com": "local:bob bobx $",
    "Upper": "up", "upper": "up", "case": "other", "Case": "case  continued",
    "x/y": "slash", "mabc": "cba c", "z": "other", "123": "digits",
    "a word here": "word", "the word": "word", "nothing": None, "notz": None,
}

CIDR_SOURCE = """192.168.1.0/24 net1
10.0.0.1 host10
[10.0.0.2] host10b
2001:db8::/32 v6
[2001:db9::]/32 v6b
1.2.3.4/24 bad
!127.0.0.0/8 notlocal
if 172.16.0.0/12
172.16.1.0/24 inner
endif
0.0.0.0/0 any
"""

CIDR_CASES = {
    "192.168.1.5": "net1", "10.0.0.1": "host10", "10.0.0.2": "host10b",
    "2001:db8::1": "v6", "2001:DB9::1": "v6b", "172.16.1.1": "notlocal",
    "127.0.0.1": "any", "::1": None, "foo": None, "[10.0.0.1]": None,
}


@pytest.fixture
def tmp_tables(tmp_path):
    (tmp_path / "main.cf").write_text("")
    log.init_stderr_only("test")
    maps._cache.clear()
    maps._without_regsub.clear()
    yield tmp_path
    maps._cache.clear()
    maps._without_regsub.clear()


def postfix_answer(conf_dir, spec: str, key: str) -> str | None:
    """What Debian's postmap says, or None when not found."""
    proc = subprocess.run([POSTFIX_POSTMAP, "-c", str(conf_dir), "-q", key, spec],
                          capture_output=True, text=True, timeout=30)
    if proc.returncode == 1:
        return None
    assert proc.returncode == 0, proc.stderr
    return proc.stdout[:-1] if proc.stdout.endswith("\n") else proc.stdout


have_postfix = pytest.mark.skipif(not os.path.exists(POSTFIX_POSTMAP),
                                  reason="Debian's postfix is not installed")


@pytest.mark.parametrize("kind", ["regexp", "pcre"])
def test_regexp_and_pcre(tmp_tables, kind, capfd):
    src = tmp_tables / "re"
    source = REGEXP_SOURCE
    if kind == "pcre":
        source = source.replace(r"/\<word\>/", r"/\bword\b/")
    src.write_text(source)
    table = maps.open_table(f"{kind}:{src}")
    for key, expected in REGEXP_CASES.items():
        assert table.lookup(key) == expected, key
    err = capfd.readouterr().err
    if kind == "regexp":
        assert f"regexp map {src}, line 11: Unmatched ( or \\(" in err
    assert 'line 12: out of range replacement index "2": skipping this rule' in err
    assert "line 13: $number found in negative match replacement text" in err


@pytest.mark.parametrize("kind", ["regexp", "pcre"])
def test_tables_without_regsub_skip_rules_that_copy_the_key(tmp_tables, kind, capfd):
    """open_table(spec, regsub=False), as Postfix's DICT_FLAG_NO_REGSUB: each rule with
    $n is skipped with Postfix's warning (in an if block too), the others answer as
    before, unionmap and pipemap members likewise; the plain table is unchanged."""
    src = tmp_tables / "re"
    src.write_text(REGEXP_SOURCE if kind == "regexp" else
                   REGEXP_SOURCE.replace(r"/\<word\>/", r"/\bword\b/"))
    table = maps.open_table(f"{kind}:{src}")
    capfd.readouterr()
    strict = maps.open_table(f"{kind}:{src}", regsub=False)
    assert maps.open_table(f" {kind}:{src}", regsub=False) is strict
    err = capfd.readouterr().err
    for line in (3, 5, 10):
        assert (f"{kind} map {src}, line {line}: regular expression substitution is not "
                f"allowed: skipping this rule") in err
    skipped = {"abd", "abc", "bob@example.com", "mabc"}
    for key, expected in REGEXP_CASES.items():
        assert strict.lookup(key) == ("other" if key in skipped else expected), key
        assert table.lookup(key) == expected, key
    union = maps.open_table(f"unionmap:{{static:s, {kind}:{src}}}", regsub=False)
    assert union.lookup("abc") == "s,other" and union.lookup("Upper") == "s,up"
    pipe = maps.Maps(None, specs=[f"pipemap:{{{kind}:{src}, inline:{{other=o}}}}"],
                     regsub=False)
    assert pipe.find("mabc") == "o"
    assert maps.open_table("static:s", regsub=False) is maps.open_table("static:s")


@have_postfix
@pytest.mark.parametrize("kind", ["regexp", "pcre"])
def test_regexp_matches_postfix(tmp_tables, kind):
    if kind == "pcre" and "pcre" not in subprocess.run(
            ["/usr/sbin/postconf", "-c", str(tmp_tables), "-m"],
            capture_output=True, text=True).stdout.split():
        pytest.skip("postfix-pcre is not installed")
    src = tmp_tables / "re"
    source = REGEXP_SOURCE if kind == "regexp" else REGEXP_SOURCE.replace(
        r"/\<word\>/", r"/\bword\b/")
    src.write_text(source)
    table = maps.open_table(f"{kind}:{src}")
    for key in REGEXP_CASES:
        assert table.lookup(key) == postfix_answer(tmp_tables, f"{kind}:{src}", key), key


def test_cidr(tmp_tables, capfd):
    src = tmp_tables / "c"
    src.write_text(CIDR_SOURCE)
    table = maps.open_table(f"cidr:{src}")
    for key, expected in CIDR_CASES.items():
        assert table.lookup(key) == expected, key
    assert ('line 6: non-null host address bits in "1.2.3.4/24", perhaps you should use '
            '"1.2.3.0/24" instead: skipping this rule') in capfd.readouterr().err


@have_postfix
def test_cidr_matches_postfix(tmp_tables):
    src = tmp_tables / "c"
    src.write_text(CIDR_SOURCE)
    table = maps.open_table(f"cidr:{src}")
    for key in CIDR_CASES:
        assert table.lookup(key) == postfix_answer(tmp_tables, f"cidr:{src}", key), key


@have_postfix
def test_union_and_pipe_match_postfix(tmp_tables):
    specs = {
        "unionmap:{inline:{a=1, b=2}, inline:{a=3}}": ["a", "b", "c"],
        "pipemap:{inline:{a=b, x=y}, inline:{b=c}}": ["a", "x", "z"],
    }
    for spec, keys in specs.items():
        table = maps.open_table(spec)
        for key in keys:
            assert table.lookup(key) == postfix_answer(tmp_tables, spec, key), (spec, key)
    assert maps.open_table("unionmap:{inline:{a=1, b=2}, inline:{a=3}}").lookup("a") == "1,3"
    assert maps.open_table("pipemap:{inline:{a=b, x=y}, inline:{b=c}}").lookup("x") is None


def test_source_parsing_like_postmap(tmp_tables, capfd):
    text = 'Key1 value one\n  more\tstuff\n"a b" c\nnovalue\nK2\tv2 \n# c\n'
    entries = maps.parse_source(text, "/etc/x")
    assert entries == [(1, "Key1", "value one  more\tstuff"), (3, '"a b"', "c"), (5, "K2", "v2")]
    assert "/etc/x, line 4: expected format: key whitespace value" in capfd.readouterr().err


def test_alias_parsing(tmp_tables, capfd):
    text = 'Root: a, b\n  c\n"x y": z\nbad line\n"q:r" : s\n'
    assert maps.parse_alias_source(text, "/etc/aliases") == [
        (1, "root", "a, b c"), (3, "x y", "z"), (5, "q:r", "s")]
    assert "/etc/aliases, line 4: need name:value pair" in capfd.readouterr().err


def test_fail_table_is_an_error_not_not_found():
    m = maps.Maps(None, specs=["inline:{a=1}", "fail:x"])
    assert m.find("a") == "1"
    with pytest.raises(maps.TableError):
        m.find("b")


def test_unknown_type():
    with pytest.raises(maps.TableError, match="unsupported dictionary type: nosuch"):
        maps.open_table("nosuch:/x")


# --- search orders -------------------------------------------------------------

class Recorder:
    """A Maps stand-in that records the keys asked (the search order itself)."""

    def __init__(self, known: dict[str, str] | None = None) -> None:
        self.known = known or {}
        self.asked: list[tuple[str, bool]] = []

    def find(self, key: str, partial: bool = False) -> str | None:
        self.asked.append((key, partial))
        return self.known.get(key)


def test_address_order_local_domain():
    r = Recorder()
    assert addr_lookup.lookup_address(r, "user+ext@example.com", True, "+") is None
    assert r.asked == [("user+ext@example.com", False), ("user@example.com", True),
                       ("user+ext", True), ("user", True), ("@example.com", True)]


def test_address_order_remote_domain():
    r = Recorder()
    addr_lookup.lookup_address(r, "user+ext@example.com", False, "+")
    assert [k for k, _ in r.asked] == ["user+ext@example.com", "user@example.com", "@example.com"]


def test_address_match_keeps_unmatched_extension():
    r = Recorder({"user@example.com": "u@elsewhere"})
    m = addr_lookup.find_address(r, "user+ext@example.com", local_domain=False, delimiter="+")
    assert m == addr_lookup.AddressMatch("u@elsewhere", "user@example.com", "ext")


def test_address_not_split():
    for local in ("postmaster", "owner-list", "list-request", "-x", "x-"):
        assert addr_lookup.split_extension(local, "-") == (local, None)
    assert addr_lookup.split_extension("a-b+c", "+-") == ("a", "b+c")
    # local(8)'s split: a trailing delimiter splits off an empty extension, as split_addr
    assert addr_lookup.split_extension("x-", "-", trailing=True) == ("x", "")
    assert addr_lookup.split_extension("list-request", "-", trailing=True) == ("list-request", None)


def test_pattern_tables_only_get_full_keys(tmp_tables):
    src = tmp_tables / "re"
    src.write_text("/^user@/ pattern\n")
    m = maps.Maps(None, specs=[f"regexp:{src}", "inline:{{@example.com=domain}}"])
    # user@example.com is a full key: the regexp answers.
    assert addr_lookup.lookup_address(m, "user@example.com", False) == "pattern"
    # user+x@example.com: the regexp does not match it; user@example.com is a
    # PARTIAL key, which a pattern table is never asked, so @example.com wins.
    assert addr_lookup.lookup_address(m, "user+x@example.com", False, "+") == "domain"


def test_domain_orders():
    assert addr_lookup.domain_keys("a.b.example.com") == [
        "a.b.example.com", "b.example.com", "example.com", "com"]
    assert addr_lookup.domain_keys("a.example.com", parent_style=False) == [
        "a.example.com", ".example.com", ".com"]


def test_mail_access_order():
    r = Recorder()
    addr_lookup.lookup_mail_access(r, "u+x@sub.example.com", "+")
    assert r.asked == [("u+x@sub.example.com", False), ("u@sub.example.com", True),
                       ("sub.example.com", True), ("example.com", True), ("com", True),
                       ("u+x@", True), ("u@", True)]


def test_transport_order():
    r = Recorder()
    addr_lookup.lookup_transport(r, "u@sub.example.com")
    assert [k for k, _ in r.asked] == ["u@sub.example.com", "sub.example.com",
                                       ".example.com", ".com", "*"]


def test_client_order():
    r = Recorder()
    addr_lookup.lookup_client(r, "mail.example.com", "192.0.2.7")
    assert [k for k, _ in r.asked] == ["mail.example.com", "example.com", "com",
                                       "192.0.2.7", "192.0.2", "192.0", "192"]
    assert addr_lookup.ip_keys("2001:db8::1") == ["2001:db8::1", "2001:db8:", "2001:db8", "2001"]


@pytest.mark.skipif(shutil.which("true") is None, reason="no coreutils")
def test_lmdb_table_reopens_after_rebuild(tmp_tables):
    path = str(tmp_tables / "t")
    maps.write_lmdb(path + ".lmdb", [("a", "1")])
    table = maps.open_table(f"hash:{path}")
    assert isinstance(table, maps.LmdbTable)
    assert table.lookup("a") == "1"
    maps.write_lmdb(path + ".lmdb", [("a", "2")])
    table.checked = 0.0  # skip the once-a-second recheck delay
    assert table.lookup("a") == "2"


def test_table_source_continuation_keeps_white_space_as_postfix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Debian's postmap 3.7 -q answers "v1   v2", "a,\t\tb" and "a\r\tb" for these lines
    source = tmp_path / "t"
    source.write_bytes(b"key1 v1\n   v2\nkey2  a,\t\n# c\n\n\tb  \nk3 a\r\n\tb\r\n")
    table = maps.open_table(f"texthash:{source}")
    assert table.lookup("key1") == "v1   v2"
    assert table.lookup("key2") == "a,\t\tb"
    assert table.lookup("k3") == "a\r\tb"


def test_table_owner_is_the_owner_of_its_file_or_root(tmp_tables) -> None:  # type: ignore[no-untyped-def]
    # Postfix's dict->owner: a file's uid (0 trusted), tables without a file trusted
    uid = 4242 if os.geteuid() == 0 else os.getuid()
    maps.write_lmdb(str(tmp_tables / "h.lmdb"), [("a", "1")])
    (tmp_tables / "t").write_text("a 1\n")
    (tmp_tables / "r").write_text("/a/ 1\n")
    (tmp_tables / "c").write_text("10.0.0.0/8 1\n")
    for name in ("h.lmdb", "t", "r", "c"):
        if os.geteuid() == 0:
            os.chown(tmp_tables / name, uid, -1)
    for spec in (f"hash:{tmp_tables}/h", f"texthash:{tmp_tables}/t",
                 f"regexp:{tmp_tables}/r", f"pcre:{tmp_tables}/r", f"cidr:{tmp_tables}/c",
                 f"proxy:hash:{tmp_tables}/h"):
        assert maps.open_table(spec).owner == uid, spec
    for spec in ("static:x", "inline:{a=1}", "unix:passwd.byname", "fail:x", "environ:x",
                 "randmap:{a, b}", "unionmap:{static:x, inline:{a=1}}"):
        assert maps.open_table(spec).owner == 0, spec
    union = maps.open_table(f"unionmap:{{inline:{{a=1}}, hash:{tmp_tables}/h}}")
    assert union.owner == uid
    assert maps.open_table(f"pipemap:{{hash:{tmp_tables}/h, static:x}}").owner == uid


@pytest.mark.root
def test_table_owner_of_two_users_is_unknown_and_follows_a_rebuild(tmp_tables) -> None:  # type: ignore[no-untyped-def]
    if os.geteuid() != 0:
        pytest.skip("needs root")
    for name, uid in (("one", 4242), ("two", 4243)):
        maps.write_lmdb(str(tmp_tables / f"{name}.lmdb"), [("a", name)])
        os.chown(tmp_tables / f"{name}.lmdb", uid, -1)
    union = maps.open_table(f"unionmap:{{hash:{tmp_tables}/one, hash:{tmp_tables}/two}}")
    assert union.owner is None  # Postfix: DICT_OWNER_UNKNOWN
    one = maps.open_table(f"hash:{tmp_tables}/one")
    assert isinstance(one, maps.LmdbTable) and one.owner == 4242
    maps.write_lmdb(str(tmp_tables / "one.lmdb"), [("a", "root's")])  # rebuilt by root
    one.checked = 0.0  # skip the once-a-second recheck delay
    assert one.lookup("a") == "root's" and one.owner == 0


def test_maps_find_table_names_the_table_that_answered(tmp_tables) -> None:  # type: ignore[no-untyped-def]
    maps.write_lmdb(str(tmp_tables / "h.lmdb"), [("b", "2")])
    found = maps.Maps(None, specs=["inline:{a=1}", f"hash:{tmp_tables}/h"])
    assert found.find_table("a") == ("1", maps.open_table("inline:{a=1}"))
    assert found.find_table("B") == ("2", maps.open_table(f"hash:{tmp_tables}/h"))
    assert found.find_table("c") is None and found.find("b") == "2"


def test_regexp_pcre_and_cidr_tables_given_inline() -> None:
    """Postfix 3.7's dict_stream_open: ``type:{{rule}, {rule}}`` is the source itself,
    one rule per inner pair of braces (smtpd_forbidden_commands' default has one)."""
    table = maps.open_table("regexp:{{/^[^A-Z]/ Bogus}}")
    assert table.lookup("1abc") == "Bogus" and table.lookup("helo") is None
    assert table.owner == 0
    table = maps.open_table("pcre:{ {/^a(b)/ X$1}, {/c/ C} }")
    assert table.lookup("abz") == "Xb" and table.lookup("xc") == "C"
    assert maps.open_table("cidr:{{10.0.0.0/8 TEN}}").lookup("10.1.2.3") == "TEN"
    with pytest.raises(maps.TableError, match="missing '}'"):
        maps.open_table("regexp:{{/a/ b}")
