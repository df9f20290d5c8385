"""The guard inside CUDA graph capture and replay, on vLLM's Triton kernels: a decode step of
an encoder-decoder layer pair, after vLLM-like warm-up (one dummy run per capture size, no
metadata, some inside a graph capture, as piecewise capture runs them), captured with the
guard active (warn on a clean configuration, fix on the broken one), replayed many times on
fresh inputs, outputs checked against SDPA; the steady-state eager call and the capture run
under torch.cuda.set_sync_debug_mode("error")."""

from __future__ import annotations

import pytest
import torch

from kvguard.runtime import Guard

from .harness import decode_sizes, encoder_decoder, impl_classes, rel_error

pytestmark = [pytest.mark.gpu, pytest.mark.cuda_only]

REPLAYS = 100
WARM_UP_SIZES = 67  # vLLM's default number of capture sizes
CHECK_EVERY = 10
BF16_TOL = 2e-2


@pytest.mark.parametrize("batch", [8, 32])  # 8 takes the split-K (3D) kernel, 32 the 2D one
@pytest.mark.parametrize("mode", ["warn", "fix"])
def test_guarded_decode_step_captured_and_replayed(mode, batch):
    guard = Guard(mode)
    classes = impl_classes()
    for cls in classes.values():
        guard.wrap(cls)
    seats, raw = encoder_decoder(classes, decode_sizes(batch), correct=mode == "warn")
    views = [s.make_view(raw) for s in seats]
    for s, kv in zip(seats, views, strict=True):  # warm-up and piecewise capture, no kernel
        s.warm_up(kv, WARM_UP_SIZES, capture=True)
    assert guard.discoveries == 0 and guard.report()["violations"] == []
    raw.zero_()
    for s, kv in zip(seats, views, strict=True):
        s.write_history(kv)

    def step():
        for s, kv in zip(seats, views, strict=True):
            s.step(kv)

    step()  # the first real step: every guarded method is judged here, the rest is steady
    torch.cuda.synchronize()
    discoveries = guard.discoveries
    graph = torch.cuda.CUDAGraph()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)
        with torch.cuda.graph(graph):
            step()
    finally:
        torch.cuda.set_sync_debug_mode("default")

    gen = torch.Generator(device="cuda").manual_seed(7)
    for i in range(REPLAYS):
        check = i % CHECK_EVERY == 0
        if check:
            for s in seats:
                s.renew(gen)
        graph.replay()
        if check:
            torch.cuda.synchronize()
            errors = [rel_error(s.output, s.reference()) for s in seats]
            assert max(errors) < BF16_TOL, (i, errors)
    assert guard.discoveries == discoveries, "the guard judged again after warm-up"
    report = guard.report()
    for layer in report["layers"]:  # judged on real calls, never settled by the warm-up
        assert set(layer["methods"]) == {"forward", "do_kv_cache_update"}, layer
        assert layer["untouched_calls"] >= 2 * 2 * WARM_UP_SIZES, layer
    if mode == "warn":
        assert report["violations"] == []
    else:
        cross = {layer["name"]: layer for layer in report["layers"]}["dec.0.cross_attn"]
        assert cross["status"] == "fixed" and cross["fix_path"] == "restride"
