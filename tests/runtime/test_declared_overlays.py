"""Declared page maps of overlaid cache groups must give each block id the same bytes.

vLLM overlays its cache groups on one allocation (KVCacheTensors from byte 0), which is sound
because a block id is owned by one group at a time. Each layer is judged against its own
declared map, so the maps must also agree with each other: page b of one may meet page b of
another, never a page c != b.
"""

from __future__ import annotations

import pytest
import torch

from kvguard.runtime import Guard, KVLayoutMismatchError
from kvguard.runtime.pagemap import PageMap, foreign_overlaps

from .harness import BS, D, H, Layer, N, Seat, impl_classes, run

PAGE = 2 * BS * H * D * 4


def test_overlaid_maps_with_one_page_per_block_id_agree():
    a = PageMap(0, PAGE, PAGE, (0,), N)
    assert foreign_overlaps(a, PageMap(0, PAGE, PAGE, (0,), N)) == []
    assert foreign_overlaps(a, PageMap(0, PAGE, PAGE // 2, (0,), N)) == []  # a smaller page
    slots = PageMap(0, 2 * PAGE, PAGE, (0,), N)  # block-outer: two layers per block
    assert foreign_overlaps(slots, PageMap(PAGE, 2 * PAGE, PAGE, (0,), N)) == []
    assert foreign_overlaps(a, PageMap(N * PAGE, PAGE, PAGE, (0,), N)) == []  # layer-outer
    assert foreign_overlaps(a, PageMap(PAGE // 2, PAGE, PAGE, (0,), None)) == []  # unbounded


def test_shifted_or_restrided_maps_collide():
    a = PageMap(0, PAGE, PAGE, (0,), N)
    assert foreign_overlaps(a, PageMap(PAGE // 2, PAGE, PAGE, (0,), N))[0] == (1, 0, 0, 0)
    assert foreign_overlaps(a, PageMap(3 * PAGE, PAGE, PAGE, (0,), N))[0] == (3, 0, 0, 0)
    assert foreign_overlaps(a, PageMap(0, PAGE // 2, PAGE // 2, (0,), 2 * N))[0] == (0, 1, 0, 0)
    assert (
        foreign_overlaps(PageMap(0, PAGE, PAGE, (0,), 1), PageMap(PAGE, PAGE, PAGE, (0,), 1)) == []
    )
    # runs in a second plane, one allocation-half apart (K/V-first, head-outer layouts)
    planes = PageMap(0, PAGE // 2, PAGE // 2, (0, N * PAGE // 2), N)
    assert foreign_overlaps(planes, PageMap(0, PAGE, PAGE, (0,), N))[0] == (0, 4, 1, 0)


def _declared_groups(second_block_stride: int):
    guard = Guard("strict")
    c = impl_classes()
    for cls in c.values():
        guard.wrap(cls)
    raw = torch.zeros(2 * N * BS * H * D)
    for name, stride in (("full.0", PAGE), ("swa.0", second_block_stride)):
        guard.declare_allocation(
            raw,
            page_bytes=stride,
            block_stride=stride,
            layers=[name],
            num_blocks=PAGE * N // stride,
        )
    view = lambda r: r.view(N, 2, BS, H, D)  # noqa: E731
    seats = [
        Seat(c["BlocksFirstImpl"](), Layer("full.0"), view, [0, 1]),
        Seat(c["BlocksFirstImpl"](), Layer("swa.0"), view, [4, 5]),
    ]
    return guard, seats, raw


def test_declared_groups_overlaid_from_byte_zero_are_clean():
    guard, seats, raw = _declared_groups(PAGE)
    run(seats, raw)
    assert guard.report()["violations"] == []


def test_declarations_that_give_a_block_two_owners_are_caught():
    _guard, seats, raw = _declared_groups(PAGE // 2)
    with pytest.raises(KVLayoutMismatchError) as info:
        run(seats, raw)
    assert torch.equal(raw, torch.zeros_like(raw))  # before the first write
    violation = info.value.violation
    assert violation.invariant == "disjointness"
    assert {violation.layer.name, violation.other_name} == {"full.0", "swa.0"}
    assert "declares its block 1" in str(info.value)
