"""What a K/V split returns, computed without torch: views as (offset, sizes, strides).

A split operation is written as a Python expression over one placeholder name (the
cache); ``evaluate`` runs it on a contiguous tensor of a concrete shape by index and
stride arithmetic only. Two splits give *provably the same views* on a layout when they
agree on every canonical shape of that layout (``canonical_shapes``): each named dim gets
a distinct prime, in two different orders, so that no two dims can be confused.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass

PLACEHOLDER = "kv_cache"
PAIR_METHODS = frozenset({"unbind", "chunk", "split", "tensor_split", "split_with_sizes"})
PIECE_METHODS = frozenset({"select", "narrow"})
_PRIMES = (3, 5, 7, 11, 13, 17, 19, 23)
# Identifiers that mean the per-head size when no declared shape binds them.
_HEAD_WORDS = ("head_size", "head_dim")


@dataclass(frozen=True)
class View:
    offset: int
    sizes: tuple[int, ...]
    strides: tuple[int, ...]


def contiguous(sizes: tuple[int, ...]) -> View:
    strides, step = [], 1
    for size in reversed(sizes):
        strides.append(step)
        step *= size
    return View(0, sizes, tuple(reversed(strides)))


class _Unknown(Exception):
    """The expression uses something this model cannot evaluate."""


def _dim(view: View, dim: int) -> int:
    ndim = len(view.sizes)
    if not -ndim <= dim < ndim:
        raise _Unknown(f"dim {dim} out of range")
    return dim % ndim


def select(view: View, dim: int, index: int) -> View:
    dim = _dim(view, dim)
    size = view.sizes[dim]
    if not -size <= index < size:
        raise _Unknown(f"index {index} out of range")
    index %= size
    return View(
        view.offset + index * view.strides[dim],
        view.sizes[:dim] + view.sizes[dim + 1 :],
        view.strides[:dim] + view.strides[dim + 1 :],
    )


def narrow(view: View, dim: int, start: int | None, stop: int | None, step: int = 1) -> View:
    dim = _dim(view, dim)
    if step != 1:
        raise _Unknown("strided slices")
    lo, hi, _ = slice(start, stop).indices(view.sizes[dim])
    length = max(0, hi - lo)
    sizes = list(view.sizes)
    sizes[dim] = length
    return View(view.offset + lo * view.strides[dim], tuple(sizes), view.strides)


def _pieces(view: View, dim: int, lengths: list[int]) -> tuple[View, ...]:
    out, start = [], 0
    for length in lengths:
        out.append(narrow(view, dim, start, start + length))
        start += length
    if start != view.sizes[_dim(view, dim)]:
        raise _Unknown("split sizes do not cover the dim")
    return tuple(out)


class _Evaluator:
    def __init__(self, symbols: dict[str, int]) -> None:
        self.symbols = symbols

    def number(self, node: ast.expr) -> int:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -self.number(node.operand)
        if isinstance(node, ast.BinOp):
            left, right = self.number(node.left), self.number(node.right)
            ops = {ast.Add: int.__add__, ast.Sub: int.__sub__, ast.Mult: int.__mul__}
            if type(node.op) in ops:
                return ops[type(node.op)](left, right)
            if isinstance(node.op, ast.FloorDiv) and right:
                return left // right
            raise _Unknown("operator")
        tail = _tail(node)
        if tail is not None and tail in self.symbols:
            return self.symbols[tail]
        raise _Unknown(f"value of {ast.unparse(node)}")

    def args(self, call: ast.Call, names: tuple[str, ...], skip: int = 0) -> dict[str, ast.expr]:
        bound = dict(zip(names, call.args[skip:], strict=False))
        for keyword in call.keywords:
            if keyword.arg is None:
                raise _Unknown("**kwargs")
            bound[keyword.arg] = keyword.value
        return bound

    def run(self, node: ast.expr, base: View) -> View | tuple[View, ...]:
        if isinstance(node, ast.Name) and node.id == PLACEHOLDER:
            return base
        if isinstance(node, ast.Tuple):
            views = [self.run(e, base) for e in node.elts]
            if any(isinstance(v, tuple) for v in views):
                raise _Unknown("nested tuples")
            return tuple(views)  # type: ignore[arg-type]
        if isinstance(node, ast.Subscript):
            inner = self.run(node.value, base)
            if isinstance(inner, tuple):
                return inner[self.number(node.slice)]
            return self.subscript(inner, node.slice)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "torch":
                if not node.args:
                    raise _Unknown("torch call without a tensor")
                view, skip = self.run(node.args[0], base), 1
            else:
                view, skip = self.run(owner, base), 0
            if isinstance(view, tuple):
                raise _Unknown("method of a tuple")
            return self.method(view, method, node, skip)
        raise _Unknown(ast.unparse(node))

    def method(self, view: View, method: str, call: ast.Call, skip: int) -> View | tuple[View, ...]:
        if method == "unbind":
            dim = self.number(self.args(call, ("dim",), skip).get("dim", ast.Constant(0)))
            return tuple(select(view, dim, i) for i in range(view.sizes[_dim(view, dim)]))
        if method == "select":
            args = self.args(call, ("dim", "index"), skip)
            return select(view, self.number(args["dim"]), self.number(args["index"]))
        if method == "narrow":
            args = self.args(call, ("dim", "start", "length"), skip)
            start = self.number(args["start"])
            return narrow(
                view, self.number(args["dim"]), start, start + self.number(args["length"])
            )
        if method in ("chunk", "split", "tensor_split", "split_with_sizes"):
            first = {
                "chunk": "chunks",
                "split": "split_size_or_sections",
                "tensor_split": "indices_or_sections",
                "split_with_sizes": "split_sizes",
            }[method]
            args = self.args(call, (first, "dim"), skip)
            dim = self.number(args.get("dim", ast.Constant(0)))
            size = view.sizes[_dim(view, dim)]
            spec = args[first]
            if isinstance(spec, (ast.List, ast.Tuple)):
                if method == "tensor_split":
                    raise _Unknown("tensor_split indices")
                return _pieces(view, dim, [self.number(e) for e in spec.elts])
            count = self.number(spec)
            if count <= 0:
                raise _Unknown("non-positive split")
            if method == "chunk":
                length = -(-size // count)
                lengths = [min(length, size - s) for s in range(0, size, length)]
            elif method == "split":
                lengths = [min(count, size - s) for s in range(0, size, count)]
            elif method == "tensor_split":
                lengths = [size // count + (i < size % count) for i in range(count)]
            else:
                raise _Unknown("split_with_sizes needs a list")
            return _pieces(view, dim, lengths)
        raise _Unknown(method)

    def subscript(self, view: View, index: ast.expr) -> View:
        elements = list(index.elts) if isinstance(index, ast.Tuple) else [index]
        if sum(isinstance(e, ast.Constant) and e.value is Ellipsis for e in elements) > 1:
            raise _Unknown("two ellipses")
        ndim = len(view.sizes)
        explicit = [
            e for e in elements if not (isinstance(e, ast.Constant) and e.value is Ellipsis)
        ]
        if len(explicit) > ndim:
            raise _Unknown("too many indices")
        expanded: list[ast.expr | None] = []
        for element in elements:
            if isinstance(element, ast.Constant) and element.value is Ellipsis:
                expanded.extend([None] * (ndim - len(explicit)))
            else:
                expanded.append(element)
        dim = 0
        for element in expanded:
            if element is None:
                dim += 1
            elif isinstance(element, ast.Slice):
                lo = None if element.lower is None else self.number(element.lower)
                hi = None if element.upper is None else self.number(element.upper)
                step = 1 if element.step is None else self.number(element.step)
                view = narrow(view, dim, lo, hi, step)
                dim += 1
            elif isinstance(element, ast.Constant) and element.value is None:
                raise _Unknown("new axes")
            else:
                view = select(view, dim, self.number(element))
        return view


def _tail(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def evaluate(
    op: str, sizes: tuple[int, ...], symbols: dict[str, int]
) -> View | tuple[View, ...] | None:
    """The view(s) ``op`` (an expression over ``kv_cache``) returns, or None if unknown."""
    try:
        tree = ast.parse(op, mode="eval").body
        return _Evaluator(symbols).run(tree, contiguous(sizes))
    except (_Unknown, SyntaxError, KeyError, IndexError, RecursionError):
        return None


@dataclass(frozen=True)
class Shape:
    """One concrete shape of a layout, with the values its named dims took."""

    sizes: tuple[int, ...]
    symbols: dict[str, int]


def _names_in(node: ast.AST) -> list[str]:
    out = []
    for sub in ast.walk(node):
        tail = _tail(sub) if isinstance(sub, ast.expr) else None
        if tail is not None and not (isinstance(sub, ast.Name) and sub.id == "self"):
            out.append(tail)
    return list(dict.fromkeys(out))


def canonical_shapes(shape_texts: tuple[str, ...]) -> list[Shape] | None:
    """Concrete shapes for declared shape tuples (``(2, num_blocks, block_size, ...)``)."""
    shapes = []
    for text in shape_texts:
        try:
            tree = ast.parse(text, mode="eval").body
        except SyntaxError:
            return None
        if not isinstance(tree, (ast.Tuple, ast.List)):
            return None
        names = _names_in(tree)
        if len(names) > len(_PRIMES):
            return None
        for order in (_PRIMES, tuple(reversed(_PRIMES))):
            symbols = dict(zip(names, order, strict=False))
            try:
                sizes = tuple(_Evaluator(symbols).number(e) for e in tree.elts)
            except _Unknown:
                return None
            if any(s <= 0 for s in sizes):
                return None
            shapes.append(Shape(sizes, symbols))
    return shapes or None


def assumed_shapes(axis: int | str | None) -> list[Shape]:
    """Shapes a split with this K/V axis assumes when no backend declares one: ranks 3 to 5,
    extent 2 on the K/V axis (or ``2 * head_size`` in the last dim for a packed split)."""
    shapes = []
    for ndim in (3, 4, 5):
        for order in (_PRIMES, tuple(reversed(_PRIMES))):
            sizes = list(order[:ndim])
            head = order[ndim]
            symbols = {word: head for word in _HEAD_WORDS}
            if axis == "content":
                sizes[-1] = 2 * head
            elif isinstance(axis, int) and -ndim <= axis < ndim:
                sizes[axis] = 2
            else:
                continue
            shapes.append(Shape(tuple(sizes), symbols))
    return shapes


def _symbols_with_heads(shape: Shape) -> dict[str, int]:
    symbols = dict(shape.symbols)
    for word in _HEAD_WORDS:
        symbols.setdefault(word, symbols.get("head_size", symbols.get("head_dim", 0)) or 0)
    return {k: v for k, v in symbols.items() if v}


def results(op: str, shapes: list[Shape]) -> Iterator[View | tuple[View, ...] | None]:
    for shape in shapes:
        yield evaluate(op, shape.sizes, _symbols_with_heads(shape))


def same_views(ops_a: tuple[str, ...], ops_b: tuple[str, ...], shapes: list[Shape]) -> bool | None:
    """Whether two ways of producing (K, V) agree on every shape.

    Each side is one pair-returning expression or two piece expressions. True: same
    offset, sizes and strides everywhere; False: they differ somewhere; None: some
    shape could not be evaluated.
    """
    if not shapes:
        return None
    for shape in shapes:
        sides = []
        for ops in (ops_a, ops_b):
            got = [evaluate(op, shape.sizes, _symbols_with_heads(shape)) for op in ops]
            if any(g is None for g in got):
                return None
            flat: list[View] = []
            for g in got:
                flat.extend(g if isinstance(g, tuple) else (g,))  # type: ignore[arg-type]
            sides.append(tuple(flat))
        if len(sides[0]) != 2 or len(sides[1]) != 2:
            return None if len(sides[0]) == len(sides[1]) else False
        if sides[0] != sides[1]:
            return False
    return True


def same_piece(op_a: str, op_b: str, shapes: list[Shape]) -> bool | None:
    """Whether two single-view expressions return the same view on every shape."""
    if not shapes:
        return None
    for shape in shapes:
        symbols = _symbols_with_heads(shape)
        a, b = evaluate(op_a, shape.sizes, symbols), evaluate(op_b, shape.sizes, symbols)
        if a is None or b is None or isinstance(a, tuple) or isinstance(b, tuple):
            return None
        if a != b:
            return False
    return True
