"""Torch reference kernels and vLLM-shaped attention impls for the runtime tests.

The kernels are torch.library custom ops, like vLLM's reshape_and_cache_flash and paged
attention: a kernel call is the boundary the guard judges views at.
"""

from __future__ import annotations

import torch

N, BS, H, D = 8, 4, 2, 8


@torch.library.custom_op(
    "kvguard_test::reshape_and_cache", mutates_args=("key_cache", "value_cache")
)
def reshape_and_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    hnd: bool,
) -> None:
    bs = key_cache.shape[2] if hnd else key_cache.shape[1]
    blk, off = slot_mapping // bs, slot_mapping % bs
    for cache, x in ((key_cache, key), (value_cache, value)):
        x = x.to(cache.dtype)
        if hnd:
            cache[blk, :, off] = x
        else:
            cache[blk, off] = x


@torch.library.custom_op("kvguard_test::paged_attention", mutates_args=())
def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seq_lens: torch.Tensor,
    hnd: bool,
) -> torch.Tensor:
    outs = []
    for i in range(block_table.shape[0]):
        n = int(seq_lens[i])
        k, v = key_cache[block_table[i]].float(), value_cache[block_table[i]].float()
        if hnd:  # (nb, h, bs, d) -> (nb, bs, h, d)
            k, v = k.transpose(1, 2), v.transpose(1, 2)
        k = k.reshape(-1, k.shape[-2], k.shape[-1])[:n]
        v = v.reshape(-1, v.shape[-2], v.shape[-1])[:n]
        scores = torch.einsum("hd,nhd->hn", query[i], k) / k.shape[-1] ** 0.5
        outs.append(torch.einsum("hn,nhd->hd", scores.softmax(-1), v))
    return torch.stack(outs)


@paged_attention.register_fake
def _(query, key_cache, value_cache, block_table, seq_lens, hnd):
    return torch.empty_like(query)


def split_like_vllm_0_23(attn_type: str, kv_cache: torch.Tensor):
    """vLLM 0.23.0's fixed AITER split (#43945): blocks-first `unbind(1)`, except that
    cross-attention reads the K/V-first bytes the decoder's backend wrote."""
    if attn_type != "encoder_decoder":
        return kv_cache.unbind(1)
    n, _, bs, h, d = kv_cache.shape
    page = bs * h * d
    kv_first = kv_cache.as_strided((2, n, bs, h, d), (n * page, page, h * d, d, 1))
    return kv_first.unbind(0)


class Layer(torch.nn.Module):
    def __init__(self, name: str, target: str | None = None) -> None:
        super().__init__()
        self.layer_name = name
        self.kv_sharing_target_layer_name = target


def impl_classes() -> dict[str, type]:
    """Fresh classes per test: Guard.wrap patches classes in place."""

    class PagedImpl:
        hnd = False

        def __init__(self, attn_type: str = "decoder") -> None:
            self.attn_type = attn_type

        def _split_kv_cache(self, kv_cache):
            raise NotImplementedError

        def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
            k, v = self._split_kv_cache(kv_cache)
            torch.ops.kvguard_test.reshape_and_cache(key, value, k, v, slot_mapping, self.hnd)

        def forward(self, layer, query, kv_cache, block_table, seq_lens):
            k, v = self._split_kv_cache(kv_cache)
            return torch.ops.kvguard_test.paged_attention(
                query, k, v, block_table, seq_lens, self.hnd
            )

    class KVFirstImpl(PagedImpl):  # (2, N, bs, h, d), like ROCM_ATTN / FlashAttention
        def _split_kv_cache(self, kv_cache):
            return kv_cache.unbind(0)

    class BlocksFirstImpl(PagedImpl):  # (N, 2, bs, h, d), plain unbind(1) as after #43660
        def _split_kv_cache(self, kv_cache):
            return kv_cache.unbind(1)

    class BlocksFirstHNDImpl(BlocksFirstImpl):  # (N, 2, h, bs, d)
        hnd = True

    class AiterFixedImpl(PagedImpl):
        """Modeled on vLLM 0.23.0's fixed AITER split: cross-attention keeps K/V-first bytes."""

        def _split_kv_cache(self, kv_cache):
            return split_like_vllm_0_23(self.attn_type, kv_cache)

    class PackedImpl(PagedImpl):  # (N, bs, h, 2*d): K then V in the last dim
        def _split_kv_cache(self, kv_cache):
            d = kv_cache.shape[-1] // 2
            return kv_cache[..., :d], kv_cache[..., d:]

    class Fp8Impl(BlocksFirstImpl):  # uint8 allocation viewed as fp8 by the impl
        def _split_kv_cache(self, kv_cache):
            k, v = kv_cache.unbind(1)
            return k.view(torch.float8_e4m3fn), v.view(torch.float8_e4m3fn)

    return {
        c.__name__: c
        for c in (
            KVFirstImpl,
            BlocksFirstImpl,
            BlocksFirstHNDImpl,
            AiterFixedImpl,
            PackedImpl,
            Fp8Impl,
        )
    }


class Seat:
    """One layer in a scenario: impl, layer module, its view of the shared buffer, its blocks."""

    def __init__(self, impl, layer, make_view, blocks, bs=BS, h=H, d=D, reads=None):
        self.impl, self.layer, self.make_view, self.blocks = impl, layer, make_view, blocks
        self.bs, self.h, self.d = bs, h, d
        self.reads = reads  # another Seat whose cache this one reads (KV sharing)
        g = torch.Generator().manual_seed(hash(layer.layer_name) % 2**31)
        ntok = len(blocks) * bs - 1
        self.key = torch.randn(ntok, h, d, generator=g)
        self.value = torch.randn(ntok, h, d, generator=g)
        self.query = torch.randn(1, h, d, generator=g)
        slots = [b * bs + o for b in blocks for o in range(bs)][:ntok]
        self.slots = torch.tensor(slots)
        self.block_table = torch.tensor([blocks])
        self.seq_lens = torch.tensor([ntok])


def run(seats: list[Seat], raw: torch.Tensor) -> list[torch.Tensor]:
    """Write every writing layer's tokens, then read every layer: a prefill-then-decode step."""
    views = [s.make_view(raw) for s in seats]
    for s, kv in zip(seats, views, strict=True):
        if s.reads is None:
            s.impl.do_kv_cache_update(s.layer, s.key, s.value, kv, s.slots)
    outs = []
    for s, kv in zip(seats, views, strict=True):
        src = s.reads or s
        outs.append(s.impl.forward(s.layer, s.query, kv, src.block_table, src.seq_lens))
    return outs


def reference(seat: Seat, raw_like: torch.Tensor) -> torch.Tensor:
    """The same layer alone on a private buffer: what a correct run computes."""
    src = seat.reads or seat
    private = torch.zeros_like(raw_like)
    kv = seat.make_view(private)
    k, v = _unwrapped_split(seat.impl, kv)
    torch.ops.kvguard_test.reshape_and_cache(src.key, src.value, k, v, src.slots, seat.impl.hnd)
    return torch.ops.kvguard_test.paged_attention(
        seat.query, k, v, src.block_table, src.seq_lens, seat.impl.hnd
    )


def _unwrapped_split(impl, kv):
    return type(impl)._split_kv_cache(impl, kv)
