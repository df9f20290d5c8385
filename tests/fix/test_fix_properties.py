"""Property tests: generated split sites, aliases, formatting and comments.

For every generated impl class: the fixed file parses, a second fix changes nothing,
every line the fix removes or changes held a split (all other lines are kept byte for
byte), a fixed file is clean of KVG001/KVG004, and its methods return the same views.
"""

from __future__ import annotations

import ast
import difflib
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fix.equivalence import compare_modules
from tests.fix.fix_helpers import fix_text, lint_text

HEADER = '''"""Generated."""

import torch


class GenBackend:
    @staticmethod
    def get_impl_cls():
        return GenImpl

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_blocks, block_size, num_kv_heads, head_size)


class GenImpl:
'''

# Each form: (lines of the method body that split `{r}`, names it binds). K/V-first forms
# all give the same views; "axis1" does not (it makes the class unfixable).
PAIR_FORMS = {
    "unbind": ["key_cache, value_cache = {r}.unbind({sp}0{sp}){c}"],
    "unbind_kw": ["key_cache, value_cache = {r}.unbind(dim=0){c}"],
    "torch_unbind": ["key_cache, value_cache = torch.unbind(", "    {r},", "    0,", "){c}"],
    "iterate": ["key_cache, value_cache = {r}{c}"],
    "pair": ["key_cache = {r}[0]{c}", "value_cache = {r}[{sp}1{sp}]"],
    "pair_comment": ["key_cache = {r}[0]", "# between K and V", "value_cache = {r}[1]{c}"],
    "select_apart": [
        "key_cache = {r}.select(0, 0){c}",
        "gap = 'x'",
        "value_cache = {r}.select(0, 1)",
    ],
    "axis1": ["key_cache, value_cache = {r}.unbind(1){c}"],
}


@st.composite
def impl_sources(draw) -> tuple[str, set[int], bool]:  # type: ignore[no-untyped-def]
    """Source text, the 1-based lines that hold splits, whether every form agrees."""
    lines = HEADER.splitlines()
    site_lines: set[int] = set()
    if draw(st.booleans()):
        lines += ["    def __init__(self):", "        self.head_size = 11", ""]
    if draw(st.booleans()):
        lines += ["    # a comment above the methods", "    scale = 1.0  # class attribute", ""]
    forms = draw(st.lists(st.sampled_from(sorted(PAIR_FORMS)), min_size=1, max_size=4))
    for number, form in enumerate(forms):
        alias = draw(st.booleans())
        receiver = "kv" if alias else "kv_cache"
        lines.append(f"    def views_{number}(self, layer, query, kv_cache, metadata):")
        if draw(st.booleans()):
            lines.append(
                f"        {draw(st.sampled_from(['# note', '#: typed', '# kv_cache.unbind(0)']))}"
            )
        if alias:
            lines.append("        kv = kv_cache")
        spacing = draw(st.sampled_from(["", " "]))
        comment = draw(st.sampled_from(["", "  # split", "  # noqa: E501"]))
        for body_line in PAIR_FORMS[form]:
            text = body_line.format(r=receiver, sp=spacing, c=comment)
            lines.append(f"        {text}")
            if not text.startswith(("#", "gap")):  # comment and filler lines stay
                site_lines.add(len(lines))
        if draw(st.booleans()):
            lines.append("")
        lines.append("        return key_cache, value_cache")
        lines.append("")
    agree = "axis1" not in forms
    return "\n".join(lines) + "\n", site_lines, agree


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(impl_sources())
def test_fix_properties(case: tuple[str, set[int], bool]) -> None:
    source, site_lines, agree = case
    fixed = fix_text(source)
    ast.parse(fixed)
    assert fix_text(fixed) == fixed
    old, new = source.splitlines(), fixed.splitlines()
    matcher = difflib.SequenceMatcher(a=old, b=new, autojunk=False)
    for tag, i1, i2, _j1, _j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            touched = set(range(i1 + 1, i2 + 1))
            assert touched <= site_lines, (touched - site_lines, source, fixed)
    if not agree:
        assert fixed == source
        return
    assert fixed != source
    assert not {f.code for f in lint_text(fixed)} & {"KVG001", "KVG004"}
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "a").mkdir()
        (Path(tmp) / "b").mkdir()
        (Path(tmp) / "a" / "gen.py").write_text(source)
        (Path(tmp) / "b" / "gen.py").write_text(fixed)
        assert (
            compare_modules(
                Path(tmp) / "a" / "gen.py", Path(tmp) / "b" / "gen.py", (2, 3, 5, 7, 11)
            )
            > 0
        )
