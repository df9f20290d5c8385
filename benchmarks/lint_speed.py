"""Time `kvguard check` over a whole vLLM source tree against ruff and fixit, in one run.

    python benchmarks/lint_speed.py                 # vLLM 0.33.0, all peers
    python benchmarks/lint_speed.py --skip-fixit    # fixit needs ~5 minutes on 2 cores

Prints wall-clock seconds (best of --repeat), the CPU seconds of that best run (user + system,
all processes; steadier than wall time on a shared machine) and ratios against ruff measured
in the same run. Peers: ruff with its default rules (--no-cache), fixit running
benchmarks/fixit_kv_rule.py.
"""

from __future__ import annotations

import argparse
import os
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


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], cwd: Path, env: dict[str, str], repeat: int) -> tuple[float, float]:
    """Best wall-clock seconds of ``repeat`` runs, and the CPU seconds of that run."""
    best = (float("inf"), 0.0)
    for _ in range(repeat):
        cpu = _children_cpu()
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        best = min(best, (wall, _children_cpu() - cpu))
        if proc.returncode not in (0, 1):
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--version", default="0.33.0")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-fixit", action="store_true")
    args = parser.parse_args()
    if shutil.which("ruff") is None:  # the peer every ratio is measured against
        raise SystemExit(
            "lint_speed.py: ruff is not on PATH; install it (`pip install ruff`) or put a "
            "virtual environment that has it first on PATH"
        )

    source = vllm_tree(args.version)
    work = Path(tempfile.mkdtemp(prefix="kvguard-bench-"))
    shutil.copytree(source / "vllm", work / "vllm")
    files = list((work / "vllm").rglob("*.py"))
    lines = sum(p.read_bytes().count(b"\n") for p in files)
    print(
        f"vLLM {args.version}: {len(files)} files, {lines / 1e6:.2f}M lines, {os.cpu_count()} CPUs"
    )

    env = dict(os.environ, KVGUARD_CACHE_DIR=str(work / "cache"), NO_COLOR="1")
    kvguard = [sys.executable, "-m", "kvguard", "check", "vllm", "--no-progress"]
    results: dict[str, tuple[float, float]] = {}
    results["ruff (default rules, --no-cache)"] = timed(
        ["ruff", "check", "--no-cache", "--quiet", "--exit-zero", "vllm"], work, env, args.repeat
    )
    results["kvguard cold (--no-cache)"] = timed([*kvguard, "--no-cache"], work, env, args.repeat)
    timed(kvguard, work, env, 1)  # fill the cache
    results["kvguard warm cache"] = timed(kvguard, work, env, args.repeat)
    target = work / "vllm/v1/attention/backends/triton_attn.py"
    best = (float("inf"), 0.0)
    for i in range(args.repeat):  # the pre-commit path: one changed file, passed by name
        target.write_text(target.read_text() + f"\n# edit {i}\n")
        best = min(
            best,
            timed([*kvguard[:4], str(target.relative_to(work)), "--no-progress"], work, env, 1),
        )
    results["kvguard one changed file"] = best
    results["python -c pass (interpreter start)"] = timed(
        [sys.executable, "-c", "pass"], work, env, args.repeat
    )
    if not args.skip_fixit:
        fixit_env = dict(env, PYTHONPATH=str(ROOT / "benchmarks"))
        results["fixit (one rule)"] = timed(
            [sys.executable, "-m", "fixit", "--rules", "fixit_kv_rule", "lint", "vllm"],
            work,
            fixit_env,
            1,
        )
    ruff, ruff_cpu = results["ruff (default rules, --no-cache)"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average before the last run: {load:.2f}")
    print(f"{'tool':<40}{'wall s':>9}{'x ruff':>8}{'CPU s':>9}{'x ruff':>8}")
    for name, (seconds, cpu) in results.items():
        print(f"{name:<40}{seconds:>9.3f}{seconds / ruff:>8.2f}{cpu:>9.3f}{cpu / ruff_cpu:>8.2f}")
    cold = results["kvguard cold (--no-cache)"][0]
    small = max(results["kvguard warm cache"][0], results["kvguard one changed file"][0])
    print(
        f"targets: cold <= ruff and <= 1.5 s: {'met' if cold <= min(ruff, 1.5) else 'NOT met'}; "
        f"warm/one file <= 0.3 s: "
        f"{'met' if small <= 0.3 else 'NOT met'}"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
