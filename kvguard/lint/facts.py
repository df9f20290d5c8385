"""Stage two of the pipeline: one stdlib ``ast`` pass per file that survived the text prefilter.

It yields (a) the facts that the project index needs about each class (bases, declared
layout, impl link, attention types) and (b) whether the file can hold a split finding.

Why (b) cannot drop a finding: every split that KVG001/KVG002/KVG004 report is a
subscript, a call of a ``SPLIT_METHODS`` method (or ``torch.<method>``), or a tuple
unpacking, whose receiver is a KV-cache name or attribute, or a local name assigned
(transitively) from an expression that contains one. ``_tainted_names`` over-approximates
those aliases flow-insensitively and ``_has_candidate`` accepts any such node whose
subtree mentions a tainted name or a KV-named attribute, so the libcst rules only ever
look at a subset of what this pass accepted. ``tests/lint/test_prefilter.py`` checks the
claim against full analysis of every file in real vLLM trees.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from kvguard.lint.forms import SPLIT_METHODS
from kvguard.lint.layouts import LayoutDecl, layout_names_of, shapes_of, stride_orders_of
from kvguard.lint.names import KvNames

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclass(frozen=True)
class ClassFacts:
    name: str
    path: str
    line: int
    bases: tuple[str, ...]
    layout: LayoutDecl
    layout_line: int
    impl_names: tuple[str, ...]
    supports_encoder_decoder: bool | None  # None: the class itself does not say
    reconciles_layouts: bool  # a method re-strides views for ENCODER_DECODER (the #43945 fix)
    state_kv_cache: bool  # self.kv_cache is a tuple/list of states (Mamba-style)


@dataclass(frozen=True)
class FileFacts:
    classes: tuple[ClassFacts, ...]
    candidate: bool


def _dotted_tail(node: ast.expr) -> str | None:
    if isinstance(node, ast.Subscript):  # Generic[...]
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return None


def _returned_names(func: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[str, ...]:
    names = []
    for ret in ast.walk(func):
        if isinstance(ret, ast.Return) and ret.value is not None:
            tail = _dotted_tail(ret.value)
            if tail:
                names.append(tail)
    if isinstance(func.returns, ast.Subscript):  # -> type["ImplName"]
        inner = func.returns.slice
        if isinstance(inner, ast.Constant) and isinstance(inner.value, str):
            names.append(inner.value.split(".")[-1])
    return tuple(dict.fromkeys(names))


def _mentions(node: ast.AST, word: str) -> bool:
    for sub in ast.walk(node):
        if isinstance(sub, ast.Attribute) and sub.attr == word:
            return True
        if isinstance(sub, ast.Name) and sub.id == word:
            return True
        if (
            isinstance(sub, ast.Constant)
            and isinstance(sub.value, str)
            and word.lower() == sub.value.lower()
        ):
            return True
    return False


def _assigns_state_tuple(cls: ast.ClassDef) -> bool:
    for node in ast.walk(cls):
        if not isinstance(node, ast.Assign):
            continue
        for target in node.targets:
            if (
                isinstance(target, ast.Attribute)
                and target.attr == "kv_cache"
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
            ):
                value = node.value
                if isinstance(value, (ast.Tuple, ast.List, ast.ListComp, ast.GeneratorExp)):
                    return True
                if isinstance(value, ast.Call) and _dotted_tail(value.func) in ("tuple", "list"):
                    return True
    return False


def class_facts(cls: ast.ClassDef, path: str) -> ClassFacts:
    methods = {n.name: n for n in cls.body if isinstance(n, _FUNCS)}
    shapes = shapes_of(methods["get_kv_cache_shape"]) if "get_kv_cache_shape" in methods else ()
    orders, dynamic = (
        stride_orders_of(methods["get_kv_cache_stride_order"])
        if "get_kv_cache_stride_order" in methods
        else ((), False)
    )
    layouts = (
        layout_names_of(methods["supported_kv_cache_layouts"])
        if "supported_kv_cache_layouts" in methods
        else ()
    )
    declaring = next(
        (methods[m] for m in ("get_kv_cache_shape", "supported_kv_cache_layouts") if m in methods),
        cls,
    )
    supports: bool | None = None
    if "supports_attn_type" in methods:
        supports = _mentions(methods["supports_attn_type"], "ENCODER_DECODER")
    reconciles = any(
        _mentions(m, "ENCODER_DECODER") and _mentions(m, "as_strided") for m in methods.values()
    )
    return ClassFacts(
        name=cls.name,
        path=path,
        line=cls.lineno,
        bases=tuple(t for t in map(_dotted_tail, cls.bases) if t),
        layout=LayoutDecl(
            shapes=shapes, stride_orders=orders, stride_order_dynamic=dynamic, layouts=layouts
        ),
        layout_line=declaring.lineno,
        impl_names=_returned_names(methods["get_impl_cls"]) if "get_impl_cls" in methods else (),
        supports_encoder_decoder=supports,
        reconciles_layouts=reconciles,
        state_kv_cache=_assigns_state_tuple(cls),
    )


def _targets(node: ast.AST) -> list[ast.expr]:
    if isinstance(node, ast.Assign):
        return node.targets
    if isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
        return [node.target]
    if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
        return [node.target]
    if isinstance(node, ast.withitem) and node.optional_vars is not None:
        return [node.optional_vars]
    return []


def _source_of(node: ast.AST) -> ast.AST | None:
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
        return node.value
    if isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
        return node.iter
    if isinstance(node, ast.withitem):
        return node.context_expr
    return None


class _Scanner:
    def __init__(self, names: KvNames) -> None:
        self.names = names

    def kv_word(self, node: ast.AST) -> bool:
        if isinstance(node, ast.Name):
            word = node.id
        elif isinstance(node, ast.Attribute):
            word = node.attr
        elif isinstance(node, ast.arg):
            word = node.arg
        else:
            return False
        return self.names.is_cache(word) or self.names.is_cache_list(word)

    def tainted_names(self, unit: ast.AST) -> set[str]:
        nodes = list(ast.walk(unit))
        tainted = {n.id for n in nodes if isinstance(n, ast.Name) and self.kv_word(n)}
        tainted |= {n.arg for n in nodes if isinstance(n, ast.arg) and self.kv_word(n)}
        flows = [(src, _targets(n)) for n in nodes if (src := _source_of(n)) is not None]
        changed = True
        while changed:
            changed = False
            for src, targets in flows:
                if not self.touches(src, tainted):
                    continue
                for target in targets:
                    for sub in ast.walk(target):
                        if isinstance(sub, ast.Name) and sub.id not in tainted:
                            tainted.add(sub.id)
                            changed = True
        return tainted

    def touches(self, node: ast.AST, tainted: set[str]) -> bool:
        return any(
            (isinstance(sub, ast.Name) and sub.id in tainted) or self.kv_word(sub)
            for sub in ast.walk(node)
        )

    def has_candidate(self, unit: ast.AST) -> bool:
        tainted = self.tainted_names(unit)
        for node in ast.walk(unit):
            if isinstance(node, ast.Subscript):
                receiver: ast.AST | None = node.value
            elif isinstance(node, ast.Call) and _dotted_tail(node.func) in SPLIT_METHODS:
                receiver = node
            elif isinstance(node, ast.Assign) and isinstance(
                node.targets[0], (ast.Tuple, ast.List)
            ):
                receiver = node.value
            else:
                continue
            if self.touches(receiver, tainted):
                return True
        return False


def _units(tree: ast.Module) -> list[ast.AST]:
    """Top-level functions, methods of top-level classes, and the rest of the module."""
    units: list[ast.AST] = []
    rest: list[ast.stmt] = []
    for stmt in tree.body:
        if isinstance(stmt, _FUNCS):
            units.append(stmt)
        elif isinstance(stmt, ast.ClassDef):
            for item in stmt.body:
                (units if isinstance(item, _FUNCS) else rest).append(item)  # type: ignore[arg-type]
        else:
            rest.append(stmt)
    units.append(ast.Module(body=rest, type_ignores=[]))
    return units


def scan(tree: ast.Module, path: str, names: KvNames) -> FileFacts:
    classes = tuple(
        class_facts(node, path) for node in ast.walk(tree) if isinstance(node, ast.ClassDef)
    )
    scanner = _Scanner(names)
    candidate = any(scanner.has_candidate(unit) for unit in _units(tree))
    return FileFacts(classes=classes, candidate=candidate)
