"""The plugin's entry point without vLLM: off costs an env lookup, bad values get one line."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("value", [None, "", "off", "OFF"])
def test_off_imports_nothing(value):
    setting = "" if value is None else f"os.environ['KVGUARD_MODE'] = {value!r}\n"
    code = (
        "import os, sys\n"
        "os.environ.pop('KVGUARD_MODE', None)\n"
        f"{setting}"
        "from kvguard.vllm.plugin import register\n"
        "register()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('kvguard', 'torch', 'vllm'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert proc.stdout.strip() == "['kvguard', 'kvguard.vllm', 'kvguard.vllm.plugin']"


def test_unknown_mode_is_one_warning_and_stays_off(monkeypatch, caplog):
    from kvguard.vllm import plugin

    monkeypatch.setenv("KVGUARD_MODE", "loud")
    with caplog.at_level(logging.WARNING, logger="kvguard"):
        plugin.register()

    (record,) = caplog.records
    assert "KVGUARD_MODE='loud'" in record.getMessage()
    assert "off, warn, strict, fix" in record.getMessage()
    hooks = sys.modules.get("kvguard.vllm.hooks")
    assert hooks is None or hooks.current_guard() is None
