"""What a layer's ``get_kv_cache_spec`` says about V (``layouts.stores_no_value``)."""

from __future__ import annotations

import ast
import textwrap

import pytest

from kvguard.lint.layouts import stores_no_value


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
    ],
)
def test_stores_no_value(source: str, expected: bool) -> None:
    assert stores_no_value(_method(source)) is expected
