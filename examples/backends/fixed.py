"""The same backend after the fix of vLLM PR #43945, in miniature.

Every split goes through one method; encoder-decoder layers get views re-strided onto
the K/V-first bytes that the decoder layers of PagedBackend already use.
"""

import torch
from base import AttentionType, PagedBackend, PagedImpl


class BlocksFirstBackend(PagedBackend):
    @staticmethod
    def get_impl_cls():
        return BlocksFirstImpl

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (num_blocks, 2, block_size, num_kv_heads, head_size)

    @classmethod
    def supports_attn_type(cls, attn_type):
        return attn_type in (AttentionType.DECODER, AttentionType.ENCODER_DECODER)


class BlocksFirstImpl(PagedImpl):
    def _split_kv_cache(self, kv_cache: torch.Tensor):
        if self.attn_type != AttentionType.ENCODER_DECODER:
            return kv_cache.unbind(1)
        num_blocks, _, block_size, heads, head_size = kv_cache.shape
        page = block_size * heads * head_size
        kv_first = kv_cache.as_strided(
            (2, num_blocks, block_size, heads, head_size),
            (num_blocks * page, page, heads * head_size, head_size, 1),
        )
        return kv_first.unbind(0)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output):
        key_cache, value_cache = self._split_kv_cache(kv_cache)
        output.copy_(query @ key_cache.flatten(0, 1).mT @ value_cache.flatten(0, 1))
        return output

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        key_cache, value_cache = self._split_kv_cache(kv_cache)
        flat = slot_mapping.flatten()
        key_cache.view(-1, *key.shape[1:])[flat] = key
        value_cache.view(-1, *value.shape[1:])[flat] = value
