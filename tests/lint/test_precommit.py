"""The ``kvguard`` hook of ``.pre-commit-hooks.yaml``, run by the real pre-commit tool.

The hook repository is a throw-away git repository holding a copy of this working tree
(committed, so that pre-commit can clone it at a sha); the user repository is another
throw-away git repository with a ``.pre-commit-config.yaml`` pointing at it. pre-commit
builds the hook's virtualenv by pip-installing the copy, so this needs the package index.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from kvg_helpers import BAD_SOURCE, GOOD_SOURCE, tree_state, write

REPO_ROOT = Path(__file__).resolve().parents[2]
COPY_IGNORE = shutil.ignore_patterns(
    ".git",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    ".benchmarks",
    ".kvguard_cache",
    ".whl",
    ".vllm-src",
    ".venv",
    "build",
    "dist",
    "*.pyc",
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
]


def _git_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GIT_AUTHOR_NAME="kvguard tests",
        GIT_AUTHOR_EMAIL="tests@kvguard.invalid",
        GIT_COMMITTER_NAME="kvguard tests",
        GIT_COMMITTER_EMAIL="tests@kvguard.invalid",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_CONFIG_GLOBAL=str(home / "gitconfig"),
        PRE_COMMIT_HOME=str(home / "pre-commit"),
        KVGUARD_CACHE_DIR=str(home / "kvguard-cache"),
        PRE_COMMIT_COLOR="never",
    )
    for key in ("NO_COLOR", "FORCE_COLOR", "GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE"):
        env.pop(key, None)
    (home / "gitconfig").write_text("[init]\n\tdefaultBranch = main\n", encoding="utf-8")
    return env


def _git(cwd: Path, env: dict[str, str], *args: str) -> str:
    proc = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stdout}{proc.stderr}"
    return proc.stdout.strip()


def _pre_commit(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pre_commit", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, str]]:
    pytest.importorskip("pre_commit", reason="pre-commit is in the 'test' extra")
    home = tmp_path_factory.mktemp("precommit-home")
    env = _git_env(home)
    repo = tmp_path_factory.mktemp("hook-repo") / "kvguard"
    shutil.copytree(REPO_ROOT, repo, ignore=COPY_IGNORE, symlinks=True)
    assert (repo / ".pre-commit-hooks.yaml").is_file()
    _git(repo, env, "init", "-q")
    _git(repo, env, "add", "-A")
    _git(repo, env, "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", "snapshot")
    sha = _git(repo, env, "rev-parse", "HEAD")
    return repo, sha, env


def _user_repo(root: Path, hook: tuple[Path, str, dict[str, str]]) -> Path:
    repo_path, sha, env = hook
    root.mkdir()
    _git(root, env, "init", "-q")
    write(
        root,
        ".pre-commit-config.yaml",
        f"repos:\n  - repo: {repo_path}\n    rev: {sha}\n    hooks:\n      - id: kvguard\n",
    )
    return root


def test_hook_definition() -> None:
    text = (REPO_ROOT / ".pre-commit-hooks.yaml").read_text(encoding="utf-8")
    assert "- id: kvguard\n" in text
    assert "entry: kvguard check --force-exclude" in text
    assert "language: python" in text
    assert "require_serial: true" in text


def _commit(repo: Path, env: dict[str, str], message: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["git", "commit", "--no-gpg-sign", "-m", message],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )


def test_a_subclass_committed_alone_is_judged_against_its_base_elsewhere(
    hook_repo: tuple[Path, str, dict[str, str]], tmp_path: Path
) -> None:
    """pre-commit hands the hook only the staged file; KVG003 needs the base class, which
    lives in a committed, unchanged file. The project index reads it anyway."""
    env = hook_repo[2]
    repo = _user_repo(tmp_path / "user", hook_repo)
    examples = REPO_ROOT / "examples" / "backends"
    write(repo, "backends/base.py", (examples / "base.py").read_text(encoding="utf-8"))
    _git(repo, env, "add", "-A")
    _git(repo, env, "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", "base")
    install = _pre_commit(repo, env, "install")
    assert install.returncode == 0, install.stdout + install.stderr

    write(repo, "backends/buggy.py", (examples / "buggy.py").read_text(encoding="utf-8"))
    _git(repo, env, "add", "backends/buggy.py")
    commit = _commit(repo, env, "a subclass with its own layout")
    out = commit.stdout + commit.stderr
    assert commit.returncode != 0, out
    assert "backends/buggy.py:18:9: KVG003 BlocksFirstBackend supports ENCODER_DECODER" in out
    assert "its base PagedBackend" in out
    assert "backends/base.py" not in out  # only the staged file is reported


def test_force_exclude_keeps_excluded_staged_files_out(
    hook_repo: tuple[Path, str, dict[str, str]], tmp_path: Path
) -> None:
    env = hook_repo[2]
    repo = _user_repo(tmp_path / "user", hook_repo)
    write(repo, "pyproject.toml", '[tool.kvguard]\nextend-exclude = ["third_party"]\n')
    write(repo, "third_party/vendored.py", BAD_SOURCE)
    write(repo, "mine.py", GOOD_SOURCE)
    _git(repo, env, "add", "-A")
    run = _pre_commit(repo, env, "run", "--all-files")
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "third_party" not in out


def test_hook_fails_on_a_split_and_passes_once_fixed(
    hook_repo: tuple[Path, str, dict[str, str]], tmp_path: Path
) -> None:
    env = hook_repo[2]
    repo = _user_repo(tmp_path / "user", hook_repo)
    write(repo, "pkg/attn.py", BAD_SOURCE)
    write(repo, "pkg/ok.py", GOOD_SOURCE)
    # not Python: must not be handed to the hook
    write(repo, "notes.txt", "key_cache, value_cache = kv_cache.unbind(1)\n")
    write(repo, "data/sample.json", '{"kv_cache": "kv_cache.unbind(0)"}\n')
    _git(repo, env, "add", "-A")

    before = tree_state(repo / "pkg")
    failed = _pre_commit(repo, env, "run", "--all-files")
    out = failed.stdout + failed.stderr
    assert failed.returncode == 1, out
    assert "kvguard" in out
    assert "Failed" in out
    assert "pkg/attn.py:2:30: KVG001 raw K/V split `kv_cache.unbind(1)`" in out
    assert "pkg/ok.py:" not in out
    assert "notes.txt" not in out and "sample.json" not in out
    assert "files were modified by this hook" not in out
    assert tree_state(repo / "pkg") == before

    write(repo, "pkg/attn.py", GOOD_SOURCE)
    _git(repo, env, "add", "-A")
    passed = _pre_commit(repo, env, "run", "--all-files")
    out = passed.stdout + passed.stderr
    assert passed.returncode == 0, out
    assert "Passed" in out
    assert "KVG001" not in out


def test_hook_runs_on_the_staged_files_of_a_commit(
    hook_repo: tuple[Path, str, dict[str, str]], tmp_path: Path
) -> None:
    env = hook_repo[2]
    repo = _user_repo(tmp_path / "user", hook_repo)
    write(repo, "clean.py", GOOD_SOURCE)
    _git(repo, env, "add", "-A")
    _git(repo, env, "commit", "-q", "--no-verify", "--no-gpg-sign", "-m", "base")
    install = _pre_commit(repo, env, "install")
    assert install.returncode == 0, install.stdout + install.stderr

    write(repo, "stub.pyi", "def f(kv_cache): ...\nk = kv_cache[0]\n")
    write(repo, "new.py", BAD_SOURCE)
    _git(repo, env, "add", "new.py", "stub.pyi")
    commit = subprocess.run(
        ["git", "commit", "--no-gpg-sign", "-m", "add a split"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    out = commit.stdout + commit.stderr
    assert commit.returncode != 0, out
    assert "new.py:2:30: KVG001" in out
    assert "stub.pyi:2:5: KVG001" in out
    assert "clean.py" not in out

    write(
        repo,
        "new.py",
        BAD_SOURCE.replace("kv_cache.unbind(1)", "kv_cache.unbind(1)  # kvguard: ignore[KVG001]"),
    )
    write(repo, "stub.pyi", "# kvguard: ignore-file\ndef f(kv_cache): ...\nk = kv_cache[0]\n")
    _git(repo, env, "add", "new.py", "stub.pyi")
    commit = subprocess.run(
        ["git", "commit", "--no-gpg-sign", "-m", "add a suppressed split"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert commit.returncode == 0, commit.stdout + commit.stderr
