"""The ast prescreen keeps every unit where libcst collects a split site, and drops the
units that the libcst rules surely leave alone (so that libcst does not parse them)."""

from __future__ import annotations

import pytest

from kvguard.catalog import load_catalog
from kvguard.config import Config
from kvguard.engine import build_index, kv_names, lint_source, parse_whole_module, scan_source
from kvguard.lint.checker import collect
from tests.lint.test_snippets import TRICKY
from tests.vllm_sources import vllm_tree

CONFIG = Config()
NAMES = kv_names(CONFIG)
CATALOG = load_catalog()


def _units_and_sites(files: dict[str, str]) -> tuple[set, set]:
    """(kept units, units where libcst collects a site) as (path, class, function)."""
    facts = {path: scan_source(text, path, NAMES) for path, text in files.items()}
    index = build_index(facts, CONFIG)
    kept = {(p, u.class_name, u.function) for p, f in facts.items() for u in f.units}
    sites = set()
    for path, text in files.items():
        model = collect(parse_whole_module(text), path, NAMES, index)
        sites |= {(path, s.class_name, s.function) for s in model.sites}
    return kept, sites


def _kept(text: str, path: str = "m.py") -> set[str | None]:
    return {u.function for u in scan_source(text, path, NAMES).units}


@pytest.mark.parametrize(
    "text",
    [*TRICKY.values(), *(e.code for r in CATALOG.values() for e in (*r.invalid, *r.valid))],
    ids=lambda t: t.strip().splitlines()[0][:40],
)
def test_examples_keep_every_unit_with_a_site(text: str) -> None:
    kept, sites = _units_and_sites({"m.py": text})
    assert sites <= kept


@pytest.mark.vllm_sources
@pytest.mark.parametrize("version", ["0.22.0", "0.33.0"])
def test_vllm_trees_keep_every_unit_with_a_site(version: str) -> None:
    tree = vllm_tree(version)
    files = {}
    for path in sorted((tree / "vllm").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        if NAMES.mentioned_in(text):
            files[str(path.relative_to(tree))] = text
    kept, sites = _units_and_sites(files)
    assert sites, "libcst should collect split sites in a real vLLM tree"
    assert sites <= kept, sorted(sites - kept)[:10]
    # and the prescreen is worth its keep: most units it walks are dropped
    assert len(kept) < 2 * len(sites)


SURELY_NO_SPLIT = {
    "a state picked from a Mamba cache": (
        "class MambaMixer(MambaBase):\n"
        "    def forward(self):\n"
        "        conv_state = self.kv_cache[0]\n"
        "        ssm_state = self.kv_cache[1]\n"
    ),
    "states bound by name": ("def forward(kv_cache):\n    conv_state, ssm_state = kv_cache\n"),
    "a cache picked from a list of caches": (
        "def register(self, kv_caches):\n"
        "    for name in names:\n"
        "        cache = kv_caches[name]\n"
        "        self.regions.append(self.device_kv_caches[name])\n"
    ),
    "blocks selected, not K or V": (
        "def copy(kv_cache, block_ids):\n    return kv_cache[block_ids], kv_cache[ids, ...]\n"
    ),
    "a piece only inspected": (
        "def check(kv_cache):\n    n = kv_cache[0].shape[1]\n    assert_same(kv_cache[1])\n"
    ),
    "chunks that are not halves": (
        "def f(kv_cache):\n    return kv_cache.chunk(4, dim=0), kv_cache.select(0, 7)\n"
    ),
    "an MLA latent cache": ("def forward(kv_cache):\n    return kv_cache[..., :512]\n"),
    "cache words that are only called or bound": (
        "def f(x):\n    if is_quantized_kv_cache(x):\n        kv_cache = make(x)\n"
    ),
}


@pytest.mark.parametrize("name", list(SURELY_NO_SPLIT))
def test_surely_no_split_is_dropped(name: str) -> None:
    text = SURELY_NO_SPLIT[name]
    path = "v1/attention/backends/mla/common.py" if "MLA" in name else "m.py"
    kept, sites = _units_and_sites({path: text})
    assert not sites, "libcst agrees there is nothing to report"
    assert not kept


def test_a_keyword_receiver_of_torch_is_kept() -> None:
    """libcst takes the first argument in the source, keyword or not; the old prescreen
    looked only at positional ones and dropped this finding."""
    text = "def forward(kv_cache):\n    k, v = torch.unbind(input=kv_cache, dim=0)\n"
    assert _kept(text) == {"forward"}
    config = Config()
    facts = scan_source(text, "m.py", NAMES)
    index = build_index({"m.py": facts}, config)
    whole = lint_source(text, "m.py", config, index, {})
    assert [f.code for f in whole] == ["KVG001"]
    assert lint_source(text, "m.py", config, index, {}, facts) == whole


def test_non_ascii_names_turn_name_based_dropping_off() -> None:
    """The ast normalizes identifiers (NFKC): a fullwidth ``c`` in ``conv`` reads as ``c``, while
    libcst (and its rules) see no state word in that name and report the split."""
    text = "def forward(kv_cache):\n    \uff43onv = kv_cache[0]\n"
    kept, sites = _units_and_sites({"m.py": text})
    assert sites == kept == {("m.py", None, "forward")}


def test_a_split_in_the_module_rest_is_kept() -> None:
    text = "import torch\nkv = layer.kv_cache\nk = kv[0]\n"
    assert _kept(text) == {None}


@pytest.mark.parametrize(
    ("text", "starts"),
    [
        ("k = kv_cache[0]", True),
        ("k, v = kv_cache.unbind(0)", True),
        ("k = kv_cache.view(2, -1)[0]", True),
        ("for name, c in kv_caches.items():", True),
        ("blocks = kv_cache.shape[0]", False),
        ("ptr = kv_cache.data_ptr()", False),
        ("cache = kv_cache", True),
        ("cache = (kv_cache)", True),
        ("for c in kv_caches:", True),
        ("for c in(kv_caches):", True),
        ("k, v = torch.unbind(kv_cache)", True),
        ("k, v = torch.chunk(\n    kv_cache, 2)", True),
        ("return(kv_cache)", True),
        ("x = f(a,  # why\n    kv_cache)", True),
        ("def forward(self, kv_cache: torch.Tensor):", False),
        ("def forward(\n    self,\n    kv_cache,\n):", False),
        ("out = attn(q, kv_cache)", False),
        ("out = attn(kv_cache, q)", False),
        ("out = attn(q, kv_cache=kv_cache)", False),
        ("def f(cache=kv_cache):", False),
        ("if (cache := kv_cache):", True),
        ("same = a == kv_cache", True),
        ("kv_cache = allocate()", False),
        ("if is_quantized_kv_cache(dtype):", False),
        ("pair = (a, kv_cache)", False),
        ("x = table[a, kv_cache]", False),
    ],
)
def test_where_a_receiver_may_start(text: str, starts: bool) -> None:
    """The text gate of a unit: the last cache word of each line decides."""
    last = max(text.rfind("kv_cache"), text.rfind("kv_caches"))
    assert NAMES.receiver_words(text)[-1:] == ([last] if starts else [])


def test_a_cache_only_passed_along_is_dropped() -> None:
    text = (
        "class Attention(nn.Module):\n"
        "    def forward(self, q, kv_cache: torch.Tensor, meta):\n"
        "        return self.impl.forward(self, q, kv_cache, meta)\n"
    )
    assert not _kept(text)
