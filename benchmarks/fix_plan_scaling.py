"""Fix planning must cost the same per file however large the project: time it at 1x, 2x
and 4x a generated project, in one run.

    python benchmarks/fix_plan_scaling.py             # 1,000 / 2,000 / 4,000 modules
    python benchmarks/fix_plan_scaling.py --base 500 --repeat 3

Each module holds an attention backend (declared shape, impl link) and its impl class,
which splits the cache inline in two methods (KVG001 x3, KVG004, all fixable); every fifth
impl derives from the previous module's and every tenth of those defines its own
``_split_kv_cache``, so that the subclass checks have lineages to walk. Timed, in this
process (``check`` with one job, no cache): the fix planning of every file
(``fixability.plan_file``, which the engine runs on each file with a fixable finding) and
the cross-file step of ``--fix`` (``apply._hazards``, over every file's plan). The cyclic
garbage collector is off, as ``kvguard`` turns it off (``cli.main``): its passes over a
growing heap would add a cost that is not kvguard's. Prints CPU milliseconds per file
(``time.process_time``, steadier than wall time on a shared machine; best of ``--repeat``
interleaved runs) and the ratio of each doubling (linear: about 2.0; the
target is at most 2.2).
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kvguard.config import Config  # noqa: E402
from kvguard.engine import check  # noqa: E402
from kvguard.fix import apply  # noqa: E402
from kvguard.lint import fixability  # noqa: E402

SEVERITY = {"KVG001": "error", "KVG002": "error", "KVG003": "error", "KVG004": "advice"}

MODULE = """\
from pkg.m{base} import Impl{base}


class Backend{i}(AttentionBackend):
    @staticmethod
    def get_impl_cls():
        return Impl{i}

    @staticmethod
    def get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size):
        return (2, num_blocks, block_size, num_kv_heads, head_size)


class Impl{i}({parent}):
{splitter}    def forward(self, layer, query, key, value, kv_cache, attn_metadata, output):
        key_cache, value_cache = kv_cache.unbind(0)
        return key_cache, value_cache

    def do_kv_cache_update(self, layer, key, value, kv_cache, slot_mapping):
        key_cache = kv_cache[0]
        value_cache = kv_cache[1]
        return key_cache, value_cache
"""
OWN_SPLITTER = """    def _split_kv_cache(self, kv_cache):
        return kv_cache.unbind(0)

"""


def generate(root: Path, count: int) -> None:
    package = root / "pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for i in range(count):
        derived = i % 5 == 4
        text = MODULE.format(
            i=i,
            base=i - 1 if derived else i,
            parent=f"Impl{i - 1}" if derived else "AttentionImpl",
            splitter=OWN_SPLITTER if derived and i % 50 == 49 else "",
        )
        if not derived:
            text = text.split("\n", 1)[1]  # no import
        (package / f"m{i}.py").write_text(text)


class Timer:
    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def wrap(self, function):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            start = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds += time.process_time() - start
                self.calls += 1

        return timed


def measure(count: int, work: Path) -> tuple[float, float, int]:
    """(planning s, --fix cross-file s, fixable findings) for a project of ``count``."""
    root = work / f"n{count}"
    generate(root, count)
    planning = Timer()
    real_plan = fixability.plan_file
    fixability.plan_file = planning.wrap(real_plan)
    previous = os.getcwd()
    os.chdir(root)
    try:
        result = check(["pkg"], Config(), use_cache=False, jobs=1, severities=SEVERITY)
    finally:
        fixability.plan_file = real_plan
        os.chdir(previous)
    fixable = sum(f.fix is not None for f in result.findings)
    assert result.index is not None
    parsed = {}
    for display in sorted({f.path for f in result.findings if f.fix is not None}):
        text = (root / display).read_text()
        parsed[display] = apply._parse_and_plan(text, display, Config(), result.index)
    start = time.process_time()
    apply._hazards(parsed, result.index)
    hazards = time.process_time() - start
    shutil.rmtree(root)
    return planning.seconds, hazards, fixable


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=2, help="best of this many runs")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kvguard-fixplan-"))
    gc.disable()
    try:
        best: dict[int, tuple[float, float, int]] = {}
        for _ in range(args.repeat):  # interleaved, so that a burst of load hits all sizes
            for scale in (1, 2, 4):
                count = args.base * scale
                plan, hazards, fixable = measure(count, work)
                old = best.get(count, (float("inf"), float("inf"), fixable))
                best[count] = (min(old[0], plan), min(old[1], hazards), fixable)
        rows = [(count, *times) for count, times in best.items()]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load average: {load:.2f}")
    header = ("modules", 8), ("fixable", 9), ("plan ms/file", 14), ("x prev", 8)
    header += ("--fix cross ms", 16), ("x prev", 8)
    print("".join(f"{name:>{width}}" for name, width in header))
    previous = None
    for count, plan, hazards, fixable in rows:
        plan_ratio = hazard_ratio = ""
        if previous is not None:
            plan_ratio = f"{plan / previous[0]:.2f}"
            hazard_ratio = f"{hazards / previous[1]:.2f}"
        print(
            f"{count:>8}{fixable:>9}{plan / count * 1e3:>14.3f}{plan_ratio:>8}"
            f"{hazards * 1e3:>16.1f}{hazard_ratio:>8}"
        )
        previous = (plan, hazards)


if __name__ == "__main__":
    main()
