"""Packed backend: K and V share the last dim; five spellings of the same halves."""

import torch


class PackedBackend:
    @staticmethod
    def get_impl_cls():
        return PackedImpl

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (num_blocks, block_size, num_kv_heads, 2 * head_size)


class PackedImpl:
    def __init__(self):
        self.head_size = 11

    def views_slices(self, layer, query, kv_cache, metadata):
        key_cache = kv_cache[..., : self.head_size]
        value_cache = kv_cache[..., self.head_size :]
        return key_cache, value_cache

    def views_split(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.split(self.head_size, dim=-1)
        return key_cache, value_cache

    def views_chunk(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.chunk(2, dim=-1)
        return key_cache, value_cache

    def views_narrow(self, layer, query, kv_cache, metadata):
        k = kv_cache.narrow(-1, 0, self.head_size)
        v = kv_cache.narrow(-1, self.head_size, self.head_size)
        return k, v

    def views_torch_split(self, layer, query, kv_cache, metadata):
        return torch.split(kv_cache, self.head_size, -1)
