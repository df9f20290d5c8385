"""Settings from ``[tool.kvguard]`` in the nearest pyproject.toml, then the command line."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, field, replace
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

_KEYS = {
    "select",
    "ignore",
    "extend-select",
    "per-file-ignores",
    "exclude",
    "extend-exclude",
    "kv-cache-names",
    "extend-kv-cache-names",
    "kv-cache-list-names",
    "splitter-names",
    "extend-splitter-names",
    "backend-bases",
    "rule-dirs",
}


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
    rule_dirs: tuple[str, ...] = ()
    source: str = field(default="", compare=False)

    def enabled(self, code: str, path: str = "") -> bool:
        def hit(prefixes: tuple[str, ...]) -> bool:
            return any(code.startswith(p) for p in prefixes) or "ALL" in prefixes

        if not hit(self.select) or hit(self.ignore):
            return False
        posix = Path(path).as_posix()
        return not any(
            hit(codes) and _path_matches(posix, pattern) for pattern, codes in self.per_file_ignores
        )

    def is_excluded(self, path: Path) -> bool:
        posix = path.as_posix()
        return any(
            fnmatch.fnmatchcase(path.name, pattern) or _path_matches(posix, pattern)
            for pattern in self.exclude
        )

    def digest(self) -> str:
        """Stable hash of everything that can change analysis results (for the cache key)."""
        payload = asdict(self)
        payload.pop("source")
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


def find_pyproject(start: Path) -> Path | None:
    """The nearest pyproject.toml with a [tool.kvguard] table, looking upward from start."""
    start = start.resolve()
    for directory in (start, *start.parents) if start.is_dir() else start.parents:
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            try:
                data = tomllib.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"{candidate}: cannot read config: {exc}") from None
            if "kvguard" in data.get("tool", {}):
                return candidate
    return None


def load_config(path: Path | None) -> Config:
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
    config = Config(source=str(path))
    base_dir = path.parent
    changes: dict[str, object] = {}
    if "select" in table:
        changes["select"] = _strings(table, "select", where)
    if "extend-select" in table:
        changes["select"] = (
            *changes.get("select", config.select),
            *_strings(table, "extend-select", where),
        )  # type: ignore[misc]
    if "ignore" in table:
        changes["ignore"] = _strings(table, "ignore", where)
    if "per-file-ignores" in table:
        pfi = table["per-file-ignores"]
        if not isinstance(pfi, dict):
            raise ConfigError(f"{where}: 'per-file-ignores' must be a table of glob = [codes]")
        changes["per_file_ignores"] = tuple((k, _strings(pfi, k, where)) for k in pfi)
    if "exclude" in table:
        changes["exclude"] = _strings(table, "exclude", where)
    if "extend-exclude" in table:
        changes["exclude"] = (
            *changes.get("exclude", config.exclude),
            *_strings(table, "extend-exclude", where),
        )  # type: ignore[misc]
    if "kv-cache-names" in table:
        changes["kv_cache_names"] = _strings(table, "kv-cache-names", where)
    if "extend-kv-cache-names" in table:
        changes["kv_cache_names"] = (
            *config.kv_cache_names,
            *_strings(table, "extend-kv-cache-names", where),
        )
    if "kv-cache-list-names" in table:
        changes["kv_cache_list_names"] = _strings(table, "kv-cache-list-names", where)
    if "splitter-names" in table:
        changes["splitter_names"] = _strings(table, "splitter-names", where)
    if "extend-splitter-names" in table:
        changes["splitter_names"] = (
            *config.splitter_names,
            *_strings(table, "extend-splitter-names", where),
        )
    if "backend-bases" in table:
        changes["backend_bases"] = _strings(table, "backend-bases", where)
    if "rule-dirs" in table:
        changes["rule_dirs"] = tuple(
            str((base_dir / d).resolve()) for d in _strings(table, "rule-dirs", where)
        )
    return replace(config, **changes)  # type: ignore[arg-type]
