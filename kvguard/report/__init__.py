"""Output formats of ``kvguard check``: full and concise text (ruff-like), json, sarif, github."""

from __future__ import annotations

from collections import Counter

from kvguard.engine import Result


def summary(result: Result) -> dict[str, object]:
    """``fixable`` counts what a plain ``--fix`` fixes, as the text's ``[*]`` does; the
    fixes that need ``--unsafe-fixes`` are counted apart."""
    counts = Counter(f.code for f in result.findings)
    applicability = Counter(f.fix.applicability for f in result.findings if f.fix is not None)
    return {
        "files": result.files,
        "findings": len(result.findings),
        "errors": len(result.errors),
        "by_code": dict(sorted(counts.items())),
        "files_with_findings": len({f.path for f in result.findings}),
        "fixable": applicability["safe"],
        "fixable_unsafe": applicability["unsafe"],
        "suppressed": len(result.suppressed),
        "warnings": len(result.notices),
        **({"fixed": result.fixed} if result.fixed is not None else {}),
    }
