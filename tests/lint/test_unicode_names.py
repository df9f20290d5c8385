"""Names match as CPython sees them: NFKC-normalised (PEP 3131).

``\\uff4bv_cache`` (a fullwidth k) and ``kv_cache`` are one variable to the interpreter, so
a split of either is a split of the cache, in the prefilter, the receiver-word gate, the
rules and the fixer alike.
"""

from __future__ import annotations

import pytest

from kvguard.config import Config
from kvguard.engine import build_index, kv_names, lint_source, scan_source
from kvguard.lint.names import KvNames, as_python_sees
from tests.fix.fix_helpers import SEVERITY, fix_text

WIDE_K = "\uff4b"  # FULLWIDTH LATIN SMALL LETTER K: NFKC gives "k"
NAMES = kv_names(Config())

SOURCES = {
    "every spelling wide": (
        "def forward(self, layer, query, {k}v_cache, attn_metadata):\n"
        "    key_cache, value_cache = {k}v_cache.unbind(1)\n"
        "    return key_cache, value_cache\n"
    ),
    "bound plain, used wide": (
        "def forward(self, layer, query, kv_cache, attn_metadata):\n"
        "    key_cache, value_cache = {k}v_cache.unbind(1)\n"
        "    return key_cache, value_cache\n"
    ),
    "an attribute": (
        "class Impl(AttentionImpl):\n"
        "    def forward(self, layer):\n"
        "        key_cache, value_cache = self.{k}v_cache.unbind(0)\n"
    ),
}


def _lint(text: str, whole: bool) -> list:  # type: ignore[no-untyped-def]
    config = Config()
    facts = scan_source(text, "impl.py", NAMES)
    index = build_index({"impl.py": facts}, config)
    return lint_source(text, "impl.py", config, index, SEVERITY, None if whole else facts)


@pytest.mark.parametrize("name", SOURCES)
def test_a_split_of_a_wide_spelling_is_flagged_like_the_plain_one(name: str) -> None:
    text = SOURCES[name].format(k=WIDE_K)
    plain = SOURCES[name].format(k="k")
    assert NAMES.mentioned_in(text)
    found = _lint(text, whole=False)
    assert [(f.code, f.line, f.column) for f in found] == [
        (f.code, f.line, f.column) for f in _lint(plain, whole=False)
    ]
    assert found
    assert found == _lint(text, whole=True)  # the pipeline and whole-module analysis agree


def test_the_receiver_word_gate_gives_offsets_in_the_original_text() -> None:
    text = f"x = y\nkey, value = {WIDE_K}v_cache.unbind(1)\n"
    offsets = NAMES.receiver_words(text)
    assert offsets == [text.index(WIDE_K)]


def test_configured_patterns_are_normalised_too() -> None:
    names = KvNames((f"{WIDE_K}v_*",), (), ())
    assert names.is_cache("kv_pages") and names.is_cache(f"{WIDE_K}v_pages")
    assert not names.is_cache("qv_pages")


def test_the_fix_routes_a_wide_spelling() -> None:
    text = (
        "class Impl(AttentionImpl):\n"
        "    def forward(self, layer, query, kv_cache, attn_metadata):\n"
        f"        k = {WIDE_K}v_cache[0]\n"
        "        v = kv_cache[1]\n"
    )
    fixed = fix_text(text)
    assert f"k, v = self._split_kv_cache({WIDE_K}v_cache)" in fixed


def test_normal_form() -> None:
    assert as_python_sees(f"{WIDE_K}v_cache") == "kv_cache"
    assert as_python_sees("kv_cache") == "kv_cache"
    assert as_python_sees("\u212bngstrom") == "\u00c5ngstrom"  # ANGSTROM SIGN -> A with ring
