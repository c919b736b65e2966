"""pymailsys.address.mapping: canonical(5), virtual(5) and masquerading rules on inline: tables."""

from __future__ import annotations

import tracemalloc

import pytest

from pymailsys import config
from pymailsys.address import mapping


def mapper(**values: str) -> mapping.Mapper:
    base = {"myhostname": "mx.example", "mydestination": "$myhostname, localhost",
            "inet_interfaces": "loopback-only", "recipient_delimiter": "+"}
    base.update(values)
    return mapping.Mapper(config.Config("/nonexistent", base))


def test_virtual_lookup_order_extensions_and_catch_all() -> None:
    m = mapper(virtual_alias_maps="inline:{ {a@v.example=x@t.example}, {b=local-b@t.example}, "
                                  "{@v.example=catch@t.example} }")
    assert m.expand("a@v.example") == ["x@t.example"]
    assert m.expand("a+ext@v.example") == ["x+ext@t.example"]  # propagate_unmatched_extensions
    assert m.expand("b@mx.example") == ["local-b@t.example"]  # "user" only in a local domain
    assert m.expand("b@v.example") == ["catch@t.example"]
    assert m.expand("other@elsewhere.example") == ["other@elsewhere.example"]


def test_virtual_self_reference_and_limits() -> None:
    m = mapper(virtual_alias_maps="inline:{ {list@v.example=list@v.example, m1@t.example}, "
                                  "{l1@v.example=l2@v.example}, {l2@v.example=l1@v.example} }",
               virtual_alias_recursion_limit="5")
    assert m.expand("list@v.example") == ["list@v.example", "m1@t.example"]
    with pytest.raises(mapping.MappingError, match="unreasonable virtual_alias_maps map nesting "
                                                   "for l1@v.example") as err:
        m.expand("l1@v.example")
    assert err.value.alias
    wide = mapper(virtual_alias_maps="inline:{ {w@v.example=a@t, b@t, c@t} }",
                  virtual_alias_expansion_limit="2")
    with pytest.raises(mapping.MappingError, match="expansion size"):
        wide.expand("w@v.example")


def test_canonical_classes_order_and_multi_value_warning() -> None:
    m = mapper(sender_canonical_maps="inline:{ {joe@mx.example=joe.sender@mx.example} }",
               canonical_maps="inline:{ {joe.sender@mx.example=Joe.Final@example.com, x@y} }",
               canonical_classes="envelope_sender, header_recipient")
    assert m.sender("joe@mx.example") == (
        "Joe.Final@example.com", ["multi-valued canonical_maps entry for joe.sender@mx.example"])
    assert m.sender("joe@mx.example", mapping.HEADER) == ("joe@mx.example", [])
    assert m.recipient("joe.sender@mx.example", mapping.HEADER)[0] == "Joe.Final@example.com"


def test_masquerade_rules() -> None:
    m = mapper(masquerade_domains="!keep.example.com, example.com", masquerade_exceptions="root")
    assert m.masquerade("u@a.b.example.com") == "u@example.com"
    assert m.masquerade("u@example.com") == "u@example.com"
    assert m.masquerade("u@x.keep.example.com") == "u@x.keep.example.com"
    assert m.masquerade("root@a.example.com") == "root@a.example.com"
    assert m.masquerade("u@notexample.com") == "u@notexample.com"
    assert m.sender("u@a.example.com") == ("u@example.com", [])  # envelope_sender by default
    assert m.recipient("u@a.example.com") == ("u@a.example.com", [])


def test_bcc_sources() -> None:
    m = mapper(sender_bcc_maps="inline:{ {s@x=sb@t} }", recipient_bcc_maps="inline:{ {@r=rb@t} }",
               always_bcc="all@t")
    assert m.bcc("s@x", ["a@r", "b@q"]) == ["sb@t", "rb@t", "all@t"]
    assert m.bcc("", []) == ["all@t"]


def test_at_domain_result_keeps_the_user_and_results_are_canonicalized() -> None:
    # canonical(5): "@old.example @new.example" maps user@old.example to user@new.example;
    # a result without a domain gets @$myorigin (Postfix's mail_addr_crunch)
    m = mapper(canonical_maps="inline:{ {@old.example=@new.example}, {joe@mx.example=jim} }",
               virtual_alias_maps="inline:{ {@v.example=@t.example, copy@t.example}, "
                                  "{a@w.example=bob} }")
    assert m.sender("user@old.example") == ("user@new.example", [])
    assert m.sender("user+ext@old.example") == ("user+ext@new.example", [])
    assert m.sender("joe@mx.example") == ("jim@mx.example", [])
    assert m.expand("x@v.example") == ["x@t.example", "copy@t.example"]
    assert m.expand("a+ext@w.example") == ["bob+ext@mx.example"]


def test_unmatched_extension_keeps_its_own_delimiter() -> None:
    m = mapper(recipient_delimiter="+-",
               virtual_alias_maps="inline:{ {a@v.example=x@t.example}, {@d.example=@e.example} }")
    assert m.expand("a-ext@v.example") == ["x-ext@t.example"]
    assert m.expand("a+ext@v.example") == ["x+ext@t.example"]
    assert m.expand("b-ext@d.example") == ["b-ext@e.example"]


def test_canonical_loop_is_a_warning_not_a_failure() -> None:
    # Postfix's cleanup_map11 warns after 10 rounds and goes on with the last result
    m = mapper(canonical_maps="inline:{ {a@x.example=b@x.example}, {b@x.example=a@x.example} }")
    address, warnings = m.sender("a@x.example")
    assert address == "a@x.example"
    assert warnings == ["unreasonable canonical_maps map nesting for a@x.example -- "
                        "message not accepted, try again later"]


def test_nested_one_to_many_expansion_stops_at_the_limit() -> None:
    # an expansion bomb: each level expands to the next level and 100 more addresses,
    # 400 levels deep; the list must never grow much past virtual_alias_expansion_limit
    # (Postfix checks only at the next address, after a whole chain of levels was added)
    entries = ", ".join(
        f"{{l{i}@v.example=l{i + 1}@v.example, "
        + ", ".join(f"m{i}x{j}@t.example" for j in range(100)) + "}"
        for i in range(400))
    m = mapper(virtual_alias_maps=f"inline:{{ {entries} }}",
               virtual_alias_expansion_limit="150")
    tracemalloc.start()
    try:
        with pytest.raises(mapping.MappingError, match="unreasonable virtual_alias_maps map "
                                                       "expansion size for l0@v.example"):
            m.expand("l0@v.example")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 300_000, peak  # 40 000 addresses would take megabytes


def test_virtual_alias_address_length_limit() -> None:
    m = mapper(virtual_alias_maps=f"inline:{{ {{a@v.example={'x' * 40}@t.example}} }}",
               virtual_alias_address_length_limit="30")
    with pytest.raises(mapping.MappingError, match="unreasonable virtual_alias_maps result "
                                                   "x{30}") as err:
        m.expand("a@v.example")
    assert err.value.alias


def test_non_address_result_is_an_error() -> None:
    m = mapper(virtual_alias_maps="inline:{ {a@v.example=,} }")
    with pytest.raises(mapping.MappingError, match="returns non-address result"):
        m.expand("a@v.example")


def test_masquerade_exceptions_is_a_string_list() -> None:
    # Postfix's string_list: names, type:table lookups of the local part, ! to negate
    m = mapper(masquerade_domains="example.com",
               masquerade_exceptions="!inline:{ {nobody=x} }, inline:{ {root=x} }, Admin")
    assert m.masquerade("root@a.example.com") == "root@a.example.com"
    assert m.masquerade("admin@a.example.com") == "admin@a.example.com"
    assert m.masquerade("nobody@a.example.com") == "nobody@example.com"
    assert m.masquerade("john.doe@a.example.com") == "john.doe@example.com"
    failing = mapper(masquerade_domains="example.com", masquerade_exceptions="fail:broken")
    with pytest.raises(mapping.MappingError, match="masquerade_exceptions map lookup problem"):
        failing.masquerade("u@a.example.com")


@pytest.mark.parametrize(("values", "kept", "no_bcc"), [
    ({}, True, True),
    ({"recipient_canonical_maps": "inline:{ {a@t.example=b@t.example} }"}, False, True),
    ({"canonical_maps": "inline:{ {a@t.example=b@t.example} }"}, False, True),
    ({"canonical_maps": "inline:{ {a@t.example=b@t.example} }",
      "canonical_classes": "envelope_sender, header_recipient"}, True, True),
    ({"sender_canonical_maps": "inline:{ {a@t.example=b@t.example} }"}, True, True),
    ({"masquerade_domains": "t.example"}, True, True),  # not envelope_recipient by default
    ({"masquerade_domains": "t.example", "masquerade_classes": "envelope_recipient"}, False,
     True),
    ({"virtual_alias_maps": "inline:{ {a@t.example=b@t.example} }"}, False, True),
    ({"always_bcc": "c@t.example"}, True, False),
    ({"sender_bcc_maps": "inline:{ {a@t.example=c@t.example} }"}, True, False),
    ({"recipient_bcc_maps": "inline:{ {a@t.example=c@t.example} }"}, True, False),
])
def test_recipients_kept_only_when_no_step_changes_them(values: dict[str, str], kept: bool,
                                                        no_bcc: bool) -> None:
    # cleanup keeps a lone envelope recipient as it is, without calling the mapper, when
    # these say so: each step that could change it (or add a BCC) must turn them off
    m = mapper(**values)
    assert (m.recipients_kept, m.no_bcc) == (kept, no_bcc)
    if kept:
        assert m.recipient("a@sub.t.example") == ("a@sub.t.example", [])
        assert m.recipient("a@t.example") == ("a@t.example", [])
        assert m.expand("a@t.example") == ["a@t.example"]
    else:
        assert (m.recipient("a@sub.t.example") != ("a@sub.t.example", [])
                or m.recipient("a@t.example") != ("a@t.example", [])
                or m.expand("a@t.example") != ["a@t.example"])
    if no_bcc:
        assert m.bcc("a@t.example", ["a@t.example"]) == []
    else:
        assert m.bcc("a@t.example", ["a@t.example"]) == ["c@t.example"]
