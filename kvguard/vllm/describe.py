"""What vLLM declares about a bound layer cache -> a `KVCacheDescription`, by feature.

- The `get_kv_cache_shape` contract (vLLM 0.2x): the backend's `get_kv_cache_shape(
  num_blocks, block_size, num_kv_heads, head_size)` is called with sizes that differ from
  each other and from 2, so each axis of the declared shape is known by its size there (2:
  the K/V axis; 2 * head_size: K then V in the content), and the bound tensor must have that
  shape at the real sizes. K and V follow from the declaration.
- The `KVCacheLayout` contract (newer vLLM, detected by `create_kv_cache_views`): every layer
  view is logical `[B, H, N, C]` (block, head slot, token, content bytes), physically ordered
  by the resolved layout. That declares the page, not where K and V sit inside a head slot's
  bytes: the CPU backend reads a slot as all tokens' K then all tokens' V, Triton as each
  token's K then V, ROCm puts K and V in two slots. So K and V come from the backend's own
  split, as the guard saw it at the backend's first kernel call (views named by their role
  there), mapped onto the declared axes by stride; until then, or where the mapping is not
  unique, the cache is refused.

Never from the bound tensor's shape alone.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from kvguard.runtime.describe import KVCacheDescription, PlaneView
from kvguard.runtime.footprint import ViewGeometry

PROBE_BLOCKS = 23  # a probe size no other probe size equals, nor 2 (K/V), nor 1
CANONICAL = ("block", "token", "head", "content")


def _has_layout_contract() -> bool:
    try:
        interface = importlib.import_module("vllm.v1.kv_cache_interface")
    except ImportError:
        return False
    return hasattr(interface, "create_kv_cache_views")


def _dtype(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def describe(
    name: str,
    kv: torch.Tensor,
    spec: Any,
    backend: type | None,
    observed: dict[str, ViewGeometry] | None = None,
) -> KVCacheDescription | str:
    """Layer `name`'s description, or why vLLM's declaration gives none. `observed` holds the
    K and V views the backend handed its kernels ({"K": ..., "V": ...}), when known."""
    if backend is not None and _declares_shape(backend, spec):
        return _from_shape_api(name, kv, spec, backend, observed)
    if _has_layout_contract() and spec is not None and kv.dim() == 4:
        return _from_layout_contract(name, kv, spec, backend, observed)
    return (
        f"layer {name!r}: its backend declares neither get_kv_cache_shape() nor vLLM's "
        "KVCacheLayout views"
    )


def _source(backend: type | None, what: str) -> str:
    return f"{what} of {getattr(backend, '__name__', 'the backend')}"


def _page_bytes(kv: torch.Tensor, block_dim: int) -> int:
    return kv.numel() // kv.shape[block_dim] * kv.element_size()


# The KVCacheLayout contract -------------------------------------------------------------------
def _from_layout_contract(name, kv, spec, backend, observed) -> KVCacheDescription | str:
    heads, head_size = getattr(spec, "num_kv_heads", None), getattr(spec, "head_size", None)
    if heads is None or head_size is None:
        return f"layer {name!r}: its spec ({type(spec).__name__}) declares no KV heads"
    head_size_v = getattr(spec, "head_size_v", head_size) or head_size
    if not observed or "K" not in observed or "V" not in observed:
        return (
            f"layer {name!r}: vLLM declares its page as [B, H, N, C] ({tuple(kv.shape)}), "
            "not where K and V sit inside a head slot; that is the backend's own split, "
            "which the guard has not seen at a kernel call yet (run with KVGUARD_MODE=warn, "
            "and ask after the layer's first step)"
        )
    planes = []
    for kind, size in (("K", head_size), ("V", head_size_v)):
        plane = _canonical(kv, observed[kind], heads, spec.block_size, size)
        if isinstance(plane, str):
            return f"layer {name!r}: the backend's {kind} view {plane}"
        planes.append(plane)
    return KVCacheDescription(
        layer=name,
        axes=("block", "head", "token", "content"),
        shape=tuple(kv.shape),
        dtype=_dtype(kv),
        page_bytes=_page_bytes(kv, 0),
        key=planes[0],
        value=planes[1],
        source=_source(backend, "KVCacheLayout [B, H, N, C] page"),
        kv_source="K and V as the backend's split handed them to its kernels",
    )


def _canonical(kv, g: ViewGeometry, heads: int, block_size: int, d: int) -> PlaneView | str:
    """The view's dims as (block, token, head, content), told by the declared page's strides:
    dim 0 is the block axis, a dim with the page's head stride is the head axis, the
    innermost dim of `d` elements is the content, the one left is the token axis."""
    item, kv_item = g.itemsize, kv.element_size()
    if g.shape[0] != kv.shape[0] or g.stride[0] * item != kv.stride(0) * kv_item:
        return f"{g.shape} does not have the page's block axis"
    inner = [i for i in range(1, len(g.shape)) if g.shape[i] > 1]
    head_stride = kv.stride(1) * kv_item
    roles: dict[str, int] = {}
    for i in inner:
        if g.shape[i] == d and g.stride[i] == 1 and "content" not in roles:
            roles["content"] = i
        elif heads > 1 and g.shape[i] == heads and g.stride[i] * item == head_stride:
            if "head" in roles:
                return f"{g.shape} has two dims with the page's head stride"
            roles["head"] = i
    rest = [i for i in inner if i not in roles.values()]
    if len(rest) != 1 or g.shape[rest[0]] != block_size or "content" not in roles:
        return f"{g.shape} stride {g.stride} cannot be mapped onto blocks, tokens, heads, content"
    roles["token"] = rest[0]
    shape, stride = [g.shape[0]], [g.stride[0]]
    for role in CANONICAL[1:]:
        i = roles.get(role)
        shape.append(g.shape[i] if i is not None else 1)
        stride.append(g.stride[i] if i is not None else 1)
    start = kv.storage_offset() * kv_item
    rel, rem = divmod(g.start - start, item)
    if rem:
        return "does not start on an element of its dtype"
    return PlaneView(tuple(shape), tuple(stride), rel, g.dtype)


# The get_kv_cache_shape contract --------------------------------------------------------------
def _declares_shape(backend: type, spec: Any) -> bool:
    if getattr(backend, "get_kv_cache_shape", None) is None or spec is None:
        return False
    try:
        backend.get_kv_cache_shape(PROBE_BLOCKS, spec.block_size, 1, spec.head_size)
    except NotImplementedError:
        return False
    except Exception:
        return True  # it declares one; the probe below says what is wrong with it
    return True


def _probe(backend, block_size: int, head_size: int, real_heads: int):
    """(heads, declared shape) of the first probe whose sizes all differ (and differ from 2)."""
    for heads in (real_heads, 3, 5, 7, 11, 13):
        sizes = [PROBE_BLOCKS, block_size, heads, head_size, 2 * head_size, 2]
        if len(set(sizes)) < len(sizes) or heads == 1:
            continue
        try:
            return heads, tuple(
                backend.get_kv_cache_shape(PROBE_BLOCKS, block_size, heads, head_size)
            )
        except Exception:
            continue
    return None


def _from_shape_api(name, kv, spec, backend, observed) -> KVCacheDescription | str:
    block_size, head_size, heads = spec.block_size, spec.head_size, spec.num_kv_heads
    found = _probe(backend, block_size, head_size, heads)
    if found is None:
        return (
            f"layer {name!r}: no probe of {backend.__name__}.get_kv_cache_shape gives each "
            "axis a size of its own"
        )
    probe_heads, probe = found
    sizes = {PROBE_BLOCKS: "block", block_size: "token", probe_heads: "head",
             head_size: "content", 2 * head_size: "content", 2: "kv"}  # fmt: skip
    axes = tuple(sizes.get(n, "?") for n in probe)
    if "?" in axes or len(set(axes)) != len(axes) or "block" not in axes:
        return (
            f"layer {name!r}: {backend.__name__}.get_kv_cache_shape declares {probe} for "
            f"(blocks={PROBE_BLOCKS}, block_size={block_size}, heads={probe_heads}, "
            f"head_size={head_size}): not every axis is blocks, tokens, heads, K/V or content"
        )
    packed = probe[axes.index("content")] == 2 * head_size
    if packed == ("kv" in axes):
        return f"layer {name!r}: {backend.__name__} declares K/V both as an axis and packed"
    num_blocks = kv.shape[axes.index("block")] if kv.dim() == len(axes) else -1
    declared = tuple(backend.get_kv_cache_shape(num_blocks, block_size, heads, head_size))
    if declared != tuple(kv.shape):
        return (
            f"layer {name!r}: bound tensor {tuple(kv.shape)} is not {backend.__name__}'s "
            f"declared shape {declared}"
        )
    order = [axes.index(r) for r in ("block", "token", "head", "content")]
    if packed:
        canonical = kv.permute(order)
        key, value = canonical[..., :head_size], canonical[..., head_size:]
    else:
        kv_dim = axes.index("kv")
        order = [d - (d > kv_dim) for d in order]
        key, value = kv.select(kv_dim, 0).permute(order), kv.select(kv_dim, 1).permute(order)
    planes = [_plane(kv, t) for t in (key, value)]
    kv_source = "K and V as get_kv_cache_shape declares them"
    if observed and {"K", "V"} <= set(observed):
        for kind, t in (("K", key), ("V", value)):
            if _bytes(ViewGeometry.of(t)) != _bytes(observed[kind]):
                return (
                    f"layer {name!r}: {backend.__name__} declares {kind} at "
                    f"{ViewGeometry.of(t).describe()} but its kernels get "
                    f"{observed[kind].describe()}; refusing to pick one"
                )
        kv_source += ", agreeing with the backend's kernel calls"
    return KVCacheDescription(
        layer=name,
        axes=axes,
        shape=tuple(kv.shape),
        dtype=_dtype(kv),
        page_bytes=_page_bytes(kv, axes.index("block")),
        key=planes[0],
        value=planes[1],
        source=_source(backend, "get_kv_cache_shape"),
        kv_source=kv_source,
    )


def _plane(kv: torch.Tensor, t: torch.Tensor) -> PlaneView:
    rel = t.storage_offset() - kv.storage_offset()
    return PlaneView(tuple(t.shape), tuple(t.stride()), rel, _dtype(t))


def _bytes(g: ViewGeometry) -> tuple:
    """What a view addresses, whatever the order of its inner dims."""
    inner = sorted((n, s * g.itemsize) for n, s in zip(g.shape[1:], g.stride[1:], strict=True))
    return (g.start, g.num_blocks, g.block_stride, g.itemsize, tuple(x for x in inner if x[0] > 1))
