"""libcst on snippets (the units the ast pass keeps) finds exactly what it finds on the
whole module: same findings, same positions, same messages."""

from __future__ import annotations

import pytest

from kvguard.catalog import load_catalog
from kvguard.config import Config
from kvguard.engine import build_index, kv_names, lint_source, scan_source

CATALOG = load_catalog()
SEVERITY = {code: rule.severity for code, rule in CATALOG.items()}

TRICKY = {
    "crlf": (
        "class Impl(AttentionImpl):\r\n"
        "    def forward(self, kv_cache):\r\n"
        "        k = kv_cache[0]\r\n"
        "        v = kv_cache[1]\r\n"
        "    def update(self, kv_cache):\r\n"
        "        k, v = kv_cache.unbind(\r\n"
        "            0)\r\n"
    ),
    "decorated, nested and in blocks": (
        "import functools\n"
        "if True:\n"
        "    def in_if(kv_cache):\n"
        "        return kv_cache[0] + 1\n"
        "class Outer:\n"
        "    class Inner(AttentionImpl):\n"
        "        @functools.cache\n"
        "        def forward(self, kv_cache):\n"
        "            k, v = kv_cache.unbind(0)\n"
        "        def update(self, kv_cache):\n"
        "            key = kv_cache[0]\n"
        "    if True:\n"
        "        def guarded(self, kv_cache):\n"
        "            return kv_cache.chunk(2, dim=1)[0] * 2\n"
        "try:\n"
        "    kv = layer.kv_cache\n"
        "    k = kv[0]; v = kv[1]\n"
        "except Exception:\n"
        "    pass\n"
    ),
    "tabs and a one-line class body": (
        "class Base(AttentionBackend): pass\n"
        "class Impl(AttentionImpl):\n"
        "\tdef forward(self, kv_cache):\n"
        "\t\tk = kv_cache[0]\n"
        "\t\tv = kv_cache[1]\n"
        "\tdef update(self, kv_cache): k, v = kv_cache.unbind(0)\n"
    ),
    "form feed and a string that looks like code": (
        "\x0c\n"
        'DOC = """\n'
        "def fake(kv_cache):\n"
        "    return kv_cache[0]\n"
        '"""\n'
        "def real(kv_cache):\n"
        "    return kv_cache[1] + 0\n"
    ),
}


def _both(text: str, path: str = "m.py") -> tuple[list, list]:
    """Findings with their fix (``Finding`` equality ignores it): whole module, snippets."""
    config = Config()
    facts = scan_source(text, path, kv_names(config))
    index = build_index({path: facts}, config)
    whole = lint_source(text, path, config, index, SEVERITY)
    parts = lint_source(text, path, config, index, SEVERITY, facts)
    return [(f, f.fix) for f in whole], [(f, f.fix) for f in parts]


@pytest.mark.parametrize("name", list(TRICKY))
def test_snippets_find_what_the_whole_module_finds(name: str) -> None:
    whole, parts = _both(TRICKY[name])
    assert whole, "each tricky input holds findings"
    assert parts == whole


@pytest.mark.parametrize(
    "example",
    [e for rule in CATALOG.values() for e in (*rule.invalid, *rule.valid)],
    ids=lambda e: e.code.strip().splitlines()[0][:40],
)
def test_catalog_examples_through_snippets(example) -> None:  # type: ignore[no-untyped-def]
    whole, parts = _both(example.code, example.path)
    assert parts == whole
