"""ruff-like text: ``path:line:col: CODE message``, the source line with a caret, a summary."""

from __future__ import annotations

from collections import Counter
from functools import lru_cache

from kvguard.catalog import Rule
from kvguard.engine import Result


@lru_cache(maxsize=64)
def _lines(path: str) -> list[str]:
    from kvguard.files import SourceError, read_source

    try:
        return read_source(path)[1].splitlines()
    except SourceError:
        return []


def _excerpt(path: str, line: int, column: int, end_line: int, end_column: int) -> list[str]:
    lines = _lines(path)
    if not 0 < line <= len(lines):
        return []
    source = lines[line - 1].expandtabs(1)
    width = (end_column if end_line == line else len(source) + 1) - column
    gutter = len(str(line))
    return [
        f"{' ' * gutter} |",
        f"{line} | {source}",
        f"{' ' * gutter} | {' ' * (column - 1)}{'^' * max(1, width)}",
    ]


def render(result: Result, catalog: dict[str, Rule], statistics: bool, color: bool) -> str:
    """Markup for rich when ``color``; otherwise plain text."""

    def style(text: str, tag: str) -> str:
        if not color:
            return text
        from rich.markup import escape

        return f"[{tag}]{escape(text)}[/{tag}]"

    def plain(text: str) -> str:
        if not color:
            return text
        from rich.markup import escape

        return escape(text)

    out: list[str] = []
    for f in result.findings:
        tag = {"error": "bold red", "warning": "yellow", "advice": "cyan"}.get(f.severity, "red")
        out.append(
            f"{style(f.path, 'bold')}:{f.line}:{f.column}: {style(f.code, tag)} {plain(f.message)}"
        )
        out.extend(
            style(x, "blue") if i != 1 else plain(x)
            for i, x in enumerate(_excerpt(f.path, f.line, f.column, f.end_line, f.end_column))
        )
        out.append("")
    for e in result.errors:
        out.append(f"{style(e.path, 'bold')}: {style('error', 'bold red')}: {plain(e.message)}")
    if statistics and result.findings:
        counts = Counter(f.code for f in result.findings)
        if out and out[-1] != "":
            out.append("")
        for code, count in counts.most_common():
            name = catalog[code].name if code in catalog else ""
            out.append(f"{count:>5}  {code}  {name}")
    out.append(_summary_line(result, style))
    return "\n".join(out)


def _summary_line(result: Result, style) -> str:  # type: ignore[no-untyped-def]
    n = len(result.findings)
    files = f"{result.files} file{'s' if result.files != 1 else ''}"
    parts = []
    if n:
        by_code = Counter(f.code for f in result.findings)
        detail = ", ".join(f"{c} {k}" for k, c in sorted(by_code.items()))
        parts.append(
            style(f"Found {n} finding{'s' if n != 1 else ''} ({detail}) in {files}.", "bold")
        )
    else:
        parts.append(style(f"All checks passed ({files}).", "bold green"))
    if result.errors:
        e = len(result.errors)
        parts.append(style(f"{e} path{'s' if e != 1 else ''} could not be analyzed.", "bold red"))
    return " ".join(parts)
