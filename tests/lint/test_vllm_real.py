"""kvguard on real vLLM releases: the #43660 bug, its #43945 fix, and labelled precision/recall."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from kvguard.config import Config
from kvguard.engine import build_index, check, kv_names, lint_source, scan_source
from tests.lint.vllm_eval import score
from tests.vllm_sources import vllm_tree

pytestmark = pytest.mark.vllm_sources

AITER = "vllm/v1/attention/backends/rocm_aiter_unified_attn.py"
ROCM = "vllm/v1/attention/backends/rocm_attn.py"


def reconstruct_pre_43945(fixed: str) -> str:
    """Undo #43945 in 0.23.0's file: drop `_split_kv_cache`, inline `kv_cache.unbind(1)`."""
    method = re.compile(r"\n    def _split_kv_cache\(.*?(?=\n    def )", re.S)
    assert method.search(fixed), "0.23.0 no longer has _split_kv_cache: update the test"
    text = method.sub("\n", fixed)
    calls = "self._split_kv_cache(kv_cache)"
    assert text.count(calls) == 3
    return text.replace(calls, "kv_cache.unbind(1)")


@pytest.fixture(scope="module")
def tree_023() -> Path:
    return vllm_tree("0.23.0")


def _check(tmp_path: Path, files: dict[str, str]) -> list:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        return check(["vllm"], Config(), use_cache=False).findings
    finally:
        os.chdir(cwd)


def test_post_43660_state_is_flagged_at_all_three_sites(tree_023, tmp_path):
    fixed = (tree_023 / AITER).read_text()
    broken = reconstruct_pre_43945(fixed)
    findings = _check(tmp_path, {AITER: broken, ROCM: (tree_023 / ROCM).read_text()})
    lines = broken.splitlines()
    split_lines = [i for i, line in enumerate(lines, 1) if "kv_cache.unbind(1)" in line]
    assert len(split_lines) == 3
    kvg001 = sorted(f.line for f in findings if f.code == "KVG001" and f.path == AITER)
    assert kvg001 == split_lines
    kvg003 = [f for f in findings if f.code == "KVG003"]
    assert len(kvg003) == 1
    assert "RocmAiterUnifiedAttentionBackend" in kvg003[0].message
    assert "RocmAttentionBackend" in kvg003[0].message
    assert "blocks-first" in kvg003[0].explanation and "K/V-first" in kvg003[0].explanation
    assert any(
        f.code == "KVG004" and "RocmAiterUnifiedAttentionImpl" in f.message for f in findings
    )


def test_fixed_file_is_clean(tree_023, tmp_path):
    findings = _check(
        tmp_path, {AITER: (tree_023 / AITER).read_text(), ROCM: (tree_023 / ROCM).read_text()}
    )
    assert [f for f in findings if f.path == AITER] == []


def test_033_aiter_packing_diverges_from_rocm_head_slots():
    """vLLM 0.33: ROCM_ATTN's customize_spec puts K and V in two head slots; its AITER
    subclass keeps them packed in the content dim and takes ENCODER_DECODER (#43660 again)."""
    tree = vllm_tree("0.33.0")
    rocm = (tree / ROCM).read_text()
    aiter = (tree / AITER).read_text()
    assert "num_head_slots=2" in rocm and "AttentionType.ENCODER_DECODER" in aiter
    findings = check([str(tree / AITER), str(tree / ROCM)], Config(), use_cache=False).findings
    kvg003 = [f for f in findings if f.code == "KVG003"]
    assert len(kvg003) == 1, findings
    finding = kvg003[0]
    assert finding.path.endswith(AITER)
    assert aiter.splitlines()[finding.line - 1].strip().startswith("def customize_spec(")
    assert "RocmAttentionBackend declares K and V as two head slots" in finding.explanation
    assert "RocmAiterUnifiedAttentionBackend declares K|V packed" in finding.explanation


@pytest.mark.parametrize(
    ("version", "min_precision", "min_recall"),
    [("0.22.0", 0.95, 0.9), ("0.23.0", 0.95, 0.95), ("0.33.0", 0.9, 0.95)],
)
def test_precision_recall_against_hand_labels(version, min_precision, min_recall):
    result = score(vllm_tree(version), version)
    assert result.precision >= min_precision, result.false_positives
    assert result.recall >= min_recall, result.false_negatives


# Written out by hand (not taken from kvguard) so that the test does not trust the prefilter:
# every default name pattern and layout declaration contains one of these.
_CORES = (
    "kv_cache",
    "kv_buffer",
    "key_value_cache",
    "split_kv",
    "kv_split",
    "unpack_kv",
    "kv_views",
    "get_impl_cls",
    "get_kv_cache_shape",
    "supported_kv_cache_layouts",
    "customize_spec",
)


@pytest.mark.parametrize("version", ["0.22.0", "0.33.0"])
def test_prefilter_never_drops_a_finding(version):
    """Full libcst analysis of every file that spells a KV word equals the pipeline's result,
    fixes included (the pipeline plans them on snippets, ``--fix`` on whole modules)."""
    tree = vllm_tree(version)
    config = Config()
    names = kv_names(config)
    texts = {}
    for path in sorted((tree / "vllm").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if any(core in text for core in _CORES):
            texts[str(path.relative_to(tree))] = text
    facts = {rel: scan_source(text, rel, names) for rel, text in texts.items()}
    index = build_index(facts, config)
    full = set()
    for rel, text in texts.items():
        # no facts: every function of every whole module, no prefilter at any stage
        full |= {(f, f.fix) for f in lint_source(text, rel, config, index, {})}
    import os

    cwd = os.getcwd()
    os.chdir(tree)
    try:
        result = check(["vllm"], config, use_cache=False, severities={})
        piped = {(f, f.fix) for f in result.findings}
    finally:
        os.chdir(cwd)
    assert full, "the full analysis should find something in a real vLLM tree"
    assert full == piped


def test_vllm_033_tree_runs_clean_of_errors(tmp_path):
    tree = vllm_tree("0.33.0")
    target = tmp_path / "vllm"
    shutil.copytree(tree / "vllm", target)
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = check(["vllm"], Config(), use_cache=False)
    finally:
        os.chdir(cwd)
    assert result.errors == []
    assert result.files == len(list(target.rglob("*.py")))
