"""Shared fixtures: run the real ``kvguard`` CLI in a subprocess with an isolated cache."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes more than a few seconds (still runs by default)"
    )


Runner = Callable[..., subprocess.CompletedProcess]


@pytest.fixture
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kvguard-cache")


@pytest.fixture
def kvguard_env(cache_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["KVGUARD_CACHE_DIR"] = str(cache_dir)
    # colour must come from TTY detection alone in these tests
    for key in ("NO_COLOR", "FORCE_COLOR", "CLICOLOR_FORCE"):
        env.pop(key, None)
    return env


@pytest.fixture
def kvguard(kvguard_env: dict[str, str], tmp_path: Path) -> Runner:
    """``kvguard(*args, cwd=tmp_path)`` runs ``python -m kvguard ARGS`` and returns the process."""

    def run(*args: str, cwd: Path | None = None, timeout: float = 120, **env: str):
        return subprocess.run(
            [sys.executable, "-m", "kvguard", *args],
            cwd=cwd or tmp_path,
            env={**kvguard_env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    return run
