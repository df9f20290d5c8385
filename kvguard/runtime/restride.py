"""Solving, once, for a re-strided `kv_cache` on which an impl's own split yields the views
fix mode wants: the recorded chain of view ops (`discovery.Program`) is affine in the input's
storage offset and strides, so the map is probed on meta tensors and solved exactly.
"""

from __future__ import annotations

from fractions import Fraction

import torch

from .discovery import Program
from .footprint import ViewGeometry

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
