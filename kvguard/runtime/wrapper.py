"""The guarded method: a wrapper with the impl method's own signature, compiled once per method.

Steady state is a call per layer per step in every attention layer, so its cost is the
guard's cost. A generic `(self, *args, **kwargs)` wrapper packs a tuple and a dict on entry,
then unpacks them into a list, a tuple and a dict again to call the original, and must find
`layer` and `kv_cache` by position or by keyword. A wrapper written with the method's own
parameters (as `dataclasses` writes `__init__`) binds them once, as the interpreter does for
any call, and calls the original with plain positional arguments.

Steady state, per call: one `is_dynamo_compiling()` (dynamo tracing the method: step aside;
dynamo folds it to True, eager code gets False from a one-line function), one dict lookup by
the impl's identity, the identity of the kv_cache object (a weak reference, so the cache can
still be freed) and of the layer, then the original method, with the kv_cache or its
re-strided twin. Anything else goes to `slow(impl, layer, kv_cache, args, kwargs)` or, for a
seat with a known answer that is neither, `act(entry, key, impl, layer, kv_cache, args,
kwargs)`, with the arguments in the order and form the original takes (`args` positional,
`kwargs` keyword); both see `torch.compiler.is_compiling()` first, so that any other tracing
(torch.export, a compile session running a method on fake tensors) steps aside there: on fake
tensors the kv_cache is never the object a steady answer was recorded for.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch

# The steady answers a `fast` table holds: (weakref to the kv_cache, id(layer), how, entry,
# key). `how` is PASS (call the original), SWAP (call it on `entry.fixed_ref()`, the
# re-strided kv_cache, while it lives) or SLOW (anything else: `act(entry, key, ...)`).
PASS, SWAP, SLOW = 0, 1, 2

_P = inspect.Parameter


def guarded_method(
    fn: Callable[..., Any],
    fast: dict[int, tuple],
    slow: Callable[..., Any],
    act: Callable[..., Any],
    *,
    kv_param: str = "kv_cache",
    layer_param: str | None = "layer",
) -> Callable[..., Any]:
    """`fn` behind the guard's steady-state check, with `fn`'s signature (see module doc).
    `kv_param` and `layer_param` name the parameters that carry the cache and the layer
    (`layer_param` None: the method takes no layer, and None stands for it)."""
    params = list(inspect.signature(fn).parameters.values())
    names = {p.name for p in params}
    # Every name the generated code uses besides the parameters: none may shadow one.
    prefix = "_kvg"
    while any(n.startswith(prefix) for n in names):
        prefix += "_"
    g = {
        "fn": f"{prefix}_fn",
        "fast": f"{prefix}_fast",
        "slow": f"{prefix}_slow",
        "act": f"{prefix}_act",
        "is_dynamo": f"{prefix}_is_dynamo",
        "is_compiling": f"{prefix}_is_compiling",
        "id": f"{prefix}_id",
        "hit": f"{prefix}_hit",
        "how": f"{prefix}_how",
        "fixed": f"{prefix}_fixed",
    }
    namespace: dict[str, Any] = {
        g["fn"]: fn,
        g["fast"]: fast,
        g["slow"]: slow,
        g["act"]: act,
        g["is_dynamo"]: torch.compiler.is_dynamo_compiling,
        g["is_compiling"]: torch.compiler.is_compiling,
        g["id"]: id,
    }
    signature, call, fixed_call, positional, keyword = [], [], [], [], []
    star_done = False
    for i, p in enumerate(params):
        default = ""
        if p.default is not _P.empty:
            namespace[f"{prefix}_d{i}"] = p.default
            default = f"={prefix}_d{i}"
        arg = g["fixed"] if p.name == kv_param else p.name
        if p.kind in (_P.POSITIONAL_ONLY, _P.POSITIONAL_OR_KEYWORD):
            signature.append(p.name + default)
            call.append(p.name)
            fixed_call.append(arg)
            if i:
                positional.append(p.name)
            if p.kind is _P.POSITIONAL_ONLY and (
                i + 1 == len(params) or params[i + 1].kind is not _P.POSITIONAL_ONLY
            ):
                signature.append("/")
        elif p.kind is _P.VAR_POSITIONAL:
            star_done = True
            signature.append(f"*{p.name}")
            call.append(f"*{p.name}")
            fixed_call.append(f"*{p.name}")
            positional.append(f"*{p.name}")
        elif p.kind is _P.KEYWORD_ONLY:
            if not star_done:
                star_done = True
                signature.append("*")
            signature.append(p.name + default)
            call.append(f"{p.name}={p.name}")
            fixed_call.append(f"{p.name}={arg}")
            keyword.append(f"{p.name!r}: {p.name}")
        else:  # VAR_KEYWORD
            signature.append(f"**{p.name}")
            call.append(f"**{p.name}")
            fixed_call.append(f"**{p.name}")
            keyword.append(f"**{p.name}")
    impl = params[0].name
    slow_args = f"({', '.join(positional)},)" if positional else "()"
    slow_kwargs = f"{{{', '.join(keyword)}}}"
    fn_call = f"{g['fn']}({', '.join(call)})"
    kv, layer = kv_param, layer_param or "None"
    src = f"""\
def guarded({", ".join(signature)}):
    if {g["is_dynamo"]}():
        return {fn_call}
    {g["hit"]} = {g["fast"]}.get({g["id"]}({impl}))
    if {g["hit"]} is not None and {g["hit"]}[0]() is {kv} and {g["hit"]}[1] == {g["id"]}({layer}):
        {g["how"]} = {g["hit"]}[2]
        if {g["how"]} == {PASS}:
            return {fn_call}
        if {g["how"]} == {SWAP}:
            {g["fixed"]} = {g["hit"]}[3].fixed_ref()
            if {g["fixed"]} is not None:
                return {g["fn"]}({", ".join(fixed_call)})
        if {g["is_compiling"]}():
            return {fn_call}
        return {g["act"]}({g["hit"]}[3], {g["hit"]}[4], {impl}, {layer}, {kv}, {slow_args}, \
{slow_kwargs})
    if {g["is_compiling"]}():
        return {fn_call}
    return {g["slow"]}({impl}, {layer}, {kv}, {slow_args}, {slow_kwargs})
"""
    code = compile(src, f"<kvguard: guarded {fn.__qualname__}>", "exec")
    exec(code, namespace)  # the source holds the signature's own names and ours only
    return functools.wraps(fn)(namespace["guarded"])
