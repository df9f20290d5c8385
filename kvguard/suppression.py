"""``# kvguard: ignore[CODE, ...]: reason`` on a flagged line, ``# kvguard: ignore-file``.

The reason is optional free text after the pragma (``:`` or ``--`` before it, as vLLM's own
``# gpu-sync-ok: <reason>``); it travels with the silenced finding into JSON and SARIF.
Only real comments count: text that merely looks like one inside a string literal does not.
A cheap pattern search finds the lines that may hold one; only then is the file tokenized
(up to the last such line) to see whether the ``#`` there starts a comment.
"""

from __future__ import annotations

import io
import re
import tokenize
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kvguard.findings import Finding, Notice
from kvguard.lint.spans import source_lines

if TYPE_CHECKING:
    from kvguard.config import Config

# The pragma is written `kvguard` or `KVGUARD` (ruff takes its noqa in either case); the
# rest of it, codes included, in any case. Only those two spellings of the name are looked
# for, so the text search that skips files without a pragma stays two exact searches.
_NAME = "(?:kvguard|KVGUARD)"
_LINE = re.compile(
    rf"#\s*{_NAME}:\s*(?i:ignore)(?![-\w])(?:\[\s*(?P<codes>[^\]]*)\])?"
    r"\s*(?::|--?|\u2014)?\s*(?P<reason>.*)$"
)
_FILE = re.compile(rf"^[ \t]*#\s*{_NAME}:\s*(?i:ignore-file)\b", re.MULTILINE)


def _mentions(text: str) -> bool:
    return "kvguard" in text or "KVGUARD" in text


_CODE_SPLIT = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class Pragma:
    """One ``# kvguard: ignore`` comment."""

    line: int
    column: int  # 1-based column of its ``#``
    codes: tuple[str, ...] | None  # None: every code
    reason: str

    def silences(self, code: str) -> bool:
        return self.codes is None or code in self.codes


def _comments(text: str, last_line: int) -> dict[int, tuple[int, str]] | None:
    """(column, comment text) by line, up to ``last_line``; None if it does not tokenize."""
    out: dict[int, tuple[int, str]] = {}
    try:
        for token in tokenize.generate_tokens(io.StringIO(text).readline):
            if token.start[0] > last_line:
                break
            if token.type == tokenize.COMMENT:
                out[token.start[0]] = (token.start[1], token.string)
    except (tokenize.TokenError, SyntaxError):
        return None
    return out


def ignores_file(text: str) -> bool:
    if not _mentions(text):
        return False
    matches = list(_FILE.finditer(text))
    if not matches:
        return False
    lines = [text.count("\n", 0, m.start()) + 1 for m in matches]
    comments = _comments(text, max(lines))
    if comments is None:
        return True
    return any(_FILE.match(comments.get(line, (0, ""))[1]) for line in lines)


def pragmas(text: str) -> dict[int, Pragma]:
    """The ``# kvguard: ignore`` comments of a file, by 1-based line."""
    if not _mentions(text):
        return {}
    found: dict[int, str] = {}
    for number, line in enumerate(source_lines(text), start=1):
        if _mentions(line) and _LINE.search(line):
            found[number] = line
    if not found:
        return {}
    comments = _comments(text, max(found))
    out: dict[int, Pragma] = {}
    for number, line in found.items():
        if comments is None:  # untokenizable text: take the line's own match
            match = _LINE.search(line)
            column = match.start() if match else 0
        else:
            column, comment = comments.get(number, (0, ""))
            match = _LINE.search(comment)
            column += match.start() if match else 0
        if match is None:
            continue
        raw = match.group("codes")
        codes = None if raw is None else tuple(c.upper() for c in _CODE_SPLIT.split(raw) if c)
        out[number] = Pragma(number, column + 1, codes, match.group("reason").strip())
    return out


def is_suppressed(suppressions: dict[int, Pragma], line: int, code: str) -> bool:
    pragma = suppressions.get(line)
    return pragma is not None and pragma.silences(code)


def suppression_notices(
    comments: dict[int, Pragma],
    findings: Iterable[Finding],
    known: frozenset[str],
    config: Config,
    path: str,
) -> list[Notice]:
    """Warnings on comments that name an unknown code or silence nothing (as ruff's
    RUF100): ``findings`` are every finding of the file, suppressed ones included. A code
    that is not enabled for this file is not judged: its findings were never looked for."""
    if not comments:
        return []
    on_line: dict[int, set[str]] = {}
    for finding in findings:
        on_line.setdefault(finding.line, set()).add(finding.code)
    out = []
    for line, pragma in sorted(comments.items()):
        here = on_line.get(line, set())

        def warn(message: str, pragma: Pragma = pragma) -> None:
            out.append(Notice(path, pragma.line, pragma.column, message))

        if pragma.codes is None:
            if not here:
                warn("unused suppression: no finding on this line to ignore")
            continue
        if not pragma.codes:
            warn("suppression names no code: `# kvguard: ignore[KVG001]` names one")
            continue
        for code in pragma.codes:
            if code not in known:
                warn(f"unknown rule code `{code}` in suppression; `kvguard rules` lists the codes")
            elif config.enabled(code, path) and code not in here:
                warn(f"unused suppression: no {code} finding on this line to ignore")
    return out


def line_suppressions(text: str) -> dict[int, Pragma]:
    """The name ``--fix`` uses: the same as ``pragmas``."""
    return pragmas(text)
