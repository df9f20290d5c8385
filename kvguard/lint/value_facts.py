"""The kinds of value the rules tell apart, and the project-level facts about them.

``values`` (libcst) reads the evidence inside one function. Some of it lives elsewhere in
the project, so the stdlib ``ast`` pass collects it per file (``FileFacts.values``) and the
project index merges it (``ProjectIndex.values``):

- type aliases (``KVCache = tuple[torch.Tensor, torch.Tensor]``), by name;
- functions whose return annotation is a sequence type (``-> tuple[Tensor, Tensor]``),
  by name: calling one gives a pair;
- how the runner binds caches: every value stored under a cache-list name
  (``kv_caches[name] = (k, v)``, ``kv_caches.append((k, v))``). When each one of them in
  the whole project is a tuple/list display, an element of that container is a pair.

A name defined with different kinds in different places says nothing (it is dropped).
This module imports no libcst: the scan workers run it before libcst is loaded.
"""

from __future__ import annotations

import ast
import enum
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property

from kvguard.lint.names import KvNames, Occurrence
from kvguard.lint.prescreen import walk


class Kind(enum.Enum):
    CACHE = "tensor with a K/V axis"
    PAIR = "tuple/list of tensors"
    LIST = "per-layer container"
    STATE = "state tuple"
    LATENT = "latent or single-tensor cache"
    LOCAL = "local allocation"


# Spellings of Python sequence types, bare or from ``typing``/``collections.abc``.
SEQUENCE_TYPES = frozenset({"tuple", "list", "Tuple", "List", "Sequence", "MutableSequence"})
# Spellings of a tensor type (torch's, numpy's, jax's).
TENSOR_TYPES = frozenset({"Tensor", "ndarray", "Array"})


@dataclass(frozen=True)
class ValueFacts:
    """Per file (from the ast), then merged over the project."""

    # alias name -> the name of its Kind (a plain string, so that the cache stores it as JSON)
    type_aliases: dict[str, str] = field(default_factory=dict)
    # function name -> whether its return annotation is a sequence type
    returns: dict[str, bool] = field(default_factory=dict)
    # cache-list name -> whether every value stored in it is a tuple/list display
    stored_pairs: dict[str, bool] = field(default_factory=dict)
    # cache-named attribute -> whether every value bound to it is a list (one per engine)
    bound_lists: dict[str, bool] = field(default_factory=dict)
    # parameters that a caller passes a sequence-annotated value to, as "function#slot"
    # (slot: the position among the arguments after ``self``, or the keyword)
    passed_pairs: frozenset[str] = frozenset()

    @cached_property
    def alias_kinds(self) -> dict[str, Kind]:
        return {name: Kind[kind] for name, kind in self.type_aliases.items()}

    @cached_property
    def pair_returning(self) -> frozenset[str]:
        return frozenset(name for name, pair in self.returns.items() if pair)

    @cached_property
    def pair_lists(self) -> frozenset[str]:
        return frozenset(name for name, pair in self.stored_pairs.items() if pair)

    @cached_property
    def engine_lists(self) -> frozenset[str]:
        return frozenset(name for name, listed in self.bound_lists.items() if listed)

    @property
    def empty(self) -> bool:
        return not (
            self.type_aliases
            or self.returns
            or self.stored_pairs
            or self.bound_lists
            or self.passed_pairs
        )


NO_VALUE_FACTS = ValueFacts()


def merge(per_file: Iterable[ValueFacts]) -> ValueFacts:
    """One project's facts: a name whose files disagree is dropped."""
    aliases: dict[str, str | None] = {}
    returns: dict[str, bool] = {}
    stored: dict[str, bool] = {}
    bound: dict[str, bool] = {}
    passed: set[str] = set()
    for facts in per_file:
        passed |= facts.passed_pairs
        for name, kind in facts.type_aliases.items():
            aliases[name] = kind if aliases.get(name, kind) == kind else None
        for name, pair in facts.returns.items():
            returns[name] = returns.get(name, True) and pair
        for name, pair in facts.stored_pairs.items():
            stored[name] = stored.get(name, True) and pair
        for name, listed in facts.bound_lists.items():
            bound[name] = bound.get(name, True) and listed
    kinds = {n: k for n, k in aliases.items() if k is not None}
    return ValueFacts(kinds, returns, stored, bound, frozenset(passed))


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def annotation_kind(node: ast.expr | None) -> Kind | None:
    """PAIR for a sequence type, CACHE for a tensor type (``values.type_kind``'s rules)."""
    if node is None:
        return None
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        parts = [node.left, node.right]
        kinds = {annotation_kind(p) for p in parts if _dotted(p) != "None"}
        return kinds.pop() if len(kinds) == 1 else None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return annotation_kind(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return None
    head = node.value if isinstance(node, ast.Subscript) else node
    tail = _dotted(head).rsplit(".", 1)[-1]
    if tail in SEQUENCE_TYPES:
        return Kind.PAIR
    if tail in TENSOR_TYPES:
        return Kind.CACHE
    if tail == "Optional" and isinstance(node, ast.Subscript):
        return annotation_kind(node.slice)
    return None


def _is_pair_display(value: ast.expr) -> bool:
    if isinstance(value, (ast.Tuple, ast.List)):
        return len(value.elts) >= 2
    return isinstance(value, ast.Call) and _dotted(value.func) in ("tuple", "list")


def cache_list_name(target: ast.expr, names: KvNames) -> str | None:
    """The cache-list name ``target`` spells (``kv_caches``, ``self.kv_caches``), or None."""
    tail = target.attr if isinstance(target, ast.Attribute) else getattr(target, "id", None)
    return tail if tail is not None and names.is_cache_list(tail) else None


# What follows a container's name where it is filled: ``[name] = ...``, ``.append(``.
_BINDING = re.compile(r"\s*=(?!=)")
_ANNOTATED = re.compile(
    r"\s*:\s*[\"']?(?:\w+\.)*(?:Optional\[|Union\[)?(?:\w+\.)*"
    r"(?:tuple|Tuple|list|List|Sequence|MutableSequence)\b"
)
_STORE = re.compile(r"\s*(?:\[[^\]\n]*\]\s*=(?!=)|\.\s*append\s*\()")


def file_value_facts(
    tree: ast.Module,
    names: KvNames,
    text: str,
    functions: Iterable[ast.FunctionDef | ast.AsyncFunctionDef],
    occurrences: list[Occurrence] | None,
) -> ValueFacts:
    """The file's type aliases, annotated returns (of the functions outside function
    bodies) and container stores. Only a file whose text stores into a cache-list name
    is walked for stores; the rest costs a look at its top-level statements."""
    aliases: dict[str, str] = {}
    for stmt in tree.body:
        if (
            isinstance(stmt, ast.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0], ast.Name)
            and isinstance(stmt.value, ast.Subscript)
        ):
            kind = annotation_kind(stmt.value)
            if kind is not None:
                aliases[stmt.targets[0].id] = kind.name
        elif (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and _dotted(stmt.annotation).endswith("TypeAlias")
        ):
            kind = annotation_kind(stmt.value)
            if kind is not None:
                aliases[stmt.target.id] = kind.name
    if occurrences is None:  # some pattern has no literal piece: look at every word
        occurrences = [
            (m.start(), m.end(), m.group(0), names.is_cache_list(m.group(0)))
            for m in re.finditer(r"\w+", text)
            if names.is_cache(m.group(0)) or names.is_cache_list(m.group(0))
        ]
    cache_words = [(at, end) for at, end, _, listed in occurrences if not listed]
    # a cache-named parameter annotated as a sequence somewhere in the file: callers to follow
    callers = any(_ANNOTATED.match(text, end) for _, end in cache_words)
    returns: dict[str, bool] = {}
    passed: set[str] = set()
    for func in functions:
        if func.returns is not None:
            pair = annotation_kind(func.returns) is Kind.PAIR
            returns[func.name] = returns.get(func.name, True) and pair
        if callers:
            passed |= _passes_pairs(func, names)
    stored: dict[str, bool] = {}
    offsets = [at for at, end, _, listed in occurrences if listed and _STORE.match(text, end)]
    if offsets:
        lines = {text.count("\n", 0, at) + 1 for at in offsets}
        for stmt in _statements_at(tree.body, lines):
            for node in _nested(stmt):
                _store(node, names, stored)
    bound: dict[str, bool] = {}
    offsets = [
        at for at, end in cache_words if text[at - 1 : at] == "." and _BINDING.match(text, end)
    ]
    if offsets:
        lines = {text.count("\n", 0, at) + 1 for at in offsets}
        for stmt in _statements_at(tree.body, lines):
            for node in _nested(stmt):
                _binding(node, names, bound)
    return ValueFacts(aliases, returns, stored, bound, frozenset(passed))


def _passes_pairs(func: ast.FunctionDef | ast.AsyncFunctionDef, names: KvNames) -> set[str]:
    """``def f(self, kv_cache: tuple[Tensor, ...]): self.g(meta, kv_cache)``: g's first
    argument after ``self`` is a pair wherever f calls it ("g#1"; by keyword "g#kv_cache").
    Only cache-named parameters are followed."""
    arguments = [*func.args.posonlyargs, *func.args.args, *func.args.kwonlyargs]
    pairs = {
        a.arg
        for a in arguments
        if a.annotation is not None
        and names.is_cache(a.arg)
        and annotation_kind(a.annotation) is Kind.PAIR
    }
    if not pairs:
        return set()
    out = set()
    for node in walk(func):
        if not isinstance(node, ast.Call):
            continue
        callee = (
            node.func.attr
            if isinstance(node.func, ast.Attribute)
            else getattr(node.func, "id", None)
        )
        if callee is None:
            continue
        for position, arg in enumerate(node.args):
            if isinstance(arg, ast.Name) and arg.id in pairs:
                out.add(f"{callee}#{position}")
        for keyword in node.keywords:
            if isinstance(keyword.value, ast.Name) and keyword.value.id in pairs:
                out.add(f"{callee}#{keyword.arg}")
    return out


def _binding(node: ast.AST, names: KvNames, bound: dict[str, bool]) -> None:
    """``layer.kv_cache = [kv_cache]``, ``self.kv_cache = [torch.tensor([]) for _ in ...]``:
    a list per virtual engine (or any other binding, which says it is not one)."""
    if not isinstance(node, ast.Assign):
        return
    listed = isinstance(node.value, (ast.List, ast.ListComp))
    for target in node.targets:
        if isinstance(target, ast.Attribute) and names.is_cache(target.attr):
            bound[target.attr] = bound.get(target.attr, True) and listed


def _statements_at(body: list[ast.stmt], lines: set[int]) -> Iterator[ast.stmt]:
    """The statements whose lines hold one of ``lines``: functions and other statements
    whole, classes by the statements of their body."""
    for stmt in body:
        end = stmt.end_lineno or stmt.lineno
        if any(stmt.lineno <= line <= end for line in lines):
            if isinstance(stmt, ast.ClassDef):
                yield from _statements_at(stmt.body, lines)
            else:
                yield stmt


def _nested(stmt: ast.stmt) -> Iterator[ast.stmt]:
    """The statement and every statement nested in it (no expressions are walked)."""
    stack: list[ast.AST] = [stmt]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.stmt):
            yield node
        for name in ("body", "orelse", "finalbody", "handlers", "cases"):
            block = getattr(node, name, None)
            if type(block) is list:
                stack.extend(block)


def _store(node: ast.stmt, names: KvNames, stored: dict[str, bool]) -> None:
    if isinstance(node, ast.Expr):
        node = node.value  # type: ignore[assignment]
    if isinstance(node, ast.Assign):
        for target in node.targets:
            if isinstance(target, ast.Subscript):
                name = cache_list_name(target.value, names)
                if name is not None:
                    stored[name] = stored.get(name, True) and _is_pair_display(node.value)
    elif (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "append"
        and len(node.args) == 1
    ):
        name = cache_list_name(node.func.value, names)
        if name is not None:
            stored[name] = stored.get(name, True) and _is_pair_display(node.args[0])
