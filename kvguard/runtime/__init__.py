"""kvguard.runtime: prove that layers sharing a KV allocation agree on which bytes a block owns.

The invariant, for every allocation (a torch storage) and every layer viewing it:

1. containment: every byte that a layer's K and V views address for block b lies inside page b
   of the allocation's page map;
2. disjointness: pages of different block ids never overlap (nor K and V of one block);
3. exact agreement: a layer that reads another layer's cache (KV sharing) addresses the very
   same elements for K and for V.

The page map comes from the engine (`Guard.declare_allocation`, vLLM's `KVCacheTensor`) or,
per region of overlapping footprints, from the first layer bound to it. Everything is computed
from sizes, strides, storage offsets and element sizes: no bytes are read, no device syncs.

Two ways to switch it on: in code,

    from kvguard.runtime import Guard
    guard = Guard(mode="strict")          # "off" | "warn" | "strict" | "fix"
    guard.wrap(MyAttentionImpl)

or with the environment variable KVGUARD_MODE=warn|strict|fix and `Guard()` (what the vLLM
plugin does). Where a kv_cache goes: `guard.py` (wrapper, verdict cache), `discovery.py` (the
impl's split, observed on its first kernel call; `roles.py` names each view by its role
there), `judge.py` (the invariants), `pagemap.py` + `footprint.py` (the byte arithmetic),
`records.py` (what was found, as data: `Violation`, `LayerRecord`, `Collision`).

Calls that reach no kernel (warm-up, CUDA-graph capture sizes with no metadata) leave a layer
pending, never settled: the first call that reaches a kernel is judged.

torch.compile: when an impl runs inside a custom op (vLLM's unified attention op) the guard
works unchanged; when dynamo traces a wrapped method directly, the guard steps aside for that
trace. CUDA graphs: steady state touches no tensor and no device, so it is capture-safe, and
so is the pending path; a judgement happens on an eager call, which engines make before
capturing a graph that contains attention.
"""

from typing import TYPE_CHECKING, Any

# Exports load on first use: `kvguard report` renders saved reports (render.py, pagemap.py,
# footprint.py) without importing torch, which only guard.py and layouts.py need.
_EXPORTS = {
    "Guard": "guard",
    "KVLayoutMismatchError": "errors",
    "NothingToWrap": "seats",
    "UnsupportedView": "errors",
    **{name: "records" for name in ("Collision", "LayerRecord", "ViewRecord", "Violation")},
    **{
        name: "describe"
        for name in ("KVCacheDescription", "UndescribedKVCache", "describe_kv_cache")
    },
    **{
        name: "layouts"
        for name in (
            "BLOCKS_FIRST",
            "BLOCKS_FIRST_HND",
            "KV_FIRST",
            "KV_FIRST_HND",
            "LATENT",
            "LAYOUTS",
            "PACKED_HND",
            "PACKED_NHD",
            "KVLayout",
            "split_kv_cache",
        )
    },
}

if TYPE_CHECKING:
    from .describe import KVCacheDescription, UndescribedKVCache, describe_kv_cache
    from .errors import KVLayoutMismatchError, UnsupportedView
    from .guard import Guard
    from .layouts import (
        BLOCKS_FIRST,
        BLOCKS_FIRST_HND,
        KV_FIRST,
        KV_FIRST_HND,
        LATENT,
        LAYOUTS,
        PACKED_HND,
        PACKED_NHD,
        KVLayout,
        split_kv_cache,
    )
    from .records import Collision, LayerRecord, ViewRecord, Violation
    from .seats import NothingToWrap


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "BLOCKS_FIRST",
    "BLOCKS_FIRST_HND",
    "KV_FIRST",
    "KV_FIRST_HND",
    "LATENT",
    "LAYOUTS",
    "PACKED_HND",
    "PACKED_NHD",
    "Collision",
    "Guard",
    "KVCacheDescription",
    "KVLayout",
    "KVLayoutMismatchError",
    "LayerRecord",
    "NothingToWrap",
    "UndescribedKVCache",
    "UnsupportedView",
    "ViewRecord",
    "Violation",
    "describe_kv_cache",
    "split_kv_cache",
]
