"""Mutated real vLLM attention-backend files, for the fuzz test and a longer fuzz run.

    python -m tests.lint.fuzzing --count 3000 --seed 1      # the long run: prints a tally

Each mutant is one real file with one damage: flipped bytes, a truncation, a deeply nested
expression, a huge line, other line endings or control characters, another encoding, or
lines spliced from another file. kvguard must answer each with findings, nothing, or one
error line that is not an internal error, and never with a traceback.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

Mutator = Callable[[bytes, random.Random, list[bytes]], bytes]


def _flip(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if out:
            out[rng.randrange(len(out))] ^= rng.randint(1, 255)
    return bytes(out)


def _truncate(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    return data[: rng.randrange(len(data) + 1)]


def _nested(depth: int, rng: random.Random) -> str:
    form = rng.choice(["binop", "subscript", "attribute", "call", "not", "ifexp", "kv"])
    if form == "binop":
        return " + ".join(["a"] * depth)
    if form == "subscript":
        return "a" + "[0]" * depth
    if form == "attribute":
        return "a" + ".b" * depth
    if form == "call":
        return "f" + "()" * depth
    if form == "not":
        return "not " * depth + "a"
    if form == "ifexp":
        return " if c else ".join(["a"] * depth)
    return " + ".join(["kv_cache[0]"] * depth)  # splits all the way down


def _lines_of(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _indent_at(lines: list[bytes], index: int) -> bytes:
    line = lines[index] if index < len(lines) else b""
    return line[: len(line) - len(line.lstrip())]


def _deep(max_depth: int) -> Mutator:
    def mutate(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
        lines = _lines_of(data)
        at = rng.randrange(len(lines) + 1)
        indent = _indent_at(lines, at)
        expr = _nested(rng.randint(max_depth // 10, max_depth), rng)
        lines.insert(at, indent + b"x = " + expr.encode())
        return b"\n".join(lines)

    return mutate


def _huge_line(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    lines = _lines_of(data)
    at = rng.randrange(len(lines) + 1)
    indent = _indent_at(lines, at)
    kind = rng.choice(["list", "string", "comment", "kv"])
    n = rng.randint(10_000, 200_000)
    if kind == "list":
        line = b"x = [" + b", ".join(b"1" for _ in range(n)) + b"]"
    elif kind == "string":
        line = b"x = '" + b"a" * n * 5 + b"'"
    elif kind == "comment":
        line = b"# " + b"kv_cache " * n
    else:
        line = b"k, v = kv_cache.unbind(0); " * (n // 100) + b"pass"
    lines.insert(at, indent + line)
    return b"\n".join(lines)


def _line_endings(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    kind = rng.choice(["crlf", "cr", "mixed", "formfeed", "vtab", "separators", "none"])
    if kind == "crlf":
        return data.replace(b"\n", b"\r\n")
    if kind == "cr":
        return data.replace(b"\n", b"\r")
    if kind == "none":
        return data.rstrip(b"\n")
    lines = _lines_of(data)
    for _ in range(rng.randint(1, 20)):
        i = rng.randrange(len(lines))
        if kind == "mixed":
            lines[i] += b"\r"
        elif kind == "formfeed":
            lines[i] = b"\x0c" + lines[i]
        elif kind == "vtab":
            lines[i] = lines[i] + b"\x0b"
        else:
            lines[i] = lines[i] + rng.choice([b"\xe2\x80\xa8", b"\x1c", b"\x85"])
    return b"\n".join(lines)


def _encoding(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    text = data.decode("utf-8", "replace")
    kind = rng.choice(["latin1", "utf16", "bom", "invalid", "nul", "cp1252-cookie", "bad-cookie"])
    if kind == "latin1":
        return b"# -*- coding: latin-1 -*-\n" + text.encode("latin-1", "replace")
    if kind == "utf16":
        return text.encode("utf-16")
    if kind == "bom":
        return b"\xef\xbb\xbf" + data
    if kind == "invalid":
        out = bytearray(data)
        out.insert(rng.randrange(len(out) + 1), rng.choice([0xFF, 0xC3, 0x80, 0xED]))
        return bytes(out)
    if kind == "nul":
        out = bytearray(data)
        out.insert(rng.randrange(len(out) + 1), 0)
        return bytes(out)
    if kind == "cp1252-cookie":
        return b"# coding: cp1252\n" + text.encode("cp1252", "replace")
    return b"# coding: no-such-codec\n" + data


def _splice(data: bytes, rng: random.Random, others: list[bytes]) -> bytes:
    lines, other = _lines_of(data), _lines_of(rng.choice(others))
    a = rng.randrange(len(lines) + 1)
    b = rng.randrange(len(other) + 1)
    return b"\n".join(lines[:a] + other[b : b + rng.randint(1, 200)] + lines[a:])


def _tabs(data: bytes, rng: random.Random, _: list[bytes]) -> bytes:
    lines = _lines_of(data)
    for _ in range(rng.randint(1, 30)):
        i = rng.randrange(len(lines))
        stripped = lines[i].lstrip(b" ")
        lines[i] = b"\t" * ((len(lines[i]) - len(stripped)) // 4) + stripped
    return b"\n".join(lines)


def mutators(max_depth: int) -> dict[str, Mutator]:
    return {
        "flip": _flip,
        "truncate": _truncate,
        "deep": _deep(max_depth),
        "huge-line": _huge_line,
        "line-endings": _line_endings,
        "encoding": _encoding,
        "splice": _splice,
        "tabs": _tabs,
    }


def backend_sources(version: str = "0.33.0") -> list[bytes]:
    from tests.vllm_sources import vllm_tree

    folder = vllm_tree(version) / "vllm" / "v1" / "attention" / "backends"
    return [p.read_bytes() for p in sorted(folder.rglob("*.py")) if p.stat().st_size > 2000]


def mutants(
    sources: list[bytes], count: int, seed: int, max_depth: int
) -> Iterator[tuple[str, str, bytes]]:
    """(file name, mutation, bytes) of ``count`` mutants, the same for the same seed."""
    rng = random.Random(seed)
    table = mutators(max_depth)
    kinds = sorted(table)
    for i in range(count):
        kind = kinds[i % len(kinds)]
        yield f"m{i:05d}_{kind}.py", kind, table[kind](rng.choice(sources), rng, sources)


def run(folder: Path, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    proc = subprocess.run(
        [sys.executable, "-m", "kvguard", "check", "--no-cache", "--output-format", "json", "."],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return proc, json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else {}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-depth", type=int, default=1500)
    parser.add_argument("--batch", type=int, default=500)
    args = parser.parse_args()
    sources = backend_sources()
    tally: Counter[str] = Counter()
    problems: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="kvguard-fuzz-") as tmp:
        batch: list[tuple[str, str, bytes]] = []
        all_mutants = list(mutants(sources, args.count, args.seed, args.max_depth))
        for begin in range(0, len(all_mutants), args.batch):
            batch = all_mutants[begin : begin + args.batch]
            folder = Path(tmp) / f"batch{begin}"
            folder.mkdir()
            for name, _, data in batch:
                (folder / name).write_bytes(data)
            proc, data = run(folder, timeout=3600)
            if proc.returncode not in (0, 1, 2) or "Traceback" in proc.stderr or not data:
                problems.append(f"batch {begin}: rc={proc.returncode} {proc.stderr[-2000:]}")
                continue
            errors = {e["path"]: e["message"] for e in data["errors"]}
            with_findings = {f["path"] for f in data["findings"]}
            for name, kind, _ in batch:
                if name in errors:
                    outcome = "internal" if errors[name].startswith("internal error") else "error"
                    if outcome == "internal":
                        problems.append(f"{name}: {errors[name]}")
                else:
                    outcome = "findings" if name in with_findings else "clean"
                tally[f"{kind}:{outcome}"] += 1
            tally["files"] += len(batch)
    elapsed = time.perf_counter() - start
    print(f"{tally['files']} mutants (seed {args.seed}) in {elapsed:.0f} s")
    for key in sorted(k for k in tally if k != "files"):
        print(f"  {key:<28} {tally[key]}")
    print(f"tracebacks or internal errors: {len(problems)}")
    for problem in problems:
        print("  " + problem)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
