"""Parameters that hold a KV cache because every call in the file passes one.

A connector's helper rarely names its argument for what it is: ``self._copy_out(
self.kv_caches[layer_name], ids)`` hands a layer's cache to ``def _copy_out(self, paged_cache,
ids)``, and ``paged_cache.index_select(1, ids)[0]`` then assumes K/V on axis 0 as surely as
``kv_cache[0]`` would. The names cannot see that; the call sites can. A parameter is a cache
inside its function when the file calls that function and every call that reaches the
parameter's slot passes a cache there:

- a cache name (``kv_cache``, ``self.kv_cache``), an element of a cache list
  (``kv_caches[name]``, ``self.kv_caches[i]``), or a local bound to one of these in the
  caller (``layer_cache = kv_caches[name]``, ``for name, layer_cache in kv_caches.items()``;
  not ``for x in kv_caches``, which gives a dict's keys);
- a parameter of the caller that is itself a cache this way (to a fixed point).

The same holds for an attribute of ``self`` that the class's methods only ever bind to a cache
(``self.buf = kv_cache`` in ``register_kv_caches``, then ``self.buf[0]`` in ``save``).

Calls are matched within the file, by the callee's spelling: ``self.f(...)``/``cls.f(...)``
reach the methods named ``f`` of the calling class (slots after ``self``), a bare ``f(...)``
the module-level functions named ``f``. A call that passes a ``*args`` at or before the slot,
or anything else at it, says the parameter is not only a cache, and it stays what its own
name says. This keeps the text prefilter conservative: the caller's file spells the cache
name. Only the stdlib ``ast`` is used (the scan workers run this before libcst is loaded).
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from kvguard.lint.forms import ITERATING_METHODS
from kvguard.lint.names import KvNames
from kvguard.lint.prescreen import walk
from kvguard.lint.value_facts import cache_list_name


def _is_cache_list(expr: ast.expr, names: KvNames) -> bool:
    return cache_list_name(expr, names) is not None


Function = ast.FunctionDef | ast.AsyncFunctionDef
# (innermost class name or None, function name) -> parameter names that hold a cache
CacheParams = dict[tuple[str | None, str], tuple[str, ...]]
_ROUNDS = 4  # caches passed on through helpers of helpers


@dataclass
class _Summary:
    """What one walk of a function (or the module's other statements) finds."""

    calls: list[ast.Call] = field(default_factory=list)
    assigns: list[tuple[str, ast.expr]] = field(default_factory=list)  # name = value
    loops: list[str] = field(default_factory=list)  # loop targets over a list's elements
    bindings: list[tuple[str, ast.expr | None]] = field(default_factory=list)  # self.x = value

    def caches(self, names: KvNames, params: tuple[str, ...] = ()) -> set[str]:
        """Locals that hold one cache: cache parameters, names bound to a cache list's
        element, loop targets over its elements; not a local also bound to anything else."""
        caches = {*params, *self.loops}
        other: set[str] = set()
        for name, value in self.assigns:
            (caches if _is_cache(value, set(), names) else other).add(name)
        return caches - other


def _summary(node: ast.AST, names: KvNames) -> _Summary:
    out = _Summary()
    for sub in (n for stmt in getattr(node, "body", ()) for n in walk(stmt)):
        kind = type(sub)
        if kind not in _SUMMARISED:
            continue
        if kind is ast.Call:
            out.calls.append(sub)
        elif kind is ast.Assign:
            if len(sub.targets) == 1 and isinstance(sub.targets[0], ast.Name):
                out.assigns.append((sub.targets[0].id, sub.value))
            for target in sub.targets:
                if isinstance(target, (ast.Tuple, ast.List)):
                    # a tuple target binds each attribute to no one cache
                    out.bindings.extend((e.attr, None) for e in target.elts if _is_self(e))  # type: ignore[attr-defined]
                elif _is_self(target):
                    out.bindings.append((target.attr, sub.value))  # type: ignore[attr-defined]
        elif isinstance(sub, (ast.AnnAssign, ast.AugAssign)) and _is_self(sub.target):
            value = sub.value if isinstance(sub, ast.AnnAssign) else None
            out.bindings.append((sub.target.attr, value))  # type: ignore[attr-defined]
        elif isinstance(sub, (ast.For, ast.AsyncFor, ast.comprehension)):
            element = _loop_element(sub.target, sub.iter, names)
            if element is not None:
                out.loops.append(element)
    return out


_SUMMARISED = frozenset(
    {ast.Call, ast.Assign, ast.AnnAssign, ast.AugAssign, ast.For, ast.AsyncFor, ast.comprehension}
)


def _is_self(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def cache_params(
    definitions: Iterable[tuple[Function, ast.ClassDef | None]],
    names: KvNames,
    speaks: Callable[[Function], bool] = lambda func: True,
    rest: Iterable[ast.stmt] = (),
) -> CacheParams:
    """The cache parameters of the file's functions (``definitions``: every function outside
    function bodies, with its innermost class). ``speaks`` says which of them spell a cache
    word: only their calls and bindings can pass a cache, so a file where none does costs one
    look at them; ``rest`` is the module's other statements, whose calls count as well."""
    defs = list(definitions)
    speaking = [(f, o) for f, o in defs if speaks(f)]
    if not speaking:
        return {}
    by_key: dict[tuple[str | None, str], list[Function]] = {}
    for func, owner in defs:
        by_key.setdefault((owner.name if owner else None, func.name), []).append(func)
    summaries: dict[int, _Summary] = {}

    def summary(node: ast.AST) -> _Summary:
        if id(node) not in summaries:
            summaries[id(node)] = _summary(node, names)
        return summaries[id(node)]

    # a first look at the functions that spell a cache word: anything to find at all?
    attributes = _cache_attributes(defs, speaking, names, summary)
    candidates = _votes(speaking, names, by_key, {}, summary)
    if not any(v and not _named(p[2], names) for p, v in candidates.items()):
        return _with_attributes({}, defs, attributes)
    module = ast.Module(body=list(rest), type_ignores=[])
    everything: list[tuple[Function | ast.Module, ast.ClassDef | None]] = [*defs, (module, None)]
    found: CacheParams = {}
    for _ in range(_ROUNDS):
        updated: dict[tuple[str | None, str], set[str]] = {}
        for (owner_name, fname, param), only_caches in _votes(
            everything, names, by_key, found, summary
        ).items():
            if only_caches and not _named(param, names):
                updated.setdefault((owner_name, fname), set()).add(param)
        result = {k: tuple(sorted(v)) for k, v in updated.items()}
        if result == found:
            break
        found = result
    return _with_attributes(found, defs, attributes)


def _named(param: str, names: KvNames) -> bool:
    """A parameter whose own name already says cache (or cache list)."""
    return names.is_cache(param) or names.is_cache_list(param)


def _votes(
    callers: Iterable[tuple[Function | ast.Module, ast.ClassDef | None]],
    names: KvNames,
    by_key: dict[tuple[str | None, str], list[Function]],
    found: CacheParams,
    summary: Callable[[ast.AST], _Summary],
) -> dict[tuple[str | None, str, str], bool]:
    """(class, function, parameter) -> whether every call that fills it passes a cache."""
    votes: dict[tuple[str | None, str, str], bool] = {}
    for func, owner in callers:
        owner_name = owner.name if owner else None
        own = found.get((owner_name, func.name), ()) if not isinstance(func, ast.Module) else ()
        facts = summary(func)
        if not facts.calls:
            continue
        caches = facts.caches(names, own)
        for call in facts.calls:
            _vote(call, owner_name, caches, names, by_key, votes)
    return votes


def _callee(call: ast.Call, owner: str | None) -> tuple[tuple[str | None, str], bool] | None:
    """(key of the functions the call reaches, whether ``self`` is bound) or None."""
    func = call.func
    if isinstance(func, ast.Name):
        return (None, func.id), False
    if (
        isinstance(func, ast.Attribute)
        and isinstance(func.value, ast.Name)
        and func.value.id in ("self", "cls")
        and owner is not None
    ):
        return (owner, func.attr), True
    return None


def _parameters(func: Function, bound: bool) -> tuple[list[str], set[str]]:
    """Positional parameter names in slot order (after ``self`` where bound), and all names."""
    positional = [a.arg for a in (*func.args.posonlyargs, *func.args.args)]
    if bound:
        static = any(
            isinstance(d, ast.Name) and d.id == "staticmethod" for d in func.decorator_list
        )
        if not static:
            positional = positional[1:]
    every = set(positional) | {a.arg for a in func.args.kwonlyargs}
    return positional, every


def _vote(
    call: ast.Call,
    owner: str | None,
    caches: set[str],
    names: KvNames,
    by_key: dict[tuple[str | None, str], list[Function]],
    votes: dict[tuple[str | None, str, str], bool],
) -> None:
    target = _callee(call, owner)
    if target is None or target[0] not in by_key:
        return
    key, bound = target
    for func in by_key[key]:
        positional, every = _parameters(func, bound)
        starred = False
        for slot, arg in enumerate(call.args):
            if isinstance(arg, ast.Starred):
                starred = True
            if slot >= len(positional):
                break
            vote = not starred and _is_cache(arg, caches, names)
            _cast(votes, (key[0], key[1], positional[slot]), vote)
        if starred:  # every later slot may be filled by the *args
            for param in positional[len(call.args) :]:
                _cast(votes, (key[0], key[1], param), False)
        for keyword in call.keywords:
            if keyword.arg is None:  # **kwargs: any parameter may be filled by it
                for param in every:
                    _cast(votes, (key[0], key[1], param), False)
            elif keyword.arg in every:
                vote = _is_cache(keyword.value, caches, names)
                _cast(votes, (key[0], key[1], keyword.arg), vote)


def _cast(
    votes: dict[tuple[str | None, str, str], bool], key: tuple[str | None, str, str], vote: bool
) -> None:
    votes[key] = votes.get(key, True) and vote


def _is_cache(expr: ast.expr, caches: set[str], names: KvNames) -> bool:
    """A cache tensor: a cache name, an element of a cache list, or a local bound to one."""
    if isinstance(expr, ast.Name):
        return expr.id in caches or (names.is_cache(expr.id) and not names.is_cache_list(expr.id))
    if isinstance(expr, ast.Attribute):
        return names.is_cache(expr.attr) and not names.is_cache_list(expr.attr)
    if isinstance(expr, ast.Subscript):
        return _is_cache_list(expr.value, names) and not isinstance(expr.slice, ast.Slice)
    return False


def _cache_attributes(
    defs: list[tuple[Function, ast.ClassDef | None]],
    speaking: list[tuple[Function, ast.ClassDef | None]],
    names: KvNames,
    summary: Callable[[ast.AST], _Summary],
) -> dict[str, frozenset[str]]:
    """Class -> attributes of ``self`` that its methods only ever bind to a cache
    (``self.buf = kv_cache`` in ``register``; ``self.buf[0]`` in ``save`` then splits it)."""
    candidates = set()
    for func, owner in speaking:
        facts = summary(func)
        if owner is not None and facts.bindings:
            caches = facts.caches(names)
            if any(v is not None and _is_cache(v, caches, names) for _, v in facts.bindings):
                candidates.add(owner.name)
    if not candidates:
        return {}
    votes: dict[tuple[str, str], bool] = {}
    for func, owner in defs:
        if owner is None or owner.name not in candidates:
            continue
        facts = summary(func)
        caches = facts.caches(names) if facts.bindings else set()
        for attr, value in facts.bindings:
            if not _named(attr, names):
                cache = value is not None and _is_cache(value, caches, names)
                votes[(owner.name, attr)] = votes.get((owner.name, attr), True) and cache
    out: dict[str, set[str]] = {}
    for (owner_name, attr), only_caches in votes.items():
        if only_caches:
            out.setdefault(owner_name, set()).add(attr)
    return {k: frozenset(v) for k, v in out.items()}


def _with_attributes(
    found: CacheParams,
    defs: list[tuple[Function, ast.ClassDef | None]],
    attributes: dict[str, frozenset[str]],
) -> CacheParams:
    """Every method of a class also treats its cache attributes as caches."""
    if not attributes:
        return found
    out = dict(found)
    for func, owner in defs:
        if owner is not None and owner.name in attributes:
            key = (owner.name, func.name)
            out[key] = tuple(sorted({*out.get(key, ()), *attributes[owner.name]}))
    return out


def _loop_element(target: ast.expr, iterable: ast.expr, names: KvNames) -> str | None:
    """``for c in kv_caches.values()``, ``for _, c in kv_caches.items()``: the name that
    holds one element."""
    if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Attribute):
        method, owner = iterable.func.attr, iterable.func.value
        if method not in ITERATING_METHODS or not _is_cache_list(owner, names):
            return None
        if method == "items":
            if isinstance(target, ast.Tuple) and len(target.elts) == 2:
                value = target.elts[1]
                return value.id if isinstance(value, ast.Name) else None
            return None
        return target.id if method == "values" and isinstance(target, ast.Name) else None
    return None  # ``for x in kv_caches``: the elements of a list, the keys of a dict
