"""Could this unit hold a split that the libcst rules report? Asked of the stdlib ``ast``.

A unit (one function outside function bodies, or the module's top-level rest) goes to
libcst only when this says it may. Every test here is a necessary condition of what
``checker.Collector.unit`` keeps, as ``receivers.classify``/``split_of``/``unpack_split``
decide it, and is weakened wherever the ast cannot see what libcst sees:

- kinds are sets: a name bound twice may be a cache, a list and a state at once (libcst keeps
  the first kind it derives; any of them may be that one);
- aliases reach a fixed point (libcst stops after 8 rounds);
- a subscript of a cache or a list of caches may be a cache, whatever its index (libcst
  also asks whether it selects blocks, and how many elements a list index has; the ast
  cannot tell ``x[(a, b)]`` from ``x[a, b]``); any bounded or stepped slice may split;
- the value model's evidence (``values``: guards, annotations, construction sites, project
  facts) only ever takes splits away, so the prescreen ignores it;
- a split whose size or slice bound is not a literal counts (libcst asks whether it
  mentions a head size);
- a class's state or MLA nature is read from the class and its own bases only (libcst
  follows the whole lineage in the project index; deeper bases only ever remove splits);
- names decide that something is no split only in ASCII files: the ast normalizes
  identifiers (NFKC), libcst keeps their spelling, and only a non-ASCII file can tell.

``tests/lint/test_prescreen.py`` checks that every unit where libcst collects a split site
passes, on the catalog examples and on whole vLLM trees.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvguard.lint.forms import (
    CHAIN_METHODS,
    INSPECTING_CALLS,
    ITERATING_METHODS,
    METADATA_ATTRS,
    PREDICATE_PREFIXES,
    SPLIT_METHODS,
    STATE_WORDS,
    lineage_context,
)
from kvguard.lint.names import KvNames

if TYPE_CHECKING:
    from kvguard.lint.facts import ClassFacts

CACHE, LIST, STATE = 1, 2, 4  # what an expression may denote (bit set)
_KV_AXIS_INDICES = (0, 1, -1, -2)


@dataclass(frozen=True)
class UnitContext:
    """What libcst's ``Collector.class_context`` knows for sure about a unit's class."""

    state: bool = False  # kv_cache names denote recurrent states
    mla: bool = False  # MLA latents: libcst reports nothing in the unit
    self_state: bool = False  # self.kv_cache holds a tuple of states


_CHILD_FIELDS: dict[type, tuple[str, ...]] = {}
# Fields that hold only leaf markers (Load/Store, operators): never a name or a call.
_LEAF_FIELDS = frozenset({"ctx", "op", "ops"})


def walk(node: ast.AST) -> Iterator[ast.AST]:
    """Every node below ``node`` except context and operator markers (like ``ast.walk``,
    in another order, about three times as fast)."""
    stack = [node]
    fields_of = _CHILD_FIELDS
    while stack:
        current = stack.pop()
        yield current
        kind = type(current)
        fields = fields_of.get(kind)
        if fields is None:
            fields = fields_of[kind] = tuple(f for f in kind._fields if f not in _LEAF_FIELDS)
        for name in fields:
            value = getattr(current, name, None)
            if isinstance(value, ast.AST):
                stack.append(value)
            elif type(value) is list:
                stack.extend(v for v in value if isinstance(v, ast.AST))


def unit_context(path_state: bool, path_mla: bool, owner: ClassFacts | None) -> UnitContext:
    """The context from the path and, when the class is known, its name and own bases."""
    if owner is None:
        return UnitContext(path_state, path_mla)
    lineage_state, lineage_mla = lineage_context((owner.name, *owner.bases))
    return UnitContext(
        state=path_state or lineage_state,
        mla=path_mla or lineage_mla or owner.stores_no_value is True,
        self_state=owner.state_kv_cache,
    )


def _int(node: ast.expr | None) -> int | None:
    """A literal int as libcst's ``int_value`` reads one (``True`` is no int there)."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _int(node.operand)
        return -inner if inner is not None else None
    return None


def _names(target: ast.expr) -> list[str]:
    """The names an assignment target binds, as libcst's ``_target_names`` lists them."""
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for e in target.elts for n in _names(e)]
    if isinstance(target, ast.Starred):
        return _names(target.value)
    return []


def _arg(args: list[ast.expr], keywords: list[ast.keyword], position: int, keyword: str):  # type: ignore[no-untyped-def]
    for kw in keywords:
        if kw.arg == keyword:
            return kw.value
    positional = [a for a in args if not isinstance(a, ast.Starred)]
    return positional[position] if position < len(positional) else None


def _may_halve(method: str, args: list[ast.expr], keywords: list[ast.keyword]) -> bool:
    """``receivers._halves``, true wherever it may be."""
    if method in ("chunk", "tensor_split"):
        count = _arg(args, keywords, 0, "chunks" if method == "chunk" else "indices_or_sections")
        return _int(count) == 2
    if method in ("split", "split_with_sizes"):
        size = _arg(
            args, keywords, 0, "split_size_or_sections" if method == "split" else "split_sizes"
        )
        if isinstance(size, (ast.List, ast.Tuple)):
            return len(size.elts) == 2
        return size is not None
    if method == "select":
        return _int(_arg(args, keywords, 1, "index")) in _KV_AXIS_INDICES
    return True


def _may_split_subscript(sub: ast.Subscript) -> bool:
    """Not surely a block selection and not surely without a K/V axis (libcst's
    ``_subscript_axis`` passes over elements that pick blocks, and the first element that
    may cut a dim decides)."""
    index = sub.slice
    elements = index.elts if isinstance(index, ast.Tuple) else [index]
    for element in elements:
        if isinstance(element, ast.Constant) and element.value is Ellipsis:
            continue
        if isinstance(element, ast.Slice):
            if element.lower is None and element.upper is None and element.step is None:
                continue
            return True
        literal = _int(element)
        if literal is not None:
            return literal in _KV_AXIS_INDICES
    return False


def _before(a: ast.AST, b: ast.AST) -> bool:
    return (a.lineno, a.col_offset) < (b.lineno, b.col_offset)  # type: ignore[attr-defined]


class Prescreen:
    def __init__(self, names: KvNames, ascii_source: bool = True) -> None:
        self.names = names
        # whether the ast's identifiers are spelled as libcst sees them (see above)
        self.exact = ascii_source

    def may_split(self, unit: ast.AST, ctx: UnitContext) -> bool:
        """Whether libcst may collect a split site in this unit."""
        if ctx.mla:
            return False
        binds: list[tuple[str, ast.expr, bool]] = []  # (name, value, is a loop)
        splits: list[tuple[ast.expr, ast.expr]] = []  # (split node, its receiver)
        unpacks: list[ast.Assign] = []
        targets: dict[int, list[str]] = {}  # id(assigned value) -> names it is bound to
        dropped: set[int] = set()  # ids of nodes only inspected, or passed as a state
        for node in walk(unit):
            match node:
                case ast.Subscript():
                    if _may_split_subscript(node):
                        splits.append((node, node.value))
                case ast.Call():
                    self._call(node, splits, dropped)
                case ast.Attribute(attr=attr) if self.exact and attr in METADATA_ATTRS:
                    dropped.add(id(node.value))
                case ast.keyword(arg=str(arg)) if self.exact and any(w in arg for w in STATE_WORDS):
                    dropped.add(id(node.value))
                case ast.Assign():
                    names = [n for t in node.targets for n in _names(t)]
                    self._bind(names, node.value, targets, binds)
                    if isinstance(node.targets[0], (ast.Tuple, ast.List)):
                        unpacks.append(node)
                case ast.AnnAssign(value=ast.expr() as value) | ast.NamedExpr(value=value):
                    self._bind(_names(node.target), value, targets, binds)
                case ast.For() | ast.AsyncFor():
                    self._loop(node, binds)
        if not splits and not unpacks:
            return False
        aliases = self._aliases(binds, ctx)
        for node, receiver in splits:
            if self.kinds(receiver, aliases, ctx) & CACHE and self._kept(node, targets, dropped):
                return True
        for assign in unpacks:
            elements = assign.targets[0].elts  # type: ignore[attr-defined]
            if (
                len(assign.targets) == 1
                and all(
                    isinstance(e, ast.Name)
                    or (isinstance(e, ast.Starred) and isinstance(e.value, ast.Name))
                    for e in elements
                )
                and self.kinds(assign.value, aliases, ctx) & CACHE
                and self._kept(assign.value, targets, dropped, _names(assign.targets[0]))
            ):
                return True
        return False

    def _kept(
        self,
        node: ast.expr,
        targets: dict[int, list[str]],
        dropped: set[int],
        names: list[str] | None = None,
    ) -> bool:
        """The Collector's filters: pieces bound to state names or to cache names are no
        K/V split; neither is a piece that is only inspected or passed as a state."""
        if not self.exact:
            return True
        if id(node) in dropped:
            return False
        names = targets.get(id(node), []) if names is None else names
        if names and all(any(w in n for w in STATE_WORDS) for n in names):
            return False
        return not (names and all(self.names.is_cache(n) for n in names))

    def _call(
        self, call: ast.Call, splits: list[tuple[ast.expr, ast.expr]], dropped: set[int]
    ) -> None:
        func = call.func
        callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if self.exact and (callee.startswith(PREDICATE_PREFIXES) or callee in INSPECTING_CALLS):
            dropped.update(id(a.value if isinstance(a, ast.Starred) else a) for a in call.args)
            dropped.update(id(k.value) for k in call.keywords)
        if not isinstance(func, ast.Attribute) or func.attr not in SPLIT_METHODS:
            return
        owner = func.value
        args, keywords = call.args, call.keywords
        if isinstance(owner, ast.Name) and owner.id == "torch":
            # libcst's first argument is the first in the source, keyword or not
            # (torch.unbind(input=kv_cache), f(x=1, *rest))
            if args and not (keywords and _before(keywords[0], args[0])):
                first = args[0]
                receiver = first.value if isinstance(first, ast.Starred) else first
                args = args[1:]
            elif keywords:
                receiver, keywords = keywords[0].value, keywords[1:]
            else:
                return
        else:
            receiver = owner
        if _may_halve(func.attr, args, keywords):
            splits.append((call, receiver))

    @staticmethod
    def _bind(
        names: list[str],
        value: ast.expr,
        targets: dict[int, list[str]],
        binds: list[tuple[str, ast.expr, bool]],
    ) -> None:
        targets[id(value)] = names
        if len(names) == 1:  # libcst aliases single names only (not a = b = kv_cache)
            binds.append((names[0], value, False))

    @staticmethod
    def _loop(loop: ast.For | ast.AsyncFor, binds: list[tuple[str, ast.expr, bool]]) -> None:
        iterable = loop.iter
        if (
            isinstance(iterable, ast.Call)
            and isinstance(iterable.func, ast.Attribute)
            and iterable.func.attr in ITERATING_METHODS
        ):
            iterable = iterable.func.value
        target = loop.target
        if isinstance(target, (ast.Tuple, ast.List)) and target.elts:
            target = target.elts[-1]
        if isinstance(target, ast.Name):
            binds.append((target.id, iterable, True))

    def _aliases(self, binds: list[tuple[str, ast.expr, bool]], ctx: UnitContext) -> dict[str, int]:
        aliases: dict[str, int] = {}
        changed = True
        while changed:
            changed = False
            for name, value, loop in binds:
                kinds = self.kinds(value, aliases, ctx)
                if loop:
                    kinds = CACHE if kinds & LIST else 0
                elif kinds and self.exact and any(w in name for w in STATE_WORDS):
                    kinds = STATE
                new = aliases.get(name, 0) | kinds
                if kinds and new != aliases.get(name):
                    aliases[name] = new
                    changed = True
        return aliases

    def kinds(self, expr: ast.expr, aliases: dict[str, int], ctx: UnitContext) -> int:
        """What the expression may denote (``receivers.classify``)."""
        names = self.names
        if isinstance(expr, ast.Name):
            word = expr.id
            found = aliases.get(word, 0)
            if names.is_cache(word):
                found |= STATE if ctx.state else CACHE
            elif names.is_cache_list(word):
                found |= LIST
            return found
        if isinstance(expr, ast.Attribute):
            attr = expr.attr
            if names.is_cache(attr):
                on_self = isinstance(expr.value, ast.Name) and expr.value.id == "self"
                if on_self and attr == "kv_cache" and ctx.self_state:
                    return STATE
                return STATE if ctx.state else CACHE
            return LIST if names.is_cache_list(attr) else 0
        if isinstance(expr, ast.Subscript):
            return CACHE if self.kinds(expr.value, aliases, ctx) & (CACHE | LIST) else 0
        if (
            isinstance(expr, ast.Call)
            and isinstance(expr.func, ast.Attribute)
            and (expr.func.attr in CHAIN_METHODS or expr.func.attr in ("select", "narrow"))
        ):
            return CACHE if self.kinds(expr.func.value, aliases, ctx) & CACHE else 0
        return 0
