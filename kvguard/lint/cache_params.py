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
from collections.abc import Callable, Iterable, Iterator

from kvguard.lint.forms import ITERATING_METHODS
from kvguard.lint.names import KvNames

Function = ast.FunctionDef | ast.AsyncFunctionDef
# (innermost class name or None, function name) -> parameter names that hold a cache
CacheParams = dict[tuple[str | None, str], tuple[str, ...]]
_ROUNDS = 4  # caches passed on through helpers of helpers


def cache_params(
    definitions: Iterable[tuple[Function, ast.ClassDef | None]],
    names: KvNames,
    speaks: Callable[[Function], bool] = lambda func: True,
    rest: Iterable[ast.stmt] = (),
) -> CacheParams:
    """The cache parameters of the file's functions (``definitions``: every function outside
    function bodies, with its innermost class). ``speaks`` says which of them spell a cache
    word: only their calls can pass a cache, so a file where none does costs one look at
    them; ``rest`` is the module's other statements, whose calls count as well."""
    defs = list(definitions)
    by_key: dict[tuple[str | None, str], list[Function]] = {}
    for func, owner in defs:
        by_key.setdefault((owner.name if owner else None, func.name), []).append(func)
    speaking = [(f, o) for f, o in defs if speaks(f)]
    if not speaking:
        return {}
    attributes = _cache_attributes(defs, speaking, names)
    if not any(_votes(speaking, names, by_key, {}).values()):
        return _with_attributes({}, defs, attributes)
    module = ast.Module(body=list(rest), type_ignores=[])
    everything: list[tuple[Function | ast.Module, ast.ClassDef | None]] = [*defs, (module, None)]
    found: CacheParams = {}
    for _ in range(_ROUNDS):
        updated: dict[tuple[str | None, str], set[str]] = {}
        for (owner_name, fname, param), only_caches in _votes(
            everything, names, by_key, found
        ).items():
            if only_caches and not names.is_cache(param) and not names.is_cache_list(param):
                updated.setdefault((owner_name, fname), set()).add(param)
        result = {k: tuple(sorted(v)) for k, v in updated.items()}
        if result == found:
            break
        found = result
    return _with_attributes(found, defs, attributes)


def _cache_attributes(
    defs: list[tuple[Function, ast.ClassDef | None]],
    speaking: list[tuple[Function, ast.ClassDef | None]],
    names: KvNames,
) -> dict[str, frozenset[str]]:
    """Class -> attributes of ``self`` that its methods only ever bind to a cache
    (``self.buf = kv_cache`` in ``register``; ``self.buf[0]`` in ``save`` then splits it)."""
    candidates = {owner.name for f, owner in speaking if owner is not None and _binds(f, names)}
    votes: dict[tuple[str, str], bool] = {}
    for func, owner in defs:
        if owner is None or owner.name not in candidates:
            continue
        caches = _caller_caches(func, names, ())
        for target, value in _self_bindings(func):
            if not (names.is_cache(target) or names.is_cache_list(target)):
                key = (owner.name, target)
                votes[key] = votes.get(key, True) and _is_cache(value, caches, names)
    out: dict[str, set[str]] = {}
    for (owner_name, attr), only_caches in votes.items():
        if only_caches:
            out.setdefault(owner_name, set()).add(attr)
    return {k: frozenset(v) for k, v in out.items()}


def _binds(func: Function, names: KvNames) -> bool:
    caches = _caller_caches(func, names, ())
    return any(_is_cache(value, caches, names) for _, value in _self_bindings(func))


def _self_bindings(func: Function) -> Iterator[tuple[str, ast.expr]]:
    """``self.<attr> = value`` (and annotated) anywhere in the method; a tuple target binds
    each attribute to something that is no one cache."""
    for node in ast.walk(func):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, (ast.Tuple, ast.List)):
                    for element in target.elts:
                        if _is_self_attribute(element):
                            yield element.attr, ast.Tuple(elts=[], ctx=ast.Load())  # type: ignore[attr-defined]
                elif _is_self_attribute(target):
                    yield target.attr, node.value  # type: ignore[attr-defined]
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and _is_self_attribute(node.target):
            value = node.value if isinstance(node, ast.AnnAssign) else None
            yield node.target.attr, value or ast.Tuple(elts=[], ctx=ast.Load())  # type: ignore[attr-defined]


def _is_self_attribute(node: ast.expr) -> bool:
    return (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


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


def _votes(
    callers: Iterable[tuple[Function | ast.Module, ast.ClassDef | None]],
    names: KvNames,
    by_key: dict[tuple[str | None, str], list[Function]],
    found: CacheParams,
) -> dict[tuple[str | None, str, str], bool]:
    """(class, function, parameter) -> whether every call that fills it passes a cache."""
    votes: dict[tuple[str | None, str, str], bool] = {}
    for func, owner in callers:
        owner_name = owner.name if owner else None
        own = found.get((owner_name, func.name), ()) if not isinstance(func, ast.Module) else ()
        caches = _caller_caches(func, names, own)
        for call in _calls(func):
            _vote(call, owner_name, caches, names, by_key, votes)
    return votes


def _calls(func: Function | ast.Module) -> Iterator[ast.Call]:
    """The calls in the function's own body (nested functions and classes included)."""
    stack: list[ast.AST] = list(func.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Call):
            yield node
        stack.extend(ast.iter_child_nodes(node))


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
        return _is_list(expr.value, names) and not isinstance(expr.slice, ast.Slice)
    return False


def _is_list(expr: ast.expr, names: KvNames) -> bool:
    if isinstance(expr, ast.Name):
        return names.is_cache_list(expr.id)
    if isinstance(expr, ast.Attribute):
        return names.is_cache_list(expr.attr)
    return False


def _caller_caches(
    func: Function | ast.Module, names: KvNames, params: tuple[str, ...]
) -> set[str]:
    """Locals of the caller that hold one cache: its cache parameters, names bound to a
    cache list's element, and loop targets over a cache list's elements. A local bound to
    anything else anywhere in the function is not one."""
    caches = set(params)
    other: set[str] = set()
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                (caches if _is_cache(node.value, set(), names) else other).add(target.id)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            element = _loop_element(node.target, node.iter, names)
            if element is not None:
                caches.add(element)
    return caches - other


def _loop_element(target: ast.expr, iterable: ast.expr, names: KvNames) -> str | None:
    """``for c in kv_caches.values()``, ``for _, c in kv_caches.items()``: the name that
    holds one element."""
    if isinstance(iterable, ast.Call) and isinstance(iterable.func, ast.Attribute):
        method, owner = iterable.func.attr, iterable.func.value
        if method not in ITERATING_METHODS or not _is_list(owner, names):
            return None
        if method == "items":
            if isinstance(target, ast.Tuple) and len(target.elts) == 2:
                value = target.elts[1]
                return value.id if isinstance(value, ast.Name) else None
            return None
        return target.id if method == "values" and isinstance(target, ast.Name) else None
    return None  # ``for x in kv_caches``: the elements of a list, the keys of a dict
