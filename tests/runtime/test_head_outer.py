"""Head-outer caches (vLLM 0.32's KVCacheLayout.LHBNC): a block's bytes are one run per head.

The layer's cache is logically (num_blocks, heads, block_size, 2 * head_size) with the head
axis outside the block axis, and the impl splits it as vLLM's Triton and ROCm AITER unified
backends do: `kv_cache.transpose(1, 2).split(head_size, dim=-1)`. The hull of one block then
spans every other block's pages; the guard must judge the runs, not the hull.
"""

from __future__ import annotations

import pytest
import torch

from kvguard.runtime import Guard, KVLayoutMismatchError
from kvguard.runtime.footprint import ViewGeometry, split_planes

from .harness import BS, D, H, Layer, N, Seat, impl_classes, reference, run


def head_outer(raw: torch.Tensor) -> torch.Tensor:
    return raw.view(H, N, BS, 2 * D).permute(1, 0, 2, 3)


def _classes(guard: Guard):
    c = impl_classes()

    class HeadOuterPackedImpl(c["KVFirstImpl"]):
        def _split_kv_cache(self, kv_cache):
            return kv_cache.transpose(1, 2).split(kv_cache.shape[-1] // 2, dim=-1)

    c["HeadOuterPackedImpl"] = HeadOuterPackedImpl
    for cls in c.values():
        guard.wrap(cls)
    return c


def _elements(g: ViewGeometry) -> set[int]:
    idx = [torch.arange(n) * s for n, s in zip(g.shape, g.stride, strict=True)]
    total = torch.tensor(g.offset)
    for i in idx:
        total = total.unsqueeze(-1) + i
    return set(total.flatten().tolist())


def test_pieces_address_exactly_the_view():
    k, v = head_outer(torch.zeros(2 * N * BS * H * D)).transpose(1, 2).split(D, dim=-1)
    for t in (k, v):
        g = ViewGeometry.of(t)
        pieces = split_planes(g, g.block_stride)
        assert len(pieces) == H
        assert set().union(*map(_elements, pieces)) == _elements(g)
        assert all(p.extent <= g.block_stride for p in pieces)  # one run per block again


def test_head_outer_layers_are_clean():
    guard = Guard("strict")
    c = _classes(guard)
    raw = torch.zeros(2 * N * BS * H * D)
    seats = [
        Seat(c["HeadOuterPackedImpl"](), Layer(f"g{g}.0"), head_outer, [g, g + 2, g + 4])
        for g in range(2)  # two cache groups overlaying one buffer, block ids owned by one
    ]
    outs = run(seats, raw)
    assert all(torch.equal(o, reference(s, raw)) for s, o in zip(seats, outs, strict=True))
    report = guard.report()
    assert report["violations"] == []
    assert [layer["status"] for layer in report["layers"]] == ["ok", "ok"]
    page_map = report["allocations"][0]["regions"][0]["page_map"]
    assert page_map["page_bytes"] == BS * 2 * D * 4 and len(page_map["planes"]) == H


def test_head_inner_reader_of_a_head_outer_buffer_is_caught():
    guard = Guard("strict")
    c = _classes(guard)
    raw = torch.zeros(2 * N * BS * H * D)
    first = Seat(c["HeadOuterPackedImpl"](), Layer("outer.0"), head_outer, [0, 1])
    second = Seat(c["PackedImpl"](), Layer("inner.0"), lambda r: r.view(N, BS, H, 2 * D), [4, 5])
    with pytest.raises(KVLayoutMismatchError, match=r"layer 'inner\.0' and layer 'outer\.0'"):
        run([first, second], raw)


def _declared_run(planes):
    guard = Guard("strict")
    c = _classes(guard)
    raw = torch.zeros(2 * N * BS * H * D)
    run_bytes = BS * 2 * D * 4  # one head's run of one block
    guard.declare_allocation(
        raw, page_bytes=run_bytes, block_stride=run_bytes, num_blocks=N, planes=planes
    )
    seats = [Seat(c["HeadOuterPackedImpl"](), Layer("l.0"), head_outer, [1, 2])]
    return guard, seats, raw


def test_declared_head_outer_page_is_one_run_per_plane():
    guard, seats, raw = _declared_run(tuple(h * N * BS * 2 * D * 4 for h in range(H)))
    outs = run(seats, raw)
    assert torch.equal(outs[0], reference(seats[0], raw))
    assert guard.report()["violations"] == []


def test_declared_page_without_its_planes_disowns_the_other_heads():
    _guard, seats, raw = _declared_run((0,))
    with pytest.raises(KVLayoutMismatchError, match="containment"):
        run(seats, raw)


@pytest.mark.parametrize("planes", [(), (8,), (0, 0), (0, -4), (0, 1 << 40)])
def test_bad_planes_are_refused(planes):
    raw = torch.zeros(64)
    with pytest.raises(ValueError, match=r"planes|past the \d+-byte allocation"):
        Guard("strict").declare_allocation(raw, page_bytes=16, block_stride=16, planes=planes)


def test_heads_interleaved_with_other_layers_declared_as_runs():
    """vLLM's BHLNC: inside a block, head h of layer l is run h*L + l; declared with planes."""
    layers = 2
    run_bytes = BS * 2 * D * 4
    guard = Guard("strict")
    c = _classes(guard)
    raw = torch.zeros(layers * 2 * N * BS * H * D)
    guard.declare_allocation(
        raw,
        page_bytes=run_bytes,
        block_stride=H * layers * run_bytes,
        layer_stride=run_bytes,
        layers=["i.0", "i.1"],
        num_blocks=N,
        planes=tuple(h * layers * run_bytes for h in range(H)),
    )
    seats = [
        Seat(
            c["HeadOuterPackedImpl"](),
            Layer(f"i.{i}"),
            lambda r, i=i: r.view(N, H, layers, BS, 2 * D)[:, :, i],
            [1, 4, 6],
        )
        for i in range(layers)
    ]
    outs = run(seats, raw)
    assert all(torch.equal(o, reference(s, raw)) for s, o in zip(seats, outs, strict=True))
    assert guard.report()["violations"] == []
