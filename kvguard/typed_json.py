"""Dataclasses to JSON values and back, checked against their type hints on the way back.

The cache stores facts and findings this way instead of pickling them: decoding JSON can
build only the types that the hints name, never run code, and each value is checked
against its field's hint, so a record of the wrong shape (another version's, or a damaged
one whose checksum happens to hold) raises ``ShapeError`` instead of becoming a wrong
finding. A dataclass is a list of its fields in order; a dict is a list of [key, value]
pairs (its keys need not be strings); tuples, lists and frozensets are lists.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Callable
from typing import Any

Codec = Callable[[Any], Any]


class ShapeError(ValueError):
    """A JSON value does not have the shape that the type hint asks for."""


_NONE = type(None)
_PRIMITIVE_TYPES = (str, int, bool, _NONE)


def _list(value: Any) -> list[Any]:
    if type(value) is not list:
        raise ShapeError(f"expected a list, got {type(value).__name__}")
    return value


def _identity(value: Any) -> Any:
    return value


def _plain_types(hint: Any) -> frozenset[type] | None:
    """The JSON types a value of ``hint`` may have, if ``hint`` is a primitive (or a union
    of primitives), which the JSON value itself then is; None for anything else."""
    if hint in _PRIMITIVE_TYPES:
        return frozenset({hint})
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [_plain_types(a) for a in typing.get_args(hint)]
        if all(m is not None for m in members):
            return frozenset().union(*members)  # type: ignore[arg-type]
    return None


def _check_types(allowed: frozenset[type], value: Any) -> Any:
    if type(value) not in allowed:
        raise ShapeError(f"did not expect a {type(value).__name__}")
    return value


def _shape(hint: Any) -> tuple[frozenset[type], Codec | None]:
    """The JSON types a value of ``hint`` may have, and the decoder to run on a value that
    is not null (None: the value is already the result)."""
    plain = _plain_types(hint)
    if plain is not None:
        return plain, None
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and _NONE in (
        args := typing.get_args(hint)
    )
    if optional and len(args) == 2:
        inner = next(a for a in args if a is not _NONE)
        return frozenset({list, _NONE}), decoder(inner)
    if optional:
        return frozenset({list, _NONE, *_PRIMITIVE_TYPES}), decoder(hint)
    return frozenset({list}), decoder(hint)


@functools.cache
def decoder(hint: Any) -> Codec:
    """The function that turns a JSON value into a value of ``hint``, or raises ShapeError.

    Type tests of many values at once run as ``map(type, ...)`` over C-level sets, which
    is what keeps a warm run's load of thousands of records in a few milliseconds.
    """
    plain = _plain_types(hint)
    if plain is not None:
        return functools.partial(_check_types, plain)
    if dataclasses.is_dataclass(hint):
        fields = _fields(hint)  # type: ignore[arg-type]
        return _record_decoder(_builder(hint, [n for n, _ in fields]), [h for _, h in fields])
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _union_decoder(args)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return _sequence_decoder(args[0], tuple)
    if origin is tuple:
        return _record_decoder(tuple, list(args))
    if origin in (list, frozenset):
        return _sequence_decoder(args[0], origin)
    if origin is dict:
        return _dict_decoder(args[0], args[1])
    raise TypeError(f"typed_json cannot decode {hint!r}")


def _dict_decoder(key: Any, item: Any) -> Codec:
    """[key, value] pairs: split in C (``zip``), each column checked as a sequence."""
    keys = _sequence_decoder(key, tuple)
    values = _sequence_decoder(item, tuple)

    def decode(value: Any) -> Any:
        pairs = _list(value)
        if not pairs:
            return {}
        if set(map(type, pairs)) != {list} or set(map(len, pairs)) != {2}:
            raise ShapeError("expected [key, value] pairs")
        names, items = zip(*pairs, strict=True)
        return dict(zip(keys(list(names)), values(list(items)), strict=True))

    return decode


def _sequence_decoder(item: Any, build: type) -> Codec:
    allowed, codec = _shape(item)
    if codec is None:

        def plain(value: Any) -> Any:
            if value == []:
                return build()
            if not allowed.issuperset(map(type, _list(value))):
                raise ShapeError(f"an item is not {item!r}")
            return build(value)

        return plain
    if _NONE in allowed:
        single = decoder(item)
        return lambda value: build(map(single, _list(value)))

    def nested(value: Any) -> Any:
        if value == []:
            return build()
        if not allowed.issuperset(map(type, _list(value))):
            raise ShapeError(f"an item is not {item!r}")
        return build(map(codec, value))

    return nested


def _builder(cls: type, names: list[str]) -> Callable[[list[Any]], Any]:
    """``cls`` from its field values in order. A plain dataclass gets its ``__dict__`` in
    one step, as unpickling does (a frozen one's ``__init__`` pays a call per field);
    one with ``__post_init__`` or slots gets its ``__init__``."""
    if hasattr(cls, "__post_init__") or not hasattr(cls, "__dict__") or "__slots__" in vars(cls):
        return lambda values: cls(*values)
    new = object.__new__

    def build(values: list[Any]) -> Any:
        obj = new(cls)
        obj.__dict__.update(zip(names, values, strict=True))
        return obj

    return build


def _record_decoder(build: Callable[[list[Any]], Any], hints: list[Any]) -> Codec:
    """A dataclass or a fixed-length tuple: ``build`` gets the decoded fields in order."""
    shapes = [_shape(h) for h in hints]
    allowed = [a for a, _ in shapes]
    nested = [(i, codec) for i, (_, codec) in enumerate(shapes) if codec is not None]
    count = len(shapes)
    name = getattr(build, "__qualname__", "tuple")
    if build is tuple and not nested and all(len(a) == 1 for a in allowed):  # tuple[str, str]
        kinds = tuple(next(iter(a)) for a in allowed)

        def plain(value: Any) -> Any:
            if type(value) is not list or tuple(map(type, value)) != kinds:
                raise ShapeError(f"expected a list of {', '.join(k.__name__ for k in kinds)}")
            return tuple(value)

        return plain

    def decode(value: Any) -> Any:
        values = _list(value)
        if len(values) != count:
            raise ShapeError(f"{name}: expected {count} fields, got {len(values)}")
        if not all(map(frozenset.__contains__, allowed, map(type, values))):
            raise ShapeError(f"{name}: a field has the wrong type")
        if nested:
            values = values[:]
            for i, codec in nested:
                if values[i] is not None:
                    values[i] = codec(values[i])
        return build(values)

    return decode


def _union_decoder(args: tuple[Any, ...]) -> Codec:
    options = tuple(decoder(a) for a in args)

    def decode(value: Any) -> Any:
        for option in options:
            try:
                return option(value)
            except ShapeError:
                continue
        raise ShapeError(f"no member of the union fits a {type(value).__name__}")

    return decode


def _fields(cls: type) -> list[tuple[str, Any]]:
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    if not all(f.init for f in fields):
        raise TypeError(f"typed_json cannot build {cls.__name__}: a field is not in __init__")
    return [(f.name, hints[f.name]) for f in fields]


@functools.cache
def encoder(hint: Any) -> Codec:
    """The function that turns a value of ``hint`` into plain JSON values."""
    if hint in _PRIMITIVE_TYPES:
        return _identity
    if dataclasses.is_dataclass(hint):
        codecs = [(name, encoder(h)) for name, h in _fields(hint)]  # type: ignore[arg-type]
        return lambda obj: [codec(getattr(obj, name)) for name, codec in codecs]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        members = [(typing.get_origin(a) or a, encoder(a)) for a in args]

        def union(value: Any) -> Any:
            for kind, codec in members:
                if isinstance(value, kind):
                    return codec(value)
            raise TypeError(f"{value!r} fits no member of {hint!r}")

        return union
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = encoder(args[0])
        return lambda value: [item(v) for v in value]
    if origin is tuple:
        items = [encoder(a) for a in args]
        return lambda value: [item(v) for item, v in zip(items, value, strict=True)]
    if origin in (list, frozenset):
        item = encoder(args[0])
        return lambda value: [item(v) for v in value]
    if origin is dict:
        key, val = encoder(args[0]), encoder(args[1])
        return lambda value: [[key(k), val(v)] for k, v in value.items()]
    raise TypeError(f"typed_json cannot encode {hint!r}")
