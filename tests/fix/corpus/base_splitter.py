"""A subclass that splits inline although its base already has a plain splitter."""

import torch


class BaseBackend:
    @staticmethod
    def get_impl_cls():
        return BaseImpl

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_blocks, block_size, num_kv_heads, head_size)


class ChildBackend(BaseBackend):
    @staticmethod
    def get_impl_cls():
        return ChildImpl


class BaseImpl:
    def _split_kv_cache(self, kv_cache: torch.Tensor):
        return kv_cache.unbind(0)

    def views_base(self, layer, query, kv_cache, metadata):
        return self._split_kv_cache(kv_cache)


class ChildImpl(BaseImpl):
    def views_forward(self, layer, query, kv_cache, metadata):
        # select, not kv_cache[0]: indexing also runs on a (K, V) tuple, which the
        # base's tensor-only splitter does not, so that fix would be withheld
        key_cache = kv_cache.select(0, 0)
        value_cache = kv_cache.select(0, 1)
        return key_cache, value_cache

    def views_update(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(0)
        return key_cache, value_cache
