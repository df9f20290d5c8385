"""Stage two of the pipeline: one stdlib ``ast`` pass per file that survived the text prefilter.

It yields (a) the facts that the project index needs about each class (bases, declared
layout, impl link, attention types) and the file's ``from`` imports, and (b) the units of
the file that can hold a split finding: each function outside function bodies (the same
partition ``checker._Walker`` makes on the libcst side) and the module's top-level rest,
by line span, so that libcst parses only those (``snippets.py``).

Why (b) cannot drop a finding: a unit is kept when ``prescreen.Prescreen`` says libcst may
collect a split site in it; its tests are necessary conditions of the libcst rules (see
that module). Before that, a unit's text must spell a word that names a cache or a list
of caches (``KvNames.receiver_words``): every receiver that ``receivers.classify`` accepts
starts from such a name or attribute, or from a local alias that is bound from one inside
the same unit. ``tests/lint/test_prescreen.py`` and
``tests/lint/test_vllm_real.py::test_prefilter_never_drops_a_finding`` check the claim
against full analysis, the latter of every file in real vLLM trees.
"""

from __future__ import annotations

import ast
import posixpath
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from kvguard.lint.cache_params import CacheParams, cache_params
from kvguard.lint.forms import path_context
from kvguard.lint.layouts import (
    LayoutDecl,
    kv_packings_of,
    layout_names_of,
    shapes_of,
    stores_no_value,
    stride_orders_of,
)
from kvguard.lint.names import KvNames, Occurrence
from kvguard.lint.prescreen import Prescreen, unit_context
from kvguard.lint.spans import (
    LAYOUT_METHODS,
    ClassSpan,
    Lines,
    Unit,
    line_offsets,
    source_lines,
)
from kvguard.lint.value_facts import NO_VALUE_FACTS, ValueFacts, file_value_facts

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
    # what its customize_spec makes of the page (layouts.PACKED, ...); None: not defined here
    kv_packing: tuple[str, ...] | None = None
    # for the fixer: methods that take ``self`` (no static/class methods), and the body of
    # ``_split_kv_cache`` if the class defines one (see ``plain_splitter``)
    instance_methods: tuple[str, ...] = ()
    splitter: str | None = None
    # whether its own get_kv_cache_spec stores no V (``head_size_v=0``); None: it defines
    # none (a subclass's definition overrides a base's)
    stores_no_value: bool | None = None


@dataclass(frozen=True)
class FileFacts:
    classes: tuple[ClassFacts, ...]
    units: tuple[Unit, ...] = ()  # the functions (or module rest) that can hold a split
    class_spans: dict[str, ClassSpan] = field(default_factory=dict)  # first class of each name
    # names bound by ``from M import N [as local]``: local -> (M as a path stem, N);
    # a relative M is already joined to this file's directory
    imports: dict[str, tuple[str, str]] = field(default_factory=dict)
    values: ValueFacts = NO_VALUE_FACTS  # type aliases, tuple-returning functions, bindings

    @property
    def candidate(self) -> bool:
        return bool(self.units)


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


def _assigns_state_tuple(cls: ast.ClassDef, lines: list[str]) -> bool:
    """``self.kv_cache = (...)`` somewhere in the class (spelled so: its text is searched)."""
    for stmt in cls.body:
        if "self.kv_cache" in _segment(lines, stmt) and _assigns_state_tuple_in(stmt):
            return True
    return False


def _statements(stmt: ast.stmt) -> Iterator[ast.stmt]:
    """The statement and every statement nested in it (an assignment is one; no need to
    walk expressions)."""
    stack = [stmt]
    while stack:
        current = stack.pop()
        yield current
        if isinstance(current, (*_FUNCS, ast.ClassDef)):
            stack.extend(current.body)
        else:
            for block in _blocks(current):
                stack.extend(block)


def _assigns_state_tuple_in(stmt: ast.stmt) -> bool:
    for node in _statements(stmt):
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
        state_kv_cache="self.kv_cache" in _segment(lines, cls) and _assigns_state_tuple(cls, lines),
        kv_packing=kv_packings_of(methods["customize_spec"])
        if "customize_spec" in methods
        else None,
        instance_methods=tuple(name for name, m in methods.items() if _takes_self(m)),
        splitter=plain_splitter(methods["_split_kv_cache"])
        if "_split_kv_cache" in methods
        else None,
        stores_no_value=stores_no_value(methods["get_kv_cache_spec"])
        if "get_kv_cache_spec" in methods
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


def _blocks(stmt: ast.stmt) -> list[list[ast.stmt]]:
    """The statement blocks nested in a compound statement, in source order."""
    if isinstance(stmt, (ast.If, ast.For, ast.AsyncFor, ast.While)):
        return [stmt.body, stmt.orelse]
    if isinstance(stmt, (ast.With, ast.AsyncWith)):
        return [stmt.body]
    if isinstance(stmt, _TRIES):
        return [stmt.body, *(h.body for h in stmt.handlers), stmt.orelse, stmt.finalbody]
    if isinstance(stmt, ast.Match):
        return [case.body for case in stmt.cases]
    return []


_TRIES = (ast.Try, ast.TryStar) if hasattr(ast, "TryStar") else (ast.Try,)


def _first_line(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> int:
    return min([node.lineno, *(d.lineno for d in node.decorator_list)])


def _defs(
    body: list[ast.stmt],
    owner: ast.ClassDef | None,
    functions: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.ClassDef | None]],
    classes: list[ast.ClassDef],
) -> None:
    """Every function and class outside function bodies, in source order, with its class.

    This is the walk of ``checker._Walker`` (libcst): the two sides name the same units.
    """
    for stmt in body:
        if isinstance(stmt, _FUNCS):
            functions.append((stmt, owner))
        elif isinstance(stmt, ast.ClassDef):
            classes.append(stmt)
            _defs(stmt.body, stmt, functions, classes)
        else:
            for block in _blocks(stmt):
                _defs(block, owner, functions, classes)


def _own_line(lines: list[str], node: ast.stmt) -> bool:
    """Whether the statement starts its line (it does not follow a ``:`` of a header)."""
    line = lines[node.lineno - 1].encode()
    return not line[: node.col_offset].strip()


def _class_span(cls: ast.ClassDef, lines: list[str]) -> ClassSpan:
    anchor = next(
        (
            (_first_line(stmt), stmt.end_lineno or stmt.lineno)
            for stmt in cls.body
            if isinstance(stmt, _FUNCS) and stmt.name in LAYOUT_METHODS
        ),
        None,
    )
    first = cls.body[0]
    decorated = isinstance(first, (*_FUNCS, ast.ClassDef)) and bool(first.decorator_list)
    start = _first_line(first) if decorated else first.lineno  # type: ignore[arg-type]
    # a decorator always starts its line; other statements may follow the header's colon
    header_end = start - 1 if decorated or _own_line(lines, first) else 0
    line = lines[start - 1]
    indent = line[: len(line) - len(line.lstrip())]
    return ClassSpan(
        name=cls.name,
        start=cls.lineno,
        header_end=header_end if header_end >= cls.lineno else 0,
        end=cls.end_lineno or cls.lineno,
        body_indent=indent,
        anchor=anchor,
        nested=_indented(lines, cls),
    )


def _indented(lines: list[str], node: ast.stmt) -> bool:
    """Whether the statement is indented, as the tokenizer counts: a form feed (^L) before
    it (``^L class X:``) resets the count, so what follows the last one is its indentation."""
    return bool(lines[node.lineno - 1][: node.col_offset].rsplit("\f", 1)[-1])


def _merged(spans: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Line ranges in order, overlapping or touching ones merged (``a = 1; b = 2``)."""
    out: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(end, out[-1][1]))
        else:
            out.append((start, end))
    return tuple(out)


def scan(tree: ast.Module, path: str, names: KvNames, text: str) -> FileFacts:
    lines = source_lines(text)
    classes = tuple(class_facts(node, path, lines) for node in _classes(tree.body))
    functions: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.ClassDef | None]] = []
    all_classes: list[ast.ClassDef] = []
    _defs(tree.body, None, functions, all_classes)
    occurrences = names.occurrences(text)
    spells = _receiver_spelling(text, names, occurrences)
    prescreen = Prescreen(names, ascii_source=text.isascii())
    rest = [s for s in tree.body if not isinstance(s, (*_FUNCS, ast.ClassDef))]
    passed = cache_params(
        functions,
        names,
        lambda f: spells(((_first_line(f), f.end_lineno or f.lineno),)),
        rest,
    )
    path_state, path_mla = path_context(path)
    # the class libcst's rules will find for a name: the first of it in this file
    first_of: dict[str, ClassFacts] = {}
    for facts in classes:
        first_of.setdefault(facts.name, facts)
    units = []
    for func, owner in functions:
        spans = ((_first_line(func), func.end_lineno or func.lineno),)
        params = passed.get((owner.name if owner is not None else None, func.name), ())
        if not params and not spells(spans):
            continue
        context = unit_context(
            path_state, path_mla, first_of.get(owner.name) if owner is not None else None
        )
        screen = Prescreen(names.with_caches(params), text.isascii()) if params else prescreen
        if screen.may_split(func, context):
            units.append(
                Unit(
                    spans=spans,
                    class_name=owner.name if owner is not None else None,
                    function=func.name,
                    nested=_indented(lines, func),
                    cache_params=params,
                )
            )
    if rest:
        spans = _merged([(s.lineno, s.end_lineno or s.lineno) for s in rest])
        if spells(spans) and prescreen.may_split(
            ast.Module(body=rest, type_ignores=[]), unit_context(path_state, path_mla, None)
        ):
            units.append(Unit(spans=spans, class_name=None, function=None, nested=False))
    spans_by_name: dict[str, ClassSpan] = {}
    for cls in all_classes:
        if cls.name not in spans_by_name:  # the first of a name, as checker's model keeps it
            spans_by_name[cls.name] = _class_span(cls, lines)
    return FileFacts(
        classes=classes,
        units=tuple(units),
        class_spans=spans_by_name,
        imports=_imports(tree.body, path),
        values=file_value_facts(tree, names, text, (f for f, _ in functions), occurrences),
    )


def file_cache_params(tree: ast.Module, names: KvNames) -> CacheParams:
    """``cache_params`` of a whole module (the path that parses the module with libcst)."""
    functions: list[tuple[ast.FunctionDef | ast.AsyncFunctionDef, ast.ClassDef | None]] = []
    _defs(tree.body, None, functions, [])
    rest = [s for s in tree.body if not isinstance(s, (*_FUNCS, ast.ClassDef))]
    return cache_params(functions, names, rest=rest)


def _receiver_spelling(
    text: str, names: KvNames, occurrences: list[Occurrence] | None
) -> Callable[[Lines], bool]:
    """Whether lines of the text spell a cache or cache-list word (see the module doc)."""
    words = names.receiver_words(text, occurrences)
    if words is None:
        return lambda spans: True
    if not words:
        return lambda spans: False
    offsets = line_offsets(text)

    def spells(spans: Lines) -> bool:
        for start, end in spans:
            first = bisect_left(words, offsets[start - 1])
            if first < len(words) and words[first] < offsets[end]:
                return True
        return False

    return spells


# Statements that hold no nested statements and are no ``from`` import.
_SIMPLE = frozenset(
    {
        ast.Expr,
        ast.Assign,
        ast.AnnAssign,
        ast.AugAssign,
        ast.Return,
        ast.Raise,
        ast.Assert,
        ast.Pass,
        ast.Break,
        ast.Continue,
        ast.Delete,
        ast.Import,
        ast.Global,
        ast.Nonlocal,
    }
)


def _imports(body: list[ast.stmt], path: str) -> dict[str, tuple[str, str]]:
    """``from M import N`` anywhere in the file's statements (vLLM imports impl classes
    inside ``get_impl_cls``), as local name -> (module path stem, imported name)."""
    out: dict[str, tuple[str, str]] = {}
    here = posixpath.dirname(path.replace("\\", "/"))
    stack = list(reversed(body))
    while stack:
        stmt = stack.pop()
        kind = type(stmt)
        if kind in _SIMPLE:
            continue
        if kind is ast.ImportFrom:
            module = (stmt.module or "").replace(".", "/")
            if stmt.level:
                base = here
                for _ in range(stmt.level - 1):
                    base = posixpath.dirname(base)
                stem = posixpath.normpath(posixpath.join(base, module)) if module else base
            else:
                stem = module
            for alias in stmt.names:
                if alias.name != "*":
                    out.setdefault(alias.asname or alias.name, (stem, alias.name))
        elif isinstance(stmt, (*_FUNCS, ast.ClassDef)):
            stack.extend(reversed(stmt.body))
        else:
            for block in _blocks(stmt):
                stack.extend(reversed(block))
    return out
