"""Reports keep every layer the engine bound, judged or not, and read cleanly at 80 columns:
the header breaks only between phrases, no line ends in spaces, counts agree in number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from kvguard.runtime import Guard, KVLayoutMismatchError
from kvguard.runtime.merge import load_reports, merge
from kvguard.runtime.render import report_lines
from kvguard.vllm.logs import guard_on_line, summary_line

from .test_reports import LAYERS, _four_identical_violations

NEVER = ["model.layers.2.self_attn.attn", "model.layers.5.self_attn.attn"]


def _bindings(report: dict, names: list[str]) -> list[dict]:
    """What the vLLM plugin records for each bound layer (hooks.on_caches_bound)."""
    ptr = report["allocations"][0]["storage_ptr"]
    return [
        {
            "layer": name,
            "impl": "KVFirstImpl",
            "backend": "TEST",
            "attn_type": "decoder",
            "kv_sharing_target": None,
            "kv_cache": {"shape": [2, 8], "stride": [8, 1], "offset": 0, "storage_ptr": ptr},
        }
        for name in names
    ]


def _merged(tmp_path: Path, report: dict) -> dict:
    directory = tmp_path / "r"
    directory.mkdir(exist_ok=True)
    (directory / "kvguard-host-1.json").write_text(json.dumps(report))
    return merge(load_reports(directory))


def _text(merged: dict) -> list[str]:
    return [row for line in report_lines(merged["processes"]) for row in line.plain.split("\n")]


def test_layers_bound_but_never_called_are_listed_in_text_and_json(tmp_path):
    guard = _four_identical_violations("strict")
    report = guard.report()
    report["bindings"] = _bindings(report, LAYERS + NEVER)

    merged = _merged(tmp_path, report)
    lines = _text(merged)

    assert lines[0].startswith("kvguard report: 1 process, 6 layers (2 never called),")
    row = next(line for line in lines if "model.layers.{2,5}.self_attn.attn" in line)
    assert row.split()[:2] == ["never", "called"]
    assert any("2 layers: KVFirstImpl (TEST), decoder" in line for line in lines)
    assert merged["totals"]["layers"] == 6 and merged["totals"]["never_called"] == 2
    assert merged["processes"][0]["never_called"] == NEVER


def test_the_shutdown_line_counts_bound_layers_never_called():
    guard = _four_identical_violations("strict")
    bindings = _bindings(guard.report(), LAYERS + NEVER)

    _level, text = summary_line(guard, None, bindings)

    assert text == (
        "kvguard: summary (mode strict): 6 layers bound: 4 violation, 2 never called; "
        "4 violations, 1 root cause"
    )


def test_the_shutdown_line_says_1_layer():
    class KVFirst:
        def forward(self, layer, kv_cache):
            k, v = kv_cache.unbind(0)
            return k.sum() + v.sum()

    class Layer:
        layer_name = "only"

    guard = Guard("strict")
    guard.wrap(KVFirst)
    raw = torch.zeros(2 * 8 * 16)
    page = 2 * 16 * raw.element_size()  # blocks-first pages, read K/V-first
    guard.declare_allocation(raw, page_bytes=page, block_stride=page, num_blocks=8)
    with pytest.raises(KVLayoutMismatchError):
        KVFirst().forward(Layer(), raw.view(2, 8, 16))

    _level, text = summary_line(guard, None, [])

    assert text == (
        "kvguard: summary (mode strict): 1 layer: 1 violation; 1 violation, 1 root cause"
    )


def test_the_header_breaks_between_phrases_only(tmp_path):
    merged = _merged(tmp_path, _four_identical_violations("fix").report())
    lines = _text(merged)
    header = lines[: lines.index("")]

    assert len(header) == 2, header  # 83 columns on one line: it must wrap
    assert all(len(line) <= 80 for line in header)
    assert header[0].endswith(","), header  # the break is a phrase boundary
    assert header[1].strip() == "4 fixed"
    assert " ".join(line.strip() for line in header) == (
        "kvguard report: 1 process, 4 layers, 1 allocation: 4 violations, 1 root cause, 4 fixed"
    )


def test_no_line_of_a_report_ends_in_spaces(tmp_path):
    report = _four_identical_violations("strict").report()
    report["bindings"] = _bindings(report, LAYERS + NEVER)
    lines = _text(_merged(tmp_path, report))

    assert any(line.lstrip().startswith("key_cache ") for line in lines)  # the block map
    assert [line for line in lines if line != line.rstrip()] == []


def test_counts_read_in_the_singular_and_the_plural(tmp_path):
    report = _four_identical_violations("strict").report()
    lines = _text(_merged(tmp_path, report))
    bindings = _bindings(report, LAYERS[:1])

    assert any(line.endswith(", 4 declared page maps") for line in lines), lines[:6]
    assert guard_on_line("strict", bindings, 1) == (
        "kvguard: guard on (mode strict): 1 attention layer guarded on 1 KV-cache allocation; "
        "page maps declared by vLLM for 1, inferred for 0"
    )
