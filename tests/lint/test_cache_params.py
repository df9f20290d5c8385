"""Parameters that hold a cache because every call in the file passes one (``cache_params``)."""

from __future__ import annotations

import ast
import textwrap

import pytest

from kvguard.config import Config
from kvguard.engine import build_index, kv_names, lint_source, scan_source
from kvguard.lint.facts import file_cache_params
from tests.lint.test_catalog import SEVERITY

NAMES = kv_names(Config())


def _params(code: str) -> dict[tuple[str | None, str], tuple[str, ...]]:
    return file_cache_params(ast.parse(textwrap.dedent(code)), NAMES)


def _lines(code: str) -> list[int]:
    """KVG001 lines, the same from the units the ast pass keeps and from the whole module."""
    text, path, config = textwrap.dedent(code), "connector.py", Config()
    facts = scan_source(text, path, kv_names(config))
    index = build_index({path: facts}, config)
    by_units = lint_source(text, path, config, index, SEVERITY, facts)
    whole = lint_source(text, path, config, index, SEVERITY)
    lines = sorted(f.line for f in by_units if f.code == "KVG001")
    assert lines == sorted(f.line for f in whole if f.code == "KVG001")
    return lines


def test_a_method_fed_a_layer_of_the_cache_list_holds_a_cache() -> None:
    code = """
    class Offloader:
        def save(self, layer_name, ids):
            self._copy_out(self.kv_caches[layer_name], ids)

        def _copy_out(self, paged_cache, ids):
            self.store(paged_cache[0, ids])
    """
    assert _params(code) == {("Offloader", "_copy_out"): ("paged_cache",)}
    assert _lines(code) == [7]


@pytest.mark.parametrize(
    "loop",
    [
        "for name, layer in kv_caches.items():\n        offload(layer)",
        "for layer in kv_caches.values():\n        offload(layer)",
        "for name in names:\n        layer = kv_caches[name]\n        offload(layer)",
        "for name in names:\n        offload(kv_caches[name])",
        "for name in names:\n        offload(layer_cache=kv_caches[name])",
    ],
)
def test_what_a_caller_passes_that_is_one_layer(loop: str) -> None:
    code = (
        "def offload(layer_cache):\n    return layer_cache[0]\n\n\n"
        f"def run(kv_caches, names):\n    {loop}\n"
    )
    assert _params(code) == {(None, "offload"): ("layer_cache",)}


@pytest.mark.parametrize(
    "caller",
    [
        # iterating a dict gives its keys
        "for name in kv_caches:\n        offload(name)",
        # one call passes something else
        "offload(kv_caches['a'])\n    offload(scales)",
        # *args may fill the slot
        "offload(*kv_caches)",
        # **kwargs may fill any parameter
        "offload(kv_caches['a'], **extra)",
        # a local bound to a cache here and to something else there
        "x = kv_caches['a']\n    x = scales\n    offload(x)",
        # an attribute call on another object reaches some other function
        "other.offload(kv_caches['a'])",
    ],
)
def test_calls_that_do_not_say_cache(caller: str) -> None:
    code = (
        "def offload(tensor):\n    store(tensor[0])\n\n\n"
        f"def run(kv_caches, scales, extra, other):\n    {caller}\n"
    )
    assert _params(code) == {}
    assert _lines(code) == []


def test_slots_count_after_self_and_not_for_static_methods() -> None:
    code = """
    class C:
        def a(self):
            self.bound(self.kv_cache)
            self.static(self.kv_cache)

        def bound(self, tensor):
            return tensor[0]

        @staticmethod
        def static(tensor):
            return tensor[0]
    """
    assert _params(code) == {("C", "bound"): ("tensor",), ("C", "static"): ("tensor",)}


def test_a_cache_passed_on_through_a_helper_of_a_helper() -> None:
    code = """
    class C:
        def a(self, layer_name):
            self.b(self.kv_caches[layer_name])

        def b(self, buf):
            self.c(buf)

        def c(self, raw):
            k, v = raw.unbind(0)
            self.store(k, v)
    """
    assert _params(code) == {("C", "b"): ("buf",), ("C", "c"): ("raw",)}
    assert _lines(code) == [10]


def test_a_module_level_call_counts_against_it() -> None:
    code = (
        "def offload(t):\n    return t[0]\n\n\n"
        "def run(kv_cache):\n    offload(kv_cache)\n\n\noffload(weights)\n"
    )
    assert _params(code) == {}


def test_a_cache_named_parameter_needs_no_caller() -> None:
    code = (
        "def offload(kv_cache):\n    store(kv_cache[0])\n\n\n"
        "def run(kv_caches):\n    offload(kv_caches[0])\n"
    )
    assert _params(code) == {}  # its name already says so
    assert _lines(code) == [2]


def test_evidence_in_the_callee_still_clears_it() -> None:
    code = """
    class Offloader:
        def save(self, layer_name):
            self._copy_out(self.kv_caches[layer_name])

        def _copy_out(self, pair: tuple[torch.Tensor, torch.Tensor]):
            self.store(pair[0])
    """
    assert _params(code) == {("Offloader", "_copy_out"): ("pair",)}
    assert _lines(code) == []


def test_an_attribute_the_class_only_binds_to_a_cache_is_one_in_every_method() -> None:
    code = """
    class Connector:
        def register(self, kv_cache):
            self.buf = kv_cache

        def save(self, ids):
            self.store(self.buf[0][ids])
    """
    assert _params(code)[("Connector", "save")] == ("buf",)
    assert _lines(code) == [7]


@pytest.mark.parametrize(
    "other",
    [
        "self.buf = None",  # bound to something else too
        "self.buf, self.n = kv_cache, 2",  # a tuple target: no one cache
        "self.buf += 1",
    ],
)
def test_an_attribute_bound_to_anything_else_is_left_to_its_name(other: str) -> None:
    code = f"""
class Connector:
    def register(self, kv_cache):
        self.buf = kv_cache

    def reset(self, kv_cache):
        {other}

    def save(self, ids):
        self.store(self.buf[0][ids])
"""
    assert "buf" not in _params(code).get(("Connector", "save"), ())
    assert _lines(code) == []
