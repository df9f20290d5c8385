"""The catalog's fixed examples: each [[invalid]] example is fixed exactly as it states."""

from __future__ import annotations

import pytest

from kvguard.catalog import Example, Rule, load_catalog
from tests.fix.fix_helpers import fix_text, lint_text

CATALOG = load_catalog()
FIXABLE_CODES = ("KVG001", "KVG004")
CASES = [
    pytest.param(rule, example, id=f"{code}-invalid-{i}")
    for code, rule in CATALOG.items()
    for i, example in enumerate(rule.invalid)
]


@pytest.mark.parametrize(("rule", "example"), CASES)
def test_fix_gives_the_stated_text(rule: Rule, example: Example) -> None:
    """`fixed` is what --fix writes; an example without it is left alone by --fix."""
    fixed = fix_text(example.code, example.path)
    assert fixed == (example.code if example.fixed is None else example.fixed)
    if example.fixed is not None:
        assert rule.code in FIXABLE_CODES
        assert not {f.code for f in lint_text(fixed, example.path)} & set(FIXABLE_CODES)
        assert fix_text(fixed, example.path) == fixed


@pytest.mark.parametrize(
    ("rule", "example"), [c for c in CASES if c.values[1].unsafe_fixed is not None]
)
def test_unsafe_fix_gives_the_stated_text(rule: Rule, example: Example) -> None:
    fixed = fix_text(example.code, example.path, unsafe=True)
    assert fixed == example.unsafe_fixed
    assert fix_text(fixed, example.path, unsafe=True) == fixed
    assert not {f.code for f in lint_text(fixed, example.path)} & set(FIXABLE_CODES)


def test_some_examples_state_their_fix() -> None:
    assert sum(e.fixed is not None for r in CATALOG.values() for e in r.invalid) >= 2
    assert sum(e.unsafe_fixed is not None for r in CATALOG.values() for e in r.invalid) >= 1


@pytest.mark.parametrize("code", FIXABLE_CODES)
def test_fixable_rules_document_fix_safety(code: str) -> None:
    doc = CATALOG[code].doc()
    assert "\n## Fix safety\n" in doc
    assert "--fix" in doc
