"""Kernels launched from Python (Triton) read a view's strides as ints before the launcher
calls data_ptr(), the boundary the guard sees: fix mode must be right from the first call."""

from __future__ import annotations

import gc
import weakref

import torch

from kvguard.runtime import Guard, KVLayoutMismatchError

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
    assert guard.report()["layers"][0]["status"] == "fixed"


# Fix mode never hands a launcher mixed geometry --------------------------------------------
def _flatten_split(kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks-first K and V through `flatten(0, 1)`: no re-strided kv_cache can give
    K/V-first views through it (flatten would copy), so fix mode cannot re-stride the input."""
    flat = kv.flatten(0, 1)
    return flat[0::2], flat[1::2]


def test_fix_refuses_what_it_cannot_restride_for_a_python_launcher():
    guard = Guard("fix")
    kv_first = guard.wrap(make_impl(lambda kv: kv.unbind(0)))
    flattened = guard.wrap(make_impl(_flatten_split))
    raw = torch.zeros(2 * N * BS * H * D)
    key, value = torch.randn(2, BS, H * D), torch.randn(2, BS, H * D)
    kv_first().do_kv_cache_update(
        Layer("self"), key, value, raw.view(2, N, BS, H, D), torch.tensor([0, 1])
    )
    before = raw.clone()
    try:
        flattened().do_kv_cache_update(
            Layer("cross"), key, value, raw.view(N, 2, BS, H, D), torch.tensor([2, 3])
        )
    except KVLayoutMismatchError as error:  # refused, as strict would: nothing written
        assert torch.equal(raw, before)
        assert "cannot" in str(error) and "'cross'" in str(error)
    else:  # or solved: then every byte lands where the page map puts it
        k, v = raw.view(2, N, BS, H * D).unbind(0)
        assert torch.equal(k[2:4], key) and torch.equal(v[2:4], value)
        assert torch.equal(k[0:2], key) and torch.equal(v[0:2], value)
    record = {r["name"]: r for r in guard.report()["layers"]}["cross"]
    assert record["fix_path"] != "intercept"


@torch.library.custom_op("kvguard_test::write_pages", mutates_args=("key_cache", "value_cache"))
def write_pages(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    blocks: torch.Tensor,
) -> None:
    key_cache[blocks] = key.view_as(key_cache[blocks])
    value_cache[blocks] = value.view_as(value_cache[blocks])


def test_fix_intercepts_a_kernel_op_that_receives_whole_views():
    """A kernel op gets each view whole (strides and pointer together): swapping the views at
    its call is safe, and fix mode does it when it cannot re-stride the input."""
    guard = Guard("fix")

    class OpImpl:
        attn_type = "decoder"

        def __init__(self, split):
            self.split = split

        def do_kv_cache_update(self, layer, key, value, kv_cache, blocks):
            key_cache, value_cache = self.split(kv_cache)
            torch.ops.kvguard_test.write_pages(key, value, key_cache, value_cache, blocks)

    guard.wrap(OpImpl)
    raw = torch.zeros(2 * N * BS * H * D)
    key, value = torch.randn(2, BS, H * D), torch.randn(2, BS, H * D)
    OpImpl(lambda kv: kv.unbind(0)).do_kv_cache_update(
        Layer("self"), key, value, raw.view(2, N, BS, H, D), torch.tensor([0, 1])
    )
    cross = OpImpl(_flatten_split)
    for blocks in ([2, 3], [4, 5]):  # first sight, then steady state
        cross.do_kv_cache_update(
            Layer("cross"), key, value, raw.view(N, 2, BS, H, D), torch.tensor(blocks)
        )
        k, v = raw.view(2, N, BS, H * D).unbind(0)
        assert torch.equal(k[blocks], key) and torch.equal(v[blocks], value)
    assert torch.equal(raw.view(2, N, BS, H * D)[0, 0:2], key)  # "self" left intact
    record = {r["name"]: r for r in guard.report()["layers"]}["cross"]
    assert record["fix_path"] == "intercept" and record["status"] == "fixed"


def test_a_fixed_first_call_leaves_no_reference_cycle_holding_the_callers_frames():
    """fix mode's rerun of a first call (`_Restart`) must not keep the caller's stack alive:
    freed only by the cyclic GC, a caller's CUDA graph would be destroyed at a random later
    moment, possibly inside another capture (which that invalidates)."""

    class Marker:
        pass

    guard = Guard("fix")
    kv_first = guard.wrap(make_impl(lambda kv: kv.unbind(0)))
    blocks_first = guard.wrap(make_impl(lambda kv: kv.unbind(1)))
    raw = torch.zeros(2 * N * BS * H * D)
    key, value = torch.randn(2, BS, H * D), torch.randn(2, BS, H * D)
    kv_first().do_kv_cache_update(
        Layer("self"), key, value, raw.view(2, N, BS, H, D), torch.tensor([0, 1])
    )

    def caller(marker: Marker) -> None:  # `marker` stands for a caller's captured graph
        blocks_first().do_kv_cache_update(
            Layer("cross"), key, value, raw.view(N, 2, BS, H, D), torch.tensor([2, 3])
        )

    gc.collect()
    gc.disable()
    try:
        marker = Marker()
        alive = weakref.ref(marker)
        caller(marker)
        del marker
        assert alive() is None, "the first fixed call left a cycle holding the caller's frame"
    finally:
        gc.enable()
    assert guard.report()["layers"][1]["status"] == "fixed"
