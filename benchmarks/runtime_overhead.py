"""Runtime guard cost: steady-state overhead per guarded call, and first-sight discovery per layer.

Targets (issue #3): <= 2 us per call over the bare call, <= 1 ms discovery per layer.
Run: python benchmarks/runtime_overhead.py
"""

from __future__ import annotations

import logging
import time

import torch

from kvguard.runtime import Guard

N, BS, H, D = 1024, 16, 8, 128
LAYERS = 64
logging.getLogger("kvguard").setLevel(logging.ERROR)


@torch.library.custom_op("kvguard_bench::kernel", mutates_args=())
def kernel(key_cache: torch.Tensor, value_cache: torch.Tensor) -> None:
    """Stands in for an attention kernel: the guard's cost is what is measured, not this."""


def make_impl_class():
    class Impl:
        def __init__(self, attn_type: str) -> None:
            self.attn_type = attn_type

        def forward(self, layer, query, kv_cache, output):
            if self.attn_type == "encoder_decoder":  # blocks-first view on K/V-first bytes
                k, v = kv_cache.unbind(1)
            else:
                k, v = kv_cache.unbind(0)
            torch.ops.kvguard_bench.kernel(k, v)
            return output

    return Impl


class Layer:
    def __init__(self, name: str) -> None:
        self.layer_name = name


def per_call_us(fn, n: int = 20000) -> float:
    for _ in range(1000):
        fn()
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> None:
    raw = torch.zeros(2 * N * BS * H * D, dtype=torch.bfloat16)
    kv_first = raw.view(2, N, BS, H, D)
    blocks_first = raw.view(N, 2, BS, H, D)
    q = out = torch.zeros(1)

    bare_cls = make_impl_class()
    bare, layer = bare_cls("decoder"), Layer("l.0")
    bare_us = per_call_us(lambda: bare.forward(layer, q, kv_first, out))
    print(f"bare call (split + kernel op):          {bare_us:7.3f} us")

    for mode in ("off", "warn", "strict", "fix"):
        cls = Guard(mode).wrap(make_impl_class())
        dec, cross = cls("decoder"), cls("encoder_decoder")
        dec.forward(Layer("dec.self"), q, kv_first, out)
        if mode == "fix":  # the cross layer needs re-striding: measure the fixed path
            cross_layer = Layer("dec.cross")
            cross.forward(cross_layer, q, blocks_first, out)
            fixed_bare_us = per_call_us(lambda: bare.forward(layer, q, kv_first, out))
            us = per_call_us(lambda c=cross, lyr=cross_layer: c.forward(lyr, q, blocks_first, out))
            print(
                f"guarded, mode fix (re-strided layer):   {us:7.3f} us  overhead "
                f"{us - fixed_bare_us:6.3f} us  ratio {us / fixed_bare_us:5.3f}"
            )
        dec_layer = Layer("dec.self")
        dec.forward(dec_layer, q, kv_first, out)
        us = per_call_us(lambda d=dec, lyr=dec_layer: d.forward(lyr, q, kv_first, out))
        print(
            f"guarded, mode {mode:<6} (clean layer):    {us:7.3f} us  overhead "
            f"{us - bare_us:6.3f} us  ratio {us / bare_us:5.3f}"
        )

    # First sight: LAYERS fresh layers, each discovered on its first call.
    for mode in ("warn", "fix"):
        cls = Guard(mode).wrap(make_impl_class())
        impls = [cls("decoder") for _ in range(LAYERS)]
        layers = [Layer(f"layer.{i}") for i in range(LAYERS)]
        t0 = time.perf_counter()
        for impl, lyr in zip(impls, layers, strict=True):
            impl.forward(lyr, q, kv_first, out)
        first = (time.perf_counter() - t0) / LAYERS
        print(
            f"first-sight discovery, mode {mode:<5}:    {first * 1e3:7.3f} ms per layer "
            f"({(first * 1e6 - bare_us) / 1e3:6.3f} ms over the bare call)"
        )
    cls = Guard("fix").wrap(make_impl_class())
    dec = cls("decoder")
    dec.forward(Layer("dec.self"), q, kv_first, out)
    t0 = time.perf_counter()
    crosses = [cls("encoder_decoder") for _ in range(LAYERS)]
    for i, c in enumerate(crosses):
        c.forward(Layer(f"cross.{i}"), q, blocks_first, out)
    first = (time.perf_counter() - t0) / LAYERS
    print(f"first-sight discovery + fix solve:      {first * 1e3:7.3f} ms per layer")


if __name__ == "__main__":
    main()
