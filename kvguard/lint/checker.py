"""Run every enabled rule over one file's libcst tree.

One walk per file collects the splits (with the class and function they sit in) and
the classes; the rules then judge those facts with the project index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import libcst as cst

from kvguard.lint.facts import FileFacts
from kvguard.lint.forms import (
    ITERATING_METHODS,
    METADATA_ATTRS,
    PREDICATE_PREFIXES,
    STATE_WORDS,
    lineage_context,
    path_context,
)
from kvguard.lint.index import ProjectIndex
from kvguard.lint.names import KvNames
from kvguard.lint.receivers import (
    Context,
    Kind,
    Receiver,
    Split,
    classify,
    split_of,
    unpack_split,
)
from kvguard.lint.snippets import Snippets
from kvguard.lint.walk import walk


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
    class_def: Callable[[str], cst.ClassDef | None]  # first class of a name outside functions
    code: Callable[[cst.CSTNode], str]  # a node's source text
    sites: list[SplitSite] = field(default_factory=list)


def _target_names(node: cst.BaseAssignTargetExpression | cst.BaseExpression) -> list[str]:
    if isinstance(node, cst.Name):
        return [node.value]
    if isinstance(node, (cst.Tuple, cst.List)):
        return [n for e in node.elements for n in _target_names(e.value)]
    if isinstance(node, cst.StarredElement):
        return _target_names(node.value)
    return []


class _FunctionScan:
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
            and iterable.func.attr.value in ITERATING_METHODS
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
        if node.attr.value in METADATA_ATTRS:
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
        if callee.startswith(PREDICATE_PREFIXES):
            # predicates inspect a piece of the cache; they do not read K or V
            self.inspected.update(id(arg.value) for arg in node.args)

    def visit_Return(self, node: cst.Return) -> None:
        self.returns.append(node)

    def run(self, body: cst.CSTNode) -> None:
        handlers = {
            cst.Assign: self.visit_Assign,
            cst.AnnAssign: self.visit_AnnAssign,
            cst.For: self.visit_For,
            cst.NamedExpr: self.visit_NamedExpr,
            cst.Subscript: self.visit_Subscript,
            cst.Arg: self.visit_Arg,
            cst.Attribute: self.visit_Attribute,
            cst.Call: self.visit_Call,
            cst.Return: self.visit_Return,
        }
        for node in walk(body):
            handler = handlers.get(type(node))
            if handler is not None:
                handler(node)  # type: ignore[operator]


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
        self.in_state_tree, self.in_mla_file = path_context(path)

    def class_context(self, class_name: str | None) -> tuple[bool, bool, Kind | None]:
        """(state context, MLA context, what self.kv_cache holds) for code in this class."""
        if class_name is None:
            return self.in_state_tree, self.in_mla_file, None
        facts = self.index.lookup(class_name, near=self.path)
        lineage = (
            [n for c in self.index.mro(facts) for n in (c.name, *c.bases)]
            if facts
            else [class_name]
        )
        lineage_state, lineage_mla = lineage_context(lineage)
        state = self.in_state_tree or lineage_state
        mla = self.in_mla_file or lineage_mla
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
        class_name: str | None,
        function: str | None,
        params: list[str],
    ) -> list[SplitSite]:
        state, mla, self_kind = self.class_context(class_name)
        if mla:
            return []
        ctx = Context(self.names, state_context=state, self_kv_cache=self_kind)
        scan = _FunctionScan()
        scan.run(body)
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


def _walk_names(node: cst.CSTNode) -> Iterator[cst.Name]:
    return (n for n in walk(node) if type(n) is cst.Name)


def _params(node: cst.FunctionDef) -> list[str]:
    params = node.params
    return [p.name.value for p in (*params.posonly_params, *params.params, *params.kwonly_params)]


class _Walker(cst.CSTVisitor):
    """Every function outside function bodies is one unit; ``facts._defs`` walks the same."""

    def __init__(self, collector: Collector, model: FileModel) -> None:
        self.collector = collector
        self.model = model
        self.classes: dict[str, cst.ClassDef] = {}
        self.class_stack: list[cst.ClassDef] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> None:
        self.classes.setdefault(node.name.value, node)
        self.class_stack.append(node)

    def leave_ClassDef(self, original_node: cst.ClassDef) -> None:
        self.class_stack.pop()

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        owner = self.class_stack[-1].name.value if self.class_stack else None
        self.model.sites.extend(
            self.collector.unit(node.body, owner, node.name.value, _params(node))
        )
        return False  # nested functions belong to this unit


def collect(module: cst.Module, path: str, names: KvNames, index: ProjectIndex) -> FileModel:
    """Collect the splits of every unit of a whole module."""
    classes: dict[str, cst.ClassDef] = {}
    model = FileModel(path=path, class_def=classes.get, code=module.code_for_node)
    collector = Collector(names, index, path)
    walker = _Walker(collector, model)
    module.visit(walker)
    classes.update(walker.classes)
    rest = [stmt for stmt in module.body if not isinstance(stmt, (cst.FunctionDef, cst.ClassDef))]
    if rest:
        model.sites.extend(collector.unit(module.with_changes(body=rest), None, None, []))
    return model


def collect_units(
    snippets: Snippets, facts: FileFacts, path: str, names: KvNames, index: ProjectIndex
) -> FileModel:
    """Collect the splits of the units the ast pass kept, parsing only those."""
    model = FileModel(
        path=path,
        class_def=lambda name: snippets.class_def(facts.class_spans.get(name)),
        code=snippets.code,
    )
    collector = Collector(names, index, path)
    for unit in facts.units:
        if unit.function is None:
            body = snippets.parse(unit.spans, unit.nested)
            sites = collector.unit(body, None, None, [])
        else:
            node = snippets.statement(unit.spans, unit.nested)
            assert isinstance(node, cst.FunctionDef), (path, unit)
            sites = collector.unit(node.body, unit.class_name, node.name.value, _params(node))
        snippets.claim(site.split.node for site in sites)
        model.sites.extend(sites)
    return model
