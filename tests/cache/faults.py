"""Fault script: damage a real cache file in every way we can think of, and check that each
damaged cache gives exactly the findings of a run without cache, with no traceback.

    python -m tests.cache.faults [--random N] [--version 0.33.0]
    python -m tests.cache.faults --blind [--code DIR]

checks vLLM's ``v1/attention/backends`` tree (67 files, findings of every rule) against the
named corruptions below plus N seeded random ones, and prints a tally. The test suite runs
the same catalogue with a bounded count (``tests/cache/test_cache_faults.py``).

``--blind`` knows nothing of the format: it truncates (22 ways) and bit-flips (22 seeded
ways) whatever file the cache wrote, runs the CLI of the kvguard in DIR (default: this
one; a checkout of another revision, e.g. ``git worktree add /tmp/old main``, compares
two) and counts tracebacks and outputs that differ from a run without cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kvguard.cache import FORMAT, RACY_NS, Store, cache_file
from kvguard.config import Config
from kvguard.disk import SUFFIX
from kvguard.engine import CACHE_VERSION, Result, check

SEVERITY = {"KVG001": "error", "KVG002": "error", "KVG003": "error", "KVG004": "advice"}
Corruption = Callable[[bytes], bytes]
MARKER = "kvguard-pickle-ran"  # a file the pickled payload would create if it were unpickled


def _checksum(payload: bytes) -> bytes:
    return hashlib.blake2b(payload, digest_size=16).hexdigest().encode()


def _records(data: bytes) -> tuple[bytes, list[bytes]]:
    header, *lines = data.rstrip(b"\n").split(b"\n")
    return header, lines


def _join(header: bytes, lines: list[bytes]) -> bytes:
    return b"\n".join([header, *lines]) + b"\n"


def _resealed(mutate: Callable[[list], object], pick: Callable[[list[bytes]], int]) -> Corruption:
    """Change one record's JSON with ``mutate`` and give it a valid checksum again: only the
    type checks can then tell that it is wrong."""

    def corrupt(data: bytes) -> bytes:
        header, lines = _records(data)
        index = pick(lines)
        value = json.loads(lines[index][33:])
        mutate(value)
        payload = json.dumps(value).encode()
        lines[index] = _checksum(payload) + b" " + payload
        return _join(header, lines)

    return corrupt


def _with_facts(lines: list[bytes]) -> int:
    """The record with the most classes (a backend with a layout, if any)."""
    return max(
        range(len(lines)), key=lambda i: (lines[i].count(b"get_kv_cache_shape"), len(lines[i]))
    )


def _with_findings(lines: list[bytes]) -> int:
    return max(range(len(lines)), key=lambda i: lines[i].count(b"KVG00"))


def _set(path: tuple[int, ...], value: object) -> Callable[[list], object]:
    def mutate(record: list) -> None:
        target = record
        for step in path[:-1]:
            target = target[step]
        target[path[-1]] = value

    return mutate


def _axis_flip(data: bytes) -> bytes:
    """The issue's silent case: `axis 0` becomes `axis 9` in a stored message."""
    header, lines = _records(data)
    for i, line in enumerate(lines):
        if b"axis 0" in line or b"axis 1" in line:
            lines[i] = line.replace(b"axis 0", b"axis 9", 1).replace(b"axis 1", b"axis 9", 1)
            return _join(header, lines)
    raise AssertionError("no record mentions an axis")


def _evil_pickle(marker: Path) -> bytes:
    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    return pickle.dumps({"/x.py": Payload()})


def _deep_json(data: bytes) -> bytes:
    header, lines = _records(data)
    payload = b"[" * 200_000 + b"]" * 200_000
    return _join(header, [_checksum(payload) + b" " + payload, *lines[1:]])


def named_corruptions(data: bytes, marker: Path) -> Iterator[tuple[str, Corruption]]:
    """The catalogue: (name, corruption) pairs, each a function of the cache file's bytes."""
    size = len(data)
    header_end = data.index(b"\n")
    for fraction in (0.0, 0.001, 0.1, 0.25, 0.5, 0.75, 0.9, 0.999):
        cut = int(size * fraction)
        yield f"truncated at {cut} of {size} bytes", lambda d, c=cut: d[:c]
    yield "truncated inside the header", lambda d: d[: header_end // 2]
    yield "truncated one byte before the end", lambda d: d[:-2]
    for fraction in (0.0, 0.01, 0.2, 0.4, 0.6, 0.8, 0.95, 0.9999):
        at = min(int(size * fraction), size - 1)
        for bit in (0, 7):
            yield (
                f"bit {bit} flipped at byte {at}",
                lambda d, a=at, b=bit: d[:a] + bytes([d[a] ^ (1 << b)]) + d[a + 1 :],
            )
    yield "the issue's axis 0 -> axis 9", _axis_flip
    yield "empty file", lambda d: b""
    yield "zeros", lambda d: bytes(len(d))
    yield "header only", lambda d: d[: header_end + 1]
    yield "another format", lambda d: d.replace(FORMAT, b"kvguard-cache 999", 1)
    yield "another version", lambda d: d.replace(json.dumps(CACHE_VERSION).encode(), b'"0.0.0"', 1)
    yield "pickled dict of garbage", lambda d: pickle.dumps({"/x": b"\x80\x04garbage"})
    yield "pickle that runs code when loaded", lambda d: _evil_pickle(marker)
    yield "pickle magic then the records", lambda d: b"\x80\x04" + d
    yield "not UTF-8", lambda d: d.replace(b"\n", b"\n\xff\xfe", 3)
    yield "JSON nested 200,000 deep, valid checksum", _deep_json
    yield "records duplicated", lambda d: d + d[d.index(b"\n") + 1 :]
    yield "records reversed", lambda d: _join(_records(d)[0], _records(d)[1][::-1])
    yield "a record swapped to another path", _swap_paths
    yield "checksum of another record", _swap_checksums
    reseal = [
        ("path becomes a number", (0,), 17),
        ("stamp becomes a string", (1,), "stamp"),
        ("size becomes a float", (1, 0), 1.5),
        ("size becomes a bool", (1, 0), True),
        ("stamp loses a field", (1,), [1, 2, 3, 4]),
        ("content hash becomes null", (2,), None),
        ("facts become a dict", (4,), {"classes": []}),
        ("a class name becomes a list", (4, 0, 0, 0), ["x"]),
        ("a class line becomes a string", (4, 0, 0, 2), "126"),
        ("a class gains a field", (4, 0, 0), [*range(20)]),
        ("units become a string", (4, 1), "units"),
        ("imports become pairs of numbers", (4, 3), [[1, 2]]),
        ("error becomes a string", (5,), "error"),
        ("index key becomes a number", (6,), 5),
    ]
    for name, path, value in reseal:
        yield f"resealed: {name}", _resealed(_set(path, value), _with_facts)
    findings_reseal = [
        ("findings become a string", (7,), "KVG001"),
        ("a finding's line becomes a string", (7, 0, 1), "2"),
        ("a finding's code becomes null", (7, 0, 5), None),
        ("a finding's fix becomes a number", (7, 0, 8), 3),
        ("a finding loses its message", (7, 0), ["a.py", 1, 1, 1, 1, "KVG001", "error"]),
    ]
    for name, path, value in findings_reseal:
        yield f"resealed: {name}", _resealed(_set(path, value), _with_findings)
    yield "resealed: a record that is a dict", _resealed_whole({"path": "/x"})
    yield "resealed: a record that is a number", _resealed_whole(42)


def _resealed_whole(value: object) -> Corruption:
    def corrupt(data: bytes) -> bytes:
        header, lines = _records(data)
        payload = json.dumps(value).encode()
        return _join(header, [_checksum(payload) + b" " + payload, *lines[1:]])

    return corrupt


def _swap_paths(data: bytes) -> bytes:
    """Two records trade paths (valid checksums): each then describes a file whose stamp it
    does not have, and must be dropped by the stamp check, not trusted."""
    header, lines = _records(data)
    a, b = _with_findings(lines), _with_facts(lines)
    if a == b:
        b = (a + 1) % len(lines)
    first, second = json.loads(lines[a][33:]), json.loads(lines[b][33:])
    first[0], second[0] = second[0], first[0]
    for index, value in ((a, first), (b, second)):
        payload = json.dumps(value).encode()
        lines[index] = _checksum(payload) + b" " + payload
    return _join(header, lines)


def _swap_checksums(data: bytes) -> bytes:
    header, lines = _records(data)
    a, b = 0, len(lines) - 1
    lines[a], lines[b] = lines[b][:33] + lines[a][33:], lines[a][:33] + lines[b][33:]
    return _join(header, lines)


def random_corruptions(count: int, seed: int) -> Iterator[tuple[str, Corruption]]:
    rng = random.Random(seed)
    for _ in range(count):
        kind = rng.choice(("flip", "cut", "splice", "delete"))
        at, length, value = rng.random(), rng.randint(1, 64), rng.randbytes(64)

        def corrupt(d: bytes, k=kind, a=at, n=length, v=value) -> bytes:  # type: ignore[no-untyped-def]
            i = min(int(len(d) * a), max(len(d) - 1, 0))
            if k == "flip":
                return d[:i] + bytes([d[i] ^ (1 << (n % 8))]) + d[i + 1 :]
            if k == "cut":
                return d[:i]
            if k == "splice":
                return d[:i] + v[:n] + d[i + n :]
            return d[:i] + d[i + n :]

        yield f"random {kind} at {at:.4f} ({length})", corrupt


def outcome(result: Result) -> tuple[list, list]:
    """What a user sees: every finding with its message and fix, every error."""
    findings = [(f, f.message, f.fix) for f in result.findings]
    return findings, [(e.path, e.message) for e in result.errors]


class Bench:
    """A checked tree with its own cache directory; runs ``check`` in this process."""

    def __init__(self, tree: Path, cache: Path, paths: tuple[str, ...] = ("vllm",)) -> None:
        self.tree, self.cache, self.paths = tree, cache, list(paths)

    def run(self, use_cache: bool = True) -> Result:
        previous_dir, previous_env = os.getcwd(), os.environ.get("KVGUARD_CACHE_DIR")
        os.chdir(self.tree)
        os.environ["KVGUARD_CACHE_DIR"] = str(self.cache)
        try:
            return check(self.paths, Config(), use_cache=use_cache, jobs=1, severities=SEVERITY)
        finally:
            os.chdir(previous_dir)
            if previous_env is None:
                os.environ.pop("KVGUARD_CACHE_DIR", None)
            else:
                os.environ["KVGUARD_CACHE_DIR"] = previous_env

    def cache_path(self) -> Path:
        previous = os.getcwd()
        os.chdir(self.tree)
        os.environ["KVGUARD_CACHE_DIR"] = str(self.cache)
        try:
            return cache_file(CACHE_VERSION, Config().digest(), self.paths)
        finally:
            os.chdir(previous)

    def leftovers(self) -> list[str]:
        return sorted(p.name for p in self.cache.iterdir() if p.name.endswith(SUFFIX))


def settle(bench: Bench) -> bytes:
    """A warm cache whose records the file stamps prove (see ``cache.Stamp.proves``): the
    tree's files must be older than ``RACY_NS`` when they are read."""
    newest = max(p.stat().st_ctime_ns for p in bench.tree.rglob("*"))
    time.sleep(max(0.0, (newest + RACY_NS - time.time_ns()) / 1e9 + 0.05))
    bench.run()
    bench.run()
    return bench.cache_path().read_bytes()


def run_catalogue(
    bench: Bench, corruptions: Callable[[bytes], Iterator[tuple[str, Corruption]]], marker: Path
) -> tuple[int, list[str]]:
    """Apply each corruption to a settled cache; (how many ran, what went wrong)."""
    reference = outcome(bench.run(use_cache=False))
    clean = settle(bench)
    path = bench.cache_path()
    records = len(Store(path, CACHE_VERSION).entries)
    failures: list[str] = []
    count = 0
    for name, corrupt in corruptions(clean):
        count += 1
        path.write_bytes(corrupt(clean))
        try:
            got = outcome(bench.run())
        except Exception as exc:  # the point: report it, then keep going
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        if got != reference:
            failures.append(f"{name}: findings differ from a run without cache")
        if marker.exists():
            failures.append(f"{name}: the pickle ran code")
            marker.unlink()
        store = Store(path, CACHE_VERSION)
        if store.dropped or len(store.entries) != records:
            failures.append(f"{name}: the cache was not rewritten whole")
        if bench.leftovers():
            failures.append(f"{name}: temporary files left: {bench.leftovers()}")
    return count, failures


def blind(tree: Path, cache: Path, code: Path, seed: int) -> tuple[int, int]:
    """(tracebacks, other wrong outputs) of 44 format-blind corruptions, through the CLI."""
    env = dict(os.environ, KVGUARD_CACHE_DIR=str(cache), PYTHONPATH=str(code), NO_COLOR="1")

    def run(*extra: str) -> tuple[int, str, str]:
        proc = subprocess.run(
            [sys.executable, "-m", "kvguard", "check", "vllm", "--no-progress", *extra],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
        )
        return proc.returncode, proc.stdout, proc.stderr

    reference = run("--no-cache")
    newest = max(p.stat().st_ctime_ns for p in tree.rglob("*"))
    time.sleep(max(0.0, (newest + RACY_NS - time.time_ns()) / 1e9 + 0.05))
    run()
    run()
    (path,) = [p for p in cache.iterdir() if p.is_file()]
    clean = path.read_bytes()
    rng = random.Random(seed)
    tracebacks = wrong = 0
    for i in range(44):
        if i < 22:
            data = clean[: len(clean) * (i + 1) // 23]
        else:
            at = rng.randrange(len(clean))
            data = clean[:at] + bytes([clean[at] ^ (1 << rng.randrange(8))]) + clean[at + 1 :]
        path.write_bytes(data)
        got = run()
        if "Traceback" in got[2]:
            tracebacks += 1
        elif got != reference:
            wrong += 1
    return tracebacks, wrong


def main() -> None:
    from tests.vllm_sources import vllm_tree

    parser = argparse.ArgumentParser()
    parser.add_argument("--random", type=int, default=200)
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--version", default="0.33.0")
    parser.add_argument("--blind", action="store_true")
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[2])
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvguard-faults-"))
    source = vllm_tree(args.version) / "vllm/v1/attention/backends"
    shutil.copytree(source, work / "tree/vllm/v1/attention/backends")
    if args.blind:
        tracebacks, wrong = blind(work / "tree", work / "cache", args.code, args.seed)
        print(f"{args.code}: 44 corruptions, {tracebacks} tracebacks, {wrong} other wrong outputs")
        shutil.rmtree(work, ignore_errors=True)
        raise SystemExit(1 if tracebacks or wrong else 0)
    marker = work / MARKER
    bench = Bench(work / "tree", work / "cache")

    def catalogue(clean: bytes) -> Iterator[tuple[str, Corruption]]:
        yield from named_corruptions(clean, marker)
        yield from random_corruptions(args.random, args.seed)

    count, failures = run_catalogue(bench, catalogue, marker)
    print(f"{count} corrupted caches, {len(failures)} failures")
    for failure in failures:
        print(" ", failure)
    shutil.rmtree(work, ignore_errors=True)
    raise SystemExit(1 if failures else 0)


if __name__ == "__main__":
    main()
