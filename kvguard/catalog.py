"""The rule catalog: one TOML data file per rule under ``kvguard/rules/``.

The same text feeds ``kvguard rule CODE``, the SARIF rule metadata and the
example-driven tests, so a rule's documentation cannot drift from its behaviour.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

RULES_DIR = Path(__file__).parent / "rules"
SEVERITIES = ("error", "warning", "advice")
_REQUIRED = ("code", "name", "summary", "severity", "rationale", "example", "use_instead")


@dataclass(frozen=True)
class Example:
    code: str
    path: str = "example.py"
    # for invalid examples: the 1-based lines that must be flagged with this rule
    lines: tuple[int, ...] = ()
    # for invalid examples: the text after `--fix` (None: --fix leaves it alone), and after
    # `--fix --unsafe-fixes` (None: not stated)
    fixed: str | None = None
    unsafe_fixed: str | None = None
    # the kind of evidence (a key of the rule's [evidence] table) this example shows
    evidence: str = ""


@dataclass(frozen=True)
class Rule:
    code: str
    name: str
    summary: str
    severity: str
    rationale: str
    example: str
    use_instead: str
    fix_safety: str = ""
    options: tuple[tuple[str, str], ...] = ()
    references: tuple[str, ...] = ()
    # kinds of evidence that clear a site: (name, what it is), in the order documented
    evidence: tuple[tuple[str, str], ...] = ()
    valid: tuple[Example, ...] = field(default=(), repr=False)
    invalid: tuple[Example, ...] = field(default=(), repr=False)
    source: str = ""

    @property
    def fixable(self) -> bool:
        """Whether ``--fix`` fixes some of its findings: an invalid example shows the fix."""
        return any(
            (e.fixed is not None and e.fixed != e.code)
            or (e.unsafe_fixed is not None and e.unsafe_fixed != e.code)
            for e in self.invalid
        )

    def doc(self) -> str:
        """The rule's documentation in ruff's fixed headings, as markdown."""
        parts = [
            f"# {self.name} ({self.code})",
            f"Severity: {self.severity}",
            f"## What it does\n{self.summary}",
            f"## Why is this bad?\n{self.rationale.strip()}",
            f"## Example\n```python\n{self.example.strip()}\n```",
            f"## Use instead\n```python\n{self.use_instead.strip()}\n```",
        ]
        if self.evidence:
            parts.append(self._evidence_doc())
        if self.fix_safety:
            parts.append(f"## Fix safety\n{self.fix_safety.strip()}")
        if self.options:
            lines = "\n".join(f"- `{key}`: {text}" for key, text in self.options)
            parts.append(f"## Options\n{lines}")
        if self.references:
            parts.append("## References\n" + "\n".join(f"- {ref}" for ref in self.references))
        return "\n\n".join(parts) + "\n"

    def _evidence_doc(self) -> str:
        """Each kind of evidence with the examples (flagged, then not) that test it."""
        sections = ["## Evidence that clears a site"]
        for name, text in self.evidence:
            lines = [f"### {name}", text.strip()]
            for label, examples in (("Flagged:", self.invalid), ("Not flagged:", self.valid)):
                for example in examples:
                    if example.evidence == name:
                        lines.append(f"{label}\n```python\n{example.code.strip()}\n```")
            sections.append("\n\n".join(lines))
        return "\n\n".join(sections)


class CatalogError(Exception):
    pass


def _examples(raw: list[dict[str, object]], where: str) -> tuple[Example, ...]:
    out = []
    for item in raw:
        if "code" not in item:
            raise CatalogError(f"{where}: every example needs a 'code' string")
        out.append(
            Example(
                code=str(item["code"]),
                path=str(item.get("path", "example.py")),
                lines=tuple(int(n) for n in item.get("lines", ())),  # type: ignore[union-attr]
                fixed=str(item["fixed"]) if "fixed" in item else None,
                unsafe_fixed=str(item["unsafe_fixed"]) if "unsafe_fixed" in item else None,
                evidence=str(item.get("evidence", "")),
            )
        )
    return tuple(out)


def load_rule(path: Path) -> Rule:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read rule file: {exc}") from None
    missing = [key for key in _REQUIRED if key not in data]
    if missing:
        raise CatalogError(f"{path}: missing keys {', '.join(missing)}")
    if data["severity"] not in SEVERITIES:
        raise CatalogError(f"{path}: severity must be one of {', '.join(SEVERITIES)}")
    return Rule(
        code=data["code"],
        name=data["name"],
        summary=data["summary"],
        severity=data["severity"],
        rationale=data["rationale"],
        example=data["example"],
        use_instead=data["use_instead"],
        fix_safety=data.get("fix_safety", ""),
        options=tuple((str(k), str(v)) for k, v in data.get("options", {}).items()),
        references=tuple(data.get("references", ())),
        evidence=tuple((str(k), str(v)) for k, v in data.get("evidence", {}).items()),
        valid=_examples(data.get("valid", []), str(path)),
        invalid=_examples(data.get("invalid", []), str(path)),
        source=str(path),
    )


@cache
def load_catalog() -> dict[str, Rule]:
    """The shipped rules by code (each rule's logic lives in ``kvguard/lint/rules.py``)."""
    rules: dict[str, Rule] = {}
    for path in sorted(RULES_DIR.glob("*.toml")):
        rule = load_rule(path)
        rules[rule.code] = rule
    return rules


def find_rule(catalog: dict[str, Rule], key: str) -> Rule | None:
    """Look a rule up by code (case-insensitive) or by kebab-case name."""
    key = key.strip()
    for rule in catalog.values():
        if key.upper() == rule.code or key.lower() == rule.name:
            return rule
    return None
