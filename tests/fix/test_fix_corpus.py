"""--fix on the test corpus: equivalence on real tensors, idempotence, withheld fixes."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from kvguard.config import Config
from kvguard.engine import build_index, kv_names, lint_source, scan_source
from kvguard.lint.fixability import RUNTIME_LAYOUTS
from kvguard.runtime.layouts import LAYOUTS, split_kv_cache
from tests.fix.equivalence import compare_modules, compare_sites, load, signature
from tests.fix.fix_helpers import SEVERITY, fix_text, index_of, lint_text, routed_sites

CORPUS = Path(__file__).parent / "corpus"
FIXABLE = ["blocks_first", "kv_first_mixed", "packed", "base_splitter"]
SIZES = (3, 5, 7, 11)  # num_blocks, block_size, num_kv_heads, head_size (head_size = Impl's)


def _corpus(name: str) -> str:
    return (CORPUS / f"{name}.py").read_text(encoding="utf-8")


def _declared_shape(module_path: Path) -> tuple[int, ...]:
    module = load(module_path, f"kvguard_shape_{module_path.stem}")
    backend = next(getattr(module, n) for n in dir(module) if n.endswith("Backend"))
    return tuple(backend.get_kv_cache_shape(*SIZES))


@pytest.mark.parametrize("name", FIXABLE)
def test_fixed_classes_return_the_same_views(name: str, tmp_path: Path) -> None:
    original = _corpus(name)
    fixed = fix_text(original)
    assert fixed != original
    (tmp_path / "orig").mkdir()
    (tmp_path / "new").mkdir()
    before = tmp_path / "orig" / f"{name}.py"
    after = tmp_path / "new" / f"{name}.py"
    before.write_text(original)
    after.write_text(fixed)
    calls = compare_modules(before, after, _declared_shape(before))
    assert calls >= 4


@pytest.mark.parametrize("name", FIXABLE)
def test_isolated_comparison_agrees(name: str) -> None:
    """The harness used on vLLM (no import) on files that can also be imported."""
    original = _corpus(name)
    index = index_of({"impl.py": original})
    sites, declared, withheld = routed_sites(original, "impl.py", index)
    fixed = fix_text(original)
    report = compare_sites(original, fixed, sites, declared, [ast.parse(original)])
    assert report.skipped == []
    assert [c for c in report.checked if not c.ok] == []
    assert len(report.checked) == len(sites)
    assert withheld == {}


@pytest.mark.parametrize("name", sorted(p.stem for p in CORPUS.glob("*.py")))
def test_check_plans_on_snippets_what_fix_plans_on_the_whole_module(name: str) -> None:
    """``kvguard check`` plans each finding's fix on the snippets it parsed, ``--fix`` on
    the whole module: the same fixes, the same withheld notes (``Finding ==`` ignores fix)."""
    text, config = _corpus(name), Config()
    facts = scan_source(text, "impl.py", kv_names(config))
    index = build_index({"impl.py": facts}, config)
    whole = lint_source(text, "impl.py", config, index, SEVERITY)
    parts = lint_source(text, "impl.py", config, index, SEVERITY, facts)
    assert any(f.fix is not None or f.fix_withheld for f in whole)
    assert [(f, f.fix) for f in parts] == [(f, f.fix) for f in whole]


@pytest.mark.parametrize("name", FIXABLE)
def test_fixed_file_is_clean_and_a_second_fix_changes_nothing(name: str) -> None:
    fixed = fix_text(_corpus(name))
    codes = {f.code for f in lint_text(fixed)}
    assert not codes & {"KVG001", "KVG004"}, codes
    assert fix_text(fixed) == fixed


def test_one_splitter_per_class_placed_after_init_or_before_the_first_method() -> None:
    fixed = fix_text(_corpus("blocks_first"))
    tree = ast.parse(fixed)
    impl = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "BlocksFirstImpl")
    names = [n.name for n in impl.body if isinstance(n, ast.FunctionDef)]
    assert names[:2] == ["__init__", "_split_kv_cache"]
    assert names.count("_split_kv_cache") == 1
    doc = ast.get_docstring(impl.body[1])  # type: ignore[arg-type]
    assert "blocks-first (num_blocks, 2, block_size, num_kv_heads, head_size)" in " ".join(
        doc.split()  # type: ignore[union-attr]
    )
    assert "BlocksFirstBackend" in doc  # type: ignore[operator]
    mixed = ast.parse(fix_text(_corpus("kv_first_mixed")))
    impl = next(n for n in mixed.body if isinstance(n, ast.ClassDef) and n.name == "KvFirstImpl")
    methods = [n.name for n in impl.body if isinstance(n, ast.FunctionDef)]
    assert methods[0] == "_split_kv_cache"
    assert isinstance(impl.body[1], ast.Assign)  # `scale = 1.0` stays before it


def test_existing_base_splitter_is_reused_not_duplicated() -> None:
    original = _corpus("base_splitter")
    fixed = fix_text(original)
    assert fixed.count("def _split_kv_cache") == 1
    assert (
        fixed.count("self._split_kv_cache(kv_cache)")
        == original.count("self._split_kv_cache(kv_cache)") + 2
    )


def test_withheld_file_is_left_alone_and_says_why() -> None:
    original = _corpus("withheld")
    assert fix_text(original, unsafe=True) == original
    notes = {f.line: f.fix_withheld for f in lint_text(original) if f.code == "KVG001"}
    assert all(notes.values())
    assert "contradicts the declared layout (KVG002)" in notes[18]
    assert "no `self`" in notes[29]
    assert "reads hs" in notes[40]
    assert all(f.fix is None for f in lint_text(original))


def test_runtime_fix_is_unsafe_only_and_keeps_the_views(tmp_path: Path) -> None:
    original = _corpus("connector")
    assert fix_text(original) == original  # safe fixes only: nothing to do
    fixed = fix_text(original, unsafe=True)
    assert fixed.count("from kvguard.runtime import split_kv_cache\n") == 1
    # inside the existing import block, after its last import
    lines = fixed.splitlines()
    torch_line = next(i for i, line in enumerate(lines) if line.startswith("import torch"))
    assert lines[torch_line + 1] == "from kvguard.runtime import split_kv_cache"
    assert fix_text(fixed, unsafe=True) == fixed
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "connector.py").write_text(original)
    (tmp_path / "b" / "connector.py").write_text(fixed)
    old = load(tmp_path / "a" / "connector.py", "kvguard_conn_old")
    new = load(tmp_path / "b" / "connector.py", "kvguard_conn_new")
    kv_first = torch.randn(2, 3, 5, 7, 11)
    blocks_first = torch.randn(3, 2, 5, 7, 11)
    for cache in (kv_first, kv_first.transpose(1, 2).contiguous().transpose(1, 2)):
        assert signature(old.views_save("l", cache, None, None)) == signature(
            new.views_save("l", cache, None, None)
        )
    assert signature(old.views_load("l", blocks_first, None, None)) == signature(
        new.views_load("l", blocks_first, None, None)
    )
    # why it is unsafe: a cache of another layout now raises instead of splitting wrongly
    with pytest.raises(ValueError, match="blocks_first"):
        new.views_load("l", kv_first, None, None)


@pytest.mark.parametrize("name", sorted(RUNTIME_LAYOUTS))
def test_runtime_layout_table_matches_kvguard_runtime(name: str) -> None:
    shape_text, split = RUNTIME_LAYOUTS[name]
    sizes = dict(zip(("num_blocks", "block_size", "num_kv_heads", "head_size"), SIZES, strict=True))
    shape = eval(shape_text, {}, sizes)
    assert shape == LAYOUTS[name].kv_cache_shape(*SIZES)
    cache = torch.randn(shape)
    expected = eval(split, {}, {"kv_cache": cache, **sizes})
    assert signature(split_kv_cache(cache, name)) == signature(tuple(expected))


def test_the_equivalence_harness_catches_a_wrong_splitter(tmp_path: Path) -> None:
    """Both comparisons fail when the splitter hands back V as K (so they can fail)."""
    original = _corpus("blocks_first")
    wrong = fix_text(original).replace(
        "return kv_cache.unbind(1)", "return kv_cache.unbind(1)[::-1]"
    )
    assert wrong != fix_text(original)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "blocks_first.py").write_text(original)
    (tmp_path / "b" / "blocks_first.py").write_text(wrong)
    with pytest.raises(AssertionError):
        compare_modules(
            tmp_path / "a" / "blocks_first.py",
            tmp_path / "b" / "blocks_first.py",
            _declared_shape(tmp_path / "a" / "blocks_first.py"),
        )
    index = index_of({"impl.py": original})
    sites, declared, _ = routed_sites(original, "impl.py", index)
    report = compare_sites(original, wrong, sites, declared)
    assert report.checked and not any(c.ok for c in report.checked)


def test_two_classes_of_one_name_are_not_fixed_and_the_finding_says_so() -> None:
    from tests.lint.kvg_helpers import SCATTERED_SOURCE

    text = SCATTERED_SOURCE + "\n\n" + SCATTERED_SOURCE
    assert fix_text(text) == text
    findings = [f for f in lint_text(text) if f.code == "KVG001"]
    assert findings and all(f.fix is None for f in findings)
    assert all("more than one class MyImpl" in f.fix_withheld for f in findings)
