"""On-disk results cache keyed by file content, configuration and kvguard version.

One pickle per (version, config, working directory, paths): a warm run stats files and
reads back facts and findings without opening unchanged sources. Writes are atomic.
``KVGUARD_CACHE_DIR`` moves it; ``--no-cache`` bypasses it.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

from kvguard.findings import FileError, Finding, Notice
from kvguard.lint.facts import FileFacts


@dataclass
class Entry:
    mtime_ns: int
    size: int
    content_hash: str
    facts: FileFacts | None
    error: FileError | None
    index_key: str = ""  # the project index the findings were computed against
    findings: tuple[Finding, ...] | None = None
    notices: tuple[Notice, ...] = ()  # warnings about its suppression comments


def cache_dir() -> Path:
    if "KVGUARD_CACHE_DIR" in os.environ:
        return Path(os.environ["KVGUARD_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "kvguard"


def cache_file(version: str, config_digest: str, paths: list[str]) -> Path:
    key = "\0".join([version, config_digest, os.getcwd(), *sorted(paths)])
    return cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.pickle"


def load(path: Path) -> dict[str, Entry]:
    try:
        with open(path, "rb") as handle:
            data = pickle.load(handle)
    except (OSError, EOFError, pickle.UnpicklingError, AttributeError, ImportError, TypeError):
        return {}
    return data if isinstance(data, dict) else {}


def save(path: Path, entries: dict[str, Entry]) -> None:
    """Best effort: a cache that cannot be written only costs speed next time."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        with os.fdopen(fd, "wb") as handle:
            pickle.dump(entries, handle, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
    except OSError:
        pass


def content_hash(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()
