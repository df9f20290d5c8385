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
