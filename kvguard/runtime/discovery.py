"""Discovery: watch an impl split `kv_cache` on its first call, through its own code path.

A `TorchFunctionMode` follows every tensor derived from `kv_cache` by view ops (unbind,
indexing, slicing, permute, dtype views, as_strided, ...). The first op that hands such a
tensor to anything that is not a view op (a custom kernel op, an indexing write, `data_ptr()`
for a Triton launcher) is the kernel boundary: the tensors it receives are the views the
kernels actually see. The guard judges them there, before that op runs, and may hand the op
re-strided tensors instead. The chain of view ops is kept as a replayable program so that fix
mode can solve, once, for a re-strided `kv_cache` on which the impl's own split yields the
corrected views; steady state then needs no mode at all.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from .footprint import ViewGeometry

# Ops that return a view, or (reshape, contiguous, flatten) a view when they can; the result
# is followed only if it really shares the cache's storage.
VIEW_OPS = frozenset(
    [
        "view",
        "reshape",
        "unbind",
        "select",
        "narrow",
        "chunk",
        "split",
        "tensor_split",
        "split_with_sizes",
        "permute",
        "transpose",
        "t",
        "unsqueeze",
        "squeeze",
        "flatten",
        "unflatten",
        "movedim",
        "moveaxis",
        "swapaxes",
        "swapdims",
        "as_strided",
        "expand",
        "expand_as",
        "view_as",
        "unfold",
        "diagonal",
        "detach",
        "alias",
        "contiguous",
        "view_as_real",
        "view_as_complex",
        "__getitem__",
        "__get__",
    ]
)
# Metadata queries: they neither create views nor touch the bytes.
NEUTRAL_OPS = frozenset(
    [
        "size",
        "stride",
        "dim",
        "ndimension",
        "numel",
        "nelement",
        "element_size",
        "storage_offset",
        "is_contiguous",
        "__len__",
        "untyped_storage",
        "get_device",
        "is_floating_point",
        "is_complex",
        "__hash__",
        "__eq__",
        "__format__",
        "__repr__",
        "__bool__",
        "__iter__",
        "type",
    ]
)


@dataclass(frozen=True)
class _Ref:
    node: int


def _flatten(obj: Any, out: list) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _flatten(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flatten(o, out)


def _basic_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(
        i is None or i is Ellipsis or (isinstance(i, (int, slice)) and not isinstance(i, bool))
        for i in items
    )


def _name(func: Any) -> str:
    return getattr(func, "__name__", "") or str(func)


@dataclass
class Program:
    """The view ops from `kv_cache` to each kernel-facing view, replayable on other tensors."""

    steps: list[tuple[Any, Any, Any, list[int]]] = field(default_factory=list)

    def replay(self, root: torch.Tensor) -> dict[int, torch.Tensor]:
        env: dict[int, torch.Tensor] = {0: root}

        def sub(o: Any) -> Any:
            if isinstance(o, _Ref):
                return env[o.node]
            if isinstance(o, tuple):
                return tuple(sub(x) for x in o)
            if isinstance(o, list):
                return [sub(x) for x in o]
            if isinstance(o, dict):
                return {k: sub(v) for k, v in o.items()}
            return o

        for func, args, kwargs, outs in self.steps:
            result = func(*sub(args), **sub(kwargs))
            flat: list[torch.Tensor] = []
            _flatten(result, flat)
            for node, t in zip(outs, flat, strict=False):
                if node >= 0:
                    env[node] = t
        return env


class SplitRecorder(TorchFunctionMode):
    """Follows views of one `kv_cache` and calls `on_boundary` before a kernel sees them.

    `on_boundary(tensors)` gets the kernel-facing views seen so far (in creation order) and
    returns a dict {id(view): replacement} or None; it may raise to stop the call.
    """

    def __init__(
        self,
        kv_cache: torch.Tensor,
        on_boundary: Callable[[list[torch.Tensor]], Any],
        ignore: tuple = (),
    ) -> None:
        super().__init__()
        self.ignore = ignore  # code objects whose metadata calls are the guard's own
        self.storage_ptr = kv_cache.untyped_storage().data_ptr()
        self.nodes: list[torch.Tensor] = [kv_cache]  # strong refs: ids stay unique
        self.index: dict[int, int] = {id(kv_cache): 0}
        self.parent: list[int] = [-1]
        self.children: set[int] = set()
        self.consumed: list[int] = []  # the judged views: split leaves at kernel boundaries
        self.program = Program()
        self.on_boundary = on_boundary
        self.subst: dict[int, torch.Tensor] = {}

    def _template(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and id(obj) in self.index:
            return _Ref(self.index[id(obj)])
        if isinstance(obj, tuple):
            return tuple(self._template(x) for x in obj)
        if isinstance(obj, list):
            return [self._template(x) for x in obj]
        if isinstance(obj, dict):
            return {k: self._template(v) for k, v in obj.items()}
        return obj

    def _substitute(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return self.subst.get(id(obj), obj)
        if isinstance(obj, tuple):
            return tuple(self._substitute(x) for x in obj)
        if isinstance(obj, list):
            return [self._substitute(x) for x in obj]
        if isinstance(obj, dict):
            return {k: self._substitute(v) for k, v in obj.items()}
        return obj

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat: list[torch.Tensor] = []
        _flatten((args, kwargs), flat)
        tracked = [t for t in flat if id(t) in self.index]
        if not tracked:
            return func(*args, **kwargs)
        name = _name(func)
        if name in NEUTRAL_OPS:
            return func(*args, **kwargs)
        if name == "data_ptr" and sys._getframe(1).f_code in self.ignore:
            return func(*args, **kwargs)
        is_view = name in VIEW_OPS and (name != "__getitem__" or _basic_index(args[1]))
        if is_view and not any(id(t) in self.subst for t in tracked):
            result = func(*args, **kwargs)
            self._follow(func, args, kwargs, tracked, result)
            return result
        # Kernel boundary: judge the views the split produced (the leaves of the view tree,
        # so K and V are judged together even when a kernel touches K first), before it runs.
        new = [
            i
            for i in range(len(self.nodes))
            if i not in self.children and i not in self.consumed and not self._below_judged(i)
        ]
        if new:
            self.consumed.extend(new)
            self.consumed.sort()
            subst = self.on_boundary([self.nodes[i] for i in self.consumed])
            if subst:
                self.subst.update(subst)
        if self.subst:
            args, kwargs = self._substitute(args), self._substitute(kwargs)
        return func(*args, **kwargs)

    def _below_judged(self, i: int) -> bool:
        i = self.parent[i]
        while i >= 0:
            if i in self.consumed:
                return True
            i = self.parent[i]
        return False

    def _follow(self, func, args, kwargs, tracked, result) -> None:
        flat: list[torch.Tensor] = []
        _flatten(result, flat)
        outs = []
        for t in flat:
            shares = (
                id(t) not in self.index
                and t.untyped_storage().data_ptr() == self.storage_ptr
                and t.numel() > 0
            )
            if shares:
                self.index[id(t)] = len(self.nodes)
                outs.append(len(self.nodes))
                self.nodes.append(t)
                self.parent.append(self.index[id(tracked[0])])
            else:
                outs.append(-1)
        if any(o >= 0 for o in outs):
            self.children.update(self.index[id(t)] for t in tracked)
            self.program.steps.append((func, self._template(args), self._template(kwargs), outs))


# Solving for a re-strided kv_cache ---------------------------------------------------------
_META_BYTES = 1 << 60


def _params(t: torch.Tensor) -> list[int]:
    return [t.storage_offset(), *t.stride()]


def _run(program: Program, nodes: list[int], root: ViewGeometry, params: list[int], dtype):
    base = torch.empty(_META_BYTES // root.itemsize, dtype=dtype, device="meta")
    probe = base.as_strided(root.shape, params[1:], params[0])
    env = program.replay(probe)
    return [v for n in nodes for v in _params(env[n])], [tuple(env[n].shape) for n in nodes]


def solve_restride(
    program: Program,
    nodes: list[int],
    root: ViewGeometry,
    dtype: torch.dtype,
    targets: list[ViewGeometry],
) -> tuple[int, tuple[int, ...]] | None:
    """(storage_offset, stride) for kv_cache such that `program` yields `targets`, or None.

    Every view op is affine in the input's offset and strides, so the map is probed column by
    column on meta tensors and the integer system solved exactly; the answer is verified by
    replaying the program. Ops with stride preconditions (`view` merging dims) make a column
    unavailable; when no exact answer exists the guard falls back to per-call interception.
    """
    p0 = [root.offset, *root.stride]
    try:
        y0, shapes = _run(program, nodes, root, p0, dtype)
    except Exception:
        return None
    if shapes != [t.shape for t in targets]:
        return None
    want = [v for t in targets for v in (t.offset, *t.stride)]
    columns: list[tuple[int, list[int]]] = []
    for i in range(len(p0)):
        delta = 1 << (20 + i)
        try:
            p1 = list(p0)
            p1[i] += delta
            y1, _ = _run(program, nodes, root, p1, dtype)
            p2 = list(p0)
            p2[i] += 2 * delta
            y2, _ = _run(program, nodes, root, p2, dtype)
        except Exception:
            continue
        col = [(b - a) // delta for a, b in zip(y0, y1, strict=True)]
        if any((b - a) != c * delta for a, b, c in zip(y0, y1, col, strict=True)):
            continue
        if any(b - a != a - c for a, b, c in zip(y1, y2, y0, strict=True)):  # not affine
            continue
        columns.append((i, col))
    x = _solve([c for _, c in columns], [w - y for w, y in zip(want, y0, strict=True)])
    if x is None:
        return None
    p = list(p0)
    for (i, _), xi in zip(columns, x, strict=True):
        p[i] += xi
    if any(v < 0 for v in p):
        return None
    try:
        y, _ = _run(program, nodes, root, p, dtype)
    except Exception:
        return None
    return (p[0], tuple(p[1:])) if y == want else None


def _solve(columns: list[list[int]], rhs: list[int]) -> list[int] | None:
    """Exact solution of sum_j x_j * columns[j] = rhs (free variables 0), integers only."""
    n = len(columns)
    rows = [
        [Fraction(columns[j][r]) for j in range(n)] + [Fraction(rhs[r])] for r in range(len(rhs))
    ]
    pivots: list[int] = []
    r = 0
    for c in range(n):
        pivot = next((i for i in range(r, len(rows)) if rows[i][c] != 0), None)
        if pivot is None:
            continue
        rows[r], rows[pivot] = rows[pivot], rows[r]
        rows[r] = [v / rows[r][c] for v in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][c] != 0:
                f = rows[i][c]
                rows[i] = [a - f * b for a, b in zip(rows[i], rows[r], strict=True)]
        pivots.append(c)
        r += 1
    if any(all(v == 0 for v in row[:-1]) and row[-1] != 0 for row in rows):
        return None
    x = [Fraction(0)] * n
    for i, c in enumerate(pivots):
        x[c] = rows[i][-1]
    if any(v.denominator != 1 for v in x):
        return None
    return [int(v) for v in x]
