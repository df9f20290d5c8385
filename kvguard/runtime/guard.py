"""The Guard: wraps impl methods, judges each layer on its first kernel call, then answers
each call with one dict lookup.

A call that reaches no kernel (a warm-up run, a CUDA-graph capture size, an encoder path)
settles nothing: the layer stays pending, and every such call is watched again, cheaply (a
function mode that is entered and left, no tensor op), until one reaches a kernel.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from . import judge
from .allocations import Allocation, owner_of_map
from .discovery import SplitRecorder
from .errors import KVLayoutMismatchError, UnsupportedView
from .footprint import ViewGeometry
from .layouts import match_layout
from .pagemap import PageMap
from .records import LayerRecord, ViewRecord, Violation
from .restride import solve_restride
from .seats import Seat, seats
from .wrapper import PASS, SLOW, SWAP, guarded_method

logger = logging.getLogger("kvguard")

MODES = ("off", "warn", "strict", "fix")

# Steady-state actions of a (method, impl, layer, kv_cache) seat.
_PASS, _RAISE, _RESTRIDE, _INTERCEPT, _PENDING = range(5)


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
    violation: Violation | None = None


_PENDING_ENTRY = _Entry(_PENDING)


@dataclass(eq=False)
class Verdict:
    """The judgement of one layer's views: a violation or none, and how fix mode repairs it."""

    record: LayerRecord
    allocation: Allocation
    violation: Violation | None = None
    fix_by_view: dict[ViewGeometry, ViewGeometry] | None = None


@dataclass(eq=False)
class _Sight:
    verdict: Verdict | None = None
    entry: _Entry | None = None  # set when fix mode reruns the call on a re-strided cache
    methods: list[str] = field(default_factory=list)


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


def _with_kv_cache(args: tuple, kwargs: dict, kv_pos: int, kv_key: str, kv: torch.Tensor) -> tuple:
    """The call's arguments with `kv` in the place of its kv_cache, positional or keyword."""
    if len(args) > kv_pos:
        return (*args[:kv_pos], kv, *args[kv_pos + 1 :]), kwargs
    return args, {**kwargs, kv_key: kv}


def _check_within(
    nbytes: int,
    offset: int,
    layers: int,
    layer_stride: int,
    planes: tuple[int, ...],
    page_bytes: int,
    block_stride: int,
    num_blocks: int | None,
) -> None:
    """ValueError, with the numbers, when a declared page map reaches past the allocation."""
    page_end = planes[-1] + page_bytes  # one block's page, from its start
    last_layer = offset + (layers - 1) * layer_stride
    if last_layer + page_end > nbytes:
        what = (
            f"{layers} layers x layer_stride {layer_stride} B from offset {offset}"
            if layers > 1
            else f"offset {offset}"
        )
        raise ValueError(
            f"declare_allocation: {what} and a {page_end}-byte page reach byte "
            f"{last_layer + page_end}, past the {nbytes}-byte allocation; declare the map of "
            "the buffer it describes (check offset, layer_stride and the layers list)"
        )
    if num_blocks is not None and last_layer + (num_blocks - 1) * block_stride + page_end > nbytes:
        fit = (nbytes - last_layer - page_end) // block_stride + 1
        where = f" of the last layer (byte {last_layer})" if layers > 1 else ""
        raise ValueError(
            f"declare_allocation: {num_blocks} blocks x {block_stride} B (block_stride) "
            f"exceed the {nbytes}-byte allocation: the pages{where} reach byte "
            f"{last_layer + (num_blocks - 1) * block_stride + page_end}; {fit} blocks fit, "
            "so pass num_blocks <= that or the buffer the blocks live in"
        )


class Guard:
    """Checks that layers sharing a KV allocation agree on which bytes each block owns.

    mode: "off" (wrap returns the class untouched), "warn" (log once per allocation and layer,
    proceed), "strict" (raise KVLayoutMismatchError before any kernel runs) or "fix" (hand the
    kernels views re-strided onto the allocation's page map; where that cannot be done
    safely, stop the call as strict would). None reads KVGUARD_MODE.
    on_violation, if given, is called with each `Violation` as it is recorded (before strict
    mode raises), e.g. to save the report the moment something goes wrong. brief_errors makes
    the raised errors' text the one-line summary (a server, whose errors reach clients).
    """

    def __init__(
        self,
        mode: str | None = None,
        on_violation: Callable[[Violation], None] | None = None,
        brief_errors: bool = False,
    ) -> None:
        given = mode if mode is not None else os.environ.get("KVGUARD_MODE", "off")
        if not isinstance(given, str) or given.strip().lower() not in MODES:
            source = "Guard mode" if mode is not None else "KVGUARD_MODE"
            raise ValueError(f"{source} must be one of {', '.join(MODES)}; got {given!r}")
        self.mode = given.strip().lower()
        self._on_violation = on_violation
        self._brief = brief_errors
        self._lock = threading.RLock()
        self._local = threading.local()
        self._cache: dict[tuple, _Entry] = {}
        self._fast_tables: list[dict] = []  # per wrapped method: id(impl) -> steady answer
        self._kv_params: dict[int, str] = {}  # id(method) -> the name of its cache parameter
        self._keys_by_storage: dict[int, set[tuple]] = {}
        self._keys_by_impl: dict[int, set[tuple]] = {}
        self._impl_refs: dict[int, Any] = {}
        self._allocs: dict[int, Allocation] = {}  # live, by storage data_ptr
        self._all_allocs: list[Allocation] = []
        self._alloc_ids = itertools.count()
        self._layers: dict[str, LayerRecord] = {}
        self._violations: list[Violation] = []
        self._logged: set[tuple[int, str]] = set()
        self._verdicts: dict[tuple, Verdict] = {}
        self._stop_codes: frozenset = frozenset(
            {Guard._seat.__code__, Guard._first_sight.__code__, Guard._intercepted.__code__}
        )
        self.discoveries = 0  # first-sight judgements made (for tests and the benchmark)

    # Public API ------------------------------------------------------------------------
    def wrap(
        self, cls: type, methods: Mapping[str, str] | None = None, *, layer: str | None = "layer"
    ) -> type:
        """Wrap, in place, every method of `cls` taking both `layer` and `kv_cache`, or the
        methods `methods` names, each mapped to its KV-cache parameter
        (`wrap(cls, methods={"forward": "cache"})`). `layer` names the layer parameter (None:
        layers are named after the impl instance).

        Raises ValueError naming the class when there is nothing to wrap, in every mode (off
        too, so that a class that would go unguarded is found before the guard is on).
        Idempotent; a method another Guard wraps already is refused (ValueError), since two
        guards would judge every call twice and disagree on what they record."""
        found = seats(cls, methods, layer=layer)
        if self.mode == "off":
            return cls
        for seat in found:
            owner = getattr(seat.fn, "__kvguard_guard__", None)
            if owner is self:
                continue
            if owner is not None:
                raise ValueError(
                    f"{cls.__qualname__}.{seat.name} is already wrapped by another kvguard "
                    f"Guard (mode {owner.mode}); use that guard, or call its unwrap("
                    f"{cls.__name__}) first"
                )
            setattr(cls, seat.name, self._wrap_method(seat))
        return cls

    def unwrap(self, cls: type) -> type:
        """Undo `wrap` on `cls`: its methods are the originals again."""
        for name, fn in list(vars(cls).items()):
            if getattr(fn, "__kvguard_guard__", None) is self:
                setattr(cls, name, fn.__wrapped__)
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
        if num_blocks is not None and (not isinstance(num_blocks, int) or num_blocks <= 0):
            raise ValueError(f"num_blocks must be a positive int, got {num_blocks!r}")
        _check_within(
            storage.nbytes(),
            offset,
            len(layers or [0]),
            layer_stride,
            planes,
            page_bytes,
            block_stride,
            num_blocks,
        )
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

    @property
    def layers(self) -> list[LayerRecord]:
        with self._lock:
            return list(self._layers.values())

    @property
    def violations(self) -> list[Violation]:
        with self._lock:
            return list(self._violations)

    def report(self) -> dict[str, Any]:
        """{"mode", "allocations", "layers", "violations"}: plain JSON-serialisable data."""
        with self._lock:
            return {
                "mode": self.mode,
                "allocations": [a.to_json() for a in self._all_allocs],
                "layers": [r.to_json() for r in self._layers.values()],
                "violations": [v.to_json() for v in self._violations],
            }

    # The wrapper: steady state is one dict lookup --------------------------------------
    def _wrap_method(self, seat: Seat):
        fn, kv_pos = seat.fn, seat.kv_pos
        self._kv_params[id(fn)] = seat.kv_param
        # Engines pass the same kv_cache object every step: its identity (a weakref, so the
        # cache can still be freed) and the layer's stand for the metadata key.
        fast: dict[int, tuple] = {}
        self._fast_tables.append(fast)
        method = id(fn)  # each method may split differently (forward vs cache update)
        guarded = guarded_method(
            fn,
            fast,
            functools.partial(self._seat, fn, fn.__name__, method, fast, kv_pos),
            functools.partial(self._act, fn, fn.__name__, kv_pos),
            kv_param=seat.kv_param,
            layer_param=seat.layer_param,
        )
        self._stop_codes = self._stop_codes | {guarded.__code__}
        guarded.__kvguard_guard__ = self
        return guarded

    def _seat(self, fn, name, method, fast, kv_pos, impl, layer, kv, args, kwargs):
        """The slow path: a cache object not seen at this seat since the last change."""
        if not isinstance(kv, torch.Tensor):
            return fn(impl, *args, **kwargs)
        key = (method, id(impl), id(layer), kv.data_ptr(), kv.shape, kv.stride(), kv.dtype)
        entry = self._cache.get(key, _PENDING_ENTRY)
        how = {_PASS: PASS, _RESTRIDE: SWAP}.get(entry.action, SLOW)
        with contextlib.suppress(TypeError):  # a tensor without weak references: no fast path
            fast[id(impl)] = (weakref.ref(kv), id(layer), how, entry, key)
        return self._act(fn, name, kv_pos, entry, key, impl, layer, kv, args, kwargs)

    def _act(self, fn, name, kv_pos, entry: _Entry, key, impl, layer, kv, args, kwargs):
        action = entry.action
        if action == _PASS:
            return fn(impl, *args, **kwargs)
        if action == _RAISE:
            raise entry.error
        if action == _RESTRIDE:
            fixed = entry.fixed_ref() if entry.fixed_ref is not None else None
            if fixed is None:
                fixed = self._attach_fixed_input(entry, kv)
            args, kwargs = _with_kv_cache(args, kwargs, kv_pos, self._kv_params[key[0]], fixed)
            return fn(impl, *args, **kwargs)
        if action == _INTERCEPT:
            return self._intercepted(fn, key, impl, kv, entry, args, kwargs)
        return self._first_sight(fn, name, impl, layer, kv, key, kv_pos, args, kwargs)

    # First sight ---------------------------------------------------------------------------
    def _first_sight(self, fn, method, impl, layer, kv, key, kv_pos, args, kwargs):
        if getattr(self._local, "active", False):  # nested/super() call inside a discovery
            return fn(impl, *args, **kwargs)
        if kv.numel() == 0:
            self._settle(key, impl, kv, _Entry(_PASS))
            record = self._record(_layer_name(layer, impl), impl, kv)
            record.status, record.reason = "skipped", "zero-size kv_cache"
            return fn(impl, *args, **kwargs)
        sight = _Sight()

        def on_boundary(recorder: SplitRecorder):
            verdict = self._judge(layer, impl, kv, recorder.judged(), method)
            sight.verdict = verdict
            violation = verdict.violation
            if violation is None or self.mode == "warn":
                if violation is not None:
                    self._log_once(violation)
                return None
            if self.mode == "strict" or verdict.fix_by_view is None:
                raise self._stop(key, impl, kv, violation)
            entry = self._steady_entry(verdict, kv, recorder)
            if entry.action == _RESTRIDE:
                # Swapping views here would come too late for a Python-launched kernel
                # (Triton): its wrapper has already read the old strides as ints, and only
                # data_ptr() passes through here. Rerun the call on the re-strided cache.
                sight.entry = entry
                raise _Restart
            self._settle(key, impl, kv, entry)
            return _restrided([t for t, _ in recorder.judged()], verdict.fix_by_view)

        def on_unsafe_swap(reason: str) -> BaseException:
            return self._refuse(key, impl, kv, sight.verdict, reason)

        recorder = SplitRecorder(kv, on_boundary, self._stop_codes, on_unsafe_swap)
        self._local.active = True
        try:
            with recorder:
                result = fn(impl, *args, **kwargs)
        except _Restart:
            # The recorder keeps the error it raised; for this one that is a cycle (error ->
            # traceback -> frames -> recorder) holding every frame of the caller's stack until
            # the cyclic GC runs, which may be inside a CUDA graph capture, where freeing a
            # captured graph that a caller's frame held invalidates the capture.
            recorder.error = None
            result = None
        finally:
            self._local.active = False
        verdict = sight.verdict
        fixed = verdict is not None and verdict.violation is not None
        if fixed and self.mode == "fix" and verdict.violation.action == "fixed":
            self._log_once(verdict.violation)
        if sight.entry is not None:  # nothing of the call ran past its first kernel boundary
            self._settle(key, impl, kv, sight.entry)
            fixed = self._attach_fixed_input(sight.entry, kv)
            args, kwargs = _with_kv_cache(args, kwargs, kv_pos, self._kv_params[key[0]], fixed)
            return fn(impl, *args, **kwargs)
        if isinstance(recorder.error, KVLayoutMismatchError):
            raise recorder.error  # the impl caught it: the call must fail all the same
        if verdict is None:  # reached no kernel: stays pending, watched again next call
            self._record(_layer_name(layer, impl), impl, kv).untouched_calls += 1
            return result
        if key not in self._cache:
            self._settle(key, impl, kv, self._steady_entry(verdict, kv, recorder))
        return result

    def _stop(self, key, impl, kv, violation: Violation) -> KVLayoutMismatchError:
        """The error that stops this call and every later one at this seat."""
        if self._brief:  # the error carries the summary: the full diagnostic goes to the log
            self._log_once(violation, logging.ERROR)
        error = KVLayoutMismatchError(violation, brief=self._brief)
        self._settle(key, impl, kv, _Entry(_RAISE, error=error, violation=violation))
        return error

    def _refuse(self, key, impl, kv, verdict: Verdict | None, reason: str) -> BaseException:
        """Fix mode cannot repair this call safely: stop it as strict would."""
        assert verdict is not None and verdict.violation is not None
        violation = verdict.violation
        with self._lock:
            violation.action, violation.unfixable = "refused", reason
            verdict.record.status, verdict.record.fix_path = "violation", None
            violation.layer = verdict.record.snapshot()
            self._logged.discard(self._log_key(violation))  # it said "fixed"; now it is not
        self._notify(violation)
        return self._stop(key, impl, kv, violation)

    @staticmethod
    def _log_key(violation: Violation) -> tuple[int, str]:
        alloc = violation.allocation.id if violation.allocation else -1
        return alloc, violation.layer.name

    def _log_once(self, violation: Violation, level: int = logging.WARNING) -> None:
        key = self._log_key(violation)
        with self._lock:
            if key in self._logged:
                return
            self._logged.add(key)
        logger.log(level, "%s", violation)  # formatted by the handler, if it emits at all

    def _steady_entry(self, verdict: Verdict, kv: torch.Tensor, recorder: SplitRecorder) -> _Entry:
        violation = verdict.violation
        if violation is None or self.mode == "warn":
            return _Entry(_PASS)
        if self.mode == "strict" or verdict.fix_by_view is None:
            error = KVLayoutMismatchError(violation, brief=self._brief)
            return _Entry(_RAISE, error=error, violation=violation)
        assert violation.fix is not None
        solved = solve_restride(
            recorder.program,
            recorder.consumed,
            ViewGeometry.of(kv),
            kv.dtype,
            [verdict.fix_by_view[v.geometry] for v in verdict.record.views],
        )
        with self._lock:
            verdict.record.fix_path = "restride" if solved else "intercept"
            violation.layer = verdict.record.snapshot()
        if solved is None:
            return _Entry(_INTERCEPT, fix_views=verdict.fix_by_view, violation=violation)
        entry = _Entry(_RESTRIDE, fixed_input=solved, violation=violation)
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

    def _intercepted(self, fn, key, impl, kv, entry: _Entry, args, kwargs):
        def on_boundary(recorder: SplitRecorder):
            return _restrided([t for t, _ in recorder.judged()], entry.fix_views)

        def on_unsafe_swap(reason: str) -> BaseException:
            verdict = Verdict(self._layers[entry.violation.layer.name], None, entry.violation)
            return self._refuse(key, impl, kv, verdict, reason)

        recorder = SplitRecorder(kv, on_boundary, self._stop_codes, on_unsafe_swap)
        with recorder:
            result = fn(impl, *args, **kwargs)
        if isinstance(recorder.error, KVLayoutMismatchError):
            raise recorder.error
        return result

    def _settle(self, key: tuple, impl: Any, kv: torch.Tensor, entry: _Entry) -> None:
        storage = kv.untyped_storage()
        ptr = storage.data_ptr()
        with self._lock:
            self._clear_fast()
            self._cache[key] = entry
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

    def _clear_fast(self) -> None:
        for table in self._fast_tables:
            table.clear()

    def _forget_impl(self, impl_id: int, _ref: Any = None) -> None:
        with self._lock:
            self._clear_fast()
            self._impl_refs.pop(impl_id, None)
            for key in self._keys_by_impl.pop(impl_id, ()):
                self._cache.pop(key, None)

    def _forget_storage(self, ptr: int, alloc: Allocation, _ref: Any = None) -> None:
        with self._lock:
            self._clear_fast()
            alloc.freed = True
            if self._allocs.get(ptr) is alloc:
                del self._allocs[ptr]
            for key in self._keys_by_storage.pop(ptr, ()):
                self._cache.pop(key, None)

    def _allocation(self, storage: torch.UntypedStorage) -> Allocation:
        ptr = storage.data_ptr()
        with self._lock:
            alloc = self._allocs.get(ptr)
            if alloc is not None and alloc.storage_ref() is storage:
                return alloc
            alloc = Allocation(next(self._alloc_ids), ptr, storage.nbytes(), str(storage.device))
            alloc.storage_ref = weakref.ref(
                storage, functools.partial(self._forget_storage, ptr, alloc)
            )
            self._allocs[ptr] = alloc
            self._all_allocs.append(alloc)
            return alloc

    # Judging one layer -------------------------------------------------------------------
    def _record(self, name: str, impl: Any, kv: torch.Tensor) -> LayerRecord:
        """The layer's record, created pending on its first call."""
        record = self._layers.get(name)
        if record is None:
            with self._lock:
                record = self._layers.setdefault(
                    name,
                    LayerRecord(
                        name,
                        type(impl).__qualname__,
                        _attn_type(impl),
                        ViewGeometry.of(kv) if kv.dim() else None,
                    ),
                )
        return record

    def _judge(self, layer, impl, kv, views: list[tuple[torch.Tensor, str]], method: str):
        self.discoveries += 1
        name = _layer_name(layer, impl)
        alloc = self._allocation(kv.untyped_storage())
        found: dict[ViewGeometry, ViewRecord] = {}
        for t, role in views:  # latent caches hand the same view as K and as V
            g = ViewGeometry.of(t)
            found.setdefault(g, ViewRecord(role, g))
        records = tuple(found.values())
        with self._lock:  # another method (or thread) of this layer already judged these views
            previous = self._verdicts.get((name, alloc.id, tuple(found)))
            if previous is not None:
                if method not in previous.record.methods:
                    previous.record.methods.append(method)
                return previous
            record = self._record(name, impl, kv)
            record.kv_cache = ViewGeometry.of(kv) if kv.dim() else None
            record.allocation = alloc.id
            record.views = records
            record.layout = match_layout(kv, list(found))
            record.kv_sharing_target = _sharing_target(layer, impl)
            record.status, record.reason = "ok", None
            if method not in record.methods:
                record.methods.append(method)
        verdict = Verdict(record, alloc)
        try:
            for g in found:
                g.validate()
        except UnsupportedView as e:
            record.status, record.reason = "skipped", str(e)
            logger.warning("kvguard: skipping layer %r: %s", name, e)
            return verdict
        with self._lock:
            finding, pm = self._find(alloc, record)
            if finding is not None:
                verdict.violation = self._violation(alloc, record, finding, pm)
                if finding.fix is not None:
                    verdict.fix_by_view = dict(zip(found, finding.fix, strict=True))
                self._record_violation(verdict.violation)
            self._verdicts[(name, alloc.id, tuple(found))] = verdict
        return verdict

    def _find(self, alloc: Allocation, record: LayerRecord):
        """The first invariant the layer's views break, and the page map they were held to."""
        finding = judge.own_overlaps(record.views)
        if finding is not None:
            return finding, None
        pm = alloc.page_map_for(record.name, record.geometries)
        collisions = judge.containment(record.views, pm)
        if collisions:
            owner = owner_of_map(pm)
            fix = pm.place(record.geometries, alloc.nbytes)
            return judge.Finding(
                "containment",
                "declared" if owner is None else ("itself" if owner == record.name else "layer"),
                owner,
                tuple(collisions),
                fix=tuple(fix) if isinstance(fix, list) else None,
                unfixable=fix if isinstance(fix, str) else None,
            ), pm
        finding = judge.declared_conflict(pm, alloc.declared_maps())
        if finding is not None:
            return finding, pm
        target = self._layers.get(record.kv_sharing_target or "")
        if target is not None and target.views:
            return judge.agreement(record.views, target.views, target.name), pm
        self._recheck_sharers(alloc, record)
        return None, pm

    def _recheck_sharers(self, alloc: Allocation, record: LayerRecord) -> None:
        """A layer judged after its sharers: judge the sharers now (reported, not raised)."""
        for other in list(self._layers.values()):
            if other.kv_sharing_target == record.name and other.status == "ok":
                finding = judge.agreement(other.views, record.views, record.name)
                if finding is not None:
                    violation = self._violation(alloc, other, finding, None)
                    violation.action = "warned"
                    other.status = "violation"
                    self._record_violation(violation)
                    logger.warning("%s", violation)

    def _violation(self, alloc, record: LayerRecord, finding, pm) -> Violation:
        fixable = finding.fix is not None
        action, status = {
            "warn": ("warned", "violation"),
            "strict": ("raised", "violation"),
            "fix": ("fixed", "fixed") if fixable else ("refused", "violation"),
        }[self.mode]
        record.status = status
        other = self._layers.get(finding.other_name or "")
        return Violation(
            invariant=finding.invariant,
            layer=record.snapshot(),
            against=finding.against,
            other=other.snapshot() if other is not None and other is not record else None,
            other_name=finding.other_name,
            page_map=pm,
            collisions=finding.collisions,
            allocation=alloc.info,
            fix=finding.fix,
            unfixable=finding.unfixable,
            detail=finding.detail,
            mode=self.mode,
            action=action,
        )

    def _record_violation(self, violation: Violation) -> None:
        self._violations.append(violation)
        self._notify(violation)

    def _notify(self, violation: Violation) -> None:
        if self._on_violation is not None:
            try:
                self._on_violation(violation)
            except Exception:  # a reporting hook must never break the engine's forward pass
                logger.exception("kvguard: the on_violation hook failed")
