"""The connector guard's core on synthetic caches: a faithful copy verifies clean, and each
way a connector can misread a layout is named (kvguard/runtime/blockprints.py, loadverify.py).
"""

from __future__ import annotations

import json

import pytest
import torch

from kvguard.runtime.load_records import LoadMismatch
from kvguard.runtime.loadverify import LoadVerifier

BLOCKS, T, H, D = 16, 4, 2, 8
SRC, DST = [1, 2, 3], [9, 10, 11]
KEYS = ["a", "b", "c"]


def _cache() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    kv = torch.randn(BLOCKS, 2, T, H, D)  # blocks-first, K/V second
    return kv, kv[:, 0], kv[:, 1]


def _verify(load) -> list[LoadMismatch]:
    kv, k, v = _cache()
    verifier = LoadVerifier()
    verifier.store("layer.0", k, v, SRC, KEYS)
    kv[DST] = 0
    load(kv)
    verifier.check("layer.0", "req-2", k, v, DST, KEYS, connector="TestConnector")
    found = verifier.settle()
    assert verifier.verified == 3 and verifier.unverified == 0
    return found


def test_a_faithful_copy_verifies_clean():
    def load(kv):
        kv[DST] = kv[SRC].clone()

    assert _verify(load) == []


def test_a_recomputation_within_rounding_verifies_clean():
    def load(kv):
        kv[DST] = kv[SRC] * (1 + 1e-7)

    assert _verify(load) == []


def _kind(found: list[LoadMismatch]) -> tuple[str, int]:
    assert len(found) == 1, found
    m = found[0]
    assert m.layer == "layer.0" and m.request == "req-2"
    return m.kind, m.shift


def test_k_and_v_swapped():
    def load(kv):
        kv[DST] = kv[SRC].flip(1)

    found = _verify(load)
    assert _kind(found) == ("swapped", 0)
    assert found[0].block_ids == DST
    assert "K and V swapped" in found[0].summary()
    assert "describe_kv_cache" in found[0].summary()


def test_tokens_and_heads_transposed():
    def load(kv):  # (T, H, D) bytes written as if (H, T, D)
        src = kv[SRC]
        kv[DST] = src.permute(0, 1, 3, 2, 4).reshape(src.shape)

    assert _kind(_verify(load)) == ("transposed", 0)


def test_heads_reordered():
    def load(kv):
        kv[DST] = kv[SRC].flip(3)

    assert _kind(_verify(load)) == ("heads_reordered", 0)


def test_shifted_by_one_block():
    def load(kv):  # block j gets the content of block j + 1 of the prefix
        kv[DST[:2]] = kv[SRC[1:]].clone()

    found = _verify(load)
    assert _kind(found) == ("shifted_blocks", 1)
    assert found[0].block_ids == DST  # the last one got nothing: still zero, also wrong


def test_shifted_by_tokens():
    def load(kv):  # the whole prefix written one token late
        flat = kv[SRC].transpose(0, 1).reshape(2, 3 * T, H, D)
        late = torch.cat([torch.zeros(2, 1, H, D), flat[:, :-1]], dim=1)
        kv[DST] = late.reshape(2, 3, T, H, D).transpose(0, 1)

    assert _kind(_verify(load)) == ("shifted_tokens", -1)


def test_nothing_written():
    assert _kind(_verify(lambda kv: None)) == ("zeros", 0)


def test_other_bytes():
    def load(kv):  # a blocks-first cache read as K/V-first: halves of other blocks' pages
        flat = kv.view(2, BLOCKS, -1)
        kv[DST] = torch.stack([flat[0, SRC], flat[1, SRC]], 1).view(3, 2, T, H, D)

    found = _verify(load)
    assert _kind(found) == ("different", 0)
    assert len(found[0].blocks) == 3 and found[0].checked_blocks == 3


def test_only_v_differs_is_noted():
    def load(kv):
        kv[DST] = kv[SRC].clone()
        kv[DST, 1] = torch.randn(3, T, H, D)

    found = _verify(load)
    assert _kind(found) == ("different", 0)
    assert "only V differs" in str(found[0])


def test_unknown_tokens_are_counted_unverified_not_flagged():
    kv, k, v = _cache()
    verifier = LoadVerifier()
    verifier.store("layer.0", k, v, SRC[:1], KEYS[:1])
    kv[DST] = kv[SRC].clone()
    verifier.check("layer.0", "r", k, v, DST, KEYS)
    assert verifier.settle() == []
    assert (verifier.verified, verifier.unverified) == (1, 2)


def test_first_fingerprint_per_key_is_kept():
    _, k, v = _cache()
    verifier = LoadVerifier()
    verifier.store("layer.0", k, v, [1], ["a"])
    verifier.store("layer.0", k, v, [5], ["a"])  # a second computation: not recorded
    assert verifier.stored == 1
    verifier.check("layer.0", "r", k, v, [1], ["a"])
    assert verifier.settle() == []


def test_fingerprints_are_bounded():
    _, k, v = _cache()
    verifier = LoadVerifier(max_prints=2)
    verifier.store("layer.0", k, v, [1, 2, 3], ["a", "b", "c"])
    assert not verifier.has("layer.0", "a") and verifier.has("layer.0", "c")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_caches(dtype):
    kv, k, v = _cache()
    kv = kv.to(dtype)
    k, v = kv[:, 0], kv[:, 1]
    verifier = LoadVerifier()
    verifier.store("l", k, v, SRC, KEYS)
    kv[DST] = kv[SRC].flip(1)
    verifier.check("l", "r", k, v, DST, KEYS)
    assert [m.kind for m in verifier.settle()] == ["swapped"]


def test_mismatch_round_trips_through_json():
    def load(kv):
        kv[DST] = kv[SRC].flip(1)

    m = _verify(load)[0]
    again = LoadMismatch.from_json(json.loads(json.dumps(m.to_json())))
    assert again == m and str(again) == str(m)
