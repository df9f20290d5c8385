"""Torch reference kernels standing in for vLLM's GPU attention kernels on CPU.

Each reference is a torch.library custom op, like the real kernels (the guard judges a
layer's views at the first call that is not a view op). They read and write exactly the
K/V views the impl's own split handed them, in the layout the replaced kernel documents:

    "nhd"       key/value cache (num_blocks, block_size, num_kv_heads, head_size)
                (reshape_and_cache_flash, unified attention)
    "hnd"       (num_blocks, num_kv_heads, block_size, head_size) (CPU attention)
    "x_packed"  key (num_blocks, num_kv_heads, head_size // x, block_size, x) and
                value (num_blocks, num_kv_heads, head_size, block_size) (ROCm paged attention)

Attention reads every key and value of a sequence back from the paged cache (the tokens of
the current step included, which the impl's cache update wrote first), so bytes that a
wrong split put anywhere else come back as wrong outputs.
"""

from __future__ import annotations

import torch

LAYOUTS = ("nhd", "hnd", "x_packed")


def _index(blocks: torch.Tensor, offsets: torch.Tensor, kind: str, is_key: bool):
    """(blocks, offsets) of one token each -> an index selecting (tokens, heads, ...)."""
    if kind == "nhd":
        return (blocks, offsets)
    if kind == "hnd":
        return (blocks, slice(None), offsets)
    if is_key:  # (B, H, hs // x, N, x)
        return (blocks, slice(None), slice(None), offsets, slice(None))
    return (blocks, slice(None), slice(None), offsets)  # (B, H, hs, N)


def _block_size(cache: torch.Tensor, kind: str) -> int:
    return cache.shape[{"nhd": 1, "hnd": 2, "x_packed": 3}[kind]]


def _typed(cache: torch.Tensor, fp8: bool) -> torch.Tensor:
    """An fp8 cache may arrive as its uint8 bytes (vLLM's CPU kernels take it that way)."""
    return cache.view(torch.float8_e4m3fn) if fp8 and cache.dtype == torch.uint8 else cache


def _store(cache: torch.Tensor, x: torch.Tensor, slots: torch.Tensor, kind: str, is_key: bool):
    n = _block_size(cache, kind)
    idx = _index(slots // n, slots % n, kind, is_key)
    if kind == "x_packed" and is_key:
        x = x.reshape(x.shape[0], x.shape[1], cache.shape[2], cache.shape[4])
    cache[idx] = x.to(cache.dtype)


def _gather(cache: torch.Tensor, block_row: torch.Tensor, length: int, kind: str, is_key):
    """The first `length` tokens of one sequence as (length, heads, head_size) float32."""
    n = _block_size(cache, kind)
    pos = torch.arange(length)
    x = cache[_index(block_row[pos // n], pos % n, kind, is_key)]
    return x.reshape(length, x.shape[1], -1).float()


@torch.library.custom_op("kvguard_vllm_test::write_kv", mutates_args=("key_cache", "value_cache"))
def write_kv(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    kind: str,
    fp8: bool,
) -> None:
    key_cache, value_cache = _typed(key_cache, fp8), _typed(value_cache, fp8)
    keep = slot_mapping >= 0  # vLLM pads with -1
    _store(key_cache, key[keep], slot_mapping[keep], kind, True)
    _store(value_cache, value[keep], slot_mapping[keep], kind, False)


@torch.library.custom_op("kvguard_vllm_test::paged_attention", mutates_args=("out",))
def paged_attention(
    query: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    out: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seq_lens: torch.Tensor,
    block_table: torch.Tensor,
    scale: float,
    causal: bool,
    kind: str,
    fp8: bool,
) -> None:
    key_cache, value_cache = _typed(key_cache, fp8), _typed(value_cache, fp8)
    for i in range(seq_lens.shape[0]):
        q0, q1 = int(cu_seqlens_q[i]), int(cu_seqlens_q[i + 1])
        length = int(seq_lens[i])
        k = _gather(key_cache, block_table[i], length, kind, True)
        v = _gather(value_cache, block_table[i], length, kind, False)
        q = query[q0:q1].float()
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        scores = torch.einsum("qhd,khd->hqk", q, k) * scale
        if causal:  # query j sits at position length - (q1 - q0) + j
            qpos = torch.arange(length - (q1 - q0), length)[:, None]
            scores = scores.masked_fill(torch.arange(length)[None, :] > qpos, float("-inf"))
        res = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)
        out[q0:q1] = res.reshape(out[q0:q1].shape).to(out.dtype)
