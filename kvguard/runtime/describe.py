"""What each axis of a registered KV cache is, as its engine declared it: never read off the
shape, where two readings can look alike (at two KV heads, a K/V axis and a head axis are
both of size 2: LMCache #4463).

An engine adapter registers a `KVCacheDescription` for each layer's bound cache
(`register`, done by kvguard's vLLM plugin from the backend's declared shape and stride order
or the `KVCacheLayout` view contract); connectors and offloaders ask for it:

    from kvguard.runtime import describe_kv_cache, split_kv_cache
    desc = describe_kv_cache(kv_layer)            # or describe_kv_cache(layer="model.layers.0...")
    key, value = split_kv_cache(kv_layer, desc)   # each (blocks, tokens, heads, head_size)

A cache whose K/V arrangement its engine did not declare is refused (`UndescribedKVCache`),
naming what is missing, instead of guessed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

ROLES = ("block", "kv", "head", "token", "content")


class UndescribedKVCache(ValueError):
    """No declaration says what this cache's axes are, or the declaration is ambiguous."""


@dataclass(frozen=True)
class PlaneView:
    """K or V of a layer as a view of its cache tensor, dims (block, token, head, content):
    `stride` in elements of `dtype`, `offset` in elements from the cache's first element."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    offset: int
    dtype: str


@dataclass(frozen=True)
class KVCacheDescription:
    """The axes of one layer's cache tensor, in its dim order, and where K and V live.

    `axes[d]` names dim d of the cache tensor as its engine declared it: "block", "kv" (K at
    index 0, V at 1), "head", "token" or "content". `key` and `value` are K and V as views of
    it; `kv_source` says who said where they are: the engine's declaration, or the backend's
    own split as the guard saw it at the backend's kernel call (newer vLLM declares the page,
    `[B, H, N, C]`, and leaves K and V inside a head's bytes to the backend). `page_bytes` is
    one block's bytes (every head, K and V).
    """

    layer: str | None
    axes: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str
    page_bytes: int
    key: PlaneView
    value: PlaneView
    source: str
    kv_source: str

    def dim(self, role: str) -> int:
        return self.axes.index(role)

    @property
    def latent(self) -> bool:
        return self.key == self.value

    def check(self, kv_cache: torch.Tensor) -> None:
        """ValueError, in one line, when `kv_cache` is not the tensor this describes."""
        got = (tuple(kv_cache.shape), str(kv_cache.dtype).removeprefix("torch."))
        if got != (self.shape, self.dtype):
            raise ValueError(
                f"kv_cache of shape {got[0]} ({got[1]}) is not the cache described for layer "
                f"{self.layer!r}: {self.shape} ({self.dtype}), axes {self.axes}"
            )

    def split(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(K, V) views, each (blocks, tokens, heads, head_size): pure view ops, no copy."""
        self.check(kv_cache)
        return _plane(kv_cache, self.key), _plane(kv_cache, self.value)

    def to_json(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "axes": list(self.axes),
            "shape": list(self.shape),
            "dtype": self.dtype,
            "page_bytes": self.page_bytes,
            "key": vars(self.key),
            "value": vars(self.value),
            "source": self.source,
            "kv_source": self.kv_source,
        }

    def __str__(self) -> str:
        axes = ", ".join(f"{a}={n}" for a, n in zip(self.axes, self.shape, strict=True))
        return f"({axes}) {self.dtype}, {self.page_bytes} B/block [{self.source}; {self.kv_source}]"


def _plane(kv_cache: torch.Tensor, p: PlaneView) -> torch.Tensor:
    dtype = getattr(torch, p.dtype)
    base = kv_cache if kv_cache.dtype == dtype else kv_cache.view(dtype)
    return base.as_strided(p.shape, p.stride, base.storage_offset() + p.offset)


def plane_of(kv_cache: torch.Tensor, view: torch.Tensor, order: list[int]) -> PlaneView:
    """`view` (a view of `kv_cache`) with its dims taken in `order`, relative to the cache."""
    item = view.element_size()
    start = kv_cache.storage_offset() * kv_cache.element_size()
    rel, rem = divmod(view.storage_offset() * item - start, item)
    if rem:
        raise ValueError("the view does not start on an element of its dtype")
    return PlaneView(
        tuple(view.shape[d] for d in order),
        tuple(view.stride()[d] for d in order),
        rel,
        str(view.dtype).removeprefix("torch."),
    )


Entry = KVCacheDescription | str | Callable[[], "KVCacheDescription | str"]
_lock = threading.Lock()
_by_layer: dict[str, Entry] = {}
_by_tensor: dict[tuple, Entry] = {}  # a str: why there is none; a callable: ask it when needed


def _key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())


def register(kv_cache: torch.Tensor, description: Entry, layer: str | None = None) -> None:
    """Record what an engine declared for a bound cache (adapters call this): a description,
    a string saying why its declaration says too little, or a callable that builds either
    when asked (where part of the answer is only known once the layer has run)."""
    if isinstance(description, KVCacheDescription):
        description.check(kv_cache)
        layer = description.layer
    with _lock:
        _by_tensor[_key(kv_cache)] = description
        if layer is not None:
            _by_layer[layer] = description


def describe_kv_cache(
    kv_cache: torch.Tensor | None = None, *, layer: str | None = None
) -> KVCacheDescription:
    """The declared description of a registered cache: by the tensor, or by layer name.

    Raises UndescribedKVCache (a ValueError) when nothing was registered for it, or when its
    declaration does not say where K and V are: kvguard never guesses from the shape."""
    with _lock:
        key = _key(kv_cache) if kv_cache is not None else None
        found = _by_tensor.get(key) if key is not None else None
        if found is None and layer is not None:
            found = _by_layer.get(layer)
    if callable(found) and not isinstance(found, KVCacheDescription):
        resolver, found = found, found()
        if isinstance(found, KVCacheDescription):  # answered for good: keep the answer
            with _lock:
                for table in (_by_tensor, _by_layer):
                    for k, entry in list(table.items()):
                        if entry is resolver:
                            table[k] = found
    if isinstance(found, KVCacheDescription):
        return found
    if isinstance(found, str):
        raise UndescribedKVCache(found)
    what = f"layer {layer!r}" if layer is not None else "this tensor"
    shape = f" (shape {tuple(kv_cache.shape)})" if kv_cache is not None else ""
    raise UndescribedKVCache(
        f"no KV-cache description is registered for {what}{shape}: kvguard's vLLM plugin "
        "registers every bound layer's cache when KVGUARD_MODE or KVGUARD_CONNECTOR is set; "
        "elsewhere register one with kvguard.runtime.describe.register"
    )
