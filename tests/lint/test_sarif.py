"""SARIF output against the official SARIF 2.1.0 JSON schema (OASIS errata 01).

The schema is not vendored (OASIS documents carry no licence that clearly allows that): it
is downloaded once into ``~/.cache/kvguard-tests/sarif/`` (``KVGUARD_SARIF_SCHEMA`` names
another copy), and the schema test is skipped, with the reason, where neither can be had.
"""

from __future__ import annotations

import json
import os
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from kvg_helpers import BAD_SOURCE, SCATTERED_SOURCE, write

SCHEMA_URL = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)


def _schema() -> dict:
    named = os.environ.get("KVGUARD_SARIF_SCHEMA")
    path = (
        Path(named) if named else Path.home() / ".cache/kvguard-tests/sarif/sarif-schema-2.1.0.json"
    )
    if not path.is_file():
        if named:
            pytest.skip(f"KVGUARD_SARIF_SCHEMA={named} does not exist")
        try:
            with urllib.request.urlopen(SCHEMA_URL, timeout=20) as response:
                data = response.read()
        except OSError as exc:
            pytest.skip(f"cannot download the SARIF 2.1.0 schema ({exc}); offline?")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return json.loads(path.read_text(encoding="utf-8"))


def _sarif(kvguard, cwd: Path, *args: str) -> dict:
    proc = kvguard("check", "--output-format", "sarif", *args, cwd=cwd)
    assert proc.returncode in (0, 1, 2), proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def awkward(tmp_path: Path) -> Path:
    """Findings in paths with spaces and non-ASCII, a non-ASCII line, a suppressed one,
    a warning and an error: everything the SARIF writer has to get right."""
    write(tmp_path, "dir with space/caf\u00e9.py", BAD_SOURCE)
    write(
        tmp_path,
        "wide.py",
        "def forward(self, kv_cache):\n    s = '\U0001f600'; k, v = kv_cache.unbind(0)\n",
    )
    write(tmp_path, "impl.py", SCATTERED_SOURCE)
    write(
        tmp_path,
        "quiet.py",
        BAD_SOURCE.replace("unbind(1)", "unbind(1)  # kvguard: ignore[KVG001]: re-strided above")
        + "x = 1  # kvguard: ignore[KVG01]\n",
    )
    write(tmp_path, "broken.py", "kv_cache = (\n")
    return tmp_path


def test_sarif_validates_against_the_official_schema(kvguard, awkward: Path) -> None:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is in the 'test' extra")
    schema = _schema()
    sarif = _sarif(kvguard, awkward, ".", str(awkward / "impl.py"))
    validator = jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker())
    errors = sorted(validator.iter_errors(sarif), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:10])


def _locations(sarif: dict) -> list[dict]:
    return [r["locations"][0]["physicalLocation"] for r in sarif["runs"][0]["results"]]


def test_uris_are_percent_encoded_and_resolve_to_the_files(kvguard, awkward: Path) -> None:
    sarif = _sarif(kvguard, awkward, ".")
    run = sarif["runs"][0]
    base = run["originalUriBaseIds"]["%SRCROOT%"]["uri"]
    assert base.startswith("file:///") and base.endswith("/")
    uris = {loc["artifactLocation"]["uri"] for loc in _locations(sarif)}
    assert "dir%20with%20space/caf%C3%A9.py" in uris
    for loc in _locations(sarif):
        artifact = loc["artifactLocation"]
        assert artifact["uriBaseId"] == "%SRCROOT%"
        assert all(ord(c) < 128 and c not in " \\" for c in artifact["uri"])
        resolved = unquote(urlsplit(base + artifact["uri"]).path)
        assert Path(resolved).is_file(), resolved


def test_absolute_paths_are_file_uris_without_a_base(kvguard, awkward: Path) -> None:
    outside = awkward / "sub"
    outside.mkdir()
    sarif = _sarif(kvguard, outside, str(awkward / "impl.py"))
    for loc in _locations(sarif):
        artifact = loc["artifactLocation"]
        assert "uriBaseId" not in artifact
        assert artifact["uri"] == (awkward / "impl.py").as_uri()


def test_columns_are_utf16_code_units(kvguard, awkward: Path) -> None:
    sarif = _sarif(kvguard, awkward, "wide.py")
    run = sarif["runs"][0]
    assert run["columnKind"] == "utf16CodeUnits"
    (region,) = [loc["region"] for loc in _locations(sarif)]
    line = "    s = '\U0001f600'; k, v = kv_cache.unbind(0)"
    start = line.index("kv_cache")  # 0-based, in code points
    # the emoji is one code point and two UTF-16 code units
    assert region["startColumn"] == start + 2
    assert region["endColumn"] == start + len("kv_cache.unbind(0)") + 2
    text = kvguard("check", "--output-format", "json", "wide.py", cwd=awkward).stdout
    assert json.loads(text)["findings"][0]["column"] == start + 1  # JSON: code points


def test_suppressed_findings_warnings_and_errors(kvguard, awkward: Path) -> None:
    sarif = _sarif(kvguard, awkward, "quiet.py", "broken.py")
    run = sarif["runs"][0]
    (result,) = run["results"]
    assert result["suppressions"] == [{"kind": "inSource", "justification": "re-strided above"}]
    notes = run["invocations"][0]["toolExecutionNotifications"]
    assert run["invocations"][0]["executionSuccessful"] is False
    levels = sorted(
        (n["level"], n["locations"][0]["physicalLocation"]["artifactLocation"]["uri"])
        for n in notes
    )
    assert levels == [("error", "broken.py"), ("warning", "quiet.py")]
    error = next(n for n in notes if n["level"] == "error")
    assert error["locations"][0]["physicalLocation"]["region"]["startLine"] == 1
