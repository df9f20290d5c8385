"""The Guard: wraps impl methods, judges each layer once, then answers with a dict lookup."""

from __future__ import annotations

import functools
import inspect
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from . import explain
from .discovery import SplitRecorder, solve_restride
from .errors import KVLayoutMismatchError, UnsupportedView
from .footprint import (
    ViewGeometry,
    blocks_share_elements,
    same_elements,
    self_overlapping,
    split_planes,
)
from .layouts import LAYOUTS, split_kv_cache
from .pagemap import PageMap, Region, foreign_overlaps, infer_page_map

logger = logging.getLogger("kvguard")

MODES = ("off", "warn", "strict", "fix")
# Calls that never reach a kernel (profiling runs, encoder-only paths) are retried this many
# times before the layer is settled as "does not use its cache".
MAX_UNTOUCHED_CALLS = 4
MAX_COLLISIONS = 6

_PASS, _RAISE, _RESTRIDE, _INTERCEPT = range(4)


class _Restart(BaseException):
    """Unwinds a first-sight call in fix mode so it can rerun on the re-strided kv_cache.

    A BaseException, so that an impl's `except Exception` cannot swallow it."""


@dataclass(eq=False)
class _Entry:
    action: int
    error: KVLayoutMismatchError | None = None
    fixed_ref: Any = None  # weakref to the re-strided kv_cache, owned by the kv tensor itself
    fixed_input: tuple[int, tuple[int, ...]] | None = None
    fix_views: dict[ViewGeometry, ViewGeometry] | None = None  # judged view -> fixed view


@dataclass(eq=False)
class _Allocation:
    id: int
    storage_ptr: int
    nbytes: int
    device: str
    storage_ref: Any
    declared: dict[str, PageMap] = field(default_factory=dict)
    declared_all: PageMap | None = None
    regions: list[Region] = field(default_factory=list)
    freed: bool = False

    def to_json(self) -> dict:
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


def _layer_name(layer: Any, impl: Any) -> str:
    name = getattr(layer, "layer_name", None)
    return name if isinstance(name, str) else f"{type(impl).__name__}@{id(impl):#x}"


def _attn_type(impl: Any) -> str:
    t = getattr(impl, "attn_type", None)
    return str(getattr(t, "value", t)) if t is not None else "unknown"


def _sharing_target(layer: Any, impl: Any) -> str | None:
    for obj in (layer, impl):
        target = getattr(obj, "kv_sharing_target_layer_name", None)
        if isinstance(target, str) and target:
            return target
    return None


def _match_layout(root: torch.Tensor, views: list[ViewGeometry]) -> str | None:
    """Name of the named layout whose split of `root` gives exactly `views`, if any."""
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


def _restrided(
    views: list[torch.Tensor], fixes: dict[ViewGeometry, ViewGeometry]
) -> dict[int, torch.Tensor]:
    """{id(view): the view re-strided as fix mode computed for its geometry}."""
    subst = {}
    for t in views:
        g = fixes.get(ViewGeometry.of(t))
        if g is not None:
            subst[id(t)] = t.as_strided(g.shape, g.stride, g.offset)
    return subst


def _with_kv_cache(args: tuple, kwargs: dict, kv_pos: int, kv: torch.Tensor) -> tuple:
    """The call's arguments with `kv` in the place of its kv_cache, positional or keyword."""
    if len(args) > kv_pos:
        return (*args[:kv_pos], kv, *args[kv_pos + 1 :]), kwargs
    return args, {**kwargs, "kv_cache": kv}


class Guard:
    """Checks that layers sharing a KV allocation agree on which bytes each block owns.

    mode: "off" (wrap returns the class untouched), "warn" (log once per allocation and layer,
    proceed), "strict" (raise KVLayoutMismatchError before any kernel runs) or "fix" (hand the
    kernels views re-strided onto the allocation's page map). None reads KVGUARD_MODE.
    on_violation, if given, is called with each violation's dict as it is recorded (before
    strict mode raises), e.g. to save the report the moment something goes wrong.
    """

    def __init__(
        self, mode: str | None = None, on_violation: Callable[[dict], None] | None = None
    ) -> None:
        mode = (mode if mode is not None else os.environ.get("KVGUARD_MODE", "off")).lower()
        if mode not in MODES:
            raise ValueError(f"Guard mode must be one of {', '.join(MODES)}; got {mode!r}")
        self.mode = mode
        self._on_violation = on_violation
        self._lock = threading.RLock()
        self._local = threading.local()
        self._cache: dict[tuple, _Entry] = {}
        self._fast: dict[tuple, tuple[weakref.ref, _Entry]] = {}
        self._keys_by_storage: dict[int, set[tuple]] = {}
        self._keys_by_impl: dict[int, set[tuple]] = {}
        self._impl_refs: dict[int, Any] = {}
        self._allocs: dict[int, _Allocation] = {}  # live, by storage data_ptr
        self._all_allocs: list[_Allocation] = []
        self._alloc_ids = itertools.count()
        self._layers: dict[str, dict[str, Any]] = {}
        self._violations: list[dict[str, Any]] = []
        self._logged: set[tuple[int, str]] = set()
        self._untouched: dict[tuple, int] = {}
        self._verdicts: dict[tuple, dict[str, Any]] = {}
        self._wrapper_code = None
        self.discoveries = 0  # first-sight judgements made (for tests and the benchmark)

    # Public API ------------------------------------------------------------------------
    def wrap(self, cls: type) -> type:
        """Wrap, in place, every method of `cls` taking both `layer` and `kv_cache`."""
        if self.mode == "off":
            return cls
        if not isinstance(cls, type):
            raise TypeError(f"Guard.wrap expects a class, got {type(cls).__name__}")
        for name in dir(cls):
            fn = inspect.getattr_static(cls, name, None)
            if not inspect.isfunction(fn) or id(self) in getattr(fn, "__kvguard_guards__", ()):
                continue
            try:
                params = list(inspect.signature(fn).parameters)[1:]
            except (TypeError, ValueError):
                continue
            if "layer" in params and "kv_cache" in params:
                setattr(cls, name, self._wrap_method(fn, params))
        return cls

    def declare_allocation(
        self,
        storage_or_tensor: torch.Tensor | torch.UntypedStorage,
        *,
        page_bytes: int,
        block_stride: int,
        offset: int = 0,
        layer_stride: int = 0,
        layers: list[str] | None = None,
        num_blocks: int | None = None,
        planes: tuple[int, ...] = (0,),
    ) -> None:
        """Declare the page map of an allocation, as vLLM's KVCacheTensor states it.

        Layer `layers[l]`'s page for block b starts at `offset + l*layer_stride +
        b*block_stride` bytes and is `page_bytes` long. Without `layers` the map applies to
        every layer bound to the allocation. `num_blocks` (optional) bounds the block ids and
        lets the guard recognise kernel block sizes smaller than the manager's. `planes`
        (byte offsets from the page start, first 0) makes a page several runs of
        `page_bytes`, as head-outer layouts (vLLM's KVCacheLayout.LHBNC, BHLNC) store it.
        """
        if self.mode == "off":
            return
        if isinstance(storage_or_tensor, torch.Tensor):
            storage = storage_or_tensor.untyped_storage()
        elif isinstance(storage_or_tensor, torch.UntypedStorage):
            storage = storage_or_tensor
        else:
            raise TypeError(
                "declare_allocation expects a torch.Tensor or torch.UntypedStorage, got "
                f"{type(storage_or_tensor).__name__}"
            )
        for arg, value in (("page_bytes", page_bytes), ("block_stride", block_stride)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{arg} must be a positive int of bytes, got {value!r}")
        for arg, value in (("offset", offset), ("layer_stride", layer_stride)):
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{arg} must be a non-negative int of bytes, got {value!r}")
        if page_bytes > block_stride:
            raise ValueError(
                f"page_bytes={page_bytes} > block_stride={block_stride}: pages of consecutive "
                "block ids would overlap; block_stride must be at least page_bytes"
            )
        if layers and len(layers) > 1 and 0 < layer_stride < page_bytes:
            raise ValueError(
                f"layer_stride={layer_stride} < page_bytes={page_bytes}: pages of consecutive "
                "layers would overlap"
            )
        planes = tuple(planes)
        if (
            not planes
            or planes[0] != 0
            or any(not isinstance(p, int) or p < 0 for p in planes)
            or list(planes) != sorted(set(planes))
        ):
            raise ValueError(f"planes must be increasing byte offsets starting at 0, got {planes}")
        nbytes = storage.nbytes()
        if offset + (len(layers or [0]) - 1) * layer_stride + planes[-1] + page_bytes > nbytes:
            raise ValueError(f"the declared pages reach past the allocation's {nbytes} bytes")
        if num_blocks is not None and (not isinstance(num_blocks, int) or num_blocks <= 0):
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        with self._lock:
            alloc = self._allocation(storage)
            if not layers:
                alloc.declared_all = PageMap(
                    offset, block_stride, page_bytes, planes, num_blocks, "declared"
                )
            for i, name in enumerate(layers or []):
                alloc.declared[name] = PageMap(
                    offset + i * layer_stride,
                    block_stride,
                    page_bytes,
                    planes,
                    num_blocks,
                    f"declared for layer {name!r}",
                )

    def report(self) -> dict[str, Any]:
        """{"mode", "allocations", "layers", "violations"}: plain JSON-serialisable data."""
        with self._lock:
            return {
                "mode": self.mode,
                "allocations": [a.to_json() for a in self._all_allocs],
                "layers": [dict(v) for v in self._layers.values()],
                "violations": [dict(v) for v in self._violations],
            }

    # The wrapper: steady state is one dict lookup --------------------------------------
    def _wrap_method(self, fn, params: list[str]):
        layer_pos, kv_pos = params.index("layer"), params.index("kv_cache")
        cache = self._cache
        # Engines pass the same kv_cache object every step: its identity (a weakref, so the
        # cache can still be freed) stands for the metadata key until an entry changes.
        fast = self._fast
        is_compiling = torch.compiler.is_compiling
        tensor = torch.Tensor
        method = id(fn)  # each method may split differently (forward vs cache update)

        @functools.wraps(fn)
        def guarded(impl, *args, **kwargs):
            if is_compiling():  # traced directly by dynamo: step aside (see module docs)
                return fn(impl, *args, **kwargs)
            kv = args[kv_pos] if len(args) > kv_pos else kwargs.get("kv_cache")
            layer = args[layer_pos] if len(args) > layer_pos else kwargs.get("layer")
            seat = (method, id(impl), id(layer))
            hit = fast.get(seat)
            if hit is not None and hit[0]() is kv:
                entry = hit[1]
            else:
                if not isinstance(kv, tensor):
                    return fn(impl, *args, **kwargs)
                key = (*seat, kv.data_ptr(), kv.shape, kv.stride(), kv.dtype)
                entry = cache.get(key)
                if entry is None:
                    return self._first_sight(fn, impl, layer, kv, key, kv_pos, args, kwargs)
                fast[seat] = (weakref.ref(kv), entry)
            action = entry.action
            if action == _PASS:
                return fn(impl, *args, **kwargs)
            if action == _RAISE:
                raise entry.error
            if action == _RESTRIDE:
                fixed = entry.fixed_ref() if entry.fixed_ref is not None else None
                if fixed is None:
                    fixed = self._attach_fixed_input(entry, kv)
                args, kwargs = _with_kv_cache(args, kwargs, kv_pos, fixed)
                return fn(impl, *args, **kwargs)
            return self._intercepted(fn, impl, kv, entry, args, kwargs)

        self._wrapper_code = guarded.__code__
        guarded.__kvguard_guards__ = getattr(fn, "__kvguard_guards__", frozenset()) | {id(self)}
        return guarded

    # First sight ---------------------------------------------------------------------------
    def _first_sight(self, fn, impl, layer, kv, key, kv_pos, args, kwargs):
        if getattr(self._local, "active", False):  # nested/super() call inside a discovery
            return fn(impl, *args, **kwargs)
        name = _layer_name(layer, impl)
        if kv.numel() == 0:
            self._settle(key, impl, kv, _Entry(_PASS))
            self._note_layer(name, impl, kv, status="skipped", reason="zero-size kv_cache")
            return fn(impl, *args, **kwargs)
        state: dict[str, Any] = {"verdict": None}

        def on_boundary(views: list[torch.Tensor]):
            verdict = self._judge(name, layer, impl, kv, views, recorder)
            state["verdict"] = verdict
            if self.mode == "fix" and verdict.get("violation") and isinstance(verdict["fix"], list):
                entry = self._steady_entry(verdict, kv, recorder)
                if entry.action == _RESTRIDE:
                    # Swapping views here would come too late for a Python-launched kernel
                    # (Triton): its wrapper has already read the old strides as ints, and only
                    # data_ptr() passes through here. Rerun the call on the re-strided cache.
                    state["entry"] = entry
                    raise _Restart
            return self._act(verdict, views)

        recorder = SplitRecorder(kv, on_boundary, ignore=(self._wrapper_code,))
        self._local.active = True
        try:
            with recorder:
                result = fn(impl, *args, **kwargs)
        except _Restart:
            result = None
        finally:
            self._local.active = False
        verdict = state["verdict"]
        if "entry" in state:  # nothing of the call ran past its first kernel boundary
            entry = state["entry"]
            self._log_once(verdict, verdict["violation"], fixing=True)
            self._settle(key, impl, kv, entry)
            fixed = self._attach_fixed_input(entry, kv)
            args, kwargs = _with_kv_cache(args, kwargs, kv_pos, fixed)
            return fn(impl, *args, **kwargs)
        if verdict is None:
            n = self._untouched.get(key, 0) + 1
            self._untouched[key] = n
            if n >= MAX_UNTOUCHED_CALLS:
                self._settle(key, impl, kv, _Entry(_PASS))
            return result
        self._settle(key, impl, kv, self._steady_entry(verdict, kv, recorder))
        return result

    def _act(self, verdict: dict[str, Any], views: list[torch.Tensor]):
        violation = verdict.get("violation")
        if violation is None or self.mode == "warn":
            if violation is not None:
                self._log_once(verdict, violation)
            return None
        fix = verdict.get("fix")
        if self.mode == "strict" or not isinstance(fix, list):
            raise KVLayoutMismatchError(violation)
        self._log_once(verdict, violation, fixing=True)
        return _restrided(views, verdict["fix_by_view"])

    def _log_once(self, verdict, violation, fixing: bool = False) -> None:
        pair = (verdict["alloc"], violation["layer"])
        with self._lock:
            if pair in self._logged:
                return
            self._logged.add(pair)
        prefix = "kvguard fix: re-striding the views below. " if fixing else ""
        logger.warning("%s%s", prefix, violation["message"])

    def _steady_entry(self, verdict, kv: torch.Tensor, recorder: SplitRecorder) -> _Entry:
        violation = verdict.get("violation")
        if violation is None or self.mode == "warn":
            return _Entry(_PASS)
        fix = verdict["fix"]
        if self.mode == "strict" or not isinstance(fix, list):
            return _Entry(_RAISE, error=KVLayoutMismatchError(violation))
        solved = solve_restride(
            recorder.program, recorder.consumed, ViewGeometry.of(kv), kv.dtype, fix
        )
        verdict["layer_record"]["fix_path"] = "restride" if solved else "intercept"
        if solved is None:
            return _Entry(_INTERCEPT, fix_views=verdict["fix_by_view"])
        entry = _Entry(_RESTRIDE, fixed_input=solved)
        self._attach_fixed_input(entry, kv)
        return entry

    def _attach_fixed_input(self, entry: _Entry, kv: torch.Tensor) -> torch.Tensor:
        """The re-strided kv_cache lives on the kv tensor object: it dies with it."""
        offset, stride = entry.fixed_input
        # Kept on the root tensor (views hold it as _base; `fixed` does not point back), so it
        # lives exactly as long as the engine's cache and never keeps the storage alive.
        owner = kv._base if kv._base is not None else kv
        slot = owner.__dict__.setdefault("_kvguard_fixed", {})
        fixed = slot.get((id(self), tuple(kv.shape), entry.fixed_input))
        if fixed is None:
            fixed = torch.empty(0, dtype=kv.dtype, device=kv.device).set_(
                kv.untyped_storage(), offset, kv.shape, stride
            )
            slot[(id(self), tuple(kv.shape), entry.fixed_input)] = fixed
        entry.fixed_ref = weakref.ref(fixed)
        return fixed

    def _intercepted(self, fn, impl, kv, entry: _Entry, args, kwargs):
        def on_boundary(views: list[torch.Tensor]):
            return _restrided(views, entry.fix_views)

        with SplitRecorder(kv, on_boundary, ignore=(self._wrapper_code,)):
            return fn(impl, *args, **kwargs)

    def _settle(self, key: tuple, impl: Any, kv: torch.Tensor, entry: _Entry) -> None:
        storage = kv.untyped_storage()
        ptr = storage.data_ptr()
        with self._lock:
            self._fast.clear()
            self._cache[key] = entry
            self._untouched.pop(key, None)
            self._keys_by_storage.setdefault(ptr, set()).add(key)
            self._keys_by_impl.setdefault(id(impl), set()).add(key)
            if id(impl) not in self._impl_refs:
                try:
                    self._impl_refs[id(impl)] = weakref.ref(
                        impl, functools.partial(self._forget_impl, id(impl))
                    )
                except TypeError:  # impl without __weakref__: entries live as long as the guard
                    self._impl_refs[id(impl)] = None
            self._allocation(storage)

    def _forget_impl(self, impl_id: int, _ref: Any = None) -> None:
        with self._lock:
            self._fast.clear()
            self._impl_refs.pop(impl_id, None)
            for key in self._keys_by_impl.pop(impl_id, ()):
                self._cache.pop(key, None)

    def _forget_storage(self, ptr: int, alloc: _Allocation, _ref: Any = None) -> None:
        with self._lock:
            self._fast.clear()
            alloc.freed = True
            if self._allocs.get(ptr) is alloc:
                del self._allocs[ptr]
            for key in self._keys_by_storage.pop(ptr, ()):
                self._cache.pop(key, None)

    def _allocation(self, storage: torch.UntypedStorage) -> _Allocation:
        ptr = storage.data_ptr()
        with self._lock:
            alloc = self._allocs.get(ptr)
            if alloc is not None and alloc.storage_ref() is storage:
                return alloc
            alloc = _Allocation(
                next(self._alloc_ids), ptr, storage.nbytes(), str(storage.device), None
            )
            alloc.storage_ref = weakref.ref(
                storage, functools.partial(self._forget_storage, ptr, alloc)
            )
            self._allocs[ptr] = alloc
            self._all_allocs.append(alloc)
            return alloc

    # Judging one layer -------------------------------------------------------------------
    def _note_layer(self, name, impl, kv, status, reason=None) -> dict[str, Any]:
        record = {
            "name": name,
            "impl": type(impl).__qualname__,
            "attn_type": _attn_type(impl),
            "allocation": None,
            "kv_cache": ViewGeometry.of(kv).to_json() if kv.dim() else None,
            "roles": [],
            "views": [],
            "layout": None,
            "kv_sharing_target": None,
            "status": status,
            "reason": reason,
            "fix_path": None,
        }
        with self._lock:
            self._layers[name] = record
        return record

    def _judge(self, name, layer, impl, kv, views, recorder) -> dict[str, Any]:
        self.discoveries += 1
        storage = kv.untyped_storage()
        alloc = self._allocation(storage)
        geoms = []
        seen = set()
        for t in views:
            g = ViewGeometry.of(t)
            if g not in seen:  # latent caches hand the same view as K and as V
                seen.add(g)
                geoms.append(g)
        with self._lock:  # another method (or thread) of this layer already judged these views
            previous = self._verdicts.get((name, alloc.id, tuple(geoms)))
        if previous is not None:
            return previous
        roles = (
            ["K", "V"]
            if len(geoms) == 2
            else ["KV"]
            if len(geoms) == 1
            else [f"view{i}" for i in range(len(geoms))]
        )
        record = self._note_layer(name, impl, kv, status="ok")
        record.update(
            allocation=alloc.id,
            roles=roles,
            views=[g.to_json() for g in geoms],
            layout=_match_layout(kv, geoms),
            kv_sharing_target=_sharing_target(layer, impl),
        )
        verdict: dict[str, Any] = {"alloc": alloc.id, "layer_record": record}
        try:
            for g in geoms:
                g.validate()
        except UnsupportedView as e:
            record.update(status="skipped", reason=str(e))
            logger.warning("kvguard: skipping layer %r: %s", name, e)
            return verdict
        with self._lock:
            violation = self._check(alloc, record, geoms, verdict)
            if violation is not None:
                record["status"] = "violation"
                self._record_violation(violation)
                verdict["violation"] = violation
            else:
                verdict["fix"] = None
        if isinstance(verdict.get("fix"), list):
            # by geometry, not position: one call may split the cache twice (vLLM's
            # CrossAttentionImpl.forward updates the cache, then calls the backend's forward)
            verdict["fix_by_view"] = dict(zip(geoms, verdict["fix"], strict=True))
        if len(views) == 2 and len(geoms) == 1 and isinstance(verdict.get("fix"), list):
            verdict["fix"] = verdict["fix"] * 2  # same fixed view for K and V
        with self._lock:
            self._verdicts[(name, alloc.id, tuple(geoms))] = verdict
        return verdict

    def _record_violation(self, violation: dict[str, Any]) -> None:
        self._violations.append(violation)
        if self._on_violation is not None:
            try:
                self._on_violation(violation)
            except Exception:  # a reporting hook must never break the engine's forward pass
                logger.exception("kvguard: the on_violation hook failed")

    def _page_map_for(self, alloc: _Allocation, name: str, geoms: list[ViewGeometry]):
        if name in alloc.declared:
            return alloc.declared[name], None
        if alloc.declared_all is not None:
            return alloc.declared_all, None
        lo = min(g.hull()[0] for g in geoms)
        hi = max(g.hull()[1] for g in geoms)
        for region in alloc.regions:
            if region.overlaps(lo, hi):
                region.lo, region.hi = min(region.lo, lo), max(region.hi, hi)
                if name not in region.layers:
                    region.layers.append(name)
                return region.page_map, region
        pieces = [p for g in geoms for p in split_planes(g, g.block_stride)]
        pm = infer_page_map(pieces, f"inferred from layer {name!r}")
        region = Region(lo, hi, pm, [name])
        alloc.regions.append(region)
        return pm, region

    def _check(self, alloc, record, geoms, verdict) -> dict[str, Any] | None:
        name = record["name"]
        pm, _region = self._page_map_for(alloc, name, geoms)
        collisions = []
        invariant = "containment"
        for role, g in zip(record["roles"], geoms, strict=True):
            if self_overlapping(g):
                invariant = "disjointness"
                collisions.append(self._collision(role, g, 0, pm))
                collisions.append(self._collision(role, g, 1, pm))
                continue
            for piece in split_planes(g, pm.page_bytes):
                collisions.extend(
                    self._collision(role, piece, b, pm) for b in pm.uncontained_blocks(piece)
                )
        pairs = itertools.combinations(zip(record["roles"], geoms, strict=True), 2)
        for (ra, a), (rb, b) in pairs:
            if a.block_stride == b.block_stride and blocks_share_elements(a, b):
                invariant = "disjointness"
                collisions.append(self._collision(ra, a, 0, pm))
                collisions.append(self._collision(rb, b, 0, pm))
        collisions.sort(key=lambda c: (c["block"], c["role"]))
        del collisions[MAX_COLLISIONS:]
        other = self._page_map_owner(pm)
        fix: list[ViewGeometry] | str | None = None
        conflict = None if collisions else self._declared_conflict(alloc, pm)
        if conflict is not None:
            other, collisions = conflict
            invariant = "disjointness"
            fix = (
                f"the page maps declared for {name!r} and {other!r} give a block's bytes to "
                "another block id; the allocation itself must change"
            )
        elif collisions:
            fix = pm.place(geoms, alloc.nbytes)
        else:
            found = self._check_sharing(record, geoms)
            if found is None:
                self._recheck_sharers(record, geoms)
                verdict["fix"] = None
                return None
            other, fix = found
            invariant = "exact agreement"
        verdict["fix"] = fix
        return self._violation(alloc, record, other, invariant, collisions, pm, fix)

    def _declared_conflict(self, alloc: _Allocation, pm: PageMap):
        """(other layer, collisions) where another declared map gives page b's bytes to c != b."""
        if not pm.source.startswith("declared"):
            return None
        maps = list(alloc.declared.items())
        if alloc.declared_all is not None:
            maps.append(("*", alloc.declared_all))
        for other, om in maps:
            same = (om.offset, om.block_stride, om.page_bytes, om.planes)
            if om is pm or same == (pm.offset, pm.block_stride, pm.page_bytes, pm.planes):
                continue
            pairs = foreign_overlaps(pm, om)
            if pairs:
                collisions = []
                for b, c, plane, other_plane in pairs:
                    lo, hi = pm.page_span(b, plane)
                    page = om.page_span(c, other_plane)
                    collisions.append(
                        {
                            "role": f"page (declared; {other!r} declares its block {c} at "
                            f"[{page[0]}, {page[1]}))",
                            "block": b,
                            "lo": lo,
                            "hi": hi,
                            "owner_block": c,
                            "page": list(page),
                        }
                    )
                return other, collisions
        return None

    def _check_sharing(self, record, geoms):
        target = record["kv_sharing_target"]
        other = self._layers.get(target) if target else None
        if other is None or not other["views"]:
            return None
        theirs = [ViewGeometry.from_json(v) for v in other["views"]]
        if len(theirs) == len(geoms) and all(
            same_elements(a, b) for a, b in zip(geoms, theirs, strict=True)
        ):
            return None
        return target, _permuted_like(geoms, theirs)

    def _recheck_sharers(self, record, geoms) -> None:
        """A layer registered after its sharers: judge the sharers now (reported, not raised)."""
        for other in list(self._layers.values()):
            if other["kv_sharing_target"] == record["name"] and other["status"] == "ok":
                mine = [ViewGeometry.from_json(v) for v in other["views"]]
                if not (
                    len(mine) == len(geoms)
                    and all(same_elements(a, b) for a, b in zip(mine, geoms, strict=True))
                ):
                    other["status"] = "violation"
                    v = self._violation(
                        None,
                        other,
                        record["name"],
                        "exact agreement",
                        [],
                        None,
                        _permuted_like(mine, geoms),
                    )
                    self._record_violation(v)
                    logger.warning("%s", v["message"])

    def _page_map_owner(self, pm: PageMap) -> str:
        prefix = "inferred from layer "
        return _unquote(pm.source[len(prefix) :]) if pm.source.startswith(prefix) else pm.source

    @staticmethod
    def _collision(role: str, g: ViewGeometry, block: int, pm: PageMap) -> dict[str, Any]:
        lo, hi = g.block_span(block)
        owner = pm.owner_of(lo)
        page = pm.page_span(block) if pm.num_blocks is None or block < pm.num_blocks else None
        return {
            "role": role,
            "block": block,
            "lo": lo,
            "hi": hi,
            "owner_block": owner,
            "page": list(page) if page else None,
        }

    def _violation(self, alloc, record, other, invariant, collisions, pm, fix) -> dict:
        other_record = self._layers.get(other)
        declared = other_record is None and pm is not None and pm.source.startswith("declared")
        who = (
            f"layer {record['name']!r} and the page map its engine declared for it disagree"
            if declared
            else f"layers {record['name']!r} and {other!r} disagree"
        )
        lines = [
            f"kvguard: {who} on which bytes the KV-cache block ids own"
            + (
                f" in allocation #{alloc.id} (storage {alloc.storage_ptr:#x}, {alloc.nbytes} "
                "bytes)."
                if alloc
                else "."
            ),
            f"  invariant violated: {invariant}: {explain.INVARIANTS[invariant]}",
            *explain.layer_lines(record),
        ]
        if other_record is not None and other_record is not record:
            lines.extend(explain.layer_lines(other_record))
        if collisions:
            lines.append("  first colliding block ids:")
        lines.extend(explain.collision_lines(record["name"], collisions, pm))
        other_layout = other_record["layout"] if other_record else None
        lines.extend(explain.advice(fix, record["roles"], other_layout))
        return {
            "invariant": invariant,
            "allocation": alloc.id if alloc else record["allocation"],
            "layer": record["name"],
            "other": other,
            "collisions": collisions,
            "page_map": pm.to_json() if pm else None,
            "fix": [g.to_json() for g in fix] if isinstance(fix, list) else None,
            "unfixable": fix if isinstance(fix, str) else None,
            "message": "\n".join(lines),
        }


def _unquote(quoted: str) -> str:
    """Undo the repr() quoting of a layer name inside a page map's source."""
    return quoted[1:-1] if len(quoted) >= 2 and quoted[0] == quoted[-1] == "'" else quoted


def _permuted_like(mine: list[ViewGeometry], theirs: list[ViewGeometry]):
    """The target's views with their dims reordered into this layer's dim order."""
    if len(mine) != len(theirs):
        return f"the layer has {len(mine)} views and the cache it reads has {len(theirs)}"
    out = []
    for m, t in zip(mine, theirs, strict=True):
        if m.itemsize != t.itemsize or sorted(m.shape[1:]) != sorted(t.shape[1:]):
            return f"views {m.shape} and {t.shape} hold different elements"
        if m.shape[0] != t.shape[0]:
            return f"{m.shape[0]} blocks against {t.shape[0]}"
        perms = [
            p
            for p in itertools.permutations(range(1, len(t.shape)))
            if tuple(t.shape[i] for i in p) == m.shape[1:]
        ]
        if len({tuple(t.stride[i] for i in p) for p in perms}) != 1:
            return f"dims of {m.shape} and {t.shape} cannot be matched unambiguously"
        p = perms[0]
        out.append(
            ViewGeometry(
                m.shape, (t.stride[0], *(t.stride[i] for i in p)), t.offset, t.itemsize, m.dtype
            )
        )
    return out
