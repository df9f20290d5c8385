"""Check that every entry of vllm_labels.json matches its vLLM source line.

Usage: python tests/data/verify_labels.py [SRC_ROOT]

SRC_ROOT holds one extracted tree per version (SRC_ROOT/0.22.0/vllm/...).
Default: $KVGUARD_WHEELS_SRC, else ~/.cache/kvguard-wheels/src.
Stdlib only. Exit 0 when all entries match, 1 otherwise.
"""

import json
import os
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = {"version", "path", "line", "snippet", "label", "reason"}


def main(argv):
    root = (
        argv[1]
        if len(argv) > 1
        else os.environ.get(
            "KVGUARD_WHEELS_SRC",
            os.path.expanduser("~/.cache/kvguard-wheels/src"),
        )
    )
    with open(os.path.join(HERE, "vllm_labels.json"), encoding="utf-8") as f:
        entries = json.load(f)
    errors = []
    seen = set()
    cache = {}
    for i, e in enumerate(entries):
        if set(e) != KEYS:
            errors.append(f"#{i}: keys {sorted(e)}")
            continue
        if not isinstance(e["label"], bool) or not isinstance(e["line"], int):
            errors.append(f"#{i}: bad types")
        if not e["path"].startswith("vllm/") or not e["reason"].strip():
            errors.append(f"#{i}: bad path or empty reason")
        key = (e["version"], e["path"], e["line"])
        if key in seen:
            errors.append(f"#{i}: duplicate {key}")
        seen.add(key)
        fpath = os.path.join(root, e["version"], e["path"])
        if fpath not in cache:
            try:
                with open(fpath, encoding="utf-8") as f:
                    cache[fpath] = f.read().splitlines()
            except OSError as exc:
                cache[fpath] = exc
        lines = cache[fpath]
        if isinstance(lines, OSError):
            errors.append(f"#{i}: {fpath}: {lines}")
            continue
        if not 1 <= e["line"] <= len(lines):
            errors.append(f"#{i}: {e['path']}:{e['line']} out of range")
            continue
        actual = lines[e["line"] - 1].strip()
        if actual != e["snippet"]:
            errors.append(
                f"#{i}: {e['version']} {e['path']}:{e['line']}\n"
                f"  expected {e['snippet']!r}\n  actual   {actual!r}"
            )
    for err in errors:
        print(err)
    counts = Counter((e["version"], e["label"]) for e in entries)
    for (version, label), n in sorted(counts.items()):
        print(f"{version} {'true ' if label else 'false'} {n}")
    print(f"{len(entries)} entries, {len(errors)} errors")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
