"""The rules' judgements over a collected file model; each registers itself (``@rule``) and
yields reports: a node, a code, a one-line message and its explanation."""

from __future__ import annotations

from collections.abc import Iterator

import libcst as cst

from kvguard.lint.checker import FileModel, SplitSite
from kvguard.lint.code_text import one_line
from kvguard.lint.index import ProjectIndex
from kvguard.lint.layouts import LayoutDecl
from kvguard.lint.registry import Message, Report, rule
from kvguard.lint.spans import LAYOUT_METHODS

_FIX_HINT = (
    "Route it through one splitter method (e.g. `key_cache, value_cache = "
    "self._split_kv_cache(kv_cache)`) or `kvguard.runtime.split_kv_cache(kv_cache, layout)`"
)


def _code(model: FileModel, node: cst.CSTNode, limit: int = 40) -> str:
    """A node's source for a one-line message: comments dropped, lines joined, shortened."""
    return one_line(model.code(node), limit)


@rule("KVG001")
def raw_kv_split(model: FileModel, index: ProjectIndex) -> Iterator[Report]:
    """KVG001: a split outside a sanctioned splitter."""
    for site in model.sites:
        if site.in_splitter:
            continue
        split = site.split
        yield Report(
            split.node,
            "KVG001",
            Message(
                f"raw K/V split `{_code(model, split.node)}` assumes "
                f"{split.describe_axis()} of `{one_line(split.receiver.root, 30)}`",
                f"{_FIX_HINT} so every layer sharing the allocation agrees on the layout "
                "(vLLM #43945)",
            ),
        )


def _normalise(axis: int, layout: LayoutDecl) -> int | None:
    if axis >= 0:
        return axis
    ndims = layout.ndims()
    return axis + next(iter(ndims)) if len(ndims) == 1 else None


def _effective_axis(site: SplitSite, layout: LayoutDecl) -> int | str | None:
    """The split's axis in the declared logical shape, undoing literal transposes."""
    axis = site.split.axis
    if axis is None or site.split.receiver.reshaped:
        return None
    ndims = layout.ndims()
    if axis == "content":
        if len(ndims) != 1:
            return None
        axis = next(iter(ndims)) - 1
    axis = _normalise(axis, layout)  # type: ignore[arg-type]
    if axis is None:
        return None
    for method, args in reversed(site.split.receiver.moves):
        if method in ("transpose", "swapaxes", "swapdims") and len(args) == 2:
            a, b = (_normalise(x, layout) for x in args)
            if a is None or b is None:
                return None
            axis = b if axis == a else a if axis == b else axis
        elif method == "permute":
            order = [_normalise(x, layout) for x in args]
            if None in order or axis >= len(order):
                return None
            axis = order[axis]  # type: ignore[assignment]
        else:
            return None
    return axis


@rule("KVG002")
def split_contradicts_layout(model: FileModel, index: ProjectIndex) -> Iterator[Report]:
    """KVG002: the split axis is not where the owning backend declares K/V."""
    for site in model.sites:
        if site.class_name is None:
            continue
        declared = index.impl_layout(site.class_name, model.path)
        if declared is None:
            continue
        backend, layout = declared
        # vLLM 0.28+ layouts order dims but the K/V arrangement lives elsewhere
        # (customize_spec), so only shape-declared layouts are judged.
        if not layout.shapes or layout.layouts or len(layout.ndims()) != 1:
            continue
        axis = _effective_axis(site, layout)
        if axis is None:
            continue
        ndim = next(iter(layout.ndims()))
        allowed = {ndim - 1 if a == "content" else a for a in layout.kv_axes()}
        if not allowed or axis in allowed:
            continue
        where = ", ".join(str(a) for a in sorted(allowed))
        yield Report(
            site.split.node,
            "KVG002",
            Message(
                f"`{_code(model, site.split.node)}` splits axis {axis}, but "
                f"{backend.name} puts K/V on axis {where}",
                f"{backend.name} declares {layout.describe()}; this split reads another "
                f"block's bytes instead of K or V. Split on axis {where} or fix the declared "
                "shape",
            ),
        )


@rule("KVG003")
def layout_diverges_from_base(model: FileModel, index: ProjectIndex) -> Iterator[Report]:
    """KVG003: a backend declares a K/V arrangement its base backend does not share."""
    for div in index.divergences():
        if div.backend.path != model.path:
            continue
        cls = model.class_def(div.backend.name)
        if cls is None:
            continue
        anchor: cst.CSTNode = cls.name
        for stmt in cls.body.body:
            if isinstance(stmt, cst.FunctionDef) and stmt.name.value in LAYOUT_METHODS:
                anchor = stmt.name
                break
        mine, theirs = div.backend_layout.describe(), div.base_layout.describe()
        if div.backend_packing:
            mine = " or ".join(sorted(div.backend_packing)) + f" ({mine})"
            theirs = " or ".join(sorted(div.base_packing)) + f" ({theirs})"
        yield Report(
            anchor,
            "KVG003",
            Message(
                f"{div.backend.name} supports ENCODER_DECODER with another K/V layout than "
                f"its base {div.base.name}",
                f"{div.backend.name} declares {mine} but its base {div.base.name} declares "
                f"{theirs}: layers of both backends can share one allocation, so one block id "
                "addresses different bytes. Keep the base's layout, or split through one "
                "splitter that re-strides ENCODER_DECODER views onto it (vLLM #43945)",
            ),
        )


def scattering_classes(model: FileModel) -> dict[str, list[str | None]]:
    """The classes that split the cache inline in more than one method, with those methods."""
    by_class: dict[str, list[str | None]] = {}
    for site in model.sites:
        if site.class_name is not None and not site.in_splitter:
            by_class.setdefault(site.class_name, []).append(site.function)
    methods = {name: list(dict.fromkeys(functions)) for name, functions in by_class.items()}
    return {name: found for name, found in methods.items() if len(found) >= 2}


@rule("KVG004")
def scattered_splits(model: FileModel, index: ProjectIndex) -> Iterator[Report]:
    """KVG004: one class splits the cache inline in more than one method."""
    for name, methods in scattering_classes(model).items():
        cls = model.class_def(name)
        if cls is None:
            continue
        shown = ", ".join(str(m) for m in methods[:3])
        more = f" and {len(methods) - 3} more" if len(methods) > 3 else ""
        yield Report(
            cls.name,
            "KVG004",
            Message(
                f"{name} splits the KV cache inline in {len(methods)} methods ({shown}{more})",
                f"It splits in {', '.join(str(m) for m in methods)}. Add one "
                "`_split_kv_cache(self, kv_cache)` method and call it everywhere, so a layout "
                "change is made in one place (vLLM #43945)",
            ),
        )
