"""KVGUARD_REPORT files (written at the first violation and at exit, atomically) and
`kvguard report DIR` (merge, summary table, layout map; bad input -> one line, exit 2).

These need torch only: the violations come from the runtime scenarios' encoder-decoder case.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvguard.runtime import Guard, KVLayoutMismatchError
from kvguard.vllm.reports import ReportWriter

from .harness import impl_classes, run
from .test_scenarios import encoder_decoder

REPO = Path(__file__).resolve().parents[2]


def _violating_run(guard: Guard) -> None:
    classes = impl_classes()
    for c in classes.values():
        guard.wrap(c)
    seats, raw = encoder_decoder(classes)
    with contextlib.suppress(KVLayoutMismatchError):  # strict stops the run; the report stays
        run(seats, raw)


def test_report_is_written_at_the_first_violation(tmp_path):
    bindings: list[dict] = []
    writer_box: list[ReportWriter] = []
    guard = Guard("strict", on_violation=lambda v: writer_box[0].on_violation(v))
    writer_box.append(ReportWriter(str(tmp_path / "r"), guard, bindings))

    _violating_run(guard)

    (path,) = (tmp_path / "r").glob("*.json")
    data = json.loads(path.read_text())
    assert data["violations"][0]["layer"] == "dec.0.cross_attn"
    assert data["process"]["pid"] == os.getpid()
    assert not list((tmp_path / "r").glob(".kvguard-*"))  # no temporary file left behind


def _write_reports_in_a_subprocess(directory: Path, mode: str) -> None:
    """A process that switches the guard on the way the plugin does and exits normally."""
    code = (
        "from kvguard.vllm.hooks import install\n"
        "from tests.runtime.test_reports import _violating_run\n"
        f"_violating_run(install({mode!r}))\n"
    )
    env = {**os.environ, "KVGUARD_REPORT": str(directory), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, timeout=120)


def test_report_is_written_at_exit_and_renders(tmp_path, kvguard):
    _write_reports_in_a_subprocess(tmp_path / "r", "warn")
    _write_reports_in_a_subprocess(tmp_path / "r", "fix")
    assert len(list((tmp_path / "r").glob("*.json"))) == 2  # one per process

    proc = kvguard("report", str(tmp_path / "r"))

    assert proc.returncode == 1, proc.stderr
    assert "2 process(es)" in proc.stdout
    assert proc.stdout.count("layout map") == 2
    assert "dec.0.cross_attn" in proc.stdout and "BlocksFirstImpl" in proc.stdout
    merged = json.loads(kvguard("report", str(tmp_path / "r"), "--format", "json").stdout)
    assert merged["totals"]["violations"] == 2
    svg = tmp_path / "map.svg"
    assert kvguard("report", str(tmp_path / "r"), "--svg", str(svg)).returncode == 1
    assert svg.read_text().startswith("<svg")


def test_clean_reports_exit_zero(tmp_path, kvguard):
    directory = tmp_path / "r"
    directory.mkdir()
    guard = Guard("strict")
    classes = impl_classes()
    guard.wrap(classes["KVFirstImpl"])
    seats, raw = encoder_decoder(classes)
    run(seats[:1], raw)
    (directory / "one.json").write_text(json.dumps(guard.report()))

    proc = kvguard("report", str(directory))

    assert proc.returncode == 0, proc.stderr
    assert "0 violation(s)" in proc.stdout


def test_report_merging_needs_no_torch(tmp_path):
    _write_reports_in_a_subprocess(tmp_path / "r", "warn")
    code = (
        "import sys\n"
        "from kvguard.cli import main\n"
        f"rc = main(['report', {str(tmp_path / 'r')!r}])\n"
        "assert 'torch' not in sys.modules, 'kvguard report imported torch'\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1, proc.stderr


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        (lambda d: None, "no such directory"),
        (lambda d: d.mkdir(), "no *.json reports"),
        (lambda d: (d.mkdir(), (d / "a.json").write_text('{"layers": [')), "not a readable"),
        (lambda d: (d.mkdir(), (d / "a.json").write_text("[1, 2]")), "not a kvguard report"),
        (lambda d: d.write_text("x"), "not a directory"),
    ],
    ids=["missing", "empty", "corrupt", "not-a-report", "a-file"],
)
def test_bad_input_gets_one_line_and_exit_2(tmp_path, kvguard, setup, expected):
    directory = tmp_path / "reports"
    setup(directory)

    proc = kvguard("report", str(directory))

    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert str(directory) in lines[0]
