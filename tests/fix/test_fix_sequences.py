"""A safe fix keeps working on every value its site accepts: a (key, value) tuple or list too.

``k, v = kv_cache`` and ``kv_cache[0]`` run on a Python tuple/list as on a tensor; nothing in
these classes proves the receiver a tensor (unknown stays flaggable), so the splitter the fix
routes them through must run on both, or the fix is withheld.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.fix.equivalence import caches, load, signature
from tests.fix.fix_helpers import fix_text, lint_text

BACKEND = """
class KvFirstBackend:
    @staticmethod
    def get_impl_cls():
        return {impl}

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_blocks, block_size, num_kv_heads, head_size)

"""

UNPACKING = """
class UnpackImpl:
    def views_forward(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache
        return key_cache, value_cache

    def views_update(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(0)
        return key_cache, value_cache
"""

INDEXING = """
class IndexImpl:
    def views_forward(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(0)
        return key_cache, value_cache

    def views_update(self, layer, query, kv_cache, metadata):
        key_cache = kv_cache[0]
        value_cache = kv_cache[1]
        return key_cache, value_cache
"""

SHAPE = (2, 3, 5, 7, 11)


def _module(tmp_path: Path, name: str, text: str):  # type: ignore[no-untyped-def]
    path = tmp_path / f"{name}.py"
    path.write_text(text)
    return load(path, f"kvguard_seq_{name}_{tmp_path.name}")


def _receivers() -> list[object]:
    k, v = torch.randn(SHAPE[1:]), torch.randn(SHAPE[1:])
    return [*caches(SHAPE), (k, v), [k, v]]


@pytest.mark.parametrize(("impl", "body"), [("UnpackImpl", UNPACKING), ("IndexImpl", INDEXING)])
def test_the_fixed_class_accepts_what_the_original_accepted(
    tmp_path: Path, impl: str, body: str
) -> None:
    original = "import torch\n" + BACKEND.format(impl=impl) + body
    fixed = fix_text(original)
    assert "self._split_kv_cache(kv_cache)" in fixed  # the fix is offered and applied
    assert ".unbind(0)\n" not in fixed.split("def _split_kv_cache", 1)[1].split("def ", 1)[0]
    old = getattr(_module(tmp_path, "orig", original), impl)()
    new = getattr(_module(tmp_path, "fixed", fixed), impl)()
    compared = 0
    for receiver in _receivers():
        for method in ("views_forward", "views_update"):
            try:
                expected = signature(getattr(old, method)(None, None, receiver, None))
            except AttributeError:  # the original rejects it (a tuple has no .unbind)
                continue
            assert signature(getattr(new, method)(None, None, receiver, None)) == expected
            compared += 1
    assert compared == 2 * 2 + 2 * 1  # tensors through both methods, sequences through one


def test_unpacking_splitter_text() -> None:
    fixed = fix_text(BACKEND.format(impl="UnpackImpl") + UNPACKING)
    assert "        key, value = kv_cache\n        return key, value\n" in fixed
    assert "a (key, value) pair passes too" in " ".join(fixed.split())
    assert fix_text(fixed) == fixed
    assert not {f.code for f in lint_text(fixed)} & {"KVG001", "KVG004"}


def test_a_tensor_only_existing_splitter_is_not_used_for_a_site_that_takes_a_tuple() -> None:
    source = (
        BACKEND.format(impl="ReuseImpl")
        + """
class ReuseImpl:
    def _split_kv_cache(self, kv_cache):
        return kv_cache.unbind(0)

    def views_forward(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache
        return key_cache, value_cache
"""
    )
    assert fix_text(source) == source
    (finding,) = [f for f in lint_text(source) if f.code == "KVG001"]
    assert finding.fix is None
    assert finding.fix_withheld == (
        "the unpacking of `kv_cache` in views_forward also runs on a (key, value) tuple or "
        "list, which ReuseImpl._split_kv_cache does not: route it by hand"
    )


def test_tensor_only_sites_keep_the_tensor_splitter() -> None:
    source = (
        "import torch\n"
        + BACKEND.format(impl="TensorImpl")
        + """
class TensorImpl:
    def views_forward(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(0)
        return key_cache, value_cache

    def views_update(self, layer, query, kv_cache, metadata):
        return kv_cache.select(0, 0), kv_cache.select(0, 1)
"""
    )
    fixed = fix_text(source)
    assert "def _split_kv_cache(self, kv_cache: torch.Tensor):" in fixed
    assert "        return kv_cache.unbind(0)\n" in fixed


def test_the_unsafe_runtime_fix_says_it_rejects_a_tuple() -> None:
    source = "def save(kv_cache):\n    key_cache, value_cache = kv_cache\n"
    (finding,) = [f for f in lint_text(source, "plugin/save.py") if f.code == "KVG001"]
    assert finding.fix is not None and finding.fix.applicability == "unsafe"
    assert "TypeError on a (key, value) tuple or list" in finding.fix.message
