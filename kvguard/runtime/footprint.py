"""Byte footprints of cache views, from sizes, strides, storage offset and element size only.

Nothing here reads tensor contents or touches the device. A kernel-facing view has the block
axis first, so block `b` of view `v` addresses exactly the bytes

    [v.start + b * v.block_stride, v.start + b * v.block_stride + v.extent)

at their hull, where `start` is the lowest byte of block 0 and `extent` is the hull length of
one block (every element of a block lies in it; padding between elements is allowed).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from .errors import UnsupportedView

if TYPE_CHECKING:  # the arithmetic needs no torch, so reports render without it
    import torch


@dataclass(frozen=True)
class ViewGeometry:
    shape: tuple[int, ...]
    stride: tuple[int, ...]  # in elements, like torch
    offset: int  # storage offset in elements
    itemsize: int
    dtype: str

    @classmethod
    def of(cls, t: torch.Tensor) -> ViewGeometry:
        return cls(
            tuple(t.shape),
            tuple(t.stride()),
            t.storage_offset(),
            t.element_size(),
            str(t.dtype).removeprefix("torch."),
        )

    # Footprint of one block, in bytes -------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return self.shape[0]

    @property
    def block_stride(self) -> int:
        return self.stride[0] * self.itemsize

    @property
    def start(self) -> int:
        """Lowest byte of block 0 (strides are never negative; see validate)."""
        return self.offset * self.itemsize

    @property
    def extent(self) -> int:
        """Hull length in bytes of one block."""
        last = sum((n - 1) * s for n, s in zip(self.shape[1:], self.stride[1:], strict=True))
        return (last + 1) * self.itemsize

    @property
    def dense_bytes(self) -> int:
        """Bytes one block would take if its elements were packed without gaps."""
        n = 1
        for size in self.shape[1:]:
            n *= size
        return n * self.itemsize

    def block_span(self, block: int) -> tuple[int, int]:
        lo = self.start + block * self.block_stride
        return lo, lo + self.extent

    def hull(self) -> tuple[int, int]:
        return self.start, self.block_span(self.num_blocks - 1)[1]

    def validate(self) -> None:
        """Reject views whose footprint the guard cannot state (a documented skip)."""
        if len(self.shape) < 1:
            raise UnsupportedView("a 0-dim tensor has no block axis")
        if any(n == 0 for n in self.shape):
            raise UnsupportedView(f"zero-size view {self.shape} addresses no bytes")
        if any(s < 0 for s in self.stride):
            raise UnsupportedView(f"negative stride in {self.stride}")
        inner = sorted(
            (s, n) for n, s in zip(self.shape[1:], self.stride[1:], strict=True) if n > 1
        )
        reach = 0  # elements spanned by the smaller-stride dims
        for s, n in inner:
            if s <= reach:
                raise UnsupportedView(
                    f"view shape {self.shape} stride {self.stride} addresses some element of a "
                    "block twice (overlapping strides); a cache view must not alias itself"
                )
            reach += (n - 1) * s

    def describe(self) -> str:
        lo, hi = self.block_span(0)
        return (
            f"shape {self.shape} stride {self.stride} offset {self.offset} {self.dtype} "
            f"({self.itemsize} B) -> block b at bytes [{lo} + {self.block_stride}*b, "
            f"+{hi - lo})"
        )

    def as_strided_call(self) -> str:
        return f"kv_cache.as_strided({self.shape}, {self.stride}, {self.offset})"

    def to_json(self) -> dict:
        return {
            "shape": list(self.shape),
            "stride": list(self.stride),
            "offset": self.offset,
            "itemsize": self.itemsize,
            "dtype": self.dtype,
        }

    @classmethod
    def from_json(cls, d: dict) -> ViewGeometry:
        return cls(tuple(d["shape"]), tuple(d["stride"]), d["offset"], d["itemsize"], d["dtype"])


MAX_PLANES = 64


def split_planes(g: ViewGeometry, max_extent: int) -> list[ViewGeometry]:
    """`g` cut along its largest-stride inner dims until one block of a piece spans at most
    `max_extent` bytes (the page size it is checked against).

    Head-outer layouts (vLLM's KVCacheLayout.LHBNC puts heads outside blocks, BHLNC outside
    layers) store one block as several runs of bytes, so the hull of a block spans bytes of
    other blocks or other layers. Each piece keeps one index of every cut dim (as a size-1
    dim); together the pieces address exactly the bytes of `g`, so checking every piece is as
    strict as checking `g`, and exact where the hull is not. Stops before MAX_PLANES pieces.
    """
    dims = sorted((d for d in range(1, len(g.shape)) if g.shape[d] > 1), key=lambda d: -g.stride[d])
    cut: list[int] = []
    shape = list(g.shape)
    count = 1
    for d in dims:
        if replace(g, shape=tuple(shape)).extent <= max_extent or count * g.shape[d] > MAX_PLANES:
            break
        cut.append(d)
        count *= g.shape[d]
        shape[d] = 1
    if not cut:
        return [g]
    pieces = []
    for idx in itertools.product(*(range(g.shape[d]) for d in cut)):
        offset = g.offset + sum(i * g.stride[d] for i, d in zip(idx, cut, strict=True))
        pieces.append(replace(g, shape=tuple(shape), offset=offset))
    return pieces


def same_elements(a: ViewGeometry, b: ViewGeometry) -> bool:
    """Exact agreement: both views address the same bytes in the same order and type."""
    return (
        a.shape == b.shape
        and a.itemsize == b.itemsize
        and a.dtype == b.dtype
        and a.start == b.start
        and all(
            sa * a.itemsize == sb * b.itemsize or n == 1
            for n, sa, sb in zip(a.shape, a.stride, b.stride, strict=True)
        )
    )


def self_overlapping(g: ViewGeometry) -> bool:
    """True when two distinct indices of `g` (block axis included) may address one element."""
    reach = 0
    for s, n in sorted((s, n) for n, s in zip(g.shape, g.stride, strict=True) if n > 1):
        if s <= reach:
            return True
        reach += (n - 1) * s
    return False


MAX_RUNS = 4096


def byte_runs(g: ViewGeometry, limit: int = MAX_RUNS) -> list[tuple[int, int]] | None:
    """Block 0's bytes as sorted [lo, hi) runs (innermost contiguous dims merged), or None
    when there would be more than `limit` runs."""
    dims = sorted(
        (s * g.itemsize, n) for n, s in zip(g.shape[1:], g.stride[1:], strict=True) if n > 1
    )
    run, outer = g.itemsize, []
    for stride, size in dims:
        if not outer and stride == run:
            run *= size
        else:
            outer.append((stride, size))
    count = 1
    for _, size in outer:
        count *= size
    if count > limit:
        return None
    starts = [g.start]
    for stride, size in outer:
        starts = [s + i * stride for s in starts for i in range(size)]
    return [(s, s + run) for s in sorted(starts)]


def blocks_share_bytes(a: ViewGeometry, b: ViewGeometry) -> bool:
    """Whether block 0 of `a` and block 0 of `b` address a common byte: exact.

    Views that interleave within a block (an MLA cache's per-token latent, scales and rope,
    each a slice of every token's bytes) have overlapping hulls and no common byte. Decided by
    sweeping both views' byte runs; beyond MAX_RUNS runs, by `blocks_share_elements`.
    """
    a_lo, a_hi = a.block_span(0)
    b_lo, b_hi = b.block_span(0)
    if not (a_lo < b_hi and b_lo < a_hi):
        return False
    runs_a, runs_b = byte_runs(a), byte_runs(b)
    if runs_a is None or runs_b is None:
        return blocks_share_elements(a, b)
    i = j = 0
    while i < len(runs_a) and j < len(runs_b):
        (lo_a, hi_a), (lo_b, hi_b) = runs_a[i], runs_b[j]
        if lo_a < hi_b and lo_b < hi_a:
            return True
        if hi_a <= hi_b:
            i += 1
        else:
            j += 1
    return False


def blocks_share_elements(a: ViewGeometry, b: ViewGeometry) -> bool:
    """Whether block 0 of `a` and block 0 of `b` address a common byte.

    Exact for views with equal shapes, strides and element size (K and V of one layer):
    they overlap iff the byte distance of their starts is a lattice vector of the block's
    index differences. Otherwise the byte hulls decide (conservative).
    """
    a_lo, a_hi = a.block_span(0)
    b_lo, b_hi = b.block_span(0)
    if not (a_lo < b_hi and b_lo < a_hi):
        return False
    if a.shape[1:] != b.shape[1:] or a.stride[1:] != b.stride[1:] or a.itemsize != b.itemsize:
        return True
    delta, rem = divmod(b.start - a.start, a.itemsize)
    if rem:
        return True
    dims = sorted(
        ((s, n) for n, s in zip(a.shape[1:], a.stride[1:], strict=True) if n > 1), reverse=True
    )

    def reachable(r: int, k: int) -> bool:
        if k == len(dims):
            return r == 0
        s, n = dims[k]
        c = r // s
        return any(-(n - 1) <= q <= n - 1 and reachable(r - q * s, k + 1) for q in (c, c + 1))

    return reachable(delta, 0)
