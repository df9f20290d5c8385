"""The invariants on caches that backend authors really write: a block axis of stride 0, MLA
caches with per-token fp8 scales split in Python, per-token writes into sub-views of one
block, K and V named by the kernel call (not by the order of the views), an impl that catches
the guard's error and falls back to a torch write, and two guards on one class."""

from __future__ import annotations

import pytest
import torch

from kvguard.runtime import Guard, KVLayoutMismatchError

from .harness import BS, D, H, Layer, N, Seat, impl_classes, reference, run

LATENT, SCALES, ROPE = 512, 4, 64  # fp8 latent, fp32 scales, bf16 rope: 656 bytes per token
TOKEN_BYTES = LATENT + 4 * SCALES + 2 * ROPE


def _wrapped(guard: Guard) -> dict[str, type]:
    classes = impl_classes()
    for cls in classes.values():
        guard.wrap(cls)
    return classes


# A block axis of stride 0 --------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["warn", "strict"])
def test_zero_block_stride_is_a_clear_disjointness_violation(mode):
    guard = Guard(mode)
    c = _wrapped(guard)
    raw = torch.zeros(2 * N * BS * H * D)
    one_page = raw[: 2 * BS * H * D].view(1, 2, BS, H, D)
    seat = Seat(
        c["BlocksFirstImpl"](),
        Layer("expanded"),
        lambda r: one_page.expand(N, -1, -1, -1, -1),
        [0, 1],
    )
    if mode == "strict":
        with pytest.raises(KVLayoutMismatchError) as info:
            run([seat], raw)
        message = str(info.value)
    else:
        run([seat], raw)
        message = guard.report()["violations"][0]["message"]
    (violation,) = guard.report()["violations"]
    assert violation["invariant"] == "disjointness"
    assert "stride 0" in message and "'expanded'" in message
    assert "and layer 'expanded'" not in message


# MLA with per-token fp8 scales ----------------------------------------------------------------
@torch.library.custom_op("kvguard_test::mla_write", mutates_args=("latent", "scales", "rope"))
def mla_write(
    x: torch.Tensor,
    latent: torch.Tensor,
    scales: torch.Tensor,
    rope: torch.Tensor,
    slots: torch.Tensor,
) -> None:
    blk, off = slots // latent.shape[1], slots % latent.shape[1]
    latent[blk, off] = x[:, :LATENT].to(latent.dtype)
    scales[blk, off] = x[:, :SCALES]
    rope[blk, off] = x[:, :ROPE].to(rope.dtype)


class MlaImpl:
    """Splits a uint8 (blocks, block_size, 656) cache per token into fp8 latent, fp32 scales
    and bf16 rope, in Python (as fp8_ds_mla caches are)."""

    attn_type = "decoder"

    def __init__(self, scales_end: int = LATENT + 4 * SCALES) -> None:
        self.scales_end = scales_end

    def do_kv_cache_update(self, layer, x, kv_cache, slots):
        latent = kv_cache[..., :LATENT].view(torch.float8_e4m3fn)
        scales = kv_cache[..., LATENT : LATENT + 4 * SCALES].view(torch.float32)
        rope = kv_cache[..., self.scales_end :][..., : 2 * ROPE].view(torch.bfloat16)
        torch.ops.kvguard_test.mla_write(x, latent, scales, rope, slots)


def test_mla_per_token_scales_split_in_python_are_clean():
    guard = Guard("strict")
    impl = guard.wrap(type("Mla", (MlaImpl,), {}))()
    raw = torch.zeros(N * BS * TOKEN_BYTES, dtype=torch.uint8)
    layers = [Layer(f"mla.{i}") for i in range(2)]  # alive, as an engine's layers are
    for i in range(2):
        impl.do_kv_cache_update(
            layers[i],
            torch.randn(2, LATENT),
            raw.view(N, BS, TOKEN_BYTES),
            torch.tensor([i * BS, i * BS + 1]),
        )
    report = guard.report()
    assert report["violations"] == []
    assert [len(r["views"]) for r in report["layers"]] == [3, 3]


def test_mla_views_that_really_overlap_name_the_layer_once():
    guard = Guard("strict")
    impl = guard.wrap(type("Mla", (MlaImpl,), {}))(
        scales_end=LATENT + 4 * SCALES - 8
    )  # rope over the scales
    raw = torch.zeros(N * BS * TOKEN_BYTES, dtype=torch.uint8)
    with pytest.raises(KVLayoutMismatchError) as info:
        impl.do_kv_cache_update(
            Layer("mla.0"), torch.randn(1, LATENT), raw.view(N, BS, TOKEN_BYTES), torch.tensor([0])
        )
    message = str(info.value)
    assert info.value.violation.invariant == "disjointness"
    assert "and layer 'mla.0'" not in message and "'mla.0'" in message
    assert "scales" in message and "rope" in message  # the views by the kernel's names


# Per-token writes into sub-views of one block --------------------------------------------------
class PerTokenImpl:
    """A torch backend that writes token by token: `key_cache[b][o].copy_(...)`."""

    attn_type = "decoder"
    split = None

    def do_kv_cache_update(self, layer, key, value, kv_cache, slots):
        key_cache, value_cache = type(self).split(kv_cache)
        for i, slot in enumerate(slots.tolist()):
            b, o = divmod(slot, BS)
            key_cache[b][o].copy_(key[i])
            value_cache[b][o].copy_(value[i])


def _per_token(split):
    return type("PerToken", (PerTokenImpl,), {"split": staticmethod(split)})


def test_per_token_writes_are_judged_on_their_blocks():
    guard = Guard("strict")
    kv_first = guard.wrap(_per_token(lambda kv: kv.unbind(0)))
    raw = torch.zeros(2 * N * BS * H * D)
    key, value = torch.randn(3, H, D), torch.randn(3, H, D)
    kv_first().do_kv_cache_update(
        Layer("a"), key, value, raw.view(2, N, BS, H, D), torch.tensor([0, 1, 5])
    )
    kv_first().do_kv_cache_update(
        Layer("b"), key, value, raw.view(2, N, BS, H, D), torch.tensor([9, 13, 14])
    )
    report = guard.report()
    assert report["violations"] == []
    assert [tuple(v["shape"]) for v in report["layers"][0]["views"]] == [(N, BS, H, D)] * 2
    blocks_first = guard.wrap(_per_token(lambda kv: kv.unbind(1)))
    before = raw.clone()
    with pytest.raises(KVLayoutMismatchError, match="'c'"):
        blocks_first().do_kv_cache_update(
            Layer("c"), key, value, raw.view(N, 2, BS, H, D), torch.tensor([20, 21])
        )
    assert torch.equal(raw, before)


# K and V by their role at the kernel call ------------------------------------------------------
def _sharing_pair(c, reader_split):
    raw = torch.zeros(2 * N * BS * H * D)
    target = Seat(c["KVFirstImpl"](), Layer("l.0"), lambda r: r.view(2, N, BS, H, D), [0, 1, 2])
    reader_cls = type("SwappedReader", (c["KVFirstImpl"],), {"_split_kv_cache": reader_split})
    reader = Seat(
        reader_cls(), Layer("l.1", "l.0"), lambda r: r.view(2, N, BS, H, D), [0, 1, 2], reads=target
    )
    return [target, reader], raw


def test_swapped_unbind_of_a_kv_sharing_reader_is_caught():
    """`v, k = kv.unbind(0)` creates the same two views as the target's `k, v = ...`, in the
    same order: only the roles at the kernel call tell that the reader reads V as K."""

    def split(self, kv_cache):
        value_cache, key_cache = kv_cache.unbind(0)
        return key_cache, value_cache

    guard = Guard("strict")
    c = _wrapped(guard)
    seats, raw = _sharing_pair(c, split)
    guard.wrap(type(seats[1].impl))
    with pytest.raises(KVLayoutMismatchError) as info:
        run(seats, raw)
    assert info.value.violation.invariant == "exact agreement"
    assert "swapped" in str(info.value)


def test_same_views_in_another_creation_order_are_fine():
    def split(self, kv_cache):
        v = kv_cache[1]
        k = kv_cache[0]
        return k, v

    guard = Guard("fix")
    c = _wrapped(guard)
    seats, raw = _sharing_pair(c, split)
    guard.wrap(type(seats[1].impl))
    outs = run(seats, raw)
    assert guard.report()["violations"] == []
    assert all(torch.equal(o, reference(s, raw)) for s, o in zip(seats, outs, strict=True))


# An impl that catches the guard's error --------------------------------------------------------
class FallbackImpl:
    """Tries the kernel, and on any error writes with torch: the shape of many fallbacks."""

    attn_type = "decoder"

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        key_cache, value_cache = kv_cache.unbind(1)
        try:
            torch.ops.kvguard_test.reshape_and_cache(
                key, value, key_cache, value_cache, slot_mapping, False
            )
        except Exception:
            blocks, offsets = slot_mapping // BS, slot_mapping % BS
            key_cache[blocks, offsets] = key
            value_cache[blocks, offsets] = value


@pytest.mark.parametrize("mode", ["strict", "fix"])
def test_a_caught_error_never_lets_a_fallback_write_through(mode):
    guard = Guard(mode)
    c = _wrapped(guard)
    fallback = guard.wrap(type("Fallback", (FallbackImpl,), {}))
    raw = torch.zeros(2 * N * BS * H * D)
    dec = Seat(c["KVFirstImpl"](), Layer("dec"), lambda r: r.view(2, N, BS, H, D), [4, 5])
    run([dec], raw)
    before = raw.clone()
    key, value = torch.randn(BS, H, D), torch.randn(BS, H, D)
    slots = torch.arange(BS)
    if mode == "strict":
        with pytest.raises(KVLayoutMismatchError):
            fallback().do_kv_cache_update(
                Layer("cross"), key, value, raw.view(N, 2, BS, H, D), slots
            )
        assert torch.equal(raw, before)
    else:  # fix re-strides the input: the kernel (not the fallback) writes the right pages
        fallback().do_kv_cache_update(Layer("cross"), key, value, raw.view(N, 2, BS, H, D), slots)
        k, v = raw.view(2, N, BS, H, D).unbind(0)
        assert torch.equal(k[0], key) and torch.equal(v[0], value)
        assert torch.equal(raw.view(2, N, -1)[:, 4:6], before.view(2, N, -1)[:, 4:6])


# Two guards on one class -----------------------------------------------------------------------
def test_a_second_guard_on_the_same_class_is_refused():
    cls = impl_classes()["KVFirstImpl"]
    first = Guard("warn")
    first.wrap(cls)
    with pytest.raises(ValueError, match=r"KVFirstImpl\.(forward|do_kv_cache_update).*another"):
        Guard("strict").wrap(cls)
    first.unwrap(cls)
    Guard("strict").wrap(cls)  # after unwrap, another guard may take it
