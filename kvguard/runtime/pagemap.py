"""Page maps: which bytes of an allocation block id `b` owns, and checks of views against them.

A page map says that block `b` owns, in every plane `p`,

    [offset + p + b * block_stride, offset + p + b * block_stride + page_bytes)

One plane is vLLM 0.33's `KVCacheTensor` page (K and V inside one page); two planes describe
the K/V-first layout of older backends, where a block's K bytes and V bytes live N pages
apart. All checks are closed-form in the block id: nothing is enumerated per block.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .footprint import ViewGeometry

MAX_REPORTED_BLOCKS = 4


@dataclass(frozen=True)
class PageMap:
    offset: int
    block_stride: int
    page_bytes: int
    planes: tuple[int, ...] = (0,)
    num_blocks: int | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if self.block_stride <= 0 or self.page_bytes <= 0:  # block ids would share bytes
            raise ValueError(
                f"a page map needs a positive block stride and page size, got "
                f"block_stride={self.block_stride}, page_bytes={self.page_bytes}"
            )

    def page_span(self, block: int, plane: int = 0) -> tuple[int, int]:
        lo = self.offset + self.planes[plane] + block * self.block_stride
        return lo, lo + self.page_bytes

    def hull(self) -> tuple[int, int]:
        n = self.num_blocks or 1
        return self.offset, self.offset + self.planes[-1] + (n - 1) * self.block_stride + (
            self.page_bytes
        )

    def owner_of(self, byte: int) -> int | None:
        """Block id whose page holds `byte`, or None when it lies between or outside pages."""
        for plane in self.planes:
            rel = byte - self.offset - plane
            if rel < 0:
                continue
            block, inside = divmod(rel, self.block_stride)
            if inside < self.page_bytes and (self.num_blocks is None or block < self.num_blocks):
                return block
        return None

    def describe(self) -> str:
        where = " and ".join(
            f"[{self.offset + p} + {self.block_stride}*b, +{self.page_bytes})" for p in self.planes
        )
        n = f", {self.num_blocks} blocks" if self.num_blocks else ""
        return f"block b owns bytes {where}{n} ({self.source})"

    def to_json(self) -> dict:
        return {
            "offset": self.offset,
            "block_stride": self.block_stride,
            "page_bytes": self.page_bytes,
            "planes": list(self.planes),
            "num_blocks": self.num_blocks,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: dict) -> PageMap:
        return cls(
            d["offset"],
            d["block_stride"],
            d["page_bytes"],
            tuple(d.get("planes", (0,))),
            d.get("num_blocks"),
            d.get("source", ""),
        )

    # ----------------------------------------------------------------------------------
    def blocks_per_page(self, view: ViewGeometry) -> int:
        """Kernel blocks per manager block: a kernel may view each page as k smaller blocks."""
        n = self.num_blocks
        if n and view.num_blocks > n and view.num_blocks % n == 0:
            k = view.num_blocks // n
            if view.block_stride * k == self.block_stride:
                return k
        stride = view.block_stride
        if not n and 0 < stride < self.block_stride and self.block_stride % stride == 0:
            return self.block_stride // stride
        return 1

    def uncontained_blocks(self, view: ViewGeometry) -> list[int]:
        """First block ids of `view` whose bytes leave their own page (containment)."""
        k = self.blocks_per_page(view)
        a, s, e, n = view.start, view.block_stride, view.extent, view.num_blocks
        drift = k * s - self.block_stride
        bad: list[int] = []
        room = self.page_bytes - e
        for j in range(min(k, n)):
            count = (n - j + k - 1) // k  # blocks q*k + j with q in [0, count)
            limit = min(count, self.num_blocks) if self.num_blocks is not None else count
            # per plane, the q with 0 <= r0 + q*drift <= room form one interval
            spans = []
            for p in self.planes:
                r0 = a + j * s - self.offset - p
                if drift == 0:
                    if 0 <= r0 <= room:
                        spans.append((0, limit - 1))
                    continue
                lo_q, hi_q = (-r0, room - r0) if drift > 0 else (r0 - room, r0)
                d = abs(drift)
                spans.append((max(0, -(-lo_q // d)), min(limit - 1, hi_q // d)))
            q, mine = 0, len(bad) + MAX_REPORTED_BLOCKS
            for lo_q, hi_q in sorted(x for x in spans if x[0] <= x[1]):
                while q < lo_q and len(bad) < mine:
                    bad.append(q * k + j)
                    q += 1
                q = max(q, hi_q + 1)
            while q < count and len(bad) < mine:
                bad.append(q * k + j)
                q += 1
        return sorted(bad)[:MAX_REPORTED_BLOCKS]

    def place(self, views: list[ViewGeometry], storage_nbytes: int) -> list[ViewGeometry] | str:
        """Views with the same logical shapes and dtypes, re-strided into this page map.

        Returns the new geometries, or a sentence saying why no re-striding fits.
        """
        if not views:
            return "the layer hands no cache view to its kernels"
        k = self.blocks_per_page(views[0])
        if self.block_stride % k or self.page_bytes % k:
            return f"a page of {self.page_bytes} bytes does not split into {k} kernel blocks"
        sub_stride, sub_page = self.block_stride // k, self.page_bytes // k
        if len(self.planes) == len(views):
            slots = [(p, 0) for p in self.planes]
        elif len(self.planes) == 1:
            slots, used = [], 0
            for v in views:
                slots.append((self.planes[0], used))
                used += v.dense_bytes
        else:
            return (
                f"the page map has {len(self.planes)} planes but the layer has {len(views)} "
                "views; no one-to-one placement"
            )
        placed = []
        for v, (plane, within) in zip(views, slots, strict=True):
            if within + v.dense_bytes > sub_page:
                return (
                    f"one block of the layer needs {within + v.dense_bytes} bytes per page but "
                    f"a page holds {sub_page}"
                )
            if self.num_blocks is not None and v.num_blocks > self.num_blocks * k:
                return f"the layer has {v.num_blocks} blocks, the page map {self.num_blocks * k}"
            start = self.offset + plane + within
            if start % v.itemsize or sub_stride % v.itemsize:
                return f"page offsets are not multiples of the {v.itemsize}-byte element"
            order = sorted(range(1, len(v.shape)), key=lambda d: (-v.stride[d], d))
            stride = [0] * len(v.shape)
            step = 1
            for d in reversed(order):
                stride[d] = step
                step *= v.shape[d]
            stride[0] = sub_stride // v.itemsize
            g = ViewGeometry(v.shape, tuple(stride), start // v.itemsize, v.itemsize, v.dtype)
            if g.hull()[1] > storage_nbytes:
                return f"re-strided, the layer would reach byte {g.hull()[1]} of {storage_nbytes}"
            placed.append(g)
        return placed


SCAN_BLOCKS = 64


def foreign_overlaps(a: PageMap, b: PageMap) -> list[tuple[int, int, int, int]]:
    """First (block of a, block of b, plane of a, plane of b) of different block ids whose
    pages share a byte.

    Cache groups may overlay one allocation only because a block id is owned by one group at
    a time: page b of one map may meet page b of another, never a page c != b. Equal block
    strides are decided in closed form (the offset between the runs fixes b - c); otherwise
    the first SCAN_BLOCKS blocks of `a` are checked, where a stride mismatch shows first.
    Maps without num_blocks are not compared: unbounded, a layer's pages would run into the
    next layer's slot.
    """
    na, nb = a.num_blocks, b.num_blocks
    if na is None or nb is None or a.hull()[1] <= b.offset or b.hull()[1] <= a.offset:
        return []
    found: set[tuple[int, int, int, int]] = set()
    for ja, pa in enumerate(a.planes):
        for jb, pb in enumerate(b.planes):
            xa, xb = a.offset + pa, b.offset + pb
            if a.block_stride == b.block_stride:
                s, d = a.block_stride, xb - xa
                # run i of a meets run c of b iff d - ra < (i - c) * s < d + rb
                for k in range((d - a.page_bytes) // s + 1, -(-(d + b.page_bytes) // s)):
                    i = max(0, k)
                    if k != 0 and i < na and i - k < nb:
                        found.add((i, i - k, ja, jb))
                continue
            for i in range(min(na, SCAN_BLOCKS)):
                lo = xa + i * a.block_stride
                c_lo = max(0, (lo - xb - b.page_bytes) // b.block_stride + 1)
                c_hi = -(-(lo + a.page_bytes - xb) // b.block_stride) - 1
                c_hi = min(c_hi, nb - 1)
                found.update((i, c, ja, jb) for c in range(c_lo, c_hi + 1) if c != i)
    return sorted(found)[:MAX_REPORTED_BLOCKS]


def infer_page_map(views: list[ViewGeometry], source: str) -> PageMap:
    """The page map a layer's own views imply (the first layer bound to a region defines it).

    Block 0's footprints are grouped into planes that each fit in one block stride; a view set
    like K/V-first therefore yields two planes, a blocks-first or packed one a single plane.
    """
    # a view of one block has no block stride to speak of: its hull is its page
    stride = max(v.block_stride if v.num_blocks > 1 else v.extent for v in views)
    spans = sorted(v.block_span(0) for v in views)
    planes: list[int] = []
    for lo, hi in spans:
        if planes and hi <= planes[-1] + stride:
            continue
        planes.append(lo)
    base = planes[0]
    return PageMap(
        offset=base,
        block_stride=stride,
        page_bytes=stride,
        planes=tuple(p - base for p in planes),
        num_blocks=min(v.num_blocks for v in views),
        source=source,
    )


@dataclass
class Region:
    """Layers of one allocation whose footprints overlap, constrained by one page map."""

    lo: int
    hi: int
    page_map: PageMap
    layers: list[str] = field(default_factory=list)

    def overlaps(self, lo: int, hi: int) -> bool:
        return lo < self.hi and self.lo < hi
