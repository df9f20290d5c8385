"""Inputs and helpers shared by the linter tests."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

# A function with one raw K/V split on line 2, column 30 (`kv_cache.unbind(1)`, 18 chars).
BAD_SOURCE = (
    "def forward(self, layer, query, kv_cache, attn_metadata):\n"
    "    key_cache, value_cache = kv_cache.unbind(1)\n"
    "    return key_cache, value_cache\n"
)
BAD_LINE = "    key_cache, value_cache = kv_cache.unbind(1)"
BAD_SPAN = (2, 30, 2, 48)  # line, column, end_line, end_column (1-based)
# The same function, split through a sanctioned splitter.
GOOD_SOURCE = (
    "def forward(self, layer, query, kv_cache, attn_metadata):\n"
    "    key_cache, value_cache = self._split_kv_cache(kv_cache)\n"
    "    return key_cache, value_cache\n"
)
# An impl class that splits inline in two methods: KVG001 on lines 3, 6, 7 and KVG004 on line 1.
SCATTERED_SOURCE = (
    "class MyImpl(AttentionImpl):\n"
    "    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output):\n"
    "        key_cache, value_cache = kv_cache.unbind(0)\n"
    "\n"
    "    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):\n"
    "        key_cache = kv_cache[0]\n"
    "        value_cache = kv_cache[1]\n"
)


def write(root: Path, rel: str, text: str | bytes) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _is_header(line: str) -> bool:
    head, _, rest = line.partition(" ")
    return head.count(":") == 3 and head.endswith(":") and rest.startswith("KVG")


def locations(stdout: str) -> list[str]:
    """``path:line:col: CODE`` of every finding in a text report, in order."""
    return [" ".join(line.split(" ", 2)[:2]) for line in stdout.splitlines() if _is_header(line)]


def tree_state(root: Path) -> dict[str, tuple[str, int]]:
    """Every regular file under root (symlinks not followed): content hash and mtime_ns."""
    state = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = Path(dirpath, name)
            if path.is_symlink() or not path.is_file():
                continue
            try:
                data = path.read_bytes()
            except PermissionError:
                data = b"<unreadable>"
            state[str(path.relative_to(root))] = (
                hashlib.sha256(data).hexdigest(),
                path.lstat().st_mtime_ns,
            )
    return state


def check_stdin(env: dict[str, str], cwd: Path, data: bytes | str, *args: str):  # type: ignore[no-untyped-def]
    """``python -m kvguard check ARGS`` with ``data`` on stdin (text in, text out for str)."""
    return subprocess.run(
        [sys.executable, "-m", "kvguard", "check", *args],
        cwd=cwd,
        env=env,
        input=data,
        capture_output=True,
        text=isinstance(data, str),
        timeout=120,
    )
