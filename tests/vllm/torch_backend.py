"""A paged-attention backend in plain torch, registered through vLLM's own override mechanism.

`register()` is a `vllm.general_plugins` entry point (the tests write a dist-info for it on
PYTHONPATH, so vLLM loads it in every process, like any third-party plugin). It overrides the
CPU backend with `register_backend(AttentionBackendEnum.CPU_ATTN, ...)`, choosing by
KVGUARD_TEST_SPLIT which split the impl uses:

- "packed": K and V are the two halves of each token's content; every byte of block b stays
  in page b of vLLM's `KVCacheTensor` page map (the correct backend);
- "kv_first": the layer's cache read as K/V-first `(2, num_blocks, heads, block_size, d)`, the
  assumption behind vLLM #43660: block b's V lands half an allocation away from page b.

Both compute attention with the same torch ops, so a correct split gives bit-identical output.
"""

from __future__ import annotations

import os

import torch
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

SPLIT_ENV = "KVGUARD_TEST_SPLIT"


class TorchPagedImpl(CPUAttentionBackendImpl):
    """Writes and reads the paged cache with torch indexing; `_split_kv_cache` picks the bytes."""

    def _split_kv_cache(self, kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, h, bs, c = kv_cache.shape
        if os.environ.get(SPLIT_ENV) == "kv_first":
            key_cache, value_cache = kv_cache.view(2, n, h, bs, c // 2).unbind(0)
            return key_cache, value_cache
        return kv_cache[..., : c // 2], kv_cache[..., c // 2 :]

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping) -> None:
        if self.attn_type in ("encoder", "encoder_only"):
            return
        key_cache, value_cache = self._split_kv_cache(kv_cache)
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
        key_cache, value_cache = self._split_kv_cache(kv_cache)
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
                scores = scores.masked_fill(torch.arange(seq_len) > q_pos, float("-inf"))
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
