"""The rule registry and the catalog name the same rules; fix availability comes from the
catalog's examples, not from a list kept elsewhere."""

from __future__ import annotations

from dataclasses import replace

from kvguard.catalog import Example, load_catalog
from kvguard.engine import RuleSet
from kvguard.lint.registry import registered, rule


def test_every_catalog_rule_has_a_registered_check_and_back() -> None:
    assert list(registered()) == sorted(load_catalog())


def test_fixable_codes_are_the_rules_with_a_fixed_example() -> None:
    catalog = load_catalog()
    assert RuleSet.of(catalog).fixable == {"KVG001", "KVG004"}
    # a rule whose data file gains a fixed example becomes fixable, and only then
    kvg002 = catalog["KVG002"]
    example = Example(code="x = 1\n", fixed="x = 2\n")
    grown = {**catalog, "KVG002": replace(kvg002, invalid=(*kvg002.invalid, example))}
    assert "KVG002" in RuleSet.of(grown).fixable
    same = Example(code="x = 1\n", fixed="x = 1\n")  # --fix leaves it as it is
    unchanged = {**catalog, "KVG002": replace(kvg002, invalid=(same,))}
    assert "KVG002" not in RuleSet.of(unchanged).fixable


def test_a_code_cannot_be_registered_twice() -> None:
    existing = registered()["KVG001"]
    assert rule("KVG001")(existing) is existing  # registering the same check again is fine
    try:
        rule("KVG001")(lambda model, index: [])
    except ValueError as exc:
        assert "registered twice" in str(exc)
    else:
        raise AssertionError("a second check for KVG001 was accepted")
