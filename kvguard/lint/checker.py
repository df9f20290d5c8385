"""Run every enabled rule over one file's libcst tree.

One walk per file collects the splits (with the class and function they sit in) and
the classes; the rules then judge those facts with the project index.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import libcst as cst

from kvguard.lint.array_attributes import ARRAY_ATTRIBUTES
from kvguard.lint.cache_params import CacheParams
from kvguard.lint.facts import FileFacts, file_cache_params
from kvguard.lint.flow import walk_with_facts
from kvguard.lint.forms import (
    INSPECTING_CALLS,
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
    Receiver,
    Split,
    classify,
    element_axes,
    int_value,
    split_of,
    unpack_split,
)
from kvguard.lint.snippets import Snippets
from kvguard.lint.values import (
    NO_FACTS,
    Facts,
    Kind,
    construction_kind,
    element_type,
    is_latent_name,
    key,
    mentions_latent,
    type_kind,
)
from kvguard.lint.walk import walk


@dataclass
class SplitSite:
    split: Split
    class_name: str | None
    function: str | None
    in_splitter: bool
    targets: tuple[str, ...]
    # what the function's instance is called (its first positional parameter); None for a
    # static or class method or a function without one. Only messages read it.
    instance: str | None = None


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
        self.facts_at: dict[int, Facts] = {}  # id(candidate node) -> the guards holding there
        self.bound: set[int] = set()  # ids of the Name nodes that are assignment targets
        self.names: dict[str, list[int]] | None = None  # name -> ids of the Names reading it
        self.stores: list[tuple[str, cst.BaseExpression]] = []  # self.<attr> = value
        self.grown: set[str] = set()  # names concatenated with more (torch.cat([k_cache, k]))
        self.nested: list[cst.FunctionDef] = []  # functions defined inside this one
        self.assigns: list[tuple[list[str], cst.BaseExpression, cst.CSTNode]] = []
        self.nodes: list[cst.CSTNode] = []
        self.returns: list[cst.Return] = []
        self.unpacks: list[cst.Assign] = []
        self.loops: list[tuple[str, cst.BaseExpression]] = []  # (loop variable, iterable)
        self.keywords: dict[int, str] = {}  # id(argument value) -> keyword it is passed as
        self.inspected: set[int] = set()  # ids of expressions only read for metadata

    def visit_Assign(self, node: cst.Assign) -> None:
        for target in node.targets:
            self.bound.update(id(n) for n in walk(target.target) if type(n) is cst.Name)
        names = [n for t in node.targets for n in _target_names(t.target)]
        self.assigns.append((names, node.value, node))
        for target in node.targets:
            elements = (
                [e.value for e in target.target.elements]
                if isinstance(target.target, (cst.Tuple, cst.List))
                else [target.target]
            )
            self.stores.extend(
                (e.attr.value, node.value)
                for e in elements
                if isinstance(e, cst.Attribute)
                and isinstance(e.value, cst.Name)
                and e.value.value == "self"
            )
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
        attr = node.attr.value
        if attr in METADATA_ATTRS:
            self.inspected.add(id(node.value))
        elif attr not in ARRAY_ATTRIBUTES:
            # what no array has (``caches[0].cache_size``, ``cache.update(...)``): an object
            self.inspected.add(id(node.value))

    def visit_Call(self, node: cst.Call) -> None:
        self.nodes.append(node)
        callee = (
            node.func.attr.value
            if isinstance(node.func, cst.Attribute)
            else (node.func.value if isinstance(node.func, cst.Name) else "")
        )
        if callee in ("cat", "concat", "concatenate") and node.args:
            pieces = node.args[0].value
            if isinstance(pieces, (cst.List, cst.Tuple)):
                self.grown.update(
                    e.value.value for e in pieces.elements if isinstance(e.value, cst.Name)
                )
        if callee.startswith(PREDICATE_PREFIXES) or callee in INSPECTING_CALLS:
            # predicates inspect a piece of the cache; they do not read K or V
            self.inspected.update(id(arg.value) for arg in node.args)

    def visit_Return(self, node: cst.Return) -> None:
        self.returns.append(node)

    def run(
        self,
        body: cst.CSTNode,
        facts: Facts,
        type_aliases: dict[str, Kind],
        returns: frozenset[str],
    ) -> None:
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
            cst.FunctionDef: self.nested.append,
        }
        candidates = (cst.Subscript, cst.Call, cst.Assign)
        for node, here in walk_with_facts(body, facts, type_aliases, returns):
            handler = handlers.get(type(node))
            if handler is not None:
                handler(node)  # type: ignore[operator]
                if here is not NO_FACTS and type(node) in candidates:
                    self.facts_at[id(node)] = here


def _aliases(
    scan: _FunctionScan, ctx: Context, params: frozenset[str], type_aliases: dict[str, Kind]
) -> dict[str, Receiver]:
    """Names bound (flow-insensitively) to a cache, a list of caches or a view of one, or
    to what their annotation or construction says (``values``)."""
    built = _constructed(scan, ctx, params, type_aliases)
    aliases: dict[str, Receiver] = dict(built)
    for _ in range(8):  # chains of aliases are short; 8 rounds reach a fixed point in practice
        ctx.aliases = aliases
        changed = False
        for names, value, _node in scan.assigns:
            if len(names) != 1:
                continue
            name = names[0]
            selecting = ctx.names.is_cache(name)
            receiver = built.get(name) or classify(value, ctx, selecting=selecting)
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
                    old.element,
                )
            if aliases.get(name) != receiver:
                aliases[name] = receiver
                changed = True
        for name, iterable in scan.loops:
            receiver = classify(iterable, ctx)
            if receiver is not None and receiver.kind is Kind.LIST and name not in aliases:
                aliases[name] = Receiver(receiver.element, receiver.root)
                changed = True
        if not changed:
            break
    ctx.aliases = aliases
    return aliases


def _constructed(
    scan: _FunctionScan, ctx: Context, params: frozenset[str], type_aliases: dict[str, Kind]
) -> dict[str, Receiver]:
    """Locals that every binding in the function says what they are: an annotation, or a
    construction site (``values.construction_kind``). Parameters are left alone: an
    assignment to one may replace only some of the values it arrives with."""
    kinds: dict[str, set[Kind | None]] = {}
    for names, value, node in scan.assigns:
        if len(names) != 1:
            # ``x, kv_cache = block(x, kv_cache)``: a cache that a call hands back beside
            # its output is that model's own (HF-style) cache; the runner binds paged caches
            # through parameters and attributes, it never returns one from a forward
            returned = isinstance(value, (cst.Call, cst.Name)) and classify(value, ctx) is None
            for name in names:
                kinds.setdefault(name, set()).add(Kind.LOCAL if returned else None)
            continue
        kind = None
        if isinstance(node, cst.AnnAssign):
            kind = type_kind(node.annotation.annotation, type_aliases)
        kinds.setdefault(names[0], set()).add(kind or construction_kind(value, ctx.pair_returning))
    for name, _iterable in scan.loops:
        kinds.setdefault(name, set()).add(None)
    return {
        name: Receiver(next(iter(found)), name)  # type: ignore[arg-type]
        for name, found in kinds.items()
        if name not in params
        and len(found) == 1
        and None not in found
        and next(iter(found)) is not Kind.CACHE
    }


class Collector:
    def __init__(
        self,
        names: KvNames,
        index: ProjectIndex,
        path: str,
        cache_params: CacheParams | None = None,
    ) -> None:
        self.names = names
        self.index = index
        self.path = path
        self.cache_params = cache_params or {}
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
            spec = next(
                (c.stores_no_value for c in self.index.mro(facts) if c.stores_no_value is not None),
                None,
            )
            if spec:  # the nearest get_kv_cache_spec stores no V: nothing to split off
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
        annotations: dict[str, cst.BaseExpression] | None = None,
    ) -> list[SplitSite]:
        extra = self.cache_params.get((class_name, function), ()) if function else ()
        if not extra:
            return self._unit(body, class_name, function, params, annotations)
        names, self.names = self.names, self.names.with_caches(extra)
        try:
            return self._unit(body, class_name, function, params, annotations)
        finally:
            self.names = names

    def _unit(
        self,
        body: cst.CSTNode,
        class_name: str | None,
        function: str | None,
        params: list[str],
        annotations: dict[str, cst.BaseExpression] | None,
    ) -> list[SplitSite]:
        state, mla, self_kind = self.class_context(class_name)
        if mla:
            return []
        values = self.index.values
        ctx = Context(
            self.names,
            state_context=state,
            self_kv_cache=self_kind,
            pair_returning=values.pair_returning,
            pair_lists=values.pair_lists,
            engine_lists=values.engine_lists,
        )
        scan = _FunctionScan()
        passed = _passed(function, params, values.passed_pairs)
        scan.run(
            body,
            _annotated(annotations or {}, values.alias_kinds).add(passed),
            values.alias_kinds,
            values.pair_returning,
        )
        ctx.head_names = frozenset(
            n
            for names, value, _node in scan.assigns
            if len(names) == 1
            for n in names
            if any("head" in w.value.lower() for w in _walk_names(value))
        )
        _aliases(scan, ctx, frozenset(params), values.alias_kinds)
        splits: list[tuple[Split, tuple[str, ...]]] = []
        targets_of: dict[int, tuple[str, ...]] = {}
        for names, value, _node in scan.assigns:
            targets_of[id(value)] = tuple(names)
        seen: set[int] = set()
        checked: set[int] = set()  # splits where guards say the layout is known or latent
        for node in scan.nodes:
            facts = ctx.facts = scan.facts_at.get(id(node), NO_FACTS)
            split = split_of(node, ctx)
            if split is None or id(node) in seen:
                continue
            seen.add(id(node))
            if facts.checked or facts.latent:
                checked.add(id(node))
            splits.append((split, targets_of.get(id(node), ())))
        for assign in scan.unpacks:
            facts = ctx.facts = scan.facts_at.get(id(assign), NO_FACTS)
            split = unpack_split(assign, ctx)
            if split is not None:
                if facts.checked or facts.latent:
                    checked.add(id(split.node))
                splits.append(
                    (split, tuple(n for t in assign.targets for n in _target_names(t.target)))
                )
        ctx.facts = NO_FACTS
        wide = _wide_axes(scan) if splits else frozenset()
        splits = [
            (s, t)
            for s, t in splits
            if not (t and all(any(w in name for w in STATE_WORDS) for name in t))
            and not (t and all(self.names.is_cache(name) for name in t))
            and not (t and all(is_latent_name(name) for name in t))
            and not any(w in scan.keywords.get(id(s.node), "") for w in STATE_WORDS)
            and id(s.node) not in scan.inspected
            and id(s.node) not in checked
            and not mentions_latent(s.node)
            and not _only_inspected(t, scan, body)
            and not (t and any(name in scan.grown for name in t))
            and not _on_a_wide_axis(s, wide)
        ]
        in_splitter = function is not None and (
            self.names.is_splitter(function) or _is_structural_splitter(scan, splits, params, ctx)
        )
        inner = set() if in_splitter else self._in_nested_splitters(scan, class_name, splits)
        return [
            SplitSite(s, class_name, function, in_splitter or id(s.node) in inner, t)
            for s, t in splits
        ]

    def _in_nested_splitters(
        self,
        scan: _FunctionScan,
        class_name: str | None,
        splits: list[tuple[Split, tuple[str, ...]]],
    ) -> set[int]:
        """Ids of the splits that sit in a splitter defined inside this function (a closure,
        a method patched in at run time)."""
        found: set[int] = set()
        if not splits:
            return found
        for node in scan.nested:
            inside = {id(n) for n in walk(node.body)}
            if not any(id(s.node) in inside for s, _ in splits):
                continue
            sites = self.unit(node.body, class_name, node.name.value, _params(node))
            found.update(id(site.split.node) for site in sites if site.in_splitter)
        return found


def _is_structural_splitter(
    scan: _FunctionScan,
    splits: list[tuple[Split, tuple[str, ...]]],
    params: list[str],
    ctx: Context,
) -> bool:
    """A function whose job is to take a cache and return or memoise its K and V views.

    It splits a cache, and each of its returns hands back that split, or a tuple with
    at least two items bound to (views of) pieces of it, possibly nested:
    ``return (k_data, v_data), (k_scale, v_scale)``, not pieces indexed by one of its
    parameters (``return k[ids], v[ids]`` gathers the caller's blocks); or it returns
    nothing and stores (views of) the pieces in two or more attributes of ``self``
    (``self.key_cache, self.value_cache = ...``), for other methods to use.
    """
    # a splitter takes the cache and little else; forward(self, layer, query, ...) is no splitter
    if not splits or len([p for p in params if p not in ("self", "cls")]) > 2:
        return False
    split_nodes = {id(s.node) for s, _ in splits}
    split_names = {name for s, targets in splits for name in targets}
    selectors = frozenset(p for p in params if p not in ("self", "cls"))
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
        if isinstance(node, cst.Subscript) and _selects_by(node, selectors):
            return 0  # k[block_ids]: the caller's blocks gathered, not the cache's views
        # a view or a part of one piece (k.view(...), v[offset:], kv[:, 0].view(...)), or a
        # call over it
        return int(
            any(
                id(n) in split_nodes or (type(n) is cst.Name and n.value in split_names)
                for n in walk(node)
            )
        )

    def is_guard(node: cst.BaseExpression | None) -> bool:
        """``return None, None`` while the cache is unallocated."""
        if node is None or (isinstance(node, cst.Name) and node.value == "None"):
            return True
        return isinstance(node, cst.Tuple) and all(is_guard(e.value) for e in node.elements)

    real = [ret for ret in scan.returns if not is_guard(ret.value)]
    if not real:
        memoised = {attr for attr, value in scan.stores if pieces(value)}
        return len(memoised) >= 2
    return all(pieces(ret.value) >= 2 for ret in real)  # type: ignore[arg-type]


def _selects_by(sub: cst.Subscript, params: frozenset[str]) -> bool:
    """``k[ids]``, ``v[:, block_ids]``: an index that the function's caller chose."""
    return any(
        type(n) is cst.Name and n.value in params
        for element in sub.slice
        for n in walk(element.slice)
    )


def _annotated(annotations: dict[str, cst.BaseExpression], type_aliases: dict[str, Kind]) -> Facts:
    """What the parameters' annotations say: ``kv_cache: tuple[Tensor, Tensor]`` is a pair,
    ``kv_caches: list[tuple[...]]`` a container of pairs."""
    kinds: list[tuple[str, Kind]] = []
    for name, annotation in annotations.items():
        kind = type_kind(annotation, type_aliases)
        if kind is not None:
            kinds.append((name, kind))
        element = element_type(annotation)
        if element is not None:
            inner = type_kind(element, type_aliases)
            if inner is not None:
                kinds.append((f"{name}[*]", inner))
    return Facts(tuple(kinds)) if kinds else NO_FACTS


def _passed(function: str | None, params: list[str], passed_pairs: frozenset[str]) -> Facts:
    """Parameters a caller annotated as a sequence passes in (``value_facts``)."""
    if function is None or not passed_pairs:
        return NO_FACTS
    after_self = params[1:] if params and params[0] in ("self", "cls") else params
    kinds = tuple(
        (name, Kind.PAIR)
        for position, name in enumerate(after_self)
        if f"{function}#{position}" in passed_pairs or f"{function}#{name}" in passed_pairs
    )
    return Facts(kinds) if kinds else NO_FACTS


# (receiver key, number of subscript elements, axis)
_Axis = tuple[str, int, int]


def _literal_axes(sub: cst.Subscript) -> Iterator[tuple[int, int]]:
    """(axis, literal index) of each integer-literal element, axes as ``receivers`` counts."""
    for _, axis, element in element_axes(sub):
        if isinstance(element, cst.Index):
            literal = int_value(element.value)
            if literal is not None:
                yield axis, literal


def _wide_axes(scan: _FunctionScan) -> frozenset[_Axis]:
    """Axes that the function indexes past a pair (``table[s, b, 2]`` beside ``[s, b, 0]``):
    an axis with a third entry holds no K/V pair."""
    wide = set()
    for node in scan.nodes:
        if type(node) is cst.Subscript:
            name = key(node.value)
            if name is None:
                continue
            for axis, literal in _literal_axes(node):
                if literal not in (0, 1, -1, -2):
                    wide.add((name, len(node.slice), axis))
    return frozenset(wide)


def _on_a_wide_axis(split: Split, wide: frozenset[_Axis]) -> bool:
    node = split.node
    if not wide or split.form != "subscript" or not isinstance(node, cst.Subscript):
        return False
    name = key(node.value)
    return name is not None and (name, len(node.slice), split.axis) in wide


def _only_inspected(targets: tuple[str, ...], scan: _FunctionScan, body: cst.CSTNode) -> bool:
    """A piece bound to one name that is then only inspected (``inner.shape[2]``)."""
    if len(targets) != 1 or not scan.inspected:
        return False
    if scan.names is None:  # looked up once per function, only when a piece may be inspected
        scan.names = {}
        for n in walk(body):
            if type(n) is cst.Name and id(n) not in scan.bound:
                scan.names.setdefault(n.value, []).append(id(n))
    uses = scan.names.get(targets[0], [])
    return bool(uses) and all(use in scan.inspected for use in uses)


def _walk_names(node: cst.CSTNode) -> Iterator[cst.Name]:
    return (n for n in walk(node) if type(n) is cst.Name)


def _all_params(node: cst.FunctionDef) -> list[cst.Param]:
    params = node.params
    return [*params.posonly_params, *params.params, *params.kwonly_params]


def _params(node: cst.FunctionDef) -> list[str]:
    return [p.name.value for p in _all_params(node)]


def _instance_param(node: cst.FunctionDef) -> str | None:
    """The first positional parameter, unless a static or class method has none to offer."""
    for decorator in node.decorators:
        expr = decorator.decorator
        name = expr.attr.value if isinstance(expr, cst.Attribute) else getattr(expr, "value", "")
        if name in ("staticmethod", "classmethod"):
            return None
    positional = [*node.params.posonly_params, *node.params.params]
    return positional[0].name.value if positional else None


def _annotations(node: cst.FunctionDef) -> dict[str, cst.BaseExpression]:
    return {
        p.name.value: p.annotation.annotation for p in _all_params(node) if p.annotation is not None
    }


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
        sites = self.collector.unit(
            node.body, owner, node.name.value, _params(node), _annotations(node)
        )
        instance = _instance_param(node)
        for site in sites:
            site.instance = instance
        self.model.sites.extend(sites)
        return False  # nested functions belong to this unit


def collect(
    module: cst.Module, path: str, names: KvNames, index: ProjectIndex, text: str | None = None
) -> FileModel:
    """Collect the splits of every unit of a whole module (``text``: its source, when the
    caller has it; else it is generated from the module)."""
    classes: dict[str, cst.ClassDef] = {}
    model = FileModel(path=path, class_def=classes.get, code=module.code_for_node)
    source = module.code if text is None else text
    collector = Collector(names, index, path, _module_cache_params(source, names))
    walker = _Walker(collector, model)
    module.visit(walker)
    classes.update(walker.classes)
    rest = [stmt for stmt in module.body if not isinstance(stmt, (cst.FunctionDef, cst.ClassDef))]
    if rest:
        model.sites.extend(collector.unit(module.with_changes(body=rest), None, None, []))
    return model


def _module_cache_params(text: str, names: KvNames) -> CacheParams:
    try:
        tree = ast.parse(text)
    except (SyntaxError, RecursionError, MemoryError, ValueError):
        return {}
    return file_cache_params(tree, names)


def collect_units(
    snippets: Snippets, facts: FileFacts, path: str, names: KvNames, index: ProjectIndex
) -> FileModel:
    """Collect the splits of the units the ast pass kept, parsing only those."""
    model = FileModel(
        path=path,
        class_def=lambda name: snippets.class_def(facts.class_spans.get(name)),
        code=snippets.code,
    )
    params = {(u.class_name, u.function): u.cache_params for u in facts.units if u.cache_params}
    collector = Collector(names, index, path, params)
    for unit in facts.units:
        if unit.function is None:
            body = snippets.parse(unit.spans, unit.nested)
            sites = collector.unit(body, None, None, [])
        else:
            node = snippets.statement(unit.spans, unit.nested)
            assert isinstance(node, cst.FunctionDef), (path, unit)
            sites = collector.unit(
                node.body, unit.class_name, node.name.value, _params(node), _annotations(node)
            )
            instance = _instance_param(node)
            for site in sites:
                site.instance = instance
        snippets.claim(site.split.node for site in sites)
        model.sites.extend(sites)
    return model
