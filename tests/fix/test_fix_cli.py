"""kvguard check --fix / --diff / --unsafe-fixes through the real CLI, and bad input."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from kvguard import disk
from tests.lint.kvg_helpers import BAD_SOURCE, SCATTERED_SOURCE, write

FIXED_SCATTERED_CALLS = 2  # forward's unbind, do_kv_cache_update's merged pair


def _temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"*{disk.SUFFIX}")]


def test_diff_prints_a_patch_writes_nothing_and_exits_1(kvguard, tmp_path: Path) -> None:
    path = write(tmp_path, "impl.py", SCATTERED_SOURCE)
    proc = kvguard("check", "--diff", ".")
    assert proc.returncode == 1, proc.stderr
    assert path.read_text() == SCATTERED_SOURCE
    assert proc.stdout.startswith("--- a/impl.py\n+++ b/impl.py\n@@ ")
    assert "+        key_cache, value_cache = self._split_kv_cache(kv_cache)" in proc.stdout
    assert proc.stderr == "Would fix 4 findings (0 remaining).\n"


def test_diff_with_nothing_to_fix_exits_0(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "bad.py", BAD_SOURCE)  # only an unsafe fix
    proc = kvguard("check", "--diff", ".")
    assert (proc.returncode, proc.stdout) == (0, "")
    assert proc.stderr == "Would fix 0 findings (1 remaining).\n"


def test_fix_rewrites_reports_what_remains_and_summarises(kvguard, tmp_path: Path) -> None:
    path = write(tmp_path, "impl.py", SCATTERED_SOURCE)
    other = write(tmp_path, "bad.py", BAD_SOURCE)
    proc = kvguard("check", "--fix", ".")
    assert proc.returncode == 1, proc.stderr  # bad.py's finding has only an unsafe fix
    assert proc.stdout.splitlines()[-1] == "Fixed 4 findings (1 remaining)."
    assert "bad.py:2:30: KVG001 raw K/V split" in proc.stdout
    assert "impl.py" not in proc.stdout.replace("Fixed", "")
    text = path.read_text()
    assert text.count("self._split_kv_cache(kv_cache)") == FIXED_SCATTERED_CALLS
    assert text.count("def _split_kv_cache(self, kv_cache):") == 1  # no torch import: no annotation
    assert other.read_text() == BAD_SOURCE
    again = kvguard("check", "--fix", ".")
    assert path.read_text() == text
    assert again.stdout.splitlines()[-1] == "Fixed 0 findings (1 remaining)."


def test_unsafe_fixes_opt_in_adds_the_runtime_import(kvguard, tmp_path: Path) -> None:
    path = write(tmp_path, "bad.py", "import torch\n\n" + BAD_SOURCE)
    hidden = kvguard("check", ".")
    assert "KVG001 [*]" not in hidden.stdout
    assert "(1 hidden fix can be enabled with `--unsafe-fixes`.)" in hidden.stdout
    shown = kvguard("check", "--unsafe-fixes", ".")
    assert "KVG001 [*] raw K/V split" in shown.stdout
    assert "[*] 1 fixable with `--fix --unsafe-fixes`." in shown.stdout
    proc = kvguard("check", "--fix", "--unsafe-fixes", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "Fixed 1 finding (0 remaining)."
    assert path.read_text() == (
        "import torch\n"
        "from kvguard.runtime import split_kv_cache\n\n"
        + BAD_SOURCE.replace("kv_cache.unbind(1)", 'split_kv_cache(kv_cache, "blocks_first")')
    )


def test_text_marks_fixable_findings_and_hints(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "impl.py", SCATTERED_SOURCE)
    proc = kvguard("check", ".")
    headers = [line for line in proc.stdout.splitlines() if line.startswith("impl.py:")]
    assert len(headers) == 4 and all(" [*] " in h for h in headers)
    assert "[*] 4 fixable with `--fix`." in proc.stdout


def test_json_and_sarif_say_whether_a_fix_exists(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "impl.py", SCATTERED_SOURCE)
    write(tmp_path, "withheld.py", (Path(__file__).parent / "corpus" / "withheld.py").read_text())
    data = json.loads(kvguard("check", "--format", "json", ".").stdout)
    by_file = {}
    for finding in data["findings"]:
        by_file.setdefault(finding["path"], []).append(finding["fix"])
    assert all(f["applicability"] == "safe" and f["message"] for f in by_file["impl.py"])
    assert all(f is None for f in by_file["withheld.py"])
    assert data["summary"]["fixable"] == 4
    sarif = json.loads(kvguard("check", "--format", "sarif", ".").stdout)
    results = sarif["runs"][0]["results"]
    fixes = [r["properties"]["fix"] for r in results]
    assert sum(f is not None for f in fixes) == 4
    assert all(f is None or f["applicability"] == "safe" for f in fixes)


# -- bad input --------------------------------------------------------------------------


def test_read_only_file_is_reported_and_others_are_fixed(kvguard, tmp_path: Path) -> None:
    locked = write(tmp_path, "a_locked.py", SCATTERED_SOURCE)
    free = write(tmp_path, "b_free.py", SCATTERED_SOURCE)
    locked.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
    try:
        proc = kvguard("check", "--fix", ".")
    finally:
        locked.chmod(stat.S_IRUSR | stat.S_IWUSR)
    assert proc.returncode == 2
    errors = [line for line in proc.stdout.splitlines() if ": error: " in line]
    assert errors == [
        "a_locked.py: error: not fixed: read-only file, left unchanged; make it writable to fix it"
    ]
    assert locked.read_text() == SCATTERED_SOURCE
    assert "self._split_kv_cache" in free.read_text()
    assert _temp_files(tmp_path) == []


def test_mixed_line_endings_are_refused(kvguard, tmp_path: Path) -> None:
    mixed = SCATTERED_SOURCE.replace("\n", "\r\n", 3)
    path = write(tmp_path, "a_mixed.py", mixed.encode())
    free = write(tmp_path, "b_free.py", SCATTERED_SOURCE)
    proc = kvguard("check", "--fix", ".")
    assert proc.returncode == 2
    errors = [line for line in proc.stdout.splitlines() if ": error: " in line]
    assert len(errors) == 1
    assert errors[0].startswith("a_mixed.py: error: not fixed: mixed line endings (3 CRLF, 4 LF")
    assert path.read_bytes() == mixed.encode()
    assert "self._split_kv_cache" in free.read_text()


@pytest.mark.parametrize(
    ("prefix", "newline"), [(b"\xef\xbb\xbf", "\n"), (b"", "\r\n"), (b"\xef\xbb\xbf", "\r\n")]
)
def test_bom_and_crlf_survive_a_fix(kvguard, tmp_path: Path, prefix: bytes, newline: str) -> None:
    data = prefix + SCATTERED_SOURCE.replace("\n", newline).encode()
    path = write(tmp_path, "impl.py", data)
    proc = kvguard("check", "--fix", ".")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = path.read_bytes()
    assert out.startswith(prefix) and out.count(b"\xef\xbb\xbf") == len(prefix) // 3
    body = out[len(prefix) :].decode()
    assert "self._split_kv_cache" in body
    if newline == "\r\n":
        assert body.count("\r\n") == body.count("\n")
    else:
        assert "\r" not in body
    # the expected text, with the file's own bytes around it
    expected = tmp_path / "expected.py"
    expected.write_text(SCATTERED_SOURCE)
    kvguard("check", "--fix", "expected.py")
    assert body.replace("\r\n", "\n") == expected.read_text()


def test_fix_keeps_file_mode_and_symlink(kvguard, tmp_path: Path) -> None:
    target = write(tmp_path, "real/impl.py", SCATTERED_SOURCE)
    target.chmod(0o640)
    link = tmp_path / "link.py"
    os.symlink(target, link)
    proc = kvguard("check", "--fix", "link.py")
    assert proc.returncode == 0, proc.stdout
    assert link.is_symlink()
    assert "self._split_kv_cache" in target.read_text()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_the_shipped_fix_example_is_fixed_whole(kvguard, tmp_path: Path) -> None:
    """README's --fix walk-through: examples/fix has four findings, all fixed by --fix."""
    import shutil

    example = Path(__file__).resolve().parents[2] / "examples" / "fix"
    shutil.copytree(example, tmp_path / "fix")
    before = kvguard("check", "--output-format", "concise", "fix")
    assert before.returncode == 1, before.stderr
    assert before.stdout.splitlines()[-1].startswith("Found 4 findings (3 KVG001, 1 KVG004)")
    fixed = kvguard("check", "--fix", "fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fixed.stdout.splitlines()[-1] == "Fixed 4 findings (0 remaining)."
    text = (tmp_path / "fix" / "scattered_impl.py").read_text()
    compile(text, "scattered_impl.py", "exec")
    assert "as\n        ScatteredBackend declares." in text
    assert text.count("self._split_kv_cache(kv_cache)") == 2
