"""Scenarios 1-5 of the runtime issue: unguarded corrupts, strict raises before the write,
fix is bit-identical to a correct run, warn logs once and proceeds."""

from __future__ import annotations

import logging

import pytest
import torch

from kvguard.runtime import Guard, KVLayoutMismatchError

from .harness import BS, D, H, Layer, N, Seat, impl_classes, reference, run


def _guarded(mode):
    classes = impl_classes()
    guard = Guard(mode)
    for c in classes.values():
        guard.wrap(c)
    return guard, classes


# Each builder returns (seats, raw buffer); the first seat defines the page map.
def encoder_decoder(c, cross="BlocksFirstImpl"):
    raw = torch.zeros(2 * N * BS * H * D)
    dec = Seat(
        c["KVFirstImpl"](), Layer("dec.0.self_attn"), lambda r: r.view(2, N, BS, H, D), [4, 5, 6, 7]
    )
    xattn = Seat(
        c[cross]("encoder_decoder"),
        Layer("dec.0.cross_attn"),
        lambda r: r.view(N, 2, BS, H, D),
        [0, 1, 2, 3],
    )
    return [dec, xattn], raw


def spec_decode(c):
    raw = torch.zeros(2 * N * BS * H * D)
    target = Seat(
        c["PackedImpl"](), Layer("target.0"), lambda r: r.view(N, BS, H, 2 * D), [0, 1, 2, 3]
    )
    drafter = Seat(
        c["KVFirstImpl"](), Layer("drafter.0"), lambda r: r.view(2, N, BS, H, D), [4, 5, 6, 7]
    )
    return [target, drafter], raw


def shared_hnd(c, sharing=True):
    raw = torch.zeros(2 * N * BS * H * D)
    a = Seat(c["BlocksFirstImpl"](), Layer("l.0"), lambda r: r.view(N, 2, BS, H, D), [0, 1, 2])
    b = Seat(
        c["BlocksFirstHNDImpl"](),
        Layer("l.1", "l.0" if sharing else None),
        lambda r: r.view(N, 2, H, BS, D),
        [0, 1, 2] if sharing else [4, 5, 6],
    )
    if sharing:
        b.reads = a
    return [a, b], raw


def shared_packed(c):
    raw = torch.zeros(2 * N * BS * H * D)
    a = Seat(c["PackedImpl"](), Layer("p.0"), lambda r: r.view(N, BS, H, 2 * D), [1, 3])
    b = Seat(
        c["BlocksFirstImpl"](),
        Layer("p.1", "p.0"),
        lambda r: r.view(N, 2, BS, H, D),
        [1, 3],
        reads=a,
    )
    return [a, b], raw


def page_sizes(c):
    """#41657: a group with half the block size views the shared pool with half the page."""
    raw = torch.zeros(2 * N * BS * H * D)
    a = Seat(
        c["BlocksFirstImpl"](), Layer("full.0"), lambda r: r.view(N, 2, BS, H, D), [0, 1, 2, 3]
    )
    half = BS // 2
    b = Seat(
        c["BlocksFirstImpl"](),
        Layer("swa.0"),
        lambda r: r[: N * 2 * half * H * D].view(N, 2, half, H, D),
        [4, 5, 6, 7],
        bs=half,
    )
    return [a, b], raw


BROKEN = {
    "encoder_decoder": encoder_decoder,
    "spec_decode": spec_decode,
    "kv_sharing_nhd_vs_hnd": shared_hnd,
    "kv_sharing_packed_vs_halves": shared_packed,
    "page_sizes": page_sizes,
}


def _all_equal(seats, outs, raw):
    return [torch.equal(o, reference(s, raw)) for s, o in zip(seats, outs, strict=True)]


@pytest.mark.parametrize("name", BROKEN)
def test_unguarded_output_is_wrong(name):
    seats, raw = BROKEN[name](impl_classes())
    assert not all(_all_equal(seats, run(seats, raw), raw))


@pytest.mark.parametrize("name", BROKEN)
def test_strict_raises_before_the_write(name):
    _guard, c = _guarded("strict")
    seats, raw = BROKEN[name](c)
    first, second = seats
    kv = [s.make_view(raw) for s in seats]
    if first.reads is None:
        first.impl.do_kv_cache_update(first.layer, first.key, first.value, kv[0], first.slots)
    before = raw.clone()
    with pytest.raises(KVLayoutMismatchError) as info:
        if second.reads is None:
            second.impl.do_kv_cache_update(
                second.layer, second.key, second.value, kv[1], second.slots
            )
        first.impl.forward(first.layer, first.query, kv[0], first.block_table, first.seq_lens)
        src = second.reads or second
        second.impl.forward(second.layer, second.query, kv[1], src.block_table, src.seq_lens)
    assert torch.equal(raw, before), "the kernel ran before the guard raised"
    message = str(info.value)
    for s in seats:
        assert s.layer.layer_name in message
        assert type(s.impl).__name__ in message
    assert "what to do" in message and "split_kv_cache" in message
    assert info.value.violation.layer.name == second.layer.layer_name
    # steady state keeps raising, from the cache, before the kernel
    with pytest.raises(KVLayoutMismatchError):
        src = second.reads or second
        second.impl.forward(second.layer, second.query, kv[1], src.block_table, src.seq_lens)


@pytest.mark.parametrize("name", BROKEN)
def test_fix_is_bit_identical_to_a_correct_run(name, caplog):
    guard, c = _guarded("fix")
    seats, raw = BROKEN[name](c)
    with caplog.at_level(logging.WARNING, logger="kvguard"):
        for _ in range(3):  # first sight, then steady state twice
            raw.zero_()
            outs = run(seats, raw)
            assert all(_all_equal(seats, outs, raw))
    assert len([r for r in caplog.records if r.name == "kvguard"]) == 1
    assert [layer["fix_path"] for layer in guard.report()["layers"]][1] == "restride"


@pytest.mark.parametrize("name", BROKEN)
def test_warn_logs_once_and_proceeds(name, caplog):
    guard, c = _guarded("warn")
    seats, raw = BROKEN[name](c)
    with caplog.at_level(logging.WARNING, logger="kvguard"):
        outs = run(seats, raw)
        outs = run(seats, raw)
    records = [r for r in caplog.records if r.name == "kvguard"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert seats[1].layer.layer_name in records[0].getMessage()
    assert not all(_all_equal(seats, outs, raw))  # proceeded, unrepaired
    assert len(guard.report()["violations"]) == 1


def test_aiter_fixed_split_passes_clean():
    """vLLM 0.23.0's as_strided cross-attention split lands on the K/V-first bytes: no alarm."""
    guard, c = _guarded("strict")
    seats, raw = encoder_decoder(c, cross="AiterFixedImpl")
    assert all(_all_equal(seats, run(seats, raw), raw))
    report = guard.report()
    assert report["violations"] == []
    assert [layer["status"] for layer in report["layers"]] == ["ok", "ok"]


def test_same_bytes_other_arrangement_is_fine_when_only_overlaid():
    guard, c = _guarded("strict")
    seats, raw = shared_hnd(c, sharing=False)
    assert all(_all_equal(seats, run(seats, raw), raw))
    assert guard.report()["violations"] == []


def test_unfixable_page_size_raises_in_fix_mode():
    """A group whose block needs more bytes than the allocation's page cannot be re-strided."""
    _guard, c = _guarded("fix")
    raw = torch.zeros(2 * N * BS * H * D)
    half = BS // 2
    small = Seat(
        c["BlocksFirstImpl"](),
        Layer("swa.0"),
        lambda r: r[: N * 2 * half * H * D].view(N, 2, half, H, D),
        [0, 1],
        bs=half,
    )
    big = Seat(c["BlocksFirstImpl"](), Layer("full.0"), lambda r: r.view(N, 2, BS, H, D), [4])
    with pytest.raises(KVLayoutMismatchError, match="cannot repair"):
        run([small, big], raw)


# Scenario 5: no false alarms ---------------------------------------------------------------
def _clean(guard, seats, raw):
    assert all(_all_equal(seats, run(seats, raw), raw))
    report = guard.report()
    assert report["violations"] == [], report["violations"]
    assert all(layer["status"] == "ok" for layer in report["layers"])
    return report


def test_many_layers_one_layout_in_layer_slots():
    guard, c = _guarded("strict")
    per = 2 * N * BS * H * D
    raw = torch.zeros(6 * per)
    seats = [
        Seat(
            c["KVFirstImpl"](),
            Layer(f"m.{i}"),
            lambda r, i=i: r[i * per : (i + 1) * per].view(2, N, BS, H, D),
            [0, 1, 2, 3],
        )
        for i in range(6)
    ]
    report = _clean(guard, seats, raw)
    assert len(report["allocations"][0]["regions"]) == 6  # slots never overlap


def test_declared_layer_slots():
    guard, c = _guarded("strict")
    page = 2 * BS * H * D * 4
    raw = torch.zeros(3 * 2 * N * BS * H * D)
    guard.declare_allocation(
        raw,
        page_bytes=page,
        block_stride=page,
        offset=0,
        layer_stride=N * page,
        layers=["d.0", "d.1", "d.2"],
        num_blocks=N,
    )
    per = 2 * N * BS * H * D
    seats = [
        Seat(
            c["BlocksFirstImpl"](),
            Layer(f"d.{i}"),
            lambda r, i=i: r[i * per : (i + 1) * per].view(N, 2, BS, H, D),
            [1, 2],
        )
        for i in range(3)
    ]
    _clean(guard, seats, raw)


def test_hybrid_groups_overlay_one_buffer_and_padded_pages():
    guard, c = _guarded("strict")
    pad = 16
    page = 2 * BS * H * D + pad
    raw = torch.zeros(N * page)
    view = lambda r: r.as_strided((N, 2, BS, H, D), (page, BS * H * D, H * D, D, 1))  # noqa: E731
    seats = [
        Seat(c["BlocksFirstImpl"](), Layer(f"group{g}.layer0"), view, [2 * g, 2 * g + 1])
        for g in range(3)
    ]
    _clean(guard, seats, raw)


def test_fp8_cache_viewed_as_uint8():
    guard, c = _guarded("strict")
    raw = torch.zeros(2 * N * BS * H * D, dtype=torch.uint8)
    seats = [
        Seat(c["Fp8Impl"](), Layer(f"fp8.{i}"), lambda r: r.view(N, 2, BS, H, D), [i, i + 3])
        for i in range(2)
    ]
    report = _clean(guard, seats, raw)
    assert report["layers"][0]["views"][0]["dtype"] == "float8_e4m3fn"


def test_kernel_block_size_smaller_than_manager_block():
    """The manager hands out pages of 2*BS tokens; kernels see each as two blocks of BS."""
    guard, c = _guarded("strict")
    page = 2 * (2 * BS) * H * D * 4
    raw = torch.zeros(2 * N * BS * H * D)
    guard.declare_allocation(raw, page_bytes=page, block_stride=page, num_blocks=N // 2)
    kernel = Seat(c["BlocksFirstImpl"](), Layer("k.0"), lambda r: r.view(N, 2, BS, H, D), [0, 1])
    manager = Seat(
        c["BlocksFirstImpl"](),
        Layer("k.1"),
        lambda r: r.view(N // 2, 2, 2 * BS, H, D),
        [2, 3],
        bs=2 * BS,
    )
    _clean(guard, [kernel, manager], raw)
    # and a kernel view that is not a sub-page split is caught against the same declaration
    bad = Seat(c["KVFirstImpl"](), Layer("k.2"), lambda r: r.view(2, N, BS, H, D), [3])
    with pytest.raises(KVLayoutMismatchError):
        run([bad], raw)


def _python_kernel_impls():
    """Kernels written as plain torch code that touch K before V (no single kernel op)."""

    class Split:
        attn_type = "decoder"
        split = None

        def forward(self, layer, kv_cache, key, value, slots):
            key_cache, value_cache = type(self).split(kv_cache)
            key_cache[slots // BS, slots % BS] = key
            value_cache[slots // BS, slots % BS] = value
            return key_cache[slots // BS, slots % BS] + 0, value_cache[slots // BS, slots % BS] + 0

    kv_first = type("KVFirst", (Split,), {"split": staticmethod(lambda kv: kv.unbind(0))})
    blocks_first = type("BlocksFirst", (Split,), {"split": staticmethod(lambda kv: kv.unbind(1))})
    return kv_first, blocks_first


def test_kernel_touching_k_before_v_is_judged_on_both():
    guard = Guard("strict")
    kv_first, blocks_first = (guard.wrap(c) for c in _python_kernel_impls())
    raw = torch.zeros(2 * N * BS * H * D)
    key, value, slots = torch.randn(BS, H, D), torch.randn(BS, H, D), torch.arange(BS)
    kv_first().forward(Layer("a"), raw.view(2, N, BS, H, D), key, value, slots)
    kv_first().forward(Layer("b"), raw.view(2, N, BS, H, D), key, value, slots + BS)
    assert guard.report()["violations"] == []  # one layout, judged with K and V together
    before = raw.clone()
    with pytest.raises(KVLayoutMismatchError, match="layer 'c' and layer 'a'"):
        blocks_first().forward(Layer("c"), raw.view(N, 2, BS, H, D), key, value, slots + 2 * BS)
    assert torch.equal(raw, before)
