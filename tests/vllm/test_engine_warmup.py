"""Warm-up and compile calls before real ones, in a real engine: vLLM compiled (torch.compile,
its default), then the dummy forward passes CUDA-graph capture runs on a GPU, one per capture
size, on the bound caches (`warmup.py`; every `forward` gets no metadata and returns early),
then real requests. The guard must still judge `forward` on the first real call.

The broken split here is in `forward` only (the sliding-window layers of Gemma3 read their
pages K/V-first; the cache update writes them right), so only a judgement of `forward` can
catch it: before this was fixed, four early-returning calls settled a layer for good.
"""

from __future__ import annotations

from .test_engine_broken import GEMMA3_SLIDING, MULTIPROCESSING

CAPTURE_SIZES = "1,2,4,8,16,24,32,40,48,56,64"  # vLLM's first capture sizes
WARM = ("--compile", "--warm-up", CAPTURE_SIZES)


@MULTIPROCESSING
def test_strict_judges_forward_after_compile_and_capture_warm_up(multiprocessing, run_engine):
    run = run_engine(
        "gemma3", multiprocessing, mode="strict", split="kv_first_sliding_forward", args=WARM
    )

    assert not run.result["ok"], "the wrong forward ran unchecked"
    expected = "EngineDeadError" if multiprocessing else "KVLayoutMismatchError"
    assert run.result["error_type"] == expected
    (report,) = run.reports
    (violation,) = report["violations"][:1]
    assert violation["layer"] in GEMMA3_SLIDING
    layers = {r["name"]: r for r in report["layers"]}
    assert "forward" in layers[violation["layer"]]["methods"]
    assert layers[violation["layer"]]["untouched_calls"] >= len(CAPTURE_SIZES.split(","))


def test_clean_run_after_warm_up_judges_every_method(run_engine, plugin_off):
    run = run_engine("gemma3", False, mode="warn", args=WARM)

    assert run.tokens == plugin_off("gemma3").tokens
    (report,) = run.reports
    assert report["violations"] == []
    bound = [b["layer"] for b in report["bindings"] if b["kv_cache"] is not None]
    layers = {r["name"]: r for r in report["layers"]}
    for name in bound:
        assert layers[name]["status"] == "ok", layers[name]
        assert set(layers[name]["methods"]) >= {"forward", "do_kv_cache_update"}, name
        assert layers[name]["untouched_calls"] >= len(CAPTURE_SIZES.split(","))
