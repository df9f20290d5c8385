"""Manners from the second new-user trial: report files written whole or not at all,
stdin with a stray path, honest summaries and counts, wording of errors and hints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from kvg_helpers import BAD_SOURCE, SCATTERED_SOURCE, check_stdin, write

ERROR_PREFIX = "kvguard: error: "


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(ERROR_PREFIX), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


# -- report files (-o, --svg) ------------------------------------------------------------


def test_output_file_creates_missing_parent_directories(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "a.py", BAD_SOURCE)
    target = tmp_path / "missing" / "dir" / "out.txt"
    proc = kvguard("check", "--output-format", "concise", "-o", str(target), "a.py")
    assert proc.returncode == 1, proc.stderr
    assert "a.py:2:30: KVG001" in target.read_text(encoding="utf-8")
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]  # no temporary left


def test_output_file_that_is_a_directory_is_one_line_and_exit_2(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "a.py", BAD_SOURCE)
    (tmp_path / "reports").mkdir()
    proc = kvguard("check", "-o", "reports", "a.py")
    assert proc.returncode == 2
    line = _one_error_line(proc)
    assert line == f"{ERROR_PREFIX}cannot write reports: it is a directory; name a file inside it"
    assert list((tmp_path / "reports").iterdir()) == []


def test_output_file_under_a_file_is_one_line_and_exit_2(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "a.py", BAD_SOURCE)
    write(tmp_path, "plain", "x")
    proc = kvguard("check", "-o", "plain/out.txt", "a.py")
    assert proc.returncode == 2
    assert "cannot write plain/out.txt: a parent of it is a file" in _one_error_line(proc)


def test_output_file_replaces_the_old_report_whole(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "a.py", BAD_SOURCE)
    out = write(tmp_path, "out.json", "old report")
    os.chmod(out, 0o640)
    proc = kvguard("check", "--output-format", "json", "-o", "out.json", "a.py")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(out.read_text(encoding="utf-8"))["summary"]["findings"] == 1
    assert oct(out.stat().st_mode & 0o777) == oct(0o640)  # the old file's permissions stay
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.py", "out.json"]


def test_output_file_to_a_device_writes_through(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "a.py", BAD_SOURCE)
    proc = kvguard("check", "-o", os.devnull, "a.py")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == ""
    assert Path(os.devnull).exists() and not Path(os.devnull).is_file()


def test_a_failed_write_leaves_the_old_report_and_no_temporary(tmp_path: Path) -> None:
    from kvguard.output import OutputError, write_atomically

    target = write(tmp_path, "out.txt", "old report\n")

    def half(name: str) -> None:
        Path(name).write_text("half a rep", encoding="utf-8")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError) as caught:
        write_atomically(target, half)
    assert str(caught.value) == (
        f"cannot write {target}: no space left on the device; free some or choose another path"
    )
    assert target.read_text(encoding="utf-8") == "old report\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def _report_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "reports"
    report = {"mode": "warn", "allocations": [], "layers": [], "violations": []}
    write(directory, "kvguard-host-1.json", json.dumps(report))
    return directory


@pytest.mark.parametrize("name", ["map.svg", "map.html"])
def test_report_svg_creates_missing_parent_directories(kvguard, tmp_path: Path, name) -> None:
    directory = _report_dir(tmp_path)
    target = tmp_path / "missing" / name
    proc = kvguard("report", str(directory), "--svg", str(target))
    assert proc.returncode == 0, proc.stderr
    text = target.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>" if name.endswith(".html") else "<svg")
    assert [p.name for p in target.parent.iterdir()] == [name]


def test_report_svg_to_a_directory_is_one_line_before_any_output(kvguard, tmp_path) -> None:
    directory = _report_dir(tmp_path)
    proc = kvguard("report", str(directory), "--svg", str(tmp_path))
    assert proc.returncode == 2
    assert _one_error_line(proc).endswith("it is a directory; name a file inside it")
    assert proc.stdout == ""


# -- stdin -------------------------------------------------------------------------------


_stdin = check_stdin


def test_stdin_filename_with_a_path_reads_stdin_and_warns(kvguard_env, tmp_path: Path) -> None:
    write(tmp_path, "clean.py", "x = 1\n")
    proc = _stdin(
        kvguard_env, tmp_path, BAD_SOURCE, "--output-format", "concise",
        "--stdin-filename", "attn.py", "clean.py",
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines()[0].startswith("attn.py:2:30: KVG001")
    assert proc.stderr == (
        "kvguard: warning: ignoring file clean.py in favor of standard input (--stdin-filename)\n"
    )


def test_diff_on_stdin_prints_the_fixes_and_writes_nothing(kvguard_env, tmp_path: Path) -> None:
    on_disk = write(tmp_path, "pkg/impl.py", "x = 1\n")
    proc = _stdin(
        kvguard_env, tmp_path, SCATTERED_SOURCE, "--diff", "--stdin-filename", "pkg/impl.py"
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[:2] == ["--- a/pkg/impl.py", "+++ b/pkg/impl.py"]
    assert "-        key_cache = kv_cache[0]" in lines
    assert any(line.startswith("+") and "self._split_kv_cache(kv_cache)" in line for line in lines)
    assert proc.stderr == "Would fix 4 findings (0 remaining).\n"
    assert on_disk.read_text(encoding="utf-8") == "x = 1\n"
    clean = _stdin(kvguard_env, tmp_path, "x = 1\n", "--diff", "-")
    assert (clean.returncode, clean.stdout) == (0, "")
    assert clean.stderr == "Would fix 0 findings (0 remaining).\n"


# -- summaries and counts ----------------------------------------------------------------


def test_json_fixable_counts_what_plain_fix_fixes(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "loose.py", "def f(kv_cache):\n    k = kv_cache[0]\n")  # an unsafe fix only
    proc = kvguard("check", "--output-format", "json", "loose.py")
    data = json.loads(proc.stdout)
    assert [f["fix"]["applicability"] for f in data["findings"]] == ["unsafe"]
    assert (data["summary"]["fixable"], data["summary"]["fixable_unsafe"]) == (0, 1)
    text = kvguard("check", "loose.py").stdout
    assert "[*]" not in text and "(1 hidden fix can be enabled with `--unsafe-fixes`.)" in text


def test_pep_695_names_the_python_kvguard_runs_on(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "g.py", "type KV = int\n\nclass Impl[T]:\n    kv_cache = 1\n")
    proc = kvguard("check", "g.py")
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    if sys.version_info >= (3, 12):
        assert proc.returncode == 0, proc.stdout
        return
    assert proc.returncode == 2
    assert f"not valid Python {version} (the interpreter kvguard runs on)" in proc.stdout


def test_a_file_with_a_syntax_error_is_not_counted_as_checked(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "bad.py", BAD_SOURCE)
    write(tmp_path, "syn.py", "kv_cache = (\n")
    proc = kvguard("check", "--output-format", "concise", ".")
    assert proc.returncode == 2
    assert proc.stdout.splitlines()[-1] == (
        "Found 1 finding (1 KVG001) in 1 file (1 file checked). 1 path could not be analyzed."
    )
    data = json.loads(kvguard("check", "--output-format", "json", ".").stdout)
    assert (data["summary"]["files"], data["summary"]["errors"]) == (1, 1)


def test_unreadable_directory_wording() -> None:
    from kvguard.files import _unlistable

    assert _unlistable(PermissionError(13, "Permission denied")) == (
        "cannot list directory: permission denied; make it readable or exclude it"
    )
    assert _unlistable(OSError(5, "Input/output error")) == (
        "cannot list directory: input/output error; exclude it if it cannot be read"
    )


def _setpriv() -> list[str] | None:
    """A command prefix that drops root's right to read anything, where that is possible."""
    import shutil

    if os.geteuid() != 0:
        return []
    tool = shutil.which("setpriv")
    if tool is None:
        return None
    caps = "-dac_override,-dac_read_search"
    probe = subprocess.run([tool, f"--inh-caps={caps}", f"--bounding-set={caps}", "true"])
    return [tool, f"--inh-caps={caps}", f"--bounding-set={caps}"] if probe.returncode == 0 else None


def test_unreadable_directory_for_real(kvguard_env, tmp_path: Path) -> None:
    prefix = _setpriv()
    if prefix is None:
        pytest.skip("cannot drop the right to read every directory here")
    write(tmp_path, "locked/inner.py", BAD_SOURCE)
    (tmp_path / "locked").chmod(0)
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "kvguard", "check", "."],
            cwd=tmp_path, env=kvguard_env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert (
        "locked: error: cannot list directory: permission denied; make it readable or exclude it"
        in proc.stdout.splitlines()
    )


# -- configuration and suppressions ------------------------------------------------------


@pytest.mark.parametrize(
    "table, key",
    [
        ('ignore = ["KVG04"]', "'ignore'"),
        ('select = ["KVG9"]', "'select'"),
        ('extend-select = ["XYZ"]', "'extend-select'"),
        ('per-file-ignores = {"a.py" = ["KVG9"]}', "'per-file-ignores' 'a.py'"),
    ],
)
def test_unknown_code_in_config_names_the_file_and_key(kvguard, tmp_path, table, key) -> None:
    write(tmp_path, "pyproject.toml", f"[tool.kvguard]\n{table}\n")
    write(tmp_path, "a.py", "x = 1\n")
    proc = kvguard("check", "a.py")
    assert proc.returncode == 2
    code = table.split('"')[-2]
    assert _one_error_line(proc) == (
        f"{ERROR_PREFIX}{tmp_path / 'pyproject.toml'} [tool.kvguard]: {key} names unknown rule "
        f"selector '{code}'; `kvguard rules` lists the codes"
    )


@pytest.mark.parametrize(
    "comment",
    ["# KVGUARD: IGNORE[kvg001]", "# kvguard: Ignore[Kvg001]", "# KVGUARD: IGNORE"],
)
def test_suppression_in_upper_case_is_honoured(kvguard, tmp_path: Path, comment) -> None:
    write(tmp_path, "s.py", f"def f(kv_cache):\n    k = kv_cache[1]  {comment}\n")
    data = json.loads(kvguard("check", "--output-format", "json", "s.py").stdout)
    assert data["findings"] == [] and data["warnings"] == []
    assert [f["line"] for f in data["suppressed"]] == [2]


def test_suppression_in_upper_case_is_checked_like_any_other(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "s.py", "x = 1  # KVGUARD: IGNORE[kvg001]\n# KVGUARD: IGNORE-FILE\n")
    data = json.loads(kvguard("check", "--output-format", "json", "s.py").stdout)
    assert data["summary"]["files"] == 1 and data["warnings"] == []  # ignore-file: not linted
    write(tmp_path, "t.py", "def f(kv_cache):\n    x = 1  # KVGUARD: IGNORE[kvg001]\n")
    data = json.loads(kvguard("check", "--output-format", "json", "t.py").stdout)
    assert [w["message"] for w in data["warnings"]] == [
        "unused suppression: no KVG001 finding on this line to ignore"
    ]


# -- --statistics, --show-fixes ----------------------------------------------------------


def test_show_fixes_with_nothing_fixed_is_one_line(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "loose.py", "def f(kv_cache):\n    k = kv_cache[0]\n")  # unsafe fix only
    proc = kvguard("check", "--fix", "--show-fixes", "--output-format", "concise", "loose.py")
    lines = proc.stdout.splitlines()
    assert lines[-1] == "Fixed 0 findings (1 remaining)."
    assert not any("No findings" in line for line in lines)
    quiet = kvguard("check", "--fix", "--show-fixes", "-q", "loose.py")
    assert quiet.stdout.splitlines()[-1] == "No findings fixed."


def test_show_fixes_alone_warns(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "a.py", "x = 1\n")
    proc = kvguard("check", "--show-fixes", "a.py")
    assert proc.returncode == 0
    assert proc.stderr == (
        "kvguard: warning: --show-fixes lists what --fix or --diff fixes; add one of them\n"
    )
    assert kvguard("check", "--show-fixes", "--diff", "a.py").stderr.count("warning") == 0


# -- fix messages ------------------------------------------------------------------------


def test_unsafe_fix_message_quotes_the_whole_replacement(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "loose.py", "def f(kv_cache):\n    k = kv_cache[0]\n")
    data = json.loads(kvguard("check", "--output-format", "json", "loose.py").stdout)
    message = data["findings"][0]["fix"]["message"]
    assert message.startswith('use `kvguard.runtime.split_kv_cache(kv_cache, "kv_first")[0]`: ')


def test_withheld_reason_names_the_real_first_parameter(kvguard, tmp_path: Path) -> None:
    write(
        tmp_path,
        "cm.py",
        "class Impl:\n"
        "    def forward(self, kv_cache):\n"
        "        k = kv_cache[0]\n"
        "        return k\n"
        "\n"
        "    def other(me, kv_cache):\n"
        "        v = kv_cache[1]\n"
        "        return v\n",
    )
    data = json.loads(kvguard("check", "--output-format", "json", "cm.py").stdout)
    reasons = {f["fix_withheld"] for f in data["findings"]}
    assert reasons == {
        "`kv_cache[1]` sits in other, whose first parameter is `me`, not `self`; the fixer "
        "routes splits only through `self`"
    }


# -- a single file outside any project ---------------------------------------------------

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "backends"


def test_single_file_without_a_project_root_hints_at_the_unseen_base(kvguard, tmp_path) -> None:
    for name in ("base.py", "buggy.py"):
        write(tmp_path, name, (EXAMPLES / name).read_text(encoding="utf-8"))
    alone = kvguard("check", "--output-format", "concise", "buggy.py")
    assert "KVG003" not in alone.stdout
    hints = [line for line in alone.stderr.splitlines() if line.startswith("kvguard: hint: ")]
    assert len(hints) == 1, alone.stderr
    assert hints[0].startswith(
        "kvguard: hint: KVG003 could not see base class PagedBackend of BlocksFirstBackend: "
        "base.py was not checked and no project root was found"
    )
    assert "kvguard.toml" in hints[0]
    both = kvguard("check", "--output-format", "concise", "buggy.py", "base.py")
    assert "KVG003" in both.stdout and "hint" not in both.stderr
    (tmp_path / ".git").mkdir()  # a work tree: its files feed the index
    rooted = kvguard("check", "--output-format", "concise", "buggy.py")
    assert "KVG003" in rooted.stdout and "hint" not in rooted.stderr
    assert "hint" not in kvguard("check", "-q", "buggy.py", cwd=tmp_path).stderr


def test_no_hint_for_a_base_that_no_project_root_would_bring_in(kvguard, tmp_path) -> None:
    """A plugin's base from another package (not on disk here): a root would not help."""
    text = (EXAMPLES / "buggy.py").read_text(encoding="utf-8")
    write(tmp_path, "plugin.py", text.replace("from base import", "from host.layers import"))
    proc = kvguard("check", "--output-format", "concise", "plugin.py")
    assert "hint" not in proc.stderr, proc.stderr
    write(tmp_path, "host/layers.py", (EXAMPLES / "base.py").read_text(encoding="utf-8"))
    proc = kvguard("check", "--output-format", "concise", "plugin.py")
    assert "could not see base class PagedBackend" in proc.stderr
    assert "host/layers.py was not checked" in proc.stderr


# -- polish ------------------------------------------------------------------------------


def test_lint_speed_without_ruff_says_how_to_install_it(tmp_path: Path) -> None:
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "lint_speed.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--skip-fixit"],
        env={**os.environ, "PATH": str(tmp_path)},  # an empty directory: no ruff on it
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert proc.stderr == (
        "lint_speed.py: ruff is not on PATH; install it (`pip install ruff`) or put a "
        "virtual environment that has it first on PATH\n"
    )


def test_license_matches_pyproject() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2]
    declared = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    assert declared["project"]["license"] == "Apache-2.0"
    text = (root / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
