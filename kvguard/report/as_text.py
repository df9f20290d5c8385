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


def render(
    result: Result, catalog: dict[str, Rule], statistics: bool, color: bool, unsafe: bool = False
) -> str:
    """Markup for rich when ``color``; otherwise plain text. ``[*]``: ``--fix`` fixes it."""

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
        marker = plain("[*] ") if _fixable(f, unsafe) else ""
        out.append(
            f"{style(f.path, 'bold')}:{f.line}:{f.column}: {style(f.code, tag)} "
            f"{marker}{plain(f.message)}"
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
    hint = _fix_hint(result, unsafe)
    if hint:  # before the summary, which stays the last line
        out.append(plain(hint))
    out.append(_summary_line(result, style))
    return "\n".join(out)


def _fixable(finding, unsafe: bool) -> bool:  # type: ignore[no-untyped-def]
    fix = finding.fix
    return fix is not None and (
        fix.applicability == "safe" or (unsafe and fix.applicability == "unsafe")
    )


def _fix_hint(result: Result, unsafe: bool) -> str:
    """ruff's line: how many findings --fix would fix, and how many need --unsafe-fixes."""
    fixable = sum(_fixable(f, unsafe) for f in result.findings)
    hidden = (
        0
        if unsafe
        else sum(f.fix is not None and f.fix.applicability == "unsafe" for f in result.findings)
    )
    parts = []
    if fixable:
        option = "`--fix --unsafe-fixes`" if unsafe else "`--fix`"
        parts.append(f"[*] {fixable} fixable with {option}.")
    if hidden:
        s = "es" if hidden != 1 else ""
        parts.append(f"({hidden} hidden fix{s} can be enabled with `--unsafe-fixes`.)")
    return " ".join(parts)


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
