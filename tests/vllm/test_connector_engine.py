"""Issue 14, part 3: the connector check (KVGUARD_CONNECTOR=verify) in real vLLM 0.32 CPU
engines, with vLLM's own ExampleConnector (stores each prompt's full blocks to disk, loads
them for a later request with the same prompt) and two variants of it that guess the layout
from the shape (tests/vllm/connector_variants.py). Prefix caching is off, so the second
round's prefix comes from the connector (connector_engine.py).

- the correct connector: the second round loads every prompt's blocks, every one verifies,
  and the outputs equal the first round's; with the check unset nothing of it is imported;
- a connector that reads the blocks-first cache as K/V-first: the second round's outputs
  change (the corruption is real), and each request's load is named in one ERROR line and
  diagnosed in full by `kvguard report` (exit 1);
- a connector whose restore swaps K and V: diagnosed as "K and V swapped", also with the
  worker in a process apart from the scheduler's (the multiprocess executor).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from . import tiny_models
from .conftest import REPO, RUN_TIMEOUT

VARIANTS = "tests.vllm.connector_variants"
LAYERS = ["model.layers.0.self_attn.attn", "model.layers.1.self_attn.attn"]


@dataclass
class Run:
    result: dict
    output: str
    report_dir: Path

    @property
    def rounds(self) -> list[list[list[int]]]:
        assert self.result["ok"], self.result.get("traceback", self.output[-4000:])
        return self.result["rounds"]

    @property
    def connector(self) -> dict:
        sections = [
            json.loads(p.read_text()).get("connector")
            for p in sorted(self.report_dir.glob("*.json"))
        ]
        found = [s for s in sections if s]
        assert len(found) == 1, (sections, self.output[-4000:])
        return found[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_models.llama(tmp_path_factory.mktemp("connector-model") / "llama")


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    def go(
        connector: str | None = None,
        multiprocessing: bool = False,
        executor: str | None = None,
        **env: str,
    ) -> Run:
        work = tmp_path_factory.mktemp(f"connector-{connector or 'example'}")
        environ = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KVGUARD_", "VLLM_")) and k != "PYTHONPATH"
        }
        environ.update(
            PYTHONPATH=str(REPO),
            VLLM_ENABLE_V1_MULTIPROCESSING="1" if multiprocessing else "0",
            KVGUARD_REPORT=str(work / "reports"),
            **env,
        )
        (work / "storage").mkdir()
        args = [str(model), str(work / "storage"), str(work / "out.json")]
        if connector:
            args += ["--connector", connector, "--module", VARIANTS]
        if executor:
            args += ["--executor", executor]
        proc = subprocess.run(
            [sys.executable, "-m", "tests.vllm.connector_engine", *args],
            cwd=REPO,
            env=environ,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        output = proc.stdout + proc.stderr
        assert (work / "out.json").exists(), f"rc {proc.returncode}:\n{output[-6000:]}"
        return Run(json.loads((work / "out.json").read_text()), output, work / "reports")

    return go


def _loads(output: str) -> int:
    """How many request loads vLLM's ExampleConnector logged."""
    return len(re.findall(r"Inject KV cache of \d+ tokens", output))


def _error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if "ERROR" in line and "kvguard connector" in line]


def test_unset_the_check_is_not_imported(run):
    plain = run()
    first, second = plain.rounds
    assert first == second
    assert _loads(plain.output) == 3
    assert "kvguard.vllm.connector" not in plain.result["kvguard_modules"]
    assert "kvguard.runtime.loadverify" not in plain.result["kvguard_modules"]


@pytest.mark.parametrize("multiprocessing", [False, True], ids=["mp-off", "mp-on"])
def test_the_correct_connector_verifies_clean(run, multiprocessing):
    checked = run(multiprocessing=multiprocessing, KVGUARD_CONNECTOR="verify")
    first, second = checked.rounds
    assert first == second
    assert _loads(checked.output) == 3  # every prompt of round 2 came from the connector
    section = checked.connector
    assert section["connectors"] == ["ExampleConnector"]
    assert section["covered_layers"] == LAYERS and section["uncovered_layers"] == {}
    # 3 prompts x 2 full blocks x 2 layers: computed in round 1, loaded in round 2
    assert section["stored_blocks"] == 12
    assert section["verified_blocks"] == 12 and section["unverified_blocks"] == 0
    assert section["load_mismatches"] == []
    assert _error_lines(checked.output) == []
    report = subprocess.run(
        [sys.executable, "-m", "kvguard", "report", str(checked.report_dir)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert report.returncode == 0, report.stdout + report.stderr
    assert "12 loaded blocks verified" in " ".join(report.stdout.split())


def test_a_kv_first_guess_is_caught(run):
    reference = run().rounds[0]
    broken = run("KVFirstGuessConnector", KVGUARD_CONNECTOR="verify")
    first, second = broken.rounds
    assert first == reference
    assert second != reference  # the misread load corrupts the outputs
    section = broken.connector
    found = section["load_mismatches"]
    assert {m["layer"] for m in found} == set(LAYERS)
    assert {m["kind"] for m in found} <= {"different", "zeros"}
    requests = {m["request"] for m in found}
    lines = _error_lines(broken.output)
    assert len(lines) == len(requests)  # one line per request, its layers counted
    for m in found:
        assert m["blocks"] and m["connector"] == "KVFirstGuessConnector"
    line = lines[0]
    for needed in ("layer 'model.layers.0.self_attn.attn'", "request '", "loaded blocks (ids ",
                   "KVFirstGuessConnector", "kvguard report"):  # fmt: skip
        assert needed in line, line
    report = subprocess.run(
        [sys.executable, "-m", "kvguard", "report", str(broken.report_dir)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert report.returncode == 1, report.stdout + report.stderr
    text = " ".join(report.stdout.split())
    assert f"{len(found)} connector load mismatches" in text
    assert "blocks that differ (id, index in the request, K error, V error)" in text
    assert "what to change:" in text and "its cache: (block=" in text


def test_a_swapped_restore_is_named(run):
    broken = run("SwappedLoadConnector", KVGUARD_CONNECTOR="verify")
    first, second = broken.rounds
    assert first != second
    found = broken.connector["load_mismatches"]
    assert {m["layer"] for m in found} == set(LAYERS)
    assert len({m["request"] for m in found}) == 3
    assert {m["kind"] for m in found} == {"swapped"}
    assert all(len(m["blocks"]) == m["checked_blocks"] == 2 for m in found)
    assert "hold K and V swapped" in _error_lines(broken.output)[0]


def test_a_worker_apart_from_the_scheduler_checks_on_its_own(run):
    """The multiprocess executor runs the worker in a process of its own: the check needs
    nothing from the scheduler's process."""
    broken = run("SwappedLoadConnector", multiprocessing=True, executor="mp",
                 KVGUARD_CONNECTOR="verify")  # fmt: skip
    assert broken.rounds[0] != broken.rounds[1]
    found = broken.connector["load_mismatches"]
    assert {m["kind"] for m in found} == {"swapped"} and len(found) == 6
    lines = _error_lines(broken.output)
    assert lines and all(line.startswith("(Worker pid=") for line in lines), lines
