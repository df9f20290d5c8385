"""specs.declared_layout: the per-layer view vLLM binds, for both declaration APIs."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")


def test_kvcachelayout_api_gives_the_view_the_cpu_engine_binds():
    from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

    from kvguard.vllm.specs import declared_layout, layout_api

    view = declared_layout(
        CPUAttentionBackend,
        num_blocks=512,
        block_size=128,
        num_kv_heads=1,
        head_size=64,
        dtype=torch.float32,
    )

    assert layout_api(CPUAttentionBackend) == "KVCacheLayout"
    # what the engine bound to each Llama layer in test_engine_clean (LBHNC: heads outside
    # tokens; a token's content is K then V, 2 * 64 elements)
    assert tuple(view.shape) == (512, 1, 128, 128)
    assert view.stride() == (16384, 16384, 128, 1)
    assert view.dtype == torch.float32


def test_get_kv_cache_shape_api_applies_the_stride_order():
    from kvguard.vllm.specs import declared_layout, layout_api

    class KVFirstHNDBackend:  # the 0.2x declaration style, as FlashInfer's HND order had it
        @staticmethod
        def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
            return (2, num_blocks, block_size, num_kv_heads, head_size)

        @staticmethod
        def get_kv_cache_stride_order():
            return (0, 1, 3, 2, 4)

    view = declared_layout(
        KVFirstHNDBackend, num_blocks=4, block_size=16, num_kv_heads=2, head_size=8
    )

    assert layout_api(KVFirstHNDBackend) == "get_kv_cache_shape"
    assert tuple(view.shape) == (2, 4, 16, 2, 8)
    # physically (2, blocks, heads, tokens, d): tokens stride d, heads stride tokens * d
    assert view.stride() == (4 * 2 * 16 * 8, 2 * 16 * 8, 8, 16 * 8, 1)


def test_a_backend_with_no_declaration_is_refused_in_one_line():
    from kvguard.vllm.specs import layout_api

    class NoShapeBackend:
        @staticmethod
        def get_kv_cache_shape(*args):
            raise NotImplementedError

    import vllm.v1.kv_cache_interface as kvi

    if hasattr(kvi, "create_kv_cache_views"):
        assert layout_api(NoShapeBackend) == "KVCacheLayout"
    else:
        with pytest.raises(TypeError, match="declares no KV-cache shape"):
            layout_api(NoShapeBackend)
