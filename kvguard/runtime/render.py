"""A report as an operator reads it, in at most 80 columns: per process, the layers grouped
by what they are and how they fared; then one block per root cause of violation (the layers
it covers, a per-block map, the full diagnostic of its first layer); `save_svg` draws it.

Everything is drawn from the report's JSON alone (no torch), so merged reports of other
processes render too.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from typing import Any

from rich.console import Console
from rich.text import Text

from .explain import short_impl
from .footprint import ViewGeometry
from .load_render import connector_lines, mismatches
from .records import LayerRecord, Violation

WIDTH = 80
MAP_BLOCKS = 4
STATUS_STYLE = {
    "ok": "green",
    "violation": "bold red",
    "fixed": "yellow",
    "pending": "cyan",
    "never called": "magenta",
}


# Layer names: model.layers.0.x, model.layers.1.x -> model.layers.{0-1}.x ------------------
def _ranges(numbers: Iterable[int]) -> str:
    out: list[str] = []
    for n in sorted(set(numbers)):
        if out and out[-1][1] == n - 1:
            out[-1] = (out[-1][0], n)
        else:
            out.append((n, n))  # type: ignore[arg-type]
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in out)  # type: ignore[misc]


def compress_names(names: list[str]) -> list[str]:
    """Names that differ in one number become one pattern: `model.layers.{0-3,5}.attn`."""
    if len(names) < 2:
        return list(names)
    split = [re.split(r"(\d+)", n) for n in names]
    best: list[str] | None = None
    for position in {i for parts in split for i in range(1, len(parts), 2)}:
        groups: dict[tuple, list[int]] = {}
        order: list[tuple] = []
        for parts in split:
            if position < len(parts):
                key = (*parts[:position], None, *parts[position + 1 :])
                number = int(parts[position])
            else:
                key, number = tuple(parts), -1
            if key not in groups:
                groups[key] = []
                order.append(key)
            groups[key].append(number)
        if best is not None and len(order) >= len(best):
            continue
        best = []
        for key in order:
            numbers = groups[key]
            if len(numbers) == 1 or None not in key:
                best.extend("".join(p if p is not None else str(n) for p in key) for n in numbers)
            else:
                best.append("".join(p if p is not None else f"{{{_ranges(numbers)}}}" for p in key))
    return best or list(names)


def _wrap(text: str, indent: str = "", width: int = WIDTH) -> list[str]:
    """Lines of at most `width` columns; continuation lines indented 4 more."""
    out = []
    for line in text.splitlines() or [""]:
        lead = indent + line[: len(line) - len(line.lstrip())]
        out += textwrap.wrap(
            line.strip(),
            width=width,
            initial_indent=lead,
            subsequent_indent=lead + "    ",
            break_on_hyphens=False,
        ) or [lead]
    return out


def _wrap_phrases(phrases: list[str], width: int = WIDTH) -> list[str]:
    """`_wrap` that breaks lines only between the phrases (each ends with its separator)."""
    glued = " ".join(p.replace(" ", "\u00a0") for p in phrases)  # no break inside a phrase
    return [line.replace("\u00a0", " ") for line in _wrap(glued, width=width)]


def plural(n: int, word: str) -> str:
    if n == 1:
        return f"1 {word}"
    return f"{n} {word}es" if word.endswith(("s", "sh", "ch", "x")) else f"{n} {word}s"


# The layers of one process -------------------------------------------------------------------
NEVER_CALLED = "never called"


def never_called(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The bindings of layers the engine bound a cache to but no call of which the guard saw
    (strict mode stopped the engine first, or the run ended before they ran)."""
    seen = {layer["name"] for layer in report["layers"]}
    return [
        b
        for b in report.get("bindings", [])
        if b.get("kv_cache") is not None and b.get("layer") not in seen
    ]


def _unjudged_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Never-called layers as layer rows: what vLLM bound, status "never called"."""
    by_ptr = {a["storage_ptr"]: a["id"] for a in reversed(report["allocations"])}
    return [
        {
            "name": b["layer"],
            "impl": b.get("impl") or "?",
            "attn_type": b.get("attn_type") or "unknown",
            "allocation": by_ptr.get(b["kv_cache"].get("storage_ptr")),
            "status": NEVER_CALLED,
            "reason": None,
            "fix_path": None,
        }
        for b in never_called(report)
    ]


def _process_name(report: dict[str, Any]) -> str:
    proc = report.get("process", {})
    rank = f" rank {proc['rank']}" if proc.get("rank") not in (None, "") else ""
    host = proc.get("host", "")
    return f"{host} pid {proc.get('pid', '?')}{rank}".strip()


def _page_map_source(report: dict[str, Any], layer: dict[str, Any]) -> str:
    for alloc in report["allocations"]:
        if alloc["id"] == layer.get("allocation"):
            declared = alloc.get("declared", {})
            return "declared" if layer["name"] in declared or "*" in declared else "inferred"
    return "-"


def layer_lines(report: dict[str, Any]) -> list[Text]:
    backends = {b["layer"]: b.get("backend") for b in report.get("bindings", [])}
    groups: dict[tuple, list[str]] = {}
    rows = report["layers"] + _unjudged_rows(report)
    column = max([10, *(len(layer["status"]) + 1 for layer in rows)])
    for layer in rows:
        backend = backends.get(layer["name"])
        key = (
            layer["status"],
            short_impl(layer["impl"]) + (f" ({backend})" if backend else ""),
            layer["attn_type"],
            layer.get("allocation"),
            _page_map_source(report, layer),
            layer.get("reason"),
            layer.get("fix_path"),
        )
        groups.setdefault(key, []).append(layer["name"])
    lines = []
    for (status, impl, attn, alloc, source, reason, fix_path), names in groups.items():
        what = f"{impl}, {attn}"
        if alloc is not None:
            what += f", allocation #{alloc} ({source} page map)"
        if fix_path:
            what += f", {fix_path}"
        if reason:
            what += f": {reason}"
        if status == NEVER_CALLED:
            what += ": bound, but no call reached the guard (not judged)"
        for pattern in compress_names(names):
            line = Text("  ")
            line.append(f"{status:<{column}}", STATUS_STYLE.get(status, "yellow"))
            line.append(f"{pattern}")
            lines.append(line)
        for part in _wrap(f"{plural(len(names), 'layer')}: {what}", " " * (2 + column)):
            lines.append(Text(part, "dim"))
    return lines


def _allocation_lines(report: dict[str, Any]) -> list[Text]:
    lines = []
    for alloc in report["allocations"]:
        declared = alloc.get("declared", {})
        maps = plural(len(declared), "declared page map") if declared else "page maps inferred"
        freed = ", freed" if alloc.get("freed") else ""
        lines.append(
            Text(
                f"  allocation #{alloc['id']}: {alloc['nbytes']} bytes on {alloc['device']}, "
                f"{maps}{freed}",
                "dim",
            )
        )
    return lines


# Violations by root cause ---------------------------------------------------------------------
def causes(violations: list[Violation]) -> list[list[Violation]]:
    """Violations grouped by root cause (`Violation.cause`), in first-seen order."""
    groups: dict[tuple, list[Violation]] = {}
    for v in violations:
        groups.setdefault(v.cause(), []).append(v)
    return list(groups.values())


def _cell(g: ViewGeometry, block: int, pm) -> tuple[str, bool]:
    lo, hi = g.block_span(block)
    if pm is None:
        return f"bytes {lo}", True
    k = pm.blocks_per_page(g)
    first, last = pm.owner_of(lo), pm.owner_of(hi - 1)
    own = block // k
    if first is None and last is None:
        return "no page ✗", False
    if first == last:
        ok = first == own
        return f"page {first} {'✓' if ok else '✗'}", ok
    span = f"pages {first if first is not None else '-'}-{last if last is not None else '-'}"
    return f"{span} ✗", False


def block_map(report: dict[str, Any], violation: dict[str, Any] | Violation) -> Text:
    """One column per block id (0..3): the page each view's block lands in, ✓ when it is the
    block's own page, ✗ when it is another block's (or none)."""
    v = violation if isinstance(violation, Violation) else Violation.from_json(violation)
    pm = v.page_map
    records: list[LayerRecord] = [v.layer] + ([v.other] if v.other else [])
    text = Text()
    source = pm.source if pm else "no page map"
    for part in _wrap(f"per-block map: the page each block's bytes land in ({source})", "  "):
        text.append(part + "\n", "dim")
    blocks = min(MAP_BLOCKS, *(g.num_blocks for r in records for g in r.geometries))
    role_width = max((len(view.role) for r in records for view in r.views), default=4)
    role_width = min(role_width, 24)
    header = " " * (8 + role_width) + "".join(f"{'block ' + str(b):<12}" for b in range(blocks))
    text.append(header.rstrip() + "\n", "bold")
    for record in records:
        for part in _wrap(f"{record.name} ({short_impl(record.impl)})", "    "):
            text.append(part + "\n")
        for view in record.views:
            text.append(f"      {view.role[:role_width]:<{role_width}}  ")
            for b in range(blocks):
                cell, ok = _cell(view.geometry, b, pm)
                padded = cell if b == blocks - 1 else f"{cell:<12}"  # no trailing spaces
                text.append(padded, "green" if ok else "bold red")
            text.append("\n")
    text.rstrip()
    return text


def violation_lines(group: list[Violation], report: dict[str, Any] | None = None) -> list[Text]:
    first = group[0]
    names = compress_names([v.layer.name for v in group])
    head = Text(
        f"{first.invariant}, {first.action}: {plural(len(group), 'layer')}",
        "bold red" if first.action != "fixed" else "bold yellow",
    )
    lines = [head]
    for pattern in names:
        lines += [Text(p) for p in _wrap(pattern, "  ")]
    lines.append(block_map(report or {}, first))
    lines += [Text(p) for p in _wrap(str(first))]
    return lines


# Whole reports ----------------------------------------------------------------------------------
def _violations(report: dict[str, Any]) -> list[Violation]:
    return [Violation.from_json(v) for v in report["violations"] if "layer_record" in v]


def process_lines(report: dict[str, Any]) -> list[Text]:
    mode = report.get("mode", "?")
    lines = [Text(f"process {_process_name(report)}, mode {mode}", "bold")]
    lines += _allocation_lines(report)
    lines += layer_lines(report)
    lines += connector_lines(report, _wrap)
    return lines


def headline(reports: list[dict[str, Any]]) -> list[str]:
    """The first lines: counts, broken only between phrases, at most 80 columns."""
    violations = [v for r in reports for v in _violations(r)]
    fixed = sum(v.action == "fixed" for v in violations)
    unjudged = sum(len(never_called(r)) for r in reports)
    layers = plural(sum(len(r["layers"]) for r in reports) + unjudged, "layer")
    if unjudged:
        layers += f" ({unjudged} never called)"
    phrases = [
        "kvguard report:",
        f"{plural(len(reports), 'process')},",
        f"{layers},",
        f"{plural(sum(len(r['allocations']) for r in reports), 'allocation')}:",
    ]
    if violations:
        phrases += [f"{plural(len(violations), 'violation')},"]
        phrases += [plural(len(causes(violations)), "root cause") + ("," if fixed else "")]
        phrases += [f"{fixed} fixed"] if fixed else []
    else:
        phrases.append("no violation")
    loads = sum(len(mismatches(r)) for r in reports)
    if loads:
        phrases[-1] += ";"
        phrases.append(plural(loads, "connector load mismatch"))
    return _wrap_phrases(phrases)


def _headline_style(reports: list[dict[str, Any]]) -> str:
    violations = [v for r in reports for v in _violations(r)]
    loads = sum(len(mismatches(r)) for r in reports)
    bad = any(v.action != "fixed" for v in violations) or loads
    return "bold red" if bad else "bold"


def report_lines(reports: list[dict[str, Any]]) -> list[Text]:
    style = _headline_style(reports)
    lines = [*(Text(p, style) for p in headline(reports)), Text("")]
    for report in reports:
        lines += process_lines(report)
        lines.append(Text(""))
    all_groups = [(r, g) for r in reports for g in causes(_violations(r))]
    for k, (report, group) in enumerate(all_groups, 1):
        title = f"root cause {k} of {len(all_groups)}"
        if len(reports) > 1:
            title += f" (process {_process_name(report)})"
        lines.append(Text(title, "bold"))
        lines += violation_lines(group, report)
        lines.append(Text(""))
    return lines


def print_lines(lines: list[Text], console: Console) -> None:
    for line in lines:
        console.print(line, soft_wrap=True, overflow="ignore", crop=False)


def render_report(report: dict[str, Any], console: Console | None = None) -> Console:
    """Print one guard report (`Guard.report()`); returns the console used."""
    console = console or Console(highlight=False)
    print_lines(report_lines([report]), console)
    return console


def save_svg(report: dict[str, Any], path: str) -> None:
    """Draw one guard report as SVG (or as an HTML page holding the drawing and the text)."""
    from .svg import write_drawing

    write_drawing([report], path)
