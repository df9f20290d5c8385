"""Which named layouts split a layer's cache onto the pages it is held to, on geometry alone
(no torch), so that a saved report advises exactly what the live guard would.

A diagnostic's advice "split it with split_kv_cache(kv_cache, L)" is only worth giving when
that call succeeds on the layer's own cache and its views land in their pages: this module
answers both from the cache's recorded shape, strides and offset.
"""

from __future__ import annotations

from .errors import UnsupportedView
from .footprint import ViewGeometry
from .judge import containment, own_overlaps
from .pagemap import PageMap
from .records import ViewRecord

# name -> (how it splits, the K/V axis, dims, shape): `layouts.LAYOUTS` restated without
# torch (a test holds the two equal).
SPLITS: dict[str, tuple[str, int, int, str]] = {
    "kv_first": ("axis", 0, 5, "(2, num_blocks, block_size, num_kv_heads, head_size)"),
    "kv_first_hnd": ("axis", 0, 5, "(2, num_blocks, num_kv_heads, block_size, head_size)"),
    "blocks_first": ("axis", 1, 5, "(num_blocks, 2, block_size, num_kv_heads, head_size)"),
    "blocks_first_hnd": ("axis", 1, 5, "(num_blocks, 2, num_kv_heads, block_size, head_size)"),
    "packed_nhd": ("halves", 0, 4, "(num_blocks, block_size, num_kv_heads, 2 * head_size)"),
    "packed_hnd": ("halves", 0, 4, "(num_blocks, num_kv_heads, block_size, 2 * head_size)"),
    "latent": ("latent", 0, 3, "(num_blocks, block_size, head_size)"),
}


def _axes(layout: str) -> list[str]:
    return SPLITS[layout][3].strip("()").split(", ")


def shape_in(kv: ViewGeometry, layout: str, target: str) -> tuple[int, ...] | None:
    """The shape `kv`, a cache in `layout`, would have in `target` (same sizes), or None when
    `kv` does not fit `layout` or `target` has a size it does not state."""
    if split_geometry(kv, layout) is None:
        return None
    sizes = dict(zip(_axes(layout), kv.shape, strict=True))
    if "2 * head_size" in sizes:
        sizes.setdefault("head_size", sizes["2 * head_size"] // 2)
    if "head_size" in sizes:
        sizes.setdefault("2 * head_size", 2 * sizes["head_size"])
    sizes["2"] = 2
    axes = _axes(target)
    return tuple(sizes[a] for a in axes) if all(a in sizes for a in axes) else None


def split_geometry(kv: ViewGeometry, layout: str) -> tuple[ViewGeometry, ...] | None:
    """The views `split_kv_cache(kv_cache, layout)` returns, or None where it would raise."""
    split, axis, ndim, _shape = SPLITS[layout]
    if len(kv.shape) != ndim:
        return None
    if split == "latent":
        return (kv,)
    if split == "axis":
        if kv.shape[axis] != 2:
            return None
        shape, stride = (
            kv.shape[:axis] + kv.shape[axis + 1 :],
            kv.stride[:axis] + kv.stride[axis + 1 :],
        )
        return tuple(
            ViewGeometry(shape, stride, kv.offset + i * kv.stride[axis], kv.itemsize, kv.dtype)
            for i in (0, 1)
        )
    if kv.shape[-1] % 2:
        return None
    half = kv.shape[-1] // 2
    shape = (*kv.shape[:-1], half)
    return tuple(
        ViewGeometry(shape, kv.stride, kv.offset + i * half * kv.stride[-1], kv.itemsize, kv.dtype)
        for i in (0, 1)
    )


def fitting_layouts(kv: ViewGeometry, page_map: PageMap | None) -> list[list[str]]:
    """Named layouts whose split of `kv` neither overlaps itself nor leaves `page_map`'s pages,
    grouped by the views they give (layouts that cut these bytes alike, as packed_nhd and
    packed_hnd do, come together)."""
    groups: dict[tuple[ViewGeometry, ...], list[str]] = {}
    for name in SPLITS:
        views = split_geometry(kv, name)
        if views is None:
            continue
        records = [ViewRecord(role, g) for role, g in zip(("K", "V"), views, strict=False)]
        try:
            for g in views:
                g.validate()
        except UnsupportedView:
            continue
        if own_overlaps(records) is not None:
            continue
        if page_map is not None and containment(records, page_map):
            continue
        groups.setdefault(views, []).append(name)
    return list(groups.values())
