"""ruff-like text: ``path:line:col: CODE message``; ``full`` adds the source line with a
caret and the explanation, ``concise`` is one line per finding. A summary line ends it."""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from kvguard.catalog import Rule
from kvguard.engine import Result
from kvguard.findings import Finding

# characters that would move the caret off its column: shown as one space each
_INVISIBLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u2028\u2029]")


@dataclass(frozen=True)
class TextOptions:
    full: bool = True  # the source line, a caret and the explanation under each finding
    statistics: bool = False
    color: bool = False
    unsafe: bool = False  # --unsafe-fixes: unsafe fixes count as fixable
    quiet: bool = False  # findings, warnings and errors only: no hints, no summary


def _excerpt(f: Finding) -> list[str]:
    source = _INVISIBLE.sub(" ", f.source_line.expandtabs(1)) if f.source_line else ""
    if not source and f.line:
        source = _read_line(f.path, f.line)
    if not source:
        return []
    width = (f.end_column if f.end_line == f.line else len(source) + 1) - f.column
    gutter = len(str(f.line))
    return [
        f"{' ' * gutter} |",
        f"{f.line} | {source}",
        f"{' ' * gutter} | {' ' * (f.column - 1)}{'^' * max(1, width)}",
    ]


def _read_line(path: str, line: int) -> str:
    """A line of a file on disk, counted as the tokenizer counts lines (a finding made
    before the source line travelled with it)."""
    from kvguard.files import SourceError, read_source
    from kvguard.lint.spans import source_lines

    try:
        lines = source_lines(read_source(path)[1])
    except SourceError:
        return ""
    return _INVISIBLE.sub(" ", lines[line - 1].expandtabs(1)) if 0 < line <= len(lines) else ""


def render(result: Result, catalog: dict[str, Rule], options: TextOptions) -> str:
    """Markup for rich when ``options.color``; otherwise plain text. ``[*]``: fixable."""

    def style(text: str, tag: str) -> str:
        if not options.color:
            return text
        from rich.markup import escape

        return f"[{tag}]{escape(text)}[/{tag}]"

    def plain(text: str) -> str:
        if not options.color:
            return text
        from rich.markup import escape

        return escape(text)

    out: list[str] = []
    # --statistics: the table instead of the findings, as ruff prints it
    for f in () if options.statistics else result.findings:
        tag = {"error": "bold red", "warning": "yellow", "advice": "cyan"}.get(f.severity, "red")
        marker = plain("[*] ") if _fixable(f, options.unsafe) else ""
        out.append(
            f"{style(f'{f.path}:{f.line}:{f.column}:', 'bold')} {style(f.code, tag)} "
            f"{marker}{plain(f.message)}"
        )
        if not options.full:
            continue
        out.extend(style(x, "blue") if i != 1 else plain(x) for i, x in enumerate(_excerpt(f)))
        for label, text in _notes(f, options.unsafe):
            out.append(f"{style('  = ' + label + ':', 'cyan')} {plain(text)}")
        out.append("")
    for n in result.notices:
        out.append(
            f"{style(f'{n.path}:{n.line}:{n.column}:', 'bold')} {style('warning', 'yellow')}: "
            f"{plain(n.message)}"
        )
    for e in result.errors:
        out.append(
            f"{style(e.located() + ':', 'bold')} {style('error', 'bold red')}: {plain(e.message)}"
        )
    if options.quiet:
        return "\n".join(out).rstrip("\n")
    if options.statistics and result.findings:
        counts = Counter(f.code for f in result.findings)
        if out and out[-1] != "":  # after warnings or errors
            out.append("")
        for code, count in counts.most_common():
            name = catalog[code].name if code in catalog else ""
            out.append(f"{count:>5}  {code}  {name}")
    hint = _fix_hint(result, options.unsafe)
    if hint:  # before the summary, which stays the last line
        out.append(plain(hint))
    out.append(summary_line(result, style))
    return "\n".join(out)


def _notes(f: Finding, unsafe: bool) -> list[tuple[str, str]]:
    notes = []
    if f.explanation:
        notes.append(("help", f.explanation))
    if f.fix is not None:
        how = "--fix" if f.fix.applicability == "safe" else "--fix --unsafe-fixes"
        notes.append(("fix", f"{f.fix.message} ({f.fix.applicability}: {how})"))
    elif f.fix_withheld:
        notes.append(("note", f"no automatic fix: {f.fix_withheld}"))
    return notes


def _fixable(finding: Finding, unsafe: bool) -> bool:
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


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'s' if n != 1 else ''}"


def summary_line(result: Result, style) -> str:  # type: ignore[no-untyped-def]
    """One sentence that says what was checked and what came out, nothing more."""
    n = len(result.findings)
    checked = f"{_plural(result.files, 'file')} checked"
    parts = []
    if n:
        by_code = Counter(f.code for f in result.findings)
        detail = ", ".join(f"{c} {k}" for k, c in sorted(by_code.items()))
        with_findings = len({f.path for f in result.findings})
        parts.append(
            style(
                f"Found {_plural(n, 'finding')} ({detail}) in {_plural(with_findings, 'file')} "
                f"({checked}).",
                "bold",
            )
        )
    elif not result.files:
        found = "No files checked." if result.errors else "No Python files found to check."
        parts.append(style(found, "bold yellow"))
    elif result.errors:
        parts.append(style(f"No findings ({checked}).", "bold"))
    else:
        parts.append(style(f"All checks passed ({checked}).", "bold green"))
    if result.notices:
        parts.append(style(f"{_plural(len(result.notices), 'warning')}.", "yellow"))
    if result.errors:
        e = len(result.errors)
        verb = "path could not" if e == 1 else "paths could not"
        parts.append(style(f"{e:,} {verb} be analyzed.", "bold red"))
    return " ".join(parts)
