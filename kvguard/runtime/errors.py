"""Errors are data: they keep what was compared and explain themselves in `__str__`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .records import Violation


class UnsupportedView(ValueError):
    """A kv_cache or kernel view the guard cannot reason about; the layer is skipped."""


class KVLayoutMismatchError(Exception):
    """Two layers sharing one KV allocation disagree on which bytes a block id owns.

    Raised in strict mode (and in fix mode when no re-striding can fix it) before any kernel
    of the offending call runs. `violation` is the `Violation` that `Guard.report()` lists;
    `str(error)` is its full diagnostic, or with `brief=True` (inside a server, where the text
    reaches clients) its one-line summary without storage addresses.
    """

    def __init__(self, violation: Violation, brief: bool = False) -> None:
        super().__init__(violation)
        self.violation = violation
        self.brief = brief

    def __str__(self) -> str:
        return self.violation.summary() if self.brief else str(self.violation)

    def __reduce__(self):  # picklable across vLLM worker processes
        return (type(self), (self.violation, self.brief))
