"""Kernels launched from Python (Triton) read a view's strides as ints before the launcher
calls data_ptr(), the boundary the guard sees: fix mode must be right from the first call."""

from __future__ import annotations

import torch

from kvguard.runtime import Guard

N, BS, H, D = 8, 4, 2, 8


def launch_write(cache: torch.Tensor, values: torch.Tensor, blocks: torch.Tensor) -> None:
    """Like a Triton launcher: strides taken first, then the raw pointer, then raw addressing."""
    block_stride, slot_stride = cache.stride(0), cache.stride(1)
    base = cache.data_ptr()  # the guard judges here
    flat = torch.empty(0, dtype=cache.dtype).set_(cache.untyped_storage())
    offset = (base - flat.data_ptr()) // cache.element_size()
    for i, b in enumerate(blocks.tolist()):
        start = offset + b * block_stride
        flat.as_strided((BS, H * D), (slot_stride, 1), start).copy_(values[i])


def make_impl(split):
    class Impl:
        attn_type = "decoder"

        def do_kv_cache_update(self, layer, key, value, kv_cache, blocks):
            key_cache, value_cache = split(kv_cache)
            launch_write(key_cache, key, blocks)
            launch_write(value_cache, value, blocks)

    return Impl


class Layer:
    def __init__(self, name: str) -> None:
        self.layer_name = name


def test_fix_is_right_on_the_first_python_launched_call():
    guard = Guard("fix")
    kv_first = guard.wrap(make_impl(lambda kv: kv.unbind(0)))
    blocks_first = guard.wrap(make_impl(lambda kv: kv.unbind(1)))
    raw = torch.zeros(2 * N * BS * H * D)
    key, value = torch.randn(2, BS, H * D), torch.randn(2, BS, H * D)
    kv_first().do_kv_cache_update(
        Layer("self"), key, value, raw.view(2, N, BS, H, D), torch.tensor([0, 1])
    )
    blocks_first().do_kv_cache_update(
        Layer("cross"), key, value, raw.view(N, 2, BS, H, D), torch.tensor([2, 3])
    )
    k, v = raw.view(2, N, BS, H * D).unbind(0)  # the allocation's page map: K/V-first
    assert torch.equal(k[2:4], key) and torch.equal(v[2:4], value)
    assert torch.equal(k[0:2], key) and torch.equal(v[0:2], value)  # "self" left intact


def _kv_first(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return kv_cache.view(2, N, BS, H, D).unbind(0)


class UpdateThenAttend:
    """Splits the cache twice in one call, as vLLM's CrossAttentionImpl.forward does (it
    updates the cache, then calls the backend's forward, which splits it again)."""

    attn_type = "encoder_decoder"

    def do_kv_cache_update(self, layer, key, value, kv_cache, blocks):
        key_cache, value_cache = _kv_first(kv_cache)
        key_cache[blocks] = key
        value_cache[blocks] = value

    def forward(self, layer, key, value, kv_cache, blocks):
        self.do_kv_cache_update(layer, key, value, kv_cache, blocks)
        key_cache, value_cache = _kv_first(kv_cache)
        return key_cache[blocks].clone(), value_cache[blocks].clone()


def test_fix_restrides_every_split_of_one_call():
    guard = Guard("fix")
    impl = guard.wrap(UpdateThenAttend)()
    raw = torch.zeros(N * 2 * BS * H * D)
    page = 2 * BS * H * D * raw.element_size()
    guard.declare_allocation(
        raw, page_bytes=page, block_stride=page, layers=["cross"], num_blocks=N
    )
    pages = raw.view(N, 2, BS, H, D)  # the declared page map: blocks-first
    for blocks in ([1, 2], [5, 3]):  # first sight, then steady state
        key, value = torch.randn(2, 2, BS, H, D)
        k, v = impl.forward(Layer("cross"), key, value, pages, torch.tensor(blocks))
        assert torch.equal(k, key) and torch.equal(v, value)
        assert torch.equal(pages[blocks, 0], key) and torch.equal(pages[blocks, 1], value)
    assert guard.report()["layers"][0]["status"] == "violation"
