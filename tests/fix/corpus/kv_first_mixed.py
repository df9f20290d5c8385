"""K/V-first backend; its impl mixes every split form that gives the same two views."""

import torch  # noqa: F401 - the generated splitter annotates with it


class KvFirstBackend:
    @staticmethod
    def get_impl_cls():
        return KvFirstImpl

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_blocks, block_size, num_kv_heads, head_size)


class KvFirstImpl:
    """Docstring first, no __init__: the splitter goes before the first method."""

    scale = 1.0

    def views_unbind(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.unbind(0)
        return key_cache, value_cache

    def views_pair(self, layer, query, kv_cache, metadata):
        key_cache = kv_cache[0]
        # V comes second
        value_cache = kv_cache[1]
        return key_cache, value_cache

    def views_reversed_pair(self, layer, query, kv_cache, metadata):
        v = kv_cache[1]
        k = kv_cache[0]  # K after V
        return k, v

    def views_iterate(self, layer, query, kv_cache, metadata):
        k, v = kv_cache
        return k, v

    def views_select_apart(self, layer, query, kv_cache, metadata):
        k = kv_cache.select(0, 0)
        scale = self.scale * 2
        v = kv_cache.select(0, 1)
        return k, v, scale

    def views_inline(self, layer, query, kv_cache, metadata):
        return tuple(kv_cache.unbind(0)), dict(key=kv_cache[0], value=kv_cache[-1])

    def views_alias(self, layer, query, kv_cache, metadata):
        kv = kv_cache
        key_cache, value_cache = kv.unbind(0)
        return key_cache, value_cache


class TransposedImpl:
    def views_a(self, layer, query, kv_cache, metadata):
        key_cache, value_cache = kv_cache.transpose(0, 1).unbind(1)
        return key_cache, value_cache

    def views_b(self, layer, query, kv_cache, metadata):
        k, v = kv_cache.transpose(0, 1).unbind(1)
        return k, v
