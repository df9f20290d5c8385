"""Which methods of an impl class the guard wraps, and where each takes its layer and its
KV cache, read from the signatures alone (annotations only rank the suggestions).

By default a method is wrapped when it has a parameter named `layer` and one named
`kv_cache`, the convention of vLLM's attention impls. `methods={"forward": "cache"}` names
the cache parameter of each method to wrap instead; `layer=` renames the layer parameter, or
with None the layer is named after the impl instance. Nothing to wrap is an error: a guard
that wraps nothing reports every layer "ok" by never seeing one.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

NOWHERE = sys.maxsize  # the position of a keyword-only argument: never among `args`
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


@dataclass(frozen=True)
class Seat:
    """One method to wrap: where its call carries the KV cache and the layer."""

    name: str
    fn: Callable[..., Any]
    kv_param: str
    kv_pos: int  # index in the call's args after self; NOWHERE when keyword-only
    layer_param: str | None
    layer_pos: int


def _parameters(fn: Callable[..., Any]) -> list[inspect.Parameter] | None:
    try:
        return list(inspect.signature(fn).parameters.values())[1:]  # after self
    except (TypeError, ValueError):
        return None


def _position(params: list[inspect.Parameter], name: str | None) -> int:
    for i, p in enumerate(params):
        if p.name == name:
            return i if p.kind in _POSITIONAL else NOWHERE
    return NOWHERE


def _methods(cls: type) -> dict[str, tuple[Callable[..., Any], list[inspect.Parameter]]]:
    """Plain functions of `cls` (inherited too) whose signature can be read."""
    found = {}
    for name in dir(cls):
        fn = inspect.getattr_static(cls, name, None)
        if inspect.isfunction(fn):
            params = _parameters(fn)
            if params is not None:
                found[name] = (fn, params)
    return found


def _signature(cls: type, name: str, params: list[inspect.Parameter]) -> str:
    return f"{cls.__name__}.{name}(self{''.join(', ' + str(p) for p in params)})"


def _is_tensor(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
    return "Tensor" in str(text)


def _candidates(params: list[inspect.Parameter], layer: str | None) -> list[str]:
    """Parameters that could be the cache: tensor-annotated ones when there are any."""
    named = [p for p in params if p.name != layer and p.kind not in _VARIADIC]
    tensors = [p for p in named if _is_tensor(p.annotation)]
    return [p.name for p in (tensors or named)]


class NothingToWrap(ValueError):
    """`Guard.wrap(cls)` found no method to wrap (the vLLM plugin, which wraps every impl
    subclass, passes over such a class: an abstract base has none)."""


def _nothing_to_wrap(cls: type, found: dict, kv_cache: str, layer: str | None) -> NothingToWrap:
    takes = f"both `{layer}` and `{kv_cache}`" if layer else f"`{kv_cache}`"
    name = cls.__qualname__
    head = f"Guard.wrap({name}): no method of {name} takes {takes}, so nothing would be guarded"
    methods = {n: p for n, (_, p) in found.items() if p and not n.startswith("_")}
    near = {n: p for n, p in methods.items() if layer is None or layer in [q.name for q in p]}
    near = near or methods  # none takes the layer either: every method could be meant
    if not near:
        return NothingToWrap(f"{head}; it has no method with parameters either")
    shown = sorted(near)[:3]
    example = shown[0]
    options = _candidates(near[example], layer)
    value = repr(options[0]) if len(options) == 1 else "one of " + ", ".join(map(repr, options))
    how = f"guard.wrap({cls.__name__}, methods={{{example!r}: {value}}})"
    if layer and layer not in [q.name for q in near[example]]:
        how = how[:-1] + ", layer=None)"
    return NothingToWrap(
        f"{head}; {'; '.join(_signature(cls, n, near[n]) for n in shown)}. Name the KV-cache "
        f"parameter of each method to wrap: {how}"
    )


def _explicit(cls: type, found: dict, methods: Mapping[str, str], layer: str | None) -> list[Seat]:
    if not isinstance(methods, Mapping) or not methods:
        raise ValueError(
            f"Guard.wrap({cls.__qualname__}, methods=...): methods must map method names to "
            f"their KV-cache parameter, e.g. {{'forward': 'kv_cache'}}; got {methods!r}"
        )
    seats = []
    for name, kv_param in methods.items():
        if name not in found:
            have = ", ".join(sorted(n for n in found if not n.startswith("_"))) or "none"
            raise ValueError(
                f"Guard.wrap({cls.__qualname__}, methods=...): {cls.__name__} has no plain "
                f"method {name!r} (its methods: {have})"
            )
        fn, params = found[name]
        names = {p.name: p for p in params}
        where = _signature(cls, name, params)
        if not isinstance(kv_param, str) or kv_param not in names or kv_param == layer:
            options = ", ".join(map(repr, _candidates(params, layer)))
            raise ValueError(
                f"Guard.wrap({cls.__qualname__}, methods=...): {where} has no KV-cache "
                f"parameter {kv_param!r}; name one of {options}"
            )
        if names[kv_param].kind in _VARIADIC:
            raise ValueError(f"{where}: {kv_param!r} collects several arguments, not one cache")
        if layer is not None and layer not in names:
            others = ", ".join(repr(p.name) for p in params if p.name != kv_param) or "none"
            raise ValueError(
                f"{where} has no parameter {layer!r} for the layer; pass layer= naming one of "
                f"its parameters ({others}), or layer=None to name each layer after its impl "
                "instance"
            )
        seats.append(
            Seat(name, fn, kv_param, _position(params, kv_param), layer, _position(params, layer))
        )
    return seats


def seats(
    cls: type,
    methods: Mapping[str, str] | None,
    kv_cache: str = "kv_cache",
    layer: str | None = "layer",
) -> list[Seat]:
    """The methods of `cls` to wrap; ValueError naming the class when there are none."""
    if not isinstance(cls, type):
        raise TypeError(f"Guard.wrap expects a class, got {type(cls).__name__}")
    found = _methods(cls)
    if methods is not None:
        return _explicit(cls, found, methods, layer)
    out = []
    for name, (fn, params) in found.items():
        names = [p.name for p in params]
        if kv_cache in names and (layer is None or layer in names):
            out.append(
                Seat(
                    name, fn, kv_cache, _position(params, kv_cache), layer, _position(params, layer)
                )
            )
    if not out:
        raise _nothing_to_wrap(cls, found, kv_cache, layer)
    return out
