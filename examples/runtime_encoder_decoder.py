"""Scenario 1 of the runtime guard: decoder self-attention (K/V-first) and cross-attention
(blocks-first, plain unbind(1)) on one KV allocation, as in vLLM #43945.

Run: python examples/runtime_encoder_decoder.py
The cross-attention layer is seen first, so its blocks-first split defines the page map;
the decoder's K/V-first view then disagrees with it. strict raises before the decoder's
write; fix re-strides the decoder's views, and the output matches a correct run bit for
bit.
"""

import torch

from kvguard.runtime import Guard, KVLayoutMismatchError

N, BS, H, D = 8, 4, 2, 8


def write(key_cache, value_cache, key, value, slots):  # reshape_and_cache, in torch
    key_cache[slots // BS, slots % BS] = key
    value_cache[slots // BS, slots % BS] = value


def attend(query, key_cache, value_cache, blocks, n):  # paged attention reference, in torch
    k = key_cache[blocks].reshape(-1, H, D)[:n]
    v = value_cache[blocks].reshape(-1, H, D)[:n]
    return torch.einsum("hn,nhd->hd", torch.einsum("hd,nhd->hn", query, k).softmax(-1), v)


def impl_classes():
    class SelfAttn:  # K/V-first backend
        attn_type = "decoder"

        def forward(self, layer, query, key, value, kv_cache, blocks):
            key_cache, value_cache = kv_cache.unbind(0)
            slots = torch.tensor([b * BS + o for b in blocks for o in range(BS)])
            if key is not None:  # None: decode-only read of what is cached
                write(key_cache, value_cache, key, value, slots)
            return attend(query, key_cache, value_cache, torch.tensor(blocks), len(slots))

    class CrossAttn(SelfAttn):  # blocks-first backend, split as after vLLM #43660
        attn_type = "encoder_decoder"

        def forward(self, layer, query, key, value, kv_cache, blocks):
            key_cache, value_cache = kv_cache.unbind(1)
            slots = torch.tensor([b * BS + o for b in blocks for o in range(BS)])
            if key is not None:  # None: decode-only read of what is cached
                write(key_cache, value_cache, key, value, slots)
            return attend(query, key_cache, value_cache, torch.tensor(blocks), len(slots))

    return SelfAttn, CrossAttn


class Layer:
    def __init__(self, name):
        self.layer_name = name


def step(mode):
    guard = Guard(mode)
    self_cls, cross_cls = (guard.wrap(c) for c in impl_classes())
    raw = torch.zeros(2 * N * BS * H * D)  # one allocation, two views
    torch.manual_seed(0)
    k1, v1 = torch.randn(2 * BS, H, D), torch.randn(2 * BS, H, D)
    k2, v2 = torch.randn(BS, H, D), torch.randn(BS, H, D)
    q = torch.randn(H, D)
    self_attn, cross_attn = self_cls(), cross_cls()
    # The engine owns block 1 for cross-attention and blocks 2, 3 for self-attention.
    self_layer, cross_layer = Layer("decoder.0.self_attn"), Layer("decoder.0.cross_attn")
    cross_attn.forward(cross_layer, q, k2, v2, raw.view(N, 2, BS, H, D), [1])
    out = self_attn.forward(self_layer, q, k1, v1, raw.view(2, N, BS, H, D), [2, 3])
    out_cross = cross_attn.forward(cross_layer, q, None, None, raw.view(N, 2, BS, H, D), [1])
    private = torch.zeros(N, 2, BS, H, D)
    write(private[:, 0], private[:, 1], k2, v2, torch.arange(BS, 2 * BS))
    reference = attend(q, private[:, 0], private[:, 1], torch.tensor([1]), BS)
    return guard, out_cross, out, reference


if __name__ == "__main__":
    _, out, _, ref = step("off")
    print(f"unguarded: cross-attention output equals a correct run: {torch.equal(out, ref)}")
    try:
        step("strict")
    except KVLayoutMismatchError as error:
        print("strict raised before the self-attention write:\n")
        print(error)
    guard, out, _, ref = step("fix")
    print(f"\nfix: cross-attention output equals a correct run: {torch.equal(out, ref)}")
    print(f"fix path: {guard.report()['layers'][1]['fix_path']}")
