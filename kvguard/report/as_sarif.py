"""SARIF 2.1.0, as GitHub code scanning accepts it.

Paths become RFC 3986 URIs: a relative path is percent-encoded and resolved against
``%SRCROOT%`` (the working directory, given in ``originalUriBaseIds``); an absolute path is
a ``file://`` URI of its own. Columns are counted in UTF-16 code units, SARIF's default
``columnKind``, from the source lines the findings carry. Suppressed findings are results
with an ``inSource`` suppression (the comment's reason is its justification).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import quote

from kvguard import __version__
from kvguard.catalog import Rule
from kvguard.engine import Result
from kvguard.findings import Finding

SCHEMA = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
SRCROOT = "%SRCROOT%"
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


def artifact_location(path: str) -> dict[str, str]:
    if os.path.isabs(path):
        return {"uri": Path(path).as_uri()}
    return {"uri": quote(path.replace(os.sep, "/"), safe="/"), "uriBaseId": SRCROOT}


def utf16_column(line: str, column: int) -> int:
    """A 1-based column in code points as a 1-based column in UTF-16 code units."""
    if not line or line.isascii():
        return column
    return 1 + len(line[: column - 1].encode("utf-16-le")) // 2


def _region(f: Finding) -> dict[str, int]:
    end_line_text = f.end_source_line if f.end_line != f.line else f.source_line
    return {
        "startLine": f.line,
        "startColumn": utf16_column(f.source_line, f.column),
        "endLine": f.end_line,
        "endColumn": utf16_column(end_line_text, f.end_column),
    }


def _result(f: Finding, codes: list[str]) -> dict[str, object]:
    entry: dict[str, object] = {
        "ruleId": f.code,
        "level": _LEVEL.get(f.severity, "error"),
        "message": {"text": f.message},
        "locations": [
            {
                "physicalLocation": {
                    "artifactLocation": artifact_location(f.path),
                    "region": _region(f),
                }
            }
        ],
    }
    if f.code in codes:
        entry["ruleIndex"] = codes.index(f.code)
    if f.suppressed is not None:
        suppression: dict[str, str] = {"kind": "inSource"}
        if f.suppressed:
            suppression["justification"] = f.suppressed
        entry["suppressions"] = [suppression]
    # SARIF's own `fixes` need byte-range replacements; kvguard's fixes are module
    # transforms, so their availability goes in the property bag
    entry["properties"] = {
        "explanation": f.explanation,
        "fix": f.fix.to_dict() if f.fix else None,
        "fixWithheld": f.fix_withheld or None,
    }
    return entry


def _notification(level: str, path: str, message: str, line: int, column: int) -> dict:
    location: dict[str, object] = {"artifactLocation": artifact_location(path)}
    if line:
        location["region"] = {"startLine": line, **({"startColumn": column} if column else {})}
    return {
        "level": level,
        "message": {"text": message},
        "locations": [{"physicalLocation": location}],
    }


def render(result: Result, catalog: dict[str, Rule]) -> str:
    codes = sorted(catalog)
    findings = sorted([*result.findings, *result.suppressed])
    notifications = [
        *(_notification("error", e.path, e.message, e.line, e.column) for e in result.errors),
        *(_notification("warning", n.path, n.message, n.line, n.column) for n in result.notices),
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
                "originalUriBaseIds": {
                    SRCROOT: {"uri": Path(os.getcwd()).as_uri().rstrip("/") + "/"}
                },
                "columnKind": "utf16CodeUnits",
                "results": [_result(f, codes) for f in findings],
                "invocations": [
                    {
                        "executionSuccessful": not result.errors,
                        "toolExecutionNotifications": notifications,
                    }
                ],
            }
        ],
    }
    return json.dumps(sarif, indent=2, ensure_ascii=False)
