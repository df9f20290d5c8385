"""Does `kvguard check` cost grow linearly? Time it at 1x, 2x and 4x the size, in one run.

    python benchmarks/scaling.py                   # every scenario, default sizes
    python benchmarks/scaling.py --scale 0.5       # half the sizes (a quick look)

Scenarios (each generated under a temporary directory, checked with --no-cache):

- ``flat``: one directory of files, a quarter of them real vLLM 0.33 attention-backend
  files (their class names made unique per copy, as in a real project), the rest small
  modules that use a KV-cache name without splitting it;
- ``findings``: one generated file with a raw split (one KVG001 finding) every four lines;
- ``diff``: ``--diff --unsafe-fixes`` on that file (each finding has a fix: the runtime
  splitter, as the splits are in functions outside classes).

For each size it prints wall and CPU seconds (user + system of kvguard and its workers, the
run with the least CPU of --repeat), microseconds of CPU per file and per finding, and the
CPU ratio to the previous size. Linear cost doubles with the size: the target is a ratio
of at most 2.2 per doubling. CPU seconds move less than wall seconds on a shared machine,
but not nothing: quote the figures with ``uptime``.
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.vllm_sources import vllm_tree  # noqa: E402

TARGET = 2.2
_CLASS = re.compile(r"^class (\w+)", re.MULTILINE)
SMALL = "def describe(kv_cache):\n    return kv_cache.shape, kv_cache.dtype\n"


def _backends() -> list[str]:
    folder = vllm_tree("0.33.0") / "vllm" / "v1" / "attention" / "backends"
    return [p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.py"))]


def _unique(text: str, suffix: str) -> str:
    """The file with every class it defines renamed (and every use of those names)."""
    names = sorted(set(_CLASS.findall(text)), key=len, reverse=True)
    if not names:
        return text
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    return pattern.sub(lambda m: m.group(1) + suffix, text)


def make_flat(folder: Path, files: int, backends: list[str]) -> None:
    folder.mkdir(parents=True)
    for i in range(files):
        text = _unique(backends[i // 4 % len(backends)], f"_{i}") if i % 4 == 0 else SMALL
        (folder / f"m{i:06d}.py").write_text(text, encoding="utf-8")


def make_findings(folder: Path, lines: int) -> None:
    folder.mkdir(parents=True)
    unit = (
        "def f{i}(layer, query, kv_cache):\n    k, v = kv_cache.unbind(0)\n    run(query, k, v)\n\n"
    )
    text = "".join(unit.format(i=i) for i in range(lines // 4))
    (folder / "generated.py").write_text(text, encoding="utf-8")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(args: list[str], cwd: Path, repeat: int) -> tuple[float, float, dict]:
    """(wall s, CPU s, JSON report) of the run with the least CPU."""
    best, data = (float("inf"), float("inf")), {}
    for _ in range(repeat):
        cpu = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-m", "kvguard", "check", "--no-cache", "--no-progress", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
        )
        wall, used = time.perf_counter() - start, _children_cpu() - cpu
        if proc.returncode not in (0, 1):
            raise SystemExit(f"kvguard {' '.join(args)} failed: {proc.stderr[-800:]}")
        if used < best[1]:
            best = (wall, used)
            if "--output-format" in args:
                data = json.loads(proc.stdout)
    return best[0], best[1], data


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--only", choices=["flat", "findings", "diff"], action="append")
    args = parser.parse_args()
    scenarios = args.only or ["flat", "findings", "diff"]
    work = Path(tempfile.mkdtemp(prefix="kvguard-scaling-"))
    backends = _backends() if "flat" in scenarios else []
    failed = False
    try:
        for scenario in scenarios:
            base = {"flat": 6_000, "findings": 20_000, "diff": 20_000}[scenario]
            sizes = [int(base * args.scale * k) for k in (1, 2, 4)]
            unit = "files" if scenario == "flat" else "lines"
            print(f"\n{scenario}: sizes {', '.join(f'{s:,}' for s in sizes)} {unit}")
            header = ("size", "wall s", "CPU s", "us/file", "findings", "us/finding", "ratio")
            widths = (8, 8, 8, 9, 9, 11, 6)
            print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
            previous = None
            for size in sizes:
                folder = work / f"{scenario}-{size}"
                if scenario == "flat":
                    make_flat(folder, size, backends)
                else:
                    make_findings(folder, size)
                diff = ["--diff", "--unsafe-fixes", "."]  # functions: the runtime-splitter fix
                flags = diff if scenario == "diff" else ["--output-format", "json", "."]
                wall, cpu, data = timed(flags, folder, args.repeat)
                files = data.get("summary", {}).get("files", size if scenario == "flat" else 1)
                findings = data.get("summary", {}).get("findings", size // 4)
                ratio = cpu / previous if previous else None
                mark = (
                    "" if ratio is None else f"{ratio:6.2f}" + (" FAIL" if ratio > TARGET else "")
                )
                failed |= ratio is not None and ratio > TARGET
                print(
                    f"{size:>8,} {wall:8.2f} {cpu:8.2f} {1e6 * cpu / max(files, 1):9.0f} "
                    f"{findings:9,} {1e6 * cpu / max(findings, 1):11.0f} {mark}"
                )
                previous = cpu
                shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nevery doubling <= {TARGET}x: {'no' if failed else 'yes'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
