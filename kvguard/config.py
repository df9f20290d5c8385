"""Settings from ``[tool.kvguard]`` in the nearest pyproject.toml, then the command line."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import tomllib
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property
from pathlib import Path

DEFAULT_EXCLUDE = (
    ".git",
    ".hg",
    ".svn",
    ".tox",
    ".nox",
    ".venv",
    "venv",
    ".eggs",
    "*.egg-info",
    "__pycache__",
    "build",
    "dist",
    "node_modules",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "site-packages",
)

# Identifiers (variable, parameter or attribute names) that denote one paged KV cache tensor.
DEFAULT_KV_CACHE_NAMES = (
    "kv_cache",
    "*_kv_cache",
    "kv_cache_tensor",
    "*_kv_cache_tensor",
    "kv_cache_raw",
    "key_value_cache",
    "kv_buffer",
    "kv_pages",
    "*_kv_pages",
)
# Identifiers that denote a sequence of caches (per layer or per virtual engine):
# indexing one of these once selects a cache, it does not split one.
DEFAULT_KV_CACHE_LIST_NAMES = ("kv_caches", "*_kv_caches", "kv_cache_list", "kv_cache_tensors")
DEFAULT_SPLITTER_NAMES = (
    "*split_kv*",
    "*kv_cache_split*",
    "*kv_split*",
    "*unpack_kv*",
    "*kv_views",
    "*kv_cache_views",
)
DEFAULT_BACKEND_BASES = ("AttentionBackend", "*AttentionBackend")

# [tool.kvguard] list keys: key -> (Config field, whether it extends rather than replaces).
# Replacing keys are applied first, so ``extend-*`` adds to the replaced list or the default.
_LIST_KEYS = {
    "select": ("select", False),
    "extend-select": ("select", True),
    "ignore": ("ignore", False),
    "exclude": ("exclude", False),
    "extend-exclude": ("exclude", True),
    "kv-cache-names": ("kv_cache_names", False),
    "extend-kv-cache-names": ("kv_cache_names", True),
    "kv-cache-list-names": ("kv_cache_list_names", False),
    "splitter-names": ("splitter_names", False),
    "extend-splitter-names": ("splitter_names", True),
    "backend-bases": ("backend_bases", False),
    "extend-backend-bases": ("backend_bases", True),
}
# [tool.kvguard] boolean keys: key -> Config field.
_BOOL_KEYS = {"force-exclude": "force_exclude", "respect-gitignore": "respect_gitignore"}
_KEYS = {*_LIST_KEYS, *_BOOL_KEYS, "per-file-ignores"}
# Files that hold settings, in the order they are looked for in each directory (ruff's
# order); a pyproject.toml counts only with a [tool.kvguard] table.
CONFIG_NAMES = (".kvguard.toml", "kvguard.toml", "pyproject.toml")


class ConfigError(Exception):
    pass


@dataclass(frozen=True)
class Config:
    select: tuple[str, ...] = ("KVG",)
    ignore: tuple[str, ...] = ()
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    kv_cache_names: tuple[str, ...] = DEFAULT_KV_CACHE_NAMES
    kv_cache_list_names: tuple[str, ...] = DEFAULT_KV_CACHE_LIST_NAMES
    splitter_names: tuple[str, ...] = DEFAULT_SPLITTER_NAMES
    backend_bases: tuple[str, ...] = DEFAULT_BACKEND_BASES
    force_exclude: bool = False  # apply exclude patterns to explicitly given files too
    respect_gitignore: bool = True  # walks skip what git ignores
    source: str = field(default="", compare=False)  # the file it was read from, if any

    def enabled(self, code: str, path: str = "") -> bool:
        def hit(prefixes: tuple[str, ...]) -> bool:
            return any(code.startswith(p) for p in prefixes) or "ALL" in prefixes

        if not hit(self.select) or hit(self.ignore):
            return False
        if not self.per_file_ignores:
            return True
        paths = self._match_paths(path)
        return not any(
            hit(codes) and any(_path_matches(p, pattern) for p in paths)
            for pattern, codes in self.per_file_ignores
        )

    def is_excluded(self, path: str) -> bool:
        """Whether the walk skips this file or directory below a checked directory.

        A pattern without a slash matches the entry's name (its parents were matched when
        the walk entered them, and the directories above the one being checked are not
        matched at all: a project under ``build/`` is checked). A pattern with a slash
        matches the path relative to the project (the config file's directory) or as shown.
        """
        if self._name_pattern.fullmatch(os.path.basename(path)):
            return True
        return bool(self._path_patterns) and any(
            fnmatch.fnmatchcase(p, pattern)
            for p in self._match_paths(path)
            for pattern in self._path_patterns
        )

    @cached_property
    def _name_pattern(self) -> re.Pattern[str]:
        names = [fnmatch.translate(p) for p in self.exclude if "/" not in p]
        return re.compile("|".join(names) if names else "(?!x)x")

    @cached_property
    def _path_patterns(self) -> tuple[str, ...]:
        return tuple(p for p in self.exclude if "/" in p)

    def _match_paths(self, path: str) -> tuple[str, ...]:
        """The path relative to the project root (like ruff), and as shown."""
        shown = Path(path).as_posix()
        if not self.source:
            return (shown,)
        root = os.path.dirname(os.path.abspath(self.source))
        relative = os.path.relpath(os.path.abspath(path), root)
        if relative.startswith(".."):
            return (shown,)
        return (Path(relative).as_posix(), shown)

    def digest(self) -> str:
        """Stable hash of everything that can change analysis results (for the cache key)."""
        payload = asdict(self)
        # per-file-ignores and excludes are matched relative to the config file's directory
        payload["source"] = os.path.dirname(os.path.abspath(self.source)) if self.source else ""
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _path_matches(posix: str, pattern: str) -> bool:
    if fnmatch.fnmatchcase(posix, pattern):
        return True
    # a pattern without a directory part matches at any depth, like ruff's
    return "/" not in pattern and any(fnmatch.fnmatchcase(p, pattern) for p in posix.split("/"))


def _strings(table: dict[str, object], key: str, where: str) -> tuple[str, ...]:
    value = table[key]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: '{key}' must be a list of strings")
    return tuple(value)


def find_config(start: Path) -> Path | None:
    """The nearest settings file, looking upward from start: ``.kvguard.toml`` or
    ``kvguard.toml``, or a ``pyproject.toml`` with a [tool.kvguard] table."""
    start = start.resolve()
    for directory in (start, *start.parents) if start.is_dir() else start.parents:
        for name in CONFIG_NAMES:
            candidate = directory / name
            if not candidate.is_file():
                continue
            if name != "pyproject.toml":
                return candidate
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{candidate}: cannot read config: {exc}") from None
            if "kvguard" in data.get("tool", {}):
                return candidate
    return None


_SELECTOR_KEYS = ("select", "extend-select", "ignore")


def is_selector(code: str, known: frozenset[str]) -> bool:
    """Whether ``code`` is ``ALL`` or a prefix of a known rule code."""
    return code == "ALL" or any(c.startswith(code) for c in known)


def _check_selectors(table: dict[str, object], where: str, known: frozenset[str]) -> None:
    """An unknown code in the file is named with the file and key, as other errors are."""
    named = [(f"'{key}'", code) for key in _SELECTOR_KEYS for code in table.get(key, ())]  # type: ignore[attr-defined]
    pfi = table.get("per-file-ignores", {})
    named += [(f"'per-file-ignores' {k!r}", c) for k, codes in pfi.items() for c in codes]  # type: ignore[attr-defined]
    for key, code in named:
        if not is_selector(code, known):
            raise ConfigError(
                f"{where}: {key} names unknown rule selector {code!r}; "
                "`kvguard rules` lists the codes"
            )


def load_config(path: Path | None, known: frozenset[str] | None = None) -> Config:
    """The settings in ``path`` (defaults without one). With ``known`` (the catalog's
    codes), every rule selector the file names must match one of them."""
    if path is None:
        return Config()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config: {exc}") from None
    table = data.get("tool", {}).get("kvguard", data if path.name != "pyproject.toml" else {})
    where = f"{path} [tool.kvguard]"
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KEYS))}"
        )
    changes: dict[str, tuple[str, ...]] = {}
    for extending in (False, True):
        for key, (name, extends) in _LIST_KEYS.items():
            if key in table and extends == extending:
                base = changes.get(name, getattr(Config, name)) if extends else ()
                changes[name] = (*base, *_strings(table, key, where))
    flags: dict[str, bool] = {}
    for key, name in _BOOL_KEYS.items():
        if key in table:
            if not isinstance(table[key], bool):
                raise ConfigError(f"{where}: '{key}' must be true or false")
            flags[name] = table[key]
    config = Config(source=str(path), **changes, **flags)  # type: ignore[arg-type]
    if "per-file-ignores" in table:
        pfi = table["per-file-ignores"]
        if not isinstance(pfi, dict):
            raise ConfigError(f"{where}: 'per-file-ignores' must be a table of glob = [codes]")
        config = replace(config, per_file_ignores=tuple((k, _strings(pfi, k, where)) for k in pfi))
    if known is not None:
        _check_selectors(table, where, known)
    return config
