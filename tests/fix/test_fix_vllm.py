"""--fix and --diff on real vLLM sources: the #43945 refactor by machine, and the 0.22.0 tree."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kvguard.config import Config
from kvguard.engine import check
from kvguard.fix.apply import fix as run_fix
from tests.fix.equivalence import compare_sites
from tests.fix.fix_helpers import SEVERITY, routed_sites
from tests.lint.test_vllm_real import AITER, ROCM, reconstruct_pre_43945
from tests.vllm_sources import vllm_tree

pytestmark = pytest.mark.vllm_sources


def _diff_counts(diff: str) -> tuple[int, int]:
    lines = diff.splitlines()
    added = sum(1 for x in lines if x.startswith("+") and not x.startswith("+++"))
    removed = sum(1 for x in lines if x.startswith("-") and not x.startswith("---"))
    return added, removed


@pytest.fixture
def reconstructed(tmp_path: Path) -> Path:
    tree = vllm_tree("0.23.0")
    for rel in (AITER, ROCM):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / AITER).write_text(reconstruct_pre_43945((tree / AITER).read_text()))
    (tmp_path / ROCM).write_text((tree / ROCM).read_text())
    return tmp_path


def test_fix_does_the_43945_refactor_minus_the_encoder_decoder_branch(kvguard, reconstructed):
    before = (reconstructed / AITER).read_text()
    diff = kvguard("check", "vllm", "--diff", cwd=reconstructed)
    assert diff.returncode == 1, diff.stderr
    assert (reconstructed / AITER).read_text() == before  # --diff writes nothing
    assert diff.stderr.strip().endswith("Would fix 4 findings (1 remaining).")
    added, removed = _diff_counts(diff.stdout)
    assert removed == 3 and 8 <= added <= 13, diff.stdout  # #43945 without its branch: ~+10/-3

    done = kvguard("check", "vllm", "--fix", "--format", "json", cwd=reconstructed)
    assert done.returncode == 1, done.stderr  # KVG003 stays: the ENCODER_DECODER view needs a human
    report = json.loads(done.stdout)
    assert report["summary"]["fixed"] == 4
    assert [f["code"] for f in report["findings"]] == ["KVG003"]
    after = (reconstructed / AITER).read_text()
    tree = ast.parse(after)
    impl = next(
        n
        for n in tree.body
        if isinstance(n, ast.ClassDef) and n.name == "RocmAiterUnifiedAttentionImpl"
    )
    methods = [n.name for n in impl.body if isinstance(n, ast.FunctionDef)]
    assert methods.count("_split_kv_cache") == 1
    assert methods[methods.index("__init__") + 1] == "_split_kv_cache"
    assert after.count("self._split_kv_cache(kv_cache)") == 3
    assert "kv_cache.unbind(1)" not in after.replace("return kv_cache.unbind(1)", "")
    # the same three call sites as vLLM's own fix, which 0.23.0 ships
    shipped = (vllm_tree("0.23.0") / AITER).read_text()
    assert shipped.count("self._split_kv_cache(kv_cache)") == 3

    again = kvguard("check", "vllm", "--fix", cwd=reconstructed)
    assert (reconstructed / AITER).read_text() == after
    assert "Fixed 0 findings (1 remaining)." in again.stdout
    clean = kvguard("check", "vllm", "--select", "KVG001,KVG004", cwd=reconstructed)
    assert clean.returncode == 0, clean.stdout


def test_reconstruction_equivalence_per_site(reconstructed: Path) -> None:
    cwd = os.getcwd()
    os.chdir(reconstructed)
    try:
        result = check(["vllm"], Config(), use_cache=False, severities=SEVERITY)
        assert result.index is not None
        original = (reconstructed / AITER).read_text()
        sites, declared, withheld = routed_sites(original, AITER, result.index)
        outcome = run_fix(
            result, Config(), result.index, unsafe=False, write=False, severities=SEVERITY
        )
    finally:
        os.chdir(cwd)
    assert len(sites) == 3 and withheld == {}
    fixed = outcome.files[0].new_text
    report = compare_sites(original, fixed, sites, declared)
    assert [c.ok for c in report.checked] == [True, True, True], report


def _copy_tree(version: str, target: Path) -> Path:
    shutil.copytree(vllm_tree(version) / "vllm", target / "vllm")
    return target


@pytest.mark.slow
@pytest.mark.parametrize("version", ["0.22.0", "0.33.0"])
def test_diff_over_a_vllm_tree(kvguard, tmp_path: Path, version: str) -> None:
    """Every proposed fix applies, parses, and gives the same views on every touched class."""
    root = _copy_tree(version, tmp_path)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    before = kvguard("check", "vllm", "--format", "json", cwd=root)
    findings = json.loads(before.stdout)["findings"]
    proposed = [f for f in findings if f["fix"] and f["fix"]["applicability"] == "safe"]
    withheld = [f for f in findings if f["fix_withheld"]]

    diff = kvguard("check", "vllm", "--diff", cwd=root)
    assert diff.returncode == 1, diff.stderr
    (root / "fix.diff").write_text(diff.stdout)
    applied = subprocess.run(
        ["git", "apply", "-p1", "--check", "fix.diff"], cwd=root, capture_output=True, text=True
    )
    assert applied.returncode == 0, applied.stderr
    originals = {}
    touched = sorted({line[6:] for line in diff.stdout.splitlines() if line.startswith("+++ b/")})
    for rel in touched:
        originals[rel] = (root / rel).read_text()
    subprocess.run(["git", "apply", "-p1", "fix.diff"], cwd=root, check=True)

    cwd = os.getcwd()
    os.chdir(root)
    try:
        result = check(["vllm"], Config(), use_cache=False, severities=SEVERITY)
    finally:
        os.chdir(cwd)
    checked, skipped = 0, []
    index = _index_with(originals, root)
    for rel in touched:
        fixed = (root / rel).read_text()
        ast.parse(fixed)  # the result parses
        sites, declared, _ = routed_sites(originals[rel], rel, index)
        report = compare_sites(originals[rel], fixed, sites, declared)
        assert [c for c in report.checked if not c.ok] == [], rel
        checked += len(report.checked)
        skipped += report.skipped
    # what remains: only findings that had no safe fix
    remaining = [f for f in result.findings if f.code in ("KVG001", "KVG004")]
    assert all(f.fix is None for f in remaining)
    again = kvguard("check", "vllm", "--diff", cwd=root)
    assert again.returncode == 0 and again.stdout == "", again.stdout
    counts = {
        "proposed": len(proposed),
        "fixed": len(findings) - len(result.findings),
        "withheld": len(withheld),
        "files": len(touched),
        "sites_equivalence_checked": checked,
        "skipped": skipped,
    }
    print(f"vLLM {version} --fix counts:", json.dumps(counts))
    assert counts["fixed"] == counts["proposed"] and checked > 0 and not skipped


def _index_with(originals: dict[str, str], root: Path):  # type: ignore[no-untyped-def]
    """The project index of the tree before the fix (the plan that the diff carried out)."""
    from kvguard.engine import build_index, kv_names, scan_source

    config = Config()
    names = kv_names(config)
    facts = {}
    for path in sorted((root / "vllm").rglob("*.py")):
        rel = str(path.relative_to(root))
        text = originals.get(rel) or path.read_text(encoding="utf-8")
        facts[rel] = scan_source(text, rel, names)
    return build_index(facts, config)
