"""pymailsys.rfc822: Postfix's quote_822_local/unquote_822_local and the tok822 tokens."""

from __future__ import annotations

import itertools

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


def test_quote_shortcut_agrees_with_the_long_way() -> None:
    """quote_822_local's one-match shortcut for an address with nothing to quote
    gives what the long way gives, for every short string of the characters that
    matter (specials, dots, @, controls, 8-bit)."""
    alphabet = 'a.@ "\\:\u00e9\r\n'
    for size in range(6):
        for chars in itertools.product(alphabet, repeat=size):
            addr = "".join(chars)
            assert rfc822.quote_822_local(addr) == rfc822._quoted(addr), repr(addr)


def test_quote_memo_answers_as_the_first_time_and_stays_bounded() -> None:
    """quote_822_local's kept answers are the ones it gave (asked again, plain and
    quoted), at most MEMO_LIMIT of them, and none for a long address."""
    for addr in ("john doe@x", "user@x", '"a"@x', "a..b@x", "", "@r:a b@x"):
        first = rfc822.quote_822_local(addr)
        assert rfc822.quote_822_local(addr) == first == rfc822._quoted(addr)
    for i in range(rfc822.MEMO_LIMIT + 10):
        assert rfc822.quote_822_local(f"u {i}@x") == f'"u {i}"@x'
        assert len(rfc822._QUOTED) <= rfc822.MEMO_LIMIT
    long = "a b" * rfc822.MEMO_ADDRESS_LENGTH + "@x"
    assert rfc822.quote_822_local(long) == f'"{long[:-2]}"@x'
    assert long not in rfc822._QUOTED


@pytest.mark.parametrize("special", list('()<>@,;:\\"[] ') + [chr(c) for c in range(32)] + ["\x7f"])
def test_every_special_and_control_needs_quoting_wherever_it_stands(special: str) -> None:
    for local in (special, f"a{special}", f"{special}b", f"a{special}b"):
        assert not rfc822.is_822_dot_string(local), repr(local)


@pytest.mark.parametrize(("local", "dot_string"), [
    ("a", True), ("a.b.c", True), ("a-b+c=d", True), ("j\u00f6rg", True), ("\u2028", True),
    ("", False), (".", False), (".a", False), ("a.", False), ("a..b", False),
    ("a.\n", False),  # a trailing line end is no dot-string either
])
def test_dot_string_as_postfix(local: str, dot_string: bool) -> None:
    assert rfc822.is_822_dot_string(local) is dot_string


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


@pytest.mark.parametrize(("value", "stored"), [
    # what Debian's postalias 3.7 stores (postalias -q) for these alias values
    ("b,c   d", "b, c d"),
    ('"|cmd  x", e ,  f\n g', '"|cmd  x", e, f g'),
    ('"x y"@z,"a,b"', '"x y"@z, "a,b"'),
    ("a@ b . c", "a@b.c"),
    ("Name <x@y>", "Name <x@y>"),
    ("a (comment) b", "a (comment) b"),
    ("g: a, b;", "g:a, b;"),
    ("a ,, b", "a, , b"),
    (":include:/path/file, /path/file", ":include:/path/file, /path/file"),
    ("|/bin/cmd arg", "|/bin/cmd arg"),
])
def test_externalize_list_as_postalias(value: str, stored: str) -> None:
    assert rfc822.externalize_list(value) == stored


def test_address_list_as_tok822_parse() -> None:
    # Postfix 3.7's local delivers "|/bin/sh -c "exit 75"" as the command /bin/sh,
    # the address -c and the address "exit 75": a command with spaces must be quoted
    assert rfc822.address_list('|/bin/sh -c "exit 75"') == ["|/bin/sh", "-c", "exit 75"]
    assert rfc822.address_list('"|/bin/sh -c \'exit 75\'", \\bob') == [
        "|/bin/sh -c 'exit 75'", "\\bob"]
    assert rfc822.address_list('"Doe, Jane" <jane@x>, team: a, b (c);, undisclosed:;') == [
        "jane@x", "a", "b"]
    assert rfc822.address_list(":include:/etc/list, /var/mail/file") == [
        ":include:/etc/list", "/var/mail/file"]
    assert rfc822.address_list(' "open, x') == ['"open, x']
    assert rfc822.address_list("  ") == []
