"""Merge the per-process reports of a KVGUARD_REPORT directory and render them.

Plain JSON and rich only (no torch): `kvguard report DIR` runs anywhere the files land.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console

from .render import WIDTH, never_called, print_lines, report_lines


class ReportError(ValueError):
    """A report directory or file that cannot be read; the message is one line for the user."""


def load_reports(directory: Path) -> list[dict[str, Any]]:
    if not directory.exists():
        raise ReportError(f"{directory}: no such directory; pass the KVGUARD_REPORT directory")
    if not directory.is_dir():
        raise ReportError(f"{directory}: not a directory; pass the KVGUARD_REPORT directory")
    paths = sorted(directory.glob("*.json"))
    if not paths:
        raise ReportError(
            f"{directory}: no *.json reports; run vLLM with KVGUARD_MODE and "
            f"KVGUARD_REPORT={directory}"
        )
    reports = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ReportError(f"{path}: not a readable kvguard report ({exc})") from None
        if not isinstance(data, dict) or not all(
            isinstance(data.get(k), list) for k in ("allocations", "layers", "violations")
        ):
            raise ReportError(
                f"{path}: not a kvguard report (needs allocations, layers and violations lists)"
            )
        data.setdefault("process", {"pid": path.stem})
        data["file"] = path.name
        reports.append(data)
    return reports


def merge(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One document: every process's report, plus totals. Each process gains `never_called`
    (the layers its engine bound that no call of reached the guard), which `layers` counts."""
    for r in reports:
        r["never_called"] = [b["layer"] for b in never_called(r)]
    return {
        "processes": reports,
        "totals": {
            "processes": len(reports),
            "allocations": sum(len(r["allocations"]) for r in reports),
            "layers": sum(len(r["layers"]) + len(r["never_called"]) for r in reports),
            "never_called": sum(len(r["never_called"]) for r in reports),
            "violations": sum(len(r["violations"]) for r in reports),
            "connector_load_mismatches": sum(
                len((r.get("connector") or {}).get("load_mismatches", ())) for r in reports
            ),
        },
    }


def render(merged: dict[str, Any], console: Console) -> None:
    """The merged report as text, at most 80 columns wide."""
    print_lines(report_lines(merged["processes"]), console)


def show(merged: dict[str, Any], svg: Path | None = None) -> None:
    """`kvguard report DIR` text on stdout; with `svg`, the drawing too (.html: a page)."""
    render(merged, Console(highlight=False, width=max(WIDTH, Console().width)))
    if svg is not None:
        from .svg import write_drawing

        write_drawing(merged["processes"], str(svg))
