"""What the guard knows, as data: each view by its role at the kernel call, each layer's
record, each collision and violation. Like PyTorch CSAN's errors, a violation keeps what was
compared and explains itself when read: `str(violation)` formats the full diagnostic,
`violation.summary()` one line without addresses. Everything round-trips through JSON, so a
report written by one process renders in another (`kvguard report`), without torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from .footprint import ViewGeometry
from .pagemap import PageMap

# Words that name a K or a V view, in the names kernels and impls give their arguments
# (key_cache, k_cache, k, value_cache, v, cache_v, kv_c_cache ...).
_K_WORDS = frozenset({"k", "key", "keys"})
_V_WORDS = frozenset({"v", "value", "values", "val"})
_KV_WORDS = frozenset({"kv", "kvc", "latent"})


def role_kind(name: str) -> str:
    """ "K", "V" or "KV" when the name says which, else ""."""
    words = {w for w in re.split(r"[^a-z]+", name.lower()) if w}
    kinds = {
        kind
        for kind, vocabulary in (("K", _K_WORDS), ("V", _V_WORDS), ("KV", _KV_WORDS))
        if words & vocabulary
    }
    return kinds.pop() if len(kinds) == 1 else ""


@dataclass(frozen=True)
class ViewRecord:
    """One kernel-facing view: the name the kernel call gives it, and its geometry."""

    role: str
    geometry: ViewGeometry

    @property
    def kind(self) -> str:
        return role_kind(self.role)

    def label(self) -> str:
        kind = self.kind
        return f"{self.role} ({kind})" if kind and kind != self.role else self.role

    def to_json(self) -> dict[str, Any]:
        return {"role": self.role, "kind": self.kind, **self.geometry.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ViewRecord:
        return cls(d["role"], ViewGeometry.from_json(d))


# Statuses: "pending" (no call has reached a kernel yet), "ok", "violation" (warned or
# raised), "fixed" (fix mode re-strided it), "skipped" (a view the guard cannot state).
@dataclass(eq=False)
class LayerRecord:
    name: str
    impl: str
    attn_type: str
    kv_cache: ViewGeometry | None = None
    allocation: int | None = None
    views: tuple[ViewRecord, ...] = ()
    layout: str | None = None
    kv_sharing_target: str | None = None
    status: str = "pending"
    reason: str | None = None
    fix_path: str | None = None  # "restride" (input re-strided) or "intercept" (views swapped)
    methods: list[str] = field(default_factory=list)  # the methods judged on a kernel call
    untouched_calls: int = 0  # calls that reached no kernel (warm-up, capture, encoders)

    @property
    def geometries(self) -> list[ViewGeometry]:
        return [v.geometry for v in self.views]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "impl": self.impl,
            "attn_type": self.attn_type,
            "allocation": self.allocation,
            "kv_cache": self.kv_cache.to_json() if self.kv_cache else None,
            "views": [v.to_json() for v in self.views],
            "roles": [v.role for v in self.views],
            "layout": self.layout,
            "kv_sharing_target": self.kv_sharing_target,
            "status": self.status,
            "reason": self.reason,
            "fix_path": self.fix_path,
            "methods": list(self.methods),
            "untouched_calls": self.untouched_calls,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LayerRecord:
        return cls(
            name=d["name"],
            impl=d["impl"],
            attn_type=d["attn_type"],
            kv_cache=ViewGeometry.from_json(d["kv_cache"]) if d.get("kv_cache") else None,
            allocation=d.get("allocation"),
            views=tuple(ViewRecord.from_json(v) for v in d.get("views", ())),
            layout=d.get("layout"),
            kv_sharing_target=d.get("kv_sharing_target"),
            status=d.get("status", "ok"),
            reason=d.get("reason"),
            fix_path=d.get("fix_path"),
            methods=list(d.get("methods", ())),
            untouched_calls=d.get("untouched_calls", 0),
        )

    def snapshot(self) -> LayerRecord:
        return replace(self, methods=list(self.methods))


@dataclass(frozen=True)
class Collision:
    """Block `block` of view `role` addresses bytes [lo, hi), which page `owner_block` owns
    (None: no page; the block's own id: the view fills its page only in part)."""

    role: str
    block: int
    lo: int
    hi: int
    owner_block: int | None
    page: tuple[int, int] | None = None
    note: str | None = None  # what else owns those bytes, when it is not a page of this map

    def to_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "block": self.block,
            "lo": self.lo,
            "hi": self.hi,
            "owner_block": self.owner_block,
            "page": list(self.page) if self.page else None,
            "note": self.note,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Collision:
        page = d.get("page")
        return cls(
            d["role"],
            d["block"],
            d["lo"],
            d["hi"],
            d.get("owner_block"),
            tuple(page) if page else None,
            d.get("note"),
        )


@dataclass(frozen=True)
class AllocationInfo:
    id: int
    storage_ptr: int
    nbytes: int
    device: str


# How the guard acted on a violation: "warned" (warn), "raised" (strict), "fixed" (fix mode
# repaired it), "refused" (fix mode could not repair it and stopped the call like strict).
ACTIONS = ("warned", "raised", "fixed", "refused")


@dataclass(eq=False)
class Violation:
    """Layers sharing an allocation that disagree on which bytes a block id owns.

    `against` says with what: "layer" (`other`, another layer's views or the page map its
    views defined), "declared" (the page map the engine declared for the layer) or "itself"
    (the layer's own views overlap). `fix` holds the re-strided views that repair it, or
    `unfixable` says why none does.
    """

    invariant: str
    layer: LayerRecord
    against: str
    other: LayerRecord | None = None
    other_name: str | None = None
    page_map: PageMap | None = None
    collisions: tuple[Collision, ...] = ()
    allocation: AllocationInfo | None = None
    fix: tuple[ViewGeometry, ...] | None = None
    unfixable: str | None = None
    detail: str | None = None  # e.g. "K and V swapped"
    mode: str = "warn"
    action: str = "warned"

    def __str__(self) -> str:
        from .explain import full_message

        return full_message(self)

    def summary(self) -> str:
        from .explain import summary

        return summary(self)

    @property
    def message(self) -> str:
        return str(self)

    def cause(self) -> tuple:
        """What makes two violations the same disagreement: one root cause, many layers."""
        base = self.layer.kv_cache.offset if self.layer.kv_cache else 0

        def shape_of(views: tuple[ViewRecord, ...]) -> tuple:
            return tuple(
                (
                    v.role,
                    v.geometry.shape,
                    v.geometry.stride,
                    v.geometry.offset - base,
                    v.geometry.dtype,
                )
                for v in views
            )

        pm = self.page_map
        return (
            self.invariant,
            self.against,
            self.layer.impl,
            self.layer.attn_type,
            shape_of(self.layer.views),
            (pm.block_stride, pm.page_bytes, pm.planes) if pm else None,
            self.other.impl if self.other else None,
            self.detail,
            self.action,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "invariant": self.invariant,
            "layer": self.layer.name,
            "against": self.against,
            "other": self.other_name,
            "layer_record": self.layer.to_json(),
            "other_record": self.other.to_json() if self.other else None,
            "allocation": self.allocation.id if self.allocation else self.layer.allocation,
            "allocation_info": (
                {
                    "id": self.allocation.id,
                    "storage_ptr": hex(self.allocation.storage_ptr),
                    "nbytes": self.allocation.nbytes,
                    "device": self.allocation.device,
                }
                if self.allocation
                else None
            ),
            "collisions": [c.to_json() for c in self.collisions],
            "page_map": self.page_map.to_json() if self.page_map else None,
            "fix": [g.to_json() for g in self.fix] if self.fix else None,
            "unfixable": self.unfixable,
            "detail": self.detail,
            "mode": self.mode,
            "action": self.action,
            "summary": self.summary(),
            "message": str(self),
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Violation:
        info = d.get("allocation_info")
        pm = d.get("page_map")
        return cls(
            invariant=d["invariant"],
            layer=LayerRecord.from_json(d["layer_record"]),
            against=d.get("against", "layer"),
            other=LayerRecord.from_json(d["other_record"]) if d.get("other_record") else None,
            other_name=d.get("other"),
            page_map=PageMap.from_json(pm) if pm else None,
            collisions=tuple(Collision.from_json(c) for c in d.get("collisions", ())),
            allocation=(
                AllocationInfo(
                    info["id"], int(info["storage_ptr"], 16), info["nbytes"], info["device"]
                )
                if info
                else None
            ),
            fix=tuple(ViewGeometry.from_json(g) for g in d["fix"]) if d.get("fix") else None,
            unfixable=d.get("unfixable"),
            detail=d.get("detail"),
            mode=d.get("mode", "warn"),
            action=d.get("action", "warned"),
        )
