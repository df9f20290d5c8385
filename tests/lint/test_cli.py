"""``kvguard check`` end to end, in a subprocess: formats, exit codes, selection,
suppression comments, output file and cache."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from kvg_helpers import (
    BAD_LINE,
    BAD_SOURCE,
    BAD_SPAN,
    GOOD_SOURCE,
    SCATTERED_SOURCE,
    locations,
    write,
)

from kvguard import __version__
from kvguard.catalog import load_catalog

ANSI = re.compile(r"\x1b\[")
CATALOG = load_catalog()
FINDING_KEYS = [
    "path",
    "line",
    "column",
    "end_line",
    "end_column",
    "code",
    "severity",
    "message",
    "explanation",
    "fix",
    "fix_withheld",
]
BAD_MESSAGE_START = "raw K/V split `kv_cache.unbind(1)` assumes K/V on axis 1 of `kv_cache`"
BAD_CARET = "  |                              ^^^^^^^^^^^^^^^^^^"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path, "bad.py", BAD_SOURCE)
    write(tmp_path, "good.py", GOOD_SOURCE)
    return tmp_path


# -- text -----------------------------------------------------------------------------


def test_text_output_exact(kvguard, project: Path) -> None:
    proc = kvguard("check", "bad.py", "good.py")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"bad.py:2:30: KVG001 {BAD_MESSAGE_START}")
    assert lines[0] == f"bad.py:2:30: KVG001 {BAD_MESSAGE_START}"
    assert lines[1:4] == ["  |", f"2 | {BAD_LINE}", BAD_CARET]
    assert lines[4].startswith("  = help: Route it through one splitter method")
    assert lines[5].startswith("  = fix: use `kvguard.runtime.split_kv_cache(")
    assert lines[6:] == [
        "",
        "(1 hidden fix can be enabled with `--unsafe-fixes`.)",
        "Found 1 finding (1 KVG001) in 1 file (2 files checked).",
    ]
    assert proc.stdout.endswith("\n")


def test_text_clean(kvguard, project: Path) -> None:
    proc = kvguard("check", "good.py")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        "All checks passed (1 file checked).\n",
        "",
    )


def test_text_is_sorted_by_path_then_line(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "b.py", BAD_SOURCE)
    write(tmp_path, "a/z.py", SCATTERED_SOURCE)
    proc = kvguard("check", ".")
    assert proc.returncode == 1
    assert locations(proc.stdout) == [
        "a/z.py:1:7: KVG004",
        "a/z.py:3:34: KVG001",
        "a/z.py:6:21: KVG001",
        "a/z.py:7:23: KVG001",
        "b.py:2:30: KVG001",
    ]
    assert proc.stdout.splitlines()[-1] == (
        "Found 5 findings (4 KVG001, 1 KVG004) in 2 files (2 files checked)."
    )


def test_no_ansi_escapes_when_not_a_tty(kvguard, project: Path) -> None:
    for args in ([], ["--color", "auto"], ["--color", "never"]):
        proc = kvguard("check", *args, "bad.py", "missing.py")
        assert proc.returncode == 2
        assert not ANSI.search(proc.stdout + proc.stderr), args


def test_no_colour_with_no_color_env_even_on_a_tty(kvguard_env, project: Path) -> None:
    out = _run_in_pty(
        ["check", "--no-progress", "bad.py"], project, {**kvguard_env, "NO_COLOR": "1"}
    )
    assert not ANSI.search(out)
    assert "bad.py:2:30: KVG001" in out


def _run_in_pty(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "kvguard", *args],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env={**env, "TERM": "xterm-256color", "COLUMNS": "200"},
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO once the child has closed the pty
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 1
    return b"".join(chunks).decode("utf-8", "replace")


def test_colour_on_a_tty(kvguard_env, project: Path) -> None:
    out = _run_in_pty(["check", "--no-progress", "bad.py"], project, kvguard_env)
    assert ANSI.search(out), out
    plain = re.sub(r"\x1b\[[0-9;]*m", "", out).replace("\r\n", "\n")
    assert f"bad.py:2:30: KVG001 {BAD_MESSAGE_START}" in plain
    assert "Found 1 finding (1 KVG001) in 1 file (1 file checked)." in plain


def test_color_always_forces_ansi_into_a_pipe(kvguard, project: Path) -> None:
    proc = kvguard("check", "--color", "always", "bad.py")
    assert proc.returncode == 1
    assert ANSI.search(proc.stdout)


def test_statistics(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "impl.py", SCATTERED_SOURCE)
    write(tmp_path, "bad.py", BAD_SOURCE)
    proc = kvguard("check", "--statistics", ".")
    assert proc.returncode == 1
    lines = proc.stdout.splitlines()
    # as ruff: the table instead of the findings (then the fix hint and the summary)
    assert lines == [
        "    4  KVG001  raw-kv-split",
        "    1  KVG004  scattered-splits",
        "[*] 4 fixable with `--fix`. (1 hidden fix can be enabled with `--unsafe-fixes`.)",
        "Found 5 findings (4 KVG001, 1 KVG004) in 2 files (2 files checked).",
    ]
    assert locations(proc.stdout) == []


def test_statistics_when_clean(kvguard, project: Path) -> None:
    proc = kvguard("check", "--statistics", "good.py")
    assert (proc.returncode, proc.stdout) == (0, "All checks passed (1 file checked).\n")


# -- json -----------------------------------------------------------------------------


def test_json_exact_shape(kvguard, project: Path) -> None:
    write(project, "sub/deeper/bad2.py", BAD_SOURCE)
    proc = kvguard("check", "--format", "json", "bad.py", "good.py", "sub", "missing.py")
    assert proc.returncode == 2
    data = json.loads(proc.stdout)
    assert list(data) == ["version", "findings", "suppressed", "warnings", "errors", "summary"]
    assert data["version"] == __version__
    for finding in data["findings"]:
        assert list(finding) == FINDING_KEYS
        assert finding["message"].startswith(BAD_MESSAGE_START)
    stripped = [
        {k: v for k, v in f.items() if k not in ("message", "explanation", "fix", "fix_withheld")}
        for f in data["findings"]
    ]
    assert [f["fix"]["applicability"] for f in data["findings"]] == ["unsafe", "unsafe"]
    line, column, end_line, end_column = BAD_SPAN
    base = {
        "line": line,
        "column": column,
        "end_line": end_line,
        "end_column": end_column,
        "code": "KVG001",
        "severity": "error",
    }
    assert stripped == [
        {"path": "bad.py", **base},
        {"path": "sub/deeper/bad2.py", **base},
    ]
    assert data["errors"] == [
        {
            "path": "missing.py",
            "line": None,
            "column": None,
            "message": "no such file or directory; check the path",
        }
    ]
    summary = data["summary"]
    assert summary["files"] == 3
    assert summary["findings"] == 2
    assert summary["errors"] == 1
    assert summary["by_code"] == {"KVG001": 2}


def test_json_paths_as_given(kvguard, project: Path) -> None:
    write(project, "pkg/mod.py", BAD_SOURCE)
    for arg, expected in [
        ("pkg/mod.py", "pkg/mod.py"),
        ("pkg", "pkg/mod.py"),
        ("pkg/", "pkg/mod.py"),
    ]:
        proc = kvguard("check", "--format", "json", arg)
        assert proc.returncode == 1, (arg, proc.stdout, proc.stderr)
        paths = [f["path"] for f in json.loads(proc.stdout)["findings"]]
        assert paths == [expected], arg
    # from a sub-directory, relative to that working directory
    proc = kvguard("check", "--format", "json", "mod.py", cwd=project / "pkg")
    assert [f["path"] for f in json.loads(proc.stdout)["findings"]] == ["mod.py"]
    proc = kvguard("check", "--format", "json", cwd=project / "pkg")
    assert [f["path"] for f in json.loads(proc.stdout)["findings"]] == ["mod.py"]


def test_json_clean(kvguard, project: Path) -> None:
    proc = kvguard("check", "--format", "json", "good.py")
    assert proc.returncode == 0
    data = json.loads(proc.stdout)
    assert data["findings"] == [] and data["errors"] == []
    assert data["summary"]["files"] == 1 and data["summary"]["findings"] == 0


# -- sarif ----------------------------------------------------------------------------


def test_sarif(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "bad.py", BAD_SOURCE)
    write(tmp_path, "impl.py", SCATTERED_SOURCE)
    proc = kvguard("check", "--format", "sarif", ".")
    assert proc.returncode == 1, proc.stderr
    sarif = json.loads(proc.stdout)
    assert sarif["version"] == "2.1.0"
    assert sarif["$schema"].endswith("sarif-schema-2.1.0.json")
    assert len(sarif["runs"]) == 1
    run = sarif["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "kvguard"
    assert driver["version"] == __version__
    rules = driver["rules"]
    assert [r["id"] for r in rules] == ["KVG001", "KVG002", "KVG003", "KVG004"]
    assert [r["name"] for r in rules] == [CATALOG[r["id"]].name for r in rules]
    assert rules[3]["defaultConfiguration"]["level"] == "note"  # KVG004 is advice
    got = [
        (
            r["ruleId"],
            r["level"],
            r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"],
            r["locations"][0]["physicalLocation"]["region"]["startLine"],
            r["locations"][0]["physicalLocation"]["region"]["startColumn"],
        )
        for r in run["results"]
    ]
    assert got == [
        ("KVG001", "error", "bad.py", 2, 30),
        ("KVG004", "note", "impl.py", 1, 7),
        ("KVG001", "error", "impl.py", 3, 34),
        ("KVG001", "error", "impl.py", 6, 21),
        ("KVG001", "error", "impl.py", 7, 23),
    ]
    for result in run["results"]:
        assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["message"]["text"]
    region = run["results"][0]["locations"][0]["physicalLocation"]["region"]
    assert region == {"startLine": 2, "startColumn": 30, "endLine": 2, "endColumn": 48}


def test_sarif_reports_unanalyzable_paths_as_failed_invocation(kvguard, project: Path) -> None:
    proc = kvguard("check", "--format", "sarif", "good.py", "missing.py")
    assert proc.returncode == 2
    run = json.loads(proc.stdout)["runs"][0]
    assert run["results"] == []
    invocation = run["invocations"][0]
    assert invocation["executionSuccessful"] is False
    notes = invocation["toolExecutionNotifications"]
    assert len(notes) == 1
    assert notes[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == "missing.py"


# -- github ---------------------------------------------------------------------------


def test_github_annotations(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "bad.py", BAD_SOURCE)
    write(tmp_path, "impl.py", SCATTERED_SOURCE)
    proc = kvguard("check", "--format", "github", ".", "missing.py")
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert len(lines) == 6
    assert lines[0].startswith(
        "::error file=bad.py,line=2,col=30,endLine=2,endColumn=48,title=KVG001 raw-kv-split::"
        f"KVG001 {BAD_MESSAGE_START}"
    )
    assert lines[1].startswith("::notice file=impl.py,line=1,col=7,")
    for line in lines[2:5]:
        assert line.startswith("::error file=impl.py,line="), line
    assert lines[5] == (
        "::error file=missing.py,title=kvguard::no such file or directory; check the path"
    )
    for line in lines:
        assert "\n" not in line and re.match(r"::(error|warning|notice) file=", line)


# -- exit codes -----------------------------------------------------------------------


def test_exit_codes(kvguard, project: Path) -> None:
    assert kvguard("check", "good.py").returncode == 0
    assert kvguard("check", "bad.py").returncode == 1
    assert kvguard("check", "bad.py", "good.py").returncode == 1
    assert kvguard("check", "good.py", "missing.py").returncode == 2
    assert kvguard("check", "bad.py", "missing.py").returncode == 2


def test_default_path_is_the_working_directory(kvguard, project: Path) -> None:
    proc = kvguard("check")
    assert proc.returncode == 1
    assert locations(proc.stdout) == ["bad.py:2:30: KVG001"]
    assert proc.stdout.splitlines()[-1] == (
        "Found 1 finding (1 KVG001) in 1 file (2 files checked)."
    )


@pytest.mark.parametrize(
    "args",
    [["--bogus"], ["--format", "xml"], ["--jobs", "0"], ["--jobs", "many"], ["--color", "red"]],
)
def test_usage_errors_exit_2(kvguard, project: Path, args: list[str]) -> None:
    proc = kvguard("check", *args, "bad.py")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "error" in proc.stderr


def test_no_command_exits_2(kvguard, project: Path) -> None:
    assert kvguard().returncode == 2


@pytest.mark.parametrize("flag", ["--select", "--ignore", "--extend-select"])
def test_unknown_rule_selector_exits_2(kvguard, project: Path, flag: str) -> None:
    proc = kvguard("check", flag, "KVG999", "bad.py")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        "kvguard: error: unknown rule selector 'KVG999'; `kvguard rules` lists the codes\n"
    )


def test_findings_still_reported_next_to_an_unanalyzable_path(kvguard, project: Path) -> None:
    proc = kvguard("check", "bad.py", "missing.py")
    assert proc.returncode == 2
    lines = proc.stdout.splitlines()
    assert locations(proc.stdout) == ["bad.py:2:30: KVG001"]
    assert "missing.py: error: no such file or directory; check the path" in lines
    assert lines[-1] == (
        "Found 1 finding (1 KVG001) in 1 file (1 file checked). 1 path could not be analyzed."
    )


def test_exit_zero(kvguard, project: Path) -> None:
    proc = kvguard("check", "--exit-zero", "bad.py")
    assert proc.returncode == 0
    assert locations(proc.stdout) == ["bad.py:2:30: KVG001"]
    # an unanalyzable path is still an error
    assert kvguard("check", "--exit-zero", "bad.py", "missing.py").returncode == 2


# -- selection ------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    write(tmp_path, "impl.py", SCATTERED_SOURCE)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (
            [],
            [
                "impl.py:1:7: KVG004",
                "impl.py:3:34: KVG001",
                "impl.py:6:21: KVG001",
                "impl.py:7:23: KVG001",
            ],
        ),
        (["--select", "KVG004"], ["impl.py:1:7: KVG004"]),
        (
            ["--select", "kvg001"],
            ["impl.py:3:34: KVG001", "impl.py:6:21: KVG001", "impl.py:7:23: KVG001"],
        ),
        (
            ["--select", "KVG00"],
            [
                "impl.py:1:7: KVG004",
                "impl.py:3:34: KVG001",
                "impl.py:6:21: KVG001",
                "impl.py:7:23: KVG001",
            ],
        ),
        (["--select", "ALL", "--ignore", "KVG001"], ["impl.py:1:7: KVG004"]),
        (["--ignore", "KVG001"], ["impl.py:1:7: KVG004"]),
        (["--ignore", "KVG001,KVG004"], []),
        (["--select", "KVG002,KVG004"], ["impl.py:1:7: KVG004"]),
        (["--select", "KVG002", "--extend-select", "KVG004"], ["impl.py:1:7: KVG004"]),
        (["--select", "KVG004", "--ignore", "KVG004"], []),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0].startswith("-") else None,
)
def test_select_and_ignore(kvguard, mixed: Path, args: list[str], expected: list[str]) -> None:
    proc = kvguard("check", *args, ".")
    assert locations(proc.stdout) == expected, proc.stdout + proc.stderr
    assert proc.returncode == (1 if expected else 0)


def test_repeated_ignore_flags_accumulate(kvguard, mixed: Path) -> None:
    proc = kvguard("check", "--ignore", "KVG001", "--ignore", "KVG004", ".")
    assert (proc.returncode, locations(proc.stdout)) == (0, [])


# -- suppression comments -------------------------------------------------------------

SPLIT = "    key_cache, value_cache = kv_cache.unbind(1)"


def _one_split(comment: str) -> str:
    return f"def forward(self, kv_cache):\n{SPLIT}{comment}\n    return key_cache\n"


@pytest.mark.parametrize(
    ("comment", "suppressed"),
    [
        ("", False),
        ("  # kvguard: ignore[KVG001]", True),
        ("  # kvguard: ignore", True),
        ("  # kvguard:ignore[KVG001]", True),
        ("  # kvguard: ignore[kvg001]", True),
        ("  # kvguard: ignore[KVG002, KVG001]", True),
        ("  # kvguard: ignore[KVG002]", False),
        ("  # kvguard: ignore[KVG004]", False),
        ("  # noqa", False),
        ("  # kvguard: ignore-file", False),  # not at the start of a line: no file ignore
    ],
)
def test_line_suppression(kvguard, tmp_path: Path, comment: str, suppressed: bool) -> None:
    write(tmp_path, "m.py", _one_split(comment))
    proc = kvguard("check", "m.py")
    assert locations(proc.stdout) == ([] if suppressed else ["m.py:2:30: KVG001"])
    assert proc.returncode == (0 if suppressed else 1)


def test_suppression_is_per_line(kvguard, tmp_path: Path) -> None:
    source = (
        "def forward(self, kv_cache):\n"
        "    # kvguard: ignore[KVG001]\n"
        f"{SPLIT}\n"
        f"    k, v = kv_cache.unbind(0)  # kvguard: ignore[KVG001]\n"
        "    return key_cache  # kvguard: ignore\n"
    )
    write(tmp_path, "m.py", source)
    proc = kvguard("check", "m.py")
    assert locations(proc.stdout) == ["m.py:3:30: KVG001"]


@pytest.mark.parametrize("where", ["top", "bottom", "indented"])
def test_file_suppression(kvguard, tmp_path: Path, where: str) -> None:
    body = SCATTERED_SOURCE
    if where == "top":
        source = "# kvguard: ignore-file\n" + body
    elif where == "bottom":
        source = body + "# kvguard: ignore-file\n"
    else:
        source = body + "    # kvguard: ignore-file\n"
    write(tmp_path, "impl.py", source)
    write(tmp_path, "bad.py", BAD_SOURCE)
    proc = kvguard("check", ".")
    assert locations(proc.stdout) == ["bad.py:2:30: KVG001"]
    assert proc.stdout.splitlines()[-1] == (
        "Found 1 finding (1 KVG001) in 1 file (2 files checked)."
    )


def test_suppression_text_inside_strings_does_not_count(kvguard, tmp_path: Path) -> None:
    source = (
        "def forward(self, kv_cache):\n"
        '    key = kv_cache[0] if "# kvguard: ignore" else None\n'
        "    value = kv_cache[1]  # a comment, then '# kvguard: ignore' in quotes\n"
        '    doc = """\n'
        "# kvguard: ignore-file\n"
        '"""\n'
        "    return key, value  # kvguard: ignore\n"
    )
    write(tmp_path, "m.py", source)
    proc = kvguard("check", "m.py")
    assert locations(proc.stdout) == ["m.py:2:11: KVG001"]


def test_suppression_of_kvg004_on_the_class_line(kvguard, tmp_path: Path) -> None:
    source = SCATTERED_SOURCE.replace(
        "class MyImpl(AttentionImpl):", "class MyImpl(AttentionImpl):  # kvguard: ignore[KVG004]"
    )
    write(tmp_path, "impl.py", source)
    proc = kvguard("check", "impl.py")
    assert [loc.split(": ")[1] for loc in locations(proc.stdout)] == ["KVG001"] * 3


# -- --output-file --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["text", "json", "sarif", "github"])
def test_output_file(kvguard, project: Path, fmt: str) -> None:
    direct = kvguard("check", "--format", fmt, "--no-cache", "bad.py", "good.py")
    out = project / "reports" / f"report.{fmt}"
    out.parent.mkdir()
    proc = kvguard("check", "--format", fmt, "--no-cache", "-o", str(out), "bad.py", "good.py")
    assert proc.returncode == direct.returncode == 1
    assert proc.stdout == ""
    assert out.read_text(encoding="utf-8") == direct.stdout
    if fmt != "text":
        assert not ANSI.search(out.read_text(encoding="utf-8"))
    proc = kvguard("check", "--format", fmt, "--output-file", str(out), "good.py")
    assert proc.returncode == 0
    assert proc.stdout == ""
    assert out.read_text(encoding="utf-8") != direct.stdout  # overwritten, not appended


# -- cache ----------------------------------------------------------------------------


def _backend(shape: str) -> str:
    return (
        "class MyBackend(AttentionBackend):\n"
        "    @staticmethod\n"
        "    def get_impl_cls():\n"
        "        return DeclaredImpl\n"
        "\n"
        "    @staticmethod\n"
        "    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):\n"
        f"        return {shape}\n"
    )


IMPL = (
    "class DeclaredImpl(AttentionImpl):\n"
    "    def _split_kv_cache(self, kv_cache):\n"
    "        return kv_cache.unbind(0)\n"
)
BLOCKS_FIRST = "(num_blocks, 2, block_size, num_kv_heads, head_size)"
KV_FIRST = "(2, num_blocks, block_size, num_kv_heads, head_size)"


@pytest.fixture
def cached_tree(tmp_path: Path) -> Path:
    write(tmp_path, "backend.py", _backend(BLOCKS_FIRST))
    write(tmp_path, "impl.py", IMPL)
    write(tmp_path, "bad.py", BAD_SOURCE)
    write(tmp_path, "good.py", GOOD_SOURCE)
    write(tmp_path, "broken.py", "kv_cache = (\n")
    write(tmp_path, "impl2.py", SCATTERED_SOURCE)
    return tmp_path


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_warm_cache_output_is_identical_to_no_cache(
    kvguard, cached_tree: Path, cache_dir: Path, fmt: str
) -> None:
    cold = kvguard("check", "--format", fmt, ".")
    assert list(cache_dir.iterdir()), "the first run wrote no cache"
    warm = kvguard("check", "--format", fmt, ".")
    fresh = kvguard("check", "--format", fmt, "--no-cache", ".")
    assert cold.returncode == warm.returncode == fresh.returncode == 2
    assert cold.stdout == warm.stdout == fresh.stdout
    assert cold.stderr == warm.stderr == fresh.stderr == ""
    assert "broken.py:1:" in fresh.stdout or '"path": "broken.py"' in fresh.stdout
    assert "impl.py:3:16: KVG002" in locations(fresh.stdout) or '"KVG002"' in fresh.stdout


def test_no_cache_writes_no_cache(kvguard, cached_tree: Path, cache_dir: Path) -> None:
    kvguard("check", "--no-cache", ".")
    assert list(cache_dir.iterdir()) == []


def test_editing_a_file_invalidates_its_cached_findings(kvguard, cached_tree: Path) -> None:
    first = kvguard("check", "bad.py", "good.py")
    assert locations(first.stdout) == ["bad.py:2:30: KVG001"]
    assert "axis 1" in first.stdout
    # same size, other content
    bad = cached_tree / "bad.py"
    bad.write_text(BAD_SOURCE.replace("unbind(1)", "unbind(0)"), encoding="utf-8")
    second = kvguard("check", "bad.py", "good.py")
    assert locations(second.stdout) == ["bad.py:2:30: KVG001"]
    assert "assumes K/V on axis 0" in second.stdout
    assert "axis 1" not in second.stdout
    # fixed
    bad.write_text(GOOD_SOURCE, encoding="utf-8")
    third = kvguard("check", "bad.py", "good.py")
    assert (third.returncode, third.stdout) == (0, "All checks passed (2 files checked).\n")
    # broken again, the other file newly broken
    bad.write_text(BAD_SOURCE, encoding="utf-8")
    (cached_tree / "good.py").write_text("def f(:\n    kv_cache\n", encoding="utf-8")
    fourth = kvguard("check", "bad.py", "good.py")
    assert fourth.returncode == 2
    assert locations(fourth.stdout) == ["bad.py:2:30: KVG001"]
    assert "good.py:1:7: error: syntax error" in fourth.stdout
    assert fourth.stdout == kvguard("check", "--no-cache", "bad.py", "good.py").stdout


def test_editing_a_backend_invalidates_findings_of_an_unchanged_impl(
    kvguard, cached_tree: Path
) -> None:
    first = kvguard("check", ".")
    assert "impl.py:3:16: KVG002" in locations(first.stdout)
    (cached_tree / "backend.py").write_text(_backend(KV_FIRST), encoding="utf-8")
    second = kvguard("check", ".")
    assert not [loc for loc in locations(second.stdout) if loc.startswith("impl.py:")]
    assert second.stdout == kvguard("check", "--no-cache", ".").stdout
    # and back
    (cached_tree / "backend.py").write_text(_backend(BLOCKS_FIRST), encoding="utf-8")
    third = kvguard("check", ".")
    assert third.stdout == first.stdout


def test_deleting_a_file_drops_its_cached_findings(kvguard, cached_tree: Path) -> None:
    first = kvguard("check", ".")
    assert "bad.py:2:30: KVG001" in locations(first.stdout)
    (cached_tree / "bad.py").unlink()
    (cached_tree / "broken.py").unlink()
    second = kvguard("check", ".")
    assert "bad.py:2:30: KVG001" not in locations(second.stdout)
    assert "broken.py" not in second.stdout
    assert second.returncode == 1
    assert second.stdout == kvguard("check", "--no-cache", ".").stdout


def test_changing_selection_does_not_reuse_cached_findings(kvguard, cached_tree: Path) -> None:
    everything = kvguard("check", "impl2.py")
    assert len(locations(everything.stdout)) == 4
    only4 = kvguard("check", "--select", "KVG004", "impl2.py")
    assert locations(only4.stdout) == ["impl2.py:1:7: KVG004"]
    again = kvguard("check", "impl2.py")
    assert again.stdout == everything.stdout


def test_cache_dir_env_moves_the_cache(kvguard, cached_tree: Path, tmp_path_factory) -> None:
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    kvguard("check", "good.py", KVGUARD_CACHE_DIR=str(elsewhere / "c"))
    assert list((elsewhere / "c").iterdir())


def test_corrupt_cache_is_ignored(kvguard, cached_tree: Path, cache_dir: Path) -> None:
    first = kvguard("check", ".")
    files = list(cache_dir.iterdir())
    assert files
    for path in files:
        if path.is_file():
            path.write_bytes(b"\x80\x04garbage")
    second = kvguard("check", ".")
    assert (second.returncode, second.stdout, second.stderr) == (
        first.returncode,
        first.stdout,
        first.stderr,
    )
