"""Attributes that hold an object of a class that indexes itself, not a tensor.

``dma_kv_cache: SmemWrapper`` in a class body, where ``SmemWrapper`` is a class of the
project whose own ``__getitem__`` computes what an index picks (one position of flat data,
say), makes ``schedule.dma_kv_cache[step, batch, page, 0]`` that class's code, not a K/V
split of a tensor. The evidence holds only as far as the code says it:

- the receiver's class is known: ``self`` in the annotating class (or a subclass), or a
  parameter annotated with such a class and never rebound in the function;
- every class of that lineage (its bases and its subclasses) that mentions the attribute
  annotates it with the same plain class and none binds it in a method
  (``self.kv_cache = torch.empty(...)`` contradicts the annotation);
- that class resolves to one defined in the project (in the same file, or by a ``from``
  import of a project module), every base of its lineage resolves too, none is a tensor
  type, and its nearest ``__getitem__`` does work of its own: not a stub (``...``, ``pass``,
  ``raise``: a Protocol or an abstract method) and not a pass-through that hands the key
  unchanged to another object's indexing (``return self.data[key]`` is a raw split by
  another name).

The ``ast`` half (what ``facts`` records per class) imports no libcst.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from kvguard.lint.names import Occurrence
from kvguard.lint.value_facts import SEQUENCE_TYPES, TENSOR_TYPES

if TYPE_CHECKING:
    from kvguard.lint.facts import ClassFacts
    from kvguard.lint.index import ProjectIndex

OWN, STUB, FORWARD = "own", "stub", "forward"  # what a class's own __getitem__ does
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


# -- per class (ast) --------------------------------------------------------------------


def attribute_classes(
    cls: ast.ClassDef, is_cache: Callable[[str], bool], bound: frozenset[str] | None
) -> tuple[tuple[str, str], ...]:
    """(attribute, class) for each cache-named attribute the class mentions: the plain class
    its class body annotates it with, or "" where it is anything else or a method binds it.
    ``bound``: the cache-named attributes that ``self.name = ...`` lines in the class bind
    (``self_bindings``); None: not known from the text, so the methods are walked."""
    found: dict[str, str] = {}
    for item in cls.body:
        if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
            name = item.target.id
            if is_cache(name):
                cls_name = plain_class(item.annotation)
                found[name] = cls_name if found.get(name, cls_name) == cls_name else ""
    if bound is None:
        bound = frozenset(
            part.attr
            for method in cls.body
            if isinstance(method, _FUNCS)
            for node in ast.walk(method)
            for target in _targets(node)
            for part in ast.walk(target)
            if isinstance(part, ast.Attribute)
            and isinstance(part.value, ast.Name)
            and part.value.id == "self"
            and is_cache(part.attr)
        )
    for name in bound:
        found[name] = ""
    return tuple(sorted(found.items()))


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return node.targets
    if isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        return [node.target]
    return []


# What follows a cache word that a statement binds: ``= ``, ``: T =``, ``+=``
_BINDS = re.compile(r"\s*(?::[^=\n]*)?(?:[-+*/%&|^@]|//|<<|>>|\*\*)?=(?!=)")


def self_bindings(text: str, occurrences: list[Occurrence] | None) -> list[tuple[int, str]] | None:
    """(line, name) of each ``self.name = ...`` (or ``: T =``, ``+=``) of a cache name, by
    line; None when the words are not known (``attribute_classes`` then walks methods)."""
    if occurrences is None:
        return None
    return sorted(
        (text.count("\n", 0, at) + 1, word)
        for at, end, word, listed in occurrences
        if not listed and text[max(0, at - 5) : at] == "self." and _BINDS.match(text, end)
    )


def plain_class(annotation: ast.expr) -> str:
    """The class a bare-name annotation names (``SmemWrapper``, ``"SmemWrapper"``), else ""
    (a dotted name's module is not resolved; tensors, sequences and subscripts are no
    wrapper)."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            annotation = ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return ""
    if not isinstance(annotation, ast.Name):
        return ""
    name = annotation.id
    return (
        "" if name in TENSOR_TYPES or name in SEQUENCE_TYPES or name in ("Any", "object") else name
    )


def getitem_kind(cls: ast.ClassDef) -> str | None:
    """What the class's own ``__getitem__`` does (OWN, STUB, FORWARD), None without one."""
    method = next((n for n in cls.body if isinstance(n, _FUNCS) and n.name == "__getitem__"), None)
    if method is None:
        return None
    body = list(method.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]  # the docstring (or a lone `...`)
    if all(isinstance(s, (ast.Pass, ast.Raise)) for s in body):
        return STUB
    args = method.args.posonlyargs + method.args.args
    key = args[1].arg if len(args) >= 2 else None
    for node in ast.walk(method):
        if isinstance(node, ast.Subscript) and _holds_key(node.slice, key):
            return FORWARD
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "__getitem__"
            and any(isinstance(a, ast.Name) and a.id == key for a in node.args)
        ):
            return FORWARD
    return OWN


def _holds_key(index: ast.expr, key: str | None) -> bool:
    """The key itself, or one element of an index tuple, handed on unchanged."""
    parts = index.elts if isinstance(index, ast.Tuple) else [index]
    return any(isinstance(p, ast.Name) and p.id == key for p in parts)


# -- over the project (index) -----------------------------------------------------------


def strict_lookup(index: ProjectIndex, name: str, near: str) -> ClassFacts | None:
    """The class ``name`` denotes in the file ``near``: defined there, or imported there by
    ``from M import N`` from a project module M; nothing by a guess from the name alone."""
    found = index.by_name.get(name, [])
    local = next((c for c in found if c.path == near), None)
    if local is not None:
        return local
    target = index.imports.get(near, {}).get(name)
    if target is None:
        return None
    from kvguard.lint.index import is_module  # here: index imports facts, which imports this

    stem, imported = target
    return next((c for c in index.by_name.get(imported, ()) if is_module(c.path, stem)), None)


def indexes_itself(index: ProjectIndex, facts: ClassFacts) -> bool:
    table = index.memo("indexes_itself")
    key = id(facts)
    if key not in table:
        table[key] = (facts, _indexes_itself(index, facts))
    return table[key][1]


def _indexes_itself(index: ProjectIndex, facts: ClassFacts) -> bool:
    lineage = index.mro(facts)
    for cls in lineage:
        if cls.name in TENSOR_TYPES or any(b in TENSOR_TYPES for b in cls.bases):
            return False
        if any(b != "object" and strict_lookup(index, b, cls.path) is None for b in cls.bases):
            return False  # a base kvguard cannot see may be anything, a tensor included
    kind = next((c.getitem for c in lineage if c.getitem is not None), None)
    return kind == OWN


def wrapped_attributes(index: ProjectIndex, holder: ClassFacts) -> frozenset[str]:
    """The attributes of ``holder`` (and what it inherits) that hold a self-indexing object."""
    table = index.memo("wrapped_attributes")
    key = id(holder)
    if key not in table:
        table[key] = (holder, _wrapped(index, holder))
    return table[key][1]


def _wrapped(index: ProjectIndex, holder: ClassFacts) -> frozenset[str]:
    named: dict[str, set[tuple[str, str]]] = {}  # attribute -> (class name, annotating file)
    # the bases say what the attribute is; a subclass that rebinds it changes what ``self``
    # may hold in the holder's own methods
    for cls in (*index.mro(holder), *index.subclasses(holder)):
        for attr, cls_name in cls.attribute_classes:
            named.setdefault(attr, set()).add((cls_name, cls.path))
    out = set()
    for attr, seen in named.items():
        if len({name for name, _ in seen}) != 1 or any(not name for name, _ in seen):
            continue
        resolved = {strict_lookup(index, name, path) for name, path in seen}
        if len(resolved) == 1 and None not in resolved:
            wrapper = resolved.pop()
            if wrapper is not None and indexes_itself(index, wrapper):
                out.add(attr)
    return frozenset(out)
