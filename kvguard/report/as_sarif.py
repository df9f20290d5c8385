"""SARIF 2.1.0, as GitHub code scanning accepts it."""

from __future__ import annotations

import json

from kvguard import __version__
from kvguard.catalog import Rule
from kvguard.engine import Result

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
_LEVEL = {"error": "error", "warning": "warning", "advice": "note"}


def _rule(rule: Rule) -> dict[str, object]:
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary},
        "fullDescription": {"text": rule.rationale.strip()},
        "help": {"text": rule.doc(), "markdown": rule.doc()},
        "defaultConfiguration": {"level": _LEVEL[rule.severity]},
        "properties": {"tags": ["kv-cache", "correctness"]},
    }


def render(result: Result, catalog: dict[str, Rule]) -> str:
    codes = sorted(catalog)
    results = []
    for f in result.findings:
        entry: dict[str, object] = {
            "ruleId": f.code,
            "level": _LEVEL.get(f.severity, "error"),
            "message": {"text": f.message},
            "locations": [
                {
                    "physicalLocation": {
                        "artifactLocation": {
                            "uri": f.path.replace("\\", "/"),
                            "uriBaseId": "%SRCROOT%",
                        },
                        "region": {
                            "startLine": f.line,
                            "startColumn": f.column,
                            "endLine": f.end_line,
                            "endColumn": f.end_column,
                        },
                    }
                }
            ],
        }
        if f.code in catalog:
            entry["ruleIndex"] = codes.index(f.code)
        # SARIF's own `fixes` need byte-range replacements; kvguard's fixes are module
        # transforms, so their availability goes in the property bag
        entry["properties"] = {"fix": f.fix.to_dict() if f.fix else None}
        results.append(entry)
    notifications = [
        {
            "level": "error",
            "message": {"text": e.message},
            "locations": [
                {"physicalLocation": {"artifactLocation": {"uri": e.path.replace("\\", "/")}}}
            ],
        }
        for e in result.errors
    ]
    sarif = {
        "$schema": SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "kvguard",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": [_rule(catalog[c]) for c in codes],
                    }
                },
                "results": results,
                "invocations": [
                    {
                        "executionSuccessful": not result.errors,
                        "toolExecutionNotifications": notifications,
                    }
                ],
            }
        ],
    }
    return json.dumps(sarif, indent=2)
