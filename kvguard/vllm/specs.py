"""vLLM metadata -> the guard's declarations. Every vLLM API is detected by feature, never by
version string.

Two generations of KV-cache declaration exist:

- per-backend `get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size)` plus an
  optional `get_kv_cache_stride_order()` (vLLM 0.2x): each backend states its own tensor;
- `KVCacheLayout` + `create_kv_cache_views` (newer): one logical `[B, H, N, C]` view per layer,
  physically ordered by the resolved layout, `C` packing a token's content in bytes, and a
  `KVCacheTensor` stating each layer's page (`offset + l*layer_stride + b*block_stride`).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any

import torch

from .page_runs import page_runs

logger = logging.getLogger("kvguard")


def _first_module(*names: str):
    for name in names:
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    return None


def layout_api(backend_cls: type) -> str:
    """ "get_kv_cache_shape" (per-backend shapes) or "KVCacheLayout" (logical [B, H, N, C])."""
    own = getattr(backend_cls, "get_kv_cache_shape", None)
    if own is not None:
        try:
            backend_cls.get_kv_cache_shape(2, 16, 1, 64)
            return "get_kv_cache_shape"
        except NotImplementedError:
            pass
    interface = _first_module("vllm.v1.kv_cache_interface")
    if interface is not None and hasattr(interface, "create_kv_cache_views"):
        return "KVCacheLayout"
    raise TypeError(
        f"{backend_cls.__name__} declares no KV-cache shape this adapter knows: neither "
        "get_kv_cache_shape() nor vLLM's KVCacheLayout views"
    )


def declared_layout(
    backend_cls: type,
    *,
    num_blocks: int,
    block_size: int,
    num_kv_heads: int,
    head_size: int,
    dtype: torch.dtype = torch.float16,
    kv_layout: Any = None,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """A zeroed per-layer cache tensor exactly as the installed vLLM would bind it to one layer
    of `backend_cls` sitting alone on its own buffer.

    Its shape, strides and storage offset are the backend's declaration; feed it to the
    backend impl's `forward`/`do_kv_cache_update` (under a `Guard`) to see whether the impl's
    own split agrees with it.

    - get_kv_cache_shape API: `get_kv_cache_shape(...)` in the physical order of
      `get_kv_cache_stride_order()` when the backend has one, permuted back to the logical
      order, in `dtype`.
    - KVCacheLayout API: the backend's `customize_spec` applied to a full-attention spec, then
      vLLM's own `create_kv_cache_views` on an int8 buffer; `kv_layout` (a `KVCacheLayout`
      member or its name) defaults to the backend's first `supported_kv_cache_layouts()`,
      else to vLLM's default preference (LBNHC).
    """
    if layout_api(backend_cls) == "get_kv_cache_shape":
        return _shape_api_tensor(
            backend_cls, num_blocks, block_size, num_kv_heads, head_size, dtype, device
        )
    from vllm.v1 import kv_cache_interface as kvi

    spec = kvi.FullAttentionSpec(
        block_size=block_size, num_kv_heads=num_kv_heads, head_size=head_size, dtype=dtype
    )
    customize = getattr(backend_cls, "customize_spec", None)
    if customize is not None:
        spec = customize(spec)
    layout = _resolve_layout(backend_cls, kv_layout)
    page = spec.page_size_bytes
    tensor = kvi.KVCacheTensor(
        size=page * num_blocks,
        layers=["layer"],
        layer_stride=page * num_blocks,
        block_stride=page,
    )
    raw = torch.zeros(page * num_blocks, dtype=torch.int8, device=device)
    (view,) = kvi.create_kv_cache_views(raw, spec, num_blocks, layout, tensor)
    return view


def _shape_api_tensor(backend_cls, num_blocks, block_size, num_kv_heads, head_size, dtype, device):
    shape = tuple(backend_cls.get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size))
    try:
        order = tuple(backend_cls.get_kv_cache_stride_order())
    except (AttributeError, NotImplementedError):
        order = tuple(range(len(shape)))
    if sorted(order) != list(range(len(shape))):  # e.g. an order that includes a layer dim
        order = tuple(range(len(shape)))
    physical = torch.zeros([shape[i] for i in order], dtype=dtype, device=device)
    inverse = [order.index(i) for i in range(len(shape))]
    return physical.permute(*inverse)


def _resolve_layout(backend_cls: type, kv_layout: Any):
    from vllm.v1.kv_cache_interface import KVCacheLayout

    if isinstance(kv_layout, str):
        return KVCacheLayout[kv_layout]
    if kv_layout is not None:
        return kv_layout
    supported = getattr(backend_cls, "supported_kv_cache_layouts", lambda: None)()
    return supported[0] if supported else KVCacheLayout.LBNHC


# The binding point: what a model runner's KVCacheConfig says about each allocation --------
@dataclass(frozen=True)
class Declaration:
    """Arguments for `Guard.declare_allocation`, from one vLLM `KVCacheTensor`."""

    tensor: torch.Tensor  # a bound view of the allocation (for its storage)
    page_bytes: int
    block_stride: int
    offset: int
    layer_stride: int
    layers: tuple[str, ...]
    num_blocks: int | None
    planes: tuple[int, ...] = (0,)  # a page of head-outer layouts is one run per head slot

    def declare(self, guard: Any) -> None:
        guard.declare_allocation(
            self.tensor,
            page_bytes=self.page_bytes,
            block_stride=self.block_stride,
            offset=self.offset,
            layer_stride=self.layer_stride,
            layers=list(self.layers),
            num_blocks=self.num_blocks,
            planes=self.planes,
        )


def bound_tensor(kv_cache: Any) -> torch.Tensor | None:
    """The tensor a layer was bound to: newer vLLM binds a tensor, 0.2x a list per engine."""
    if isinstance(kv_cache, (list, tuple)):
        kv_cache = kv_cache[0] if kv_cache else None
    if isinstance(kv_cache, torch.Tensor) and kv_cache.numel() > 0:
        return kv_cache
    return None


def declarations(
    kv_cache_config: Any, bound: dict[str, torch.Tensor], sharing: dict[str, str]
) -> list[Declaration]:
    """Page maps stated by `kv_cache_config.kv_cache_tensors`, where vLLM states them.

    Only `KVCacheTensor`s with `layer_stride` and `block_stride` (newer vLLM) state a page
    map; older ones (`size`, `shared_by`) give none, and the guard takes each region's map
    from the first layer bound to it. `bound` maps layer names to their bound tensors;
    `sharing` maps a KV-sharing layer to its target, which gets the target's page.
    """
    out: list[Declaration] = []
    for t in getattr(kv_cache_config, "kv_cache_tensors", None) or ():
        if not all(hasattr(t, a) for a in ("layers", "layer_stride", "block_stride")):
            continue
        layers = [name for name in t.layers if name in bound]
        if not layers or layers[0] != t.layers[0]:
            continue
        spec = _spec_of(kv_cache_config, t.layers[0])
        if spec is None or not getattr(spec, "has_layer_views", True):
            continue
        page = getattr(spec, "page_size_padded", None) or getattr(spec, "page_size_bytes", None)
        if not isinstance(page, int) or page <= 0:
            continue
        first = bound[t.layers[0]]
        base = first.storage_offset() * first.element_size()  # the view's byte 0 of block 0
        num_blocks = _num_blocks(kv_cache_config, t)
        page, planes = page_runs(first)
        out.append(
            Declaration(
                first,
                page,
                t.block_stride,
                base,
                t.layer_stride,
                tuple(t.layers),
                num_blocks,
                planes,
            )
        )
        index = {name: i for i, name in enumerate(t.layers)}
        for reader, target in sharing.items():
            if target in index and reader in bound and reader not in index:
                out.append(
                    Declaration(
                        first,
                        page,
                        t.block_stride,
                        base + index[target] * t.layer_stride,
                        0,
                        (reader,),
                        num_blocks,
                        planes,
                    )
                )
    return out


def _spec_of(kv_cache_config: Any, layer: str) -> Any:
    for group in getattr(kv_cache_config, "kv_cache_groups", ()):
        if layer in group.layer_names:
            spec = group.kv_cache_spec
            per_layer = getattr(spec, "kv_cache_specs", None)  # UniformTypeKVCacheSpecs
            return per_layer.get(layer) if isinstance(per_layer, dict) else spec
    return None


def _num_blocks(kv_cache_config: Any, tensor: Any) -> int | None:
    of = getattr(kv_cache_config, "num_blocks_of", None)
    n = of(tensor) if callable(of) else getattr(kv_cache_config, "num_blocks", None)
    return n if isinstance(n, int) and n > 0 else None


def backend_class(layer: Any) -> type | None:
    """The attention backend class of a vLLM attention layer, if it says."""
    backend = getattr(layer, "attn_backend", None)
    if backend is None and callable(getattr(layer, "get_attn_backend", None)):
        try:
            backend = layer.get_attn_backend()
        except Exception:
            backend = None
    return backend


def backend_name(layer: Any) -> str | None:
    """The attention backend's name for a vLLM attention layer, if it says."""
    backend = backend_class(layer)
    if backend is None:
        return None
    try:
        return str(backend.get_name())
    except Exception:
        return getattr(backend, "__name__", None)
