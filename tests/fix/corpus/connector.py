"""Out-of-tree code that reads vLLM caches in module-level functions (runtime fix)."""

import os

import torch  # noqa: F401 - the fix adds its import after this block

CHUNK = int(os.environ.get("CHUNK", "4"))


def views_save(layer_name, kv_cache, block_ids, extra):
    key_cache, value_cache = kv_cache.unbind(0)
    return key_cache, value_cache


def views_load(layer_name, paged_kv_cache, block_ids, extra):
    k = paged_kv_cache[:, 0]
    v = paged_kv_cache[:, 1]
    return k, v


def views_packed(layer_name, kv_cache, head_size, extra):
    return kv_cache[..., :head_size]
