"""Warm-up never settles a layer: calls that reach no kernel (vLLM's profile and compile
warm-up runs, one per captured size in piecewise CUDA-graph capture, where `forward` gets
`attn_metadata=None` and returns early) leave the layer pending, however many there are, and
cost no discovery and no tensor op; the first call that reaches a kernel is judged."""

from __future__ import annotations

import pytest
import torch

from kvguard.runtime import Guard, KVLayoutMismatchError

from .harness import impl_classes, run
from .test_guard import OpCounter
from .test_scenarios import encoder_decoder

WARM_UP_CALLS = 67  # vLLM captures 67 sizes by default (1, 2, 4, 8, ..., 512)


def _warm_up(seats, raw, calls: int = WARM_UP_CALLS) -> None:
    """What vLLM's dummy runs hand an impl: no slot mapping, no metadata."""
    for _ in range(calls):
        for s in seats:
            kv = s.make_view(raw)
            s.impl.do_kv_cache_update(s.layer, s.key, s.value, kv, None)
            s.impl.forward(s.layer, s.query, kv, None, None)


def _early_returning(classes):
    """The impls return early without metadata, as vLLM's backends do."""
    for cls in classes.values():
        update, forward = cls.do_kv_cache_update, cls.forward

        def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping, _u=update):
            if slot_mapping is None:
                return None
            return _u(self, layer, key, value, kv_cache, slot_mapping)

        def forward(self, layer, query, kv_cache, block_table, seq_lens, _f=forward):
            if block_table is None:
                return query
            return _f(self, layer, query, kv_cache, block_table, seq_lens)

        cls.do_kv_cache_update, cls.forward = do_kv_cache_update, forward
    return classes


def _guarded(mode: str, classes=None):
    guard = Guard(mode)
    classes = classes or _early_returning(impl_classes())
    for cls in classes.values():
        guard.wrap(cls)
    return guard, classes


def test_strict_still_judges_the_first_real_call_after_long_warm_up():
    guard, classes = _guarded("strict")
    seats, raw = encoder_decoder(classes)
    _warm_up(seats, raw)
    dec, cross = seats
    dec.impl.do_kv_cache_update(dec.layer, dec.key, dec.value, dec.make_view(raw), dec.slots)
    before = raw.clone()
    with pytest.raises(KVLayoutMismatchError):
        cross.impl.do_kv_cache_update(
            cross.layer, cross.key, cross.value, cross.make_view(raw), cross.slots
        )
    assert torch.equal(raw, before)  # stopped before its kernel wrote anything
    assert guard.report()["violations"][0]["layer"] == "dec.0.cross_attn"


def test_forward_alone_is_judged_after_warm_up():
    """Only `forward` splits wrongly: its own judgement, not the cache update's, must catch it."""
    classes = _early_returning(impl_classes())
    cross = classes["BlocksFirstImpl"]
    split_right = classes["AiterFixedImpl"]._split_kv_cache

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        if slot_mapping is None:
            return None
        k, v = split_right(self, kv_cache)
        torch.ops.kvguard_test.reshape_and_cache(key, value, k, v, slot_mapping, self.hnd)

    cross.do_kv_cache_update = do_kv_cache_update
    guard, classes = _guarded("strict", classes)
    seats, raw = encoder_decoder(classes)
    _warm_up(seats, raw)
    for s in seats:
        s.impl.do_kv_cache_update(s.layer, s.key, s.value, s.make_view(raw), s.slots)
    with pytest.raises(KVLayoutMismatchError):
        for s in seats:
            s.impl.forward(s.layer, s.query, s.make_view(raw), s.block_table, s.seq_lens)
    cross_record = {r["name"]: r for r in guard.report()["layers"]}["dec.0.cross_attn"]
    assert "forward" in cross_record["methods"]


def test_untouched_calls_are_pending_and_cheap():
    guard, classes = _guarded("warn")
    seats, raw = encoder_decoder(classes, cross="AiterFixedImpl")
    _warm_up(seats, raw, calls=3)
    kv = seats[0].make_view(raw)
    with OpCounter() as counter:
        seats[0].impl.forward(seats[0].layer, seats[0].query, kv, None, None)
    assert counter.ops == []  # no tensor op of the guard's own on the untouched path
    assert guard.discoveries == 0
    layers = {r["name"]: r for r in guard.report()["layers"]}
    assert layers["dec.0.self_attn"]["status"] == "pending"
    assert layers["dec.0.self_attn"]["untouched_calls"] == 2 * 3 + 1
    run(seats, raw)
    layers = {r["name"]: r for r in guard.report()["layers"]}
    assert [layers[n]["status"] for n in ("dec.0.self_attn", "dec.0.cross_attn")] == ["ok"] * 2
