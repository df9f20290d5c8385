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
