"""The rule catalog: every rule file is complete, and its examples are the rule's tests."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from kvguard.catalog import RULES_DIR, SEVERITIES, Example, Rule, load_catalog, load_rule
from kvguard.config import Config
from kvguard.engine import build_index, check, kv_names, lint_source, scan_source

RULE_FILES = sorted(RULES_DIR.glob("*.toml"))
CATALOG = load_catalog()
SEVERITY = {code: rule.severity for code, rule in CATALOG.items()}
REQUIRED = ("code", "name", "summary", "severity", "rationale", "example", "use_instead")
HEADINGS = ("## What it does\n", "## Why is this bad?\n", "## Example\n", "## Use instead\n")


def _cases() -> list[pytest.param]:
    cases = []
    for code, rule in CATALOG.items():
        for kind, examples in (("invalid", rule.invalid), ("valid", rule.valid)):
            for i, example in enumerate(examples):
                cases.append(pytest.param(rule, kind, example, id=f"{code}-{kind}-{i}"))
    return cases


CASES = _cases()


def _lint(text: str, path: str, config: Config | None = None):  # type: ignore[no-untyped-def]
    config = config or Config()
    facts = scan_source(text, path, kv_names(config))
    index = build_index({path: facts}, config)
    return lint_source(text, path, config, index, SEVERITY)


# -- the files ------------------------------------------------------------------------


def test_the_four_shipped_rules_are_there() -> None:
    assert [p.stem for p in RULE_FILES] == ["KVG001", "KVG002", "KVG003", "KVG004"]
    assert list(CATALOG) == ["KVG001", "KVG002", "KVG003", "KVG004"]
    assert [r.name for r in CATALOG.values()] == [
        "raw-kv-split",
        "split-contradicts-declared-layout",
        "layout-diverges-from-base",
        "scattered-splits",
    ]


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.stem)
def test_rule_file_is_complete(path: Path) -> None:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    for key in REQUIRED:
        assert isinstance(data.get(key), str), f"{path.name}: '{key}' missing or not a string"
        assert data[key].strip(), f"{path.name}: '{key}' is empty"
    assert data["code"] == path.stem
    assert re.fullmatch(r"KVG\d{3}", data["code"])
    assert re.fullmatch(r"[a-z]+(-[a-z]+)*", data["name"]), data["name"]
    assert data["severity"] in SEVERITIES
    assert "\n" not in data["summary"].strip(), "the summary is one line (kvguard rules)"
    assert data.get("invalid"), f"{path.name}: needs at least one [[invalid]] example"
    assert data.get("valid"), f"{path.name}: needs at least one [[valid]] example"
    for example in data["invalid"]:
        assert example.get("lines"), f"{path.name}: an [[invalid]] example without 'lines'"
    for example in data["valid"]:
        assert "lines" not in example, f"{path.name}: a [[valid]] example with 'lines'"
    rule = load_rule(path)
    assert isinstance(rule, Rule)
    assert rule.code == data["code"]
    assert len(rule.invalid) == len(data["invalid"])
    assert len(rule.valid) == len(data["valid"])


@pytest.mark.parametrize("rule", CATALOG.values(), ids=lambda r: r.code)
def test_rule_doc_has_all_headings_in_order(rule: Rule) -> None:
    doc = rule.doc()
    assert doc.startswith(f"# {rule.name} ({rule.code})\n")
    positions = [doc.index(h) for h in HEADINGS]
    assert positions == sorted(positions)
    assert f"## What it does\n{rule.summary}\n" in doc
    assert f"## Example\n```python\n{rule.example.strip()}\n```" in doc
    assert f"## Use instead\n```python\n{rule.use_instead.strip()}\n```" in doc


def test_rule_names_and_codes_are_unique() -> None:
    assert len({r.name for r in CATALOG.values()}) == len(CATALOG)


# -- the examples ---------------------------------------------------------------------


@pytest.mark.parametrize(("rule", "kind", "example"), CASES)
def test_example_lines_are_inside_the_example(rule: Rule, kind: str, example: Example) -> None:
    count = len(example.code.splitlines())
    assert all(1 <= n <= count for n in example.lines), (example.lines, count)
    assert len(set(example.lines)) == len(example.lines)


@pytest.mark.parametrize(("rule", "kind", "example"), CASES)
def test_example(rule: Rule, kind: str, example: Example) -> None:
    """Invalid: flagged with the rule's code on exactly its lines. Valid: not flagged."""
    findings = _lint(example.code, example.path)
    got = sorted(f.line for f in findings if f.code == rule.code)
    if kind == "invalid":
        assert got == sorted(example.lines), "\n".join(
            f"{f.line}:{f.column} {f.code} {f.message}" for f in findings
        )
    else:
        assert got == [], "\n".join(f"{f.line}:{f.column} {f.code} {f.message}" for f in findings)
    for finding in findings:
        assert finding.path == example.path
        assert finding.severity == SEVERITY[finding.code]
        assert 1 <= finding.line <= finding.end_line
        assert finding.column >= 1


@pytest.mark.parametrize(("rule", "kind", "example"), CASES)
def test_example_through_the_whole_pipeline(
    rule: Rule, kind: str, example: Example, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same verdict from ``engine.check`` on a file (prefilter, index, suppressions)."""
    target = tmp_path / example.path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(example.code, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = check(["."], Config(), use_cache=False, jobs=1, severities=SEVERITY)
    assert result.errors == []
    assert result.files == 1
    got = sorted(f.line for f in result.findings if f.code == rule.code)
    assert got == (sorted(example.lines) if kind == "invalid" else [])
    assert {f.path for f in result.findings} <= {example.path}


@pytest.mark.parametrize("rule", CATALOG.values(), ids=lambda r: r.code)
def test_doc_example_is_flagged_and_use_instead_is_not(rule: Rule) -> None:
    bad = [f for f in _lint(rule.example.strip() + "\n", "example.py") if f.code == rule.code]
    good = [f for f in _lint(rule.use_instead.strip() + "\n", "example.py") if f.code == rule.code]
    assert bad, f"{rule.code}: the 'example' in the docs is not flagged"
    assert good == [], f"{rule.code}: the 'use_instead' in the docs is flagged"


def test_every_kind_of_evidence_has_a_flagged_and_a_clean_example() -> None:
    """KVG001's docs name each kind of evidence that clears a site, and the examples that
    test it: one the evidence clears and one it does not (the examples run above)."""
    rule = CATALOG["KVG001"]
    assert len(rule.evidence) >= 8
    names = {name for name, _ in rule.evidence}
    used = {e.evidence for e in (*rule.valid, *rule.invalid) if e.evidence}
    assert used == names, used ^ names
    for name in names:
        assert any(e.evidence == name for e in rule.valid), name
        assert any(e.evidence == name for e in rule.invalid), name
    doc = rule.doc()
    assert doc.index("## Use instead\n") < doc.index("## Evidence that clears a site\n")
    for name, text in rule.evidence:
        section = doc.split(f"### {name}\n", 1)[1].split("\n### ", 1)[0]
        assert section.lstrip().startswith(text.strip())
        assert "Flagged:\n```python" in section and "Not flagged:\n```python" in section


# -- kvguard rule / kvguard rules -----------------------------------------------------


@pytest.mark.parametrize("key", ["KVG001", "kvg001", "raw-kv-split", " KVG001 "])
def test_cli_rule_prints_the_doc(kvguard, key: str) -> None:
    proc = kvguard("rule", key)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert proc.stdout == CATALOG["KVG001"].doc()
    for heading in ("What it does", "Why is this bad?", "Example", "Use instead"):
        assert f"\n## {heading}\n" in proc.stdout


@pytest.mark.parametrize("code", list(CATALOG))
def test_cli_rule_for_every_code(kvguard, code: str) -> None:
    proc = kvguard("rule", code)
    assert (proc.returncode, proc.stdout) == (0, CATALOG[code].doc())


@pytest.mark.parametrize("key", ["KVG999", "raw-split", "KVG00"])
def test_cli_rule_unknown_code(kvguard, key: str) -> None:
    proc = kvguard("rule", key)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"kvguard: error: unknown rule {key!r}; `kvguard rules` lists the codes\n"
    )


def test_cli_rules_lists_all_four(kvguard) -> None:
    proc = kvguard("rules")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 4
    for line, rule in zip(lines, CATALOG.values(), strict=True):
        assert line.split()[:3] == [rule.code, rule.name, rule.severity]
        assert line.endswith(rule.summary)


def test_cli_rules_json(kvguard) -> None:
    proc = kvguard("rules", "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == [
        {"code": r.code, "name": r.name, "severity": r.severity, "summary": r.summary}
        for r in CATALOG.values()
    ]
