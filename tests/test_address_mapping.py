"""pymailsys.address.mapping: canonical(5), virtual(5) and masquerading rules on inline: tables."""

from __future__ import annotations

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
