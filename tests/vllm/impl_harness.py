"""Run the installed vLLM's own attention impl classes on CPU, under the guard.

What is vLLM's own here: the backend and impl classes and every line of their split code,
the cache specs and their backend customisation, the layout resolution
(`resolve_kv_cache_layout`, honouring VLLM_KV_CACHE_LAYOUT as vLLM documents it), the
grouping of layers, the `KVCacheTensor` placement and the allocation of per-layer views
(`allocate_kv_cache`). What is the test's: the kernels (torch references from
`reference_kernels.py`, swapped in where the impls look them up), two import shims for
ROCm-only modules, a stand-in for the attention layer (the scale attributes vLLM's
`Attention` gives an impl) and the per-step attention metadata.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
import types
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from . import reference_kernels  # noqa: F401  (registers the torch.ops.kvguard_vllm_test ops)

ops = torch.ops.kvguard_vllm_test

BACKENDS = {
    "ROCM_AITER_UNIFIED_ATTN": (
        "vllm.v1.attention.backends.rocm_aiter_unified_attn",
        "RocmAiterUnifiedAttentionBackend",
    ),
    "ROCM_ATTN": ("vllm.v1.attention.backends.rocm_attn", "RocmAttentionBackend"),
    "TRITON_ATTN": ("vllm.v1.attention.backends.triton_attn", "TritonAttentionBackend"),
    "CPU_ATTN": ("vllm.v1.attention.backends.cpu_attn", "CPUAttentionBackend"),
}
ENCODER_DECODER_BACKENDS = ("ROCM_AITER_UNIFIED_ATTN", "TRITON_ATTN", "CPU_ATTN")


def backend(name: str) -> type:
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


@functools.cache
def vllm_config():
    from vllm.config import VllmConfig

    return VllmConfig()


# Kernels ------------------------------------------------------------------------------------
def _plain(**features) -> None:
    """The references implement plain causal/non-causal attention; refuse anything else."""
    used = {k: v for k, v in features.items() if v not in (None, 0, 0.0, (-1, -1), -1, False)}
    if used:
        raise NotImplementedError(f"reference kernels do not implement {sorted(used)}")


def install_reference_kernels(monkeypatch, calls: Counter) -> None:
    """Swap every kernel the four impls call for a torch reference, and shim ROCm imports."""
    from vllm import _custom_ops
    from vllm.v1.attention.backends import cpu_attn, rocm_attn, triton_attn
    from vllm.v1.attention.ops import paged_attn, triton_unified_attention

    def unified_attention(
        *,
        q,
        k,
        v,
        out,
        cu_seqlens_q,
        seqused_k,
        softmax_scale,
        causal,
        block_table,
        window_size=None,
        softcap=0,
        alibi_slopes=None,
        sinks=None,
        output_scale=None,
        **_,
    ):
        _plain(
            window=window_size,
            softcap=softcap,
            alibi=alibi_slopes,
            sinks=sinks,
            output_scale=output_scale,
        )
        ops.paged_attention(
            q, k, v, out, cu_seqlens_q, seqused_k, block_table, softmax_scale, causal, "nhd", False
        )
        calls["unified_attention"] += 1

    def chunked_prefill_paged_decode(
        *,
        query,
        output,
        kv_cache_dtype,
        key_cache,
        value_cache,
        block_table,
        query_start_loc,
        seq_lens,
        sm_scale,
        causal=True,
        alibi_slopes=None,
        sliding_window=None,
        sinks=None,
        output_scale=None,
        **_,
    ):
        _plain(alibi=alibi_slopes, window=sliding_window, sinks=sinks, output_scale=output_scale)
        ops.paged_attention(
            query,
            key_cache,
            value_cache,
            output,
            query_start_loc,
            seq_lens,
            block_table,
            sm_scale,
            causal,
            "x_packed",
            kv_cache_dtype.startswith("fp8"),
        )
        calls["chunked_prefill_paged_decode"] += 1

    def writer(name: str, kind: str):
        def write(key, value, key_cache, value_cache, slot_mapping, kv_cache_dtype, *_, **__):
            layout = kind or ("x_packed" if key_cache.ndim == 5 else "nhd")  # its own dispatch
            fp8 = kv_cache_dtype.startswith("fp8")
            ops.write_kv(key, value, key_cache, value_cache, slot_mapping, layout, fp8)
            calls[name] += 1

        return write

    reshape_and_cache_flash = writer("reshape_and_cache_flash", "nhd")
    triton_reshape_and_cache_flash = writer("triton_reshape_and_cache_flash", "")
    reshape_and_cache = writer("reshape_and_cache", "x_packed")

    def cpu_attn_reshape_and_cache(
        key,
        value,
        key_cache,
        value_cache,
        slot_mapping,
        isa,
        k_scale=1.0,
        v_scale=1.0,
        kv_cache_dtype="auto",
    ):
        fp8 = kv_cache_dtype.startswith("fp8")
        ops.write_kv(key, value, key_cache, value_cache, slot_mapping, "hnd", fp8)
        calls["cpu_attn_reshape_and_cache"] += 1

    def cpu_attention_with_kv_cache(
        *,
        query,
        key_cache,
        value_cache,
        output,
        query_start_loc,
        seq_lens,
        scale,
        causal,
        block_table,
        alibi_slopes=None,
        sliding_window=-1,
        softcap=0,
        s_aux=None,
        kv_cache_dtype="auto",
        **_,
    ):
        _plain(alibi=alibi_slopes, window=sliding_window, softcap=softcap, sinks=s_aux)
        ops.paged_attention(
            query,
            key_cache,
            value_cache,
            output,
            query_start_loc,
            seq_lens,
            block_table,
            scale,
            causal,
            "hnd",
            kv_cache_dtype.startswith("fp8"),
        )
        calls["cpu_attention_with_kv_cache"] += 1

    # ROCm AITER unified: aiter's Triton kernel (imported in __init__) and vLLM's Triton
    # kernel for non-causal cross-attention (imported inside forward).
    aiter = types.ModuleType("aiter.ops.triton.unified_attention")
    aiter.unified_attention = unified_attention
    for name in ("aiter", "aiter.ops", "aiter.ops.triton"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "aiter.ops.triton.unified_attention", aiter)
    # vllm.platforms.rocm initialises CUDA at import; the AITER impl only asks it for
    # on_gfx11() (whether to keep the query in full precision).
    rocm = types.ModuleType("vllm.platforms.rocm")
    rocm.on_gfx11 = lambda: False
    monkeypatch.setitem(sys.modules, "vllm.platforms.rocm", rocm)
    monkeypatch.setattr(triton_unified_attention, "unified_attention", unified_attention)
    monkeypatch.setattr(_custom_ops, "reshape_and_cache_flash", reshape_and_cache_flash)
    # ROCm attention: paged decode, the native writer (its `ops` exists only on ROCm/CUDA)
    # and the stride-aware Triton writer.
    monkeypatch.setattr(rocm_attn, "chunked_prefill_paged_decode", chunked_prefill_paged_decode)
    monkeypatch.setattr(rocm_attn, "triton_reshape_and_cache_flash", triton_reshape_and_cache_flash)
    fake_ops = types.SimpleNamespace(reshape_and_cache=reshape_and_cache)
    monkeypatch.setattr(paged_attn, "ops", fake_ops, raising=False)
    # Triton attention.
    monkeypatch.setattr(triton_attn, "unified_attention", unified_attention)
    monkeypatch.setattr(
        triton_attn, "triton_reshape_and_cache_flash", triton_reshape_and_cache_flash
    )
    # CPU attention (cpu_attn calls them through `vllm._custom_ops`).
    assert cpu_attn.ops is _custom_ops
    monkeypatch.setattr(_custom_ops, "cpu_attn_reshape_and_cache", cpu_attn_reshape_and_cache)
    monkeypatch.setattr(_custom_ops, "cpu_attention_with_kv_cache", cpu_attention_with_kv_cache)


# Allocation, the way vLLM does it -----------------------------------------------------------
@dataclass(frozen=True)
class Shape:
    num_heads: int = 4
    num_kv_heads: int = 2
    head_size: int = 32
    block_size: int = 16
    num_blocks: int = 12
    dtype: torch.dtype = torch.float16
    kv_cache_dtype: str = "auto"


@dataclass
class Plan:
    """One attention layer of the model under test."""

    name: str
    backend: str
    attn_type: str = "decoder"  # or "encoder_decoder" (cross-attention)


@dataclass
class Allocation:
    layout: str
    kv_caches: dict[str, torch.Tensor]
    kv_cache_tensors: list  # vLLM's KVCacheTensor placements
    groups: list[list[str]]
    raw: torch.Tensor = field(repr=False)
    kv_cache_config: object = field(repr=False, default=None)  # vLLM's KVCacheConfig


def _spec(plan: Plan, shape: Shape):
    from vllm.v1.kv_cache_interface import (
        CrossAttentionSpec,
        FullAttentionSpec,
        get_kv_quant_mode,
    )

    fp8 = shape.kv_cache_dtype.startswith("fp8")
    kwargs = dict(
        block_size=shape.block_size,
        num_kv_heads=shape.num_kv_heads,
        head_size=shape.head_size,
        dtype=torch.uint8 if fp8 else shape.dtype,
        kv_quant_mode=get_kv_quant_mode(shape.kv_cache_dtype),
    )
    if plan.attn_type == "encoder_decoder":  # vLLM's CrossAttention does not customise it
        return CrossAttentionSpec(**kwargs)
    spec = FullAttentionSpec(**kwargs)
    customize = getattr(backend(plan.backend), "customize_spec", None)
    return customize(spec) if customize is not None else spec


def allocate(
    plans: list[Plan],
    shape: Shape,
    monkeypatch,
    layout: str | None = None,
    preset: str | None = None,
) -> Allocation:
    """Resolve the layout, group the layers and allocate their views with vLLM's own code.

    `layout` is passed the way a user passes it, as VLLM_KV_CACHE_LAYOUT; vLLM refuses one
    that the backends (or the mix of page shapes) do not support. `preset` is pre-set on
    `CacheConfig.kv_cache_layout`, which vLLM documents that resolution honours as-is.
    """
    from vllm.v1.attention.backends.utils import (
        get_supported_kv_cache_layouts,
        resolve_kv_cache_layout,
    )
    from vllm.v1.core.kv_cache_utils import get_kv_cache_config_from_groups, get_kv_cache_groups
    from vllm.v1.worker.utils import allocate_kv_cache

    cfg = vllm_config()
    specs = {p.name: _spec(p, shape) for p in plans}
    backends = list(dict.fromkeys(backend(p.backend) for p in plans))
    supported = [x.name for x in get_supported_kv_cache_layouts(backends)]
    if layout is None:
        monkeypatch.delenv("VLLM_KV_CACHE_LAYOUT", raising=False)
    else:
        monkeypatch.setenv("VLLM_KV_CACHE_LAYOUT", layout)
    monkeypatch.setattr(cfg.cache_config, "kv_cache_layout", preset)
    monkeypatch.setattr(cfg.cache_config, "num_gpu_blocks_override", shape.num_blocks)
    resolved = resolve_kv_cache_layout(cfg, [supported], specs.values())
    groups = get_kv_cache_groups(cfg, dict(specs))
    config = get_kv_cache_config_from_groups(cfg, groups, available_memory=1 << 40)
    kv_caches = allocate_kv_cache(config, torch.device("cpu"), resolved)
    raw = next(iter(kv_caches.values()))
    assert all(
        v.untyped_storage().data_ptr() == raw.untyped_storage().data_ptr()
        for v in kv_caches.values()
    )
    return Allocation(
        resolved.name,
        kv_caches,
        list(config.kv_cache_tensors),
        [list(g.layer_names) for g in config.kv_cache_groups],
        raw,
        config,
    )


def layouts_for(*backend_names: str) -> list[str]:
    """The layouts vLLM accepts for this set of backends, most preferred first."""
    from vllm.v1.attention.backends.utils import get_supported_kv_cache_layouts

    return [
        x.name
        for x in get_supported_kv_cache_layouts(
            list(dict.fromkeys(backend(n) for n in backend_names))
        )
    ]


# Impl, layer, metadata ----------------------------------------------------------------------
class AttentionLayerStub(torch.nn.Module):
    """What vLLM's Attention layer hands its impl: name, head geometry, unit KV scales."""

    def __init__(self, name: str, shape: Shape, isa: str | None = None) -> None:
        super().__init__()
        self.layer_name = name
        self.num_kv_heads, self.head_size = shape.num_kv_heads, shape.head_size
        for attr in ("_q_scale", "_k_scale", "_v_scale", "_prob_scale"):
            setattr(self, attr, torch.tensor(1.0, dtype=torch.float32))
        self._q_scale_float = self._k_scale_float = self._v_scale_float = 1.0
        self.isa = isa


def make_impl(plan: Plan, shape: Shape):
    from vllm.config import set_current_vllm_config
    from vllm.v1.attention.backend import AttentionType

    cls = backend(plan.backend).get_impl_cls()
    cfg = vllm_config()
    saved, cfg.model_config = cfg.model_config, types.SimpleNamespace(dtype=shape.dtype)
    try:  # the CPU impl reads the model dtype (to choose zentorch SDPA) and nothing else
        with set_current_vllm_config(cfg):
            return cls(
                num_heads=shape.num_heads,
                head_size=shape.head_size,
                scale=shape.head_size**-0.5,
                num_kv_heads=shape.num_kv_heads,
                alibi_slopes=None,
                sliding_window=None,
                kv_cache_dtype=shape.kv_cache_dtype,
                attn_type=AttentionType(plan.attn_type),
            )
    finally:
        cfg.model_config = saved


def _metadata(backend_name: str, step: Step, causal: bool, shape: Shape, real_cpu: bool):
    common = dict(
        num_actual_tokens=int(step.cu_q[-1]),
        max_query_len=int((step.cu_q[1:] - step.cu_q[:-1]).max()),
        query_start_loc=step.cu_q,
        max_seq_len=int(step.seq_lens.max()),
        seq_lens=step.seq_lens,
        block_table=step.block_table,
        slot_mapping=step.slot_mapping,
    )
    module = importlib.import_module(BACKENDS[backend_name][0])
    if backend_name.startswith("ROCM"):
        return module.RocmAttentionMetadata(**common, causal=causal)
    if backend_name == "TRITON_ATTN":
        empty = torch.empty(0)
        return module.TritonAttentionMetadata(
            **common,
            seq_threshold_3D=0,
            num_par_softmax_segments=16,
            softmax_segm_output=empty,
            softmax_segm_max=empty,
            softmax_segm_expsum=empty,
            causal=causal,
        )
    scheduler = None
    if real_cpu:
        from vllm import _custom_ops

        scheduler = _custom_ops.cpu_attn_get_scheduler_metadata(
            num_reqs=len(step.seq_lens),
            num_heads=shape.num_heads,
            num_kv_heads=shape.num_kv_heads,
            head_dim=shape.head_size,
            seq_lens=step.seq_lens,
            dtype=shape.dtype,
            query_start_loc=step.cu_q,
            causal=causal,
            sliding_window_size=-1,
            isa=cpu_isa(shape),
            enable_kv_split=False,
            kv_cache_dtype=shape.kv_cache_dtype,
        )
    return module.CPUAttentionMetadata(**common, scheduler_metadata=scheduler, causal=causal)


def cpu_isa(shape: Shape) -> str:
    from vllm.v1.attention.backends.cpu_attn import _get_attn_isa

    return _get_attn_isa(shape.dtype, shape.block_size, shape.head_size, shape.kv_cache_dtype)


# Steps: prefill, then decode ----------------------------------------------------------------
@dataclass
class Step:
    query: torch.Tensor
    key: torch.Tensor | None  # None: nothing new to cache (cross-attention decode)
    value: torch.Tensor | None
    cu_q: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor


class Layer:
    """One layer's impl, its bound cache view and its requests' token history."""

    def __init__(self, plan: Plan, shape: Shape, kv_cache: torch.Tensor, blocks, real_cpu=False):
        self.plan, self.shape, self.kv_cache = plan, shape, kv_cache
        self.impl = make_impl(plan, shape)
        isa = cpu_isa(shape) if plan.backend == "CPU_ATTN" else None
        self.layer = AttentionLayerStub(plan.name, shape, isa)
        self.blocks = blocks  # per request: the block ids it owns (block table row)
        self.real_cpu = real_cpu
        self.gen = torch.Generator().manual_seed(sum(map(ord, plan.name)))
        self.keys: list[torch.Tensor] = [self._empty() for _ in blocks]
        self.values: list[torch.Tensor] = [self._empty() for _ in blocks]

    @property
    def cross(self) -> bool:
        return self.plan.attn_type == "encoder_decoder"

    def _empty(self) -> torch.Tensor:
        return torch.empty(0, self.shape.num_kv_heads, self.shape.head_size, dtype=self.shape.dtype)

    def _randn(self, *size) -> torch.Tensor:
        return torch.randn(*size, generator=self.gen).to(self.shape.dtype)

    def step(self, q_lens: list[int], kv_lens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Cache `kv_lens[r]` new tokens and attend with `q_lens[r]` queries per request.

        Returns (the impl's output, the SDPA reference over every token written so far).
        """
        s = self.shape
        slots = []
        for r, n in enumerate(kv_lens):
            new_k, new_v = (
                self._randn(n, s.num_kv_heads, s.head_size),
                self._randn(n, s.num_kv_heads, s.head_size),
            )
            start = len(self.keys[r])
            for pos in range(start, start + n):
                slots.append(
                    self.blocks[r][pos // s.block_size] * s.block_size + pos % s.block_size
                )
            self.keys[r] = torch.cat([self.keys[r], new_k])
            self.values[r] = torch.cat([self.values[r], new_v])
        new = sum(kv_lens)
        key = torch.cat([k[len(k) - n :] for k, n in zip(self.keys, kv_lens, strict=True)])
        value = torch.cat([v[len(v) - n :] for v, n in zip(self.values, kv_lens, strict=True)])
        width = max(len(b) for b in self.blocks)
        step = Step(
            query=self._randn(sum(q_lens), s.num_heads, s.head_size),
            key=key if new else None,
            value=value if new else None,
            cu_q=torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32),
            seq_lens=torch.tensor([len(k) for k in self.keys], dtype=torch.int32),
            block_table=torch.tensor(
                [b + [0] * (width - len(b)) for b in self.blocks], dtype=torch.int32
            ),
            slot_mapping=torch.tensor(slots, dtype=torch.int64),
        )
        causal = not self.cross
        md = _metadata(self.plan.backend, step, causal, s, self.real_cpu)
        out = torch.zeros(sum(q_lens), s.num_heads, s.head_size, dtype=s.dtype)
        if step.key is not None:
            self.impl.do_kv_cache_update(
                self.layer, step.key, step.value, self.kv_cache, step.slot_mapping
            )
        self.impl.forward(self.layer, step.query, step.key, step.value, self.kv_cache, md, out)
        return out, self._sdpa(step, q_lens, causal)

    def _sdpa(self, step: Step, q_lens: list[int], causal: bool) -> torch.Tensor:
        s = self.shape
        outs = []
        for r in range(len(q_lens)):
            q0, q1 = int(step.cu_q[r]), int(step.cu_q[r + 1])
            k, v = self._as_cached(self.keys[r]), self._as_cached(self.values[r])
            q = step.query[q0:q1].float().transpose(0, 1)  # (heads, q, d)
            k, v = k.transpose(0, 1), v.transpose(0, 1)
            n_q, n_k = q.shape[1], k.shape[1]
            mask = None
            if causal:  # the queries are the last n_q of the n_k positions
                mask = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)
            o = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, scale=s.head_size**-0.5, enable_gqa=True
            )
            outs.append(o.transpose(0, 1))
        return torch.cat(outs).to(s.dtype)

    def _as_cached(self, x: torch.Tensor) -> torch.Tensor:
        """What the cache holds for x: its dtype, or fp8 for an fp8 cache (unit scale)."""
        if self.shape.kv_cache_dtype.startswith("fp8"):
            return x.to(torch.float8_e4m3fn).float()
        return x.float()


PREFILL_THEN_DECODE = [([19, 7], [19, 7]), ([1, 1], [1, 1]), ([1, 1], [1, 1])]
ENCODER_LENS = [12, 20]  # cross-attention caches the encoder's tokens once, at prefill


def run(
    layers: list[Layer], steps=PREFILL_THEN_DECODE
) -> list[tuple[Layer, torch.Tensor, torch.Tensor]]:
    """Each step runs every layer in model order; returns (layer, output, reference)."""
    results = []
    for i, (q_lens, kv_lens) in enumerate(steps):
        for layer in layers:
            kv = kv_lens
            if layer.cross:
                kv = ENCODER_LENS if i == 0 else [0] * len(kv_lens)
            results.append((layer, *layer.step(q_lens, kv)))
    return results


# Wrapping the real classes in place, undone afterwards -------------------------------------
@contextlib.contextmanager
def wrapped(guard, classes: list[type]) -> Iterator[None]:
    """guard.wrap(cls) for each class (as the plugin does), then restore the classes."""
    saved = [(cls, dict(vars(cls))) for cls in classes]
    try:
        for cls in classes:
            guard.wrap(cls)
        yield
    finally:
        for cls, before in saved:
            for name in list(vars(cls)):
                if name not in before:
                    delattr(cls, name)
                elif vars(cls)[name] is not before[name]:
                    setattr(cls, name, before[name])
