"""pymailsys.rfc822: Postfix's quote_822_local/unquote_822_local and the tok822 tokens."""

from __future__ import annotations

import pytest

from pymailsys import rfc822


@pytest.mark.parametrize(("internal", "external"), [
    ("plain.user@x", "plain.user@x"),
    ("john doe@x", '"john doe"@x'),
    ('a"b@x', '"a\\"b"@x'),
    ("a\\b@x", '"a\\\\b"@x'),
    ("a\rb@x", '"a\\\rb"@x'),           # CR escaped, as Postfix does
    ("a\tb@x", '"a\tb"@x'),             # other controls only quoted
    (".a@x", '".a"@x'), ("a.@x", '"a."@x'), ("a..b@x", '"a..b"@x'),
    ("@x", '""@x'), ("", '""'),
    ("j\u00f6rg@x", "j\u00f6rg@x"),     # 8-bit clean
    ("a@b@x", '"a@b"@x'),               # only the last @ separates the domain
    ("@r1,@r2:john doe@x", '@r1,@r2:"john doe"@x'),  # a source route is kept, unquoted
    ("user", "user"), ("a b", '"a b"'),
])
def test_quote_and_unquote_are_inverse(internal: str, external: str) -> None:
    assert rfc822.quote_822_local(internal) == external
    if internal:
        assert rfc822.unquote_822_local(external) == internal


def test_unquote_as_postfix() -> None:
    assert rfc822.unquote_822_local('"a@b"') == "a@b"        # no bare @: all unquoted
    assert rfc822.unquote_822_local('"a"@"b"') == 'a@"b"'   # the domain stays as written
    assert rfc822.unquote_822_local("a\\") == "a"
    assert rfc822.unquote_822_local('@r:"a b"@x') == "@r:a b@x"


def test_source_route() -> None:
    assert rfc822.strip_source_route("@a,@b:user@c") == "user@c"
    assert rfc822.strip_source_route("@a") == "@a"
    assert rfc822.strip_source_route("user@c") == "user@c"


def test_scan_and_internalize() -> None:
    tokens, cut = rfc822.scan(' "a b" (c (d)) @ [1.2.3.4], x\\ y')
    assert [t[0] for t in tokens] == ["qstr", "comment", "@", "domlit", ",", "atom"]
    assert not cut
    assert rfc822.internalize(tokens[:4]) == "a b@[1.2.3.4]"
    assert rfc822.internalize(tokens[5:]) == "x y"
    tokens, cut = rfc822.scan("a, b, c", limit=3)
    assert [t[1] for t in tokens] == ["a", ",", "b"] and cut
    for bad in ('"open', "(open", "[open"):
        with pytest.raises(rfc822.Unparsable):
            rfc822.scan(bad)
