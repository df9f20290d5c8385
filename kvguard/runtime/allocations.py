"""Allocations (torch storages) the guard has seen, and the page map each layer is held to.

A layer's page map is the one its engine declared for it (`Guard.declare_allocation`, vLLM's
`KVCacheTensor`), else the one declared for the whole allocation, else the map the first
layer bound to its region of overlapping footprints implied.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .footprint import ViewGeometry, split_planes
from .pagemap import PageMap, Region, infer_page_map
from .records import AllocationInfo


@dataclass(eq=False)
class Allocation:
    id: int
    storage_ptr: int
    nbytes: int
    device: str
    storage_ref: Any = None
    declared: dict[str, PageMap] = field(default_factory=dict)
    declared_all: PageMap | None = None
    regions: list[Region] = field(default_factory=list)
    freed: bool = False

    @property
    def info(self) -> AllocationInfo:
        return AllocationInfo(self.id, self.storage_ptr, self.nbytes, self.device)

    def declared_maps(self) -> list[tuple[str, PageMap]]:
        maps = list(self.declared.items())
        if self.declared_all is not None:
            maps.append(("*", self.declared_all))
        return maps

    def page_map_for(self, name: str, geoms: list[ViewGeometry]) -> PageMap:
        if name in self.declared:
            return self.declared[name]
        if self.declared_all is not None:
            return self.declared_all
        lo = min(g.hull()[0] for g in geoms)
        hi = max(g.hull()[1] for g in geoms)
        for region in self.regions:
            if region.overlaps(lo, hi):
                region.lo, region.hi = min(region.lo, lo), max(region.hi, hi)
                if name not in region.layers:
                    region.layers.append(name)
                return region.page_map
        pieces = [p for g in geoms for p in split_planes(g, g.block_stride)]
        pm = infer_page_map(pieces, f"inferred from layer {name!r}")
        self.regions.append(Region(lo, hi, pm, [name]))
        return pm

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "storage_ptr": hex(self.storage_ptr),
            "nbytes": self.nbytes,
            "device": self.device,
            "freed": self.freed,
            "declared": {k: v.to_json() for k, v in self.declared.items()}
            | ({"*": self.declared_all.to_json()} if self.declared_all else {}),
            "regions": [
                {"lo": r.lo, "hi": r.hi, "page_map": r.page_map.to_json(), "layers": r.layers}
                for r in self.regions
            ],
        }


def owner_of_map(pm: PageMap) -> str | None:
    """The layer whose views defined an inferred map; None for a declared one."""
    prefix = "inferred from layer "
    if not pm.source.startswith(prefix):
        return None
    quoted = pm.source[len(prefix) :]
    return quoted[1:-1] if len(quoted) >= 2 and quoted[0] == quoted[-1] == "'" else quoted
