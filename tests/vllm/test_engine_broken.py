"""Issue test 2: a backend registered through vLLM's own override mechanism whose split reads
the layer's cache as K/V-first, against vLLM's KVCacheTensor page map. Strict raises
KVLayoutMismatchError from the worker with the whole message; fix gives the correct backend's
greedy outputs; warn logs once per layer. Plus VLLM_PLUGINS allowlisting and `kvguard report`.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO

LAYERS = ["model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn"]
MULTIPROCESSING = pytest.mark.parametrize("multiprocessing", [False, True], ids=["mp-off", "mp-on"])
BOTH_PLUGINS = "kvguard,kvguard_test_torch_backend"


@pytest.fixture(scope="module")
def correct_outputs(run_engine):
    return run_engine("llama", False, split="packed").tokens


def _message_lines(message: str) -> list[str]:
    return [line.strip() for line in message.splitlines() if line.strip()]


@MULTIPROCESSING
def test_strict_raises_from_the_worker_with_the_full_message(multiprocessing, run_engine):
    run = run_engine("llama", multiprocessing, mode="strict", split="kv_first")

    assert not run.result["ok"]
    if multiprocessing:
        # the engine core dies and vLLM's client raises EngineDeadError, which the plugin in
        # the user's process extends with what the worker left for it
        assert run.result["error_type"] == "EngineDeadError"
    else:
        assert run.result["error_type"] == "KVLayoutMismatchError"
        assert run.result["error_module"] == "kvguard.runtime.errors"
    # the report written at the first violation holds the message the user must see in full
    (report,) = run.reports
    violation = report["violations"][0]
    assert violation["layer"] == LAYERS[0]
    assert violation["invariant"] == "containment"
    message = violation["message"]
    for needle in ("TorchPagedImpl", "first colliding block ids", "what to do", "KVGUARD_MODE=fix"):
        assert needle in message
    for line in _message_lines(message):
        assert line in run.result["error"], line
        assert line in run.output, line  # also logged, at ERROR, by the worker


@MULTIPROCESSING
def test_fix_gives_the_correct_backends_outputs(multiprocessing, run_engine, correct_outputs):
    run = run_engine(
        "llama", multiprocessing, mode="fix", split="kv_first", VLLM_PLUGINS=BOTH_PLUGINS
    )

    assert run.tokens == correct_outputs
    (report,) = run.reports
    fixed = {rec["name"]: rec for rec in report["layers"]}
    for name in LAYERS:  # the guard really stepped in on every layer
        assert fixed[name]["status"] == "violation"
        assert fixed[name]["fix_path"] in ("restride", "intercept")
        logged = f"kvguard fix: re-striding the views below. kvguard: layer {name!r}"
        assert run.output.count(logged) == 1


def test_warn_logs_once_per_layer_and_proceeds(run_engine):
    run = run_engine("llama", False, mode="warn", split="kv_first")

    assert run.result["ok"], run.result.get("traceback")
    for name in LAYERS:
        pattern = rf"^kvguard: layer {re.escape(repr(name))} and the page map"
        assert len(re.findall(pattern, run.output, flags=re.M)) == 1, name
    (report,) = run.reports
    assert sorted(v["layer"] for v in report["violations"]) == LAYERS


def test_plugin_left_out_of_vllm_plugins_wraps_nothing(run_engine):
    run = run_engine(
        "llama", False, mode="strict", split="kv_first", VLLM_PLUGINS="kvguard_test_torch_backend"
    )

    assert run.result["ok"], run.result.get("traceback")  # the broken split ran unchecked
    assert not any(m.startswith("kvguard.") for m in run.result["kvguard_modules"])
    assert run.reports == []


def test_kvguard_report_renders_the_engine_reports(run_engine):
    run = run_engine("llama", True, mode="strict", split="kv_first", VLLM_PLUGINS=BOTH_PLUGINS)

    cli = subprocess.run(
        [sys.executable, "-m", "kvguard", "report", str(run.report_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1, cli.stderr
    assert "layout map" in cli.stdout
    assert "TorchPagedImpl" in cli.stdout
    assert "containment" in cli.stdout
