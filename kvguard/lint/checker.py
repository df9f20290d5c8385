"""Run every enabled rule over one file's libcst tree.

One walk per file collects the splits (with the class and function they sit in) and
the classes; the rules then judge those facts with the project index.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import libcst as cst
from libcst.metadata import CodeRange

from kvguard.lint.facts import MODULE_UNIT
from kvguard.lint.index import ProjectIndex
from kvguard.lint.names import KvNames
from kvguard.lint.receivers import (
    STATE_WORDS,
    Context,
    Kind,
    Receiver,
    Split,
    classify,
    split_of,
    unpack_split,
)

_STATE_CLASS_WORDS = ("Mamba", "ShortConv", "LinearAttention", "GatedDeltaNet", "GDN", "SSM")
_MLA_WORDS = ("MLA", "Mla")
# Reading these from a piece of the cache inspects it; it does not use K or V.
_METADATA = frozenset(
    {
        "shape",
        "dtype",
        "device",
        "nbytes",
        "numel",
        "is_contiguous",
        "stride",
        "size",
        "element_size",
        "data_ptr",
        "storage_offset",
        "untyped_storage",
        "ndim",
        "dim",
    }
)


@dataclass
class SplitSite:
    split: Split
    class_name: str | None
    function: str | None
    in_splitter: bool
    targets: tuple[str, ...]


@dataclass
class FileModel:
    """What the rules see of one file."""

    path: str
    module: cst.Module
    sites: list[SplitSite] = field(default_factory=list)
    classes: dict[str, cst.ClassDef] = field(default_factory=dict)
    positions: Callable[[cst.CSTNode], CodeRange] | None = None


def _target_names(node: cst.BaseAssignTargetExpression | cst.BaseExpression) -> list[str]:
    if isinstance(node, cst.Name):
        return [node.value]
    if isinstance(node, (cst.Tuple, cst.List)):
        return [n for e in node.elements for n in _target_names(e.value)]
    if isinstance(node, cst.StarredElement):
        return _target_names(node.value)
    return []


class _FunctionScan(cst.CSTVisitor):
    """Collect assignments and split candidates of one outermost function (or module rest)."""

    def __init__(self) -> None:
        self.assigns: list[tuple[list[str], cst.BaseExpression, cst.CSTNode]] = []
        self.nodes: list[cst.CSTNode] = []
        self.returns: list[cst.Return] = []
        self.unpacks: list[cst.Assign] = []
        self.loops: list[tuple[str, cst.BaseExpression]] = []  # (loop variable, iterable)
        self.keywords: dict[int, str] = {}  # id(argument value) -> keyword it is passed as
        self.inspected: set[int] = set()  # ids of expressions only read for metadata
        self.type_checked: set[str] = set()  # names passed to isinstance(): maybe tuples

    def visit_Assign(self, node: cst.Assign) -> None:
        names = [n for t in node.targets for n in _target_names(t.target)]
        self.assigns.append((names, node.value, node))
        if isinstance(node.targets[0].target, (cst.Tuple, cst.List)):
            self.unpacks.append(node)

    def visit_AnnAssign(self, node: cst.AnnAssign) -> None:
        if node.value is not None:
            self.assigns.append((_target_names(node.target), node.value, node))

    def visit_For(self, node: cst.For) -> None:
        # for _, cache in kv_caches.items(): each iteration binds one cache
        iterable = node.iter
        if (
            isinstance(iterable, cst.Call)
            and isinstance(iterable.func, cst.Attribute)
            and iterable.func.attr.value in ("items", "values")
        ):
            iterable = iterable.func.value
        target = node.target
        if isinstance(target, (cst.Tuple, cst.List)) and target.elements:
            target = target.elements[-1].value
        if isinstance(target, cst.Name):
            self.loops.append((target.value, iterable))

    def visit_NamedExpr(self, node: cst.NamedExpr) -> None:
        self.assigns.append((_target_names(node.target), node.value, node))

    def visit_Subscript(self, node: cst.Subscript) -> None:
        self.nodes.append(node)

    def visit_Arg(self, node: cst.Arg) -> None:
        if node.keyword is not None:
            self.keywords[id(node.value)] = node.keyword.value

    def visit_Attribute(self, node: cst.Attribute) -> None:
        if node.attr.value in _METADATA:
            self.inspected.add(id(node.value))

    def visit_Call(self, node: cst.Call) -> None:
        self.nodes.append(node)
        if isinstance(node.func, cst.Name) and node.func.value == "isinstance" and node.args:
            checked = node.args[0].value
            if isinstance(checked, cst.Name):
                self.type_checked.add(checked.value)
        callee = (
            node.func.attr.value
            if isinstance(node.func, cst.Attribute)
            else (node.func.value if isinstance(node.func, cst.Name) else "")
        )
        if callee.startswith(("is_", "assert", "check")):
            # predicates inspect a piece of the cache; they do not read K or V
            self.inspected.update(id(arg.value) for arg in node.args)

    def visit_Return(self, node: cst.Return) -> None:
        self.returns.append(node)

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        return True


def _aliases(scan: _FunctionScan, ctx: Context) -> dict[str, Receiver]:
    """Names bound (flow-insensitively) to a cache, a list of caches or a view of one."""
    aliases: dict[str, Receiver] = {}
    for _ in range(8):  # chains of aliases are short; 8 rounds reach a fixed point in practice
        ctx.aliases = aliases
        changed = False
        for names, value, _node in scan.assigns:
            if len(names) != 1:
                continue
            name = names[0]
            selecting = ctx.names.is_cache(name)
            receiver = classify(value, ctx, selecting=selecting)
            if receiver is None:
                continue
            if any(w in name for w in STATE_WORDS):
                receiver = Receiver(Kind.STATE, receiver.root)
            old = aliases.get(name)
            if old is not None:
                receiver = Receiver(
                    old.kind,
                    old.root,
                    old.moves,
                    old.reshaped or receiver.reshaped or old.moves != receiver.moves,
                )
            if aliases.get(name) != receiver:
                aliases[name] = receiver
                changed = True
        for name, iterable in scan.loops:
            receiver = classify(iterable, ctx)
            if receiver is not None and receiver.kind is Kind.LIST and name not in aliases:
                aliases[name] = Receiver(Kind.CACHE, receiver.root)
                changed = True
        if not changed:
            break
    ctx.aliases = aliases
    return aliases


class Collector:
    def __init__(self, names: KvNames, index: ProjectIndex, path: str) -> None:
        self.names = names
        self.index = index
        self.path = path
        parts = path.replace("\\", "/").split("/")
        self.in_state_tree = "mamba" in parts
        self.in_mla_file = any("mla" in part.lower() for part in parts)

    def class_context(self, cls: cst.ClassDef | None) -> tuple[bool, bool, Kind | None]:
        """(state context, MLA context, what self.kv_cache holds) for code in this class."""
        if cls is None:
            return self.in_state_tree, self.in_mla_file, None
        facts = self.index.lookup(cls.name.value, near=self.path)
        lineage = (
            [n for c in self.index.mro(facts) for n in (c.name, *c.bases)]
            if facts
            else [cls.name.value]
        )
        state = self.in_state_tree or any(w in n for n in lineage for w in _STATE_CLASS_WORDS)
        mla = self.in_mla_file or any(w in n for n in lineage for w in _MLA_WORDS)
        if facts is not None:
            layout = self.index.impl_layout(facts.name, self.path)
            if (
                layout is not None
                and layout[1].shapes
                and all(s.kv_axis is None and not s.packed for s in layout[1].shapes)
            ):
                mla = True
        self_kind = None
        if facts is not None and any(c.state_kv_cache for c in self.index.mro(facts)):
            self_kind = Kind.STATE
        return state, mla, self_kind

    def unit(
        self,
        body: cst.CSTNode,
        cls: cst.ClassDef | None,
        function: str | None,
        params: list[str],
    ) -> list[SplitSite]:
        state, mla, self_kind = self.class_context(cls)
        if mla:
            return []
        ctx = Context(self.names, state_context=state, self_kv_cache=self_kind)
        scan = _FunctionScan()
        body.visit(scan)
        ctx.head_names = frozenset(
            n
            for names, value, _node in scan.assigns
            if len(names) == 1
            for n in names
            if any("head" in w.value.lower() for w in _walk_names(value))
        )
        _aliases(scan, ctx)
        splits: list[tuple[Split, tuple[str, ...]]] = []
        targets_of: dict[int, tuple[str, ...]] = {}
        for names, value, _node in scan.assigns:
            targets_of[id(value)] = tuple(names)
        seen: set[int] = set()
        for node in scan.nodes:
            split = split_of(node, ctx)
            if split is None or id(node) in seen:
                continue
            seen.add(id(node))
            splits.append((split, targets_of.get(id(node), ())))
        for assign in scan.unpacks:
            split = unpack_split(assign, ctx)
            if split is not None and not (
                isinstance(assign.value, cst.Name) and assign.value.value in scan.type_checked
            ):
                splits.append(
                    (split, tuple(n for t in assign.targets for n in _target_names(t.target)))
                )
        splits = [
            (s, t)
            for s, t in splits
            if not (t and all(any(w in name for w in STATE_WORDS) for name in t))
            and not (t and all(self.names.is_cache(name) for name in t))
            and not any(w in scan.keywords.get(id(s.node), "") for w in STATE_WORDS)
            and id(s.node) not in scan.inspected
        ]
        in_splitter = function is not None and (
            self.names.is_splitter(function) or _is_structural_splitter(scan, splits, params, ctx)
        )
        class_name = cls.name.value if cls is not None else None
        return [SplitSite(s, class_name, function, in_splitter, t) for s, t in splits]


def _is_structural_splitter(
    scan: _FunctionScan,
    splits: list[tuple[Split, tuple[str, ...]]],
    params: list[str],
    ctx: Context,
) -> bool:
    """A function whose job is to take a cache and return its K and V views.

    It splits a cache, and each of its returns hands back that split, or a tuple with
    at least two items bound to (views of) pieces of it, possibly nested:
    ``return (k_data, v_data), (k_scale, v_scale)``.
    """
    # a splitter takes the cache and little else; forward(self, layer, query, ...) is no splitter
    if not scan.returns or not splits or len([p for p in params if p not in ("self", "cls")]) > 2:
        return False
    split_nodes = {id(s.node) for s, _ in splits}
    split_names = {name for s, targets in splits for name in targets}
    for _ in range(4):  # names re-bound from views of K or V (key = key.unflatten(...))
        for names, value, _node in scan.assigns:
            if any(n.value in split_names for n in _walk_names(value)):
                split_names.update(names)

    def pieces(node: cst.BaseExpression) -> int:
        if id(node) in split_nodes:
            return 2
        if isinstance(node, cst.Name):
            return int(node.value in split_names)
        if isinstance(node, (cst.Tuple, cst.List)):
            return sum(pieces(e.value) for e in node.elements)
        if isinstance(node, cst.Call):
            return int(any(n.value in split_names for n in _walk_names(node)))
        return 0

    def is_guard(node: cst.BaseExpression | None) -> bool:
        """``return None, None`` while the cache is unallocated."""
        if node is None or (isinstance(node, cst.Name) and node.value == "None"):
            return True
        return isinstance(node, cst.Tuple) and all(is_guard(e.value) for e in node.elements)

    real = [ret for ret in scan.returns if not is_guard(ret.value)]
    return bool(real) and all(pieces(ret.value) >= 2 for ret in real)  # type: ignore[arg-type]


def _walk_names(node: cst.CSTNode):
    if isinstance(node, cst.Name):
        yield node
    for child in node.children:
        yield from _walk_names(child)


def unit_key(class_stack: list[cst.ClassDef], function: str) -> str:
    """The prefilter's name for the unit a function belongs to (see facts._units)."""
    if not class_stack:
        return function
    if len(class_stack) == 1:
        return f"{class_stack[0].name.value}.{function}"
    return MODULE_UNIT


class _Walker(cst.CSTVisitor):
    def __init__(
        self, collector: Collector, model: FileModel, units: frozenset[str] | None
    ) -> None:
        self.collector = collector
        self.model = model
        self.units = units  # None: analyze every unit
        self.class_stack: list[cst.ClassDef] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.model.classes.setdefault(node.name.value, node)
        self.class_stack.append(node)

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.class_stack.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        params = [
            p.name.value
            for p in (*node.params.posonly_params, *node.params.params, *node.params.kwonly_params)
        ]
        cls = self.class_stack[-1] if self.class_stack else None
        if self.units is None or unit_key(self.class_stack, node.name.value) in self.units:
            self.model.sites.extend(self.collector.unit(node.body, cls, node.name.value, params))
        return False  # nested functions belong to this unit


def collect(
    module: cst.Module,
    path: str,
    names: KvNames,
    index: ProjectIndex,
    units: frozenset[str] | None = None,
) -> FileModel:
    """Collect the splits of every unit, or of ``units`` only (the prefilter's candidates)."""
    model = FileModel(path=path, module=module)
    collector = Collector(names, index, path)
    module.visit(_Walker(collector, model, units))
    rest = [stmt for stmt in module.body if not isinstance(stmt, (cst.FunctionDef, cst.ClassDef))]
    if rest and (units is None or MODULE_UNIT in units):
        model.sites.extend(collector.unit(module.with_changes(body=rest), None, None, []))
    return model
