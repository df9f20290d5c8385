"""The libcst transform that carries out a fix plan on a whole module.

Only the split expressions, the statements merged into one unpacking, the generated
splitter and (for runtime fixes) one import are new; every other node is the parsed one,
so comments, blank lines, quotes and line breaks elsewhere stay byte-identical.
"""

from __future__ import annotations

import itertools
import textwrap
from dataclasses import dataclass, field

import libcst as cst

from kvguard.lint.facts import SPLITTER_METHOD
from kvguard.lint.fixability import (
    RUNTIME_MODULE,
    RUNTIME_SPLITTER,
    ClassPlan,
    RuntimeRoute,
    SiteOp,
    accepts_sequence_too,
)

DOC_WIDTH = 88  # black's and vLLM's line length: the generated method fits both


@dataclass
class Rewrite:
    """What to change in one module: routes by id of the original split node."""

    classes: dict[int, ClassPlan] = field(default_factory=dict)  # id(ClassDef) -> plan
    class_body_indent: dict[int, str] = field(default_factory=dict)  # id(ClassDef) -> indent
    runtime: dict[int, RuntimeRoute] = field(default_factory=dict)
    annotate: bool = False  # the module imports torch: annotate the generated parameter
    add_import: bool = False

    def routes(self) -> dict[int, tuple[str, int | None, SiteOp]]:
        """id(split node) -> (owner key, piece or None, op)."""
        out: dict[int, tuple[str, int | None, SiteOp]] = {}
        for plan in self.classes.values():
            for op in plan.ops:
                out[id(op.node)] = (f"class:{plan.name}", plan.routes[id(op.node)], op)
        for key, route in self.runtime.items():
            out[key] = (f"runtime:{route.layout}", route.piece, route.op)
        return out


def _receiver(updated: cst.CSTNode, form: str) -> cst.BaseExpression:
    if form == "unpack":
        return updated  # type: ignore[return-value]
    if isinstance(updated, cst.Subscript):
        return updated.value
    assert isinstance(updated, cst.Call) and isinstance(updated.func, cst.Attribute)
    owner = updated.func.value
    if isinstance(owner, cst.Name) and owner.value == "torch":
        return updated.args[0].value
    return owner


def _call(owner: str, receiver: cst.BaseExpression, piece: int | None) -> cst.BaseExpression:
    if owner.startswith("class:"):
        call = cst.Call(
            func=cst.Attribute(cst.Name("self"), cst.Name(SPLITTER_METHOD)),
            args=[cst.Arg(receiver)],
        )
    else:
        layout = owner.split(":", 1)[1]
        call = cst.Call(
            func=cst.Name(RUNTIME_SPLITTER),
            args=[
                cst.Arg(receiver, comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))),
                cst.Arg(cst.SimpleString(f'"{layout}"')),
            ],
        )
    if piece is None:
        return call
    return cst.Subscript(call, [cst.SubscriptElement(cst.Index(cst.Integer(str(piece))))])


def _names(node: cst.CSTNode) -> set[str]:
    found = {node.value} if isinstance(node, cst.Name) else set()
    for child in node.children:
        found |= _names(child)
    return found


def _single_assign(stmt: cst.CSTNode) -> cst.Assign | None:
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return None
    assign = stmt.body[0]
    if not isinstance(assign, cst.Assign) or len(assign.targets) != 1:
        return None
    if not isinstance(assign.targets[0].target, (cst.Name, cst.Attribute)):
        return None
    return assign


class _PairFinder(cst.CSTVisitor):
    """Adjacent ``k = <K piece>`` / ``v = <V piece>`` statements that become one unpacking."""

    def __init__(self, routes: dict[int, tuple[str, int | None, SiteOp]]) -> None:
        self.routes = routes
        # id(first stmt) -> (piece of the first, piece of the second, route owner, split form)
        self.first: dict[int, tuple[int, int, str, str]] = {}
        self.second: set[int] = set()
        self.merged_nodes: set[int] = set()

    def _scan(self, body: tuple[cst.CSTNode, ...] | list[cst.CSTNode]) -> None:
        for a, b in itertools.pairwise(body):
            if id(a) in self.second or id(a) in self.first:
                continue
            first, second = _single_assign(a), _single_assign(b)
            if first is None or second is None:
                continue
            ra, rb = self.routes.get(id(first.value)), self.routes.get(id(second.value))
            if ra is None or rb is None or ra[0] != rb[0] or {ra[1], rb[1]} != {0, 1}:
                continue
            if ra[2].receiver_code() != rb[2].receiver_code():
                continue
            ta, tb = first.targets[0].target, second.targets[0].target
            code = cst.Module([]).code_for_node
            if code(ta) == code(tb) or _names(ta) & _names(rb[2].receiver):
                continue
            if a.trailing_whitespace.comment and b.trailing_whitespace.comment:  # type: ignore[attr-defined]
                continue
            self.first[id(a)] = (ra[1], rb[1], ra[0], ra[2].site.split.form)  # type: ignore[assignment]
            self.second.add(id(b))
            self.merged_nodes |= {id(first.value), id(second.value)}

    def visit_Module(self, node: cst.Module) -> None:
        self._scan(node.body)

    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> None:
        self._scan(node.body)


def splitter_source(plan: ClassPlan, body_indent: str, indent: str, annotate: bool) -> str:
    """The generated ``_split_kv_cache`` method, as module-level source to parse."""
    inner = body_indent + indent
    # a splitter that also takes the (key, value) tuple/list its sites took gets no
    # tensor annotation
    tensor_only = not accepts_sequence_too(plan)
    parameter = "kv_cache: torch.Tensor" if annotate and tensor_only else "kv_cache"
    assumes = plan.assumes[0].upper() + plan.assumes[1:] + "."
    if plan.unpacks:
        assumes += " Unpacks it as the code it replaces did, so a (key, value) pair passes too."
    wrapped = textwrap.wrap(assumes, width=DOC_WIDTH, initial_indent=inner, subsequent_indent=inner)
    if plan.unpacks:
        body = f"{indent}key, value = kv_cache\n{indent}return key, value\n"
    else:
        body = f"{indent}return {', '.join(plan.template)}\n"
    return (
        f"def {SPLITTER_METHOD}(self, {parameter}):\n"
        f'{indent}"""Split one layer\'s KV cache into its (key, value) views.\n\n'
        + "\n".join(wrapped)
        + f'\n{inner}"""\n'
        + body
    )


class Fixer(cst.CSTTransformer):
    def __init__(self, rewrite: Rewrite, module: cst.Module) -> None:
        super().__init__()
        self.rewrite = rewrite
        self.module = module
        self.routes = rewrite.routes()
        pairs = _PairFinder(self.routes)
        module.visit(pairs)
        self.pairs = pairs

    def on_leave(self, original_node, updated_node):  # type: ignore[no-untyped-def]
        key = id(original_node)
        if key in self.routes and key not in self.pairs.merged_nodes:
            owner, piece, op = self.routes[key]
            replacement = _call(owner, _receiver(updated_node, op.site.split.form), piece)
            if hasattr(updated_node, "lpar") and op.site.split.form != "unpack":
                replacement = replacement.with_changes(
                    lpar=updated_node.lpar, rpar=updated_node.rpar
                )
            return replacement
        return super().on_leave(original_node, updated_node)

    def _merge(self, original: tuple, updated: tuple) -> list:  # type: ignore[type-arg]
        out: list = []  # type: ignore[type-arg]
        skip = False
        for position, (old, new) in enumerate(zip(original, updated, strict=True)):
            if skip:
                skip = False
                continue
            if id(old) not in self.pairs.first:
                out.append(new)
                continue
            follower = updated[position + 1]
            out.append(self._merged(new, follower, self.pairs.first[id(old)]))
            skip = True
        return out

    def _merged(
        self,
        a: cst.SimpleStatementLine,
        b: cst.SimpleStatementLine,
        pair_route: tuple[int, int, str, str],
    ) -> cst.CSTNode:
        first, second = a.body[0], b.body[0]
        assert isinstance(first, cst.Assign) and isinstance(second, cst.Assign)
        *pieces, owner, form = pair_route
        targets = {pieces[0]: first.targets[0].target, pieces[1]: second.targets[0].target}
        pair = cst.Tuple(
            [
                cst.Element(
                    targets[0], comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))
                ),
                cst.Element(targets[1]),
            ],
            lpar=[],
            rpar=[],
        )
        assign = first.with_changes(
            targets=[first.targets[0].with_changes(target=pair)],
            value=_call(owner, _receiver(first.value, form), None),
        )
        comment = a.trailing_whitespace if a.trailing_whitespace.comment else b.trailing_whitespace
        return a.with_changes(
            body=[assign],
            leading_lines=[*a.leading_lines, *b.leading_lines],
            trailing_whitespace=comment,
        )

    def leave_IndentedBlock(self, original_node, updated_node):  # type: ignore[no-untyped-def]
        if any(id(s) in self.pairs.first for s in original_node.body):
            return updated_node.with_changes(
                body=self._merge(original_node.body, updated_node.body)
            )
        return updated_node

    def leave_ClassDef(self, original_node, updated_node):  # type: ignore[no-untyped-def]
        plan = self.rewrite.classes.get(id(original_node))
        if plan is None or not plan.generate:
            return updated_node
        body = list(updated_node.body.body)
        index = next(
            (
                i + 1
                for i, s in enumerate(body)
                if isinstance(s, cst.FunctionDef) and s.name.value == "__init__"
            ),
            next((i for i, s in enumerate(body) if isinstance(s, cst.FunctionDef)), len(body)),
        )
        source = splitter_source(
            plan,
            self.rewrite.class_body_indent[id(original_node)],
            self.module.default_indent,
            self.rewrite.annotate,
        )
        method = cst.parse_statement(source, config=self.module.config_for_parsing)
        method = method.with_changes(leading_lines=[cst.EmptyLine(indent=False)] if index else [])
        if index < len(body) and not body[index].leading_lines:  # type: ignore[attr-defined]
            body[index] = body[index].with_changes(leading_lines=[cst.EmptyLine(indent=False)])
        body.insert(index, method)
        return updated_node.with_changes(body=updated_node.body.with_changes(body=body))

    def leave_Module(self, original_node, updated_node):  # type: ignore[no-untyped-def]
        body = list(updated_node.body)
        if any(id(s) in self.pairs.first for s in original_node.body):
            body = self._merge(original_node.body, updated_node.body)
        if self.rewrite.add_import:
            statement = cst.parse_statement(
                f"from {RUNTIME_MODULE} import {RUNTIME_SPLITTER}\n",
                config=self.module.config_for_parsing,
            )
            position = _import_position(body)
            if position < len(body) and not _is_import(body[position]):
                following = body[position]
                blank = 2 if isinstance(following, (cst.FunctionDef, cst.ClassDef)) else 1
                if not following.leading_lines:  # type: ignore[attr-defined]
                    body[position] = following.with_changes(
                        leading_lines=[cst.EmptyLine(indent=False)] * blank
                        + list(following.leading_lines)  # type: ignore[attr-defined]
                    )
            body.insert(position, statement)
        return updated_node.with_changes(body=body)


def _is_import(stmt: cst.CSTNode) -> bool:
    return isinstance(stmt, cst.SimpleStatementLine) and all(
        isinstance(s, (cst.Import, cst.ImportFrom)) for s in stmt.body
    )


def _is_docstring(stmt: cst.CSTNode) -> bool:
    return (
        isinstance(stmt, cst.SimpleStatementLine)
        and len(stmt.body) == 1
        and isinstance(stmt.body[0], cst.Expr)
        and isinstance(stmt.body[0].value, (cst.SimpleString, cst.ConcatenatedString))
    )


def _import_position(body: list) -> int:  # type: ignore[type-arg]
    """After the last import of the module's leading import block (or its docstring)."""
    position = 1 if body and _is_docstring(body[0]) else 0
    for index in range(position, len(body)):
        if _is_import(body[index]):
            position = index + 1
        else:
            break
    return position


def module_binds(module: cst.Module, name: str) -> str | None:
    """How the module's top level binds ``name``: "runtime" (our import), "other", or None."""
    for stmt in module.body:
        if isinstance(stmt, (cst.FunctionDef, cst.ClassDef)) and stmt.name.value == name:
            return "other"
        if not isinstance(stmt, cst.SimpleStatementLine):
            continue
        for small in stmt.body:
            if isinstance(small, cst.ImportFrom) and not isinstance(small.names, cst.ImportStar):
                for alias in small.names:
                    bound = alias.asname.name if alias.asname else alias.name
                    if isinstance(bound, cst.Name) and bound.value == name:
                        source = cst.Module([]).code_for_node(small.module) if small.module else ""
                        original = cst.Module([]).code_for_node(alias.name)
                        ours = source == RUNTIME_MODULE and original == RUNTIME_SPLITTER
                        return "runtime" if ours else "other"
            if isinstance(small, cst.Import):
                for alias in small.names:
                    bound = alias.asname.name if alias.asname else alias.name
                    if isinstance(bound, cst.Name) and bound.value == name:
                        return "other"
            if isinstance(small, (cst.Assign, cst.AnnAssign)) and name in _names(small):
                return "other"
    return None


def imports_torch(module: cst.Module) -> bool:
    for stmt in module.body:
        if isinstance(stmt, cst.SimpleStatementLine):
            for small in stmt.body:
                if isinstance(small, cst.Import) and any(
                    (a.asname is None and cst.Module([]).code_for_node(a.name) == "torch")
                    for a in small.names
                ):
                    return True
    return False
