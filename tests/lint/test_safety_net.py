"""One file never ends the run: deep nesting is analyzed up to ruff's depth (and beyond
that is one error line), and a kvguard bug on one file is that file's error line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kvg_helpers import BAD_SOURCE, locations, write

from kvguard import engine
from kvguard.cli import main
from kvguard.config import Config
from kvguard.deep import MAX_NESTING
from kvguard.engine import check

SPLIT = "def forward(self, layer, kv_cache):\n    k, v = kv_cache.unbind(0)\n    run(k, v)\n"


def _chain(terms: int) -> str:
    return " + ".join(["a"] * terms)


@pytest.mark.parametrize(
    "deep",
    [
        # each exactly MAX_NESTING expressions deep, counting the innermost name
        f"x = {_chain(MAX_NESTING)}\n",  # a + a + ...: nested BinOps
        "x = a" + "[0]" * (MAX_NESTING - 1) + "\n",  # subscripts of subscripts (and a 0)
        "x = a" + ".b" * (MAX_NESTING - 1) + "\n",
        "x = " + "not " * (MAX_NESTING - 1) + "a\n",
    ],
    ids=["binop", "subscript", "attribute", "not"],
)
def test_nesting_up_to_the_limit_is_analyzed(kvguard, tmp_path: Path, deep: str) -> None:
    write(tmp_path, "deep.py", SPLIT + deep)
    write(tmp_path, "bad.py", BAD_SOURCE)
    proc = kvguard("check", ".", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert locations(proc.stdout) == ["bad.py:2:30: KVG001", "deep.py:2:12: KVG001"]


def test_nesting_inside_the_function_libcst_parses(kvguard, tmp_path: Path) -> None:
    """libcst prints and walks trees recursively too: 800 levels exceed the default limit."""
    body = "def forward(self, layer, kv_cache):\n    k, v = kv_cache.unbind(0)\n"
    body += f"    y = {_chain(800)}\n    run(k, v, y)\n"
    write(tmp_path, "deep.py", body)
    proc = kvguard("check", "deep.py", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert locations(proc.stdout) == ["deep.py:2:12: KVG001"]


def test_nesting_beyond_the_limit_is_one_error_line(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "deep.py", SPLIT + f"\nx = {_chain(MAX_NESTING + 500)}\n")
    write(tmp_path, "bad.py", BAD_SOURCE)
    proc = kvguard("check", "--output-format", "json", ".", timeout=300)
    assert proc.returncode == 2, proc.stderr
    data = json.loads(proc.stdout)  # the report is complete
    assert [(f["path"], f["code"]) for f in data["findings"]] == [("bad.py", "KVG001")]
    (error,) = data["errors"]
    assert error["path"] == "deep.py" and error["line"] == 5
    assert error["message"] == (
        f"expression nested {MAX_NESTING + 500:,} levels deep; kvguard analyzes up to "
        f"{MAX_NESTING:,} levels: split the expression"
    )
    text = kvguard("check", ".", timeout=300)
    assert f"deep.py:5: error: expression nested {MAX_NESTING + 500:,} levels deep" in text.stdout


def test_an_internal_error_is_that_files_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    write(tmp_path, "bad.py", BAD_SOURCE)
    write(tmp_path, "boom.py", BAD_SOURCE)
    monkeypatch.chdir(tmp_path)
    real = engine.lint_file

    def lint_file(text, display, *args, **kwargs):  # type: ignore[no-untyped-def]
        if display == "boom.py":
            raise KeyError("a kvguard bug")
        return real(text, display, *args, **kwargs)

    monkeypatch.setattr(engine, "lint_file", lint_file)
    code = main(["check", "--no-cache", "-j", "1", "--output-format", "json", "."])
    assert code == 2
    data = json.loads(capsys.readouterr().out)
    assert [f["path"] for f in data["findings"]] == ["bad.py"]
    (error,) = data["errors"]
    assert error["path"] == "boom.py"
    assert error["message"].startswith("internal error (KeyError: 'a kvguard bug' at ")
    assert error["message"].endswith("please report it with this file")

    assert main(["check", "--no-cache", "-j", "1", "."]) == 2
    out = capsys.readouterr().out
    assert "boom.py: error: internal error (KeyError: 'a kvguard bug'" in out
    assert "bad.py:2:30: KVG001" in out


def test_an_internal_error_in_the_scan_stage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path, "bad.py", BAD_SOURCE)
    write(tmp_path, "boom.py", BAD_SOURCE)
    monkeypatch.chdir(tmp_path)
    real = engine.scan

    def scan(tree, path, names, text):  # type: ignore[no-untyped-def]
        if path == "boom.py":
            raise ZeroDivisionError("division by zero")
        return real(tree, path, names, text)

    monkeypatch.setattr(engine, "scan", scan)
    result = check(["."], Config(), use_cache=False, jobs=1)
    assert [f.path for f in result.findings] == ["bad.py"]
    assert [e.path for e in result.errors] == ["boom.py"]
    assert "internal error (ZeroDivisionError: division by zero" in result.errors[0].message


def test_a_worker_that_dies_costs_only_its_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash in native code kills the worker process; the other files are run again."""
    for i in range(30):
        write(tmp_path, f"m{i:02d}.py", BAD_SOURCE)
    monkeypatch.chdir(tmp_path)
    real = engine.lint_file

    def lint_file(text, display, *args, **kwargs):  # type: ignore[no-untyped-def]
        if display == "m07.py":
            import os

            os._exit(70)  # what a segfault in a C extension looks like from outside
        return real(text, display, *args, **kwargs)

    monkeypatch.setattr(engine, "lint_file", lint_file)
    result = check(["."], Config(), use_cache=False, jobs=2)
    assert sorted({f.path for f in result.findings}) == [
        f"m{i:02d}.py" for i in range(30) if i != 7
    ]
    assert [e.path for e in result.errors] == ["m07.py"]
    assert "the analysis process died" in result.errors[0].message
