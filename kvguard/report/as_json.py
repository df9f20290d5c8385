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
            "errors": [e.to_dict() for e in result.errors],
            "summary": summary(result),
        },
        indent=2,
    )
