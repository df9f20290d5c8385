"""The connector check's part of a report (`kvguard report`), from its JSON alone (no torch):
what was stored and verified, which layers were not covered and why, and each load
mismatch's full diagnosis."""

from __future__ import annotations

from typing import Any

from rich.text import Text

from .load_records import LoadMismatch


def mismatches(report: dict[str, Any]) -> list[LoadMismatch]:
    section = report.get("connector") or {}
    return [LoadMismatch.from_json(m) for m in section.get("load_mismatches", ())]


def connector_lines(report: dict[str, Any], wrap) -> list[Text]:
    """`wrap(text, indent)` -> lines of the report's width."""
    section = report.get("connector")
    if not section:
        return []
    found = mismatches(report)
    names = ", ".join(section.get("connectors", ())) or "a KV connector"
    head = (
        f"connector check ({names}): {section.get('stored_blocks', 0)} blocks stored, "
        f"{section.get('verified_blocks', 0)} loaded blocks verified, "
        f"{section.get('unverified_blocks', 0)} loaded blocks unverified (their tokens were "
        f"not computed in this process), {len(found)} load mismatch(es)"
    )
    lines = [Text(line, "bold red" if found else "bold") for line in wrap(head, "")]
    for layer, why in (section.get("uncovered_layers") or {}).items():
        lines += [Text(line, "yellow") for line in wrap(f"not covered: {layer}: {why}", "  ")]
    for m in found:
        lines.append(Text(""))
        text = str(m).splitlines()
        lines += [Text(line, "red") for line in wrap(text[0], "  ")]
        lines += [Text(line) for t in text[1:] for line in wrap(t, "  ")]
    return lines
