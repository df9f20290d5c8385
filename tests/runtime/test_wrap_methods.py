"""Guard.wrap: nothing to wrap is an error naming the class; `methods=` names the cache."""

from __future__ import annotations

import pytest
import torch

from kvguard.runtime import Guard, KVLayoutMismatchError, NothingToWrap


class Layer:
    def __init__(self, name: str) -> None:
        self.layer_name = name


def classes():
    class BlocksFirst:  # its cache parameter is called `cache`, not `kv_cache`
        def forward(self, layer, q, cache):
            k, v = cache.unbind(1)
            return (k.sum() + v.sum()) * q

    class KVFirst:
        def forward(self, layer, q, kv_cache):
            k, v = kv_cache.unbind(0)
            return (k.sum() + v.sum()) * q

    class KVFirstNamedCache:
        def forward(self, layer, q, cache):
            k, v = cache.unbind(0)
            return (k.sum() + v.sum()) * q

    return BlocksFirst, KVFirst, KVFirstNamedCache


@pytest.mark.parametrize("mode", ["off", "warn", "strict", "fix"])
def test_a_class_with_no_layer_and_kv_cache_method_is_refused_naming_it(mode):
    blocks_first, _, _ = classes()
    with pytest.raises(ValueError) as info:
        Guard(mode).wrap(blocks_first)
    message = str(info.value)
    assert isinstance(info.value, NothingToWrap)
    assert "Guard.wrap(classes.<locals>.BlocksFirst)" in message
    assert "takes both `layer` and `kv_cache`" in message
    assert "BlocksFirst.forward(self, layer, q, cache)" in message  # what it has instead
    assert "methods={'forward': one of 'q', 'cache'}" in message
    assert blocks_first.forward.__qualname__.endswith("BlocksFirst.forward")  # untouched


def test_a_class_without_methods_is_refused():
    class NoMethods:
        pass

    with pytest.raises(NothingToWrap, match=r"NoMethods.*no method with parameters either"):
        Guard("strict").wrap(NoMethods)


def test_annotations_narrow_the_suggestion_to_the_tensor_parameter():
    class Annotated:
        def forward(self, layer: object, scale: float, cache: torch.Tensor) -> torch.Tensor:
            return cache

    with pytest.raises(NothingToWrap, match=r"methods=\{'forward': 'cache'\}"):
        Guard("warn").wrap(Annotated)


def test_methods_names_the_cache_and_the_overlap_is_caught():
    """The new-user repro: the blocks-first layer wraps nothing by default, so the K/V-first
    layer on the same bytes was reported "ok"; named, it is judged and the overlap raised."""
    blocks_first, kv_first, _ = classes()
    guard = Guard("strict")
    a = guard.wrap(blocks_first, methods={"forward": "cache"})
    b = guard.wrap(kv_first)
    raw = torch.zeros(2 * 8 * 16)
    a().forward(Layer("a"), torch.ones(1), raw.view(8, 2, 16))
    with pytest.raises(KVLayoutMismatchError):
        b().forward(Layer("b"), torch.ones(1), raw.view(2, 8, 16))
    assert {r.name: r.status for r in guard.layers} == {"a": "ok", "b": "violation"}


def test_a_cache_passed_by_keyword_under_its_own_name_is_fixed():
    """Fix mode hands the re-strided cache back under the method's own parameter name."""
    blocks_first, _, kv_first_named_cache = classes()
    guard = Guard("fix")
    a = guard.wrap(blocks_first, methods={"forward": "cache"})
    b = guard.wrap(kv_first_named_cache, methods={"forward": "cache"})
    raw = torch.arange(2 * 8 * 16, dtype=torch.float32)
    a().forward(layer=Layer("a"), q=torch.ones(1), cache=raw.view(8, 2, 16))
    impl = b()
    for _ in range(2):  # first sight, then the steady re-strided path
        out = impl.forward(q=torch.ones(1), cache=raw.view(2, 8, 16), layer=Layer("b"))
        assert torch.equal(out, raw.sum().reshape(1))
    assert {r.name: r.status for r in guard.layers} == {"a": "ok", "b": "fixed"}


def test_layer_none_names_layers_after_the_impl():
    class NoLayer:
        def step(self, q, cache):
            k, v = cache.unbind(0)
            return k.sum() + v.sum() + q

    guard = Guard("warn")
    guard.wrap(NoLayer, methods={"step": "cache"}, layer=None)
    impl = NoLayer()
    impl.step(torch.ones(1), torch.zeros(2, 4, 8))
    (record,) = guard.layers
    assert record.name == f"NoLayer@{id(impl):#x}"
    assert record.status == "ok"


def test_explicit_methods_are_checked_against_the_signatures():
    blocks_first, _, _ = classes()
    guard = Guard("strict")
    with pytest.raises(ValueError, match=r"has no plain method 'forwrd' \(its methods: forward\)"):
        guard.wrap(blocks_first, methods={"forwrd": "cache"})
    with pytest.raises(
        ValueError, match=r"has no KV-cache parameter 'kv'; name one of 'q', 'cache'"
    ):
        guard.wrap(blocks_first, methods={"forward": "kv"})
    with pytest.raises(ValueError, match=r"methods must map method names"):
        guard.wrap(blocks_first, methods={})

    class NoLayer:
        def step(self, q, cache):
            return cache

    with pytest.raises(ValueError, match=r"no parameter 'layer' .* or layer=None"):
        guard.wrap(NoLayer, methods={"step": "cache"})


def test_the_vllm_plugin_passes_over_a_class_with_nothing_to_wrap():
    from kvguard.vllm.hooks import _wrap

    blocks_first, kv_first, _ = classes()
    guard = Guard("warn")
    assert _wrap(guard, blocks_first) == 0
    assert _wrap(guard, kv_first) == 1
    assert getattr(kv_first.forward, "__kvguard_guard__", None) is guard


def test_layers_whose_impl_was_passed_over_are_named_in_one_warning():
    from kvguard.vllm import hooks
    from kvguard.vllm.logs import unguarded_line

    blocks_first, kv_first, _ = classes()
    hooks._state.pop("unwrapped", None)
    try:
        hooks._wrap(Guard("warn"), blocks_first)
        unwrapped = hooks._state["unwrapped"]
    finally:
        hooks._state.pop("unwrapped", None)
    geometry = {"storage_ptr": 1}
    records = [
        {"layer": "a", "impl": blocks_first.__qualname__, "kv_cache": geometry},
        {"layer": "b", "impl": blocks_first.__qualname__, "kv_cache": geometry},
        {"layer": "c", "impl": kv_first.__qualname__, "kv_cache": geometry},
        {"layer": "d", "impl": blocks_first.__qualname__, "kv_cache": None},
    ]
    line = unguarded_line(records, unwrapped)
    assert line is not None and line.startswith("kvguard: 2 attention layers not guarded: ")
    assert "guard.wrap(BlocksFirst, methods={'forward': one of 'q', 'cache'})" in line
    assert unguarded_line(records[2:], unwrapped) is None


def test_the_suggestion_leaves_out_private_and_special_methods():
    class WithInit:
        def __init__(self, layer=None):
            self.layer = layer

        def _helper(self, layer, cache):
            return cache

        def forward(self, layer, cache):
            return cache

    with pytest.raises(NothingToWrap) as info:
        Guard("warn").wrap(WithInit)
    message = str(info.value)
    assert "WithInit.forward(self, layer, cache)" in message
    assert "__init__" not in message and "_helper" not in message
    assert "methods={'forward': 'cache'}" in message
