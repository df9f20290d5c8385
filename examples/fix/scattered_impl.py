"""An attention impl that splits its KV cache inline in two methods (KVG001 x3, KVG004).

`kvguard check --fix` routes every split through one generated `_split_kv_cache`:
copy this folder first (`cp -r examples/fix /tmp/kvguard-fix`), then
`kvguard check --fix /tmp/kvguard-fix` and `git diff --no-index examples/fix /tmp/kvguard-fix`.
"""

import torch


class ScatteredBackend:
    @staticmethod
    def get_impl_cls():
        return ScatteredImpl

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_blocks, block_size, num_kv_heads, head_size)


class ScatteredImpl:
    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output):
        key_cache, value_cache = kv_cache.unbind(0)
        return torch.ops.example.paged_attention(query, key_cache, value_cache, output)

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        key_cache = kv_cache[0]
        value_cache = kv_cache[1]
        torch.ops.example.reshape_and_cache(key, value, key_cache, value_cache, slot_mapping)
