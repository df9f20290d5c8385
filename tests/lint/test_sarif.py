"""SARIF output against the official SARIF 2.1.0 JSON schema.

The schema is not vendored (OASIS documents carry no licence that clearly allows that): it
is downloaded once into ``~/.cache/kvguard-tests/sarif/`` (``KVGUARD_SARIF_SCHEMA`` names
another copy). Where OASIS's site cannot be reached (CI reaches package registries only),
the copy comes from the reference implementation instead: Microsoft's SARIF SDK multitool
(MIT; npm ``@microsoft/sarif-multitool-linux``) carries the 2.1.0 schema as an embedded
resource, read out of its single-file bundle. The schema test is skipped, with the reason,
only where neither can be had.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tarfile
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest
from kvg_helpers import BAD_SOURCE, SCATTERED_SOURCE, write

SCHEMA_URL = (
    "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
)
MULTITOOL = "@microsoft/sarif-multitool-linux@5.7.0"
SCHEMA_TITLE = b"Static Analysis Results Format (SARIF) Version 2.1.0 JSON Schema"


def _schema_from_multitool(directory: Path) -> bytes:
    """The 2.1.0 schema embedded in the SARIF SDK's multitool bundle (fetched with npm)."""
    npm = shutil.which("npm")
    if npm is None:
        raise OSError("npm is not on PATH")
    directory.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [npm, "pack", MULTITOOL, "--silent", "--pack-destination", str(directory)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    packs = sorted(directory.glob("microsoft-sarif-multitool-linux-*.tgz"))
    if proc.returncode != 0 or not packs:
        raise OSError(f"npm pack {MULTITOOL} failed: {proc.stderr.strip()[-200:]}")
    with tarfile.open(packs[-1]) as pack:
        member = pack.extractfile("package/Sarif.Multitool")
        if member is None:
            raise OSError(f"{packs[-1].name} holds no package/Sarif.Multitool")
        bundle = member.read()
    decoder = json.JSONDecoder()
    opening = re.compile(rb'\{\s*"\$schema"')
    for title in re.finditer(re.escape(SCHEMA_TITLE), bundle):
        starts = [
            m.start() for m in opening.finditer(bundle, max(0, title.start() - 400), title.start())
        ]
        if not starts:
            continue
        text = bundle[starts[-1] : starts[-1] + 4_000_000].decode("utf-8", "replace")
        try:
            schema, _ = decoder.raw_decode(text)
        except ValueError:
            continue
        if (
            isinstance(schema, dict)
            and "definitions" in schema
            and "runs" in schema.get("properties", {})
        ):
            return json.dumps(schema).encode()
    raise OSError(f"no SARIF 2.1.0 schema found in {packs[-1].name}")


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
            try:
                data = _schema_from_multitool(path.parent / "npm")
            except (OSError, subprocess.SubprocessError) as npm_exc:
                pytest.skip(f"cannot get the SARIF 2.1.0 schema ({exc}; {npm_exc}); offline?")
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
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft4Validator)
    validator = cls(schema, format_checker=jsonschema.FormatChecker())
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
