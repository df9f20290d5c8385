"""KV connectors for the tests (never in the package): vLLM's ExampleConnector with the
layout guessed instead of taken from the engine, the way LMCache #4463 went wrong.

- KVFirstGuessConnector reads the blocks-first cache as if it were K/V-first: the whole
  buffer as (2, num_blocks, page / 2), K of block b at [0, b] and V at [1, b]. Those are
  halves of other blocks' pages; it stores them, and restores them there: the request's own
  blocks never receive its prefix, and other blocks are overwritten.
- SwappedLoadConnector stores K and V by the engine's description (describe_kv_cache) and
  restores them the other way round, as a restore path written for another layout would.
"""

from __future__ import annotations

from typing import Any

import safetensors.torch
import torch
from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import ExampleConnector

from kvguard.runtime import describe_kv_cache


def _blocks(request, block_size: int) -> torch.Tensor:
    return torch.unique_consecutive(request.slot_mapping // block_size)


def _kv_first(kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if not kv.is_contiguous():
        raise ValueError("the test connector expects a contiguous cache")
    flat = kv.view(2, kv.shape[0], -1)
    return flat[0], flat[1]


def _canonical(kv: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    return describe_kv_cache(kv, layer=layer).split(kv)


class _GuessingConnector(ExampleConnector):
    def _planes(self, kv: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _restore(self, kv: torch.Tensor, layer: str, blocks, k, v) -> None:
        key, value = self._planes(kv, layer)
        key[blocks] = k
        value[blocks] = v

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata, **kw: Any):
        for request in self._get_connector_metadata().requests:
            if not request.is_store:
                continue
            key, value = self._planes(kv_layer, layer_name)
            blocks = _blocks(request, self._block_size)
            name = self._generate_filename_debug(layer_name, request.token_ids, request.mm_hashes)
            safetensors.torch.save_file(
                {"k": key[blocks].contiguous(), "v": value[blocks].contiguous()}, name
            )

    def start_load_kv(self, forward_context, **kw: Any) -> None:
        for request in self._get_connector_metadata().requests:
            if request.is_store:
                continue
            blocks = _blocks(request, self._block_size)
            for layer_name, layer in forward_context.no_compile_layers.items():
                kv = getattr(layer, "kv_cache", None)
                if not isinstance(kv, torch.Tensor):
                    continue
                name = self._generate_filename_debug(
                    layer_name, request.token_ids, request.mm_hashes
                )
                data = safetensors.torch.load_file(name)
                self._restore(kv, layer_name, blocks, data["k"], data["v"])


class KVFirstGuessConnector(_GuessingConnector):
    def _planes(self, kv, layer):
        return _kv_first(kv)


class SwappedLoadConnector(_GuessingConnector):
    def _planes(self, kv, layer):
        return _canonical(kv, layer)

    def _restore(self, kv, layer, blocks, k, v) -> None:
        key, value = self._planes(kv, layer)
        key[blocks] = v
        value[blocks] = k
