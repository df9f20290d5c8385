"""Which raw K/V splits ``kvguard check --fix`` can rewrite, and into what: the fix plan.

The engine asks this on every run (to say on each finding whether a fix exists); it costs
no extra parse: it reads the snippets the rules saw (the candidate functions, and the class
headers KVG004 points at) and the ast-built project index (``ClassFacts.instance_methods``,
``ClassFacts.splitter``). ``kvguard.fix`` parses the whole module, asks the same question
about the same sites (a non-candidate function holds no site) and applies the answer, so a
finding's fix marker and ``--fix`` cannot disagree.

- In a class (KVG001, KVG004): every split site becomes a call of one splitter method,
  ``self._split_kv_cache(cache)``; the class's own or inherited plain ``_split_kv_cache``
  is reused, otherwise one is generated from a site's split. Sites are merged only when
  their split gives the same views as the splitter: the same expression, or the same
  offsets, sizes and strides on every canonical shape of the declared layout
  (``lint/views.py``). Safe: the kernels receive the very same views.
- Outside a class and outside vLLM's own tree (connectors, plugins, offloaders):
  ``kvguard.runtime.split_kv_cache(cache, "<layout>")`` with the one runtime layout whose
  split gives the same views. Unsafe: it adds a dependency on ``kvguard[runtime]`` and a
  shape check that raises on a cache of another layout.
"""

from __future__ import annotations

import ast
import builtins
from collections.abc import Callable
from dataclasses import dataclass, field

import libcst as cst

from kvguard.findings import SAFE, UNSAFE, FixInfo
from kvguard.lint.checker import FileModel, SplitSite
from kvguard.lint.code_text import one_line
from kvguard.lint.facts import SPLITTER_METHOD, ClassFacts
from kvguard.lint.index import ProjectIndex
from kvguard.lint.rules import scattering_classes, split_contradicts_layout
from kvguard.lint.views import (
    PAIR_METHODS,
    PIECE_METHODS,
    PLACEHOLDER,
    Shape,
    assumed_shapes,
    canonical_shapes,
    same_piece,
    same_views,
)

RUNTIME_SPLITTER = "split_kv_cache"
RUNTIME_MODULE = "kvguard.runtime"
# kvguard.runtime.layouts without importing torch: each layout's shape and what its split
# returns. tests/fix/test_equivalence.py checks this table against the real function.
RUNTIME_LAYOUTS: dict[str, tuple[str, str]] = {
    "kv_first": ("(2, num_blocks, block_size, num_kv_heads, head_size)", "kv_cache.unbind(0)"),
    "blocks_first": ("(num_blocks, 2, block_size, num_kv_heads, head_size)", "kv_cache.unbind(1)"),
    "packed_nhd": (
        "(num_blocks, block_size, num_kv_heads, 2 * head_size)",
        "(kv_cache[..., :head_size], kv_cache[..., head_size:])",
    ),
    "kv_first_hnd": ("(2, num_blocks, num_kv_heads, block_size, head_size)", "kv_cache.unbind(0)"),
    "blocks_first_hnd": (
        "(num_blocks, 2, num_kv_heads, block_size, head_size)",
        "kv_cache.unbind(1)",
    ),
    "packed_hnd": (
        "(num_blocks, num_kv_heads, block_size, 2 * head_size)",
        "(kv_cache[..., :head_size], kv_cache[..., head_size:])",
    ),
}
_RECEIVER = "__kvguard_receiver__"
_ALLOWED_NAMES = frozenset({"self", "torch", *dir(builtins)})


def _code(node: cst.CSTNode) -> str:
    return cst.Module([]).code_for_node(node)


def _normal(text: str) -> str:
    """The expression without its formatting, to compare receivers; as written if odd."""
    try:
        return ast.unparse(ast.parse(text.strip(), mode="eval"))
    except (SyntaxError, ValueError, RecursionError):
        return " ".join(text.split())


@dataclass(frozen=True)
class SiteOp:
    """One split site as an operation on its immediate receiver."""

    site: SplitSite
    receiver: cst.BaseExpression
    op: str  # the split over PLACEHOLDER, normalised (ast.unparse)
    kind: str  # "pair": returns (K, V); "piece": returns one of them
    piece: int | None  # for a piece: 0 if it looks like K, 1 if like V
    free: tuple[str, ...]  # names besides the cache that the split reads
    # the split also works on a Python tuple/list of K and V (unpacking, indexing by one
    # int): a rewrite may only route it through a splitter that does too
    sequence: bool = False

    @property
    def node(self) -> cst.CSTNode:
        return self.site.split.node

    def receiver_code(self) -> str:
        return _normal(_code(self.receiver))


def _receiver_of(node: cst.CSTNode, form: str) -> tuple[cst.BaseExpression, str] | None:
    if form == "unpack" and isinstance(node, cst.BaseExpression):
        return node, "pair"
    if isinstance(node, cst.Subscript):
        return node.value, "piece"
    if isinstance(node, cst.Call) and isinstance(node.func, cst.Attribute):
        method = node.func.attr.value
        kind = "pair" if method in PAIR_METHODS else "piece" if method in PIECE_METHODS else ""
        if not kind:
            return None
        owner = node.func.value
        if isinstance(owner, cst.Name) and owner.value == "torch":
            return (node.args[0].value, kind) if node.args else None
        return owner, kind
    return None


def _int_literal(node: cst.BaseExpression) -> bool:
    if isinstance(node, cst.UnaryOperation) and isinstance(node.operator, (cst.Minus, cst.Plus)):
        node = node.expression
    return isinstance(node, cst.Integer)


def _accepts_sequence(node: cst.CSTNode, form: str) -> bool:
    """Whether the split also runs on a tuple/list: ``k, v = x`` and ``x[0]`` do,
    ``x.unbind(0)``, ``x[:, 0]`` and ``x[..., :d]`` need a tensor."""
    if form == "unpack":
        return True
    if not isinstance(node, cst.Subscript) or len(node.slice) != 1:
        return False
    element = node.slice[0].slice
    return isinstance(element, cst.Index) and _int_literal(element.value)


def _indexes_only(template: tuple[str, ...]) -> bool:
    """A template ``(kv_cache[0], kv_cache[1])``: it runs on a tuple/list as on a tensor."""
    if len(template) != 2:
        return False
    for text in template:
        tree = ast.parse(text, mode="eval").body
        if not (
            isinstance(tree, ast.Subscript)
            and isinstance(tree.value, ast.Name)
            and tree.value.id == PLACEHOLDER
        ):
            return False
        index = tree.slice
        if isinstance(index, ast.UnaryOp) and isinstance(index.op, (ast.USub, ast.UAdd)):
            index = index.operand
        if not (isinstance(index, ast.Constant) and type(index.value) is int):
            return False
    return True


def _piece_guess(op: ast.expr) -> int | None:
    if isinstance(op, ast.Subscript):
        elements = op.slice.elts if isinstance(op.slice, ast.Tuple) else [op.slice]
        for element in elements:
            if isinstance(element, ast.Slice):
                if element.lower is None and element.upper is None:
                    continue
                return 0 if element.lower is None else 1
            if isinstance(element, ast.Constant) and element.value is Ellipsis:
                continue
            if isinstance(element, ast.Constant) and type(element.value) is int:
                return 0 if element.value in (0, -2) else 1
            return None
    if isinstance(op, ast.Call) and op.args:
        last = op.args[1] if len(op.args) > 1 else op.args[0]
        if isinstance(last, ast.Constant) and type(last.value) is int:
            return 0 if last.value == 0 else 1
    return None


def site_op(site: SplitSite) -> SiteOp | None:
    found = _receiver_of(site.split.node, site.split.form)
    if found is None:
        return None
    receiver, kind = found
    try:
        if site.split.form == "unpack":
            # iterating a tensor is unbind(0) (torch.Tensor.__iter__)
            marked = f"{_RECEIVER}.unbind(0)"
        else:
            marked = _code(site.split.node.deep_replace(receiver, cst.Name(_RECEIVER)))
        tree = ast.parse(marked.strip(), mode="eval").body
    except (SyntaxError, cst.CSTValidationError):
        return None
    free = []
    for sub in ast.walk(tree):
        if isinstance(sub, ast.Name) and sub.id != _RECEIVER and sub.id not in _ALLOWED_NAMES:
            free.append(sub.id)
        if isinstance(sub, ast.Name) and sub.id == _RECEIVER:
            sub.id = PLACEHOLDER
    return SiteOp(
        site=site,
        receiver=receiver,
        op=ast.unparse(tree),
        kind=kind,
        piece=_piece_guess(tree) if kind == "piece" else None,
        free=tuple(dict.fromkeys(free)),
        sequence=_accepts_sequence(site.split.node, site.split.form),
    )


@dataclass
class ClassPlan:
    name: str
    reason: str = ""  # why the fix is withheld; empty when it is offered
    template: tuple[str, ...] = ()  # one pair expression, or the K and V expressions
    generate: bool = False  # write a new _split_kv_cache (else one exists)
    # the generated splitter unpacks its argument (``key, value = kv_cache``) instead of
    # returning ``template``, whose text then only serves the view arithmetic
    unpacks: bool = False
    assumes: str = ""  # the layout the generated docstring names
    routes: dict[int, int | None] = field(default_factory=dict)  # id(node) -> None or piece
    ops: list[SiteOp] = field(default_factory=list)
    methods: tuple[str, ...] = ()  # methods whose splits are routed


@dataclass
class RuntimeRoute:
    op: SiteOp
    layout: str
    piece: int | None


@dataclass
class FilePlan:
    classes: dict[str, ClassPlan] = field(default_factory=dict)
    runtime: dict[int, RuntimeRoute] = field(default_factory=dict)
    anchors: dict[str, int] = field(default_factory=dict)  # class name -> id(KVG004 anchor)
    loose: dict[int, str] = field(default_factory=dict)  # id(node) -> why a loose site has none

    def info(self) -> tuple[dict[int, FixInfo], dict[int, str]]:
        """Per anchor node id: the fix it offers, or why it is withheld."""
        fixes: dict[int, FixInfo] = {}
        notes: dict[int, str] = {}
        for plan in self.classes.values():
            for op in plan.ops:
                if plan.reason:
                    notes[id(op.node)] = plan.reason
                else:
                    fixes[id(op.node)] = FixInfo(SAFE, _class_message(plan, op))
            anchor = self.anchors.get(plan.name)
            if anchor is not None and plan.reason:
                notes[anchor] = plan.reason
            elif anchor is not None:
                made = "a generated" if plan.generate else "its"
                fixes[anchor] = FixInfo(
                    SAFE, f"route its {len(plan.ops)} splits through {made} `{SPLITTER_METHOD}`"
                )
        notes.update(self.loose)
        for key, route in self.runtime.items():
            receiver = route.op.receiver_code()
            call = f'{RUNTIME_MODULE}.{RUNTIME_SPLITTER}({receiver}, "{route.layout}")'
            shape = RUNTIME_LAYOUTS[route.layout][0]
            fixes[key] = FixInfo(
                UNSAFE,
                f"use `{call}{'' if route.piece is None else f'[{route.piece}]'}`: the same "
                f"views for a {route.layout} {shape} cache; unsafe because it raises "
                "ValueError on a cache of another shape"
                + (", TypeError on a (key, value) tuple or list" if route.op.sequence else "")
                + " and needs kvguard[runtime]",
            )
        return fixes, notes


def _class_message(plan: ClassPlan, op: SiteOp) -> str:
    call = f"self.{SPLITTER_METHOD}({op.receiver_code()})"
    route = plan.routes.get(id(op.node))
    if route is not None:
        call += f"[{route}]"
    made = f"generated `{SPLITTER_METHOD}` ({plan.assumes})" if plan.generate else "its splitter"
    return f"route through `{call}`, using {made}"


def _in_vllm_tree(path: str) -> bool:
    return "vllm" in path.replace("\\", "/").split("/")[:-1]


def _shapes_for(plan_layout: list[Shape] | None, op: SiteOp, fallback: list[Shape]) -> list[Shape]:
    receiver = op.site.split.receiver
    if receiver.moves or receiver.reshaped:
        return []  # the receiver is no longer the declared shape: only equal text is proof
    return plan_layout if plan_layout is not None else fallback


def _where(op: SiteOp) -> str:
    if op.site.split.form == "unpack":
        return f"the unpacking of `{op.receiver_code()}` in {op.site.function}"
    return f"`{op.op}` in {op.site.function}"


def accepts_sequence_too(plan: ClassPlan) -> bool:
    """Whether the splitter also runs on a tuple/list (and returns its two elements)."""
    return plan.unpacks or _indexes_only(plan.template)


def _template_pieces(template: tuple[str, ...]) -> tuple[str, str]:
    if len(template) == 2:
        return template[0], template[1]
    return f"({template[0]})[0]", f"({template[0]})[1]"


def _match(
    op: SiteOp, template: tuple[str, ...], shapes: list[Shape], what: str
) -> tuple[int | None, str]:
    """How a site routes through the template: (None or piece index, reason if it cannot)."""
    pieces = _template_pieces(template)
    if op.kind == "pair":
        if template == (op.op,):
            return None, ""
        verdict = same_views((op.op,), template, shapes)
        if verdict is True:
            return None, ""
    else:
        order = (op.piece, 1 - op.piece) if op.piece is not None else (0, 1)
        for index in order:
            if op.op == pieces[index] or same_piece(op.op, pieces[index], shapes):
                return index, ""
        verdict = same_piece(op.op, pieces[op.piece or 0], shapes)
    if verdict is False:
        return None, f"{_where(op)} and {what} give different K/V views"
    return None, (
        f"{_where(op)} and {what} are different split forms that kvguard cannot prove give "
        "the same views"
    )


def _existing(index: ProjectIndex, facts: ClassFacts) -> tuple[ClassFacts | None, str | None]:
    for current in index.mro(facts):
        if current.splitter is not None:
            return current, current.splitter
    return None, None


def _template_of(text: str) -> tuple[str, ...]:
    tree = ast.parse(text, mode="eval").body
    if isinstance(tree, ast.Tuple) and len(tree.elts) == 2:
        return tuple(ast.unparse(e) for e in tree.elts)
    return (ast.unparse(tree),)


def _declared(index: ProjectIndex, name: str, path: str) -> tuple[list[Shape] | None, str]:
    found = index.impl_layout(name, path)
    if found is None or not found[1].shapes:
        return None, ""
    backend, layout = found
    shapes = canonical_shapes(tuple(s.text for s in layout.shapes))
    described = " or ".join(dict.fromkeys(f"{s.arrangement} {s.text}" for s in layout.shapes))
    return shapes, f"{described}, as {backend.name} declares"


def _no_self(op: SiteOp) -> str:
    """Why a site's function cannot call ``self.<splitter>``, in its own terms."""
    where = f"`{op.op}` sits in {op.site.function or 'the class body'}"
    instance = op.site.instance
    if instance is None or instance == "self":  # no instance, or a method kvguard does not
        return f"{where}, which has no `self` to call a splitter method on"  # count as one
    return (
        f"{where}, whose first parameter is `{instance}`, not `self`; the fixer routes splits "
        "only through `self`"
    )


def _plan_class(name: str, ops: list[SiteOp], index: ProjectIndex, path: str) -> ClassPlan:
    plan = ClassPlan(name=name, ops=ops)
    plan.methods = tuple(dict.fromkeys(str(op.site.function) for op in ops))
    facts = index.lookup(name, near=path)
    if facts is None:
        plan.reason = f"class {name} is not in the project index"
        return plan
    if sum(c.path == path for c in index.by_name.get(name, [])) > 1:
        plan.reason = f"this file defines more than one class {name}"
        return plan
    for op in ops:
        if op.site.function not in facts.instance_methods:
            plan.reason = _no_self(op)
            return plan
        if op.free:
            plan.reason = (
                f"`{op.op}` in {op.site.function} reads {', '.join(op.free)}, which a splitter "
                "method cannot see"
            )
            return plan
    declared, described = _declared(index, name, path)
    owner, existing = _existing(index, facts)
    if existing == "":
        plan.reason = (
            f"{owner.name}.{SPLITTER_METHOD} is more than one plain split (a re-stride for "  # type: ignore[union-attr]
            "ENCODER_DECODER, say): route these sites through it by hand"
        )
        return plan
    if existing is not None:
        plan.template = _template_of(existing)
        what = f"{owner.name}.{SPLITTER_METHOD}"  # type: ignore[union-attr]
    else:
        plan.generate = True
        template = _template_from_sites(ops)
        if template is None:
            plan.reason = "only one of K and V is split here; write the splitter by hand"
            return plan
        plan.template, first = template
        plan.unpacks = first.site.split.form == "unpack"
        what = _where(first)
        axis = first.site.split.describe_axis()
        receiver = first.site.split.receiver
        if receiver.moves or receiver.reshaped:  # the splitter is handed a view, not the cache
            plan.assumes = f"assumes {axis} of the view it is given"
        else:
            plan.assumes = f"assumes {described}" if described else f"assumes {axis} of the cache"
    fallback = assumed_shapes(ops[0].site.split.axis)
    for op in ops:
        if op.sequence and not accepts_sequence_too(plan):
            # nothing proves the receiver a tensor: a tuple/list that the site accepts
            # today would meet a tensor method in the splitter (AttributeError)
            plan.reason = (
                f"{_where(op)} also runs on a (key, value) tuple or list, which {what} "
                "does not: route it by hand"
            )
            return plan
        route, reason = _match(op, plan.template, _shapes_for(declared, op, fallback), what)
        if reason:
            plan.reason = reason
            return plan
        plan.routes[id(op.node)] = route
    plan.reason = _subclass_hazard(plan, facts, index, path, declared)
    return plan


def _piece_pair(
    ops: list[SiteOp], wanted: Callable[[SiteOp], bool]
) -> tuple[SiteOp, SiteOp] | None:
    """A K piece and a V piece of one receiver in one method."""
    for k in ops:
        if k.piece != 0 or not wanted(k):
            continue
        for v in ops:
            if (
                v.piece == 1
                and wanted(v)
                and v.site.function == k.site.function
                and v.receiver_code() == k.receiver_code()
            ):
                return k, v
    return None


def _template_from_sites(ops: list[SiteOp]) -> tuple[tuple[str, ...], SiteOp] | None:
    """The split the generated splitter makes, and the site it comes from.

    Where a site also runs on a tuple/list (``k, v = x``, ``x[0]``), the splitter must
    too: an unpacking if a site unpacks (on a tensor that is ``unbind(0)``), else K and V
    by index, ``(x[0], x[1])`` (the sites' own index pieces, or, where another site splits
    out both, written here). Otherwise the first pair split, else a K piece and a V piece
    of one receiver in one method.
    """
    unpacking = next((op for op in ops if op.site.split.form == "unpack"), None)
    if unpacking is not None:
        return (unpacking.op,), unpacking
    found = _piece_pair(ops, lambda op: op.sequence)
    if found is not None:
        return (found[0].op, found[1].op), found[0]
    pair = next((op for op in ops if op.kind == "pair"), None)
    sequence = next((op for op in ops if op.sequence), None)
    if pair is not None and sequence is not None:
        return (f"{PLACEHOLDER}[0]", f"{PLACEHOLDER}[1]"), sequence
    if pair is not None:
        return (pair.op,), pair
    found = _piece_pair(ops, lambda op: True)
    return None if found is None else ((found[0].op, found[1].op), found[0])


def _subclass_hazard(
    plan: ClassPlan,
    facts: ClassFacts,
    index: ProjectIndex,
    path: str,
    declared: list[Shape] | None,
) -> str:
    """A subclass with its own _split_kv_cache that inherits a routed method would change."""
    for sub in index.subclasses(facts):
        below = index.lineage_below(sub, facts)
        own = next((c.splitter for c in below if c.splitter is not None), None)
        if own is None:
            continue
        overridden = {m for c in below for m in c.instance_methods}
        inherited = [m for m in plan.methods if m not in overridden]
        if not inherited:
            continue
        if own and same_views(_template_of(own), plan.template, declared or []) is True:
            continue
        return (
            f"subclass {sub.name} defines its own {SPLITTER_METHOD} and inherits "
            f"{', '.join(inherited)} from {facts.name}: routing would change what it splits"
        )
    return ""


def _runtime_route(op: SiteOp) -> RuntimeRoute | None:
    if op.free:
        return None
    for layout, (shape, split) in RUNTIME_LAYOUTS.items():
        shapes = canonical_shapes((shape,))
        if shapes is None:
            continue
        template = _template_of(split)
        if op.kind == "pair":
            if same_views((op.op,), template, shapes) is True:
                return RuntimeRoute(op, layout, None)
            continue
        pieces = _template_pieces(template)
        for index in (0, 1):
            if same_piece(op.op, pieces[index], shapes) is True:
                return RuntimeRoute(op, layout, index)
    return None


def plan_file(
    model: FileModel, index: ProjectIndex, reported: Callable[[cst.CSTNode], bool]
) -> FilePlan:
    """The fix plan for one file's KVG001 sites for which ``reported(node)`` holds."""
    plan = FilePlan()
    by_class: dict[str, list[SiteOp]] = {}
    unmodelled: dict[str, str] = {}
    loose: list[SiteOp] = []
    for site in model.sites:
        if site.in_splitter or not reported(site.split.node):
            continue
        op = site_op(site)
        if op is None:
            if site.class_name is not None:
                unmodelled.setdefault(site.class_name, _code(site.split.node).strip())
            continue
        if site.class_name is not None:
            by_class.setdefault(site.class_name, []).append(op)
        else:
            loose.append(op)
    contradicting = {id(node) for node, _, _ in split_contradicts_layout(model, index)}
    scattering = scattering_classes(model)
    for name, ops in by_class.items():
        wrong = next((op for op in ops if id(op.node) in contradicting), None)
        if name in unmodelled:
            reason = f"`{unmodelled[name]}` is a split form the fixer does not rewrite"
            plan.classes[name] = ClassPlan(name=name, reason=reason, ops=ops)
        elif wrong is not None:
            # routing it would hide the bug inside a sanctioned splitter
            reason = f"{_where(wrong)} contradicts the declared layout (KVG002); fix it first"
            plan.classes[name] = ClassPlan(name=name, reason=reason, ops=ops)
        else:
            plan.classes[name] = _plan_class(name, ops, index, model.path)
        if name in scattering:  # the class KVG004 reports on (its header is parsed anyway)
            cls = model.class_def(name)
            if cls is not None:
                plan.anchors[name] = id(cls.name)
    for op in loose:
        text = one_line(_normal(_code(op.node)), 40)
        where = f"`{text}` in {op.site.function or 'the module'} sits outside a class"
        if _in_vllm_tree(model.path):
            plan.loose[id(op.node)] = (
                f"{where}, inside vLLM's own package, which cannot depend on kvguard.runtime: "
                "give it a splitter by hand"
            )
            continue
        route = _runtime_route(op)
        if route is not None:
            plan.runtime[id(op.node)] = route
        elif op.free:
            plan.loose[id(op.node)] = (
                f"{where} and reads {', '.join(f'`{n}`' for n in op.free)}, which no runtime "
                "layout names: route it through a splitter by hand"
            )
        else:
            plan.loose[id(op.node)] = (
                f"{where}, and no layout of kvguard.runtime.split_kv_cache gives the same "
                "views: route it through a splitter by hand"
            )
    return plan
