"""Fuzzed real vLLM backend files (fixed seed, bounded count): no traceback, no internal
error, and every file either analyzed or named by one error line. The long run is
``python -m tests.lint.fuzzing --count 3000`` (see that module)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.lint.fuzzing import backend_sources, mutants, run

pytestmark = [pytest.mark.vllm_sources, pytest.mark.slow]

COUNT = 320  # under a minute on two loaded cores
SEED = 20261203


def test_fuzzed_backend_files(tmp_path: Path) -> None:
    names = []
    for name, _, data in mutants(backend_sources(), COUNT, SEED, max_depth=600):
        (tmp_path / name).write_bytes(data)
        names.append(name)
    proc, data = run(tmp_path, timeout=600)
    assert proc.returncode in (1, 2), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert data, "no JSON report"
    errors = {e["path"]: e["message"] for e in data["errors"]}
    internal = {p: m for p, m in errors.items() if m.startswith("internal error")}
    assert not internal, internal
    # a file that cannot be analyzed is not counted as checked: it has its error line instead
    assert data["summary"]["files"] + len(errors) == COUNT
    assert set(errors) <= set(names)
    for message in errors.values():
        assert "\n" not in message
    # the damage varies; most files still parse and get analyzed
    assert len(errors) < COUNT * 0.7, sorted(errors.items())[:20]
    assert {f["path"] for f in data["findings"]} - set(errors) == {
        f["path"] for f in data["findings"]
    }
