"""``# kvguard: ignore[CODE, ...]`` on a flagged line, ``# kvguard: ignore-file`` anywhere.

Only real comments count: text that merely looks like one inside a string literal does not.
A cheap pattern search finds the lines that may hold one; only then is the file tokenized
(up to the last such line) to see whether the ``#`` there starts a comment.
"""

from __future__ import annotations

import io
import re
import tokenize

from kvguard.lint.spans import source_lines

_LINE = re.compile(r"#\s*kvguard:\s*ignore(?!-)(?:\[\s*([A-Za-z0-9_,\s]*)\])?")
_FILE = re.compile(r"^[ \t]*#\s*kvguard:\s*ignore-file\b", re.MULTILINE)


def _comments(text: str, last_line: int) -> dict[int, str] | None:
    """Comment text by line, up to ``last_line``; None if the text does not tokenize."""
    out: dict[int, str] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.start[0] > last_line:
                break
            if token.type == tokenize.COMMENT:
                out[token.start[0]] = token.string
    except (tokenize.TokenError, SyntaxError):
        return None
    return out


def ignores_file(text: str) -> bool:
    if "kvguard" not in text:
        return False
    matches = list(_FILE.finditer(text))
    if not matches:
        return False
    lines = [text.count("\n", 0, m.start()) + 1 for m in matches]
    comments = _comments(text, max(lines))
    if comments is None:
        return True
    return any(_FILE.match(comments.get(line, "")) for line in lines)


def line_suppressions(text: str) -> dict[int, frozenset[str] | None]:
    """1-based line -> codes suppressed there (None: every code)."""
    out: dict[int, frozenset[str] | None] = {}
    if "kvguard" not in text:
        return out
    found: dict[int, str] = {}
    for number, line in enumerate(source_lines(text), start=1):
        if "kvguard" in line and _LINE.search(line):
            found[number] = line
    if not found:
        return out
    comments = _comments(text, max(found))
    for number, line in found.items():
        match = _LINE.search(line if comments is None else comments.get(number, ""))
        if match is None:
            continue
        codes = match.group(1)
        out[number] = (
            None
            if codes is None
            else frozenset(c.strip().upper() for c in codes.split(",") if c.strip())
        )
    return out


def is_suppressed(suppressions: dict[int, frozenset[str] | None], line: int, code: str) -> bool:
    if line not in suppressions:
        return False
    codes = suppressions[line]
    return codes is None or code in codes
