"""Decode-step latency on vLLM's own Triton kernels with the kvguard runtime guard (warn, fix)
versus without it, eager and CUDA-graph-replayed, printed as ratios against a bare run
measured in the same process, interleaved round by round.

The model: `--layers` decoder layers, each a self-attention (K/V-first) and a cross-attention
layer sharing one KV allocation (scenario 1). bare and warn run the correct configuration
(vLLM 0.23.0's as_strided cross split); fix runs the broken one (plain unbind(1)) and the guard
re-strides it. A step per layer: reshape-and-cache of the new token, self attention, cross
attention (3 guarded calls). Before the first step every layer gets vLLM-like warm-up: one
dummy run per capture size (no metadata: the impls return early), each between captured
graph pieces. Targets: <= 1.03 eager, <= 1.001 graph-replayed.

Each guarded mode has an unguarded peer running the very same impls: warn's is bare; fix's is
"bare broken" (the broken impls, unguarded: wrong output, same host work), since the broken
split is cheaper than the correct one and fix / bare would credit the guard with that
difference. "passthrough" wraps the same methods in an empty `(self, *args, **kwargs)`
wrapper: what one more Python frame per call costs between Triton launches on this host.

    python -m tests.gpu.vllm_kernels        # once, here: fills the git-ignored .vllm-src/
    PYTHONPATH=. python benchmarks/gpu/triton_guard_overhead.py --json out.json
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import statistics
import time

import torch

from kvguard.runtime import Guard
from tests.gpu.harness import decode_sizes, encoder_decoder, impl_classes, new_raw, rel_error

# mode -> (what wraps the impls, correct configuration?)
MODES = {
    "bare": (None, True),
    "warn": ("warn", True),
    "bare broken": (None, False),
    "fix": ("fix", False),
    "passthrough": ("passthrough", True),
    "bare again": (None, True),
}
PEER = {"fix": "bare broken"}  # the unguarded run of the same impls; "bare" for the rest
WARM_UP_SIZES = 67  # vLLM's default number of CUDA-graph capture sizes
logging.getLogger("kvguard").setLevel(logging.ERROR)


def passthrough(cls: type) -> None:
    """Wrap the methods the guard would wrap in an empty generic wrapper."""
    for name in ("do_kv_cache_update", "forward"):
        fn = getattr(cls, name)

        def wrapper(self, *args, _fn=fn, **kwargs):
            return _fn(self, *args, **kwargs)

        setattr(cls, name, functools.wraps(fn)(wrapper))


class Model:
    def __init__(self, wrap: str | None, correct: bool, sizes, raws: list[torch.Tensor]) -> None:
        classes = impl_classes()
        self.guard = Guard(wrap) if wrap in ("warn", "fix") else None
        for cls in classes.values():
            if self.guard:
                self.guard.wrap(cls)
            elif wrap == "passthrough":
                passthrough(cls)
        self.seats, self.views = [], []
        for i, raw in enumerate(raws):
            seats, _ = encoder_decoder(classes, sizes, correct=correct, seed=i, raw=raw)
            self.seats += seats
            self.views += [s.make_view(raw) for s in seats]
        self.graph: torch.cuda.CUDAGraph | None = None

    def drop_history(self, keep: int = 2) -> None:
        """Free the host-side ground truth of all but the first layer pair (memory)."""
        for s in self.seats[keep:]:
            s.keys = s.values = None

    def warm_up(self, sizes: int) -> float:
        """vLLM-like warm-up (one dummy run per capture size, no metadata, each between two
        captured graph pieces); returns the host time per guarded call, in us."""
        calls = 0
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for s, kv in zip(self.seats, self.views, strict=True):
            s.warm_up(kv, sizes, capture=True)
            calls += 4 * sizes
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / calls * 1e6

    def write_history(self) -> None:
        for s, kv in zip(self.seats, self.views, strict=True):
            s.write_history(kv)

    def step(self) -> None:
        for s, kv in zip(self.seats, self.views, strict=True):
            s.step(kv)

    def capture(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self.step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.step()

    def replay(self) -> None:
        self.graph.replay()


def time_steps(models: dict[str, Model], run, iterations: int):
    """Per step: device time (CUDA events) and host enqueue time, one step of each mode per
    iteration in rotating order, so that drift of clocks and host load falls on all modes.

    Returns, per mode, the median step time (ms) and the median of the paired per-iteration
    ratios against "bare" and against the mode's own peer (host: paired differences in us,
    against the peer), which cancel slow drift."""
    order = list(models)
    events = {m: [] for m in order}
    host = {m: [] for m in order}
    torch.cuda.synchronize()
    for i in range(iterations):
        for mode in order[i % len(order) :] + order[: i % len(order)]:
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            t0 = time.perf_counter()
            start.record()
            run(models[mode])
            end.record()
            host[mode].append((time.perf_counter() - t0) * 1e6)
            events[mode].append((start, end))
    torch.cuda.synchronize()
    device = {m: [s.elapsed_time(e) for s, e in events[m]] for m in order}
    med = statistics.median
    return {
        "ms": {m: med(device[m]) for m in order},
        "ratio": {
            m: med(a / b for a, b in zip(device[m], device["bare"], strict=True)) for m in order
        },
        "ratio_vs_peer": {
            m: med(a / b for a, b in zip(device[m], device[PEER.get(m, "bare")], strict=True))
            for m in order
        },
        "host_us": {m: med(host[m]) for m in order},
        "host_extra_us": {
            m: med(a - b for a, b in zip(host[m], host[PEER.get(m, "bare")], strict=True))
            for m in order
        },
    }


def bench_batch(batch: int, layers: int, iterations: int) -> dict:
    sizes = decode_sizes(batch)
    raws = [new_raw(sizes) for _ in range(layers)]
    models = {}
    for mode, (wrap, correct) in MODES.items():
        models[mode] = Model(wrap, correct, sizes, raws)
        if mode == "bare":
            models[mode].write_history()
        models[mode].drop_history()
    warm_up_us = {mode: model.warm_up(WARM_UP_SIZES) for mode, model in models.items()}
    for model in models.values():
        for _ in range(3):  # compile, first sight, steady state
            model.step()
    torch.cuda.synchronize()
    errors = [rel_error(s.output, s.reference()) for s in models["fix"].seats[:2]]
    identical = all(
        torch.equal(a.output, b.output)
        for a, b in zip(models["fix"].seats, models["bare"].seats, strict=True)
    )
    eager = time_steps(models, Model.step, iterations)
    torch.cuda.set_sync_debug_mode("error")  # the guard's steady state adds no sync
    for model in models.values():
        model.step()
        model.capture()
    torch.cuda.set_sync_debug_mode("default")
    graph = time_steps(models, Model.replay, iterations)
    calls = 3 * layers
    return {
        "batch": batch,
        "layers": layers,
        "guarded_calls_per_step": calls,
        "kernel_path": "split-K (3D)" if batch <= 128 // sizes.kv_heads else "2D",
        "fix_max_rel_error_vs_sdpa": max(errors),
        "fix_bit_identical_to_bare": identical,
        "eager": eager,
        "graph": graph,
        "guard_host_us_per_call": {
            m: eager["host_extra_us"][m] / calls
            for m in ("warn", "fix", "passthrough", "bare again")
        },
        "warm_up_host_us_per_call": warm_up_us,
        # every layer's forward (cross-attention writes its cache only at prefill, which
        # the timed decode steps do not repeat) was judged on a real call after the warm-up
        "judged_after_warm_up": all(
            "forward" in layer["methods"] and layer["untouched_calls"] >= 2 * WARM_UP_SIZES
            for m in ("warn", "fix")
            for layer in models[m].guard.report()["layers"]
        ),
    }


def print_table(results: list[dict]) -> None:
    print(f"\ndevice: {torch.cuda.get_device_name()}, torch {torch.__version__}")
    print("median step time of bare; median paired ratios (bare again/bare is the noise floor;")
    print("fix/peer is fix against the same broken impls unguarded); host us per guarded call")
    print("against each mode's peer (eager)")
    print(
        "batch  path    bare ms  warn/bare  fix/bare  fix/peer  passthru/bare  again/bare"
        "   host us/call: warn   fix  passthru"
    )
    for r in results:
        for path in ("eager", "graph"):
            t, q, p = r[path]["ms"], r[path]["ratio"], r[path]["ratio_vs_peer"]
            us = r["guard_host_us_per_call"]
            extra = ""
            if path == "eager":
                extra = f"  {us['warn']:19.2f} {us['fix']:5.2f} {us['passthrough']:9.2f}"
            print(
                f"{r['batch']:5d}  {path:6s} {t['bare']:7.3f}  {q['warn']:9.4f}  {q['fix']:8.4f}  "
                f"{p['fix']:8.4f}  {q['passthrough']:13.4f}  {q['bare again']:10.4f}{extra}"
            )
    for r in results:
        w = r["warm_up_host_us_per_call"]
        print(
            f"batch {r['batch']}: warm-up ({WARM_UP_SIZES} dummy runs per layer, no kernel) "
            f"host us per call: bare {w['bare']:.2f}, warn {w['warn']:.2f}, fix {w['fix']:.2f}; "
            f"every method judged after it: {r['judged_after_warm_up']}"
        )
        print(
            f"batch {r['batch']} ({r['kernel_path']}, {r['layers']} layers, "
            f"{r['guarded_calls_per_step']} guarded calls/step): fix max rel error vs SDPA "
            f"{r['fix_max_rel_error_vs_sdpa']:.2e}, bit-identical to bare: "
            f"{r['fix_bit_identical_to_bare']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    ap.add_argument("--iterations", type=int, default=300)
    ap.add_argument("--json", help="write the figures to this file")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu needs a CUDA device (torch.cuda.is_available() is False)")
    results = []
    for batch in args.batches:
        results.append(bench_batch(batch, args.layers, args.iterations))
        torch.cuda.empty_cache()
    print_table(results)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
