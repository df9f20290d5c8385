"""``[tool.kvguard]`` in pyproject.toml (or ``--config``), through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kvg_helpers import BAD_SOURCE, GOOD_SOURCE, SCATTERED_SOURCE, locations, write

from kvguard.config import Config, ConfigError, load_config

CUSTOM_NAME = (
    "def forward(self, layer, query, paged_buf, attn_metadata):\n"
    "    k, v = paged_buf.unbind(0)\n"
    "    return k, v\n"
)
CUSTOM_SPLITTER = (
    "class Impl:\n"
    "    def carve(self, kv_cache):\n"
    "        k = kv_cache[0]\n"
    "        v = kv_cache[1]\n"
    "        return k + v\n"
)


def _pyproject(root: Path, body: str) -> Path:
    return write(root, "pyproject.toml", f"[project]\nname = 'demo'\n\n[tool.kvguard]\n{body}")


def _json(proc) -> dict:  # type: ignore[no-untyped-def]
    assert proc.returncode in (0, 1, 2), proc.stderr
    return json.loads(proc.stdout)


def _codes_by_path(proc) -> list[tuple[str, str]]:  # type: ignore[no-untyped-def]
    return [(f["path"], f["code"]) for f in _json(proc)["findings"]]


# -- select / ignore / per-file-ignores -----------------------------------------------


@pytest.fixture
def impl_project(tmp_path: Path) -> Path:
    write(tmp_path, "src/impl.py", SCATTERED_SOURCE)
    return tmp_path


@pytest.mark.parametrize(
    ("body", "codes"),
    [
        ("", ["KVG004", "KVG001", "KVG001", "KVG001"]),
        ('select = ["KVG004"]\n', ["KVG004"]),
        ('ignore = ["KVG001"]\n', ["KVG004"]),
        ('ignore = ["KVG"]\n', []),
        ('select = ["KVG002"]\nextend-select = ["KVG004"]\n', ["KVG004"]),
        ('select = ["KVG001", "KVG004"]\nignore = ["KVG004"]\n', ["KVG001"] * 3),
    ],
)
def test_select_and_ignore_in_pyproject(
    kvguard, impl_project: Path, body: str, codes: list[str]
) -> None:
    _pyproject(impl_project, body)
    proc = kvguard("check", "--format", "json", ".")
    assert [c for _, c in _codes_by_path(proc)] == codes
    assert proc.returncode == (1 if codes else 0)


def test_command_line_select_overrides_config(kvguard, impl_project: Path) -> None:
    _pyproject(impl_project, 'select = ["KVG004"]\n')
    proc = kvguard("check", "--format", "json", "--select", "KVG001", ".")
    assert [c for _, c in _codes_by_path(proc)] == ["KVG001"] * 3
    # --ignore adds to the configured ignore list
    _pyproject(impl_project, 'ignore = ["KVG004"]\n')
    proc = kvguard("check", "--format", "json", "--ignore", "KVG001", ".")
    assert (proc.returncode, _codes_by_path(proc)) == (0, [])


def test_unknown_code_in_config_select_exits_2(kvguard, impl_project: Path) -> None:
    _pyproject(impl_project, 'select = ["KVG042"]\n')
    proc = kvguard("check", ".")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "KVG042" in proc.stderr and len(proc.stderr.splitlines()) == 1


@pytest.fixture
def pfi_project(tmp_path: Path) -> Path:
    write(tmp_path, "proj/src/a.py", BAD_SOURCE)
    write(tmp_path, "proj/tests/test_a.py", BAD_SOURCE)
    write(tmp_path, "proj/tests/impl.py", SCATTERED_SOURCE)
    _pyproject(
        tmp_path / "proj",
        '[tool.kvguard.per-file-ignores]\n"tests/*.py" = ["KVG001"]\n"impl.py" = ["KVG004"]\n',
    )
    return tmp_path / "proj"


def test_per_file_ignores(kvguard, pfi_project: Path) -> None:
    for args in (["."], [], ["src", "tests"]):
        proc = kvguard("check", "--format", "json", *args, cwd=pfi_project)
        assert _codes_by_path(proc) == [("src/a.py", "KVG001")], args
        assert proc.returncode == 1


def test_per_file_ignores_apply_when_run_from_outside_the_project(
    kvguard, pfi_project: Path
) -> None:
    proc = kvguard("check", "--format", "json", "proj", cwd=pfi_project.parent)
    assert _codes_by_path(proc) == [("proj/src/a.py", "KVG001")]


# -- exclude --------------------------------------------------------------------------

EXCLUDED_BY_DEFAULT = [
    ".venv/lib/python3.11/site-packages/pkg/mod.py",
    "venv/mod.py",
    "build/lib/pkg/mod.py",
    "dist/mod.py",
    ".git/hooks/mod.py",
    ".tox/py311/mod.py",
    "node_modules/x/mod.py",
    "pkg.egg-info/mod.py",
    "pkg/__pycache__/mod.py",
    "site-packages/mod.py",
]


@pytest.fixture
def excluded_tree(tmp_path: Path) -> Path:
    write(tmp_path, "src/app.py", BAD_SOURCE)
    write(tmp_path, "gen/out.py", BAD_SOURCE)
    for rel in EXCLUDED_BY_DEFAULT:
        write(tmp_path, rel, BAD_SOURCE)
    return tmp_path


def test_default_excludes(kvguard, excluded_tree: Path) -> None:
    proc = kvguard("check", "--format", "json", ".")
    assert _codes_by_path(proc) == [("gen/out.py", "KVG001"), ("src/app.py", "KVG001")]
    assert _json(proc)["summary"]["files"] == 2


def test_explicit_file_in_an_excluded_directory_is_checked(kvguard, excluded_tree: Path) -> None:
    proc = kvguard("check", "--format", "json", "build/lib/pkg/mod.py")
    assert _codes_by_path(proc) == [("build/lib/pkg/mod.py", "KVG001")]


def test_extend_exclude_keeps_the_defaults(kvguard, excluded_tree: Path) -> None:
    _pyproject(excluded_tree, 'extend-exclude = ["gen"]\n')
    proc = kvguard("check", "--format", "json", ".")
    assert _codes_by_path(proc) == [("src/app.py", "KVG001")]


def test_exclude_replaces_the_defaults(kvguard, excluded_tree: Path) -> None:
    _pyproject(excluded_tree, 'exclude = ["gen", ".git"]\n')
    proc = kvguard("check", "--format", "json", ".")
    paths = [p for p, _ in _codes_by_path(proc)]
    assert "gen/out.py" not in paths
    assert ".git/hooks/mod.py" not in paths
    assert "src/app.py" in paths
    assert "build/lib/pkg/mod.py" in paths
    assert ".venv/lib/python3.11/site-packages/pkg/mod.py" in paths


def test_exclude_glob_with_a_directory_part(kvguard, excluded_tree: Path) -> None:
    write(excluded_tree, "src/gen_a.py", BAD_SOURCE)
    _pyproject(excluded_tree, 'extend-exclude = ["src/gen_*.py", "gen/*"]\n')
    proc = kvguard("check", "--format", "json", ".")
    assert _codes_by_path(proc) == [("src/app.py", "KVG001")]


def test_project_inside_a_directory_named_like_a_default_exclude(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "build/proj/src/app.py", BAD_SOURCE)
    proc = kvguard("check", "--format", "json", "build/proj")
    assert _codes_by_path(proc) == [("build/proj/src/app.py", "KVG001")]


# -- names ----------------------------------------------------------------------------


def test_extend_kv_cache_names(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "m.py", CUSTOM_NAME)
    write(tmp_path, "bad.py", BAD_SOURCE)
    before = kvguard("check", "--format", "json", ".")
    assert _codes_by_path(before) == [("bad.py", "KVG001")]
    _pyproject(tmp_path, 'extend-kv-cache-names = ["paged_buf"]\n')
    after = kvguard("check", ".")
    assert locations(after.stdout) == ["bad.py:2:30: KVG001", "m.py:2:12: KVG001"]
    assert "`paged_buf.unbind(0)`" in after.stdout


def test_kv_cache_names_replaces_the_defaults(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "m.py", CUSTOM_NAME)
    write(tmp_path, "bad.py", BAD_SOURCE)
    _pyproject(tmp_path, 'kv-cache-names = ["paged_*"]\n')
    proc = kvguard("check", "--format", "json", ".")
    assert _codes_by_path(proc) == [("m.py", "KVG001")]


def test_extend_splitter_names(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "m.py", CUSTOM_SPLITTER)
    before = kvguard("check", ".")
    assert locations(before.stdout) == ["m.py:3:13: KVG001", "m.py:4:13: KVG001"]
    _pyproject(tmp_path, 'extend-splitter-names = ["carve"]\n')
    after = kvguard("check", ".")
    assert (after.returncode, after.stdout) == (0, "All checks passed (1 file checked).\n")


def test_splitter_names_replaces_the_defaults(kvguard, tmp_path: Path) -> None:
    source = (
        "class Impl:\n"
        "    def _split_kv_cache(self, kv_cache):\n"
        "        k = kv_cache[0]\n"
        "        return k\n"
    )
    write(tmp_path, "m.py", source)
    assert kvguard("check", ".").returncode == 0
    _pyproject(tmp_path, 'splitter-names = ["carve"]\n')
    proc = kvguard("check", ".")
    assert locations(proc.stdout) == ["m.py:3:13: KVG001"]


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ("bogus-key = 1\n", "bogus-key"),
        ('selct = ["KVG001"]\n', "selct"),
        ('select = "KVG001"\n', "'select' must be a list of strings"),
        ("exclude = [1, 2]\n", "'exclude' must be a list of strings"),
        ('per-file-ignores = ["x"]\n', "per-file-ignores"),
        ('rule-dirs = ["rules"]\n', "unknown key(s) rule-dirs"),  # removed: rules are code
    ],
)
def test_bad_config_exits_2_with_one_line(kvguard, tmp_path: Path, body: str, needle: str) -> None:
    write(tmp_path, "bad.py", BAD_SOURCE)
    config = _pyproject(tmp_path, body)
    proc = kvguard("check", ".")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert len(proc.stderr.splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("kvguard: error: ")
    assert needle in proc.stderr
    if "cannot read" not in needle and "rule directory" not in needle:
        assert str(config) in proc.stderr


def test_invalid_toml_via_config_flag_exits_2(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "bad.py", BAD_SOURCE)
    config = write(tmp_path, "kvguard.toml", "select = [\n")
    proc = kvguard("check", "--config", str(config), ".")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"kvguard: error: {config}: cannot read config: ")
    assert len(proc.stderr.splitlines()) == 1


def test_invalid_toml_in_nearest_pyproject_exits_2(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "bad.py", BAD_SOURCE)
    _pyproject(tmp_path, "select = [\n")
    proc = kvguard("check", ".")
    assert proc.returncode == 2
    assert "pyproject.toml" in proc.stderr


def test_unknown_key_message_names_the_key_and_the_file(kvguard, tmp_path: Path) -> None:
    config = _pyproject(tmp_path, "bogus-key = 1\nselect = []\n")
    proc = kvguard("check", ".")
    assert proc.returncode == 2
    assert proc.stderr.startswith(
        f"kvguard: error: {config} [tool.kvguard]: unknown key(s) bogus-key;"
    )


def test_pyproject_without_kvguard_table_is_skipped_for_the_nearest_with_one(
    kvguard, impl_project: Path
) -> None:
    _pyproject(impl_project, 'select = ["KVG004"]\n')
    write(impl_project, "src/pyproject.toml", "[project]\nname = 'inner'\n")
    proc = kvguard("check", "--format", "json", ".", cwd=impl_project / "src")
    assert _codes_by_path(proc) == [("impl.py", "KVG004")]


def test_config_is_found_from_the_first_path(kvguard, impl_project: Path) -> None:
    _pyproject(impl_project, 'select = ["KVG004"]\n')
    proc = kvguard("check", "--format", "json", impl_project.name, cwd=impl_project.parent)
    assert _codes_by_path(proc) == [(f"{impl_project.name}/src/impl.py", "KVG004")]
    proc = kvguard(
        "check", "--format", "json", f"{impl_project.name}/src/impl.py", cwd=impl_project.parent
    )
    assert _codes_by_path(proc) == [(f"{impl_project.name}/src/impl.py", "KVG004")]


def test_config_flag(kvguard, impl_project: Path, tmp_path_factory) -> None:
    other = tmp_path_factory.mktemp("other")
    _pyproject(impl_project, 'select = ["KVG004"]\n')
    explicit = _pyproject(other, 'ignore = ["KVG004"]\n')
    proc = kvguard("check", "--format", "json", "--config", str(explicit), ".")
    assert [c for _, c in _codes_by_path(proc)] == ["KVG001"] * 3
    # a kvguard.toml holds the keys at top level
    toml = write(other, "kvguard.toml", 'select = ["KVG004"]\n')
    proc = kvguard("check", "--format", "json", "--config", str(toml), ".")
    assert [c for _, c in _codes_by_path(proc)] == ["KVG004"]
    # and an unknown key there is an error too
    write(other, "kvguard.toml", "nope = 1\n")
    proc = kvguard("check", "--config", str(toml), ".")
    assert proc.returncode == 2 and "nope" in proc.stderr


def test_config_flag_missing_file(kvguard, impl_project: Path) -> None:
    proc = kvguard("check", "--config", "missing.toml", ".")
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == "kvguard: error: missing.toml: config file not found\n"


def test_settings_change_invalidates_the_cache(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "m.py", CUSTOM_NAME)
    write(tmp_path, "ok.py", GOOD_SOURCE)
    assert kvguard("check", ".").returncode == 0
    _pyproject(tmp_path, 'extend-kv-cache-names = ["paged_buf"]\n')
    assert locations(kvguard("check", ".").stdout) == ["m.py:2:12: KVG001"]
    _pyproject(tmp_path, "")
    assert kvguard("check", ".").returncode == 0


# -- load_config directly -------------------------------------------------------------


def test_load_config_values(tmp_path: Path) -> None:
    path = _pyproject(
        tmp_path,
        'select = ["KVG001"]\nignore = ["KVG004"]\nextend-exclude = ["gen"]\n'
        'extend-kv-cache-names = ["buf"]\nextend-splitter-names = ["carve"]\n'
        '[tool.kvguard.per-file-ignores]\n"tests/*" = ["KVG001"]\n',
    )
    config = load_config(path)
    default = Config()
    assert config.select == ("KVG001",)
    assert config.ignore == ("KVG004",)
    assert config.exclude == (*default.exclude, "gen")
    assert config.kv_cache_names == (*default.kv_cache_names, "buf")
    assert config.splitter_names == (*default.splitter_names, "carve")
    assert config.per_file_ignores == (("tests/*", ("KVG001",)),)
    assert config.enabled("KVG001", "src/a.py")
    assert not config.enabled("KVG001", "tests/a.py")
    assert not config.enabled("KVG004", "src/a.py")
    assert config.digest() != default.digest()
    assert load_config(None) == default


def test_load_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(_pyproject(tmp_path, "x = 1\n"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.toml")


# -- backend-bases --------------------------------------------------------------------

INHERITED_IMPL = (
    "class PagedBase:\n"
    "    @staticmethod\n"
    "    def get_impl_cls():\n"
    "        return PagedImpl\n"
    "\n"
    "    @staticmethod\n"
    "    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):\n"
    "        return (2, num_blocks, block_size, num_kv_heads, head_size)\n"
    "\n"
    "\n"
    "class BlocksFirst(PagedBase):\n"
    "    @staticmethod\n"
    "    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):\n"
    "        return (num_blocks, 2, block_size, num_kv_heads, head_size)\n"
    "\n"
    "    @classmethod\n"
    "    def supports_attn_type(cls, attn_type):\n"
    "        return attn_type == AttentionType.ENCODER_DECODER\n"
)


def test_backend_bases_make_subclasses_backends(kvguard, tmp_path: Path) -> None:
    """A subclass that inherits get_impl_cls is a backend once its lineage names a base."""
    write(tmp_path, "backends.py", INHERITED_IMPL)
    before = kvguard("check", "--format", "json", ".")
    assert _codes_by_path(before) == []
    _pyproject(tmp_path, 'backend-bases = ["PagedBase"]\n')
    after = kvguard("check", "--format", "json", ".")
    assert _codes_by_path(after) == [("backends.py", "KVG003")]
    assert "BlocksFirst declares blocks-first" in _json(after)["findings"][0]["explanation"]
    assert _json(after)["findings"][0]["line"] == 13  # its get_kv_cache_shape


def test_replacing_and_extending_the_same_list(tmp_path: Path) -> None:
    path = _pyproject(tmp_path, 'kv-cache-names = ["buf"]\nextend-kv-cache-names = ["pages"]\n')
    assert load_config(path).kv_cache_names == ("buf", "pages")


def test_directory_excludes_are_relative_to_the_project(kvguard, tmp_path: Path) -> None:
    write(tmp_path, "proj/src/gen/out.py", BAD_SOURCE)
    write(tmp_path, "proj/src/app.py", BAD_SOURCE)
    _pyproject(tmp_path / "proj", 'extend-exclude = ["src/gen/*"]\n')
    for cwd, arg, prefix in ((tmp_path / "proj", ".", ""), (tmp_path, "proj", "proj/")):
        proc = kvguard("check", "--format", "json", arg, cwd=cwd)
        assert _codes_by_path(proc) == [(f"{prefix}src/app.py", "KVG001")], cwd
