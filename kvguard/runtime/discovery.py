"""Discovery: watch an impl split `kv_cache` on its first call, through its own code path.

A `TorchFunctionMode` follows every tensor derived from `kv_cache` by view ops (unbind,
indexing, slicing, permute, dtype views, as_strided, ...). The first op that hands such a
tensor to anything that is not a view op (a custom kernel op, an indexing write, `data_ptr()`
for a Triton launcher) is the kernel boundary: the tensors it receives are the views the
kernels actually see. The guard judges them there, before that op runs, and may hand the op
re-strided tensors instead. The chain of view ops is kept as a replayable program so that fix
mode can solve, once, for a re-strided `kv_cache` on which the impl's own split yields the
corrected views; steady state then needs no mode at all.

Three things make the judged views the right ones:
- each view is named by its role at the kernel call (`roles.py`), not by creation order;
- a view that selects blocks (`key_cache[b]`, `kv_cache[2:4]`, per-token writes into one
  block) is judged as the block-axis view it was taken from: the block axis is dim 0 of
  every kernel-facing view, and an axis of two is K and V, never blocks;
- once the guard has stopped a call (strict, or a fix it cannot make), every later kernel
  boundary of that call raises again: an impl that catches the error and falls back to a
  torch write cannot reach the cache.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import CodeType
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from . import roles

# Ops that return a view, or (reshape, contiguous, flatten) a view when they can; the result
# is followed only if it really shares the cache's storage.
VIEW_OPS = frozenset(
    [
        "view",
        "reshape",
        "unbind",
        "select",
        "narrow",
        "chunk",
        "split",
        "tensor_split",
        "split_with_sizes",
        "permute",
        "transpose",
        "t",
        "unsqueeze",
        "squeeze",
        "flatten",
        "unflatten",
        "movedim",
        "moveaxis",
        "swapaxes",
        "swapdims",
        "as_strided",
        "expand",
        "expand_as",
        "view_as",
        "unfold",
        "diagonal",
        "detach",
        "alias",
        "contiguous",
        "view_as_real",
        "view_as_complex",
        "__getitem__",
        "__get__",
    ]
)
# Metadata queries: they neither create views nor touch the bytes.
NEUTRAL_OPS = frozenset(
    [
        "size",
        "stride",
        "dim",
        "ndimension",
        "numel",
        "nelement",
        "element_size",
        "storage_offset",
        "is_contiguous",
        "__len__",
        "untyped_storage",
        "get_device",
        "is_floating_point",
        "is_complex",
        "__hash__",
        "__eq__",
        "__format__",
        "__repr__",
        "__bool__",
        "__iter__",
        "type",
    ]
)
# Metadata queries whose answer changes when fix mode re-strides a view: code that read one
# has baked the old geometry into something (a Triton launcher's stride arguments).
GEOMETRY_READS = frozenset(["stride", "storage_offset", "is_contiguous"])
# View ops that take one entry of a dim: (position of the dim argument, its default).
_BLOCK_PICKERS = {"select": (1, None), "unbind": (1, 0)}


@dataclass(frozen=True)
class _Ref:
    node: int


def _flatten(obj: Any, out: list) -> None:
    if isinstance(obj, torch.Tensor):
        out.append(obj)
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            _flatten(o, out)
    elif isinstance(obj, dict):
        for o in obj.values():
            _flatten(o, out)


def _basic_index(index: Any) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return all(
        i is None or i is Ellipsis or (isinstance(i, (int, slice)) and not isinstance(i, bool))
        for i in items
    )


def _name(func: Any) -> str:
    return getattr(func, "__name__", "") or str(func)


def _picks_blocks(name: str, args: tuple, kwargs: dict, src: torch.Tensor) -> bool:
    """Whether a view op takes one block of `src` (an int index, `select` or `unbind` of dim
    0, or a one-block slice), where dim 0 of `src` is a block axis: any axis but one of two
    entries (K and V). Wider slices and splits of dim 0 are not taken for block picks: on a
    flattened `(2 * num_blocks, ...)` view they separate K from V."""
    if src.dim() == 0 or src.shape[0] == 2:
        return False
    if name == "__getitem__":
        index = args[1]
        if isinstance(index, tuple):
            if not index:
                return False
            index = index[0]
        if isinstance(index, bool) or index is None or index is Ellipsis:
            return False
        if isinstance(index, int):
            return True
        if isinstance(index, slice):
            start, stop, step = index.indices(src.shape[0])
            return len(range(start, stop, step)) == 1 and src.shape[0] > 1
        return False
    if name not in _BLOCK_PICKERS:
        return False
    position, default = _BLOCK_PICKERS[name]
    dim = kwargs.get("dim", args[position] if len(args) > position else default)
    return isinstance(dim, int) and dim in (0, -src.dim())


@dataclass
class Program:
    """The view ops from `kv_cache` to each kernel-facing view, replayable on other tensors."""

    steps: list[tuple[Any, Any, Any, list[int]]] = field(default_factory=list)

    def replay(self, root: torch.Tensor) -> dict[int, torch.Tensor]:
        env: dict[int, torch.Tensor] = {0: root}

        def sub(o: Any) -> Any:
            if isinstance(o, _Ref):
                return env[o.node]
            if isinstance(o, tuple):
                return tuple(sub(x) for x in o)
            if isinstance(o, list):
                return [sub(x) for x in o]
            if isinstance(o, dict):
                return {k: sub(v) for k, v in o.items()}
            return o

        for func, args, kwargs, outs in self.steps:
            result = func(*sub(args), **sub(kwargs))
            flat: list[torch.Tensor] = []
            _flatten(result, flat)
            for node, t in zip(outs, flat, strict=False):
                if node >= 0:
                    env[node] = t
        return env


class SplitRecorder(TorchFunctionMode):
    """Follows views of one `kv_cache` and calls `on_boundary` before a kernel sees them.

    `on_boundary(recorder)` reads `recorder.judged()` (the kernel-facing views found so far,
    with their roles) and returns {id(view): replacement} or None; it may raise to stop the
    call, after which every boundary of the call raises the same. While replacements are in
    force, `on_unsafe_swap(reason)` is called (and what it returns raised) at a boundary where
    swapping the views would hand a kernel mixed geometry. `stop` holds the guard's own code
    objects: the frames above the impl, and whose `data_ptr()` calls are the guard's.
    """

    def __init__(
        self,
        kv_cache: torch.Tensor,
        on_boundary: Callable[[SplitRecorder], Any],
        stop: frozenset[CodeType] = frozenset(),
        on_unsafe_swap: Callable[[str], BaseException] | None = None,
    ) -> None:
        super().__init__()
        self.stop = stop
        self.kv_cache = kv_cache
        self.nodes: list[torch.Tensor] = [kv_cache]  # strong refs: ids stay unique
        self.index: dict[int, int] = {id(kv_cache): 0}
        self.on_boundary = on_boundary
        self.on_unsafe_swap = on_unsafe_swap
        self.subst: dict[int, torch.Tensor] = {}
        self.error: BaseException | None = None
        self.consumed: list[int] = []  # the judged views, at kernel boundaries
        self.geometry_read: set[int] = set()
        self.storage_ptr = 0  # the rest is set up by the first op on the cache, if any

    def _start(self) -> None:
        self.storage_ptr = self.kv_cache.untyped_storage().data_ptr()
        self.parent: list[int] = [-1]
        self.children: set[int] = set()
        self.block_of: dict[int, int] = {}  # a view of one block -> the block-axis view
        self.names: dict[int, str] = {}
        self.program = Program()

    @property
    def touched(self) -> bool:
        return bool(self.consumed)

    def judged(self) -> list[tuple[torch.Tensor, str]]:
        """The judged views in creation order, each with its role at the kernel call."""
        return [(self.nodes[i], self.names[i]) for i in self.consumed]

    def _template(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor) and id(obj) in self.index:
            return _Ref(self.index[id(obj)])
        if isinstance(obj, tuple):
            return tuple(self._template(x) for x in obj)
        if isinstance(obj, list):
            return [self._template(x) for x in obj]
        if isinstance(obj, dict):
            return {k: self._template(v) for k, v in obj.items()}
        return obj

    def _substitute(self, obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return self.subst.get(id(obj), obj)
        if isinstance(obj, tuple):
            return tuple(self._substitute(x) for x in obj)
        if isinstance(obj, list):
            return [self._substitute(x) for x in obj]
        if isinstance(obj, dict):
            return {k: self._substitute(v) for k, v in obj.items()}
        return obj

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat: list[torch.Tensor] = []
        _flatten((args, kwargs), flat)
        tracked = [t for t in flat if id(t) in self.index]
        if not tracked:
            return func(*args, **kwargs)
        name = _name(func)
        if name in NEUTRAL_OPS:
            if name in GEOMETRY_READS and sys._getframe(1).f_code not in self.stop:
                self.geometry_read.update(self.index[id(t)] for t in tracked)
            return func(*args, **kwargs)
        if name == "data_ptr" and sys._getframe(1).f_code in self.stop:
            return func(*args, **kwargs)
        if self.error is not None:  # the guard stopped this call: no kernel may follow
            raise self.error
        if not self.storage_ptr:
            self._start()
        is_view = name in VIEW_OPS and (name != "__getitem__" or _basic_index(args[1]))
        if is_view and not any(id(t) in self.subst for t in tracked):
            result = func(*args, **kwargs)
            self._follow(func, name, args, kwargs, tracked, result)
            return result
        return self._boundary(func, name, args, kwargs, tracked)

    def _boundary(self, func, name: str, args, kwargs, tracked: list[torch.Tensor]):
        """A kernel boundary: judge the views the split produced (the leaves of the view tree,
        so K and V are judged together even when a kernel touches K first), before it runs."""
        new = self._unjudged()
        if new:
            self._name_views(new, func, args, kwargs)
            self.consumed.extend(new)
            self.consumed.sort()
            try:
                subst = self.on_boundary(self)
            except BaseException as error:
                self.error = error
                raise
            if subst:
                self.subst.update(subst)
        if self.subst:
            problem = self._swap_problem(name, tracked)
            if problem is not None and self.on_unsafe_swap is not None:
                self.error = self.on_unsafe_swap(problem)
                raise self.error
            args, kwargs = self._substitute(args), self._substitute(kwargs)
        return func(*args, **kwargs)

    def _unjudged(self) -> list[int]:
        found: list[int] = []
        for i in range(len(self.nodes)):
            if i in self.children:
                continue
            j = self.block_of.get(i, i)  # some blocks of a view: judge the view
            if j not in self.consumed and j not in found and not self._below_judged(j):
                found.append(j)
        return found

    def _name_views(self, new: list[int], func, args, kwargs) -> None:
        by_schema = roles.schema_names(func, args, kwargs)
        in_frames = roles.frame_names([self.nodes[i] for i in new], self.stop)
        used = set(self.names.values())
        for i in new:
            t = self.nodes[i]
            schema = [by_schema[id(t)]] if id(t) in by_schema else []
            candidates = [n for n in (*schema, *in_frames.get(id(t), ())) if n not in used]
            name = roles.best_name(candidates) or f"view{len(self.names)}"
            used.add(name)
            self.names[i] = name

    def _swap_problem(self, name: str, tracked: list[torch.Tensor]) -> str | None:
        """Why handing this op the replaced views would mix old and new geometry, or None."""
        if name == "data_ptr":
            return (
                "the kernel is launched from Python: its launcher asks for the view's data "
                "pointer after reading its strides as numbers"
            )
        if self.geometry_read:
            read = sorted(self.names.get(i, f"view{i}") for i in self.geometry_read)
            return (
                f"the impl read the strides or offset of {', '.join(read)} before its kernel "
                "call, so a swapped view would meet numbers computed from the old one"
            )
        for t in tracked:
            i = self.index[id(t)]
            if id(t) not in self.subst and i not in self.consumed:
                return (
                    f"the kernel op {name} receives a view derived from (or containing) a "
                    "re-strided one, which swapping cannot re-derive"
                )
        return None

    def _below_judged(self, i: int) -> bool:
        i = self.parent[i]
        while i >= 0:
            if i in self.consumed:
                return True
            i = self.parent[i]
        return False

    def _follow(self, func, name: str, args, kwargs, tracked, result) -> None:
        flat: list[torch.Tensor] = []
        _flatten(result, flat)
        source = self.index[id(tracked[0])]
        picks = source not in self.block_of and _picks_blocks(name, args, kwargs, tracked[0])
        outs = []
        for t in flat:
            shares = (
                id(t) not in self.index
                and t.untyped_storage().data_ptr() == self.storage_ptr
                and t.numel() > 0
            )
            if shares:
                node = len(self.nodes)
                self.index[id(t)] = node
                outs.append(node)
                self.nodes.append(t)
                self.parent.append(source)
                if source in self.block_of:
                    self.block_of[node] = self.block_of[source]
                elif picks:
                    self.block_of[node] = source
            else:
                outs.append(-1)
        if any(o >= 0 for o in outs):
            self.children.update(self.index[id(t)] for t in tracked)
            self.program.steps.append((func, self._template(args), self._template(kwargs), outs))
