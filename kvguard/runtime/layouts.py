"""Named KV-cache layouts and the one splitter downstream code should call.

A layout says how one layer's cache tensor (the view the engine binds) is laid out and how it
splits into the K and V views the kernels receive. Every kernel-facing view has the block axis
first, which is the convention all paged-attention kernels index with a block table.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .describe import KVCacheDescription


@dataclass(frozen=True)
class KVLayout:
    """How a per-layer KV-cache tensor is arranged and split into (K, V)."""

    name: str
    shape_doc: str
    # "axis": K and V are index 0 and 1 of `kv_axis`; "halves": the last dim holds K then V;
    # "latent": one tensor serves as both K and V (MLA).
    split: str
    kv_axis: int = 0
    ndim: int = 5

    def kv_cache_shape(
        self, num_blocks: int, block_size: int, num_kv_heads: int, head_size: int
    ) -> tuple[int, ...]:
        """The shape an engine allocates for this layout."""
        n, bs, h, d = num_blocks, block_size, num_kv_heads, head_size
        return {
            "kv_first": (2, n, bs, h, d),
            "kv_first_hnd": (2, n, h, bs, d),
            "blocks_first": (n, 2, bs, h, d),
            "blocks_first_hnd": (n, 2, h, bs, d),
            "packed_nhd": (n, bs, h, 2 * d),
            "packed_hnd": (n, h, bs, 2 * d),
            "latent": (n, bs, d),
        }[self.name]

    def __str__(self) -> str:
        return f"{self.name} {self.shape_doc}"


KV_FIRST = KVLayout("kv_first", "(2, num_blocks, block_size, num_kv_heads, head_size)", "axis", 0)
KV_FIRST_HND = KVLayout(
    "kv_first_hnd", "(2, num_blocks, num_kv_heads, block_size, head_size)", "axis", 0
)
BLOCKS_FIRST = KVLayout(
    "blocks_first", "(num_blocks, 2, block_size, num_kv_heads, head_size)", "axis", 1
)
BLOCKS_FIRST_HND = KVLayout(
    "blocks_first_hnd", "(num_blocks, 2, num_kv_heads, block_size, head_size)", "axis", 1
)
PACKED_NHD = KVLayout(
    "packed_nhd", "(num_blocks, block_size, num_kv_heads, 2 * head_size)", "halves", ndim=4
)
PACKED_HND = KVLayout(
    "packed_hnd", "(num_blocks, num_kv_heads, block_size, 2 * head_size)", "halves", ndim=4
)
LATENT = KVLayout("latent", "(num_blocks, block_size, head_size)", "latent", ndim=3)

LAYOUTS: dict[str, KVLayout] = {
    layout.name: layout
    for layout in (
        KV_FIRST,
        KV_FIRST_HND,
        BLOCKS_FIRST,
        BLOCKS_FIRST_HND,
        PACKED_NHD,
        PACKED_HND,
        LATENT,
    )
}


def split_kv_cache(
    kv_cache: torch.Tensor, layout: KVLayout | str | KVCacheDescription
) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a layer's cache into (key_cache, value_cache) views, block axis first.

    `layout` is a named layout, or the `KVCacheDescription` its engine declared
    (`describe_kv_cache(kv_cache)`), whose split gives (blocks, tokens, heads, head_size).
    Pure view ops: no copy, no device work. Raises ValueError naming the expected shape when
    `kv_cache` does not fit `layout`.
    """
    if isinstance(layout, KVCacheDescription):
        return layout.split(kv_cache)
    if isinstance(layout, str):
        if layout not in LAYOUTS:
            raise ValueError(f"unknown KV layout {layout!r}; known: {', '.join(LAYOUTS)}")
        layout = LAYOUTS[layout]
    if not isinstance(kv_cache, torch.Tensor):
        raise TypeError(f"kv_cache must be a torch.Tensor, got {type(kv_cache).__name__}")
    shape = tuple(kv_cache.shape)
    if kv_cache.dim() != layout.ndim:
        raise ValueError(
            f"kv_cache of shape {shape} does not fit layout {layout}: expected {layout.ndim} dims"
        )
    if layout.split == "axis":
        if shape[layout.kv_axis] != 2:
            raise ValueError(
                f"kv_cache of shape {shape} does not fit layout {layout}: "
                f"dim {layout.kv_axis} must be 2 (K, V)"
            )
        key, value = kv_cache.unbind(layout.kv_axis)
        return key, value
    if layout.split == "halves":
        if shape[-1] % 2:
            raise ValueError(
                f"kv_cache of shape {shape} does not fit layout {layout}: "
                "the last dim packs K then V and must be even"
            )
        half = shape[-1] // 2
        return kv_cache[..., :half], kv_cache[..., half:]
    return kv_cache, kv_cache


def match_layout(root: torch.Tensor, views: list) -> str | None:
    """Name of the named layout whose split of `root` gives exactly `views` (geometries)."""
    from .footprint import ViewGeometry, same_elements

    probe = torch.empty(0, dtype=root.dtype, device="meta").set_(
        torch.empty(
            root.untyped_storage().nbytes(), dtype=torch.uint8, device="meta"
        ).untyped_storage(),
        root.storage_offset(),
        root.shape,
        root.stride(),
    )
    for name, layout in LAYOUTS.items():
        try:
            got = [ViewGeometry.of(t) for t in split_kv_cache(probe, layout)]
        except (ValueError, TypeError):
            continue
        if layout.split == "latent":
            got = got[:1]
        if len(got) == len(views) and all(
            same_elements(a, b) for a, b in zip(got, views, strict=True)
        ):
            return name
    return None
