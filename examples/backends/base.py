"""A decoder backend whose cache view is K/V-first: (2, num_blocks, block_size, heads, head_size).

Layers of this backend and of the backends in buggy.py / fixed.py share one raw KV
allocation when a model mixes decoder self-attention and encoder-decoder cross-attention.
"""

import torch


class AttentionType:
    DECODER = "decoder"
    ENCODER_DECODER = "encoder_decoder"


class AttentionBackend:
    pass


class AttentionImpl:
    pass


class PagedBackend(AttentionBackend):
    @staticmethod
    def get_impl_cls():
        return PagedImpl

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @classmethod
    def supports_attn_type(cls, attn_type):
        return attn_type == AttentionType.DECODER


class PagedImpl(AttentionImpl):
    def __init__(self, attn_type=AttentionType.DECODER):
        self.attn_type = attn_type

    def _split_kv_cache(self, kv_cache: torch.Tensor):
        return kv_cache.unbind(0)

    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output):
        key_cache, value_cache = self._split_kv_cache(kv_cache)
        output.copy_(query @ key_cache.flatten(0, 1).mT @ value_cache.flatten(0, 1))
        return output
