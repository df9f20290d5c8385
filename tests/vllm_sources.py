"""Real vLLM sources for tests: wheels downloaded once (``pip download --no-deps``),
their pure-Python files extracted into a cache outside the repository.

``KVGUARD_VLLM_CACHE`` moves the cache (default ``~/.cache/kvguard-tests/vllm``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest


def cache_root() -> Path:
    default = Path.home() / ".cache" / "kvguard-tests" / "vllm"
    return Path(os.environ.get("KVGUARD_VLLM_CACHE", default))


def pip_download(
    requirement: str, directory: Path, extra: tuple[str, ...] = ()
) -> subprocess.CompletedProcess:
    """``pip download --no-deps`` of one pinned requirement into ``directory``."""
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", *extra]
    return subprocess.run(
        [*command, "-d", str(directory), requirement],
        capture_output=True,
        text=True,
    )


def vllm_tree(version: str) -> Path:
    """A directory holding ``vllm/`` of that release (its .py files only)."""
    root = cache_root()
    tree = root / "src" / version
    marker = tree / ".complete"
    if marker.exists():
        return tree
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    found = sorted(wheels.glob(f"vllm-{version}-*.whl"))
    if not found:
        proc = pip_download(f"vllm=={version}", wheels)
        found = sorted(wheels.glob(f"vllm-{version}-*.whl"))
        if proc.returncode != 0 or not found:
            pytest.skip(f"cannot download vllm=={version}: {proc.stderr.strip()[-300:]}")
    with zipfile.ZipFile(found[0]) as wheel:
        for name in wheel.namelist():
            if name.startswith("vllm/") and name.endswith(".py"):
                wheel.extract(name, tree)
    marker.touch()
    return tree
