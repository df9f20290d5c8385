"""Static model of the KV-cache layout that a backend class declares.

Read from the stdlib ``ast`` of ``get_kv_cache_shape`` (the logical shape, vLLM 0.2x),
``get_kv_cache_stride_order`` (its physical order) and ``supported_kv_cache_layouts``
(vLLM 0.28+: ``KVCacheLayout`` members over a packed content dim).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class ShapeDecl:
    """One ``return (...)`` of get_kv_cache_shape."""

    text: str
    ndim: int
    kv_axis: int | None  # logical axis of extent 2 that holds K and V
    packed: bool  # K and V share the last dim (``2 * head_size``)

    @property
    def arrangement(self) -> str:
        if self.packed:
            return "packed (K|V in the last dim)"
        if self.kv_axis == 0:
            return "K/V-first"
        if self.kv_axis == 1:
            return "blocks-first"
        if self.kv_axis is None:
            return "no K/V axis"
        return f"K/V on axis {self.kv_axis}"


@dataclass(frozen=True)
class LayoutDecl:
    shapes: tuple[ShapeDecl, ...] = ()
    stride_orders: tuple[tuple[int, ...], ...] = ()
    stride_order_dynamic: bool = False
    layouts: tuple[str, ...] = ()  # KVCacheLayout member names

    @property
    def empty(self) -> bool:
        return not (self.shapes or self.layouts)

    def physical_arrangements(self) -> frozenset[str] | None:
        """K/V placement in memory, one entry per declared alternative; None if unknown."""
        if self.layouts:
            return frozenset(f"layout {name}" for name in self.layouts)
        if not self.shapes or self.stride_order_dynamic:
            return None
        out = set()
        for shape in self.shapes:
            if shape.packed or shape.kv_axis is None:
                out.add(shape.arrangement)
                continue
            orders = [o for o in self.stride_orders if len(o) == shape.ndim] or [
                tuple(range(shape.ndim))
            ]
            for order in orders:
                position = order.index(shape.kv_axis)
                out.add("K/V-first" if position == 0 else f"K/V at physical axis {position}")
        return frozenset(out)

    def describe(self) -> str:
        if self.layouts:
            return "supported_kv_cache_layouts " + "/".join(self.layouts)
        parts = [f"{s.arrangement} {s.text}" for s in self.shapes]
        text = " or ".join(dict.fromkeys(parts))
        if self.stride_orders and self.stride_orders != (tuple(range(self.shapes[0].ndim)),):
            text += " with stride order " + " or ".join(map(str, self.stride_orders))
        return text

    def kv_axes(self) -> frozenset[int | str]:
        """Logical axes a split may use on this backend's cache view ('content' if packed)."""
        axes: set[int | str] = set()
        for shape in self.shapes:
            if shape.packed:
                axes.add("content")
            elif shape.kv_axis is not None:
                axes.add(shape.kv_axis)
        if self.layouts:
            axes.add("content")
        return frozenset(axes)

    def ndims(self) -> frozenset[int]:
        return frozenset(s.ndim for s in self.shapes) or (
            frozenset({4}) if self.layouts else frozenset()
        )


def _is_two_times(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.BinOp)
        and isinstance(node.op, ast.Mult)
        and any(
            isinstance(side, ast.Constant) and side.value == 2 for side in (node.left, node.right)
        )
    )


def _tuple_value(node: ast.expr | None, assigned: dict[str, ast.expr]) -> ast.expr | None:
    if isinstance(node, ast.Name) and node.id in assigned:
        return assigned[node.id]
    return node


def shapes_of(func: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[ShapeDecl, ...]:
    assigned = {
        target.id: stmt.value
        for stmt in ast.walk(func)
        if isinstance(stmt, ast.Assign)
        for target in stmt.targets
        if isinstance(target, ast.Name)
    }
    shapes = []
    for ret in ast.walk(func):
        if not isinstance(ret, ast.Return):
            continue
        value = _tuple_value(ret.value, assigned)
        if not isinstance(value, (ast.Tuple, ast.List)) or any(
            isinstance(e, ast.Starred) for e in value.elts
        ):
            continue
        elts = value.elts
        twos = [i for i, e in enumerate(elts) if isinstance(e, ast.Constant) and e.value == 2]
        # K|V packed in the last dim: 2 * head_size, or head_size_k + head_size_v (diff-KV)
        packed = bool(elts) and (
            _is_two_times(elts[-1])
            or (isinstance(elts[-1], ast.BinOp) and isinstance(elts[-1].op, ast.Add))
        )
        shapes.append(
            ShapeDecl(
                text=ast.unparse(value),
                ndim=len(elts),
                kv_axis=twos[0] if len(twos) == 1 and not packed else None,
                packed=packed,
            )
        )
    return tuple(shapes)


def stride_orders_of(
    func: ast.FunctionDef | ast.AsyncFunctionDef,
) -> tuple[tuple[tuple[int, ...], ...], bool]:
    """Literal stride orders the method can return, and whether some return stays unknown.

    vLLM often picks an order at run time (``(0, 1, 2, 3, 4) if layout == "NHD" else ...``):
    every all-int tuple literal in the method then counts as one alternative.
    """
    orders = [
        tuple(e.value for e in node.elts)  # type: ignore[attr-defined]
        for node in ast.walk(func)
        if isinstance(node, ast.Tuple)
        and node.elts
        and all(isinstance(e, ast.Constant) and type(e.value) is int for e in node.elts)
        and sorted(e.value for e in node.elts) == list(range(len(node.elts)))  # type: ignore[attr-defined]
    ]
    has_return = any(isinstance(n, ast.Return) and n.value is not None for n in ast.walk(func))
    return tuple(dict.fromkeys(orders)), has_return and not orders


def layout_names_of(func: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    names = []
    for node in ast.walk(func):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "KVCacheLayout"
        ):
            names.append(node.attr)
    return tuple(dict.fromkeys(names))


# How K and V share a page, from a backend's ``customize_spec`` (vLLM 0.33+): the spec's
# logical page is [blocks, head slots, tokens, content].
PACKED = "K|V packed in the content dim"
TWO_SLOTS = "K and V as two head slots (num_head_slots=2)"
PER_HEAD_SLOTS = "K and V as separate per-head slots (num_head_slots=2*heads)"
UNKNOWN = "?"


def _slots(node: ast.expr) -> tuple[str, ...]:
    if isinstance(node, ast.Constant) and node.value is None:
        return (PACKED,)
    if isinstance(node, ast.Constant) and node.value == 2:
        return (TWO_SLOTS,)
    if _is_two_times(node) and not all(
        isinstance(side, ast.Constant)
        for side in (node.left, node.right)  # type: ignore[attr-defined]
    ):
        return (PER_HEAD_SLOTS,)
    if isinstance(node, ast.IfExp):
        return (*_slots(node.body), *_slots(node.orelse))
    return (UNKNOWN,)


def _is_customized_guard(test: ast.expr, spec: str) -> bool:
    """``spec.state_content_bytes is not None``: the spec was packed before; kept as it is."""
    return (
        isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Attribute)
        and test.left.attr == "state_content_bytes"
        and isinstance(test.left.value, ast.Name)
        and test.left.value.id == spec
        and len(test.ops) == 1
        and isinstance(test.ops[0], ast.IsNot)
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value is None
    )


def _returns(body: list[ast.stmt], spec: str) -> Iterator[ast.Return]:
    """The returns of a method body, leaving out pass-through guards for packed specs."""
    for stmt in body:
        if isinstance(stmt, ast.Return):
            yield stmt
        elif isinstance(stmt, ast.If):
            if not _is_customized_guard(stmt.test, spec):
                yield from _returns(stmt.body, spec)
            yield from _returns(stmt.orelse, spec)
        elif isinstance(stmt, (ast.For, ast.While, ast.With, ast.Try)):
            for block in ("body", "orelse", "finalbody", "handlers"):
                for item in getattr(stmt, block, []):
                    inner = item.body if isinstance(item, ast.ExceptHandler) else [item]
                    yield from _returns(inner, spec)


def kv_packings_of(func: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    """What ``customize_spec`` makes of the page, one entry per way it can return.

    ``return spec`` keeps the default (K|V packed per head slot); ``replace(spec, ...)``
    keeps it unless it sets ``num_head_slots``; a return guarded by
    ``spec.state_content_bytes is not None`` passes an already packed spec through and
    adds no way of its own. Anything else is UNKNOWN.
    """
    params = [a.arg for a in func.args.args]
    if not params:
        return (UNKNOWN,)
    spec = params[1] if len(params) > 1 and params[0] in ("cls", "self") else params[0]
    out: list[str] = []
    for ret in _returns(func.body, spec):
        value = ret.value
        if value is None:
            out.append(UNKNOWN)
            continue
        if isinstance(value, ast.Name) and value.id == spec:
            out.append(PACKED)
            continue
        func_name = (
            value.func.attr
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
            else value.func.id
            if isinstance(value, ast.Call) and isinstance(value.func, ast.Name)
            else ""
        )
        if func_name != "replace" or not any(
            isinstance(a, ast.Name) and a.id == spec
            for a in value.args  # type: ignore[attr-defined]
        ):
            out.append(UNKNOWN)
            continue
        slots = next(
            (k.value for k in value.keywords if k.arg == "num_head_slots"),  # type: ignore[attr-defined]
            None,
        )
        out.extend(_slots(slots) if slots is not None else (PACKED,))
    return tuple(dict.fromkeys(out)) or (UNKNOWN,)


def stores_no_value(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    """Whether ``get_kv_cache_spec`` only ever returns a spec without V: every ``return``
    gives a call with ``head_size_v=0`` (the field of vLLM's attention specs), or a local
    that only such calls bind. Such a layer's cache holds K (or one latent) alone: indexing
    it picks a head or a slot, never K or V. A return of anything else (``super()``'s spec,
    ``self.spec``, a helper's) may store V, and then this says nothing."""
    bound: dict[str, list[ast.expr]] = {}
    returns: list[ast.expr | None] = []
    for node in _own_nodes(func):
        if isinstance(node, ast.Return):
            returns.append(node.value)
        elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            # an augmented or walrus binding makes the name something no call alone says
            value = node.value if isinstance(node, (ast.Assign, ast.AnnAssign)) else None
            for target in targets:
                for name in ast.walk(target):
                    if isinstance(name, ast.Name):
                        bound.setdefault(name.id, []).append(value)

    def no_value(value: ast.expr | None) -> bool:
        if isinstance(value, ast.Name):
            values = bound.get(value.id, [])
            return bool(values) and all(_builds_no_value(v) for v in values)
        return _builds_no_value(value)

    return bool(returns) and all(no_value(value) for value in returns)


def _builds_no_value(value: ast.expr | None) -> bool:
    return isinstance(value, ast.Call) and any(
        k.arg == "head_size_v"
        and isinstance(k.value, ast.Constant)
        and type(k.value.value) is int
        and k.value.value == 0
        for k in value.keywords
    )


def _own_nodes(func: ast.FunctionDef | ast.AsyncFunctionDef) -> Iterator[ast.AST]:
    """The nodes of a function's body, not of the functions and classes nested in it."""
    stack: list[ast.AST] = list(func.body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
