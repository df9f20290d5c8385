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
import torch

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
    assert "2 processes" in proc.stdout
    assert proc.stdout.count("per-block map") == 2
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
    assert "no violation" in proc.stdout


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


# What an operator reads --------------------------------------------------------------------
LAYERS = [f"model.layers.{i}.self_attn.attn" for i in (0, 1, 3, 4)]


def _four_identical_violations(mode: str) -> Guard:
    """Four layers in their own layer slots, each reading its blocks-first pages K/V-first."""
    from .harness import BS, D, H, Layer, N, Seat

    guard = Guard(mode)
    classes = impl_classes()
    for c in classes.values():
        guard.wrap(c)
    per = 2 * N * BS * H * D
    raw = torch.zeros(len(LAYERS) * per)
    page = 2 * BS * H * D * raw.element_size()
    guard.declare_allocation(
        raw,
        page_bytes=page,
        block_stride=page,
        layer_stride=N * page,
        layers=LAYERS,
        num_blocks=N,
    )
    seats = [
        Seat(
            classes["KVFirstImpl"](),
            Layer(name),
            lambda r, i=i: r[i * per : (i + 1) * per].view(2, N, BS, H, D),
            [0, 1, 2],
        )
        for i, name in enumerate(LAYERS)
    ]
    with contextlib.suppress(KVLayoutMismatchError):
        for s in seats:
            with contextlib.suppress(KVLayoutMismatchError):
                run([s], raw)
    return guard


def _report_dir(tmp_path: Path, guard: Guard) -> Path:
    directory = tmp_path / "r"
    directory.mkdir(exist_ok=True)
    (directory / "kvguard-host-1.json").write_text(json.dumps(guard.report()))
    return directory


@pytest.mark.parametrize("columns", ["80", "90"])
def test_report_fits_80_columns_and_keeps_every_name_whole(tmp_path, kvguard, columns):
    directory = _report_dir(tmp_path, _four_identical_violations("warn"))

    proc = kvguard("report", str(directory), COLUMNS=columns)

    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80, max(lines, key=len)
    assert "…" not in proc.stdout
    assert "model.layers.{0-1,3-4}.self_attn.attn" in proc.stdout
    assert "KVFirstImpl" in proc.stdout and "warned" in proc.stdout


def test_identical_violations_print_one_block_with_their_layers(tmp_path, kvguard):
    directory = _report_dir(tmp_path, _four_identical_violations("warn"))

    out = kvguard("report", str(directory)).stdout

    assert out.count("invariant violated") == 1, out
    assert "1 root cause" in out and "4 layers" in out
    assert len(out.splitlines()) <= 60, len(out.splitlines())


def test_layout_map_has_one_column_per_block(tmp_path, kvguard):
    from kvguard.runtime.render import block_map

    report = _four_identical_violations("warn").report()
    text = block_map(report, report["violations"][0]).plain
    header = next(line for line in text.splitlines() if "block 0" in line)
    assert all(f"block {b}" in header for b in range(4))
    rows = {line.split()[0]: line for line in text.splitlines() if line.startswith(" " * 6)}
    # blocks-first pages read K/V-first: block b's K lands in page b/2, its V half an allocation on
    assert rows["key_cache"].split()[1:4] == ["page", "0", "✓"]
    assert "✗" in rows["key_cache"] and "✓" not in rows["value_cache"]


def test_fix_mode_says_fixed_and_does_not_suggest_fix_mode(tmp_path, kvguard):
    guard = _four_identical_violations("fix")
    report = guard.report()
    assert {r["status"] for r in report["layers"]} == {"fixed"}
    message = report["violations"][0]["message"]
    assert "KVGUARD_MODE=fix" not in message and 'mode="fix"' not in message
    assert "re-strided" in message
    out = kvguard("report", str(_report_dir(tmp_path, guard))).stdout
    assert "fixed" in out and "run with" not in out
    assert kvguard("report", str(_report_dir(tmp_path, guard))).returncode == 1  # still a bug


def test_svg_is_a_drawing_of_pages_layers_and_collisions(tmp_path):
    import io

    import resvg_py
    from PIL import Image

    from kvguard.runtime.render import save_svg

    path = tmp_path / "map.svg"
    save_svg(_four_identical_violations("warn").report(), str(path))
    svg = path.read_text()
    assert svg.startswith("<svg") and 'class="page"' in svg and 'class="collision"' in svg
    png = resvg_py.svg_to_bytes(svg_string=svg)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    colours = {c for _, c in image.getcolors(maxcolors=1 << 16)}
    from kvguard.runtime.svg import COLLISION, layer_colour

    assert _hex(COLLISION) in colours  # collisions are marked
    assert _hex(layer_colour(0)) in colours and _hex(layer_colour(1)) in colours
    assert image.width >= 600 and image.height >= 200


def _hex(colour: str) -> tuple[int, int, int]:
    colour = colour.lstrip("#")
    return tuple(int(colour[i : i + 2], 16) for i in (0, 2, 4))
