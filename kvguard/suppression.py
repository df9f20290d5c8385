"""``# kvguard: ignore[CODE, ...]`` on a flagged line, ``# kvguard: ignore-file`` anywhere."""

from __future__ import annotations

import re

_LINE = re.compile(r"#\s*kvguard:\s*ignore(?!-)(?:\[\s*([A-Za-z0-9_,\s]*)\])?")
_FILE = re.compile(r"^[ \t]*#\s*kvguard:\s*ignore-file\b", re.MULTILINE)


def ignores_file(text: str) -> bool:
    return _FILE.search(text) is not None


def line_suppressions(text: str) -> dict[int, frozenset[str] | None]:
    """1-based line -> codes suppressed there (None: every code)."""
    out: dict[int, frozenset[str] | None] = {}
    if "kvguard" not in text:
        return out
    for number, line in enumerate(text.splitlines(), start=1):
        if "kvguard" not in line:
            continue
        match = _LINE.search(line)
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
