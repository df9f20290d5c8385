"""A paged-attention backend in plain torch, registered through vLLM's own override mechanism.

`register()` is a `vllm.general_plugins` entry point (the tests write a dist-info for it on
PYTHONPATH, so vLLM loads it in every process, like any third-party plugin). It overrides the
CPU backend with `register_backend(AttentionBackendEnum.CPU_ATTN, ...)`. KVGUARD_TEST_SPLIT
chooses which layers read their cache with the wrong split:

- "packed": none. K and V are the two halves of each token's content; every byte of block b
  stays in page b of vLLM's `KVCacheTensor` page map (the correct backend);
- "kv_first": every layer reads its cache as K/V-first `(2, num_blocks, heads, block_size,
  d)`, the assumption behind vLLM #43660: block b's K lands in page b/2, its V half an
  allocation away. All layers agree on that wrong map, so nothing is overwritten;
- "kv_first_sliding": only the sliding-window layers (Gemma3) read K/V-first, while the
  full-attention layers whose caches overlay the same bytes read them packed;
- "kv_first_cross": only cross-attention (Whisper) reads K/V-first, beside self-attention of
  the same decoder layer, which vLLM binds to the very same bytes;
- "kv_first_sliding_forward": as "kv_first_sliding", but only `forward` reads K/V-first; the
  cache update writes packed, correctly (only a judgement of `forward` can catch it).

In the last two, a wrong layer's blocks land in pages the other layers own: outputs change.
Encoder self-attention never touches the paged cache and runs vLLM's own CPU kernel.
Every split computes attention with the same torch ops, so a correct one is bit-identical.
"""

from __future__ import annotations

import os

import torch
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

SPLIT_ENV = "KVGUARD_TEST_SPLIT"
ENCODER_TYPES = ("encoder", "encoder_only")


class TorchPagedImpl(CPUAttentionBackendImpl):
    """Writes and reads the paged cache with torch indexing; `_split_kv_cache` picks the bytes."""

    def _reads_kv_first(self, method: str) -> bool:
        split = os.environ.get(SPLIT_ENV)
        if split == "kv_first_sliding":
            return self.sliding_window > 0
        if split == "kv_first_sliding_forward":
            return self.sliding_window > 0 and method == "forward"
        if split == "kv_first_cross":
            return self.attn_type == "encoder_decoder"
        return split == "kv_first"

    def _split_kv_cache(
        self, kv_cache: torch.Tensor, method: str
    ) -> tuple[torch.Tensor, torch.Tensor]:
        n, h, bs, c = kv_cache.shape
        if self._reads_kv_first(method):
            key_cache, value_cache = kv_cache.view(2, n, h, bs, c // 2).unbind(0)
            return key_cache, value_cache
        return kv_cache[..., : c // 2], kv_cache[..., c // 2 :]

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        if self.attn_type in ENCODER_TYPES:
            return
        key_cache, value_cache = self._split_kv_cache(kv_cache, "do_kv_cache_update")
        block_size = key_cache.shape[2]
        slots = slot_mapping[: key.shape[0]]
        keep = slots >= 0
        slots = slots[keep]
        blocks, offsets = slots // block_size, slots % block_size
        key_cache[blocks, :, offsets] = key[: keep.shape[0]][keep].to(key_cache.dtype)
        value_cache[blocks, :, offsets] = value[: keep.shape[0]][keep].to(value_cache.dtype)

    def forward(
        self,
        layer,
        query,
        key,
        value,
        kv_cache,
        attn_metadata,
        output,
        output_scale=None,
        output_block_scale=None,
    ):
        if attn_metadata is None:  # warm-up
            return output
        if self.attn_type in ENCODER_TYPES:
            return super().forward(layer, query, key, value, kv_cache, attn_metadata, output)
        key_cache, value_cache = self._split_kv_cache(kv_cache, "forward")
        block_size = key_cache.shape[2]
        starts = attn_metadata.query_start_loc.tolist()
        for i, seq_len in enumerate(attn_metadata.seq_lens.tolist()):
            q = query[starts[i] : starts[i + 1]].float()
            blocks = attn_metadata.block_table[i, : -(-seq_len // block_size)]
            k = _tokens(key_cache[blocks], seq_len, self.num_heads)
            v = _tokens(value_cache[blocks], seq_len, self.num_heads)
            scores = torch.einsum("qhd,khd->hqk", q, k) * self.scale
            if attn_metadata.causal:
                q_pos = torch.arange(seq_len - q.shape[0], seq_len).unsqueeze(1)
                hidden = torch.arange(seq_len) > q_pos
                if self.sliding_window > 0:
                    hidden |= torch.arange(seq_len) <= q_pos - self.sliding_window
                scores = scores.masked_fill(hidden, float("-inf"))
            out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
            output[starts[i] : starts[i + 1]] = out.to(output.dtype)
        return output


def _tokens(paged: torch.Tensor, seq_len: int, num_heads: int) -> torch.Tensor:
    """(blocks, kv_heads, block_size, d) -> (seq_len, num_heads, d), float."""
    b, h, bs, d = paged.shape
    tokens = paged.permute(0, 2, 1, 3).reshape(b * bs, h, d)[:seq_len].float()
    return tokens.repeat_interleave(num_heads // h, dim=1)


class TorchPagedBackend(CPUAttentionBackend):
    @staticmethod
    def get_impl_cls() -> type[TorchPagedImpl]:
        return TorchPagedImpl


def register() -> None:
    from vllm.v1.attention.backends.registry import AttentionBackendEnum, register_backend

    register_backend(AttentionBackendEnum.CPU_ATTN, f"{__name__}.TorchPagedBackend")
