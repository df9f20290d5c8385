"""The guarded method has the impl method's own signature: every way of calling it reaches the
same steady answer, and names the generated code uses never shadow the impl's parameters."""

from __future__ import annotations

import inspect

import pytest
import torch

from kvguard.runtime import Guard, KVLayoutMismatchError

from .harness import BS, D, H, Layer, N, Seat, impl_classes, reference, run
from .test_scenarios import encoder_decoder


def _broken_cross(mode: str):
    """A guarded encoder-decoder pair whose cross-attention splits K/V-first bytes blocks-first."""
    guard = Guard(mode)
    classes = impl_classes()
    for cls in classes.values():
        guard.wrap(cls)
    seats, raw = encoder_decoder(classes)
    return guard, seats, raw


def test_signature_and_metadata_are_the_methods_own():
    classes = impl_classes()
    original = classes["KVFirstImpl"].forward
    Guard("warn").wrap(classes["KVFirstImpl"])
    wrapped = classes["KVFirstImpl"].forward
    assert wrapped is not original and wrapped.__wrapped__ is original
    assert inspect.signature(wrapped) == inspect.signature(original)
    assert (wrapped.__name__, wrapped.__qualname__) == (original.__name__, original.__qualname__)


@pytest.mark.parametrize("keywords", [(), ("kv_cache",), ("layer", "query", "kv_cache")])
def test_fix_restrides_a_cache_passed_by_keyword(keywords):
    """Steady state swaps the re-strided cache in wherever the caller put kv_cache."""
    guard, seats, raw = _broken_cross("fix")
    run(seats, raw)  # first sight
    cross = seats[1]
    args = {"layer": cross.layer, "query": cross.query, "kv_cache": cross.make_view(raw)}
    positional = [v for n, v in args.items() if n not in keywords]
    by_name = {n: args[n] for n in keywords}
    for _ in range(3):  # the first call after the judged run seats the table: steady after
        out = cross.impl.forward(
            *positional, **by_name, block_table=cross.block_table, seq_lens=cross.seq_lens
        )
        assert torch.equal(out, reference(cross, raw))
    assert guard.report()["layers"][1]["status"] == "fixed"


def test_strict_raises_at_every_call_however_called():
    _, seats, raw = _broken_cross("strict")
    with pytest.raises(KVLayoutMismatchError):
        run(seats, raw)
    cross = seats[1]
    kv = cross.make_view(raw)
    for _ in range(3):
        with pytest.raises(KVLayoutMismatchError):
            cross.impl.forward(
                layer=cross.layer,
                query=cross.query,
                kv_cache=kv,
                block_table=cross.block_table,
                seq_lens=cross.seq_lens,
            )


def test_parameter_names_of_the_generated_code_are_the_impls_to_use():
    """An impl whose parameters are called like the wrapper's own helpers (fn, id, _kvg_fn)
    and that has defaults, keyword-only and variadic parameters works the same guarded."""
    seen = []

    class Impl:
        def forward(self, layer, fn, kv_cache, /, _kvg_fn=2, *id, hit=None, **_kvg_hit):
            k, v = kv_cache.unbind(0)
            seen.append((fn, _kvg_fn, id, hit, _kvg_hit))
            torch.ops.kvguard_test.reshape_and_cache(
                torch.ones(1, H, D), torch.ones(1, H, D), k, v, torch.tensor([0]), False
            )

    guard = Guard("warn")
    guard.wrap(Impl)
    kv = torch.zeros(2, N, BS, H, D)
    impl, layer = Impl(), Layer("odd")
    for _ in range(3):
        impl.forward(layer, "f", kv)
        impl.forward(layer, "f", kv, 5, 6, 7, hit=8, extra=9)
    assert seen[-2:] == [("f", 2, (), None, {}), ("f", 5, (6, 7), 8, {"extra": 9})]
    assert [r.status for r in guard.layers] == ["ok"]
    assert inspect.signature(Impl.forward) == inspect.signature(Impl.forward.__wrapped__)


def test_dynamo_tracing_a_wrapped_method_steps_aside_without_a_graph_break():
    """torch.compile of code that calls the impl directly (no custom op around it): dynamo
    traces the original method, before and after the guard has judged the layer."""
    classes = impl_classes()
    guard = Guard("warn")
    guard.wrap(classes["KVFirstImpl"])
    raw = torch.zeros(2 * N * BS * H * D)
    seat = Seat(classes["KVFirstImpl"](), Layer("dec"), lambda r: r.view(2, N, BS, H, D), [1, 3])
    kv = seat.make_view(raw)

    def step(query):
        seat.impl.do_kv_cache_update(seat.layer, seat.key, seat.value, kv, seat.slots)
        return seat.impl.forward(seat.layer, query, kv, seat.block_table, seat.seq_lens)

    compiled = torch.compile(step, backend="eager", fullgraph=True)
    assert torch.equal(compiled(seat.query), reference(seat, raw))  # traced before any judgement
    assert guard.discoveries == 0
    step(seat.query)  # an eager call judges the layer: its steady answer is now in the table
    step(seat.query)
    torch._dynamo.reset()
    assert torch.equal(compiled(seat.query), reference(seat, raw))
    assert [r.status for r in guard.layers] == ["ok"]
