"""The state of vLLM's ROCm AITER unified backend right after PR #43660, in miniature.

The subclass moved K/V to axis 1 (blocks-first) and splits inline in three methods. Its
cross-attention layers then read, for block b, bytes that the K/V-first decoder layers of
PagedBackend wrote for another block: garbage output, no error.
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
    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output):
        key_cache, value_cache = kv_cache.unbind(1)
        output.copy_(query @ key_cache.flatten(0, 1).mT @ value_cache.flatten(0, 1))
        return output

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        key_cache, value_cache = kv_cache.unbind(1)
        flat = slot_mapping.flatten()
        key_cache.view(-1, *key.shape[1:])[flat] = key
        value_cache.view(-1, *value.shape[1:])[flat] = value

    def do_rope_and_kv_cache_update(self, layer, query, key, value, kv_cache, slot_mapping):
        key_cache, value_cache = kv_cache.unbind(0)
        return torch.stack((key_cache, value_cache))
