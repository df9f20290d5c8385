"""The plugin's entry point without vLLM: off costs an env lookup, bad values get one line."""

from __future__ import annotations

import os
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


@pytest.mark.parametrize("value", ["Strict-ish", "loud", "on"])
def test_unknown_mode_fails_loudly_and_installs_nothing(monkeypatch, value):
    from kvguard.vllm import plugin

    monkeypatch.setenv("KVGUARD_MODE", value)
    with pytest.raises(ValueError) as info:
        plugin.register()

    message = str(info.value)
    assert f"KVGUARD_MODE={value!r}" in message  # the value as given, not lower-cased
    assert "off, warn, strict, fix" in message
    hooks = sys.modules.get("kvguard.vllm.hooks")
    assert hooks is None or hooks.current_guard() is None


def test_unknown_mode_stops_vllm_plugin_loading():
    """Through vLLM's own entry-point loader: it does not catch a plugin's error, so an
    engine asked for a mode it cannot have does not start (unguarded or at all)."""
    pytest.importorskip("vllm")
    from importlib.metadata import entry_points

    if not any(
        ep.value == "kvguard.vllm.plugin:register"
        for ep in entry_points(group="vllm.general_plugins")
    ):
        pytest.skip("kvguard's vLLM entry point is not installed in this environment")
    code = "from vllm.plugins import load_general_plugins\nload_general_plugins()\n"
    env = {**os.environ, "KVGUARD_MODE": "Strict-ish", "PYTHONPATH": str(REPO)}
    env.pop("VLLM_PLUGINS", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert proc.returncode != 0
    assert "KVGUARD_MODE='Strict-ish' is not one of off, warn, strict, fix" in proc.stderr


def test_guard_and_plugin_reject_the_same_values(monkeypatch):
    from kvguard.runtime import Guard

    monkeypatch.setenv("KVGUARD_MODE", "Strict-ish")
    with pytest.raises(ValueError, match=r"KVGUARD_MODE must be one of .*'Strict-ish'"):
        Guard()
    monkeypatch.setenv("KVGUARD_MODE", " Strict ")
    assert Guard().mode == "strict"  # what the plugin accepts, Guard() accepts
