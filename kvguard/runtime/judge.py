"""The invariants, stated once and checked on geometries alone (no torch, no device, no bytes):

1. disjointness within a layer: no block id of a view aliases another (a block axis of stride
   0, blocks closer than one block's bytes), and no two views of the layer share a byte;
2. containment: every byte that block b of a view addresses lies in page b of the page map;
3. disjointness between page maps: maps declared for overlaid layers give page b's bytes to
   no block id c != b;
4. exact agreement: a layer that reads another layer's cache (KV sharing) addresses the very
   same elements in each role (K as K, V as V), paired by the kernel's names for them.

Each check returns a `Finding` or None; the guard turns findings into `Violation`s.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from .footprint import (
    ViewGeometry,
    blocks_share_bytes,
    same_elements,
    self_overlapping,
    split_planes,
)
from .pagemap import PageMap, foreign_overlaps
from .records import Collision, ViewRecord

MAX_COLLISIONS = 6


@dataclass(frozen=True)
class Finding:
    invariant: str
    against: str  # "itself", "layer" or "declared"
    other_name: str | None = None
    collisions: tuple[Collision, ...] = ()
    fix: tuple[ViewGeometry, ...] | None = None
    unfixable: str | None = None
    detail: str | None = None


def collision(role: str, g: ViewGeometry, block: int, pm: PageMap | None, note=None) -> Collision:
    lo, hi = g.block_span(block)
    owner = pm.owner_of(lo) if pm else None
    page = pm.page_span(block) if pm and (pm.num_blocks is None or block < pm.num_blocks) else None
    return Collision(role, block, lo, hi, owner, page, note)


# 1. Disjointness within a layer ----------------------------------------------------------
def own_overlaps(views: Sequence[ViewRecord]) -> Finding | None:
    """A view whose block ids alias each other, or two views of the layer sharing a byte."""
    found: list[Collision] = []
    reasons: list[str] = []
    for v in views:
        g = v.geometry
        if g.num_blocks > 1 and self_overlapping(g):
            if g.block_stride == 0:
                why = (
                    f"{v.role} has block stride 0 (an expanded block axis): every block id "
                    "addresses block 0's bytes"
                )
            else:
                why = (
                    f"{v.role}'s blocks are {g.block_stride} bytes apart but one block spans "
                    f"{g.extent} bytes: consecutive block ids share bytes"
                )
            reasons.append(why)
            found += [collision(v.role, g, 0, None, why), collision(v.role, g, 1, None, why)]
    for a, b in itertools.combinations(views, 2):
        ga, gb = a.geometry, b.geometry
        if ga.block_stride == gb.block_stride and blocks_share_bytes(ga, gb):
            reasons.append(f"{a.role} and {b.role} share bytes of one block")
            found += [
                collision(a.role, ga, 0, None, f"shares bytes with {b.role}"),
                collision(b.role, gb, 0, None, f"shares bytes with {a.role}"),
            ]
    if not found:
        return None
    return Finding(
        "disjointness",
        "itself",
        collisions=tuple(found[:MAX_COLLISIONS]),
        unfixable="; ".join(reasons) + "; the layer's own split must change",
    )


# 2. Containment ------------------------------------------------------------------------------
def containment(views: Sequence[ViewRecord], pm: PageMap) -> list[Collision]:
    """First blocks of each view whose bytes leave their own page."""
    found = []
    for v in views:
        for piece in split_planes(v.geometry, pm.page_bytes):
            found += [collision(v.role, piece, b, pm) for b in pm.uncontained_blocks(piece)]
    found.sort(key=lambda c: (c.block, c.role))
    return found[:MAX_COLLISIONS]


# 3. Declared page maps of overlaid layers ----------------------------------------------------
def declared_conflict(pm: PageMap, maps: Sequence[tuple[str, PageMap]]) -> Finding | None:
    """Another declared map that gives page b's bytes to a block id c != b."""
    if not pm.source.startswith("declared"):
        return None
    for other, om in maps:
        same = (om.offset, om.block_stride, om.page_bytes, om.planes)
        if om is pm or same == (pm.offset, pm.block_stride, pm.page_bytes, pm.planes):
            continue
        pairs = foreign_overlaps(pm, om)
        if not pairs:
            continue
        found = []
        for b, c, plane, other_plane in pairs:
            lo, hi = pm.page_span(b, plane)
            page = om.page_span(c, other_plane)
            note = f"{other!r} declares its block {c} at [{page[0]}, {page[1]})"
            found.append(Collision("page (declared)", b, lo, hi, c, page, note))
        return Finding(
            "disjointness",
            "layer",
            other,
            tuple(found),
            unfixable="the page maps declared for the two layers give a block's bytes to "
            "another block id; the allocation itself must change",
        )
    return None


# 4. Exact agreement -------------------------------------------------------------------------
def pair_views(
    mine: Sequence[ViewRecord], theirs: Sequence[ViewRecord]
) -> list[tuple[ViewRecord, ViewRecord]] | str:
    """The reader's views paired with the target's: by kind (K with K, V with V) when both
    name them, else by the kernels' argument names, else in order."""
    if len(mine) != len(theirs):
        return f"the layer has {len(mine)} views and the cache it reads has {len(theirs)}"
    for key in (lambda v: v.kind, lambda v: v.role):
        a, b = [key(v) for v in mine], [key(v) for v in theirs]
        if all(a) and len(set(a)) == len(a) and set(a) == set(b):
            by = {key(v): v for v in theirs}
            return [(v, by[key(v)]) for v in mine]
    return list(zip(mine, theirs, strict=True))


def agreement(
    mine: Sequence[ViewRecord], theirs: Sequence[ViewRecord], target: str
) -> Finding | None:
    pairs = pair_views(mine, theirs)
    if isinstance(pairs, str):
        return Finding("exact agreement", "layer", target, unfixable=pairs, detail=pairs)
    if all(same_elements(m.geometry, t.geometry) for m, t in pairs):
        return None
    return Finding(
        "exact agreement",
        "layer",
        target,
        fix=_fix_or_none(pairs),
        unfixable=_fix_reason(pairs),
        detail=_how_they_differ(pairs),
    )


def _how_they_differ(pairs: list[tuple[ViewRecord, ViewRecord]]) -> str:
    """Swapped, transposed or shifted: what the reader does to the target's bytes."""
    if len(pairs) == 2:
        (m0, t0), (m1, t1) = pairs
        if same_elements(m0.geometry, t1.geometry) and same_elements(m1.geometry, t0.geometry):
            return f"{m0.kind or m0.role} and {m1.kind or m1.role} swapped"
    parts = []
    for m, t in pairs:
        a, b = m.geometry, t.geometry
        if same_elements(a, b):
            continue
        if a.shape == b.shape and a.stride == b.stride:
            parts.append(f"{m.label()} shifted by {a.start - b.start} bytes")
        elif sorted(a.shape[1:]) == sorted(b.shape[1:]) and a.itemsize == b.itemsize:
            parts.append(f"{m.label()} transposed (dims in another order)")
        else:
            parts.append(f"{m.label()} views other elements")
    return "; ".join(parts)


def _permuted(m: ViewGeometry, t: ViewGeometry) -> ViewGeometry | str:
    """The target's view `t` with its dims reordered into the reader's dim order."""
    if m.itemsize != t.itemsize or sorted(m.shape[1:]) != sorted(t.shape[1:]):
        return f"views {m.shape} and {t.shape} hold different elements"
    if m.shape[0] != t.shape[0]:
        return f"{m.shape[0]} blocks against {t.shape[0]}"
    perms = [
        p
        for p in itertools.permutations(range(1, len(t.shape)))
        if tuple(t.shape[i] for i in p) == m.shape[1:]
    ]
    if len({tuple(t.stride[i] for i in p) for p in perms}) != 1:
        return f"dims of {m.shape} and {t.shape} cannot be matched unambiguously"
    p = perms[0]
    return ViewGeometry(
        m.shape, (t.stride[0], *(t.stride[i] for i in p)), t.offset, t.itemsize, m.dtype
    )


def _fix_or_none(pairs) -> tuple[ViewGeometry, ...] | None:
    out = [_permuted(m.geometry, t.geometry) for m, t in pairs]
    return None if any(isinstance(g, str) for g in out) else tuple(out)  # type: ignore[arg-type]


def _fix_reason(pairs) -> str | None:
    for m, t in pairs:
        g = _permuted(m.geometry, t.geometry)
        if isinstance(g, str):
            return g
    return None
