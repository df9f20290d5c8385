"""Issue test 1: tiny Llama, hybrid Gemma3 and Whisper under the strict guard, through the
plugin entry point, with vLLM's multiprocessing on and off: generation completes, the report
lists every shared allocation with zero violations, greedy outputs equal a plugin-off run."""

from __future__ import annotations

import pytest

from .test_engine_broken import _logged

MODELS = ["llama", "gemma3", "whisper"]
MULTIPROCESSING = pytest.mark.parametrize("multiprocessing", [False, True], ids=["mp-off", "mp-on"])


@pytest.mark.parametrize("kind", MODELS)
@MULTIPROCESSING
def test_strict_run_is_clean_and_unchanged(kind, multiprocessing, run_engine, plugin_off):
    run = run_engine(kind, multiprocessing, mode="strict")

    assert run.tokens == plugin_off(kind).tokens
    # one report: the process that holds the caches (the API process has nothing to say)
    assert len(run.reports) == 1, [r["process"] for r in run.reports]
    report = run.reports[0]
    assert report["mode"] == "strict"
    assert report["violations"] == []
    bound = [b for b in report["bindings"] if b["kv_cache"] is not None]
    assert bound, report["bindings"]
    allocations = {a["storage_ptr"]: a for a in report["allocations"]}
    layers = {rec["name"]: rec for rec in report["layers"]}
    for b in bound:
        alloc = allocations[b["kv_cache"]["storage_ptr"]]  # every shared allocation is listed
        assert b["layer"] in alloc["declared"], "page map should come from vLLM's KVCacheTensor"
        assert layers[b["layer"]]["status"] == "ok", layers[b["layer"]]
        assert layers[b["layer"]]["allocation"] == alloc["id"]
    assert len({b["kv_cache"]["storage_ptr"] for b in bound}) == 1  # one buffer, all layers
    _model_structure(kind, bound, allocations)
    # through vLLM's log format: one line when the caches are bound, one at shutdown
    on = _logged(run.output, "INFO", f"kvguard: guard on (mode strict): {len(bound)} attention")
    assert len(on) == 1, run.output[-3000:]
    done = _logged(run.output, "INFO", "kvguard: summary (mode strict): ")
    assert len(done) == 1, run.output[-3000:]
    assert f"{len(report['layers'])} layers bound: " in done[0]


def _model_structure(kind: str, bound: list[dict], allocations: dict) -> None:
    """What makes each model interesting really happened in the engine."""
    by_layer = {b["layer"]: b for b in bound}
    if kind == "gemma3":
        # three cache groups (two sliding-window, one full) overlay the same bytes
        alloc = allocations[bound[0]["kv_cache"]["storage_ptr"]]
        at_zero = [name for name, pm in alloc["declared"].items() if pm["offset"] == 0]
        assert len(at_zero) == 3, alloc["declared"]
    if kind == "whisper":
        cross = [b for b in bound if b["attn_type"] == "encoder_decoder"]
        assert cross, [b["attn_type"] for b in bound]
        for b in cross:
            own = by_layer[b["layer"].replace("encoder_attn", "self_attn")]
            assert own["attn_type"] == "decoder"
            # self- and cross-attention of one decoder layer on the very same bytes
            assert b["kv_cache"]["storage_ptr"] == own["kv_cache"]["storage_ptr"]
            assert b["kv_cache"]["offset"] == own["kv_cache"]["offset"]
            # the model-local impl class vLLM creates after the plugin loaded was wrapped too
            assert "CrossAttentionImpl" in b["impl"]


@pytest.mark.parametrize("kind", MODELS)
def test_greedy_outputs_are_not_degenerate(kind, plugin_off):
    """The seeded random weights make every comparison of outputs in these tests mean
    something: many distinct tokens, and no two requests alike."""
    tokens = plugin_off(kind).tokens
    assert len({t for request in tokens for t in request}) >= 8, tokens
    assert len({tuple(request) for request in tokens}) == len(tokens), tokens


def test_off_loads_the_plugin_and_nothing_else(plugin_off):
    run = plugin_off("llama")
    assert run.result["ok"]
    assert "kvguard.vllm.plugin" in run.result["kvguard_modules"]  # the entry point ran
    heavy = ("kvguard.runtime", "kvguard.vllm.hooks", "kvguard.vllm.specs")
    assert [m for m in run.result["kvguard_modules"] if m.startswith(heavy)] == []
    assert run.reports == []
