"""Run original and fixed splits on real CPU tensors and compare the views they return.

Two ways, both with torch and without trusting kvguard's own view arithmetic:

- ``compare_modules``: import the original and the fixed module and call every method
  of the impl classes with the same random cache (the test corpus is written for this).
- ``compare_sites``: for files that cannot be imported (vLLM's), pair each original split
  expression with the expression that replaced it in the fixed file (matched per method,
  in order) and evaluate both in isolation; ``self`` is a namespace holding the fixed
  class's ``_split_kv_cache`` (compiled from the fixed file) and the shape's named sizes.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import torch

PRIMES = (3, 5, 7, 11, 13, 17, 19, 23)


def signature(value: object) -> object:
    """What makes two views the same view: storage, offset, sizes, strides."""
    if isinstance(value, torch.Tensor):
        return (
            value.untyped_storage().data_ptr(),
            value.storage_offset(),
            tuple(value.shape),
            value.stride(),
        )
    if isinstance(value, (tuple, list)):
        return tuple(signature(v) for v in value)
    if isinstance(value, dict):
        return tuple((k, signature(v)) for k, v in value.items())
    if isinstance(value, (int, float)):
        return value
    return ("not a tensor", type(value).__name__)


def load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def compare_modules(original: Path, fixed: Path, shape: tuple[int, ...]) -> int:
    """Call every ``views_*`` method of every ``*Impl`` class in both; return the count."""
    a = load(original, f"kvguard_orig_{original.stem}")
    b = load(fixed, f"kvguard_fixed_{fixed.stem}")
    calls = 0
    for name in dir(a):
        if not name.endswith("Impl"):
            continue
        old, new = getattr(a, name)(), getattr(b, name)()
        for method in dir(old):
            if not method.startswith("views_"):
                continue
            for cache in caches(shape):
                args = {"layer": None, "query": None, "kv_cache": cache, "metadata": None}
                got_old = getattr(old, method)(**args)
                got_new = getattr(new, method)(**args)
                assert signature(got_old) == signature(got_new), (name, method)
                calls += 1
    return calls


def caches(shape: tuple[int, ...]) -> list[torch.Tensor]:
    """A contiguous cache and one whose physical dim order is reversed (same logical shape)."""
    contiguous = torch.randn(shape)
    reversed_order = torch.randn(tuple(reversed(shape))).permute(*reversed(range(len(shape))))
    return [contiguous, reversed_order]


# -- isolated comparison for files that cannot be imported -------------------------------


@dataclass
class SiteCheck:
    cls: str
    function: str
    original: str
    replacement: str
    ok: bool
    detail: str = ""


@dataclass
class Report:
    checked: list[SiteCheck] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def shape_of(declared: str | None, symbols: dict[str, int], fallback: tuple[int, ...]):  # type: ignore[no-untyped-def]
    if declared is None:
        return fallback
    tree = ast.parse(declared, mode="eval").body
    names = sorted(
        {
            n.id if isinstance(n, ast.Name) else n.attr
            for n in ast.walk(tree)
            if isinstance(n, (ast.Name, ast.Attribute))
        }
    )
    for name, prime in zip(names, PRIMES, strict=False):
        symbols.setdefault(name, prime)

    class _Tail(ast.NodeTransformer):
        def visit_Attribute(self, node: ast.Attribute) -> ast.Name:
            return ast.Name(node.attr, ast.Load())

    expr = ast.Expression(_Tail().visit(tree))
    return tuple(eval(compile(ast.fix_missing_locations(expr), "<shape>", "eval"), {}, symbols))


def _functions(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _splitter(
    tree: ast.Module, cls_name: str, bases: list[ast.Module], depth: int = 0
) -> types.FunctionType | None:
    """The ``_split_kv_cache`` the class would call: its own, else a base's (by name)."""
    for module in (tree, *bases):
        for node in ast.walk(module):
            if not (isinstance(node, ast.ClassDef) and node.name == cls_name):
                continue
            func = _functions(node).get("_split_kv_cache")
            if func is not None:
                code = ast.Module([func], type_ignores=[])
                scope: dict[str, object] = {"torch": torch}
                exec(compile(ast.fix_missing_locations(code), "<splitter>", "exec"), scope)
                return scope["_split_kv_cache"]  # type: ignore[return-value]
            for base in node.bases:
                name = base.id if isinstance(base, ast.Name) else getattr(base, "attr", None)
                if name and depth < 8:
                    found = _splitter(tree, name, bases, depth + 1)
                    if found is not None:
                        return found
            return None
    return None


def _calls(func: ast.AST) -> list[ast.expr]:
    """``self._split_kv_cache(...)`` calls (with an enclosing ``[i]``), in source order."""
    parents: dict[int, ast.AST] = {}
    for parent in ast.walk(func):
        for child in ast.iter_child_nodes(parent):
            parents[id(child)] = parent
    out = []
    for node in ast.walk(func):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "_split_kv_cache"
        ):
            parent = parents.get(id(node))
            out.append(parent if isinstance(parent, ast.Subscript) else node)
    return sorted(out, key=lambda n: (n.lineno, n.col_offset))


def _evaluate(expr: str, env: dict[str, object]) -> object:
    return eval(expr, {"torch": torch}, dict(env))


def compare_sites(
    original: str,
    fixed: str,
    sites: list[tuple[str, str, str, tuple[str, ...]]],
    declared: dict[str, str | None],
    base_trees: list[ast.Module] | None = None,
) -> Report:
    """``sites``: (class, function, split expression, targets) of the original, in order.

    The i-th routed site of a method meets the i-th splitter call of the same method in
    the fixed file; an ``a, b = self._split_kv_cache(x)`` call stands for two adjacent
    single-view sites, and each is compared with the piece its target receives.
    """
    report = Report()
    fixed_tree = ast.parse(fixed)
    classes = {n.name: n for n in ast.walk(fixed_tree) if isinstance(n, ast.ClassDef)}
    by_method: dict[tuple[str, str], list[tuple[str, tuple[str, ...]]]] = {}
    for cls, function, expr, targets in sites:
        by_method.setdefault((cls, function), []).append((expr, targets))
    for (cls, function), items in by_method.items():
        splitter = _splitter(fixed_tree, cls, base_trees or [])
        if splitter is None or cls not in classes:
            report.skipped.append(f"{cls}.{function}: no _split_kv_cache in the fixed class")
            continue
        calls = _calls(_functions(classes[cls])[function])
        symbols: dict[str, int] = {}
        shape = shape_of(declared.get(cls), symbols, None)
        position = 0
        pending = list(items)
        while pending:
            expr, targets = pending.pop(0)
            if position >= len(calls):
                report.skipped.append(f"{cls}.{function}: {expr} has no replacement")
                break
            call = calls[position]
            replacement = ast.unparse(call)
            receiver = ast.unparse(
                (call.value if isinstance(call, ast.Subscript) else call).args[0]
            )  # type: ignore[union-attr]
            statement = _assign_of(_functions(classes[cls])[function], call)
            pieces: list[tuple[str, str]] = []
            if (
                statement is not None
                and isinstance(statement.targets[0], ast.Tuple)
                and len(targets) == 1
                and pending
                and len(pending[0][1]) == 1
            ):
                names = [ast.unparse(e) for e in statement.targets[0].elts]
                partner, partner_targets = pending.pop(0)
                pieces = [
                    (expr, f"{replacement}[{names.index(targets[0])}]"),
                    (partner, f"{replacement}[{names.index(partner_targets[0])}]"),
                ]
            else:
                pieces = [(expr, replacement)]
            position += 1
            for old_expr, new_expr in pieces:
                report.checked.append(
                    _check_one(
                        cls, function, old_expr, new_expr, receiver, shape, symbols, splitter
                    )
                )
    return report


def _assign_of(func: ast.AST, call: ast.expr) -> ast.Assign | None:
    for node in ast.walk(func):
        if isinstance(node, ast.Assign) and node.value is call:
            return node
    return None


# Without a declared shape: K/V-first, blocks-first and packed caches (head size 11);
# a site is compared on every one on which the original split runs without error.
FALLBACK_SHAPES = ((2, 3, 5, 7, 11), (3, 2, 5, 7, 11), (3, 5, 7, 22), (3, 7, 5, 22))


def _check_one(cls, function, old_expr, new_expr, receiver, shape, symbols, splitter) -> SiteCheck:  # type: ignore[no-untyped-def]
    root = ast.parse(receiver, mode="eval").body
    while isinstance(root, (ast.Call, ast.Subscript, ast.Attribute)) and not (
        isinstance(root, ast.Attribute) and isinstance(root.value, ast.Name)
    ):
        root = root.func.value if isinstance(root, ast.Call) else root.value  # type: ignore[union-attr]
    shapes = [shape] if shape is not None else list(FALLBACK_SHAPES)
    if shape is None:
        symbols = {"head_size": 11, "head_dim": 11, **symbols}
    compared = 0
    for candidate in shapes:
        for cache in caches(candidate):
            me = types.SimpleNamespace(**symbols)
            env: dict[str, object] = {"self": me}
            if isinstance(root, ast.Name):
                env[root.id] = cache
            elif isinstance(root, ast.Attribute):
                setattr(me, root.attr, cache)
            me._split_kv_cache = types.MethodType(splitter, me)
            try:
                old = _evaluate(old_expr, env)
            except Exception as exc:  # the original does not run on this shape
                if shape is not None:
                    return SiteCheck(cls, function, old_expr, new_expr, False, repr(exc))
                continue
            try:
                new = _evaluate(new_expr, env)
            except Exception as exc:  # reported as a failed check, not swallowed
                return SiteCheck(cls, function, old_expr, new_expr, False, repr(exc))
            if signature(old) != signature(new):
                return SiteCheck(
                    cls, function, old_expr, new_expr, False, f"views differ {candidate}"
                )
            compared += 1
    if not compared:
        return SiteCheck(cls, function, old_expr, new_expr, False, "runs on no shape")
    return SiteCheck(cls, function, old_expr, new_expr, True)
