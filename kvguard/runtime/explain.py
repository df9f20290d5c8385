"""Violation messages: both layers, their views, the first colliding blocks, and what to do."""

from __future__ import annotations

from typing import Any

from .footprint import ViewGeometry
from .pagemap import PageMap

INVARIANTS = {
    "containment": "every byte a layer's K/V views address for block b must lie in page b "
    "of the allocation's page map",
    "disjointness": "the bytes of different block ids, and of K and V, must never overlap",
    "exact agreement": "a layer that reads another layer's cache (KV sharing) must address "
    "the very same elements for K and for V",
}


def layer_lines(info: dict[str, Any]) -> list[str]:
    lines = [
        f"  layer {info['name']!r}: impl {info['impl']}, attention type {info['attn_type']}, "
        f"layout {info.get('layout') or 'unnamed'}"
    ]
    for role, view in zip(info["roles"], info["views"], strict=True):
        lines.append(f"    {role}: {ViewGeometry.from_json(view).describe()}")
    return lines


def collision_lines(
    layer: str, collisions: list[dict[str, Any]], page_map: PageMap | None
) -> list[str]:
    lines = []
    for c in collisions:
        where = (
            f"the page of block {c['owner_block']}"
            if c.get("owner_block") is not None
            else "no block's page"
        )
        if c.get("owner_block") == c["block"]:
            where = f"its own page only in part (page {list(c['page'])})"
        lines.append(
            f"    {layer} block {c['block']} {c['role']} bytes [{c['lo']}, {c['hi']}) -> {where}"
        )
    if page_map is not None:
        lines.append(f"  page map: {page_map.describe()}")
    return lines


def advice(
    fix: list[ViewGeometry] | str | None, roles: list[str], other_layout: str | None
) -> list[str]:
    split = (
        f"kvguard.runtime.split_kv_cache(kv_cache, {other_layout!r})"
        if other_layout
        else "kvguard.runtime.split_kv_cache(kv_cache, <the allocation's layout>)"
    )
    lines = [
        "  what to do (any one):",
        f"    1. split every layer on this allocation through one splitter: {split};",
        "    2. pick backends whose cache layouts match for layers that share an allocation;",
    ]
    if isinstance(fix, list):
        calls = "; ".join(
            f"{role} = {g.as_strided_call()}" for role, g in zip(roles, fix, strict=True)
        )
        lines.append(
            f'    3. run with Guard(mode="fix") (KVGUARD_MODE=fix), which hands the kernels '
            f"views re-strided onto the page map: {calls}"
        )
    elif isinstance(fix, str):
        lines.append(f'    (mode "fix" cannot repair this one: {fix})')
    return lines
