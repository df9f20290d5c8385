"""ruff's manners, as kvguard has them: stdin, --quiet/--silent, concise and full output,
one-line messages, honest summaries, suppression reasons and warnings, --force-exclude,
respect-gitignore, the project index for a single file, --show-fixes and
--exit-non-zero-on-fix."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from kvg_helpers import BAD_SOURCE, GOOD_SOURCE, SCATTERED_SOURCE, check_stdin, locations, write

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples" / "backends"


_stdin = check_stdin


# -- stdin ------------------------------------------------------------------------------


def test_stdin_with_a_dash(kvguard_env, tmp_path: Path) -> None:
    proc = _stdin(kvguard_env, tmp_path, BAD_SOURCE.encode(), "--output-format", "concise", "-")
    assert proc.returncode == 1, proc.stderr
    out = proc.stdout.decode()
    assert locations(out) == ["-:2:30: KVG001"]
    assert out.splitlines()[-1] == "Found 1 finding (1 KVG001) in 1 file (1 file checked)."


def test_stdin_filename_places_the_text_in_its_project(
    kvguard, kvguard_env, tmp_path: Path
) -> None:
    """The text on stdin is checked as that file, against the project on disk."""
    (tmp_path / ".git").mkdir()  # a work tree: the project root
    write(tmp_path, "backends/base.py", (EXAMPLES / "base.py").read_text(encoding="utf-8"))
    write(tmp_path, "backends/buggy.py", GOOD_SOURCE)  # on disk: clean
    text = (EXAMPLES / "buggy.py").read_bytes()  # in the editor: the subclass
    proc = _stdin(
        kvguard_env,
        tmp_path,
        text,
        "--output-format",
        "json",
        "--stdin-filename",
        "backends/buggy.py",
    )
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert {f["path"] for f in data["findings"]} == {"backends/buggy.py"}
    assert "KVG003" in {f["code"] for f in data["findings"]}
    # the file on disk is untouched, and a later check of it sees the disk's content
    assert (tmp_path / "backends/buggy.py").read_text(encoding="utf-8") == GOOD_SOURCE
    again = kvguard("check", "backends/buggy.py")
    assert again.returncode == 0, again.stdout


def test_stdin_fix_prints_the_fixed_source(kvguard_env, tmp_path: Path) -> None:
    proc = _stdin(
        kvguard_env, tmp_path, SCATTERED_SOURCE.encode(), "--fix", "--stdin-filename", "impl.py"
    )
    assert proc.returncode == 0, proc.stderr
    fixed = proc.stdout.decode()
    assert "def _split_kv_cache(self, kv_cache):" in fixed
    assert "kv_cache[0]" not in fixed.split("def forward")[1]
    assert not (tmp_path / "impl.py").exists()


def test_stdin_that_is_not_python_text(kvguard_env, tmp_path: Path) -> None:
    proc = _stdin(kvguard_env, tmp_path, b"x = '\xff'\n", "-")
    assert proc.returncode == 2
    assert proc.stdout.decode().startswith("-:1: error: byte 0xff is not valid utf-8")


def test_stdin_and_paths_do_not_mix(kvguard, tmp_path: Path) -> None:
    proc = kvguard("check", "-", "other.py")
    assert proc.returncode == 2
    assert "cannot be combined" in proc.stderr


def test_stdin_excluded_by_force_exclude_is_not_checked(kvguard_env, tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", '[tool.kvguard]\nextend-exclude = ["vendored"]\n')
    proc = _stdin(
        kvguard_env,
        tmp_path,
        BAD_SOURCE.encode(),
        "--force-exclude",
        "--stdin-filename",
        "vendored/x.py",
    )
    assert proc.returncode == 0, proc.stdout
    assert b"KVG001" not in proc.stdout


# -- output -----------------------------------------------------------------------------


def test_concise_is_one_line_per_finding(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "impl.py", SCATTERED_SOURCE)
    proc = kvguard("check", "--output-format", "concise", "impl.py")
    lines = proc.stdout.splitlines()
    assert locations(proc.stdout) == [
        "impl.py:1:7: KVG004",
        "impl.py:3:34: KVG001",
        "impl.py:6:21: KVG001",
        "impl.py:7:23: KVG001",
    ]
    assert len(lines) == 6  # four findings, the fix hint, the summary
    assert (
        lines[1]
        == "impl.py:3:34: KVG001 [*] raw K/V split `kv_cache.unbind(0)` assumes K/V on axis 0 "
        "of `kv_cache`"
    )


def test_a_multi_line_split_is_one_line_in_the_message(kvguard, tmp_path: Path) -> None:
    source = (
        "def forward(self, layer, kv_cache):\n"
        "    key_cache, value_cache = kv_cache.unbind(  # the layout of FooBackend\n"
        "        1\n"
        "    )\n"
        "    run(key_cache, value_cache)\n"
    )
    write(tmp_path, "m.py", source)
    data = json.loads(kvguard("check", "--output-format", "json", "m.py").stdout)
    (finding,) = data["findings"]
    assert finding["message"] == (
        "raw K/V split `kv_cache.unbind(1)` assumes K/V on axis 1 of `kv_cache`"
    )
    assert finding["explanation"].startswith("Route it through one splitter method")


def test_quiet_and_silent(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "bad.py", BAD_SOURCE)
    quiet = kvguard("check", "--quiet", "--output-format", "concise", "bad.py", "missing.py")
    assert quiet.returncode == 2
    assert quiet.stdout.splitlines() == [
        "bad.py:2:30: KVG001 raw K/V split `kv_cache.unbind(1)` assumes K/V on axis 1 of "
        "`kv_cache`",
        "missing.py: error: no such file or directory; check the path",
    ]
    silent = kvguard("check", "-s", "bad.py")
    assert (silent.returncode, silent.stdout, silent.stderr) == (1, "", "")
    assert kvguard("check", "-q", "-s", "bad.py").returncode == 2  # not both


@pytest.mark.parametrize(
    ("setup", "args", "last"),
    [
        ("missing", ["missing.py"], "No files checked. 1 path could not be analyzed."),
        ("empty", ["empty"], "No Python files found to check."),
        ("clean", ["good.py"], "All checks passed (1 file checked)."),
        ("mixed", ["good.py", "bad.py"], "Found 1 finding (1 KVG001) in 1 file (2 files checked)."),
    ],
)
def test_summary_lines_say_what_happened(
    kvguard, tmp_path: Path, setup: str, args: list[str], last: str
) -> None:
    write(tmp_path, "good.py", GOOD_SOURCE)
    write(tmp_path, "bad.py", BAD_SOURCE)
    (tmp_path / "empty").mkdir()
    proc = kvguard("check", *args)
    assert proc.stdout.splitlines()[-1] == last
    assert "All checks passed" not in proc.stdout or setup == "clean"


def test_empty_directory_warns_in_machine_formats(kvguard, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = kvguard("check", "--output-format", "json", "empty")
    assert proc.returncode == 0
    assert proc.stderr == "kvguard: warning: no Python files found under the given paths\n"


def test_github_syntax_error_has_its_line(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "broken.py", "kv_cache = 1\ndef f(:\n")
    proc = kvguard("check", "--output-format", "github", "broken.py")
    assert proc.returncode == 2
    assert proc.stdout.startswith("::error file=broken.py,line=2,col=7,title=kvguard::syntax error")


def test_form_feed_shows_the_right_source_line(kvguard, tmp_path: Path) -> None:
    """Python counts lines at \\n (and \\r), not at a form feed; the excerpt must too."""
    source = "import torch\n\x0c\nclass A:\n\x0c    pass\n" + BAD_SOURCE
    write(tmp_path, "ff.py", source)
    proc = kvguard("check", "ff.py")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("ff.py:6:30: KVG001")
    assert lines[2] == "6 |     key_cache, value_cache = kv_cache.unbind(1)"


# -- suppression ------------------------------------------------------------------------


def test_a_reason_after_the_pragma_is_kept(kvguard, tmp_path: Path) -> None:
    write(
        tmp_path,
        "m.py",
        BAD_SOURCE.replace(
            "kv_cache.unbind(1)", "kv_cache.unbind(1)  # kvguard: ignore[KVG001]: re-strided above"
        ),
    )
    proc = kvguard("check", "--output-format", "json", "m.py")
    assert proc.returncode == 0, proc.stdout
    data = json.loads(proc.stdout)
    assert data["findings"] == [] and data["warnings"] == []
    (silenced,) = data["suppressed"]
    assert silenced["code"] == "KVG001"
    assert silenced["suppression"] == {"reason": "re-strided above"}
    assert data["summary"]["suppressed"] == 1


@pytest.mark.parametrize(
    ("comment", "warning"),
    [
        ("# kvguard: ignore[KVG01]", "unknown rule code `KVG01` in suppression"),
        ("# kvguard: ignore[KVG002]", "unused suppression: no KVG002 finding on this line"),
        ("# kvguard: ignore[]", "suppression names no code"),
    ],
)
def test_suppression_warnings(kvguard, tmp_path: Path, comment: str, warning: str) -> None:
    write(
        tmp_path, "m.py", BAD_SOURCE.replace("kv_cache.unbind(1)", f"kv_cache.unbind(1)  {comment}")
    )
    proc = kvguard("check", "--output-format", "concise", "m.py")
    assert proc.returncode == 1  # a warning changes no exit code; the split is still there
    (line,) = [x for x in proc.stdout.splitlines() if ": warning: " in x]
    assert line.startswith("m.py:2:50: warning: " + warning), line
    assert proc.stdout.splitlines()[-1].endswith("1 warning.")


def test_unused_bare_suppression_in_a_file_without_kv_names(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "plain.py", "x = 1  # kvguard: ignore\n")
    data = json.loads(kvguard("check", "--output-format", "json", "plain.py").stdout)
    assert [(w["line"], w["message"]) for w in data["warnings"]] == [
        (1, "unused suppression: no finding on this line to ignore")
    ]


def test_a_suppression_of_a_disabled_rule_is_not_judged(kvguard, tmp_path: Path) -> None:
    write(
        tmp_path,
        "m.py",
        BAD_SOURCE.replace("kv_cache.unbind(1)", "kv_cache.unbind(1)  # kvguard: ignore[KVG004]"),
    )
    proc = kvguard("check", "--ignore", "KVG004", "--output-format", "json", "m.py")
    assert json.loads(proc.stdout)["warnings"] == []


# -- discovery --------------------------------------------------------------------------


def test_force_exclude_skips_named_excluded_files(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "pyproject.toml", '[tool.kvguard]\nextend-exclude = ["third_party"]\n')
    write(tmp_path, "third_party/vendored.py", BAD_SOURCE)
    write(tmp_path, "mine.py", BAD_SOURCE)
    named = kvguard("check", "--output-format", "concise", "third_party/vendored.py", "mine.py")
    assert locations(named.stdout) == [
        "mine.py:2:30: KVG001",
        "third_party/vendored.py:2:30: KVG001",
    ]
    forced = kvguard(
        "check",
        "--force-exclude",
        "--output-format",
        "concise",
        "third_party/vendored.py",
        "mine.py",
    )
    assert locations(forced.stdout) == ["mine.py:2:30: KVG001"]
    fixed = kvguard(
        "check", "--force-exclude", "--fix", "--unsafe-fixes", "third_party/vendored.py"
    )
    assert fixed.returncode == 0, fixed.stdout
    assert (tmp_path / "third_party/vendored.py").read_text(encoding="utf-8") == BAD_SOURCE


def test_force_exclude_from_the_config(kvguard, tmp_path: Path) -> None:
    write(
        tmp_path, "pyproject.toml", '[tool.kvguard]\nexclude = ["gen_*.py"]\nforce-exclude = true\n'
    )
    write(tmp_path, "gen_a.py", BAD_SOURCE)
    proc = kvguard("check", "gen_a.py")
    assert proc.returncode == 0
    assert kvguard("check", "--no-force-exclude", "gen_a.py").returncode == 1


def test_gitignore_is_respected_in_a_work_tree(kvguard, tmp_path: Path) -> None:
    (tmp_path / ".git" / "info").mkdir(parents=True)
    write(tmp_path, ".gitignore", "generated/\n*_pb2.py\n!keep_pb2.py\n")
    write(tmp_path, ".git/info/exclude", "local.py\n")
    write(tmp_path, "sub/.gitignore", "/only_here.py\n")
    for name in (
        "generated/x.py",
        "a_pb2.py",
        "keep_pb2.py",
        "local.py",
        "sub/only_here.py",
        "only_here.py",
        "src/m.py",
    ):
        write(tmp_path, name, BAD_SOURCE)
    proc = kvguard("check", "--output-format", "concise", ".")
    assert [loc.split(":")[0] for loc in locations(proc.stdout)] == [
        "keep_pb2.py",
        "only_here.py",
        "src/m.py",
    ]
    everything = kvguard("check", "--no-respect-gitignore", "--output-format", "concise", ".")
    assert len(locations(everything.stdout)) == 7
    # a named file is checked even if ignored
    named = kvguard("check", "--output-format", "concise", "a_pb2.py")
    assert locations(named.stdout) == ["a_pb2.py:2:30: KVG001"]


def test_a_fifo_inside_a_checked_directory_is_an_error_line(kvguard, tmp_path: Path) -> None:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    write(tmp_path, "bad.py", BAD_SOURCE)
    os.mkfifo(tmp_path / "pipe.py")
    proc = kvguard("check", ".", timeout=60)
    assert proc.returncode == 2
    assert (
        "pipe.py: error: not a regular file or directory (a FIFO, socket or device)" in proc.stdout
    )
    assert locations(proc.stdout) == ["bad.py:2:30: KVG001"]


def test_one_file_is_judged_against_the_whole_project(kvguard, tmp_path: Path) -> None:
    """KVG003 needs the base class in another file: the project index reads it, and only
    the file given is reported."""
    write(tmp_path, "kvguard.toml", "")
    write(tmp_path, "backends/base.py", (EXAMPLES / "base.py").read_text(encoding="utf-8"))
    write(tmp_path, "backends/buggy.py", (EXAMPLES / "buggy.py").read_text(encoding="utf-8"))
    write(tmp_path, "other/bad.py", BAD_SOURCE)
    whole = json.loads(kvguard("check", "--output-format", "json", ".").stdout)
    one = json.loads(kvguard("check", "--output-format", "json", "backends/buggy.py").stdout)
    mine = [f for f in whole["findings"] if f["path"] == "backends/buggy.py"]
    assert one["findings"] == mine
    assert "KVG003" in {f["code"] for f in one["findings"]}
    assert one["summary"]["files"] == 1
    # from a sub-directory, too
    sub = kvguard("check", "--output-format", "json", "buggy.py", cwd=tmp_path / "backends")
    assert "KVG003" in {f["code"] for f in json.loads(sub.stdout)["findings"]}


def test_without_a_project_only_the_given_files_are_indexed(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "backends/base.py", (EXAMPLES / "base.py").read_text(encoding="utf-8"))
    write(tmp_path, "backends/buggy.py", (EXAMPLES / "buggy.py").read_text(encoding="utf-8"))
    one = json.loads(kvguard("check", "--output-format", "json", "backends/buggy.py").stdout)
    assert "KVG003" not in {f["code"] for f in one["findings"]}


# -- --fix reporting --------------------------------------------------------------------


def test_show_fixes_and_exit_non_zero_on_fix(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "impl.py", SCATTERED_SOURCE)
    proc = kvguard("check", "--fix", "--show-fixes", "impl.py")
    assert proc.returncode == 0, proc.stdout
    lines = proc.stdout.splitlines()
    assert lines[-5:] == [
        "Fixed 4 findings:",
        "- impl.py:",
        "    3 \u00d7 KVG001 (raw-kv-split)",
        "    1 \u00d7 KVG004 (scattered-splits)",
        "Fixed 4 findings (0 remaining).",
    ]
    write(tmp_path, "impl.py", SCATTERED_SOURCE)
    strict = kvguard("check", "--fix", "--exit-non-zero-on-fix", "impl.py")
    assert strict.returncode == 1, strict.stdout
    assert kvguard("check", "--fix", "--exit-non-zero-on-fix", "impl.py").returncode == 0


@pytest.mark.vllm_sources
def test_messages_on_vllm_are_single_short_lines(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from kvguard.config import Config
    from kvguard.engine import check
    from tests.vllm_sources import vllm_tree

    monkeypatch.chdir(vllm_tree("0.33.0"))
    findings = check(["vllm"], Config(), use_cache=False).findings
    assert findings
    for f in findings:
        assert "\n" not in f.message and len(f.message) <= 120, f.message
        assert f.explanation
