"""GitHub Actions workflow commands: one annotation per finding, warning or error."""

from __future__ import annotations

from kvguard.catalog import Rule
from kvguard.engine import Result

_LEVEL = {"error": "error", "warning": "warning", "advice": "notice"}


def _data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _prop(text: str) -> str:
    return _data(text).replace(":", "%3A").replace(",", "%2C")


def render(result: Result, catalog: dict[str, Rule]) -> str:
    lines = []
    for f in result.findings:
        rule = catalog.get(f.code)
        title = f"{f.code} {rule.name}" if rule else f.code
        level = _LEVEL.get(f.severity, "error")
        lines.append(
            f"::{level} file={_prop(f.path)},line={f.line},col={f.column},"
            f"endLine={f.end_line},endColumn={f.end_column},title={_prop(title)}::"
            f"{_data(f'{f.code} {f.message}')}"
        )
    for n in result.notices:
        lines.append(
            f"::warning file={_prop(n.path)},line={n.line},col={n.column},title=kvguard::"
            f"{_data(n.message)}"
        )
    for e in result.errors:
        where = f",line={e.line}" if e.line else ""
        where += f",col={e.column}" if e.line and e.column else ""
        lines.append(f"::error file={_prop(e.path)}{where},title=kvguard::{_data(e.message)}")
    return "\n".join(lines)
