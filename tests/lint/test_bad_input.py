"""Files kvguard cannot analyze: one clear error line each, the rest still analyzed and
reported, exit 2, and the checked files never written."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from kvg_helpers import BAD_SOURCE, GOOD_SOURCE, locations, tree_state, write

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
NEIGHBOUR = "bad.py:2:30: KVG001"  # a flagged file next to the bad input


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    write(root, "bad.py", BAD_SOURCE)
    write(root, "good.py", GOOD_SOURCE)
    return root


def _check_reports(kvguard, root: Path, name: str, needles: tuple[str, ...], args=(".",)):  # type: ignore[no-untyped-def]
    """Run text and json reports; both name ``name`` once as an error, keep the neighbour's
    finding, exit 2, and leave every file's bytes and mtime as they were."""
    before = tree_state(root)
    text = kvguard("check", *args, cwd=root)
    assert text.returncode == 2, text.stdout + text.stderr
    assert text.stderr == ""
    assert locations(text.stdout) == [NEIGHBOUR]
    errors = [line for line in text.stdout.splitlines() if ": error: " in line]
    assert len(errors) == 1, text.stdout
    assert re.match(rf"{re.escape(name)}(:\d+(:\d+)?)?: error: ", errors[0]), errors
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert text.stdout.splitlines()[-1].endswith(" 1 path could not be analyzed.")

    data = json.loads(kvguard("check", "--format", "json", *args, cwd=root).stdout)
    assert [e["path"] for e in data["errors"]] == [name]
    assert [(f["path"], f["line"], f["code"]) for f in data["findings"]] == [
        ("bad.py", 2, "KVG001")
    ]
    assert tree_state(root) == before, "kvguard changed a file it checked"
    return errors[0]


def test_syntax_error(kvguard, tree: Path) -> None:
    write(
        tree, "syntax.py", "def forward(self, kv_cache):\n    k, v = kv_cache.unbind(0\n\nx = 1\n"
    )
    line = _check_reports(kvguard, tree, "syntax.py", ("syntax error",))
    assert line.startswith("syntax.py:2:")


def test_syntax_error_explicit_path(kvguard, tree: Path) -> None:
    write(tree, "syntax.py", "kv_cache = 1\ndef f(:\n    pass\n")
    line = _check_reports(kvguard, tree, "syntax.py", (), args=("bad.py", "syntax.py"))
    assert line == (
        "syntax.py:2:7: error: syntax error: invalid syntax; not valid Python "
        f"{sys.version_info.major}.{sys.version_info.minor} (the interpreter kvguard runs on)"
    )


@pytest.mark.xfail(
    strict=True,
    reason="documented limitation (README, 'Bad input'): a file that spells no KV-cache name "
    "or layout declaration is never parsed, so its syntax errors go unreported. Parsing every "
    "file of vLLM 0.33 with ast costs 3.6 CPU-s on the 2-core CI machine, nearly twice the "
    "whole cold check (about 2.0 CPU-s), against a target of matching ruff; ruff reports them.",
)
def test_syntax_error_in_a_file_without_kv_names(kvguard, tree: Path) -> None:
    write(tree, "syntax.py", "def f(:\n    pass\n")
    _check_reports(kvguard, tree, "syntax.py", ("line 1",))


def test_non_utf8_bytes(kvguard, tree: Path) -> None:
    write(tree, "latin.py", b"x = 1\ns = '\xff\xfe caf\xe9'\n")
    line = _check_reports(kvguard, tree, "latin.py", ("0xff", "utf-8"))
    assert line.startswith("latin.py:2: error: ")


def test_undeclared_encoding_in_cookie(kvguard, tree: Path) -> None:
    write(tree, "cookie.py", b"# -*- coding: klingon -*-\nx = 1\n")
    _check_reports(kvguard, tree, "cookie.py", ("klingon",))


def test_nul_bytes(kvguard, tree: Path) -> None:
    write(tree, "nul.py", b"x = 1\ny = 2\x00\nkv_cache = 3\n")
    line = _check_reports(kvguard, tree, "nul.py", ("NUL",))
    assert line.startswith("nul.py:2: error: ")


def test_binary_file_with_py_suffix(kvguard, tree: Path) -> None:
    write(tree, "blob.py", bytes(range(256)) * 4)
    _check_reports(kvguard, tree, "blob.py", ())


def test_empty_file_is_clean(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "empty.py", "")
    write(tmp_path, "blank.py", "\n\n   \n")
    before = tree_state(tmp_path)
    proc = kvguard("check", ".")
    assert (proc.returncode, proc.stdout, proc.stderr) == (
        0,
        "All checks passed (2 files checked).\n",
        "",
    )
    assert tree_state(tmp_path) == before


@pytest.mark.slow
def test_a_100k_line_file_finishes(kvguard, tree: Path) -> None:
    lines = ["def forward(self, kv_cache):"]
    lines += [f"    x{i} = kv_cache.shape[{i % 5}]" for i in range(100_000)]
    write(tree, "huge.py", "\n".join(lines) + "\n")
    before = tree_state(tree)
    proc = kvguard("check", "--format", "json", ".", cwd=tree, timeout=300)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    assert data["errors"] == []
    assert [(f["path"], f["line"]) for f in data["findings"]] == [("bad.py", 2)]
    assert data["summary"]["files"] == 3
    assert tree_state(tree) == before


@pytest.mark.slow
def test_a_100k_line_file_with_a_split_at_the_end(kvguard, tmp_path: Path) -> None:
    body = "".join(f"v{i} = {i}\n" for i in range(100_000))
    write(tmp_path, "huge.py", body + BAD_SOURCE)
    proc = kvguard("check", "huge.py", timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert locations(proc.stdout) == ["huge.py:100002:30: KVG001"]


def test_deeply_nested_expression(kvguard, tree: Path) -> None:
    write(tree, "deep.py", "kv_cache = " + "(" * 5000 + "1" + ")" * 5000 + "\n")
    _check_reports(kvguard, tree, "deep.py", ())


@pytest.mark.skipif(
    IS_ROOT, reason="root reads files whatever their mode; chmod 000 proves nothing"
)
def test_unreadable_file(kvguard, tree: Path) -> None:
    target = write(tree, "secret.py", BAD_SOURCE)
    target.chmod(0)
    try:
        _check_reports(kvguard, tree, "secret.py", ("permission denied",))
    finally:
        target.chmod(0o644)


@pytest.mark.skipif(IS_ROOT, reason="root lists directories whatever their mode")
def test_unreadable_directory(kvguard, tree: Path) -> None:
    write(tree, "locked/inner.py", BAD_SOURCE)
    (tree / "locked").chmod(0)
    try:
        _check_reports(kvguard, tree, "locked", ("cannot list directory",))
    finally:
        (tree / "locked").chmod(0o755)


def test_symlink_loop_to_parent(kvguard, tree: Path) -> None:
    write(tree, "pkg/mod.py", GOOD_SOURCE)
    (tree / "pkg" / "up").symlink_to("..", target_is_directory=True)
    line = _check_reports(kvguard, tree, "pkg/up", ("symbolic link loop",))
    assert line == "pkg/up: error: symbolic link loop: points to an enclosing directory, skipped"


def test_symlink_loop_to_itself(kvguard, tree: Path) -> None:
    (tree / "self.py").symlink_to("self.py")
    expected = "self.py: error: symbolic link loop: it never resolves to a file, skipped"
    assert _check_reports(kvguard, tree, "self.py", ()) == expected
    assert _check_reports(kvguard, tree, "self.py", (), args=("bad.py", "self.py")) == expected


def test_symlinks_to_the_same_file_are_checked_once(kvguard, tree: Path) -> None:
    (tree / "alias.py").symlink_to("bad.py")
    proc = kvguard("check", "--format", "json", ".", cwd=tree)
    data = json.loads(proc.stdout)
    assert len(data["findings"]) == 1
    assert data["summary"]["files"] == 2


def test_broken_symlink_in_tree(kvguard, tree: Path) -> None:
    (tree / "gone.py").symlink_to("nowhere/target.py")
    line = _check_reports(kvguard, tree, "gone.py", ("broken symbolic link",))
    assert line == "gone.py: error: broken symbolic link: its target does not exist"


def test_broken_symlink_given_explicitly(kvguard, tree: Path) -> None:
    (tree / "gone.py").symlink_to("nowhere/target.py")
    _check_reports(kvguard, tree, "gone.py", ("broken symbolic link",), args=("bad.py", "gone.py"))


def test_missing_path(kvguard, tree: Path) -> None:
    line = _check_reports(kvguard, tree, "nope.py", (), args=("bad.py", "nope.py"))
    assert line == "nope.py: error: no such file or directory; check the path"


def test_missing_directory(kvguard, tree: Path) -> None:
    _check_reports(kvguard, tree, "no/such/dir", ("no such file",), args=(".", "no/such/dir"))


def test_fifo_is_not_opened(kvguard, tree: Path) -> None:
    """A FIFO named like a Python file must not hang the walk."""
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    os.mkfifo(tree / "pipe.py")
    proc = kvguard("check", ".", cwd=tree, timeout=60)
    assert locations(proc.stdout) == [NEIGHBOUR]
    assert proc.returncode in (1, 2)
    proc = kvguard("check", "bad.py", "pipe.py", cwd=tree, timeout=60)
    assert proc.returncode == 2
    errors = [x for x in proc.stdout.splitlines() if ": error: " in x]
    assert errors == [
        "pipe.py: error: not a regular file or directory (a FIFO, socket or device); "
        "kvguard reads Python source files"
    ]


def test_several_bad_inputs_at_once(kvguard, tree: Path) -> None:
    write(tree, "a_syntax.py", "kv_cache = (\n")
    write(tree, "b_latin.py", b"s = '\xe9'\n")
    write(tree, "c_nul.py", b"\x00")
    (tree / "d_gone.py").symlink_to("nowhere.py")
    before = tree_state(tree)
    proc = kvguard("check", ".", "missing.py", cwd=tree)
    assert proc.returncode == 2
    assert locations(proc.stdout) == [NEIGHBOUR]
    errors = [line.split(":")[0] for line in proc.stdout.splitlines() if ": error: " in line]
    assert errors == ["a_syntax.py", "b_latin.py", "c_nul.py", "d_gone.py", "missing.py"]
    assert proc.stdout.splitlines()[-1].endswith(" 5 paths could not be analyzed.")
    assert tree_state(tree) == before


# -- encodings that are fine ----------------------------------------------------------


def test_utf8_bom(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "bom.py", b"\xef\xbb\xbf" + BAD_SOURCE.encode())
    before = tree_state(tmp_path)
    proc = kvguard("check", "--format", "json", "bom.py")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert data["errors"] == []
    assert [(f["line"], f["column"], f["end_column"]) for f in data["findings"]] == [(2, 30, 48)]
    assert tree_state(tmp_path) == before


def test_latin1_with_coding_cookie(kvguard, tmp_path: Path) -> None:
    source = (
        "# -*- coding: latin-1 -*-\n"
        "# caf\xe9, na\xefve\n"
        + BAD_SOURCE.replace("kv_cache.unbind(1)", "kv_cache.unbind(1)  # \xe9")
    ).encode("latin-1")
    write(tmp_path, "latin.py", source)
    before = tree_state(tmp_path)
    proc = kvguard("check", "--format", "json", "latin.py")
    assert proc.returncode == 1, proc.stdout
    data = json.loads(proc.stdout)
    assert data["errors"] == []
    assert [(f["line"], f["column"], f["code"]) for f in data["findings"]] == [(4, 30, "KVG001")]
    assert tree_state(tmp_path) == before


def test_latin1_excerpt_is_decoded_with_its_cookie(kvguard, tmp_path: Path) -> None:
    source = "# -*- coding: latin-1 -*-\n" + BAD_SOURCE.replace(
        "kv_cache.unbind(1)", "kv_cache.unbind(1)  # caf\xe9"
    )
    write(tmp_path, "latin.py", source.encode("latin-1"))
    proc = kvguard("check", "latin.py")
    assert "3 |     key_cache, value_cache = kv_cache.unbind(1)  # caf\xe9" in proc.stdout


def test_crlf_line_endings(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "crlf.py", BAD_SOURCE.replace("\n", "\r\n").encode())
    before = tree_state(tmp_path)
    proc = kvguard("check", "crlf.py")
    assert proc.returncode == 1
    assert locations(proc.stdout) == ["crlf.py:2:30: KVG001"]
    assert tree_state(tmp_path) == before


def test_tabs_keep_the_caret_under_the_split(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "tabs.py", "def forward(self, kv_cache):\n\tk, v = kv_cache.unbind(0)\n")
    proc = kvguard("check", "tabs.py")
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("tabs.py:2:9: KVG001 ")
    source, caret = lines[2], lines[3]
    start = caret.index("^")
    assert source[start:].startswith("kv_cache.unbind(0)")
    assert caret[start:] == "^" * len("kv_cache.unbind(0)")
