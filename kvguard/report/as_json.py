"""JSON: every finding with its explanation and fix, the suppressed ones with the reason
given, warnings on suppression comments, the files that could not be analyzed."""

from __future__ import annotations

import json

from kvguard import __version__
from kvguard.engine import Result
from kvguard.report import summary


def render(result: Result) -> str:
    return json.dumps(
        {
            "version": __version__,
            "findings": [f.to_dict() for f in result.findings],
            "suppressed": [f.to_dict() for f in result.suppressed],
            "warnings": [n.to_dict() for n in result.notices],
            "errors": [e.to_dict() for e in result.errors],
            "summary": summary(result),
        },
        indent=2,
        ensure_ascii=False,
    )
