"""Guard machinery: cost in steady state, threads, weak references, bad arguments, wrapping,
torch.compile custom ops, report and pictures."""

from __future__ import annotations

import gc
import json
import logging
import threading
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kvguard.runtime import LAYOUTS, Guard, KVLayoutMismatchError, split_kv_cache
from kvguard.runtime.render import render_report, save_svg

from .harness import BS, D, H, Layer, N, Seat, impl_classes, reference, run
from .test_scenarios import encoder_decoder


class OpCounter(TorchDispatchMode):
    """Counts every aten op (each tensor allocation, view or kernel is one)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _call_ops(fn):
    with OpCounter() as counter:
        fn()
    return counter.ops


@pytest.mark.parametrize("mode", ["warn", "strict", "fix"])
def test_steady_state_adds_no_tensor_ops(mode):
    classes = impl_classes()
    bare_seats, raw_bare = encoder_decoder(classes)
    bare = [_call_ops(lambda: run(bare_seats, raw_bare)) for _ in range(2)][-1]

    guard = Guard(mode)
    guarded_classes = impl_classes()
    for c in guarded_classes.values():
        guard.wrap(c)
    seats, raw = encoder_decoder(
        guarded_classes, cross="AiterFixedImpl" if mode == "strict" else "BlocksFirstImpl"
    )
    bare_ref_seats, raw_ref = encoder_decoder(classes, cross="AiterFixedImpl")
    if mode == "strict":
        bare = _call_ops(lambda: run(bare_ref_seats, raw_ref))
    run(seats, raw)  # first sight
    discoveries = guard.discoveries
    steady = _call_ops(lambda: run(seats, raw))
    assert guard.discoveries == discoveries
    assert steady == bare, "the guarded steady state ran tensor ops the bare call does not"


def test_first_sight_is_one_discovery_per_layer():
    guard = Guard("strict")
    c = impl_classes()
    for cls in c.values():
        guard.wrap(cls)
    seats, raw = encoder_decoder(c, cross="AiterFixedImpl")
    for _ in range(5):
        run(seats, raw)
    assert guard.discoveries == 2 * 2  # two layers x (update + forward) call sites


def test_threads_register_each_layer_once_and_log_once(caplog):
    guard = Guard("warn")
    c = impl_classes()
    for cls in c.values():
        guard.wrap(cls)
    pairs = [encoder_decoder(c) for _ in range(4)]
    for i, (seats, _) in enumerate(pairs):
        for s in seats:
            s.layer.layer_name = f"{s.layer.layer_name}.{i}"
    errors = []
    barrier = threading.Barrier(8)

    def work(seats, raw):
        try:
            barrier.wait()
            for _ in range(20):
                run(seats, raw)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    with caplog.at_level(logging.WARNING, logger="kvguard"):
        threads = [threading.Thread(target=work, args=p) for p in pairs for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    report = guard.report()
    assert len(report["layers"]) == 8
    assert {v["layer"] for v in report["violations"]} == {f"dec.0.cross_attn.{i}" for i in range(4)}
    assert len([r for r in caplog.records if r.name == "kvguard"]) == 4


def test_freed_cache_is_forgotten_and_not_confused_with_a_new_one():
    guard = Guard("fix")
    c = impl_classes()
    for cls in c.values():
        guard.wrap(cls)
    seats, raw = encoder_decoder(c)
    views = [s.make_view(raw) for s in seats]
    for s, kv in zip(seats, views, strict=True):
        s.impl.do_kv_cache_update(s.layer, s.key, s.value, kv, s.slots)
    storage_ref = weakref.ref(raw.untyped_storage())
    assert guard._cache
    del raw, views, kv
    gc.collect()
    assert storage_ref() is None, "the guard (or its fixed view) kept the cache alive"
    assert not guard._cache
    assert all(a["freed"] for a in guard.report()["allocations"])
    # a new allocation, however placed, is judged afresh
    seats2, raw2 = encoder_decoder(c, cross="AiterFixedImpl")
    run(seats2, raw2)
    assert guard.report()["allocations"][-1]["freed"] is False


def test_dead_impl_entries_are_dropped():
    guard = Guard("strict")
    c = impl_classes()
    for cls in c.values():
        guard.wrap(cls)
    seats, raw = encoder_decoder(c, cross="AiterFixedImpl")
    run(seats, raw)
    assert guard._cache
    for s in seats:
        s.impl = None
    gc.collect()
    assert not guard._cache


def test_bad_arguments():
    with pytest.raises(ValueError, match="one of off, warn, strict, fix"):
        Guard("loud")
    guard = Guard("strict")
    with pytest.raises(TypeError, match="expects a class"):
        guard.wrap(lambda: None)
    raw = torch.zeros(64)
    with pytest.raises(ValueError, match="block_stride must be at least page_bytes"):
        guard.declare_allocation(raw, page_bytes=64, block_stride=32)
    with pytest.raises(ValueError, match="page_bytes must be a positive int"):
        guard.declare_allocation(raw, page_bytes=0, block_stride=32)
    with pytest.raises(TypeError, match=r"torch\.Tensor or torch\.UntypedStorage"):
        guard.declare_allocation([1, 2], page_bytes=4, block_stride=4)
    with pytest.raises(ValueError, match="expected 5 dims"):
        split_kv_cache(torch.zeros(4, 4), "kv_first")
    with pytest.raises(ValueError, match="unknown KV layout"):
        split_kv_cache(torch.zeros(4, 4), "nope")


@pytest.mark.filterwarnings("ignore:Use of index_put_ on expanded tensors")
def test_bad_caches_are_skipped_not_crashed():
    guard = Guard("strict")
    c = impl_classes()
    for cls in c.values():
        guard.wrap(cls)
    impl, layer = c["KVFirstImpl"](), Layer("odd")

    class Echo:
        def forward(self, layer, kv_cache):
            return kv_cache

    guard.wrap(Echo)
    # non-tensor kv_cache: passed through to the impl untouched
    assert Echo().forward(layer, "not a tensor") == "not a tensor"
    assert Echo().forward(layer, kv_cache=None) is None
    # zero-size cache (encoder layers get these): skipped
    impl.forward(
        Layer("empty"),
        torch.zeros(1, H, D),
        torch.zeros(2, 0, BS, H, D),
        torch.zeros(1, 0).long(),
        torch.zeros(1).long(),
    )
    # a view whose inner strides alias (expand): documented skip, the call proceeds
    raw = torch.zeros(2 * N * BS * H * D)
    aliased = raw[: 2 * N * BS * H].as_strided((2, N, BS, H, D), (N * BS * H, BS * H, H, 1, 0))
    seat = Seat(impl, layer, lambda r: aliased, [0])
    run([seat], raw)
    status = {
        layer["name"]: (layer["status"], layer["reason"]) for layer in guard.report()["layers"]
    }
    assert status["empty"] == ("skipped", "zero-size kv_cache")
    assert status["odd"][0] == "skipped" and "overlapping strides" in status["odd"][1]


def test_off_costs_nothing_and_wrapping_is_idempotent():
    c = impl_classes()
    cls = c["KVFirstImpl"]
    original = cls.__dict__.get("forward"), cls.do_kv_cache_update
    assert Guard("off").wrap(cls) is cls
    assert (cls.__dict__.get("forward"), cls.do_kv_cache_update) == original
    guard = Guard("strict")
    guard.wrap(cls)
    once = cls.forward
    guard.wrap(cls)
    assert cls.forward is once
    assert cls._split_kv_cache.__name__ == "_split_kv_cache"  # no layer/kv_cache: untouched
    assert not hasattr(cls._split_kv_cache, "__kvguard_guards__")


def test_nested_wrapping_super_calls_discover_once():
    guard = Guard("strict")
    c = impl_classes()
    base = c["BlocksFirstImpl"]

    class Child(base):
        def forward(self, layer, query, kv_cache, block_table, seq_lens):
            return super().forward(layer, query, kv_cache, block_table, seq_lens)

    guard.wrap(base)
    guard.wrap(Child)
    raw = torch.zeros(2 * N * BS * H * D)
    seat = Seat(Child(), Layer("child"), lambda r: r.view(N, 2, BS, H, D), [0, 1])
    assert torch.equal(run([seat], raw)[0], reference(seat, raw))
    assert guard.discoveries == 2  # update + forward, not doubled by super()


def test_torch_compile_custom_op_path():
    """vLLM calls attention through a custom op inside the compiled model: fix still applies."""
    guard = Guard("fix")
    c = impl_classes()
    for cls in c.values():
        guard.wrap(cls)
    seats, raw = encoder_decoder(c)
    views = [s.make_view(raw) for s in seats]
    registry = {i: (s, kv) for i, (s, kv) in enumerate(zip(seats, views, strict=True))}

    @torch.library.custom_op("kvguard_test::attention_layer", mutates_args=())
    def attention_layer(query: torch.Tensor, index: int) -> torch.Tensor:
        s, kv = registry[index]
        s.impl.do_kv_cache_update(s.layer, s.key, s.value, kv, s.slots)
        return s.impl.forward(s.layer, query, kv, s.block_table, s.seq_lens)

    @attention_layer.register_fake
    def _(query, index):
        return torch.empty_like(query)

    class Model(torch.nn.Module):
        def forward(self, q0, q1):
            a = torch.ops.kvguard_test.attention_layer(q0, 0)
            return a, torch.ops.kvguard_test.attention_layer(q1, 1) * 1.0

    model = torch.compile(Model(), backend="aot_eager", fullgraph=True)
    for _ in range(2):
        out = model(seats[0].query, seats[1].query)
        for s, o in zip(seats, out, strict=True):
            assert torch.equal(o, reference(s, raw))
    assert guard.report()["violations"][0]["layer"] == "dec.0.cross_attn"


def test_strict_raises_through_torch_compile():
    guard = Guard("strict")
    c = impl_classes()
    for cls in c.values():
        guard.wrap(cls)
    seats, raw = encoder_decoder(c)
    views = [s.make_view(raw) for s in seats]

    @torch.library.custom_op("kvguard_test::update_layer", mutates_args=())
    def update_layer(key: torch.Tensor, index: int) -> torch.Tensor:
        s, kv = seats[index], views[index]
        s.impl.do_kv_cache_update(s.layer, key, s.value, kv, s.slots)
        return key.clone()

    update_layer.register_fake(lambda key, index: torch.empty_like(key))
    fn = torch.compile(
        lambda k0, k1: (
            torch.ops.kvguard_test.update_layer(k0, 0),
            torch.ops.kvguard_test.update_layer(k1, 1),
        ),
        backend="aot_eager",
    )
    with pytest.raises(KVLayoutMismatchError):
        fn(seats[0].key, seats[1].key)


def test_report_is_json_and_renders_to_svg(tmp_path):
    guard = Guard("warn")
    c = impl_classes()
    for cls in c.values():
        guard.wrap(cls)
    seats, raw = encoder_decoder(c)
    run(seats, raw)
    report = json.loads(json.dumps(guard.report()))
    assert report["mode"] == "warn"
    (violation,) = report["violations"]
    assert violation["invariant"] == "containment"
    assert violation["other"] == "dec.0.self_attn"
    assert violation["collisions"][0] == {
        "role": "value_cache",
        "note": None,
        "block": 0,
        "lo": 256,
        "hi": 512,
        "owner_block": 1,
        "page": [0, 256],
    }
    assert [v["offset"] for v in violation["fix"]] == [0, N * BS * H * D]
    path = tmp_path / "map.svg"
    save_svg(report, str(path))
    svg = path.read_text()
    assert svg.startswith("<svg") and "dec.0.cross_attn" in svg.replace("&#160;", " ")
    from rich.console import Console

    console = Console(record=True, width=160)
    render_report(report, console)
    text = console.export_text()
    assert "per-block map" in text and "warned" in text


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_split_kv_cache_layouts(name):
    layout = LAYOUTS[name]
    kv = torch.arange(torch.Size(layout.kv_cache_shape(N, BS, H, D)).numel()).view(
        layout.kv_cache_shape(N, BS, H, D)
    )
    k, v = split_kv_cache(kv, layout)
    assert k.shape[0] == N and k.untyped_storage().data_ptr() == kv.untyped_storage().data_ptr()
    if name != "latent":
        assert not set(k.flatten().tolist()) & set(v.flatten().tolist())
        assert set(k.flatten().tolist()) | set(v.flatten().tolist()) == set(range(kv.numel()))
