"""pcre, regexp and cidr tables answer as Debian's Postfix 3.7 postmap does.

The tables are the manual pages' examples (pcre_table(5), regexp_table(5),
cidr_table(5)) and edge cases: PCRE2 syntax (named groups, ``(?-i)``,
``\\Q...\\E``, lookahead) and every pcre flag; regexp's two-pattern form
``/a/!/b/``; cidr's negation with white space and rules without a result.
The answers and warnings Debian's postmap gave are written out below; when
/usr/sbin/postmap is installed (as in CI, with postfix-pcre) the same keys are
also asked of it live, and of our ``postmap -q -``, and all three must agree.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

POSTFIX_POSTMAP = "/usr/sbin/postmap"

PCRE = r"""# pcre_table(5): the manual page's examples
# Protect your outgoing majordomo exploders
/^(?!owner-)(.*)-outgoing@(.*)/ 550 Use ${1}@${2} instead
# Bounce friend@whatever, except when whatever is our domain
if /^friend@(?!our\.domain$)/
/.+/ 550 This user is not a friend
endif
# Block mail from the mail server at 1.2.3.4
/^(.*)\.(example\.com)$/ OK $2
# edge cases
/(?<user>\w+)@named\.example$/ named:$1
/^CaSe(?-i)Sens$/ casesens
/\Qa.b\E@q\.example$/ quoted
/anch/A anchored
/foo$/E dollarend
/^u(a+)/U ungreedy[$1]
/^x(a+)/X extra
/^multi$/m multiline
/ e x t /x extended
/^nocase/i nocase
/^bad(/ x
/^q/Z unknownflag
/^named2(?<n>x)/ ${n}
!/^neg/ $1
/^two/ $(1)
/^[[:digit:]]+$/ digits
/^look(?=ahead)/ lookahead
/^opt(a)?(b)/ [$1][$2]
/^dd/ $$1
|^pipe|x|y pipe-delim
/^sl\/ash/ escaped-delimiter
#^hash# a comment, not a rule
/^pempty$/
/^(p*)pdollar$/ $1
"""
REGEXP = r"""# regexp_table(5): the manual page's examples
# Disallow sender-specified routing. This is a must if you relay mail
# for other domains.
/[%!@].*[%!@]/       550 Sender-specified routing rejected
# Postmaster is OK, that way they can talk to us about how to fix
# their problem.
/^postmaster@/       OK
# Protect your outgoing majordomo exploders
if !/^owner-/
/^(.*)-outgoing@(.*)$/  550 Use ${1}@${2} instead
endif
# the two-pattern form
/^(.*)@a\.example$/!/^root@/ two:$1
/^x/!/y/ xnoty
/^c/ !/d/ spaced
/^e/!/f/i neg2
/^k/!/^kk(.)/ $1
/^g/
/^m(.)(.)/ $2$1
/^bad(/ x
|^pipe|x|y pipe-delim
/^sl\/ash/ escaped-delimiter
/^a\(b\)c/x basic[$1]
/^(z*)zdollar$/ $1
"""
CIDR = """# cidr_table(5): the manual page's example
# Rule order matters. Put more specific allowlist entries
# before more general denylist entries.
192.168.1.1             OK
192.168.0.0/16          REJECT
2001:db8::1             OK
2001:db8::/32           REJECT
# edge cases
1.2.3.0/24
5.0.0.0/8\t
1.2.3.4/24 hostbits
[7.7.7.7] bracket
if 8.0.0.0/8
8.8.8.0/24 inner
endif
! ! 9.0.0.0/8 double
! 10.0.0.0/8 spaced-neg
!  172.16.0.0/12 twospaces
!6.0.0.0/8 plainneg
"""

PCRE_ANSWERS = {
    'joe-outgoing@example.com': '550 Use joe@example.com instead',
    'owner-x-outgoing@example.com': None,
    'friend@foo.example': '550 This user is not a friend',
    'friend@our.domain': None,
    'mail.example.com': 'OK example.com',
    'bob@named.example': 'named:bob',
    'CASESens': 'casesens',
    'caseSens': 'casesens',
    'a.b@q.example': 'quoted',
    'axb@q.example': None,
    'xanch': 'extra',
    'anchor': 'anchored',
    'foo': 'dollarend',
    'xfoo': 'dollarend',
    'uaaa': 'ungreedy[a]',
    'xaaa': 'extra',
    'multi': 'multiline',
    'ext': 'extended',
    'NOCASE': None,
    'nocase': 'nocase',
    'named2x': None,
    'neg': None,
    'two': None,
    '123': 'digits',
    'lookahead': 'lookahead',
    'lookbehind': None,
    'optb': '[][b]',
    'optab': '[a][b]',
    'dd': '$1',
    'pipe': None,
    'sl/ash': 'escaped-delimiter',
    'nothing': None,
    'pempty': '',
    'pdollar': '',
    'ppdollar': 'p',
}
PCRE_WARNINGS = [
    'pcre map {path}, line 17: ignoring obsolete regexp option "X"',
    'pcre map {path}, line 21: error in regex at offset 5: missing closing parenthesis',
    'pcre map {path}, line 22: unknown regexp option "Z": skipping this rule',
    'pcre map {path}, line 23: non-numeric replacement index "n"',
    'pcre map {path}, line 23: bad replacement syntax: skipping this rule',
    'pcre map {path}, line 24: $number found in negative match replacement text: skipping this rule',
    'pcre map {path}, line 25: out of range replacement index "1": skipping this rule',
    'pcre map {path}, line 30: unknown regexp option "|": skipping this rule',
    'pcre map {path}, line 33: no replacement text: using empty string',
    # an empty result is printed, and warned about
    'table pcre:{path}: key pempty: empty string result is not allowed',
    'table pcre:{path} should return NO RESULT in case of NOT FOUND',
    'table pcre:{path}: key pdollar: empty string result is not allowed',
    'table pcre:{path} should return NO RESULT in case of NOT FOUND',
]
REGEXP_ANSWERS = {
    'a%b@c': '550 Sender-specified routing rejected',
    'postmaster@x': 'OK',
    'list-outgoing@example.org': '550 Use list@example.org instead',
    'owner-list-outgoing@example.org': None,
    'bob@a.example': 'two:bob',
    'root@a.example': None,
    'xz': 'xnoty',
    'xy': None,
    'cz': '!/d/ spaced',
    'ce': '!/d/ spaced',
    'E1': 'neg2',
    'eF': 'neg2',
    'k1': None,
    'kk1': None,
    'mab': 'ba',
    'pipe': None,
    'sl/ash': 'escaped-delimiter',
    'abc': 'basic[b]',
    'nothing': None,
    'g': '',
    'zdollar': '',
}
REGEXP_WARNINGS = [
    'regexp map {path}, line 17: out of range replacement index "1": skipping this rule',
    'regexp map {path}, line 18: no replacement text: using empty string',
    'regexp map {path}, line 20: Unmatched ( or \\(',
    'regexp map {path}, line 21: unknown regexp option "|": skipping this rule',
    'table regexp:{path}: key g: empty string result is not allowed',
    'table regexp:{path} should return NO RESULT in case of NOT FOUND',
    'table regexp:{path}: key zdollar: empty string result is not allowed',
    'table regexp:{path} should return NO RESULT in case of NOT FOUND',
]
CIDR_ANSWERS = {
    '192.168.1.1': 'OK',
    '192.168.2.2': 'REJECT',
    '2001:db8::1': 'OK',
    '2001:db8::2': 'REJECT',
    '11.0.0.1': 'spaced-neg',
    '10.0.0.1': 'twospaces',
    '172.16.0.1': 'spaced-neg',
    '1.2.3.4': 'spaced-neg',
    '5.1.1.1': 'spaced-neg',
    '6.1.1.1': 'spaced-neg',
    '7.7.7.7': 'bracket',
    '8.8.8.8': 'inner',
    '8.8.9.9': 'spaced-neg',
    '9.1.1.1': 'double',
    '10.1.1.1': 'twospaces',
    '::1': None,
    'notanip': None,
}
CIDR_WARNINGS = [
    'cidr map {path}, line 9: no lookup result: skipping this rule',
    'cidr map {path}, line 10: no lookup result: skipping this rule',
    'cidr map {path}, line 11: non-null host address bits in "1.2.3.4/24", perhaps you should use "1.2.3.0/24" instead: skipping this rule',
]

TABLES = {
    "pcre": (PCRE, PCRE_ANSWERS, PCRE_WARNINGS),
    "regexp": (REGEXP, REGEXP_ANSWERS, REGEXP_WARNINGS),
    "cidr": (CIDR, CIDR_ANSWERS, CIDR_WARNINGS),
}


def query(argv: list[str], conf, spec: str, keys: list[str]) -> tuple[dict[str, str | None], list[str]]:
    """``postmap -q - spec`` with keys on stdin: (answers, warning texts)."""
    proc = subprocess.run([*argv, "-c", str(conf), "-q", "-", spec], input="\n".join(keys) + "\n",
                          capture_output=True, text=True, timeout=60)
    found = dict(line.split("\t", 1) for line in proc.stdout.splitlines())
    warnings = [line.split("warning: ", 1)[1] for line in proc.stderr.splitlines()
                if "warning: " in line]
    return {k: found.get(k) for k in keys}, warnings


def _table(tmp_path, kind: str) -> tuple[str, str]:
    (tmp_path / "main.cf").write_text("")
    path = tmp_path / f"table.{kind}"
    path.write_text(TABLES[kind][0])
    return f"{kind}:{path}", str(path)


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_our_postmap_answers_as_postfix(tmp_path, kind: str) -> None:
    spec, path = _table(tmp_path, kind)
    _, answers, warnings = TABLES[kind]
    got, warned = query([sys.executable, "-m", "pymailsys.tools.postmap"], tmp_path, spec,
                        list(answers))
    assert got == answers
    assert warned == [w.format(path=path) for w in warnings]


@pytest.mark.skipif(not os.path.exists(POSTFIX_POSTMAP), reason="Debian's postfix is not installed")
@pytest.mark.parametrize("kind", sorted(TABLES))
def test_debian_postmap_still_answers_so(tmp_path, kind: str) -> None:
    spec, path = _table(tmp_path, kind)
    _, answers, warnings = TABLES[kind]
    got, warned = query([POSTFIX_POSTMAP], tmp_path, spec, list(answers))
    assert got == answers
    assert warned == [w.format(path=path) for w in warnings]


# A folded header is one key with newlines in it: POSIX regexp (without the "m"
# flag, REG_NEWLINE) lets "." match them; with "m", "^" and "$" match at each line.
NEWLINE_REGEXP = "/^x$/m multi\n/^(.*)$/ all[$1]\n"
NEWLINE_ANSWERS = {"Received: a\n\tb": "all[Received: a\n\tb]", "x\ny": "multi"}


def _query_one(argv: list[str], conf, spec: str, key: str) -> str | None:
    proc = subprocess.run([*argv, "-c", str(conf), "-q", key, spec], capture_output=True,
                          text=True, timeout=60)
    return proc.stdout[:-1] if proc.returncode == 0 else None


@pytest.mark.parametrize("postmap", ["ours", "debian"])
def test_regexp_dot_matches_a_folded_header_newline(tmp_path, postmap: str) -> None:
    if postmap == "debian" and not os.path.exists(POSTFIX_POSTMAP):
        pytest.skip("Debian's postfix is not installed")
    argv = [POSTFIX_POSTMAP] if postmap == "debian" else [sys.executable, "-m",
                                                          "pymailsys.tools.postmap"]
    (tmp_path / "main.cf").write_text("")
    (tmp_path / "t.regexp").write_text(NEWLINE_REGEXP)
    got = {k: _query_one(argv, tmp_path, f"regexp:{tmp_path}/t.regexp", k) for k in NEWLINE_ANSWERS}
    assert got == NEWLINE_ANSWERS


# Lines that are no rule, and what Postfix makes of them: a line starting with a
# letter that is not IF/ENDIF, "if" without a space, text after ENDIF, a broken IF
# (no IF: its rules apply, its ENDIF is ignored), result texts that mac_parse
# refuses ($0, an unclosed ${, a $ without a name, non-numeric names), white space
# between "!" marks, and pcre's default DOTALL that the "s" flag turns off.
RULES = r"""foo bar
if/^x/
/^xa$/ xa
endif extra
IF /^y/ extra
/^yb$/ yb
ENDIF
if /^brok(/
/^brokx$/ inbrokenif
endif
/^e$/ $0
/^w(.)$/ ${1
/^v$/ $
/^p1-(.)$/ $a $b ${1}
/^p3$/ ${}
/^p4(.)$/ $((1))
/^f(.)$/ ${1}$(1)$$
! ! /^p6/ dbl
/^a.b$/ dot
/^c.d$/s nodot
/abc
!
"""
RULES_ANSWERS = {
    "xa": "xa", "xb": None, "yb": "yb", "brokx": "inbrokenif", "e": None, "w1": None,
    "v": None, "p1-x": None, "p3": None, "p4x": None, "f1": "11$", "p6": "dbl",
    "a\nb": "dot", "c\nd": None, "zz": None,
}
RULES_PCRE_ANSWERS = {**RULES_ANSWERS, "cxd": "nodot"}
RULES_REGEXP_ANSWERS = {**RULES_ANSWERS, "cxd": None}
RULES_WARNINGS = [
    "{kind} map {path}, line 1: ignoring unrecognized request",
    "{kind} map {path}, line 4: ignoring extra text after ENDIF",
    '{kind} map {path}, line 5: ignoring extra text after IF statement: "extra"',
    "{kind} map {path}, line 5: do not prepend whitespace to statements between IF and ENDIF",
    "{broken_if}",
    "{kind} map {path}, line 10: ignoring ENDIF without matching IF",
    '{kind} map {path}, line 11: out{dash}of{dash}range replacement index "0"',
    "{kind} map {path}, line 11: bad replacement syntax: skipping this rule",
    'truncated macro reference: "${{1"',
    "{kind} map {path}, line 12: bad replacement syntax: skipping this rule",
    'empty macro name: "$"',
    "{kind} map {path}, line 13: bad replacement syntax: skipping this rule",
    '{kind} map {path}, line 14: non-numeric replacement index "a"',
    '{kind} map {path}, line 14: non-numeric replacement index "b"',
    "{kind} map {path}, line 14: bad replacement syntax: skipping this rule",
    'empty macro name: "${{}}"',
    "{kind} map {path}, line 15: bad replacement syntax: skipping this rule",
    '{kind} map {path}, line 16: non-numeric replacement index "(1)"',
    "{kind} map {path}, line 16: bad replacement syntax: skipping this rule",
    "{s_flag}",
    '{kind} map {path}, line 21: no closing regexp delimiter "/": {closing} this rule',
    "{kind} map {path}, line 22: no regexp: skipping this rule",
]
RULES_KIND = {
    "regexp": dict(broken_if="regexp map {path}, line 8: Unmatched ( or \\(", dash="-",
                   s_flag='regexp map {path}, line 20: unknown regexp option "s": '
                          "skipping this rule", closing="skipping"),
    "pcre": dict(broken_if="pcre map {path}, line 8: error in regex at offset 6: missing "
                           "closing parenthesis", dash=" ", s_flag="", closing="ignoring"),
}

CIDR_RULES = """1.2.3.4/24 hostbits
300.1.1.1 bad
1.2.3.0/33 badlen
1.2.3.0/ nomask
1.2.3.0/x badmaskval
[1.2.3.0 missingbr
[1.2.3.0]x garbage
[1.2.3.0/24] inbr
[5.0.0.0]/8 brmask
fe80::1%eth0 scope
1::/200 v6badlen
10.0.0.0/8
!
endif
if 172.16.0.0/12
172.16.1.1 inner
endif junk
endif
if 1.2.3.0/24 extra
if ! 9.0.0.0/8
if 11.0.0.0/8
0.0.0.0/0 all
::/0 all6
"""
CIDR_RULES_ANSWERS = {
    "1.2.3.4": "inbr", "5.1.1.1": "brmask", "10.1.1.1": None, "172.16.1.1": "inner",
    "9.1.1.1": None, "11.1.1.1": "all", "2001::1": None, "fe80::1%eth0": None,
    "[1.2.3.4]": None,
}
CIDR_RULES_WARNINGS = [
    'line 1: non-null host address bits in "1.2.3.4/24", perhaps you should use "1.2.3.0/24" '
    "instead",
    'line 2: bad address pattern: "300.1.1.1"',
    'line 3: bad mask length in "1.2.3.0/33"',
    'line 4: bad mask value in "1.2.3.0/"',
    'line 5: bad mask value in "1.2.3.0/x"',
    "line 6: missing ']' character after \"[1.2.3.0\"",
    'line 7: garbage after "[1.2.3.0]"',
    'line 10: bad address pattern: "fe80::1%eth0"',
    'line 11: bad mask length in "1::/200"',
    "line 12: no lookup result",
    "line 13: no address pattern",
    "line 14: ENDIF without IF",
    "line 17: garbage after ENDIF",
    'line 19: bad mask value in "1.2.3.0/24 extra"',
]


def _postmap_argv(postmap: str) -> list[str]:
    if postmap == "debian" and not os.path.exists(POSTFIX_POSTMAP):
        pytest.skip("Debian's postfix is not installed")
    return [POSTFIX_POSTMAP] if postmap == "debian" else [sys.executable, "-m",
                                                          "pymailsys.tools.postmap"]


@pytest.mark.parametrize("postmap", ["ours", "debian"])
@pytest.mark.parametrize("kind", ["regexp", "pcre"])
def test_lines_that_are_no_rule_as_postfix(tmp_path, kind: str, postmap: str) -> None:
    argv = _postmap_argv(postmap)
    (tmp_path / "main.cf").write_text("")
    path = tmp_path / f"rules.{kind}"
    path.write_text(RULES)
    spec = f"{kind}:{path}"
    answers = RULES_PCRE_ANSWERS if kind == "pcre" else RULES_REGEXP_ANSWERS
    got = {k: _query_one(argv, tmp_path, spec, k) for k in answers}
    assert got == answers
    _, warned = query(argv, tmp_path, spec, ["zz"])
    params = {name: value.format(path=path) for name, value in RULES_KIND[kind].items()}
    expected = [w.format(kind=kind, path=path, **params) for w in RULES_WARNINGS]
    assert warned == [w for w in expected if w]


@pytest.mark.parametrize("postmap", ["ours", "debian"])
def test_cidr_lines_that_are_no_rule_as_postfix(tmp_path, postmap: str) -> None:
    argv = _postmap_argv(postmap)
    (tmp_path / "main.cf").write_text("")
    path = tmp_path / "rules.cidr"
    path.write_text(CIDR_RULES)
    got, warned = query(argv, tmp_path, f"cidr:{path}", list(CIDR_RULES_ANSWERS))
    assert got == CIDR_RULES_ANSWERS
    assert warned == [f"cidr map {path}, {w}: skipping this rule" for w in CIDR_RULES_WARNINGS] + [
        f"cidr map {path}, line 21: IF has no matching ENDIF",
        f"cidr map {path}, line 20: IF has no matching ENDIF"]


@pytest.mark.parametrize("postmap", ["ours", "debian"])
def test_pcre_match_limit_is_no_match_with_a_warning(tmp_path, postmap: str) -> None:
    """A key that runs into PCRE2's match limit (catastrophic backtracking) matches no
    rule, with Postfix's warning; the next rules are still tried."""
    argv = _postmap_argv(postmap)
    (tmp_path / "main.cf").write_text("")
    path = tmp_path / "t.pcre"
    path.write_text("/^(a+)+$/ catastrophic\n/b$/ next\n")
    proc = subprocess.run([*argv, "-c", str(tmp_path), "-q", "a" * 40 + "b", f"pcre:{path}"],
                          capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stdout) == (0, "next\n")
    assert proc.stderr.endswith(f"warning: pcre map {path}, line 1: match limit exceeded\n")
