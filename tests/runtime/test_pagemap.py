"""The closed-form page-map arithmetic against brute-force enumeration of bytes."""

from __future__ import annotations

import itertools
import random

from kvguard.runtime.footprint import ViewGeometry, blocks_share_elements
from kvguard.runtime.pagemap import MAX_REPORTED_BLOCKS, PageMap


def brute_uncontained(pm: PageMap, g: ViewGeometry) -> list[int]:
    k = pm.blocks_per_page(g)
    bad = []
    for b in range(g.num_blocks):
        lo, hi = g.block_span(b)
        q = b // k
        ok = (pm.num_blocks is None or q < pm.num_blocks) and any(
            pm.page_span(q, p)[0] <= lo and hi <= pm.page_span(q, p)[1]
            for p in range(len(pm.planes))
        )
        if not ok:
            bad.append(b)
    return bad


def test_uncontained_blocks_matches_enumeration():
    rng = random.Random(0)
    for _ in range(3000):
        itemsize = rng.choice([1, 2, 4])
        inner = rng.choice([4, 8, 16])
        n = rng.randint(1, 24)
        g = ViewGeometry(
            (n, inner),
            (rng.choice([inner, 2 * inner, 3 * inner, inner // 2 or 1]), 1),
            rng.randint(0, 64),
            itemsize,
            "x",
        )
        stride = rng.choice([inner, 2 * inner, 4 * inner]) * itemsize
        planes = rng.choice([(0,), (0, n * stride)])
        pm = PageMap(
            rng.randint(0, 32) * itemsize,
            stride,
            stride,
            planes,
            rng.choice([None, n, max(1, n // 2)]),
        )
        got = pm.uncontained_blocks(g)
        want = brute_uncontained(pm, g)
        assert got == want[: len(got)] and set(got) <= set(want), (g, pm, got, want)
        assert bool(got) == bool(want), (g, pm, got, want)
        assert len(got) <= MAX_REPORTED_BLOCKS


def test_blocks_share_elements_matches_enumeration():
    rng = random.Random(1)
    for _ in range(2000):
        shape = (1, rng.randint(1, 4), rng.randint(1, 4), rng.randint(1, 5))
        dims = list(range(1, 4))
        rng.shuffle(dims)
        stride = [0, 0, 0, 0]
        step = rng.choice([1, 2])
        for d in reversed(dims):
            stride[d] = step
            step *= shape[d] * rng.choice([1, 1, 2])
        stride[0] = step
        a = ViewGeometry(shape, tuple(stride), rng.randint(0, 40), 4, "x")
        b = ViewGeometry(shape, tuple(stride), rng.randint(0, 40), 4, "x")

        def elems(g):
            return {
                g.offset + sum(i * s for i, s in zip(idx, g.stride, strict=True))
                for idx in itertools.product(*(range(n) for n in g.shape))
            }

        assert blocks_share_elements(a, b) == bool(elems(a) & elems(b)), (a, b)
