"""What a libcst expression is to the rules: a KV cache, a list of caches, a split of one.

A *receiver* is an expression that evaluates to one paged KV cache (or a view or a
block-selection of it that keeps the K/V axis). A *split* applies a dim-order-assuming
operation to a receiver and returns K, V or both.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import libcst as cst

from kvguard.lint.forms import CHAIN_METHODS, RESHAPING_METHODS, SPLIT_METHODS
from kvguard.lint.names import KvNames
from kvguard.lint.values import NO_FACTS, Facts, Kind, is_one_side, key
from kvguard.lint.walk import walk


@dataclass(frozen=True)
class Receiver:
    """What an expression is (``values.Kind``), and where it came from."""

    kind: Kind
    root: str  # the identifier it starts from, for messages
    # transposes/permutes applied since the cache was bound, as (method, literal int args)
    moves: tuple[tuple[str, tuple[int, ...]], ...] = ()
    reshaped: bool = False  # a view changed the declared logical shape: axis unknown
    element: Kind = Kind.CACHE  # for a LIST: what one of its elements is


@dataclass(frozen=True)
class Split:
    node: cst.CSTNode
    receiver: Receiver
    form: str  # "unbind", "subscript", "unpack", ...
    axis: int | str | None  # int (may be negative), "content" for a last-dim slice, None unknown

    def describe_axis(self) -> str:
        if self.axis == "content":
            return "K|V packed in the last dim"
        if self.axis is None:
            return "a fixed dim order"
        return f"K/V on axis {self.axis}"


@dataclass
class Context:
    """Where an expression sits: which names are aliases, which caches hold states."""

    names: KvNames
    aliases: dict[str, Receiver] = field(default_factory=dict)
    state_context: bool = False  # Mamba/SSM code: kv_cache is a tuple of states
    self_kv_cache: Kind | None = None  # what self.kv_cache holds in this class, if known
    head_names: frozenset[str] = frozenset()  # locals bound to a head size (hs = self.head_size)
    facts: Facts = NO_FACTS  # what guards established where the expression sits
    pair_returning: frozenset[str] = frozenset()  # functions annotated to return a tuple
    pair_lists: frozenset[str] = frozenset()  # containers the project fills with pairs only
    engine_lists: frozenset[str] = frozenset()  # attributes the project binds as lists only


def int_value(node: cst.BaseExpression) -> int | None:
    if isinstance(node, cst.Integer):
        return int(node.value, 0)
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, cst.Minus):
        inner = int_value(node.expression)
        return -inner if inner is not None else None
    return None


def _arg(call: cst.Call, position: int, keyword: str) -> cst.BaseExpression | None:
    for arg in call.args:
        if arg.keyword is not None and arg.keyword.value == keyword:
            return arg.value
    positional = [a for a in call.args if a.keyword is None and a.star == ""]
    return positional[position].value if position < len(positional) else None


def _mentions_head_or_half(
    node: cst.BaseExpression, head_names: frozenset[str] = frozenset()
) -> bool:
    for sub in walk(node):
        if isinstance(sub, (cst.Name, cst.Attribute)):
            word = sub.value if isinstance(sub, cst.Name) else sub.attr.value
            if "head" in word.lower() or (isinstance(sub, cst.Name) and word in head_names):
                return True
        if (
            isinstance(sub, cst.BinaryOperation)
            and isinstance(sub.operator, (cst.FloorDivide, cst.Divide))
            and int_value(sub.right) == 2
        ):
            return True
    return int_value(node) is not None


def classify(expr: cst.BaseExpression, ctx: Context, selecting: bool = False) -> Receiver | None:
    """The receiver an expression denotes, or None when it is no KV cache.

    Guards (``ctx.facts``) speak first, then aliases (annotations, construction sites),
    then names. ``selecting`` is set when the caller knows a subscript of this expression
    picks one cache out of a sequence (its result is assigned to a KV-cache-named variable).
    """
    found = _classify(expr, ctx, selecting)
    # A per-layer container stays one whatever its type (a list, or one stacked tensor);
    # states and latents are tensors too, so a tensor check only contradicts a pair.
    if ctx.facts.kinds and found is not None and found.kind is not Kind.LIST:
        known = ctx.facts.get(key(expr))
        if known is Kind.CACHE and (found.kind is not Kind.PAIR or _plain_alias(expr, ctx)):
            return found  # a tensor check restores what a cache's name says, nothing more
        if known is not None and known is not found.kind:
            return Receiver(known, found.root)
    return found


def _classify(expr: cst.BaseExpression, ctx: Context, selecting: bool) -> Receiver | None:
    names = ctx.names
    if isinstance(expr, cst.Name):
        if expr.value in ctx.aliases:
            return ctx.aliases[expr.value]
        if names.is_cache(expr.value):
            return Receiver(Kind.STATE if ctx.state_context else Kind.CACHE, expr.value)
        if names.is_cache_list(expr.value):
            return Receiver(Kind.LIST, expr.value, element=_element(expr, ctx))
        return None
    if isinstance(expr, cst.Attribute):
        attr = expr.attr.value
        on_self = isinstance(expr.value, cst.Name) and expr.value.value == "self"
        if names.is_cache(attr):
            if on_self and ctx.self_kv_cache is not None and attr == "kv_cache":
                return Receiver(ctx.self_kv_cache, attr)
            if _owned_by_one_side(expr.value):  # self.k_cache.kv_cache: a key-only cache
                return Receiver(Kind.LATENT, attr)
            if attr in ctx.engine_lists:  # the project binds it as [cache] per engine
                return Receiver(Kind.LIST, attr, element=_element(expr, ctx))
            return Receiver(Kind.STATE if ctx.state_context else Kind.CACHE, attr)
        if names.is_cache_list(attr):
            return Receiver(Kind.LIST, attr, element=_element(expr, ctx))
        return None
    if isinstance(expr, cst.Subscript):
        base = classify(expr.value, ctx)
        if base is None:
            return None
        if base.kind is Kind.LIST and len(expr.slice) == 1:
            return Receiver(base.element, base.root)
        if base.kind is Kind.CACHE and (selecting or _is_selection(expr)):
            return replace(base, reshaped=True)
        return None
    if isinstance(expr, cst.Call) and isinstance(expr.func, cst.Attribute):
        method = expr.func.attr.value
        if method in CHAIN_METHODS or _selects_blocks(method, expr):
            base = classify(expr.func.value, ctx)
            if base is None or base.kind is not Kind.CACHE:
                return None
            if method in ("transpose", "swapaxes", "swapdims", "permute", "movedim"):
                args = tuple(int_value(a.value) for a in expr.args)
                if all(a is not None for a in args):
                    return replace(base, moves=(*base.moves, (method, args)))  # type: ignore[arg-type]
                return replace(base, reshaped=True)
            if (method in RESHAPING_METHODS and expr.args) or method in ("select", "narrow"):
                return replace(base, reshaped=True)
            return base
    return None


def _owned_by_one_side(owner: cst.BaseExpression) -> bool:
    """An attribute chain through a holder of the key or the value alone."""
    while isinstance(owner, cst.Attribute):
        if is_one_side(owner.attr.value):
            return True
        owner = owner.value
    return isinstance(owner, cst.Name) and is_one_side(owner.value)


def _plain_alias(expr: cst.BaseExpression, ctx: Context) -> bool:
    """A local that is no cache by name (``x = (kv_cache, other)``)."""
    return isinstance(expr, cst.Name) and not ctx.names.is_cache(expr.value)


def _element(expr: cst.BaseExpression, ctx: Context) -> Kind:
    """What one element of a per-layer container is (``kv_caches: list[tuple[...]]``)."""
    name = key(expr)
    known = ctx.facts.get(f"{name}[*]") if name is not None else None
    if known is None:
        tail = expr.attr.value if isinstance(expr, cst.Attribute) else name
        known = Kind.PAIR if tail in ctx.pair_lists else None
    return known or Kind.CACHE


def _selects_blocks(method: str, call: cst.Call) -> bool:
    """``cache.select(block_axis, block)``, ``cache.narrow(0, start, n)``: one block or a
    run of blocks, every other dim (so the K/V axis) kept."""
    if method == "select":
        index = _arg(call, 1, "index")
        return index is not None and int_value(index) is None
    if method == "narrow":
        start = _arg(call, 1, "start")
        return start is not None and int_value(start) is None
    return False


def _is_selection(sub: cst.Subscript) -> bool:
    """``cache[block_ids]``/``cache[:, ids]``/``cache[:n]``: picks blocks and keeps the
    other dims (the K/V axis among them)."""
    return _subscript_axis(sub) == "selection"


def _doubled(node: cst.BaseExpression) -> bool:
    """``2 * heads``, ``n * 2``: a bound that keeps both halves (K and V) of a dim."""
    return (
        isinstance(node, cst.BinaryOperation)
        and isinstance(node.operator, cst.Multiply)
        and 2 in (int_value(node.left), int_value(node.right))
    )


def split_of(node: cst.CSTNode, ctx: Context) -> Split | None:
    """The split that ``node`` performs on a KV cache, if it is one."""
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
        method = node.func.attr.value
        if method not in SPLIT_METHODS:
            return None
        owner = node.func.value
        if isinstance(owner, cst.Name) and owner.value == "torch":
            if not node.args:
                return None
            receiver_expr = node.args[0].value
            call = node.with_changes(args=node.args[1:])
        else:
            receiver_expr, call = owner, node
        receiver = classify(receiver_expr, ctx)
        if receiver is None or receiver.kind is not Kind.CACHE or not _halves(method, call, ctx):
            return None
        return Split(node, receiver, method, _call_axis(method, call))
    if isinstance(node, cst.Subscript):
        receiver = classify(node.value, ctx)
        if receiver is None or receiver.kind is not Kind.CACHE:
            return None
        axis = _subscript_axis(node)
        if axis is None or axis == "selection" or _unpads(node, axis):
            return None
        return Split(node, receiver, "subscript", axis)
    return None


def _unpads(sub: cst.Subscript, axis: int | str) -> bool:
    """``x.reshape(-1, padded_heads, d)[:, :heads]``: the slice cuts a dim that the view
    just padded back to its unpadded size, keeping whatever K/V arrangement it holds."""
    view = sub.value
    if not (
        isinstance(axis, int)
        and axis >= 0
        and isinstance(view, cst.Call)
        and isinstance(view.func, cst.Attribute)
        and view.func.attr.value in ("reshape", "view")
        and axis < len(view.args)
    ):
        return False
    element = sub.slice[axis].slice
    if not isinstance(element, cst.Slice) or element.lower is not None or element.upper is None:
        return False
    size = {n.value for n in walk(view.args[axis].value) if isinstance(n, cst.Name)}
    bound = {n.value for n in walk(element.upper) if isinstance(n, cst.Name)}
    return any("padded" in word and any(b in word and b != word for b in bound) for word in size)


def unpack_split(assign: cst.Assign, ctx: Context) -> Split | None:
    """``k, v = kv_cache``: iterating a cache splits its first dim."""
    if len(assign.targets) != 1 or not isinstance(assign.targets[0].target, (cst.Tuple, cst.List)):
        return None
    receiver = classify(assign.value, ctx)
    if receiver is None or receiver.kind is not Kind.CACHE:
        return None
    if not all(isinstance(e.value, cst.Name) for e in assign.targets[0].target.elements):
        return None
    return Split(assign.value, receiver, "unpack", 0)


def _halves(method: str, call: cst.Call, ctx: Context) -> bool:
    """Whether the call cuts K from V, rather than cutting blocks into batches."""
    if method in ("chunk", "tensor_split"):
        count = _arg(call, 0, "chunks" if method == "chunk" else "indices_or_sections")
        return count is not None and int_value(count) == 2
    if method in ("split", "split_with_sizes"):
        size = _arg(call, 0, "split_size_or_sections" if method == "split" else "split_sizes")
        if isinstance(size, (cst.List, cst.Tuple)):
            return len(size.elements) == 2
        return size is not None and _mentions_head_or_half(size, ctx.head_names)
    if method == "select":
        index = _arg(call, 1, "index")
        return index is not None and int_value(index) in (0, 1, -1, -2)
    return True


def _call_axis(method: str, call: cst.Call) -> int | None:
    if method == "unbind":
        dim = _arg(call, 0, "dim")
        return 0 if dim is None else int_value(dim)
    if method in ("chunk", "split", "tensor_split", "split_with_sizes"):
        dim = _arg(call, 1, "dim")
        return 0 if dim is None else int_value(dim)
    if method in ("select", "narrow"):
        dim = _arg(call, 0, "dim")
        return int_value(dim) if dim is not None else None
    return None


def element_axes(sub: cst.Subscript) -> Iterator[tuple[int, int, cst.BaseSlice]]:
    """(position, axis, element) of each element but ``...``: after a ``...`` the axis
    counts from the end (negative)."""
    elements = [e.slice for e in sub.slice]
    after_ellipsis = False
    for position, element in enumerate(elements):
        if isinstance(element, cst.Index) and isinstance(element.value, cst.Ellipsis):
            after_ellipsis = True
            continue
        yield position, (position - len(elements) if after_ellipsis else position), element


def _subscript_axis(sub: cst.Subscript) -> int | str | None:
    """Where a subscript splits K from V, "selection" when it only picks blocks, else None.

    Elements that pick blocks or rows (a non-literal index, a slice whose bounds are no
    head size or half, a bound that doubles one) are passed over; the first element that
    cuts a dim in two decides: a literal 0/1 index, ``0::2``/``1::2`` (interleaved heads),
    or a slice at a head size or a half (``[..., :head_size]``, the content dim when it
    is last after ``...``). Any other literal index picks a layer or a state: no split."""
    selects = False
    for position, axis, element in element_axes(sub):
        if isinstance(element, cst.Index):
            literal = int_value(element.value)
            if literal is None:
                selects = True
                continue
            return axis if literal in (0, 1, -1, -2) else None
        bounds = [b for b in (element.lower, element.upper) if b is not None]
        step = int_value(element.step) if element.step is not None else None
        if (
            step == 2
            and element.upper is None
            and int_value(element.lower or cst.Integer("0")) in (0, 1)
        ):
            return axis
        if not bounds:
            continue
        if any(_doubled(b) for b in bounds) or not any(_mentions_head_or_half(b) for b in bounds):
            selects = True
            continue
        if axis < 0 and position == len(sub.slice) - 1:  # the last dim, after ``...``
            return "content"
        return axis
    return "selection" if selects else None
