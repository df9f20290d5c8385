"""Pictures of a report: a rich table of layers and a layout map, in the terminal or as SVG.

The layout map puts the allocation's bytes on the x axis (one column per cell of bytes) and
each layer's K and V footprints of blocks 0..k-1 on the rows; a cell is marked with the block
id that addresses any of its bytes, and cells where a layer's block lands in another block's
page are red. The top row names the block whose page starts each cell (last digit).
It is drawn from the report's JSON alone, so merged reports of other processes render too.
"""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .footprint import ViewGeometry
from .pagemap import PageMap

MAP_COLUMNS = 64
MAP_BLOCKS = 4


def layers_table(report: dict[str, Any]) -> Table:
    table = Table(title=f"kvguard report (mode {report['mode']})")
    for col in ("layer", "impl", "attn type", "alloc", "layout", "views", "status"):
        table.add_column(col)
    for layer in report["layers"]:
        views = "\n".join(
            f"{r}: {tuple(v['shape'])} {tuple(v['stride'])} @{v['offset']} {v['dtype']}"
            for r, v in zip(layer["roles"], layer["views"], strict=True)
        )
        status = layer["status"]
        style = {"ok": "green", "violation": "bold red"}.get(status, "yellow")
        table.add_row(
            layer["name"],
            layer["impl"],
            layer["attn_type"],
            str(layer["allocation"]),
            layer["layout"] or "-",
            views,
            Text(status + (f" ({layer['reason']})" if layer.get("reason") else ""), style=style),
        )
    return table


def layout_map(report: dict[str, Any], violation: dict[str, Any]) -> Text:
    """Rows of K/V footprints of blocks 0..MAP_BLOCKS-1 for the two layers of a violation."""
    layers = {rec["name"]: rec for rec in report["layers"]}
    pm_json = violation.get("page_map")
    pm = PageMap(**{**pm_json, "planes": tuple(pm_json["planes"])}) if pm_json else None
    names = [n for n in (violation["other"], violation["layer"]) if n in layers]
    rows: list[tuple[str, ViewGeometry, str]] = [
        (name, ViewGeometry.from_json(v), role)
        for name in names
        for role, v in zip(layers[name]["roles"], layers[name]["views"], strict=True)
    ]
    if not rows:
        return Text("(no views recorded)")
    spans = [g.block_span(b) for _, g, _ in rows for b in range(min(MAP_BLOCKS, g.num_blocks))]
    lo = min(s[0] for s in spans)
    hi = max(s[1] for s in spans)
    cell = max(1, -(-(hi - lo) // MAP_COLUMNS))
    text = Text(f"layout map: bytes {lo}..{hi}, one column = {cell} bytes\n")
    if pm is not None:
        line = Text(f"{'page owner':>28} ")
        for c in range(MAP_COLUMNS):
            owner = pm.owner_of(lo + c * cell)
            line.append(str(owner % 10) if owner is not None else ".", "dim")
        text.append_text(line)
        text.append("\n")
    for name, g, role in rows:
        line = Text(f"{(name[-24:] + ' ' + role):>28} ")
        for c in range(MAP_COLUMNS):
            byte = lo + c * cell
            mark, style = ".", "dim"
            for b in range(min(MAP_BLOCKS, g.num_blocks)):
                s_lo, s_hi = g.block_span(b)
                if s_lo < byte + cell and byte < s_hi:  # any overlap: narrow spans stay visible
                    owner = pm.owner_of(max(byte, s_lo)) if pm else b
                    k = pm.blocks_per_page(g) if pm else 1
                    if style != "bold white on red":  # one colliding block marks the cell
                        mark = str(b % 10)
                        style = "bold white on red" if owner != b // k else "bold green"
            line.append(mark, style)
        text.append_text(line)
        text.append("\n")
    return text


def render_report(report: dict[str, Any], console: Console | None = None) -> Console:
    """Print the layers table and a layout map per violation; returns the console used."""
    console = console or Console()
    console.print(layers_table(report))
    for v in report["violations"]:
        console.print(Text(f"{v['invariant']}: {v['layer']} vs {v['other']}", style="bold red"))
        console.print(layout_map(report, v))
    return console


def save_svg(report: dict[str, Any], path: str) -> None:
    """Render the report (table and layout maps) to an SVG file."""
    console = Console(record=True, width=160, file=io.StringIO())
    render_report(report, console)
    console.save_svg(path, title="kvguard layout map")
