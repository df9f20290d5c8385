"""Tiny model directories built locally: a config, seeded random weights and, for Whisper, a
tokenizer. Nothing is downloaded.

The weights are transformers' own random initialisation of the model class the config names
(so the tensor names are the ones vLLM's loader expects), saved as safetensors. Unlike vLLM's
dummy loader, they make greedy outputs vary from token to token and prompt to prompt, so that
"outputs are equal" says something. Head dims are 64 because the CPU attention backend
supports {32, 64, 80, ...}.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

VOCAB = 256
SEED = 0


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


def _write(path: Path, config: dict, init_std: float | None = None) -> Path:
    """The config, then random weights for it; init_std overrides the config's init scale."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(config, indent=1))
    _random_weights(path, init_std)
    return path


def _random_weights(path: Path, init_std: float | None) -> None:
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    if init_std is not None:
        config.initializer_range = config.init_std = init_std
    model_class = getattr(transformers, config.architectures[0])
    torch.manual_seed(SEED)
    model = model_class(config)
    # save_pretrained also writes its own config and generation config: keep only the weights
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        shutil.copy(Path(tmp) / "model.safetensors", path / "model.safetensors")


BUILDERS = {"llama": llama, "gemma3": gemma3}


WHISPER_SPECIALS = [
    "<|endoftext|>",
    "<|startoftranscript|>",
    "<|en|>",
    "<|transcribe|>",
    "<|translate|>",
    "<|notimestamps|>",
    "<|startofprev|>",
    "<|nocaptions|>",
]


def whisper(path: Path) -> Path:
    """Encoder-decoder: each decoder layer's self- and cross-attention share one storage.

    The tokenizer (a byte-level vocabulary, no merges) and the feature extractor are written
    here with transformers' own classes, so vLLM's Whisper processor finds them locally.
    """
    from transformers import WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer

    path.mkdir(parents=True, exist_ok=True)
    byte_tokens = [chr(c) for c in range(ord("!"), ord("~") + 1)]
    byte_tokens += [chr(c) for c in range(256, 256 + 256 - len(byte_tokens))]
    vocab = {tok: i for i, tok in enumerate(byte_tokens)}
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = WhisperTokenizer(
        str(path / "vocab.json"), str(path / "merges.txt"), unk_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": WHISPER_SPECIALS})
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in WHISPER_SPECIALS}
    # 2-second windows: 100 encoder positions instead of 1500 keep the engine's budgets small
    features = WhisperFeatureExtractor(feature_size=80, chunk_length=2)
    processor = WhisperProcessor(features, tokenizer)
    processor.save_pretrained(str(path))
    vocab_size = len(tokenizer)
    return _write(
        path,
        {
            "architectures": ["WhisperForConditionalGeneration"],
            "model_type": "whisper",
            "d_model": 128,
            "encoder_layers": 1,
            "decoder_layers": 2,
            "encoder_attention_heads": 2,
            "decoder_attention_heads": 2,
            "encoder_ffn_dim": 256,
            "decoder_ffn_dim": 256,
            "num_mel_bins": 80,
            "max_source_positions": 100,
            "max_target_positions": 128,
            "vocab_size": vocab_size,
            "pad_token_id": ids["<|endoftext|>"],
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|endoftext|>"],
            "decoder_start_token_id": ids["<|startoftranscript|>"],
            "torch_dtype": "float32",
            "is_encoder_decoder": True,
        },
        # transformers' default (0.02) leaves the decoder repeating one token whatever the audio
        init_std=0.5,
    )


BUILDERS["whisper"] = whisper
