"""What the cache key costs on a whole vLLM tree: the stat fast path against keying by
content, and the warm runs that pay for it.

    python benchmarks/cache_key_cost.py            # vLLM 0.33.0 (3,231 files)
    python benchmarks/cache_key_cost.py --repeat 7

In this process, best of --repeat: one ``os.stat`` per file (what a warm run pays to
check its records: size, mtime, ctime, inode, device), reading and hashing every file
(what keying by content would pay instead), and loading the cache file (checksums,
JSON, type checks). Then ``kvguard check vllm`` in a subprocess: warm with every record
racy (the first run after the tree was written: each record is checked by content once),
warm with stamps that prove their records (every later run), and with one file changed
(the pre-commit path), each against ``python -c pass`` measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvguard.cache import RACY_NS, Store, cache_file  # noqa: E402
from kvguard.config import Config  # noqa: E402
from kvguard.engine import CACHE_VERSION  # noqa: E402
from tests.vllm_sources import vllm_tree  # noqa: E402


def best_of(repeat: int, action) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def read_and_hash(files: list[str]) -> None:
    for path in files:
        with open(path, "rb") as handle:
            hashlib.blake2b(handle.read(), digest_size=16).digest()


def run(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-500:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--version", default="0.33.0")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvguard-cachekey-"))
    try:
        shutil.copytree(vllm_tree(args.version) / "vllm", work / "vllm")
        files = sorted(str(p.resolve()) for p in (work / "vllm").rglob("*.py"))
        size = sum(os.path.getsize(p) for p in files)
        print(f"vLLM {args.version}: {len(files)} files, {size / 1e6:.1f} MB")
        env = dict(os.environ, KVGUARD_CACHE_DIR=str(work / "cache"), NO_COLOR="1")
        kvguard = [sys.executable, "-m", "kvguard", "check", "vllm", "--no-progress"]
        rows: dict[str, float] = {}
        run(kvguard, work, env)  # cold: fills the cache, every record racy
        rows["warm, every record racy (checked by content)"] = run(kvguard, work, env)
        # wait until the stamps prove themselves, then make the records say so
        time.sleep(RACY_NS / 1e9 + 0.1)
        run(kvguard, work, env)
        run(kvguard, work, env)
        rows["warm (stat fast path)"] = min(run(kvguard, work, env) for _ in range(args.repeat))
        target = work / "vllm/v1/attention/backends/triton_attn.py"
        one = []
        for i in range(args.repeat):
            target.write_text(target.read_text() + f"\n# edit {i}\n")
            one.append(run([*kvguard[:4], str(target.relative_to(work))], work, env))
        rows["one changed file, passed by name"] = min(one)
        rows["python -c pass"] = min(
            run([sys.executable, "-c", "pass"], work, env) for _ in range(args.repeat)
        )
        os.chdir(work)
        os.environ["KVGUARD_CACHE_DIR"] = env["KVGUARD_CACHE_DIR"]
        path = cache_file(CACHE_VERSION, Config().digest(), ["vllm"])
        assert Store(path, CACHE_VERSION).entries, "the runs wrote no cache"
        stat_s = best_of(args.repeat, lambda: [os.stat(p) for p in files])
        hash_s = best_of(args.repeat, lambda: read_and_hash(files))
        load_s = best_of(args.repeat, lambda: Store(path, CACHE_VERSION))
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(f"load average: {load:.2f}")
        print(f"{'in process':<48}{'ms':>8}")
        print(f"{'stat every file (the key: stamp)':<48}{stat_s * 1e3:>8.1f}")
        print(f"{'read and hash every file (keying by content)':<48}{hash_s * 1e3:>8.1f}")
        print(f"{'load and validate the cache file':<48}{load_s * 1e3:>8.1f}")
        print(f"{'kvguard, wall':<48}{'s':>8}{'x start':>9}")
        start = rows["python -c pass"]
        for name, seconds in rows.items():
            print(f"{name:<48}{seconds:>8.3f}{seconds / start:>9.2f}")
        small = max(rows["warm (stat fast path)"], rows["one changed file, passed by name"])
        print(f"target warm/one file <= 0.3 s: {'met' if small <= 0.3 else 'NOT met'}")
    finally:
        os.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
