"""Form feeds (``^L``, the old page separator) in files that --fix rewrites.

``str.splitlines`` splits at a form feed where Python and libcst do not, a form feed at the
start of a line resets the tokenizer's indentation count, and libcst drops one that starts
a statement's line: none of that may show in a fix.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.fix.fix_helpers import fix_text
from tests.lint.kvg_helpers import SCATTERED_SOURCE, write

HEADER = "import torch\n\n"


def _fixed_without_form_feeds(text: str) -> str:
    return fix_text(text.replace("\f", ""))


@pytest.mark.parametrize(
    "text",
    [
        HEADER + "\f\n" + SCATTERED_SOURCE,  # a page break on its own line before the class
        HEADER + "\fclass" + SCATTERED_SOURCE.removeprefix("class"),  # on the class line
        HEADER + SCATTERED_SOURCE.replace("\n\n", "\n\f\n"),  # between the methods
        HEADER + SCATTERED_SOURCE.replace("\n    def do", "\n\f    def do"),  # before a def
    ],
    ids=["own-line", "class-line", "between-methods", "def-line"],
)
def test_a_fix_is_the_same_with_form_feeds_and_keeps_them(text: str) -> None:
    fixed = fix_text(text)
    assert fixed.count("self._split_kv_cache(kv_cache)") == 2
    assert fixed.replace("\f", "") == _fixed_without_form_feeds(text)
    assert fixed.count("\f") == text.count("\f")
    # every line the fix did not touch is the original line, form feed and all
    untouched = [
        line for line in text.split("\n") if "kv_cache[" not in line and "unbind" not in line
    ]
    assert all(line in fixed.split("\n") for line in untouched)


def test_the_generated_splitter_has_the_class_body_indentation() -> None:
    fixed = fix_text(HEADER + "\f\n" + SCATTERED_SOURCE)
    assert "\n    def _split_kv_cache(self, kv_cache):\n" in fixed
    assert '\n        """Split one layer' in fixed
    assert '\n        Assumes K/V on axis 0 of the cache.\n        """\n' in fixed
    assert "\n        return kv_cache[0], kv_cache[1]\n" in fixed


def test_check_reads_a_class_whose_line_starts_with_a_form_feed(kvguard, tmp_path) -> None:  # type: ignore[no-untyped-def]
    write(tmp_path, "impl.py", HEADER + "\fclass" + SCATTERED_SOURCE.removeprefix("class"))
    proc = kvguard("check", "--no-cache", "impl.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.count(" KVG001 ") == 3 and proc.stdout.count(" KVG004 ") == 1


@pytest.mark.skipif(shutil.which("patch") is None, reason="needs patch(1)")
def test_the_diff_of_a_file_with_form_feeds_applies(kvguard, tmp_path: Path) -> None:
    text = HEADER + SCATTERED_SOURCE.replace("\n\n", "\n\f\n")
    path = write(tmp_path, "impl.py", text)
    diff = kvguard("check", "--no-cache", "--diff", "impl.py").stdout
    applied = subprocess.run(["patch", "-p1", "-i", "-"], input=diff, cwd=tmp_path, text=True)
    assert applied.returncode == 0
    assert path.read_text() == fix_text(text)
