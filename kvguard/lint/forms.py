"""Vocabulary shared by the ast prescreen and the libcst rules: which calls split, view or
derive a cache, and which words say that code holds recurrent states or MLA latents."""

from __future__ import annotations

from collections.abc import Iterable

# Calls that return pieces of their receiver along one dim.
SPLIT_METHODS = frozenset(
    {"unbind", "chunk", "split", "tensor_split", "split_with_sizes", "select", "narrow"}
)
# Calls that return a view of the same bytes with the K/V axis possibly moved.
VIEW_METHODS = frozenset(
    {
        "view",
        "reshape",
        "transpose",
        "permute",
        "flatten",
        "unflatten",
        "movedim",
        "swapaxes",
        "swapdims",
        "squeeze",
        "unsqueeze",
        "contiguous",
        "view_as",
        "as_strided",
        "t",
        "to",
        "float",
        "half",
        "bfloat16",
        "detach",
    }
)
# Views after which the declared logical shape no longer applies (KVG002 stays silent).
RESHAPING_METHODS = frozenset(
    {"view", "reshape", "flatten", "unflatten", "as_strided", "view_as", "squeeze", "unsqueeze"}
)
# Calls that keep every dim of the receiver (so its K/V axis) but select or copy blocks.
DERIVING_METHODS = frozenset({"index_select", "gather", "clone", "cpu", "cuda", "pin_memory"})
# Calls through which a receiver stays a cache (a view of it or blocks of it).
CHAIN_METHODS = VIEW_METHODS | DERIVING_METHODS
# ``for _, cache in kv_caches.items()``: a loop over these binds one cache per iteration.
ITERATING_METHODS = frozenset({"items", "values"})

# Target names that say a subscript picks a state, not K or V (Mamba/SSM/linear attention).
STATE_WORDS = ("conv", "ssm", "state")
# Class names (or base names) that say ``kv_cache`` holds recurrent states, not K and V.
STATE_CLASS_WORDS = ("Mamba", "ShortConv", "LinearAttention", "GatedDeltaNet", "GDN", "SSM")
# Class names (or base names) that say the cache holds MLA latents: no K/V to split.
MLA_WORDS = ("MLA", "Mla")
# Reading these from a piece of the cache inspects it; it does not use K or V.
METADATA_ATTRS = frozenset(
    {
        "shape",
        "dtype",
        "device",
        "nbytes",
        "numel",
        "is_contiguous",
        "stride",
        "size",
        "element_size",
        "data_ptr",
        "storage_offset",
        "untyped_storage",
        "ndim",
        "dim",
        "item",
        "tolist",
    }
)
# Calls with these name prefixes inspect their arguments (predicates, assertions).
PREDICATE_PREFIXES = ("is_", "assert", "check")
# Builtins that read a value's type, length or attributes, or turn it into one Python
# number (so it is a scalar, not K or V), never its K or V.
INSPECTING_CALLS = frozenset(
    {"isinstance", "len", "type", "hasattr", "getattr", "id", "int", "float", "bool"}
)


def path_context(path: str) -> tuple[bool, bool]:
    """(state code, MLA code) as told by the file's path alone."""
    parts = path.replace("\\", "/").split("/")
    return "mamba" in parts, any("mla" in part.lower() for part in parts)


def lineage_context(class_names: Iterable[str]) -> tuple[bool, bool]:
    """(state code, MLA code) as told by the names of a class and its bases."""
    names = tuple(class_names)
    return (
        any(w in n for n in names for w in STATE_CLASS_WORDS),
        any(w in n for n in names for w in MLA_WORDS),
    )
