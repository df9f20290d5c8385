"""Issue test 2: a backend registered through vLLM's own override mechanism (torch_backend.py)
in which only SOME layers read their cache K/V-first, while the layers vLLM binds to the same
bytes read them correctly, as in vLLM #43660: Gemma3's sliding-window layers beside its
full-attention layers (three cache groups overlay one buffer), Whisper's cross-attention
beside the self-attention of the same decoder layer (the very same storage).

Unguarded, the outputs differ from the correct backend's: the corruption is real. Strict
stops the worker with a one-line KVLayoutMismatchError and logs the whole message; fix gives
the correct backend's greedy outputs; warn logs once per broken layer and changes nothing.
Multiprocessing on and off. Plus VLLM_PLUGINS allowlisting and `kvguard report`.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from .conftest import REPO

GEMMA3_SLIDING = [f"model.layers.{i}.self_attn.attn" for i in (0, 1, 3, 4)]
# which layers read with the wrong split, told by what vLLM bound to each layer
BROKEN = {
    "gemma3": ("kv_first_sliding", lambda binding: binding["layer"] in GEMMA3_SLIDING),
    "whisper": ("kv_first_cross", lambda binding: binding["attn_type"] == "encoder_decoder"),
}
KINDS = pytest.mark.parametrize("kind", sorted(BROKEN))
MULTIPROCESSING = pytest.mark.parametrize("multiprocessing", [False, True], ids=["mp-off", "mp-on"])
BOTH_PLUGINS = "kvguard,kvguard_test_torch_backend"


@pytest.fixture(scope="module")
def reference(run_engine):
    """reference(kind, split, multiprocessing=False) -> the run with the plugin off, once.

    What a wrong split corrupts depends on how vLLM batches the steps. With multiprocessing
    off that is fixed; with it on, the engine core steps as soon as the first request reaches
    it, so the corrupted outputs vary from run to run (three runs of the same command here
    gave three different sets): only mp-off corrupted runs are compared token for token.
    """
    runs = {}

    def get(kind: str, split: str, multiprocessing: bool = False):
        key = (kind, split, multiprocessing)
        if key not in runs:
            runs[key] = run_engine(kind, multiprocessing, split=split)
        return runs[key]

    return get


def _broken_run(run_engine, kind: str, multiprocessing: bool, mode: str, **env: str):
    return run_engine(kind, multiprocessing, mode=mode, split=BROKEN[kind][0], **env)


def _split_layers(kind: str, report: dict) -> tuple[list[str], list[str]]:
    """(layers with the wrong split, layers with the right one that use the cache)."""
    reads_wrong = BROKEN[kind][1]
    bound = [b for b in report["bindings"] if b["kv_cache"] is not None]
    wrong = sorted(b["layer"] for b in bound if reads_wrong(b))
    right = sorted(b["layer"] for b in bound if not reads_wrong(b))
    assert wrong and right, bound
    return wrong, right


def _message_lines(message: str) -> list[str]:
    return [line.strip() for line in message.splitlines() if line.strip()]


@KINDS
@MULTIPROCESSING
def test_unguarded_the_mixed_splits_corrupt_the_outputs(
    kind, multiprocessing, reference, plugin_off
):
    correct = reference(kind, "packed").tokens
    corrupted = reference(kind, BROKEN[kind][0], multiprocessing).tokens

    # the torch backend, split correctly, is faithful to vLLM's own CPU backend ...
    assert correct == plugin_off(kind).tokens
    # ... and the wrong split of some layers, unchecked, changes what the model says
    assert corrupted != correct


def _logged(output: str, level: str, text: str) -> list[str]:
    """Lines of `output` that vLLM's log format wrote: `(Process pid=N) LEVEL date [file:n]`."""
    pattern = rf"^\(\w+ pid=\d+\) {level} [\d\- :]+\[[\w.]+:\d+\] {re.escape(text)}.*$"
    return re.findall(pattern, output, flags=re.M)


@KINDS
@MULTIPROCESSING
def test_strict_stops_the_worker_with_a_short_error_and_logs_the_full_message(
    kind, multiprocessing, run_engine
):
    run = _broken_run(run_engine, kind, multiprocessing, "strict")

    assert not run.result["ok"]
    if multiprocessing:
        # the engine core dies and vLLM's client raises EngineDeadError, which the plugin in
        # the user's process extends with the summary the worker left for it
        assert run.result["error_type"] == "EngineDeadError"
    else:
        assert run.result["error_type"] == "KVLayoutMismatchError"
        assert run.result["error_module"] == "kvguard.runtime.errors"
    # the report written at the first violation holds the full diagnostic
    (report,) = run.reports
    wrong, _ = _split_layers(kind, report)
    violation = report["violations"][0]
    assert violation["layer"] in wrong
    assert violation["invariant"] == "containment"
    assert violation["action"] == "raised"
    message = violation["message"]
    impl = {rec["name"]: rec["impl"] for rec in report["layers"]}[violation["layer"]]
    assert impl.endswith(("TorchPagedImpl", "CrossAttentionImpl"))  # ours, or vLLM's subclass
    for needle in ("first colliding block ids", "what to do", "KVGUARD_MODE=fix"):
        assert needle in message
    # what reaches the user (and a server's clients) is the one-line summary: no addresses
    assert violation["summary"] in run.result["error"]
    assert "0x" not in run.result["error"].split("kvguard:", 1)[1]
    # the full diagnostic is in the log, once, through vLLM's log format, at ERROR
    assert len(_logged(run.output, "ERROR", message.splitlines()[0])) == 1
    for line in _message_lines(message):
        assert line in run.output, line


@KINDS
@MULTIPROCESSING
def test_fix_gives_the_correct_backends_outputs(kind, multiprocessing, run_engine, reference):
    run = _broken_run(run_engine, kind, multiprocessing, "fix", VLLM_PLUGINS=BOTH_PLUGINS)

    assert run.tokens == reference(kind, "packed").tokens
    (report,) = run.reports
    wrong, right = _split_layers(kind, report)
    layers = {rec["name"]: rec for rec in report["layers"]}
    for name in wrong:  # the guard stepped in on every wrong layer, and only there
        assert layers[name]["status"] == "fixed"
        assert layers[name]["fix_path"] in ("restride", "intercept")
        headline = f"kvguard: layer {name!r} and the page map its engine declared"
        assert len(_logged(run.output, "WARNING", headline)) == 1
    assert "kvguard fix " in run.output and "run with Guard" not in run.output
    assert {v["action"] for v in report["violations"]} == {"fixed"}
    for name in right:
        assert layers[name]["status"] == "ok"


@KINDS
@MULTIPROCESSING
def test_warn_logs_once_per_layer_and_changes_nothing(kind, multiprocessing, run_engine, reference):
    run = _broken_run(run_engine, kind, multiprocessing, "warn")

    if multiprocessing:  # the corruption went through unchanged (see `reference`)
        assert run.tokens != reference(kind, "packed").tokens
    else:
        assert run.tokens == reference(kind, BROKEN[kind][0]).tokens  # the unguarded run's
    (report,) = run.reports
    wrong, _ = _split_layers(kind, report)
    for name in wrong:
        headline = f"kvguard: layer {name!r} and the page map"
        assert len(_logged(run.output, "WARNING", headline)) == 1, name
    assert sorted(v["layer"] for v in report["violations"]) == wrong
    # nothing of kvguard's reached Python's last-resort handler, unformatted
    assert not re.findall(r"^kvguard: ", run.output, flags=re.M)


def test_plugin_left_out_of_vllm_plugins_wraps_nothing(run_engine, reference):
    run = _broken_run(
        run_engine, "gemma3", False, "strict", VLLM_PLUGINS="kvguard_test_torch_backend"
    )

    # the broken split ran unchecked: the corrupted outputs, no kvguard module, no report
    assert run.tokens == reference("gemma3", BROKEN["gemma3"][0]).tokens
    assert not any(m.startswith("kvguard.") for m in run.result["kvguard_modules"])
    assert run.reports == []


def test_kvguard_report_renders_the_engine_reports(run_engine):
    run = _broken_run(run_engine, "gemma3", True, "strict", VLLM_PLUGINS=BOTH_PLUGINS)

    cli = subprocess.run(
        [sys.executable, "-m", "kvguard", "report", str(run.report_dir)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 1, cli.stderr
    assert "per-block map" in cli.stdout
    assert "TorchPagedImpl" in cli.stdout
    assert "containment" in cli.stdout
    assert max(len(line) for line in cli.stdout.splitlines()) <= 80
