"""kvguard.vllm: the thin adapter that knows vLLM; the runtime core (kvguard.runtime) never does.

- plugin.py: the `vllm.general_plugins` entry point; returns at once unless KVGUARD_MODE is
  warn, strict or fix, and imports nothing heavy when off.
- hooks.py: wraps every AttentionImpl subclass (also those defined later) and listens at the
  point where vLLM binds caches to layers.
- specs.py: vLLM metadata (KVCacheTensor, get_kv_cache_shape / KVCacheLayout) -> the guard's
  declarations, detected by feature.
- connector.py: KVGUARD_CONNECTOR=verify, the check that what a KV connector loads is what
  this engine stored for those tokens (the logic is kvguard.runtime.loadverify's).
- reports.py: KVGUARD_REPORT=DIR, one JSON per process at exit and at the first violation.

This package imports nothing at import time, so the plugin's off path stays free.
"""
