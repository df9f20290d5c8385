"""The forked lint helper: used when a named file changed after the cache was written,
the same findings as linting here, and a helper that dies costs nothing but its speed."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from kvguard import cli, engine, prefork

pytestmark = pytest.mark.skipif(os.name != "posix", reason="the helper forks")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "backends"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proj"
    root.mkdir()
    (root / ".kvguard.toml").write_text("")
    for name in ("base.py", "buggy.py"):  # the base backend is in the file not named
        (root / name).write_text((EXAMPLES / name).read_text())
    monkeypatch.setenv("KVGUARD_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(root)
    monkeypatch.setattr(engine, "second_cpu", lambda: True)  # whatever this machine has
    return root


def _findings(jobs: int, capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    """What ``kvguard check -j JOBS buggy.py`` reports, as the hook runs it."""
    cli.main(["check", "-j", str(jobs), "--no-progress", "--output-format", "json", "buggy.py"])
    found = json.loads(capsys.readouterr().out)["findings"]
    return found  # every field: positions, messages, fixes


def _edit(path: Path, n: int) -> None:
    time.sleep(0.01)  # a later mtime than the cache just written, on coarse clocks too
    path.write_text(path.read_text() + f"\n# edit {n}\n")


def test_a_changed_named_file_is_linted_by_the_helper_with_the_same_findings(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    used: list[int | None] = []
    run = prefork.LintHelper.run

    def recording(self, items):  # type: ignore[no-untyped-def]
        done = run(self, items)
        used.append(None if done is None else len(done))
        return done

    monkeypatch.setattr(prefork.LintHelper, "run", recording)
    expected = _findings(1, capsys)  # cold: no cache yet, so no helper
    assert {f["code"] for f in expected} >= {"KVG001", "KVG003"}
    assert used == []
    _edit(project / "buggy.py", 1)
    assert _findings(2, capsys) == expected
    assert used == [1]  # the one changed file, linted there
    assert _findings(2, capsys) == expected  # unchanged since: no helper, cached findings
    assert used == [1]


def test_a_helper_that_dies_leaves_the_lint_to_this_process(
    project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = _findings(1, capsys)
    answers: list[object] = []
    run = prefork.LintHelper.run

    def recording(self, items):  # type: ignore[no-untyped-def]
        answers.append(run(self, items))
        return answers[-1]

    monkeypatch.setattr(prefork.LintHelper, "run", recording)
    monkeypatch.setattr(engine, "_import_lint_stage", lambda: os._exit(3))  # it dies there
    _edit(project / "buggy.py", 2)
    assert _findings(2, capsys) == expected
    assert answers == [None]


def test_likely_to_lint_compares_the_named_files_with_the_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache.jsonl"
    named = tmp_path / "a.py"
    named.write_text("x = 1\n")
    assert not prefork.likely_to_lint([str(named)], cache)  # no cache: a cold run
    assert not prefork.likely_to_lint([str(named)], None)  # --no-cache
    time.sleep(0.01)
    cache.write_text("")
    assert not prefork.likely_to_lint([str(named), str(tmp_path / "missing.py")], cache)
    _edit(named, 3)
    assert prefork.likely_to_lint([str(named)], cache)


def test_close_stops_and_reaps_a_helper_still_working() -> None:
    helper = prefork.LintHelper(lambda: time.sleep(30), lambda item: item)
    pid = helper.pid
    started = time.monotonic()
    helper.close()
    assert time.monotonic() - started < 5
    with pytest.raises(ChildProcessError):  # reaped: no zombie, no orphan
        os.waitpid(pid, 0)


def _machine(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, *, cpus: int, cpu_max: str | None
) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    path = tmp_path / "cpu.max"
    if cpu_max is not None:
        path.write_text(cpu_max)
    monkeypatch.setattr(prefork, "_CPU_MAX", str(path))


def test_a_helper_needs_a_second_cpu_not_an_idle_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (8.0, 8.0, 8.0))  # busy: it does not matter
    _machine(monkeypatch, tmp_path, cpus=2, cpu_max=None)
    assert prefork.second_cpu()
    _machine(monkeypatch, tmp_path, cpus=1, cpu_max=None)
    assert not prefork.second_cpu()


def test_a_cgroup_cpu_quota_caps_the_usable_cpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _machine(monkeypatch, tmp_path, cpus=64, cpu_max="100000 100000\n")
    assert prefork.usable_cpus() == 1.0
    assert not prefork.second_cpu()  # a container of one CPU on a 64-core host
    _machine(monkeypatch, tmp_path, cpus=64, cpu_max="150000 100000\n")
    assert prefork.usable_cpus() == 1.5
    assert prefork.second_cpu()
    _machine(monkeypatch, tmp_path, cpus=64, cpu_max="max 100000\n")
    assert prefork.usable_cpus() == 64
    _machine(monkeypatch, tmp_path, cpus=3, cpu_max="garbage\n")
    assert prefork.usable_cpus() == 3  # unreadable: the affinity decides
