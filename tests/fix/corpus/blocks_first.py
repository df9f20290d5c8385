"""Blocks-first backend whose impl splits inline in three spellings of one split."""

import torch


class BlocksFirstBackend:
    @staticmethod
    def get_impl_cls():
        return BlocksFirstImpl

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (num_blocks, 2, block_size, num_kv_heads, head_size)


class BlocksFirstImpl:
    def __init__(self):
        self.head_size = 11

    def views_forward(self, layer, query, kv_cache, metadata):
        # the decode path
        key_cache, value_cache = kv_cache.unbind(1)
        return key_cache, value_cache

    def views_update(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(dim=1)  # keyword form
        return key_cache, value_cache

    def views_rope(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = torch.unbind(
            kv_cache,
            1,
        )
        return (key_cache, value_cache)
