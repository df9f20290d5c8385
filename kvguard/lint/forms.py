"""Vocabulary shared by the prefilter and the rules: which calls split, view or derive a cache."""

from __future__ import annotations

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
