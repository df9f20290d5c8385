"""The rules' registry: each rule registers itself under its code with ``@rule``.

A rule is a function of the file model and the project index that yields ``Report``s. The
engine runs the enabled ones; the catalog (``kvguard/rules/*.toml``) holds their text, and
``tests/lint/test_catalog.py`` checks that both name the same codes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import libcst as cst

    from kvguard.lint.checker import FileModel
    from kvguard.lint.index import ProjectIndex


@dataclass(frozen=True)
class Message:
    text: str  # one line: what is wrong where
    explanation: str = ""  # why, and the way out


class Report(NamedTuple):
    node: cst.CSTNode
    code: str
    message: Message


RuleCheck = Callable[["FileModel", "ProjectIndex"], Iterable[Report]]

_RULES: dict[str, RuleCheck] = {}


def rule(code: str) -> Callable[[RuleCheck], RuleCheck]:
    """Register the decorated function as the check of rule ``code``."""

    def register(check: RuleCheck) -> RuleCheck:
        if code in _RULES and _RULES[code] is not check:
            raise ValueError(f"rule {code} is registered twice")
        _RULES[code] = check
        return check

    return register


def registered() -> dict[str, RuleCheck]:
    """Every rule's check by code, in code order."""
    import kvguard.lint.rules  # noqa: F401  (its rules register themselves on import)

    return dict(sorted(_RULES.items()))


def run_rules(
    model: FileModel, index: ProjectIndex, enabled: Callable[[str], bool] | None = None
) -> list[Report]:
    """The reports of every registered (and enabled) rule on one file."""
    return [
        report
        for code, check in registered().items()
        if enabled is None or enabled(code)
        for report in check(model, index)
    ]
