"""Where guards and bindings hold: a walk over one function that carries ``values.Facts``.

``walk_with_facts`` yields every node ``walk.walk`` yields, with the facts in force there.
Only the nodes that narrow are taken apart by hand: ``if``/``while`` (the test's facts in the
body, their negation in the ``else``), conditional expressions, ``and``/``or``, and statement
sequences, where a guard clause, an ``assert``, an assignment or a layout-validating call
changes what holds for the statements after it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import libcst as cst

from kvguard.lint.value_facts import Kind
from kvguard.lint.values import (
    Facts,
    construction_kind,
    guard_facts,
    kinds_only,
    validates_layout,
)
from kvguard.lint.walk import children

_TERMINATORS = (cst.Return, cst.Raise, cst.Continue, cst.Break)


def _ends_flow(block: cst.BaseSuite) -> bool:
    """The block always leaves (its last statement returns, raises, continues, breaks)."""
    body = block.body
    if not body:
        return False
    last = body[-1]
    if isinstance(block, cst.SimpleStatementSuite):
        return isinstance(last, _TERMINATORS)
    return (
        isinstance(last, cst.SimpleStatementLine)
        and bool(last.body)
        and isinstance(last.body[-1], _TERMINATORS)
    )


def _after(
    statement: cst.CSTNode, facts: Facts, aliases: dict[str, Kind], returns: frozenset[str]
) -> Facts:
    """What holds after a statement: a guard clause's negation (and the layout it tested),
    an assert's test, what an assignment built, the layout once a call validated it."""
    if isinstance(statement, cst.If) and statement.orelse is None and _ends_flow(statement.body):
        negation = guard_facts(statement.test, aliases)[1]
        return facts.add(Facts(negation.kinds, negation.checked))
    if isinstance(statement, cst.Assert):
        return facts.add(kinds_only(guard_facts(statement.test, aliases)[0]))
    if isinstance(statement, cst.SimpleStatementLine):
        for small in statement.body:
            facts = _after(small, facts, aliases, returns)
        return facts
    if isinstance(statement, cst.Assign):
        return facts.add(Facts(_bound(statement, returns)))
    if (
        isinstance(statement, cst.Expr)
        and isinstance(statement.value, cst.Call)
        and validates_layout(statement.value)
    ):
        return facts.add(Facts(checked=True))
    return facts


def _bound(assign: cst.Assign, returns: frozenset[str]) -> tuple[tuple[str, Kind | None], ...]:
    """What the names an assignment binds are from here on: what a construction site built
    (``kv = (k, v)``), an element of what a call returned (``kv_cache, scales = f(layer)``),
    or, for any other value, nothing known any more."""
    out: list[tuple[str, Kind | None]] = []
    for target in assign.targets:
        if isinstance(target.target, cst.Name):
            out.append((target.target.value, construction_kind(assign.value, returns)))
        elif isinstance(target.target, (cst.Tuple, cst.List)):
            returned = Kind.LOCAL if isinstance(assign.value, cst.Call) else None
            out.extend(
                (e.value.value, returned)
                for e in target.target.elements
                if isinstance(e.value, cst.Name)
            )
    return tuple(out)


def walk_with_facts(
    root: cst.CSTNode, facts: Facts, aliases: dict[str, Kind], returns: frozenset[str]
) -> Iterator[tuple[cst.CSTNode, Facts]]:
    """Every node below ``root`` (as ``walk.walk`` yields them) with the facts that hold
    there. Only the nodes that narrow (if/while/conditional expressions, ``and``/``or``,
    statement sequences) are taken apart by hand; the rest follows ``walk``'s fields."""
    stack: list[tuple[cst.CSTNode, Facts]] = [(root, facts)]
    pop, push = stack.pop, stack.extend
    while stack:
        node, here = pop()
        yield node, here
        narrow = _NARROWING.get(type(node))
        if narrow is None:
            below = children(node)
            if below:
                below.reverse()
                push([(child, here) for child in below])
        else:
            push(reversed(narrow(node, here, aliases, returns)))


_Below = list[tuple[cst.CSTNode, Facts]]


def _branches(node: cst.If | cst.While, here: Facts, aliases: dict[str, Kind], _: object) -> _Below:
    true, false = guard_facts(node.test, aliases)
    below = [(node.test, here), (node.body, here.add(true))]
    if node.orelse is not None:
        below.append((node.orelse, here.add(false)))
    return below


def _conditional(node: cst.IfExp, here: Facts, aliases: dict[str, Kind], _: object) -> _Below:
    true, false = guard_facts(node.test, aliases)
    return [(node.body, here.add(true)), (node.test, here), (node.orelse, here.add(false))]


def _boolean(
    node: cst.BooleanOperation, here: Facts, aliases: dict[str, Kind], _: object
) -> _Below:
    true, false = guard_facts(node.left, aliases)
    right = true if type(node.operator) is cst.And else false
    return [(node.left, here), (node.right, here.add(kinds_only(right)))]


def _sequence(
    node: cst.IndentedBlock | cst.Module | cst.SimpleStatementSuite,
    here: Facts,
    aliases: dict[str, Kind],
    returns: frozenset[str],
) -> _Below:
    below = []
    for statement in node.body:
        below.append((statement, here))
        here = _after(statement, here, aliases, returns)
    return below


_NARROWING: dict[type, Callable[..., _Below]] = {
    cst.If: _branches,
    cst.While: _branches,
    cst.IfExp: _conditional,
    cst.BooleanOperation: _boolean,
    cst.IndentedBlock: _sequence,
    cst.Module: _sequence,
    cst.SimpleStatementSuite: _sequence,
}
