"""What a layer's ``get_kv_cache_spec`` says about V (``layouts.stores_no_value``)."""

from __future__ import annotations

import ast
import textwrap

import pytest

from kvguard.config import Config
from kvguard.engine import build_index, kv_names, lint_source, scan_source
from kvguard.lint.layouts import stores_no_value
from tests.lint.test_catalog import SEVERITY


def _method(source: str) -> ast.FunctionDef:
    node = ast.parse(textwrap.dedent(source)).body[0]
    assert isinstance(node, ast.FunctionDef)
    return node


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        # every spec it builds stores no V
        ("def get_kv_cache_spec(self, c):\n    return Spec(head_size=256, head_size_v=0)", True),
        (
            "def get_kv_cache_spec(self, c):\n"
            "    spec = Spec(block_size=16, head_size=64, head_size_v=0)\n"
            "    return spec",
            True,
        ),
        # V stored: by default (no head_size_v), or of another size
        ("def get_kv_cache_spec(self, c):\n    return Spec(head_size=256)", False),
        ("def get_kv_cache_spec(self, c):\n    return Spec(head_size=256, head_size_v=64)", False),
        # one branch stores V: the layer's cache may hold both
        (
            "def get_kv_cache_spec(self, c):\n"
            "    if self.k_only:\n"
            "        return Spec(head_size=256, head_size_v=0)\n"
            "    return Spec(head_size=256, head_size_v=self.v_size)",
            False,
        ),
        # False is no size; a spec the method does not build says nothing
        ("def get_kv_cache_spec(self, c):\n    return Spec(head_size=8, head_size_v=False)", False),
        ("def get_kv_cache_spec(self, c):\n    return self.spec", False),
        # another return path hands back a spec it did not build: it may store V
        (
            "def get_kv_cache_spec(self, c):\n"
            "    if self.k_only:\n"
            "        return Spec(head_size=256, head_size_v=0)\n"
            "    return super().get_kv_cache_spec(c)",
            False,
        ),
        ("def get_kv_cache_spec(self, c):\n    return Spec(16, 1, 256, 0)", False),  # positional
        (
            "def get_kv_cache_spec(self, c):\n"
            "    spec = Spec(head_size=64, head_size_v=0)\n"
            "    if self.wide:\n"
            "        spec = replace(spec, head_size_v=64)\n"
            "    return spec",
            False,
        ),
        # a nested function's return is not the method's
        (
            "def get_kv_cache_spec(self, c):\n"
            "    def full():\n"
            "        return Spec(head_size=64)\n"
            "    return Spec(head_size=64, head_size_v=0)",
            True,
        ),
    ],
)
def test_stores_no_value(source: str, expected: bool) -> None:
    assert stores_no_value(_method(source)) is expected


def _flagged_lines(code: str) -> list[int]:
    text, path, config = textwrap.dedent(code), "layers.py", Config()
    facts = scan_source(text, path, kv_names(config))
    index = build_index({path: facts}, config)
    found = lint_source(text, path, config, index, SEVERITY, facts)
    return sorted(f.line for f in found if f.code == "KVG001")


def test_the_nearest_get_kv_cache_spec_decides() -> None:
    code = """
    class KOnlyLayer(nn.Module, AttentionLayerBase):
        def get_kv_cache_spec(self, c):
            return FullAttentionSpec(block_size=16, num_kv_heads=1, head_size=256, head_size_v=0)

        def bind_kv_cache(self, kv_cache):
            self.summary = kv_cache[:, 0]


    class FullLayer(KOnlyLayer):
        def get_kv_cache_spec(self, c):
            return FullAttentionSpec(block_size=16, num_kv_heads=8, head_size=128)

        def bind_kv_cache(self, kv_cache):
            self.key_cache = kv_cache[:, 0]


    class InheritingLayer(KOnlyLayer):
        def bind_kv_cache(self, kv_cache):
            self.summary = kv_cache[:, 0]
    """
    # the override stores V again: its split is flagged; the class that inherits the K-only
    # spec is not
    assert _flagged_lines(code) == [15]
