"""Every KVG001 finding says how it is fixed or why it is not: also a split outside a class."""

from __future__ import annotations

import pytest

from tests.fix.fix_helpers import lint_text

MODULE_LEVEL = (
    "def fill(key_value_cache, key, value):\n"
    "    key_value_cache[:, 0].copy_(key)\n"
    "    key_value_cache[:, 1].copy_(value)\n"
)
READS_A_LOCAL = (
    "def fill(kv_cache, key, value, head_size):\n"
    "    kv_cache[..., :head_size].copy_(key)\n"
    "    kv_cache[..., head_size:].copy_(value)\n"
)


@pytest.mark.parametrize(
    ("text", "path", "fixed", "note"),
    [
        (MODULE_LEVEL, "vllm/utils/caches.py", False, "inside vLLM's own package"),
        (MODULE_LEVEL, "connector/caches.py", True, ""),
        (READS_A_LOCAL, "connector/caches.py", False, "reads `head_size`, which no runtime layout"),
    ],
)
def test_a_split_outside_a_class_has_a_fix_or_a_reason(text, path, fixed, note) -> None:
    findings = [f for f in lint_text(text, path) if f.code == "KVG001"]
    assert findings
    for finding in findings:
        assert (finding.fix is not None) is fixed
        if not fixed:
            assert finding.fix_withheld and note in finding.fix_withheld
            assert "sits outside a class" in finding.fix_withheld
