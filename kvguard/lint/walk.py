"""A fast pre-order walk over libcst trees, in source order, without whitespace nodes.

``CSTNode.visit`` and ``CSTNode.children`` rebuild every node they pass (they are made for
transformers); the rules only read, so this walk reads the dataclass fields directly. It
skips the fields that hold only whitespace and punctuation, and follows source order where
libcst's field order differs. ``tests/lint/test_walk.py`` checks it against libcst's own
visitor on real vLLM files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import libcst as cst

_PUNCTUATION = frozenset(
    {
        "lpar",
        "rpar",
        "lbrace",
        "rbrace",
        "lbracket",
        "rbracket",
        "leading_lines",
        "lines_after_decorators",
        "header",
        "footer",
        "trailing_whitespace",
        "leading_whitespace",
        "empty_lines",
        "first_line",
        "last_line",
        "newline",
        "comma",
        "trailing_comma",
        "equal",
        "colon",
        "first_colon",
        "second_colon",
        "semicolon",
        "dot",
        "operator",
        "asynchronous",
        "separator",
    }
)
# Node types whose dataclass fields are not in source order.
_SOURCE_ORDER: dict[type[cst.CSTNode], tuple[str, ...]] = {
    cst.IfExp: ("body", "test", "orelse"),
    cst.FunctionDef: ("decorators", "name", "type_parameters", "params", "returns", "body"),
    cst.ClassDef: ("decorators", "name", "type_parameters", "bases", "keywords", "body"),
    cst.ExceptHandler: ("type", "name", "body"),
    cst.ExceptStarHandler: ("type", "name", "body"),
    cst.MatchCase: ("pattern", "guard", "body"),
    cst.Arg: ("keyword", "value"),
    cst.TypeAlias: ("name", "type_parameters", "value"),
    cst.Parameters: (
        "posonly_params",
        "posonly_ind",
        "params",
        "star_arg",
        "kwonly_params",
        "star_kwarg",
    ),
}
_FIELDS: dict[type, tuple[str, ...]] = {}


def _fields(kind: type) -> tuple[str, ...]:
    names = _SOURCE_ORDER.get(kind)
    if names is None:
        names = tuple(
            f.name
            for f in dataclasses.fields(kind)
            if f.name not in _PUNCTUATION and not f.name.startswith("whitespace")
        )
    _FIELDS[kind] = names
    return names


def walk(node: cst.CSTNode) -> Iterator[cst.CSTNode]:
    """``node`` and every node below it, parents first, in source order."""
    stack = [node]
    fields = _FIELDS
    while stack:
        current = stack.pop()
        yield current
        kind = type(current)
        names = fields.get(kind) or _fields(kind)
        below: list[cst.CSTNode] = []
        for name in names:
            value = getattr(current, name)
            if isinstance(value, cst.CSTNode):
                below.append(value)
            elif isinstance(value, (tuple, list)):
                below.extend(v for v in value if isinstance(v, cst.CSTNode))
        if below:
            below.reverse()
            stack.extend(below)


def children(node: cst.CSTNode) -> list[cst.CSTNode]:
    """The nodes ``walk`` visits right below ``node``, in source order."""
    kind = type(node)
    below: list[cst.CSTNode] = []
    for name in _FIELDS.get(kind) or _fields(kind):
        value = getattr(node, name)
        if isinstance(value, cst.CSTNode):
            below.append(value)
        elif isinstance(value, (tuple, list)):
            below.extend(v for v in value if isinstance(v, cst.CSTNode))
    return below
