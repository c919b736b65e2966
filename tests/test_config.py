"""main.cf parsing and expansion: every form config.py's docstring promises."""

from __future__ import annotations

import pytest

from pymailsys import config


def load(tmp_path, text: str) -> config.Config:
    (tmp_path / "main.cf").write_text(text)
    return config.load(str(tmp_path))


def test_syntax(tmp_path):
    cfg = load(tmp_path, "# comment\n\nmyhostname=  mx.example.com  \n"
                         "relayhost = a\n  b\n# inside\n   c\nrelayhost = last\n"
                         "recipient_delimiter = +\n")
    assert cfg.get("myhostname") == "mx.example.com"
    assert cfg.get("relayhost") == "last"
    # continuation lines are joined as they are (Postfix 3.7's smtpd greets
    # with "220 pf.example a    b   c" for "smtpd_banner = $myhostname a\n    b   c")
    cfg = load(tmp_path, "relayhost = a\n  b\n# inside\n   c\n")
    assert cfg.get("relayhost") == "a  b   c"


def test_logical_lines_as_postfix_readllines():
    from pymailsys.config.lines import logical_lines

    warned: list[tuple[int, str]] = []
    text = "  orphan\n more\nkey  a,\t\n\tb  \n# c\n\n  c\r\nk3 v\x0bw\n"
    assert list(logical_lines(text, lambda n, line: warned.append((n, line)))) == [
        (3, "key  a,\t\tb    c\r"), (8, "k3 v\x0bw")]
    assert warned == [(1, "  orphan more")]


def test_expansion_forms(tmp_path):
    cfg = load(tmp_path, "\n".join([
        "myhostname = mx.example.com",
        "mydomain = example.com",
        "empty =",
        "a1 = $myhostname",
        "a2 = ${myhostname}",
        "a3 = $(myhostname)",
        "a4 = ${myhostname?yes}",
        "a5 = ${empty?yes}",
        "a6 = ${myhostname?{with space}}",
        "a7 = ${empty:fallback}",
        "a8 = ${myhostname:fallback}",
        "a9 = ${empty:{fb two}}",
        "b1 = ${myhostname?{v1}:{v2}}",
        "b2 = ${empty?{v1}:{v2}}",
        "b3 = $$literal",
        "b4 = $undefined.x",
        "b5 = ${{$mydomain} == {example.com} ? {eq} : {ne}}",
        "b6 = ${{10} < {9} ? {lt} : {ge}}",
        "b7 = ${{abc} != {abd} ? {ne} : {eq}}",
        "b8 = ${{3.6} <level {3.10} ? {older} : {newer}}",
        "b9 = ${{2} >=level {2} ? {ok} : {no}}",
        "c1 = ${{1} <=level {0} ? {yes} : {no}}",
        "c2 = ${{3.10} >level {3.9} ? {yes} : {no}}",
        "c3 = $a1/$mydomain",
    ]) + "\n")
    expected = {
        "a1": "mx.example.com", "a2": "mx.example.com", "a3": "mx.example.com",
        "a4": "yes", "a5": "", "a6": "with space", "a7": "fallback", "a8": "",
        "a9": "fb two", "b1": "v1", "b2": "v2", "b3": "$literal", "b4": ".x",
        "b5": "eq", "b6": "ge", "b7": "ne", "b8": "older", "b9": "ok", "c1": "no",
        "c2": "yes", "c3": "mx.example.com/example.com",
    }
    for name, value in expected.items():
        assert cfg.expand(cfg.raw(name) or "") == value, name


def test_defaults_and_compatibility_level(tmp_path):
    cfg = load(tmp_path, "compatibility_level = 0\n")
    assert cfg.get("mynetworks_style") == "subnet"
    assert cfg.get_bool("append_dot_mydomain") is True
    cfg = load(tmp_path, "compatibility_level = 3.6\n")
    assert cfg.get("mynetworks_style") == "host"
    assert cfg.get("myorigin") == cfg.get("myhostname")


def test_typed_access(tmp_path):
    cfg = load(tmp_path, "max_idle = 2m\nmaximal_queue_lifetime = 2\nbiff = no\n"
                         "max_use = many\nmydestination = a, b c,{d e}\n")
    assert cfg.get_time("max_idle") == 120
    assert cfg.get_time("maximal_queue_lifetime") == 2 * 86400  # default unit: days
    assert cfg.get_bool("biff") is False
    assert cfg.get_list("mydestination") == ["a", "b", "c", "{d e}"]
    with pytest.raises(config.ConfigError, match=r"main.cf, line 4: bad numerical configuration"):
        cfg.get_int("max_use")


def test_unknown_parameters_load_but_cannot_be_asked_for_undeclared(tmp_path):
    cfg = load(tmp_path, "some_admin_thing = 1\n")
    assert cfg.explicit()["some_admin_thing"] == "1"
    with pytest.raises(config.UnknownParameter):
        cfg.get("never_declared_anywhere")


def test_malformed_line_names_file_and_line(tmp_path):
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, "good = 1\n\nthis line is bad\n")
    assert f"{tmp_path}/main.cf, line 3" in str(e.value)
    with pytest.raises(config.ConfigError, match="line 1"):
        load(tmp_path, "  starts with space\n")


def test_recursion_is_an_error(tmp_path):
    cfg = load(tmp_path, "relayhost = $myorigin\nmyorigin = $relayhost\n")
    with pytest.raises(config.ConfigError, match="recursive"):
        cfg.get("relayhost")


def test_config_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("MAIL_CONFIG", str(tmp_path))
    assert config.resolve_config_dir(None) == str(tmp_path)
    assert config.resolve_config_dir("/x") == "/x"
    monkeypatch.delenv("MAIL_CONFIG")
    assert config.resolve_config_dir(None) == config.DEFAULT_CONFIG_DIR


def test_macro_expander_is_mac_expand_with_any_lookup():
    from pymailsys.config import ConfigError, MacroExpander

    attrs = {"user": "bob", "ext": "", "home": "/h/b ob", "ref": "$user"}
    plain = MacroExpander(attrs.get, recurse=False)
    # ${name?x}: x when the value is non-empty; ${name:x}: when undefined or empty
    assert plain.expand("${user?yes}${ext?no}${nope?no}") == "yes"
    assert plain.expand("${user:no}${ext:e}${nope:n}") == "en"
    assert plain.expand("${user?{a}:{b}}${ext?{a}:{b}}") == "ab"
    assert not plain.undefined
    assert plain.expand("$ref $$ $(user)") == "$user $ bob"  # values are not re-expanded
    assert plain.expand("x$nope") == "x" and plain.undefined
    filtered = MacroExpander(attrs.get, recurse=False, allowed=set("abcdefghijklmnopqrstuvwxyz/"))
    assert filtered.expand("/x $home") == "/x /h/b_ob"  # the filter applies to values only
    recursive = MacroExpander(attrs.get)
    assert recursive.expand("$ref") == "bob"
    assert recursive.expand("${{$user} == {bob} ? {same} : {other}}") == "same"
    for bad in ("${user", "${!x}", "${user!x}", "${{a} ~ {b} ? {c}}"):
        with pytest.raises(ConfigError):
            plain.expand(bad)
    loop = MacroExpander({"a": "$b", "b": "$a"}.get)
    with pytest.raises(ConfigError, match="recursive"):
        loop.expand("$a")
