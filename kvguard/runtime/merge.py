"""Merge the per-process reports of a KVGUARD_REPORT directory and render them.

Plain JSON and rich only (no torch): `kvguard report DIR` runs anywhere the files land.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .render import layout_map


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
    """One document: every process's report, plus totals."""
    return {
        "processes": reports,
        "totals": {
            "processes": len(reports),
            "allocations": sum(len(r["allocations"]) for r in reports),
            "layers": sum(len(r["layers"]) for r in reports),
            "violations": sum(len(r["violations"]) for r in reports),
        },
    }


def _process_name(report: dict[str, Any]) -> str:
    proc = report.get("process", {})
    rank = f" rank {proc['rank']}" if proc.get("rank") not in (None, "") else ""
    return f"{proc.get('host', '')} pid {proc.get('pid', '?')}{rank}".strip()


def summary_table(merged: dict[str, Any]) -> Table:
    totals = merged["totals"]
    table = Table(
        title=f"kvguard: {totals['processes']} process(es), {totals['allocations']} "
        f"allocation(s), {totals['layers']} layer(s), {totals['violations']} violation(s)"
    )
    columns = ("process", "mode", "layer", "impl", "backend", "attn type", "alloc", "page map")
    for col in (*columns, "status"):
        table.add_column(col)
    for report in merged["processes"]:
        allocs = {a["id"]: a for a in report["allocations"]}
        backends = {b["layer"]: b.get("backend") for b in report.get("bindings", [])}
        for layer in report["layers"]:
            alloc = allocs.get(layer["allocation"])
            page_map = "-"
            if alloc is not None:
                declared = alloc.get("declared", {})
                stated = layer["name"] in declared or "*" in declared
                page_map = "declared" if stated else "inferred"
            status = layer["status"]
            style = {"ok": "green", "violation": "bold red"}.get(status, "yellow")
            table.add_row(
                _process_name(report),
                str(report.get("mode", "?")),
                layer["name"],
                layer["impl"],
                backends.get(layer["name"]) or "-",
                layer["attn_type"],
                "-" if layer["allocation"] is None else str(layer["allocation"]),
                page_map,
                Text(status + (f" ({layer['reason']})" if layer.get("reason") else ""), style),
            )
    return table


def render(merged: dict[str, Any], console: Console) -> None:
    console.print(summary_table(merged))
    for report in merged["processes"]:
        for v in report["violations"]:
            console.print(
                Text(
                    f"{_process_name(report)}: {v['invariant']}: {v['layer']} vs {v['other']}",
                    style="bold red",
                )
            )
            console.print(layout_map(report, v))
            console.print(Text(v["message"]))
