"""The text of a violation: formatted only when read (`str(violation)`, `summary()`).

The full diagnostic names both sides, the invariant, each view by its role at the kernel
call, the first colliding blocks, the page map, and what to do, worded for what the guard did
(warned, raised, fixed, or refused a fix it cannot make). The summary is one line without
storage addresses, for places a user sees but should not read internals (an HTTP response).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .fitting import SPLITS, fitting_layouts, shape_in

if TYPE_CHECKING:
    from .records import Collision, LayerRecord, Violation

INVARIANTS = {
    "containment": "every byte a layer's K/V views address for block b must lie in page b "
    "of the allocation's page map",
    "disjointness": "the bytes of different block ids, and of K and V, must never overlap",
    "exact agreement": "a layer that reads another layer's cache (KV sharing) must address "
    "the very same elements for K and for V",
}


def short_impl(qualname: str) -> str:
    """`impl_classes.<locals>.KVFirstImpl` -> `KVFirstImpl`."""
    return qualname.rsplit(".", 1)[-1]


def _against(v: Violation) -> str:
    if v.against == "itself":
        return "itself"
    if v.against == "declared":
        return "the page map its engine declared for it"
    return f"layer {v.other_name!r}"


def headline(v: Violation) -> str:
    where = ""
    if v.allocation is not None:
        a = v.allocation
        where = (
            f" in allocation #{a.id} (storage {a.storage_ptr:#x}, {a.nbytes} bytes on {a.device})"
        )
    if v.against == "itself" and v.invariant == "disjointness":
        return f"kvguard: layer {v.layer.name!r}'s own views overlap{where}."
    if v.against == "itself":
        return f"kvguard: layer {v.layer.name!r}'s views leave the pages they imply{where}."
    return (
        f"kvguard: layer {v.layer.name!r} and {_against(v)} disagree on which bytes the "
        f"KV-cache block ids own{where}."
    )


def layer_lines(record: LayerRecord) -> list[str]:
    lines = [
        f"  layer {record.name!r}: impl {short_impl(record.impl)}, attention type "
        f"{record.attn_type}, layout {record.layout or 'unnamed'}"
    ]
    for view in record.views:
        lines.append(f"    {view.label()}: {view.geometry.describe()}")
    return lines


def collision_lines(collisions: tuple[Collision, ...]) -> list[str]:
    lines = []
    for c in collisions:
        if c.note and c.owner_block is None:
            where = c.note
        elif c.owner_block is None:
            where = "no block's page"
        elif c.owner_block == c.block and c.page:
            where = f"its own page only in part (page [{c.page[0]}, {c.page[1]}))"
        else:
            where = f"the page of block {c.owner_block}"
            if c.note:
                where += f" ({c.note})"
        lines.append(f"    block {c.block} {c.role} bytes [{c.lo}, {c.hi}) -> {where}")
    return lines


def _calls(v: Violation) -> str:
    assert v.fix is not None
    return "; ".join(
        f"{view.role} = {g.as_strided_call()}"
        for view, g in zip(v.layer.views, v.fix, strict=False)
    )


def _split_call(layout: str) -> str:
    return f"kvguard.runtime.split_kv_cache(kv_cache, {layout!r})"


def split_advice(v: Violation) -> str:
    """How to split the layer's own cache so that its views land in their pages: a named
    layout only where `split_kv_cache` accepts that cache and its views fit the page map;
    else what must change besides the split."""
    layer, other = v.layer, v.other
    theirs = other.layout if other is not None and other.name != layer.name else None
    kv = layer.kv_cache
    fits = fitting_layouts(kv, v.page_map) if kv is not None else []
    if fits:
        group = next((g for g in fits if theirs in g), fits[0])
        text = f"split the cache of layer {layer.name!r} with {_split_call(group[0])}"
        if len(group) > 1:
            text += f" (or {', '.join(map(repr, group[1:]))}: the same cut of these bytes)"
        return text + (f", as layer {other.name!r} does" if theirs in group else "")
    mine = f"the cache of layer {layer.name!r}"
    if kv is not None:
        mine += f" (shape {kv.shape}, layout {layer.layout or 'unnamed'})"
    if theirs and theirs in SPLITS:
        mine_known = kv is not None and layer.layout in SPLITS
        target = shape_in(kv, layer.layout, theirs) if mine_known else None
        here = f", here {target}," if target else ""
        return (
            f"layer {other.name!r} splits its cache as {theirs!r}, and {mine} cannot be split "
            f"that way: its backend's declared cache shape must change to {theirs!r} "
            f"{SPLITS[theirs][3]}{here} too, then split it with {_split_call(theirs)}"
        )
    return (
        f"no named layout splits {mine} onto this page map: its backend's declared cache "
        "shape must change to one that does (kvguard.runtime.describe_kv_cache(kv_cache) "
        "shows the axes the engine declared for it)"
    )


def advice(v: Violation) -> list[str]:
    split = split_advice(v)
    fixes = [
        f"    1. split every layer on this allocation through one splitter: {split};",
        "    2. pick backends whose cache layouts match for layers that share an allocation;",
    ]
    if v.against == "itself":
        fixes = [f"    1. change the layer's split so its views do not overlap: {split};"]
    if v.action == "fixed":
        how = (
            "swapped the views at the kernel call"
            if v.layer.fix_path == "intercept"
            else "re-strided kv_cache so the impl's own split lands on the page map"
        )
        return [
            f"  kvguard fix {how} (outputs as a correct split gives): {_calls(v)}",
            "  to repair the backend itself (any one):",
            *fixes,
        ]
    if v.action == "refused":
        return [
            f"  fix mode cannot repair this call ({v.unfixable}), so it stopped it before "
            "its kernels ran, as strict mode would.",
            "  what to do (any one):",
            *fixes,
        ]
    lines = ["  what to do (any one):", *fixes]
    if v.fix is not None:
        lines.append(
            f'    3. run with Guard(mode="fix") (KVGUARD_MODE=fix), which hands the kernels '
            f"views re-strided onto the page map: {_calls(v)}"
        )
    elif v.unfixable:
        lines.append(f'    (mode "fix" cannot repair this one: {v.unfixable})')
    return lines


def full_message(v: Violation) -> str:
    lines = [
        headline(v),
        f"  invariant violated: {v.invariant}: {INVARIANTS[v.invariant]}",
    ]
    if v.detail:
        lines.append(f"  how: {v.detail}")
    lines += layer_lines(v.layer)
    if v.other is not None and v.other.name != v.layer.name:
        lines += layer_lines(v.other)
    if v.collisions:
        lines.append(f"  first colliding block ids of {v.layer.name!r}:")
        lines += collision_lines(v.collisions)
    if v.page_map is not None:
        lines.append(f"  page map: {v.page_map.describe()}")
    lines += advice(v)
    return "\n".join(lines)


def summary(v: Violation) -> str:
    """One line, no addresses: which layer, which invariant, against what, what happened."""
    what = {
        "warned": "logged, the call ran",
        "raised": "the call was stopped before its kernels ran",
        "fixed": "fix mode re-strided its views",
        "refused": "the call was stopped before its kernels ran (fix mode cannot repair it)",
    }[v.action]
    first = ""
    if v.detail:
        first = f" ({v.detail})"
    elif v.collisions:
        c = v.collisions[0]
        owner = f"block {c.owner_block}'s page" if c.owner_block is not None else "no block's page"
        first = f" (block {c.block} {c.role} lands in {owner})"
    return (
        f"kvguard: layer {v.layer.name!r} ({short_impl(v.layer.impl)}) breaks {v.invariant} "
        f"against {_against(v)}{first}; {what}. The full diagnostic is in the log and the "
        "kvguard report."
    )
