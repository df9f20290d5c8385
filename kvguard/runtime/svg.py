"""The report as a drawing (SVG, or an HTML page holding it and the text report).

Per process: each allocation as a bar over its bytes, the pages of each layer's page map
coloured by that layer; then, per root cause of violation, a zoom on the bytes that blocks
0..3 of the layers involved address: the page map's pages on top (block ids), one row per
view with its blocks in the layer's colour, and every block that lands in another block's
page filled with the collision colour. Far-apart runs of bytes (a K/V-first V half an
allocation away) get their own stretch of the axis, joined by a break mark.
"""

from __future__ import annotations

import html
from typing import Any

from .footprint import ViewGeometry
from .pagemap import PageMap
from .records import LayerRecord, Violation
from .render import MAP_BLOCKS, causes, report_lines

PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#72b7b2", "#eeca3b", "#9d755d", "#ff9da6")
COLLISION = "#e0242b"
PAGE_FILLS = ("#e6e6e6", "#cfcfcf")
WIDTH = 960
LEFT = 230  # room for row labels
BAR = 22
ROW = 26
FONT = 'font-family="DejaVu Sans, Verdana, sans-serif"'


def layer_colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _rect(x, y, w, h, fill, cls, title="", extra="") -> str:
    tip = f"<title>{html.escape(title)}</title>" if title else ""
    return (
        f'<rect class="{cls}" x="{x:.1f}" y="{y:.1f}" width="{max(w, 1.0):.1f}" '
        f'height="{h:.1f}" fill="{fill}" {extra}>{tip}</rect>'
    )


def _text(x, y, s, size=12, anchor="start", weight="normal", fill="#222") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" '
        f'font-weight="{weight}" fill="{fill}" {FONT}>{html.escape(s)}</text>'
    )


class _Axis:
    """Bytes to x: clusters of spans, each scaled into its share of the width."""

    def __init__(self, spans: list[tuple[int, int]], x0: float, width: float) -> None:
        spans = sorted(spans)
        total = max(hi for _, hi in spans) - min(lo for lo, _ in spans)
        clusters: list[list[int]] = []
        for lo, hi in spans:
            if clusters and lo <= clusters[-1][1] + total // 8:
                clusters[-1][1] = max(clusters[-1][1], hi)
            else:
                clusters.append([lo, hi])
        gap = 18.0
        room = width - gap * (len(clusters) - 1)
        size = sum(hi - lo for lo, hi in clusters)
        self.pieces = []
        x = x0
        for lo, hi in clusters:
            w = room * (hi - lo) / size
            self.pieces.append((lo, hi, x, w))
            x += w + gap

    def x(self, byte: int) -> float | None:
        for lo, hi, x, w in self.pieces:
            if lo <= byte <= hi:
                return x + w * (byte - lo) / (hi - lo)
        return None

    def span(self, lo: int, hi: int) -> tuple[float, float] | None:
        a, b = self.x(lo), self.x(hi)
        return None if a is None or b is None else (a, b - a)

    def breaks(self) -> list[float]:
        return [x - 9 for _, _, x, _ in self.pieces[1:]]


def _owner_colours(report: dict[str, Any]) -> dict[str, str]:
    return {layer["name"]: layer_colour(i) for i, layer in enumerate(report["layers"])}


def _allocation_bars(
    report: dict[str, Any], y: float, colours: dict[str, str]
) -> tuple[list[str], float]:
    out = []
    for alloc in report["allocations"]:
        n = max(alloc["nbytes"], 1)
        scale = (WIDTH - LEFT - 20) / n
        out.append(_text(10, y + 15, f"allocation #{alloc['id']}", weight="bold"))
        out.append(_text(10, y + 29, f"{alloc['nbytes']} bytes, {alloc['device']}", size=10))
        out.append(
            _rect(
                LEFT,
                y,
                n * scale,
                BAR,
                "#f4f4f4",
                "allocation",
                extra='stroke="#888" stroke-width="1"',
            )
        )
        slots: list[tuple[str, int, int]] = []
        for name, d in alloc.get("declared", {}).items():
            pm = PageMap.from_json(d)
            slots.append((name, *pm.hull()))
        for region in alloc.get("regions", ()):
            for name in region["layers"][:1]:
                slots.append((name, region["lo"], region["hi"]))
        for name, lo, hi in slots:
            colour = colours.get(name, "#999")
            out.append(
                _rect(
                    LEFT + lo * scale,
                    y + 2,
                    (hi - lo) * scale,
                    BAR - 4,
                    colour,
                    "page",
                    f"pages of {name}: bytes [{lo}, {hi})",
                    'opacity="1"',
                )
            )
        y += BAR + 22
    return out, y


def _cause_panel(
    v: Violation, y: float, colours: dict[str, str], title: str
) -> tuple[list[str], float]:
    records: list[LayerRecord] = [v.layer] + ([v.other] if v.other else [])
    rows = [(r, view) for r in records for view in r.views]
    blocks = min(MAP_BLOCKS, *(view.geometry.num_blocks for _, view in rows))
    pm = v.page_map
    spans = [view.geometry.block_span(b) for _, view in rows for b in range(blocks)]
    pages: list[tuple[int, int, int]] = []
    if pm is not None:
        seen = set()
        for lo, hi in spans:
            for byte in (lo, hi - 1):
                owner = pm.owner_of(byte)
                if owner is not None:
                    for plane in range(len(pm.planes)):
                        p_lo, p_hi = pm.page_span(owner, plane)
                        if p_lo <= byte < p_hi and (owner, plane) not in seen:
                            seen.add((owner, plane))
                            pages.append((owner, p_lo, p_hi))
    axis = _Axis(spans + [(lo, hi) for _, lo, hi in pages], LEFT, WIDTH - LEFT - 20)
    out = [_text(10, y + 14, title, size=13, weight="bold")]
    y += 24
    out.append(_text(10, y + 15, "page map" if pm is not None else "(no page map)", size=11))
    for block, lo, hi in pages:
        span = axis.span(lo, hi)
        if span is None:
            continue
        x, w = span
        out.append(
            _rect(
                x,
                y,
                w,
                BAR,
                PAGE_FILLS[block % 2],
                "page",
                f"page of block {block}",
                'stroke="#777" stroke-width="0.5"',
            )
        )
        if w > 14:
            out.append(_text(x + w / 2, y + 15, str(block), size=10, anchor="middle"))
    y += BAR + 6
    bad = {(c.role, c.block) for c in v.collisions}
    shown: set[str] = set()
    for record, view in rows:
        g: ViewGeometry = view.geometry
        colour = colours.get(record.name, layer_colour(0))
        if record.name not in shown:
            shown.add(record.name)
            out.append(_rect(10, y + 3, 10, 10, colour, "legend"))
            out.append(
                _text(
                    24,
                    y + 12,
                    f"{record.name} ({record.impl.rsplit('.', 1)[-1]})",
                    size=11,
                    weight="bold",
                )
            )
            y += 18
        out.append(_text(24, y + 15, view.role[:30], size=11))
        for b in range(blocks):
            span = axis.span(*g.block_span(b))
            if span is None:
                continue
            x, w = span
            lo, _hi = g.block_span(b)
            owner = pm.owner_of(lo) if pm else b
            k = pm.blocks_per_page(g) if pm else 1
            foreign = record is v.layer and ((view.role, b) in bad or owner != b // k)
            fill = COLLISION if foreign else colour
            cls = "collision" if foreign else "block"
            out.append(
                _rect(
                    x,
                    y,
                    w,
                    BAR,
                    fill,
                    cls,
                    f"{record.name} {view.role} block {b}: bytes {g.block_span(b)}",
                    'stroke="#333" stroke-width="0.5"',
                )
            )
            if w > 14:
                out.append(_text(x + w / 2, y + 15, str(b), size=10, anchor="middle", fill="#fff"))
        y += ROW
    for x in axis.breaks():
        out.append(_text(x, y - 4, "≈", size=14, anchor="middle", fill="#555"))
    return out, y + 14


def drawing(reports: list[dict[str, Any]]) -> str:
    body: list[str] = []
    y = 12.0
    body.append(_text(10, y + 14, "kvguard: KV-cache layout report", size=16, weight="bold"))
    y += 34
    for report in reports:
        colours = _owner_colours(report)
        proc = report.get("process", {})
        body.append(
            _text(
                10,
                y + 12,
                f"process pid {proc.get('pid', '?')}, mode {report.get('mode', '?')}",
                size=13,
                weight="bold",
            )
        )
        y += 22
        parts, y = _allocation_bars(report, y, colours)
        body += parts
        violations = [Violation.from_json(v) for v in report["violations"] if "layer_record" in v]
        for i, group in enumerate(causes(violations), 1):
            v = group[0]
            title = (
                f"root cause {i}: {v.invariant}, {v.action}, {len(group)} layer(s), "
                f"first {v.layer.name}"
            )
            parts, y = _cause_panel(v, y, colours, title)
            body += parts
        y += 10
    legend_y = y
    names = list(dict.fromkeys(layer["name"] for r in reports for layer in r["layers"]))
    entries = [(layer_colour(i), name) for i, name in enumerate(names)]
    entries.append((COLLISION, "a block whose bytes lie in another block's page"))
    column = (WIDTH - 20) / 2
    for i, (colour, name) in enumerate(entries):
        x = 10 + column * (i % 2)
        if i and i % 2 == 0:
            legend_y += 18
        body.append(_rect(x, legend_y, 12, 12, colour, "legend"))
        body.append(_text(x + 16, legend_y + 11, name, size=10))
    height = legend_y + 30
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" shape-rendering="crispEdges">'
        f'<rect width="100%" height="100%" fill="#ffffff"/>' + "".join(body) + "</svg>\n"
    )


def write_drawing(reports: list[dict[str, Any]], path: str) -> None:
    svg = drawing(reports)
    if path.endswith((".html", ".htm")):
        text = "\n".join(line.plain for line in report_lines(reports))
        svg = (
            '<!DOCTYPE html><html><head><meta charset="utf-8"><title>kvguard report</title>'
            "</head><body>" + svg + f"<pre>{html.escape(text)}</pre></body></html>\n"
        )
    with open(path, "w", encoding="utf-8") as f:
        f.write(svg)
