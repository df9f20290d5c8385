"""libcst's metadata wrapper, without the traversal that resolving positions wastes.

libcst (1.9) resolves a provider that is not batchable, such as ``PositionProvider``, and
then runs a batched visit of the whole tree with no visitor at all; that empty visit costs
as much as the code generation that computes the positions. ``PositionWrapper`` skips a
batched visit that has no visitor and no callback (it could have no effect) and is
libcst's own wrapper otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from libcst import BatchableCSTVisitor, CSTNode
from libcst.metadata import MetadataWrapper

VisitorMethod = Callable[[CSTNode], None]


class PositionWrapper(MetadataWrapper):
    def visit_batched(
        self,
        visitors: Iterable[BatchableCSTVisitor],
        before_visit: VisitorMethod | None = None,
        after_leave: VisitorMethod | None = None,
    ) -> CSTNode:
        visitors = list(visitors)
        if not visitors and before_visit is None and after_leave is None:
            return self.module
        return super().visit_batched(visitors, before_visit, after_leave)
