"""Stage two of the pipeline: one stdlib ``ast`` pass per file that survived the text prefilter.

It yields (a) the facts that the project index needs about each class (bases, declared
layout, impl link, attention types) and (b) whether the file can hold a split finding.

Why (b) cannot drop a finding: every split that KVG001/KVG002/KVG004 report is a
subscript, a call of a ``SPLIT_METHODS`` method (or ``torch.<method>``), or a tuple
unpacking, whose receiver ``receivers.classify`` accepts. ``classify`` only ever walks a
chain of subscripts and ``VIEW_METHODS``/``DERIVING_METHODS`` calls down to a root that is
a KV-named name or attribute, or a local alias; an alias is bound by an assignment or a
``for`` loop whose value (or iterable, through ``.items()``/``.values()``) has such a
root. ``has_candidate`` strips the same chains (``_root``), taints every name bound from a
tainted root, flow-insensitively and transitively, and accepts any split-shaped node with
a tainted root, so the libcst rules only ever see a subset of what this pass accepted.
``tests/lint/test_vllm_real.py::test_prefilter_never_drops_a_finding`` checks the claim
against full analysis of every file in real vLLM trees.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

from kvguard.lint.forms import DERIVING_METHODS, SPLIT_METHODS, VIEW_METHODS
from kvguard.lint.layouts import LayoutDecl, layout_names_of, shapes_of, stride_orders_of
from kvguard.lint.names import KvNames

CHAIN_METHODS = VIEW_METHODS | DERIVING_METHODS

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
    # for the fixer: methods that take ``self`` (no static/class methods), and the body of
    # ``_split_kv_cache`` if the class defines one (see ``plain_splitter``)
    instance_methods: tuple[str, ...] = ()
    splitter: str | None = None


MODULE_UNIT = "<module>"


@dataclass(frozen=True)
class FileFacts:
    classes: tuple[ClassFacts, ...]
    candidate: bool
    # units that can hold a split: "func", "Class.method", or MODULE_UNIT for the rest
    units: frozenset[str] = frozenset()


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


def _segment(lines: list[str], node: ast.AST) -> str:
    return "\n".join(lines[node.lineno - 1 : node.end_lineno])  # type: ignore[attr-defined]


def class_facts(cls: ast.ClassDef, path: str, lines: list[str]) -> ClassFacts:
    """Facts of one class; methods are walked only when their text can matter."""
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
        "ENCODER_DECODER" in (text := _segment(lines, m))
        and "as_strided" in text
        and _mentions(m, "ENCODER_DECODER")
        and _mentions(m, "as_strided")
        for m in methods.values()
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
        state_kv_cache="self.kv_cache" in _segment(lines, cls) and _assigns_state_tuple(cls),
        instance_methods=tuple(name for name, m in methods.items() if _takes_self(m)),
        splitter=plain_splitter(methods["_split_kv_cache"])
        if "_split_kv_cache" in methods
        else None,
    )


SPLITTER_METHOD = "_split_kv_cache"


def _takes_self(func: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    decorators = {_dotted_tail(d) for d in func.decorator_list}
    args = func.args.posonlyargs + func.args.args
    return bool(args) and args[0].arg == "self" and not decorators & {"staticmethod", "classmethod"}


def plain_splitter(func: ast.FunctionDef | ast.AsyncFunctionDef) -> str:
    """The split a ``_split_kv_cache(self, kv_cache)`` method returns, over ``kv_cache``.

    Only a body that is (a docstring and) one ``return`` of an expression of its cache
    parameter counts; anything else (an ``as_strided`` branch for ENCODER_DECODER, say)
    gives "" so that the fixer never claims to know what it returns.
    """
    body = list(func.body)
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    args = func.args.posonlyargs + func.args.args
    if len(body) != 1 or not isinstance(body[0], ast.Return) or body[0].value is None:
        return ""
    if len(args) != 2 or args[0].arg != "self":
        return ""
    param = args[1].arg
    value = body[0].value

    class _Rename(ast.NodeTransformer):
        def visit_Name(self, node: ast.Name) -> ast.Name:
            if node.id == param:
                return ast.Name("kv_cache", node.ctx)
            if node.id == "kv_cache":
                return ast.Name("__kvguard_shadowed__", node.ctx)
            return node

    return ast.unparse(_Rename().visit(value))


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


def _root(node: ast.AST) -> ast.AST:
    """Strip the view/derive/subscript chain that the libcst rules follow to a receiver."""
    while True:
        if isinstance(node, ast.Subscript):
            node = node.value
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in CHAIN_METHODS
        ):
            node = node.func.value
        else:
            return node


class _Scanner:
    def __init__(self, names: KvNames) -> None:
        self.names = names

    def kv_word(self, word: str) -> bool:
        return self.names.is_cache(word) or self.names.is_cache_list(word)

    def rooted(self, node: ast.AST, tainted: set[str]) -> bool:
        root = _root(node)
        if isinstance(root, ast.Name):
            return root.id in tainted or self.kv_word(root.id)
        if isinstance(root, ast.Attribute):
            return self.kv_word(root.attr)
        return False

    def has_candidate(self, unit: ast.AST) -> bool:
        nodes = list(ast.walk(unit))
        words = {n.id for n in nodes if isinstance(n, ast.Name)}
        words |= {n.attr for n in nodes if isinstance(n, ast.Attribute)}
        words |= {n.arg for n in nodes if isinstance(n, ast.arg)}
        if not any(self.kv_word(w) for w in words):
            return False
        tainted = {w for w in words if self.kv_word(w)}
        flows = [(src, _targets(n)) for n in nodes if (src := _source_of(n)) is not None]
        changed = True
        while changed:
            changed = False
            for src, targets in flows:
                iterable = src
                if (
                    isinstance(iterable, ast.Call)
                    and isinstance(iterable.func, ast.Attribute)
                    and iterable.func.attr in ("items", "values")
                ):
                    iterable = iterable.func.value
                if not self.rooted(iterable, tainted):
                    continue
                for target in targets:
                    for sub in ast.walk(target):
                        if isinstance(sub, ast.Name) and sub.id not in tainted:
                            tainted.add(sub.id)
                            changed = True
        for node in nodes:
            if isinstance(node, ast.Subscript):
                receiver: ast.AST = node.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr not in SPLIT_METHODS:
                    continue
                owner = node.func.value
                if isinstance(owner, ast.Name) and owner.id == "torch":
                    if not node.args:
                        continue
                    receiver = node.args[0]
                else:
                    receiver = owner
            elif isinstance(node, ast.Assign) and isinstance(
                node.targets[0], (ast.Tuple, ast.List)
            ):
                receiver = node.value
            else:
                continue
            if self.rooted(receiver, tainted):
                return True
        return False


def _classes(body: list[ast.stmt]) -> list[ast.ClassDef]:
    """Classes at module level and nested in classes (not inside functions)."""
    out = []
    for stmt in body:
        if isinstance(stmt, ast.ClassDef):
            out.append(stmt)
            out.extend(_classes(stmt.body))
        elif isinstance(stmt, (ast.If, ast.Try)):
            out.extend(_classes(stmt.body))
    return out


def _units(tree: ast.Module) -> list[tuple[str, ast.AST]]:
    """Top-level functions, methods of top-level classes, and the rest of the module.

    ``checker.unit_key`` names the same partition on the libcst side.
    """
    units: list[tuple[str, ast.AST]] = []
    rest: list[ast.stmt] = []
    for stmt in tree.body:
        if isinstance(stmt, _FUNCS):
            units.append((stmt.name, stmt))
        elif isinstance(stmt, ast.ClassDef):
            for item in stmt.body:
                if isinstance(item, _FUNCS):
                    units.append((f"{stmt.name}.{item.name}", item))
                else:
                    rest.append(item)
        else:
            rest.append(stmt)
    units.append((MODULE_UNIT, ast.Module(body=rest, type_ignores=[])))
    return units


def scan(tree: ast.Module, path: str, names: KvNames, text: str) -> FileFacts:
    lines = text.splitlines()
    classes = tuple(class_facts(node, path, lines) for node in _classes(tree.body))
    scanner = _Scanner(names)
    units = set()
    for key, unit in _units(tree):
        # a unit whose text spells no KV word cannot hold a split (see names.py)
        if isinstance(unit, ast.Module):
            segment = "\n".join(_segment(lines, stmt) for stmt in unit.body)
        else:
            segment = _segment(lines, unit)
        if names.mentioned_in(segment) and scanner.has_candidate(unit):
            units.add(key)
    return FileFacts(classes=classes, candidate=bool(units), units=frozenset(units))
