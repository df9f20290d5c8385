"""Tiny model directories built locally: a config (and, for Whisper, a tokenizer) only.

Weights come from vLLM's dummy loader, so nothing is downloaded. Head dims are 64 because
the CPU attention backend supports {32, 64, 80, ...}.
"""

from __future__ import annotations

import json
from pathlib import Path

VOCAB = 256


def llama(path: Path) -> Path:
    return _write(
        path,
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "num_hidden_layers": 2,
            "vocab_size": VOCAB,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-6,
            "torch_dtype": "float32",
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
    )


def gemma3(path: Path) -> Path:
    """Two sliding-window layers per full layer: three cache groups over one buffer."""
    return _write(
        path,
        {
            "architectures": ["Gemma3ForCausalLM"],
            "model_type": "gemma3_text",
            "hidden_size": 128,
            "intermediate_size": 256,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 64,
            "num_hidden_layers": 6,
            "layer_types": ["sliding_attention", "sliding_attention", "full_attention"] * 2,
            "sliding_window": 32,
            "vocab_size": VOCAB,
            "max_position_embeddings": 256,
            "rms_norm_eps": 1e-6,
            "query_pre_attn_scalar": 64,
            "torch_dtype": "float32",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        },
    )


def _write(path: Path, config: dict) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    return path


BUILDERS = {"llama": llama, "gemma3": gemma3}
