"""The fixit peer for benchmarks/lint_speed.py: one rule equivalent to KVG001's core form.

It flags ``<kv-cache name>.unbind(...)``, ``[0]``/``[1]`` subscripts and ``.split/.chunk``
calls on names and attributes called like a KV cache: the work fixit must do per file
(a full libcst parse plus metadata) is what the benchmark compares, not the rule's finesse.
"""

import re
from typing import ClassVar

import libcst as cst
from fixit import Invalid, LintRule, Valid

_KV = re.compile(r"(\w*_)?kv_cache(_tensor)?")


def _is_kv(node: cst.BaseExpression) -> bool:
    if isinstance(node, cst.Name):
        return _KV.fullmatch(node.value) is not None
    if isinstance(node, cst.Attribute):
        return _KV.fullmatch(node.attr.value) is not None
    return False


class RawKvSplit(LintRule):
    MESSAGE = "raw K/V split of a paged KV cache"
    VALID: ClassVar = [Valid("k, v = self._split_kv_cache(kv_cache)")]
    INVALID: ClassVar = [Invalid("k, v = kv_cache.unbind(0)"), Invalid("k = kv_cache[0]")]

    def visit_Call(self, node: cst.Call) -> None:
        func = node.func
        if (
            isinstance(func, cst.Attribute)
            and func.attr.value in ("unbind", "split", "chunk", "select", "narrow")
            and _is_kv(func.value)
        ):
            self.report(node)

    def visit_Subscript(self, node: cst.Subscript) -> None:
        if _is_kv(node.value) and len(node.slice) >= 1:
            self.report(node)
