"""Analysis of deeply nested code: a thread with a large stack and a raised recursion limit.

CPython's ``ast`` and libcst build and print trees recursively, so an expression nested a
few hundred levels deep (``a + a + ... + a``, a long ``x[0][0]...`` chain) exhausts the
default recursion limit. ruff analyzes about 5,000 levels; so does kvguard. A file is first
analyzed as usual; only if that raises ``RecursionError`` is the work repeated in a thread
whose stack is large enough for ``DEEP_RECURSION_LIMIT`` frames. Normal files pay nothing.
"""

from __future__ import annotations

import ast
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

MAX_NESTING = 5_000  # expression nesting kvguard analyzes (about ruff's)
# Frames the deepest recursive walk (libcst printing code) takes per nesting level, times
# MAX_NESTING, with room to spare; the stack holds that many frames of C and Python code.
DEEP_RECURSION_LIMIT = 150_000
DEEP_STACK_BYTES = 1 << 30  # reserved address space; only the pages used are committed

_lock = threading.Lock()  # one deep analysis at a time: the recursion limit is global


class TooDeep(Exception):
    """Nesting beyond MAX_NESTING; ``line`` is where the deepest expression starts."""

    def __init__(self, depth: int, line: int) -> None:
        super().__init__(depth, line)
        self.depth = depth
        self.line = line


def run_deep(work: Callable[[], T]) -> T:
    """``work()`` in a thread with a large stack and the recursion limit raised.

    Its exception, if any, is raised here (a ``RecursionError`` means deeper than even
    that allows)."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:  # carried over to the calling thread
            failure.append(exc)

    with _lock:
        previous_limit = sys.getrecursionlimit()
        previous_stack = threading.stack_size()
        try:
            threading.stack_size(DEEP_STACK_BYTES)
            thread = threading.Thread(target=target, name="kvguard-deep", daemon=True)
        finally:
            threading.stack_size(previous_stack)
        sys.setrecursionlimit(DEEP_RECURSION_LIMIT)
        try:
            thread.start()
            thread.join()
        finally:
            sys.setrecursionlimit(previous_limit)
    if failure:
        raise failure[0]
    return outcome[0]


def deepest(tree: ast.AST) -> tuple[int, int]:
    """(the deepest nesting of expressions in ``tree``, the line where it starts), walked
    without recursion."""
    best, best_line = 0, 0
    stack: list[tuple[ast.AST, int, int]] = [(tree, 0, 0)]
    while stack:
        node, depth, line = stack.pop()
        if isinstance(node, ast.expr):
            depth += 1
            if depth == 1:
                line = node.lineno
            if depth > best:
                best, best_line = depth, line
        elif isinstance(node, ast.stmt):
            depth = 0
        for child in ast.iter_child_nodes(node):
            stack.append((child, depth, line))
    return best, best_line


def check_nesting(tree: ast.AST) -> None:
    """Raise TooDeep if ``tree`` nests expressions deeper than kvguard analyzes."""
    depth, line = deepest(tree)
    if depth > MAX_NESTING:
        raise TooDeep(depth, line)
