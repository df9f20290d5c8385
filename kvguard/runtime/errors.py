"""Errors are data: they keep what was compared and explain themselves in `__str__`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class UnsupportedView(ValueError):
    """A kv_cache or kernel view the guard cannot reason about; the layer is skipped."""


@dataclass
class KVLayoutMismatchError(Exception):
    """Two layers sharing one KV allocation disagree on which bytes a block id owns.

    Raised in strict mode (and in fix mode when no re-striding can fix it) before any kernel
    of the offending call runs. `violation` is the same dict that `Guard.report()` lists.
    """

    violation: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.violation.get("message", "KV layout mismatch"))

    def __str__(self) -> str:
        return str(self.violation.get("message", "KV layout mismatch"))

    def __reduce__(self):  # picklable across vLLM worker processes
        return (type(self), (self.violation,))
