"""Splits that disagree: the fixer must leave this file alone and say why."""

import torch


class MixedBackend:
    @staticmethod
    def get_impl_cls():
        return MixedImpl

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (num_blocks, 2, block_size, num_kv_heads, head_size)


class MixedImpl:
    def views_forward(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(1)
        return key_cache, value_cache

    def views_rope(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(0)
        return torch.stack((key_cache, value_cache))


class StaticImpl:
    @staticmethod
    def views_static(layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(0)
        return key_cache, value_cache

    def views_method(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(0)
        return key_cache, value_cache


class LocalImpl:
    def views_local(self, layer, query, kv_cache, metadata):
        hs = self.head_size
        key_cache, value_cache = kv_cache.split(hs, dim=-1)
        return key_cache, value_cache
