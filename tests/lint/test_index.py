"""The project index resolves class names the way the module that uses them does."""

from __future__ import annotations

from pathlib import Path

import pytest
from kvg_helpers import write

from kvguard.config import Config
from kvguard.engine import check

SHAPE = (
    "    @staticmethod\n"
    "    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):\n"
    "        return {shape}\n"
)
BACKEND = (
    "{imports}\n\n"
    "class Backend(AttentionBackend):\n"
    "    @staticmethod\n"
    "    def get_impl_cls():\n"
    "        return Impl\n\n" + SHAPE
)
IMPL = (
    "class Impl(AttentionImpl):\n"
    "    def forward(self, layer, query, kv_cache):\n"
    "        key_cache, value_cache = kv_cache.unbind(0)\n"
)


@pytest.mark.parametrize(
    ("kvfirst_import", "blocks_import"),
    [
        ("from pkg.kvfirst_impl import Impl", "from pkg.blocks_impl import Impl"),
        ("from .kvfirst_impl import Impl", "from .blocks_impl import Impl"),
        (
            "from pkg import kvfirst_impl\nfrom pkg.kvfirst_impl import Impl as Impl",
            "from .blocks_impl import Impl",
        ),
    ],
)
def test_same_class_names_in_two_modules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kvfirst_import: str, blocks_import: str
) -> None:
    """Two backends named Backend, two impls named Impl: each impl is judged against the
    layout of the backend that imports it, not against the first ``Backend`` seen."""
    kvfirst = "(2, num_blocks, block_size, num_kv_heads, head_size)"
    blocks = "(num_blocks, 2, block_size, num_kv_heads, head_size)"
    write(tmp_path, "pkg/a_kvfirst.py", BACKEND.format(imports=kvfirst_import, shape=kvfirst))
    write(tmp_path, "pkg/b_blocks.py", BACKEND.format(imports=blocks_import, shape=blocks))
    write(tmp_path, "pkg/kvfirst_impl.py", IMPL)
    write(tmp_path, "pkg/blocks_impl.py", IMPL)
    monkeypatch.chdir(tmp_path)
    findings = check(["pkg"], Config(), use_cache=False, jobs=1).findings
    kvg002 = [(f.path, f.line) for f in findings if f.code == "KVG002"]
    assert kvg002 == [("pkg/blocks_impl.py", 3)]
    assert "Backend declares blocks-first" in next(
        f.explanation for f in findings if f.code == "KVG002"
    )


def test_a_base_class_is_found_through_the_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Mamba-named base in one module, a same-named plain base in another: the impl's
    lineage (and so whether its cache holds states) follows its own import."""
    write(
        tmp_path,
        "pkg/a_states.py",
        "class Base(MambaBase):\n    '''Its kv_cache holds states.'''\n",
    )  # found first
    write(
        tmp_path,
        "pkg/plain.py",
        "class Base(AttentionImpl):\n    '''Its kv_cache holds K and V.'''\n",
    )
    write(
        tmp_path,
        "pkg/z_impl.py",
        "from pkg.plain import Base\n\n\nclass Impl(Base):\n"
        "    def forward(self, kv_cache):\n        return kv_cache[0] + kv_cache[1]\n",
    )
    monkeypatch.chdir(tmp_path)
    findings = check(["pkg"], Config(), use_cache=False, jobs=1).findings
    assert [(f.path, f.code) for f in findings if f.code == "KVG001"] == [
        ("pkg/z_impl.py", "KVG001"),
        ("pkg/z_impl.py", "KVG001"),
    ]


# -- linear queries ----------------------------------------------------------------------


def _index_of_tree(root: Path):  # type: ignore[no-untyped-def]
    from kvguard.engine import build_index, kv_names, scan_source

    names = kv_names(Config())
    facts = {}
    for path in sorted(root.rglob("*.py")):
        display = str(path.relative_to(root))
        try:
            facts[display] = scan_source(path.read_text(encoding="utf-8"), display, names)
        except Exception:  # a file the engine would report holds no class here
            continue
    return build_index(facts, Config())


@pytest.mark.vllm_sources
@pytest.mark.parametrize("version", ["0.22.0", "0.33.0"])
def test_the_precomputed_maps_answer_what_a_scan_of_every_class_would(version: str) -> None:
    from tests.vllm_sources import vllm_tree

    index = _index_of_tree(vllm_tree(version))
    everything = list(index.classes())
    assert len(everything) > 500
    key = lambda c: (c.name, c.path)  # noqa: E731
    subclassed = 0
    for facts in everything:
        expected = [
            s
            for s in everything
            if key(s) != key(facts) and key(facts) in [key(c) for c in index.mro(s)]
        ]
        assert index.subclasses(facts) == expected, facts.name
        subclassed += bool(expected)
        backends = [
            b
            for b in everything
            if facts.name in b.impl_names and index.lookup(facts.name, near=b.path) is facts
        ]
        assert index.backends_of_impl(facts) == backends, facts.name
    assert subclassed > 50


def test_planning_walks_each_lineage_once_however_many_classes_have_fixes(
    tmp_path: Path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The old planner walked every class's lineage for each class with a fix plan
    (quadratic: 12.5 M walks at 25k files), and every linted file scanned every backend
    for KVG003; now each lineage is walked once, and the backends once."""
    from kvguard.lint.index import ProjectIndex

    walks, scans = [], []
    real, real_scan = ProjectIndex._lineage, ProjectIndex._divergences
    monkeypatch.setattr(ProjectIndex, "_lineage", lambda self, f: walks.append(f) or real(self, f))
    monkeypatch.setattr(
        ProjectIndex, "_divergences", lambda self: scans.append(1) or real_scan(self)
    )
    for i in range(120):
        base = f"Impl{i - 1}" if i % 3 else "AttentionImpl"
        write(tmp_path, f"pkg/m{i}.py", IMPL.replace("Impl(AttentionImpl)", f"Impl{i}({base})"))
    monkeypatch.chdir(tmp_path)
    result = check(["pkg"], Config(), use_cache=False, jobs=1)
    assert sum(f.fix is not None for f in result.findings) == 120
    assert len(walks) == len({(f.name, f.path) for f in walks}) <= 120
    assert len(scans) == 1  # KVG003's scan of every backend, once, not once per file
