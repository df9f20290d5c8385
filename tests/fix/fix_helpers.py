"""Shared by the fix tests: fix a text in process, and list the sites a fix routes."""

from __future__ import annotations

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

from kvguard.config import Config
from kvguard.engine import build_index, kv_names, lint_source, scan_source
from kvguard.fix.apply import fix_source
from kvguard.lint.checker import collect
from kvguard.lint.fixability import plan_file
from kvguard.lint.index import ProjectIndex

SEVERITY = {"KVG001": "error", "KVG002": "error", "KVG003": "error", "KVG004": "advice"}


def index_of(files: dict[str, str], config: Config | None = None) -> ProjectIndex:
    """The project index ``kvguard check`` would build over these files."""
    config = config or Config()
    names = kv_names(config)
    return build_index(
        {path: scan_source(text, path, names) for path, text in files.items()}, config
    )


def fix_text(text: str, path: str = "impl.py", *, unsafe: bool = False, extra=None) -> str:  # type: ignore[no-untyped-def]
    files = {path: text, **(extra or {})}
    return fix_source(text, path, Config(), index_of(files), unsafe=unsafe)


def lint_text(text: str, path: str = "impl.py", extra=None) -> list:  # type: ignore[no-untyped-def]
    files = {path: text, **(extra or {})}
    return lint_source(text, path, Config(), index_of(files), SEVERITY)


def routed_sites(text: str, path: str, index: ProjectIndex):  # type: ignore[no-untyped-def]
    """(class, function, original split expression, targets) of every site a fix routes,
    in source order, and each fixed class's declared shape text (or None)."""
    module = cst.parse_module(text)
    wrapper = MetadataWrapper(module, unsafe_skip_copy=True)
    positions = wrapper.resolve(PositionProvider)
    model = collect(module, path, kv_names(Config()), index)
    plan = plan_file(model, index, lambda node: True)
    sites = []
    declared: dict[str, str | None] = {}
    withheld: dict[str, str] = {}
    for name, class_plan in plan.classes.items():
        if class_plan.reason:
            withheld[name] = class_plan.reason
            continue
        layout = index.impl_layout(name, path)
        declared[name] = layout[1].shapes[0].text if layout and layout[1].shapes else None
        for op in class_plan.ops:
            code = cst.Module([]).code_for_node(op.node).strip()
            if op.site.split.form == "unpack":
                code = f"tuple({code})"
            start = positions[op.node].start
            sites.append(
                ((start.line, start.column), (name, op.site.function, code, op.site.targets))
            )
    return [s for _, s in sorted(sites, key=lambda s: s[0])], declared, withheld
